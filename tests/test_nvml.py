"""The probe against fake NVML scenarios: one per failure a real host has shown."""

from __future__ import annotations

import pynvml
import pytest

from cudabox import nvml
from cudabox.nvml import apply_visibility, probe
from fakenvml import FakeGpu, FakeMig, FakeNvml

H100 = FakeGpu(uuid="GPU-aaaaaaaa-1111-2222-3333-444444444444")
A100 = FakeGpu(
    name="NVIDIA A100-SXM4-40GB",
    uuid="GPU-bbbbbbbb-1111-2222-3333-444444444444",
    cc=(8, 0),
    memory_mib=40960,
    pci_device_id=0x20B010DE,
)


def test_healthy_host_reports_every_field() -> None:
    lib = FakeNvml(gpus=[H100, A100], driver="580.95.05", cuda=13000)
    profile = probe(lib, env={})
    assert profile.status == "ok"
    assert profile.driver_version == "580.95.05"
    assert profile.cuda_driver_version == "13.0"
    first, second = profile.gpus
    assert (first.name, first.compute_capability, first.memory_total_mib) == (
        "NVIDIA H100 80GB HBM3",
        "9.0",
        81559,
    )
    assert first.pci_device_id == "0x233010DE"
    assert first.brand == "NVIDIA"
    assert first.mig_enabled is False and first.visible
    assert second.compute_capability == "8.0"
    assert lib.shutdowns == 1


@pytest.mark.parametrize(
    ("code", "status", "diagnosis", "fix"),
    [
        (
            pynvml.NVML_ERROR_LIBRARY_NOT_FOUND,
            "no-driver",
            "no NVIDIA driver is installed",
            "install the NVIDIA driver",
        ),
        (
            pynvml.NVML_ERROR_DRIVER_NOT_LOADED,
            "no-driver",
            "kernel driver is not loaded",
            "modprobe nvidia",
        ),
        (
            pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH,
            "error",
            "driver/library version mismatch",
            "reboot",
        ),
        (pynvml.NVML_ERROR_NO_PERMISSION, "error", "no permission", "/dev/nvidia*"),
        (pynvml.NVML_ERROR_UNKNOWN, "error", "NVML error", "nvidia-smi"),
    ],
)
def test_init_failures_become_a_status_not_a_crash(
    code: int, status: str, diagnosis: str, fix: str
) -> None:
    profile = probe(FakeNvml(gpus=[H100], init_error=code), env={})
    assert profile.status == status
    assert profile.gpus == ()
    assert diagnosis in (profile.message or "")
    assert fix in (profile.fix or "")


def test_a_lost_gpu_is_reported_and_the_others_still_read() -> None:
    lost = FakeGpu(
        uuid="GPU-cccccccc",
        fail={"nvmlDeviceGetCudaComputeCapability": pynvml.NVML_ERROR_GPU_IS_LOST},
    )
    profile = probe(FakeNvml(gpus=[H100, lost, A100]), env={})
    assert [g.compute_capability for g in profile.gpus] == ["9.0", None, "8.0"]
    broken = profile.gpus[1]
    assert broken.uuid == "GPU-cccccccc"
    assert "GPU is lost" in (broken.error or "")
    assert "nvidia-smi -r" in (broken.fix or "")


def test_binding_newer_than_driver_falls_back_to_v1_cuda_query() -> None:
    profile = probe(
        FakeNvml(gpus=[H100], cuda=12040, missing={"nvmlSystemGetCudaDriverVersion_v2"}), env={}
    )
    assert profile.cuda_driver_version == "12.4"


def test_missing_libcuda_leaves_cuda_version_unknown() -> None:
    lib = FakeNvml(
        gpus=[H100],
        cuda=None,
        fail={"nvmlSystemGetCudaDriverVersion": pynvml.NVML_ERROR_NOT_SUPPORTED},
    )
    assert probe(lib, env={}).cuda_driver_version is None


def test_function_missing_for_one_gpu_field_is_tolerated() -> None:
    old = FakeGpu(
        uuid="GPU-dddddddd", fail={"nvmlDeviceGetBrand": pynvml.NVML_ERROR_FUNCTION_NOT_FOUND}
    )
    gpu = probe(FakeNvml(gpus=[old]), env={}).gpus[0]
    assert gpu.error is None and gpu.brand is None and gpu.compute_capability == "9.0"


def test_bytes_from_older_bindings_are_decoded() -> None:
    lib = FakeNvml(gpus=[H100], driver=b"535.183.01")
    assert probe(lib, env={}).driver_version == "535.183.01"


def test_mig_devices_are_listed_and_empty_slots_skipped() -> None:
    mig_gpu = FakeGpu(
        uuid="GPU-eeeeeeee",
        mig=(1, 1),
        migs=(FakeMig("MIG-11111111-aaaa"), None, FakeMig("MIG-22222222-bbbb", memory_mib=20096)),
    )
    gpu = probe(FakeNvml(gpus=[mig_gpu]), env={}).gpus[0]
    assert gpu.mig_enabled
    assert [(m.index, m.uuid, m.memory_total_mib) for m in gpu.mig_devices] == [
        (0, "MIG-11111111-aaaa", 40448),
        (2, "MIG-22222222-bbbb", 20096),
    ]


def test_mig_pending_but_not_current_is_off() -> None:
    gpu = probe(FakeNvml(gpus=[FakeGpu(mig=(0, 1))]), env={}).gpus[0]
    assert gpu.mig_enabled is False and gpu.mig_devices == ()


@pytest.mark.parametrize(
    ("spec", "visible"),
    [
        (None, [True, True, True]),
        ("", [False, False, False]),
        ("1", [False, True, False]),
        ("2,0", [True, False, True]),
        ("GPU-bbbb", [False, True, False]),  # a unique UUID prefix is enough
        ("0,7,2", [True, False, False]),  # like CUDA, parsing stops at the first bad entry
        ("GPU-ffff", [False, False, False]),
    ],
)
def test_cuda_visible_devices(spec: str | None, visible: list[bool]) -> None:
    gpus = [
        FakeGpu(uuid="GPU-aaaa-0"),
        FakeGpu(uuid="GPU-bbbb-1"),
        FakeGpu(uuid="GPU-cccc-2"),
    ]
    env = {} if spec is None else {"CUDA_VISIBLE_DEVICES": spec}
    profile = probe(FakeNvml(gpus=gpus), env=env)
    assert [g.visible for g in profile.gpus] == visible
    assert profile.cuda_visible_devices == spec


def test_cuda_visible_devices_with_a_mig_uuid() -> None:
    mig_gpu = FakeGpu(uuid="GPU-eeee", mig=(1, 1), migs=(FakeMig("MIG-1111"), FakeMig("MIG-2222")))
    profile = probe(
        FakeNvml(gpus=[FakeGpu(uuid="GPU-aaaa"), mig_gpu]), env={"CUDA_VISIBLE_DEVICES": "MIG-2222"}
    )
    plain, mig = profile.gpus
    assert not plain.visible
    assert mig.visible
    assert [m.visible for m in mig.mig_devices] == [False, True]


def test_apply_visibility_is_identity_without_the_variable() -> None:
    gpus = list(probe(FakeNvml(gpus=[H100, A100]), env={}).gpus)
    assert apply_visibility(gpus, None) == gpus


def test_probe_on_this_machine_never_raises() -> None:
    # The real binding on the real host: on CI there is no driver, on a GPU host there is one.
    profile = probe()
    assert profile.status in {"ok", "no-driver", "error"}
    if profile.status != "ok":
        assert profile.gpus == () and profile.message and profile.fix


def test_the_unofficial_pynvml_distribution_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nvml, "pynvml_owners", lambda: ["pynvml"])
    profile = probe(env={})
    assert profile.status == "error"
    assert "not NVIDIA's nvidia-ml-py" in (profile.message or "")
    assert profile.fix == "pip uninstall pynvml && pip install nvidia-ml-py"
