"""The smoke workloads for real, on the CPU: they learn, fail loudly, stop cleanly, resume exactly."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest
from workload_harness import FAST, Run, Workload, no_traceback

pytestmark = pytest.mark.slow

METRICS_KEYS = {
    "framework",
    "framework_version",
    "cuda_version",
    "cudnn_version",
    "device",
    "device_name",
    "precision",
    "compile",
    "steps",
    "loss_curve",
    "samples_per_s",
    "time_to_first_step_s",
    "import_s",
    "total_s",
    "peak_memory_bytes",
    "final_loss",
    "final_accuracy",
    "passed",
    "weights_sha256",
}


def test_default_run_learns_and_writes_metrics(workload: Workload, tmp_path: Path) -> None:
    run = workload.run(tmp_path)  # the defaults: what `cudabox train` runs

    assert run.returncode == 0, run.stdout + run.stderr
    assert "passed" in run.stdout
    assert "step    300/300" in run.stderr  # progress lines
    metrics = run.metrics
    assert metrics.keys() >= METRICS_KEYS
    assert metrics["framework"] == workload.framework
    assert metrics["device"] == "cpu" and metrics["precision"] == "fp32"
    assert metrics["passed"] is True and metrics["steps"] == 300
    assert metrics["final_loss"] < 0.35 and metrics["final_accuracy"] > 0.9
    assert [step for step, _ in metrics["loss_curve"]] == list(range(25, 301, 25))
    assert metrics["loss_curve"][-1][1] < metrics["loss_curve"][0][1]
    assert metrics["samples_per_s"] > 0
    assert 0 < metrics["import_s"] < metrics["time_to_first_step_s"] < metrics["total_s"]
    assert metrics["peak_memory_bytes"] > 0
    assert len(metrics["weights_sha256"]) == 64
    # One process, small sizing: the same run as before distribution and device sizing existed.
    assert metrics["world_size"] == 1 and metrics["sizing"] == "small"
    assert metrics["samples_per_s_global"] == metrics["samples_per_s"]
    assert metrics["samples_per_s_per_rank"] == [metrics["samples_per_s"]]
    assert (metrics["config"]["width"], metrics["config"]["batch_size"]) == (256, 256)


def test_zero_learning_rate_fails_with_exit_1(workload: Workload, tmp_path: Path) -> None:
    run = workload.run(tmp_path, "--steps", "20", "--lr", "0", "--quiet")

    assert run.returncode == 1, run.stdout + run.stderr
    assert "did not learn" in run.stdout
    assert run.metrics["passed"] is False and run.metrics["status"] == "failed"
    assert no_traceback(run)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "0"], "--steps must be at least 1"),
        (["--device", "cuda"], "refusing to train on the CPU"),
        (["--precision", "fp16", "--device", "cpu"], "fp16 needs a GPU"),
        (["--steps", "ten"], "invalid int value"),
    ],
)
def test_bad_options_exit_2_with_a_message(
    workload: Workload, tmp_path: Path, args: list[str], message: str
) -> None:
    run = workload.run(tmp_path, *args)  # the fixture's environment hides every GPU

    assert run.returncode == 2, run.stdout + run.stderr
    assert message in run.stderr
    assert no_traceback(run)
    assert not (tmp_path / "metrics.json").exists()


def test_killed_run_resumes_to_the_same_weights(
    workload: Workload, tmp_path: Path, reference: Run
) -> None:
    # SIGKILL between checkpoints (the one at step 50 exists, 70 is past it): no chance to clean up.
    killed = workload.run_until(tmp_path, 70, signal.SIGKILL, *FAST)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "metrics.json").exists()

    resumed = workload.run(tmp_path, *FAST, "--resume")

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming from step 50" in resumed.stderr
    assert resumed.metrics["start_step"] == 50
    # Bitwise: the digest covers every weight's bytes.
    assert resumed.metrics["weights_sha256"] == reference.metrics["weights_sha256"]
    assert resumed.metrics["loss_curve"] == reference.metrics["loss_curve"]


def test_sigterm_stops_at_a_step_with_a_checkpoint(
    workload: Workload, tmp_path: Path, reference: Run
) -> None:
    stopped = workload.run_until(tmp_path, 70, signal.SIGTERM, *FAST)

    assert stopped.returncode == 143, stopped.stdout + stopped.stderr
    assert "stopped by SIGTERM" in stopped.stdout
    assert no_traceback(stopped)
    metrics = stopped.metrics
    assert metrics["status"] == "interrupted" and metrics["passed"] is False
    assert 70 <= metrics["steps"] < 200

    resumed = workload.run(tmp_path, *FAST, "--resume")

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert resumed.metrics["start_step"] == metrics["steps"]  # the checkpoint written on SIGTERM
    assert resumed.metrics["weights_sha256"] == reference.metrics["weights_sha256"]


def test_ctrl_c_at_a_terminal_stops_cleanly(workload: Workload, tmp_path: Path) -> None:
    # SIGINT to the whole process group, as a terminal sends it: torch's DataLoader workers get
    # it too and must leave the stop to the training process.
    stopped = workload.run_until(tmp_path, 20, signal.SIGINT, *FAST, group=True)

    assert stopped.returncode == 130, stopped.stdout + stopped.stderr
    assert no_traceback(stopped)
    assert stopped.metrics["status"] == "interrupted"


def test_tensorflow_refuses_to_be_one_of_several_processes(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    torchrun_rank = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}

    run = Workload("tensorflow").run(tmp_path, "--steps", "5", env=torchrun_rank)

    assert run.returncode == 2, run.stdout + run.stderr
    assert "one process per node (MirroredStrategy" in run.stderr
    assert "cudabox train torch --nproc-per-node" in run.stderr
    assert no_traceback(run)


def test_threads_option_is_taken(workload: Workload, tmp_path: Path) -> None:
    # TensorFlow takes it only before its runtime starts: a strategy created first refused it.
    run = workload.run(
        tmp_path, "--steps", "5", "--threads", "1", "--max-loss", "10", "--min-accuracy", "0"
    )

    assert run.returncode == 0, run.stdout + run.stderr
    assert run.metrics["config"]["threads"] == 1


def test_sigint_exits_130(workload: Workload, tmp_path: Path) -> None:
    stopped = workload.run_until(tmp_path, 20, signal.SIGINT, *FAST)

    assert stopped.returncode == 130, stopped.stdout + stopped.stderr
    assert stopped.metrics["status"] == "interrupted"


def test_resume_refuses_a_checkpoint_of_other_options(
    workload: Workload, tmp_path: Path, reference: Run
) -> None:
    shutil.copytree(reference.out, tmp_path, dirs_exist_ok=True)

    run = workload.run(tmp_path, *FAST, "--seed", "1", "--resume")

    assert run.returncode == 2, run.stdout + run.stderr
    assert "seed=0 (now 1)" in run.stderr
    assert no_traceback(run)


def test_resume_without_checkpoint_starts_over(workload: Workload, tmp_path: Path) -> None:
    run = workload.run(
        tmp_path, "--steps", "60", "--resume", "--max-loss", "10", "--min-accuracy", "0"
    )

    assert run.returncode == 0, run.stdout + run.stderr
    assert "starting from step 0" in run.stderr
    assert run.metrics["start_step"] == 0
