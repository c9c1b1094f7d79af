"""The newest CUDA image of each framework, built from scratch and proven, as CI must do.

A CUDA image builds and reports its CUDA, cuDNN and architectures on a machine without a GPU, so
these run everywhere an engine runs. Each costs a few minutes and ~6 GB of disk: the image is
removed afterwards unless it was on the engine before the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cudabox.images.catalog import load_catalog

pytestmark = [pytest.mark.docker, pytest.mark.slow]

CATALOG = load_catalog(Path(__file__).resolve().parents[2] / "images" / "catalog.toml")


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_newest_cuda_image_builds_from_scratch_and_reports_the_catalog_facts(
    framework: str, docker_engine: Any
) -> None:
    spec = CATALOG.newest(framework, "cuda")
    existed = bool(docker_engine.images.list(name=spec.tag))
    command = [
        sys.executable,
        "-m",
        "cudabox",
        "verify",
        f"{framework}:cuda",
        "--no-cache",
        "--json",
    ]
    if not existed:
        command.append("--remove-after")
    env = {**os.environ, "CUDABOX_HOST_PIP": "1"}
    subprocess.run([sys.executable, "-m", "cudabox", "base"], check=True, env=env, timeout=900)
    result = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=3000, check=False
    )
    assert result.returncode == 0, result.stderr[-4000:]
    (entry,) = json.loads(result.stdout)
    reported = entry["reported"]
    assert entry["name"] == spec.name
    assert reported["cuda"] == str(spec.cuda) or reported["cuda"].startswith(f"{spec.cuda}.")
    assert reported["gpu_count"] == 0
    assert all(outcome.startswith("ok") for outcome in entry["units"].values()), entry["units"]
    assert entry["overhead_pct"] < 10
    if not existed:
        assert entry["build_cached_steps"] == 0  # --no-cache: every step ran here
        assert not docker_engine.images.list(name=spec.tag)
