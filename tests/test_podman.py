"""cudabox against a real Podman, through its Docker-compatible socket (Debian's podman 4.3).

The CPU torch image is built by Docker (the shared fixture), copied into Podman with
`docker save | podman load`, and removed from Podman afterwards. CI installs Podman
(`scripts/bootstrap --test`) and forbids skipping.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from realtools import podman_service

pytestmark = [pytest.mark.docker, pytest.mark.slow]

LABEL = ["--label", "cudabox.test=1"]


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """DOCKER_HOST of a Podman API service started for these tests, stopped afterwards."""
    with podman_service(tmp_path_factory.mktemp("podman")) as host:
        yield host


@pytest.fixture(scope="module")
def podman_torch_cpu(podman: str, catalog_image: Any) -> Iterator[str]:
    """The CPU torch image, copied from Docker into Podman, removed from Podman afterwards."""
    tag = str(catalog_image("torch-2.13-cpu"))
    save = subprocess.Popen(["docker", "save", tag], stdout=subprocess.PIPE)
    load = subprocess.run(
        ["podman", "load"], stdin=save.stdout, capture_output=True, text=True, timeout=900
    )
    assert save.stdout is not None
    save.stdout.close()
    assert save.wait(timeout=60) == 0 and load.returncode == 0, load.stderr
    yield tag
    subprocess.run(["podman", "rmi", "--force", tag], capture_output=True, check=False)


def cudabox(
    podman: str, *args: str, cwd: Path, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cudabox", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, "DOCKER_HOST": podman},
        check=False,
    )


def leftovers() -> list[str]:
    listed = subprocess.run(
        ["podman", "ps", "-a", "--filter", "label=cudabox.test=1", "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return listed.stdout.split()


def test_the_doctor_says_podman(podman: str, tmp_path: Path) -> None:
    result = cudabox(podman, "doctor", "--level", "quick", "--json", "-", cwd=tmp_path)
    assert result.returncode in (0, 1), result.stderr
    checks = {c["id"]: c for c in json.loads(result.stdout)["checks"]}
    reachable = checks["engine.reachable"]
    assert reachable["status"] == "pass" and str(reachable["value"]).startswith("Podman 4."), (
        reachable
    )


def test_run_on_the_cpu(podman: str, podman_torch_cpu: str, tmp_path: Path) -> None:
    script = "import torch, os; print('torch', torch.__version__, os.getcwd())"
    result = cudabox(
        podman, "run", "--cpu", "--no-build", *LABEL, "--", "python", "-c", script, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "torch 2.13.0+cpu /workspace" in result.stdout
    assert leftovers() == []


def test_train_on_the_cpu(podman: str, podman_torch_cpu: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = cudabox(
        podman,
        "train",
        "torch",
        "--cpu",
        "--no-build",
        "--json",
        *LABEL,
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert summary["passed"] and summary["image"] == "torch-2.13-cpu"
    assert leftovers() == []


def test_gpus_are_refused_not_dropped(podman: str, podman_torch_cpu: str, tmp_path: Path) -> None:
    result = cudabox(
        podman,
        "run",
        "--image",
        "torch-2.13-cpu",
        "--gpus",
        "all",
        "--no-build",
        *LABEL,
        "--",
        "true",
        cwd=tmp_path,
    )
    assert result.returncode == 4, result.stderr
    assert "ignores GPU requests" in result.stderr and "Traceback" not in result.stderr
    assert leftovers() == []
