"""`cudabox train`: the smoke training workload in its image, in this Python, or on a cluster.

In the image it is a `cudabox run` of the workload module with --out mounted; --here runs it in
this Python (under torchrun with --nproc-per-node); --scheduler hands it to Slurm or Kubernetes.
Each path ends with the same summary: image and why, samples/s, loss, accuracy.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from cudabox.container import Mount
from cudabox.errors import ExitCode, Unavailable, UsageError
from cudabox.launch import (
    OUT_DIR,
    LaunchOptions,
    choose_image,
    launch,
    launched_command,
    probe_host,
    require_visible_gpu,
)
from cudabox.options import absolute, current_directory
from cudabox.output import print_json, progress, table


@dataclass(frozen=True)
class TrainOptions:
    launch: LaunchOptions
    here: bool
    require_gpu: bool
    out: Path
    json: bool
    workload: tuple[str, ...]  # options for the workload module (after --)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainOptions:
        launch_options = LaunchOptions.from_args(args, here=args.here)
        out = absolute(args.out) if args.out else current_directory() / "runs" / args.framework
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out} is a file, not a folder", "name a folder for the run")
        if not args.dry_run:
            _writable_folder(out)
        workload = list(args.rest)
        if args.require_gpu:
            workload = ["--device", "cuda", *workload]
        elif args.cpu:
            workload = ["--device", "cpu", *workload]
        return cls(launch_options, args.here, args.require_gpu, out, args.json, tuple(workload))


def _writable_folder(folder: Path) -> None:
    """Create `folder` (or check it) up front: a run must not fail at its end for its output."""
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


def cmd_train(args: argparse.Namespace) -> int:
    from cudabox.workloads import module_for

    options = TrainOptions.from_args(args)
    framework = options.launch.framework
    module = module_for(framework)
    if options.here:
        if options.require_gpu:
            require_visible_gpu(framework, probe_host(), here=True)
        return _train_here(module, options)

    if args.scheduler != "none":
        return _train_on_cluster(module, options, args)
    choice = choose_image(
        framework,
        options.launch.image,
        options.launch.cpu,
        options.require_gpu,
        probe_host(),
        options.launch,
    )
    if choice.image.framework != framework:
        raise UsageError(
            f"--image {options.launch.image} is a {choice.image.framework} image; the {framework} "
            "workload cannot run in it",
            f"name a {framework} image, or drop --image",
        )
    command = ["python", "-m", module, "--out", OUT_DIR, *options.workload]
    # With --json, stdout carries only the summary; the workload's progress goes to stderr.
    code = launch(
        options.launch, choice, command, (Mount(str(options.out), OUT_DIR),), to_stderr=options.json
    )
    if code is None:
        return ExitCode.OK
    _summarise(options.out, choice.image.name, choice.why, code, options.json)
    return code


def _train_on_cluster(module: str, options: TrainOptions, args: argparse.Namespace) -> int:
    """Slurm: the job writes to --out (a shared folder) and is followed; Kubernetes: submitted."""
    from cudabox.cluster import POD_OUT, ClusterOptions, submit

    cluster = ClusterOptions.from_args(args)
    shared = cluster.scheduler == "slurm"
    out = str(options.out) if shared else POD_OUT
    program = ["python", "-m", module, "--out", out, *options.workload]
    framework = options.launch.framework
    code = submit(framework, options.launch, cluster, program, options.out if shared else None)
    if code is None or not shared:
        return ExitCode.OK if code is None else code
    _summarise(options.out, f"{cluster.scheduler} job", "see above", code, options.json)
    return code


def _train_here(module: str, options: TrainOptions) -> int:
    import importlib.util

    framework = options.launch.framework
    package = "torch" if framework == "torch" else "tensorflow"
    if importlib.util.find_spec(package) is None:
        raise Unavailable(
            f"{package} is not installed in this Python ({sys.executable})",
            f"install it here, or drop --here to train in the {framework} image",
        )
    program = ["python", "-m", module, "--out", str(options.out), *options.workload]
    command = launched_command(program, options.launch)
    if command[0] == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run", *command[1:]]
    else:
        command[0] = sys.executable
    if options.launch.dry_run:
        print(shlex.join(command))
        return ExitCode.OK
    progress(f"cudabox: training here: {shlex.join(command)}")
    process = subprocess.Popen(command, stdout=sys.stderr if options.json else None)

    def stop(signum: int, _frame: FrameType | None) -> None:
        # SIGTERM/SIGHUP reach only us: pass them on so the workload checkpoints and stops.
        process.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        try:
            code = process.wait()
        except KeyboardInterrupt:
            # The child got the same Ctrl-C from the terminal; let it save and stop.
            code = process.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    _summarise(options.out, "here", f"this Python ({sys.executable})", code, options.json)
    return code


def _summarise(out: Path, image: str, why: str, code: int, as_json: bool) -> None:
    metrics_path = out / "metrics.json"
    metrics: dict[str, Any] = {}
    if metrics_path.is_file():
        try:
            loaded = json.loads(metrics_path.read_text())
            metrics = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            metrics = {}
    summary = {
        "image": image,
        "why": why,
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
    if as_json:
        print_json(summary)
        return
    rows = [[key, _fmt(value)] for key, value in summary.items()]
    print(table(["summary", ""], rows))


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return "-" if value is None else str(value)
