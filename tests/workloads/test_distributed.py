"""The torch workload under a real torchrun, gloo on this CPU: 2 ranks on one node, 2 "nodes"
through a c10d rendezvous, stops that every rank agrees on, and resumes that stay bitwise."""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from workload_harness import (
    DIST,
    Run,
    Workload,
    free_port,
    kill_tree,
    torchrun,
)

pytestmark = pytest.mark.slow

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def solo(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The DIST run in one process, no torchrun: the world-size-1 reference."""
    run = Workload("torch").run(tmp_path_factory.mktemp("solo"), *DIST, "--quiet")
    assert run.returncode == 0, run.stdout + run.stderr
    return run


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The DIST run on 2 ranks, uninterrupted: the reference of the resume tests."""
    run = Workload("torch", torchrun(2)).run(tmp_path_factory.mktemp("pair"), *DIST)
    assert run.returncode == 0, run.stdout + run.stderr
    return run


@pytest.fixture(scope="module")
def killed_pair(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-rank run SIGKILLed with all its processes between two checkpoints (25 exists)."""
    out = tmp_path_factory.mktemp("killed")
    killed = Workload("torch", torchrun(2)).run_until(out, 35, signal.SIGKILL, *DIST)
    assert killed.returncode == -signal.SIGKILL
    assert not (out / "metrics.json").exists()
    return out


def test_two_ranks_learn_on_the_same_data_as_one(pair: Run, solo: Run) -> None:
    metrics = pair.metrics

    assert metrics["passed"] is True and metrics["world_size"] == 2
    assert metrics["backend"] == "gloo" and metrics["sizing"] == "small"
    assert pair.stdout.count("passed:") == 1  # rank 0 alone reports
    assert "2 ranks" in pair.stderr
    # --batch-size is global: 256 samples a step, 128 per rank.
    assert metrics["config"]["batch_size"] == 256
    per_rank = metrics["samples_per_s_per_rank"]
    assert len(per_rank) == 2 and all(rate > 0 for rate in per_rank)
    assert metrics["samples_per_s"] == metrics["samples_per_s_global"] > max(per_rank)
    assert metrics["achieved_tflops_per_rank"] == pytest.approx(metrics["achieved_tflops"] / 2)
    # Each rank reads its half of the same global batches: the curves differ only by the order
    # in which gradients are summed. Ranks that read the same half, or overlapping halves, would
    # drift apart within a few steps.
    for (step, ours), (solo_step, theirs) in zip(
        metrics["loss_curve"], solo.metrics["loss_curve"], strict=True
    ):
        assert step == solo_step
        assert ours == pytest.approx(theirs, abs=2e-3)
    assert solo.metrics["world_size"] == 1 and solo.metrics["backend"] is None


def test_killed_pair_resumes_to_the_same_weights(
    killed_pair: Path, pair: Run, tmp_path: Path
) -> None:
    shutil.copytree(killed_pair, tmp_path, dirs_exist_ok=True)

    resumed = Workload("torch", torchrun(2)).run(tmp_path, *DIST, "--resume")

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming from step 25" in resumed.stderr
    assert resumed.metrics["start_step"] == 25
    assert resumed.metrics["weights_sha256"] == pair.metrics["weights_sha256"]
    assert resumed.metrics["loss_curve"] == pair.metrics["loss_curve"]


def test_pair_checkpoint_resumes_in_one_process(
    killed_pair: Path, pair: Run, tmp_path: Path
) -> None:
    shutil.copytree(killed_pair, tmp_path, dirs_exist_ok=True)

    resumed = Workload("torch").run(tmp_path, *DIST, "--resume")

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "written by 2 rank(s), this run has 1" in resumed.stderr
    metrics = resumed.metrics
    assert metrics["resumed_from_world_size"] == 2 and metrics["world_size"] == 1
    # Same data and global batch: close to the 2-rank run, though not bitwise.
    assert metrics["final_loss"] == pytest.approx(pair.metrics["final_loss"], abs=2e-3)


def test_sigterm_to_torchrun_stops_every_rank_at_one_step(pair: Run, tmp_path: Path) -> None:
    # As Slurm's scancel or a Kubernetes pod deletion would: torchrun forwards it to the ranks'
    # process groups, DataLoader workers included.
    stopped = Workload("torch", torchrun(2)).run_until(tmp_path, 30, signal.SIGTERM, *DIST)

    assert "[rank" not in stopped.stderr  # no rank died with a traceback
    assert "stopped by SIGTERM" in stopped.stdout
    metrics = stopped.metrics
    assert metrics["status"] == "interrupted" and metrics["exit_code"] == 143
    assert 30 <= metrics["steps"] < 100 and metrics["world_size"] == 2

    resumed = Workload("torch", torchrun(2)).run(tmp_path, *DIST, "--resume")

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    # Both ranks stopped after the same step: the checkpoint continues to the same weights.
    assert resumed.metrics["start_step"] == metrics["steps"]
    assert resumed.metrics["weights_sha256"] == pair.metrics["weights_sha256"]


def test_two_nodes_meet_through_c10d_without_a_shared_folder(pair: Run, tmp_path: Path) -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    workload = Workload("torch", torchrun(1, rdzv=endpoint, nnodes=2))
    outs = [tmp_path / "node0", tmp_path / "node1"]
    nodes = [workload.start(out, *DIST) for out in outs]
    try:
        results = [node.communicate(timeout=180) for node in nodes]
    except subprocess.TimeoutExpired:
        pytest.fail("the two nodes did not finish in 180 s")
    finally:
        for node in nodes:
            if node.poll() is None:
                kill_tree(node)

    for node, (stdout, stderr) in zip(nodes, results, strict=True):
        assert node.returncode == 0, stdout + stderr
    # Rank 0 landed on one of the nodes (c10d orders them by host and pid): only its --out is
    # written; the other node needs no folder at all.
    written = [out for out in outs if (out / "metrics.json").exists()]
    assert len(written) == 1
    assert not any((out / "checkpoint.pt").exists() for out in outs if out not in written)
    run = Run(0, "", "", written[0])
    assert run.metrics["world_size"] == 2 and run.metrics["passed"] is True
    # Same ranks, same shards, same gloo sums as on one node: bitwise the same weights.
    assert run.metrics["weights_sha256"] == pair.metrics["weights_sha256"]
