"""Launch decisions without an engine: GPU requests, the docker command line, usage errors."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cudabox.cdi import find_specs
from cudabox.choice import ImageChoice, Request, catalog_candidates, choose
from cudabox.commands._launch import launch_options
from cudabox.container import EngineDescription, GpuRequest
from cudabox.errors import Unavailable, UsageError
from cudabox.host import HostProfile
from cudabox.images.catalog import load_catalog
from cudabox.launch import (
    LaunchOptions,
    container_spec,
    gpu_request,
    parse_gpus,
    podman_ulimits,
)

PODMAN = EngineDescription.from_answers(
    {"Components": [{"Name": "Podman Engine", "Version": "4.3.1"}], "Version": "4.3.1"}, {}
)
DOCKER = EngineDescription.from_answers({"Components": [{"Name": "Engine"}]}, {})

HOSTS = Path(__file__).parents[1] / "fixtures" / "hosts"


def host(name: str) -> HostProfile:
    return HostProfile.load(HOSTS / f"{name}.json")


def choose_image(
    framework: str, image: str, cpu: bool, require_gpu: bool, profile: HostProfile
) -> ImageChoice:
    """The choice a local run makes (targets.local): CPU with --cpu, CUDA with --require-gpu."""
    flavor = "cpu" if cpu else ("cuda" if require_gpu else "auto")
    request = Request(framework, image, flavor, require_gpu=require_gpu)  # type: ignore[arg-type]
    return choose(request, [profile], catalog_candidates(load_catalog()))


@pytest.mark.parametrize(
    ("text", "request_"),
    [
        ("all", GpuRequest(count=-1)),
        ("2", GpuRequest(count=2)),
        ("0,1", GpuRequest(device_ids=("0", "1"))),
        ("device=GPU-3f2a", GpuRequest(device_ids=("GPU-3f2a",))),
        ("MIG-5c9f", GpuRequest(device_ids=("MIG-5c9f",))),
    ],
)
def test_gpus_flag(text: str, request_: GpuRequest) -> None:
    assert parse_gpus(text, cdi=False) == request_


@pytest.mark.parametrize("text", ["0", "first", "0,gpu1", ""])
def test_bad_gpus_flag_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError):
        parse_gpus(text, cdi=False)


def test_device_requests_for_the_runtime_hook_and_for_cdi() -> None:
    assert GpuRequest(count=-1).device_request() == {"count": -1, "capabilities": [["gpu"]]}
    assert GpuRequest(device_ids=("0",)).cli() == ["--gpus", '"device=0"']
    cdi = parse_gpus("2", cdi=True)
    assert cdi.device_request() == {
        "driver": "cdi",
        "device_ids": ["nvidia.com/gpu=0", "nvidia.com/gpu=1"],
    }
    assert GpuRequest(count=-1, cdi=True).cli() == ["--device", "nvidia.com/gpu=all"]


def test_cuda_image_gets_every_visible_gpu_and_cpu_image_none() -> None:
    h100 = choose_image("torch", "auto", cpu=False, require_gpu=False, profile=host("h100"))
    assert h100.image.name == "torch-2.15-cu132"
    assert gpu_request(h100, None, cpu=False, engine=None) == GpuRequest(count=-1)
    cpu = choose_image("torch", "auto", cpu=True, require_gpu=False, profile=host("h100"))
    assert cpu.image.flavor == "cpu"
    assert gpu_request(cpu, None, cpu=True, engine=None) is None
    with pytest.raises(UsageError, match="contradict"):  # checked once, where options are made
        LaunchOptions(gpus="all", cpu=True)


def test_hidden_gpus_stay_hidden_in_the_container() -> None:
    from dataclasses import replace

    mixed = host("a100-v100-mixed")
    gpus = (mixed.gpus[0], replace(mixed.gpus[1], visible=False))
    profile = replace(mixed, gpus=gpus, cuda_visible_devices=mixed.gpus[0].uuid)
    choice = choose_image("torch", "auto", cpu=False, require_gpu=False, profile=profile)
    assert gpu_request(choice, None, cpu=False, engine=None) == GpuRequest(
        device_ids=(mixed.gpus[0].uuid or "",)
    )


def test_require_gpu_fails_at_once_without_one() -> None:
    with pytest.raises(Unavailable, match="never falls back to the CPU") as caught:
        choose_image("tensorflow", "auto", cpu=False, require_gpu=True, profile=host("cpu-only"))
    assert "nox -s train-tf-cpu" in (caught.value.fix or "")


def has_nvidia_cdi(info: dict[str, Any], folder: Path) -> bool:
    return EngineDescription.from_answers({}, info, cdi_specs=find_specs([folder])).gpus_through_cdi


def test_cdi_specs_are_found_by_their_devices(tmp_path: Path) -> None:
    assert not has_nvidia_cdi({"CDISpecDirs": [str(tmp_path)]}, tmp_path)
    (tmp_path / "nvidia.yaml").write_text(
        "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n- name: all\n"
    )
    assert has_nvidia_cdi({"CDISpecDirs": [str(tmp_path)]}, tmp_path)
    assert not has_nvidia_cdi({}, tmp_path)


def test_podman_never_silently_drops_the_gpus() -> None:
    from cudabox.launch import refuse_podman_gpus

    with pytest.raises(Unavailable, match="ignores GPU requests") as caught:
        refuse_podman_gpus(PODMAN, GpuRequest(count=-1))
    assert "--cpu" in (caught.value.fix or "")
    refuse_podman_gpus(PODMAN, None)  # no GPUs asked for: fine
    refuse_podman_gpus(DOCKER, GpuRequest(count=-1))


def test_podman_gets_explicit_ulimits() -> None:
    names = [limit.name for limit in podman_ulimits(PODMAN)]
    assert names == ["nofile", "nproc"]
    assert podman_ulimits(DOCKER) == ()


def test_container_spec_maps_the_caller_and_the_workdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    choice = choose_image("torch", "auto", cpu=True, require_gpu=False, profile=host("cpu-only"))
    options = LaunchOptions(env={"SEED": "3"}, labels={"team": "vision"}, workspace=tmp_path)
    spec = container_spec(choice, ["python", "train.py"], options, None, ())
    cli = spec.docker_cli()
    assert cli[:3] == ["docker", "run", "--rm"]
    assert "--init" in cli and f"{tmp_path}:/workspace" in cli
    assert cli[cli.index("--shm-size") + 1] == "4g"
    assert "SEED=3" in cli and "team=vision" in cli
    assert cli[-3:] == ["cudabox/torch-2.13-cpu:latest", "python", "train.py"]
    with pytest.raises(UsageError, match="KEY=VALUE"):
        launch_options(run_args("--env", "oops"), "local")


def run_args(*words: str) -> argparse.Namespace:
    from cudabox.cli import build_parser

    return build_parser().parse_args(["run", *words])


def cudabox(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cudabox", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        check=False,
    )


def test_dry_run_prints_a_reusable_docker_command() -> None:
    result = cudabox("run", "--cpu", "--dry-run", "--", "python", "-c", "print(1)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("docker run --rm ")
    assert result.stdout.strip().endswith("cudabox/torch-2.13-cpu:latest python -c 'print(1)'")


def test_run_without_a_command_is_a_usage_error() -> None:
    result = cudabox("run", "--cpu")
    assert result.returncode == 2 and "no command to run" in result.stderr


def test_gpu_training_on_a_host_without_gpu_says_what_to_run_instead() -> None:
    if json.loads(cudabox("probe", "--json").stdout)["gpus"]:
        pytest.skip("this host has a GPU")
    result = cudabox("train", "torch", "--require-gpu")
    assert result.returncode == 4
    assert "no usable NVIDIA GPU" in result.stderr and "train-torch-cpu" in result.stderr
    assert "Traceback" not in result.stderr
