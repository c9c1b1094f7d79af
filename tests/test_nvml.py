"""The probe against fake NVML scenarios: one per failure a real host has shown."""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import replace
from typing import Any

import pynvml
import pytest

from cudabox import nvml
from cudabox.errors import UsageError
from cudabox.health import HostHealth
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


# --- the doctor's hardware readings, their JSON, the Xid watch and the sampler (issue 17) -----


def test_hardware_readings_come_in_the_same_pass() -> None:
    (gpu,) = nvml.health(FakeNvml(gpus=[H100])).gpus
    assert gpu.error is None
    assert (gpu.vbios_version, gpu.power_limit_w, gpu.power_w) == ("96.00.99.00.01", 700.0, 72.0)
    assert (gpu.fabric_state, gpu.fabric_status, gpu.recovery_action) == ("completed", None, "none")
    assert (gpu.nvlink_active, gpu.nvlink_total, gpu.pcie_replay_count) == (18, 18, 0)
    assert (gpu.temperature_c, gpu.sm_clock_mhz, gpu.max_sm_clock_mhz) == (34, 345, 1980)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"fabric": (1, 0)}, {"fabric_state": "not_started", "fabric_status": None}),
        (
            {"fabric": (3, pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES)},
            {"fabric_state": "completed", "fabric_status": "NVML Error with code 23"},
        ),
        ({"fabric": (2, 0)}, {"fabric_state": "in_progress"}),
        ({"recovery_action": 2}, {"recovery_action": "reboot"}),
        ({"recovery_action": 3}, {"recovery_action": "drain"}),
        ({"recovery_action": 42}, {"recovery_action": "unknown"}),  # newer than cudabox
        ({"nvlinks": (1, 1, 0, 1)}, {"nvlink_active": 3, "nvlink_total": 4}),
        ({"replay_count": 17}, {"pcie_replay_count": 17}),
    ],
)
def test_hardware_faults_as_nvml_reports_them(
    changes: dict[str, object], expected: dict[str, object]
) -> None:
    (gpu,) = nvml.health(FakeNvml(gpus=[replace(H100, **changes)])).gpus
    for key, value in expected.items():
        assert getattr(gpu, key) == value, key


def test_unsupported_hardware_readings_are_none_not_a_crash() -> None:
    consumer = replace(H100, fabric=None, nvlinks=None, recovery_action=None, replay_count=None)
    lib = FakeNvml(gpus=[consumer], missing={"nvmlDeviceGetEnforcedPowerLimit"})
    (gpu,) = nvml.health(lib).gpus
    assert gpu.error is None
    assert (gpu.fabric_state, gpu.recovery_action, gpu.pcie_replay_count) == (None, None, None)
    assert (gpu.nvlink_active, gpu.nvlink_total) == (None, None)
    assert gpu.power_limit_w == 700.0  # the older power-management limit call


def test_without_a_link_count_field_links_are_counted_until_the_driver_says_stop() -> None:
    lib = FakeNvml(gpus=[replace(H100, nvlinks=(1, 0, 1))])
    lib.missing = {"nvmlDeviceGetFieldValues"}  # an old driver: no field values at all
    (gpu,) = nvml.health(lib).gpus
    assert (gpu.nvlink_active, gpu.nvlink_total, gpu.recovery_action) == (2, 3, None)


def test_a_lost_gpu_is_still_unreadable_through_the_new_readings() -> None:
    lost = replace(H100, fail={"nvmlDeviceGetNvLinkState": pynvml.NVML_ERROR_GPU_IS_LOST})
    (gpu,) = nvml.health(FakeNvml(gpus=[lost])).gpus
    assert gpu.error is not None and "GPU is lost" in gpu.error


def test_health_json_round_trip() -> None:
    health = nvml.health(FakeNvml(gpus=[H100, replace(A100, fabric=(1, 0), recovery_action=1)]))
    data = json.loads(json.dumps(health.to_json()))
    assert HostHealth.from_json(data) == health
    sick = nvml.health(FakeNvml(init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED))
    assert HostHealth.from_json(sick.to_json()) == sick


def test_health_json_from_a_newer_cudabox_loads_without_its_new_keys() -> None:
    health = nvml.health(FakeNvml(gpus=[H100]))
    data = health.to_json()
    data["extra"] = 1
    data["gpus"][0]["extra"] = 1
    assert HostHealth.from_json(data) == health


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("device_count"), "has no 'device_count' key"),
        (lambda d: d.update(status="fine"), "status must be one of ok, no-driver, error"),
        (lambda d: d["gpus"][0].pop("nvlink_active"), "gpus[0] has no 'nvlink_active' key"),
        (lambda d: d["gpus"][0].update(nvlink_active=-1), "gpus[0].nvlink_active must be a whole"),
        (lambda d: d["gpus"][0].update(ecc_enabled=1), "gpus[0].ecc_enabled must be true, false"),
        (lambda d: d["gpus"][0].update(power_w="72"), "gpus[0].power_w must be a number"),
        (lambda d: d["gpus"][0].update(fabric_state="up"), "fabric_state must be one of"),
        (lambda d: d["gpus"][0].update(recovery_action="pray"), "recovery_action must be one of"),
        (lambda d: d["gpus"].append(dict(d["gpus"][0])), "two GPUs have the same index"),
        (lambda d: d.update(gpus=[3]), "gpus[0] must be an object"),
    ],
)
def test_health_json_is_checked_key_by_key(edit: Any, message: str) -> None:
    data = nvml.health(FakeNvml(gpus=[H100])).to_json()
    edit(data)
    with pytest.raises(UsageError, match=re.escape(message)) as caught:
        HostHealth.from_json(data, where="report a.json: readings.host")
    assert "report a.json: readings.host" in caught.value.message
    assert caught.value.fix is not None and "cudabox doctor --json" in caught.value.fix


def test_xid_watch_collects_events_while_its_block_runs() -> None:
    lib = FakeNvml(gpus=[H100, A100, replace(H100, uuid="GPU-x", events=False)])
    with nvml.XidWatch(lib, poll_ms=5) as watch:
        assert watch.supported and watch.watched == (0, 1)
        lib.raise_xid(1, 79)
        lib.raise_xid(2, 48)  # GPU 2 cannot report events: never seen
        lib.raise_xid(0, 63)
        time.sleep(0.2)
    assert [(e.gpu_index, e.xid) for e in watch.events] == [(1, 79), (0, 63)]
    assert all(e.time > 0 for e in watch.events)
    assert lib.shutdowns == 1


def test_xid_watch_takes_events_that_arrive_as_it_closes() -> None:
    lib = FakeNvml(gpus=[H100])
    with nvml.XidWatch(lib, poll_ms=10_000) as watch:  # the thread would wait long: closing drains
        lib.raise_xid(0, 95)
    assert [e.xid for e in watch.events] == [95]


@pytest.mark.parametrize(
    ("lib", "reason"),
    [
        (FakeNvml(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND), "NVML cannot start"),
        (FakeNvml(gpus=[replace(H100, events=False)]), "reports no Xid events"),
        (FakeNvml(gpus=[H100], missing={"nvmlEventSetCreate"}), "events are not available"),
    ],
)
def test_xid_watch_never_raises_where_it_cannot_watch(lib: FakeNvml, reason: str) -> None:
    with nvml.XidWatch(lib) as watch:
        pass
    assert not watch.supported and watch.events == ()
    assert watch.reason is not None and reason in watch.reason


def test_sample_gpus_reads_every_gpu_each_interval() -> None:
    lib = FakeNvml(gpus=[H100, replace(A100, temperature=71, clock_reasons=0x8)])
    samples = nvml.sample_gpus(lib, seconds=0.1, interval=0.05)
    assert sorted({s.t for s in samples}) == sorted({s.t for s in samples if s.index == 0})
    assert len(samples) == 6  # t = 0, 0.05, 0.1 for two GPUs
    hot = [s for s in samples if s.index == 1]
    assert {(s.temperature_c, s.sm_clock_mhz, s.power_w, s.clock_event_reasons) for s in hot} == {
        (71, 345, 72.0, 0x8)
    }
    assert hot[-1].t >= 0.09  # the third round, a sampling interval after the second


def test_sample_gpus_stops_when_told_and_never_raises() -> None:
    stop = threading.Event()
    stop.set()
    assert len(nvml.sample_gpus(FakeNvml(gpus=[H100]), seconds=60, stop=stop)) == 1
    assert nvml.sample_gpus(FakeNvml(init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED), 1) == []


def test_a_gpu_lost_while_sampling_leaves_gaps_in_its_own_curve_only() -> None:
    lost = replace(
        A100,
        fail={
            "nvmlDeviceGetTemperature": pynvml.NVML_ERROR_GPU_IS_LOST,
            "nvmlDeviceGetPowerUsage": pynvml.NVML_ERROR_GPU_IS_LOST,
        },
    )
    samples = nvml.sample_gpus(FakeNvml(gpus=[H100, lost]), seconds=0.02, interval=0.01)
    assert len(samples) == 6  # three rounds, both GPUs
    assert {(s.temperature_c, s.power_w) for s in samples if s.index == 1} == {(None, None)}
    assert {s.temperature_c for s in samples if s.index == 0} == {34}
