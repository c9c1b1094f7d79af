"""The engine layer: CDI specs from fixture files, verdicts on stub engines, and a real engine."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from cudabox import cdi
from cudabox.container import GPU_PASSTHROUGH_FIX as TOOLKIT_FIX
from cudabox.container import EngineDescription
from cudabox.doctor.container_layer import gpus_check
from cudabox.doctor.engine_layer import engine_checks
from cudabox.doctor.model import Check
from cudabox.engine import Engine
from cudabox.host import Gpu, HostProfile
from cudabox.images.catalog import load_catalog

CDI = Path(__file__).parents[1] / "fixtures" / "doctor" / "cdi"
UUID = "GPU-11111111-2222-3333-4444-555555555555"
GPU_HOST = HostProfile(
    "580.95.05",
    "13.0",
    (Gpu(0, UUID, "NVIDIA H100 80GB HBM3", "9.0", 81559, "0x233010DE"),),
    hostname="gpu-node",
)
CPU_HOST = HostProfile(
    None, None, (), status="no-driver", message="no NVIDIA driver", hostname="cpu-node"
)
DOCKER_28 = {
    "Version": "28.2.2",
    "ApiVersion": "1.50",
    "Platform": {"Name": "Docker Engine - Community"},
}
RUNC_ONLY = {
    "Runtimes": {"runc": {}, "io.containerd.runc.v2": {}},
    "CDISpecDirs": ["/etc/cdi", "/var/run/cdi"],
}


def view(
    info: Mapping[str, Any] = RUNC_ONLY, specs: tuple[cdi.CdiSpec, ...] = (), hook: bool = False
) -> EngineDescription:
    return EngineDescription.from_answers(
        DOCKER_28, info, local=True, nvidia_hook=hook, cdi_specs=specs
    )


def by_id(checks: list[Check]) -> dict[str, Check]:
    return {c.id: c for c in checks}


def test_nvidia_ctk_yaml_is_read_without_a_yaml_library() -> None:
    (spec,) = cdi.find_specs([CDI / "current"])
    assert spec.kind == "nvidia.com/gpu" and spec.is_nvidia_gpu
    assert spec.cdi_version == "0.5.0"
    assert spec.devices == ("0", UUID, "all")
    assert spec.driver_versions == ("580.95.05",)


def test_json_and_foreign_specs() -> None:
    specs = {s.path.name: s for s in cdi.find_specs([CDI / "json", CDI / "other", CDI / "absent"])}
    assert specs["nvidia.json"].devices == ("0", "all")
    assert specs["nvidia.json"].driver_versions == ("580.95.05",)
    assert specs["vendor.yaml"].devices == ("fpga0",) and not specs["vendor.yaml"].is_nvidia_gpu


def test_stale_cdi_spec_fails_with_the_regenerate_command() -> None:
    specs = tuple(cdi.find_specs([CDI / "stale"]))
    found = by_id(engine_checks(view(specs=specs), GPU_HOST))["engine.cdi_spec"]
    assert found.status == "fail"
    assert (found.value, found.expected) == ("570.172.08", "580.95.05")
    assert "generated for driver 570.172.08 but driver 580.95.05 runs" in found.message
    assert found.fix == (
        f"regenerate it: `sudo nvidia-ctk cdi generate --output={CDI / 'stale' / 'nvidia.yaml'}` "
        "(the driver changed since it was written)"
    )


def test_current_cdi_spec_passes_and_counts_as_a_way_to_pass_gpus() -> None:
    specs = tuple(cdi.find_specs([CDI / "current"]))
    checks = by_id(engine_checks(view(specs=specs), GPU_HOST))
    assert checks["engine.cdi_spec"].status == "pass"
    assert checks["engine.gpu_runtime"].status == "pass"
    assert checks["engine.gpu_runtime"].value == "CDI (3 nvidia.com/gpu devices)"


def test_spec_naming_a_gpu_the_host_lost_fails() -> None:
    specs = tuple(cdi.find_specs([CDI / "current"]))
    swapped = HostProfile(
        "580.95.05", "13.0", (Gpu(0, "GPU-99999999-0000-0000-0000-000000000000", "H100"),)
    )
    found = by_id(engine_checks(view(specs=specs), swapped))["engine.cdi_spec"]
    assert found.status == "fail" and "no longer has" in found.message
    assert found.fix is not None and "nvidia-ctk cdi generate" in found.fix


def test_cdi_specs_on_an_engine_without_cdi_do_not_count() -> None:
    specs = tuple(cdi.find_specs([CDI / "current"]))
    found = by_id(engine_checks(view(info={"Runtimes": {"runc": {}}}, specs=specs), GPU_HOST))[
        "engine.gpu_runtime"
    ]
    assert found.status == "fail" and "does not read CDI" in found.message


@pytest.mark.parametrize(
    ("info", "hook", "value"),
    [
        ({"Runtimes": {"runc": {}, "nvidia": {}}}, False, "nvidia runtime"),
        (RUNC_ONLY, True, "nvidia-container-runtime-hook"),
    ],
)
def test_nvidia_runtime_or_hook_passes(info: dict[str, Any], hook: bool, value: str) -> None:
    found = by_id(engine_checks(view(info=info, hook=hook), GPU_HOST))["engine.gpu_runtime"]
    assert (found.status, found.value) == ("pass", value)


def test_gpu_host_whose_engine_cannot_pass_gpus_fails() -> None:
    found = by_id(engine_checks(view(), GPU_HOST))["engine.gpu_runtime"]
    assert found.status == "fail"
    assert "no NVIDIA runtime (runtimes: io.containerd.runc.v2, runc)" in found.message
    assert found.fix == TOOLKIT_FIX and "nvidia-ctk runtime configure" in TOOLKIT_FIX


# --- a real engine ---------------------------------------------------------------------------


@pytest.mark.docker
def test_real_engine_answers_and_cannot_pass_gpus(docker_engine: Any) -> None:
    """Our CI engine has no NVIDIA runtime: the doctor must say so, as a skip on a GPU-less host."""
    engine_view = Engine(docker_engine).description
    checks = by_id(engine_checks(engine_view, CPU_HOST))
    reachable = checks["engine.reachable"]
    assert reachable.status == "pass"
    assert reachable.value == f"Docker {docker_engine.version()['Version']}"
    runtime = checks["engine.gpu_runtime"]
    assert "nvidia" not in engine_view.runtimes, (
        "this test expects an engine without NVIDIA runtime"
    )
    assert runtime.status == "skip"
    assert runtime.message.startswith(
        "no GPU on this host, so nothing to pass; the engine could not pass one either"
    )
    assert runtime.fix == TOOLKIT_FIX
    # The same engine judged for a host that has a GPU: a failure, with the same fix.
    assert by_id(engine_checks(engine_view, GPU_HOST))["engine.gpu_runtime"].status == "fail"


@pytest.fixture
def tiny_image(docker_engine: Any) -> Iterator[str]:
    """A one-file image made locally (no registry here), removed afterwards."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tmp = tarfile.TarInfo("tmp")
        tmp.type = tarfile.DIRTYPE
        tmp.mode = 0o1777
        tar.addfile(tmp)  # the doctor copies its script into /tmp before the start
        info = tarfile.TarInfo("hello.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"hi\n"))
    tag = "cudabox-test/doctor-tiny:latest"
    docker_engine.api.import_image_from_data(
        buffer.getvalue(), repository="cudabox-test/doctor-tiny", tag="latest"
    )
    yield tag
    docker_engine.images.remove(tag, force=True)


@pytest.mark.docker
def test_real_gpu_request_fails_with_the_toolkit_fix(docker_engine: Any, tiny_image: str) -> None:
    """Asking this engine for GPUs fails for real ("could not select device driver"): say how to fix it."""
    from cudabox.engine import Engine

    engine = Engine(docker_engine)
    spec = load_catalog().get("torch-2.13-cpu")
    image = type(spec)(**{**spec.__dict__, "tag": tiny_image})
    found = gpus_check(engine, image, GPU_HOST, timeout=60)
    assert found.status == "fail"
    assert "could not select device driver" in found.message
    assert found.fix == TOOLKIT_FIX
