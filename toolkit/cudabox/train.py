"""Training the smoke workload: its program, its output folder, and the summary of a run.

The workload runs wherever the target puts it (a container on this host, this Python, a Slurm
or Kubernetes job); each ends with the same summary: image and why, samples/s, loss, accuracy.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cudabox.errors import UsageError
from cudabox.targets import Job, Outcome, Target
from cudabox.workloads import module_for

if TYPE_CHECKING:
    from cudabox.launch import LaunchOptions


@dataclass(frozen=True)
class TrainOptions:
    out: Path  # checkpoints and metrics, on this host
    json: bool  # stdout carries only the summary
    require_gpu: bool
    workload: tuple[str, ...]  # options for the workload module (after --)


def workload_options(given: tuple[str, ...], require_gpu: bool, cpu: bool) -> tuple[str, ...]:
    """The workload's own options: the device first, when --require-gpu or --cpu says it."""
    if require_gpu:
        return ("--device", "cuda", *given)
    if cpu:
        return ("--device", "cpu", *given)
    return given


def output_folder(folder: Path, dry_run: bool) -> None:
    """Create `folder` (or check it) up front: a run must not fail at its end for its output.

    A dry run creates nothing, but a file where the folder should be is refused all the same.
    """
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--out {folder} is a file, not a folder", "name a folder for the run")
    if dry_run:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".cudabox-write-test-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UsageError(
            f"--out {folder} cannot be written: {exc.strerror or exc}",
            "pass --out pointing to a folder you can write",
        ) from None


def train(target: Target, launch: LaunchOptions, options: TrainOptions) -> Outcome:
    """Run the framework's smoke workload on `target`, writing to --out as the target sees it."""
    module = module_for(launch.framework)
    program = ("python", "-m", module, "--out", target.out_dir(options.out), *options.workload)
    job = Job(
        launch.framework,
        program,
        launch,
        out=options.out,
        require_gpu=options.require_gpu,
        workload=True,
        to_stderr=options.json,
    )
    return target.run(job)


def summary(out: Path, outcome: Outcome) -> dict[str, Any]:
    """What the run reports, from its metrics.json (missing or unreadable: the fields are None)."""
    metrics_path = out / "metrics.json"
    metrics: dict[str, Any] = {}
    if metrics_path.is_file():
        try:
            loaded = json.loads(metrics_path.read_text())
            metrics = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            metrics = {}
    code = outcome.code or 0
    return {
        "image": outcome.image,
        "why": outcome.why,
        "exit_code": code,
        "passed": bool(metrics.get("passed")) and code == 0,
        "device": metrics.get("device_name"),
        "world_size": metrics.get("world_size", 1),
        "samples_per_s": metrics.get("samples_per_s"),
        "final_loss": metrics.get("final_loss"),
        "final_accuracy": metrics.get("final_accuracy"),
        "time_to_first_step_s": metrics.get("time_to_first_step_s"),
        "metrics": str(metrics_path) if metrics else None,
    }
