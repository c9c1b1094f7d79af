"""`cudabox train torch --cpu --scheduler slurm --nodes 2`, for real: two Slurm "nodes" (two
slurmd on this machine), each starting the CPU image with `cudabox run` (the launcher chosen when
the cluster has neither pyxis nor Apptainer), torchrun's c10d rendezvous on the first node, gloo
between the two containers; the run learns, its metrics say world size 2, and no container is
left.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from slurm_cluster import SlurmCluster

pytestmark = [pytest.mark.docker, pytest.mark.slow]
pytest_plugins = ["slurm_cluster"]


def test_two_node_training_job_learns(
    slurm: SlurmCluster, docker_engine: Any, catalog_image: Any, tmp_path: Path
) -> None:
    slurm.require_nodes(2)
    catalog_image("torch-2.13-cpu")
    out = tmp_path / "run"  # on this machine, so both "nodes" see it, as a shared filesystem
    label = f"cudabox.test.slurm={tmp_path.name}"
    venv = str(Path(sys.executable).parent)
    env = {**os.environ, **slurm.env, "PATH": f"{venv}:{os.environ['PATH']}"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cudabox",
            "train",
            "torch",
            "--cpu",
            "--scheduler",
            "slurm",
            "--nodes",
            "2",
            "--out",
            str(out),
            "--json",
            "--label",
            "cudabox.test=1",
            "--label",
            label,
            "-e",
            "GLOO_SOCKET_IFNAME=lo",
            "--",
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=1500,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Launcher: cudabox" not in result.stderr  # the script's header goes to the log
    summary = json.loads(result.stdout)
    assert summary["passed"] and summary["world_size"] == 2, summary
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["passed"]
    assert metrics["final_loss"] < metrics["thresholds"]["max_loss"]
    left = docker_engine.containers.list(all=True, filters={"label": label})
    assert left == [], [c.name for c in left]
    logs = list(out.glob("slurm-*.log"))
    assert logs and "rendezvous at" in logs[0].read_text()
