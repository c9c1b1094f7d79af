"""What both smoke workloads share: options, signals, atomic files, progress, metrics, verdict.

Standard library only: the framework is imported by the workload module itself, so that its
import time can be measured and so that this module loads in the toolkit's own environment.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Literal

from cudabox.errors import CudaboxError, UsageError

# Taken when the workload package loads, before the framework import: the origin of every
# "time to ..." figure in the metrics.
STARTED = time.perf_counter()
STARTED_UNIX = time.time()

Framework = Literal["torch", "tensorflow"]
DeviceChoice = Literal["auto", "cpu", "cuda"]
PrecisionChoice = Literal["auto", "fp32", "bf16", "fp16"]

EXIT_PASSED = 0
EXIT_NOT_LEARNED = 1
METRICS_SCHEMA = 1


@dataclass(frozen=True)
class Config:
    """The options of one run. Fields marked in TRAJECTORY decide the weights a run ends with."""

    framework: Framework
    steps: int
    batch_size: int
    lr: float
    seed: int
    width: int
    depth: int
    device: DeviceChoice
    precision: PrecisionChoice
    compile: bool
    workers: int
    threads: int
    out: Path
    metrics: Path
    checkpoint_every: int
    log_every: int
    resume: bool
    quiet: bool
    max_loss: float
    min_accuracy: float

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["out"] = str(self.out)
        data["metrics"] = str(self.metrics)
        return data

    def trajectory(self) -> dict[str, Any]:
        """The options a resumed run must share with the run that wrote the checkpoint."""
        return {key: getattr(self, key) for key in TRAJECTORY}


TRAJECTORY = ("framework", "steps", "batch_size", "lr", "seed", "width", "depth")


def build_parser(framework: Framework) -> argparse.ArgumentParser:
    module = "torch_smoke" if framework == "torch" else "tf_smoke"
    parser = argparse.ArgumentParser(
        prog=f"python -m cudabox.workloads.{module}",
        description=(
            f"Smoke training for {framework}: a residual MLP learns a synthetic classification "
            "task; exits 0 only if it learned (1 if not, 2 on bad options, 130/143 if stopped)."
        ),
    )
    add = parser.add_argument
    add("--steps", type=int, default=300, help="optimizer steps in total (default: 300)")
    add("--batch-size", type=int, default=256, help="samples per step (default: 256)")
    add("--lr", type=float, default=3e-3, help="peak learning rate; 0 cannot learn (default: 3e-3)")
    add("--seed", type=int, default=0, help="seed for data, weights and data order (default: 0)")
    add("--width", type=int, default=256, help="hidden width of the model (default: 256)")
    add("--depth", type=int, default=4, help="residual blocks (default: 4)")
    add(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto = cuda when a GPU is visible, else cpu; cuda never falls back to cpu",
    )
    add(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default="auto",
        help="auto = bf16 on GPUs that support it, fp16 with loss scaling on older ones, fp32 on cpu",
    )
    add(
        "--compile",
        action="store_true",
        help="compile the train step (torch.compile / XLA jit_compile)",
    )
    add(
        "--workers",
        type=int,
        default=2,
        help="input pipeline workers: DataLoader processes / tf.data parallel calls (default: 2)",
    )
    add(
        "--threads",
        type=int,
        default=0,
        help="CPU threads for math ops; 0 = the framework's default (one per core). On a busy "
        "machine 1 can be several times faster; the same value is needed for bitwise resume",
    )
    add(
        "--out",
        type=Path,
        default=Path("runs") / framework,
        help=f"checkpoints and metrics go here (default: runs/{framework} in the current directory)",
    )
    add("--metrics", type=Path, default=None, help="metrics JSON (default: OUT/metrics.json)")
    add(
        "--checkpoint-every", type=int, default=100, help="steps between checkpoints (default: 100)"
    )
    add("--log-every", type=int, default=25, help="steps between progress lines (default: 25)")
    add("--resume", action="store_true", help="continue from the checkpoint in OUT, if any")
    add("--quiet", action="store_true", help="no progress lines, only the result")
    add("--max-loss", type=float, default=0.35, help="held-out loss must end below (default: 0.35)")
    add(
        "--min-accuracy",
        type=float,
        default=0.9,
        help="held-out accuracy must end above (default: 0.9)",
    )
    return parser


def parse_config(framework: Framework, argv: list[str] | None) -> Config:
    args = build_parser(framework).parse_args(argv)
    checks = [
        (args.steps >= 1, "--steps must be at least 1", "pass --steps 300 (the default)"),
        (args.batch_size >= 1, "--batch-size must be at least 1", "pass --batch-size 256"),
        (args.lr >= 0, "--lr must not be negative", "pass --lr 3e-3"),
        (args.width >= 1 and args.depth >= 0, "--width/--depth out of range", "use the defaults"),
        (args.workers >= 0, "--workers must not be negative", "pass --workers 0 to load inline"),
        (args.threads >= 0, "--threads must not be negative", "pass --threads 0 (the default)"),
        (args.checkpoint_every >= 1, "--checkpoint-every must be at least 1", "pass 100"),
        (args.log_every >= 1, "--log-every must be at least 1", "pass 25"),
    ]
    for ok, message, fix in checks:
        if not ok:
            raise UsageError(message, fix)
    out: Path = args.out
    return Config(
        framework=framework,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        width=args.width,
        depth=args.depth,
        device=args.device,
        precision=args.precision,
        compile=args.compile,
        workers=args.workers,
        threads=args.threads,
        out=out,
        metrics=args.metrics if args.metrics is not None else out / "metrics.json",
        checkpoint_every=args.checkpoint_every,
        log_every=args.log_every,
        resume=args.resume,
        quiet=args.quiet,
        max_loss=args.max_loss,
        min_accuracy=args.min_accuracy,
    )


def no_gpu_error(found: str) -> UsageError:
    return UsageError(
        f"--device cuda was asked for, but {found}; refusing to train on the CPU instead",
        "run on a host with a usable NVIDIA GPU (check `cudabox probe`), or pass --device cpu",
    )


def check_resume(config: Config, saved: dict[str, Any], where: Path) -> None:
    """A checkpoint only continues the run that wrote it: same options that shape the weights."""
    ours = config.trajectory()
    diff = [f"{k}={saved.get(k)!r} (now {ours[k]!r})" for k in ours if saved.get(k) != ours[k]]
    if diff:
        raise UsageError(
            f"the checkpoint in {where} was written with other options: {', '.join(diff)}",
            "pass the same options to --resume, or drop --resume (or use another --out) to start over",
        )


# --- task ------------------------------------------------------------------------------------

# The synthetic task, the same recipe in both frameworks: FEATURES-dim points drawn around
# CLUSTERS_PER_CLASS random centres per class. Several centres per class make it non-linear:
# the default model reaches ~97% held-out accuracy in 300 steps, while a linear one (--depth 0)
# stays near 53% and fails the check.
FEATURES = 32
CLASSES = 10
CLUSTERS_PER_CLASS = 8
CENTRE_SCALE = 1.0
POINT_NOISE = 1.0
AUGMENT_NOISE = 0.05  # fresh jitter per step, added by the input pipeline's workers
TRAIN_SIZE = 16384
EVAL_SIZE = 4096


def batch_position(step: int, batch_size: int) -> tuple[int, int]:
    """(epoch, offset) of the batch for `step`: every epoch is one permutation, drop-last."""
    per_epoch = max(1, TRAIN_SIZE // batch_size)
    return step // per_epoch, (step % per_epoch) * batch_size


def stream_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed for one (seed, purpose, index...) stream, stable across runs and machines."""
    value = seed & 0xFFFFFFFF
    for part in parts:
        value = (value * 0x9E3779B1 + part + 1) % (1 << 63)
    return value


# Stream purposes for stream_seed.
DATA, ORDER, JITTER, INIT = 1, 2, 3, 4


def train_flops_per_sample(width: int, depth: int) -> int:
    """Matmul FLOPs of one training sample: forward 2*MACs, backward twice the forward."""
    macs = FEATURES * width + depth * 2 * width * (2 * width) + width * CLASSES
    return 3 * 2 * macs


# --- signals ---------------------------------------------------------------------------------


class StopRequest:
    """SIGTERM/SIGINT set a flag; the loop stops at the next step boundary with 128+signal."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or 0)

    @contextmanager
    def installed(self) -> Iterator[StopRequest]:
        previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


# --- files -----------------------------------------------------------------------------------


def atomic_write(path: Path, write: Any) -> None:
    """Call write(file) on a temp file next to `path`, fsync, then rename over `path`.

    A reader (or a resumed run) sees the old file or the new one, never half of one, even if
    the process is killed mid-write.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2) + "\n"
    atomic_write(path, lambda handle: handle.write(text.encode()))


# --- progress and timing ---------------------------------------------------------------------


class Log:
    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def progress(self, message: str) -> None:
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)

    def result(self, message: str) -> None:
        print(message, flush=True)


class Throughput:
    """Samples/s over the steady state: the clock starts after `warmup` steps of this process.

    The first steps pay for allocator growth, cuDNN autotuning and compilation; counting them
    would measure start-up, which the metrics report on its own as time to first step.
    """

    def __init__(self, first_step: int, last_step: int, batch_size: int) -> None:
        self.warmup = min(10, max(1, (last_step - first_step) // 5))
        self.from_step = first_step + self.warmup
        self.batch_size = batch_size
        self.start: float | None = None
        self.samples_per_s: float | None = None

    def begin(self, now: float) -> None:
        """Call with a synchronized clock when step `from_step` is complete."""
        self.start = now

    def finish(self, steps_done: int, now: float) -> None:
        if self.start is not None and steps_done > self.from_step and now > self.start:
            self.samples_per_s = (
                (steps_done - self.from_step) * self.batch_size / (now - self.start)
            )


def peak_rss_bytes() -> int:
    # ru_maxrss is KiB on Linux, bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss) if sys.platform == "darwin" else int(rss) * 1024


def base_metrics(config: Config) -> dict[str, Any]:
    return {
        "schema": METRICS_SCHEMA,
        "framework": config.framework,
        "python_version": platform.python_version(),
        "config": config.to_json(),
        "start_unix": STARTED_UNIX,
    }


def verdict(config: Config, loss: float, accuracy: float) -> tuple[bool, str]:
    ok_loss = loss < config.max_loss
    ok_acc = accuracy > config.min_accuracy
    text = (
        f"held-out loss {loss:.4f} {'<' if ok_loss else '>='} {config.max_loss}, "
        f"accuracy {accuracy:.4f} {'>' if ok_acc else '<='} {config.min_accuracy}"
    )
    return ok_loss and ok_acc, text


def since_start(now: float | None = None) -> float:
    return (time.perf_counter() if now is None else now) - STARTED


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} CPUs)"
    except OSError:
        pass
    return (platform.processor() or platform.machine()) + f" ({os.cpu_count()} CPUs)"


@dataclass
class Result:
    """What the training loop measured; the workload adds framework facts to the metrics."""

    start_step: int
    steps_done: int
    loss_curve: list[list[float]]
    final_train_loss: float | None
    first_step_at: float | None
    first_step_unix: float | None
    throughput: Throughput
    extra: dict[str, Any] = field(default_factory=dict)

    def to_metrics(self, config: Config) -> dict[str, Any]:
        first = self.first_step_at
        rate = self.throughput.samples_per_s
        flops = train_flops_per_sample(config.width, config.depth)
        return {
            "steps": self.steps_done,
            "start_step": self.start_step,
            "resumed": self.start_step > 0,
            "loss_curve": self.loss_curve,
            "final_train_loss": self.final_train_loss,
            "samples_per_s": rate,
            "steady_state_from_step": self.throughput.from_step,
            "time_to_first_step_s": None if first is None else first - STARTED,
            "first_step_unix": self.first_step_unix,
            "total_s": since_start(),
            "train_flops_per_sample": flops,
            "achieved_tflops": None if rate is None else rate * flops / 1e12,
            **self.extra,
        }


def finish(
    config: Config,
    log: Log,
    metrics: dict[str, Any],
    result: Result,
    eval_loss: float,
    eval_accuracy: float,
    digest: str,
) -> int:
    """Judge the run, write the metrics, print one result line; returns the exit code."""
    passed, text = verdict(config, eval_loss, eval_accuracy)
    code = EXIT_PASSED if passed else EXIT_NOT_LEARNED
    metrics.update(result.to_metrics(config))
    metrics.update(
        final_loss=eval_loss,
        final_accuracy=eval_accuracy,
        thresholds={"max_loss": config.max_loss, "min_accuracy": config.min_accuracy},
        weights_sha256=digest,
        status="passed" if passed else "failed",
        passed=passed,
        exit_code=code,
    )
    write_json(config.metrics, metrics)
    rate = result.throughput.samples_per_s
    speed = (
        f"{rate:,.0f} samples/s" if rate is not None else "samples/s not measured (too few steps)"
    )
    where = f"{metrics['device_name']}, {metrics['precision']}"
    if passed:
        log.result(f"passed: {text}; {speed} on {where}; metrics in {config.metrics}")
    else:
        log.result(
            f"FAILED: the model did not learn: {text} after {result.steps_done} steps on {where}. "
            "A correct setup passes with the default options; check --lr/--steps, or the "
            f"numerics of this device and precision. Metrics in {config.metrics}"
        )
    return code


def finish_interrupted(
    config: Config,
    log: Log,
    metrics: dict[str, Any],
    result: Result,
    stop: StopRequest,
    digest: str,
) -> int:
    metrics.update(result.to_metrics(config))
    metrics.update(
        weights_sha256=digest, status="interrupted", passed=False, exit_code=stop.exit_code
    )
    write_json(config.metrics, metrics)
    name = signal.Signals(stop.signum).name if stop.signum else "signal"
    log.result(
        f"stopped by {name} after step {result.steps_done}; checkpoint in {config.out}: "
        "run again with --resume to continue"
    )
    return stop.exit_code


def run(
    framework: Framework, train: Callable[[Config, Log, StopRequest], int], argv: list[str] | None
) -> int:
    """Parse options, train with signal handling; user mistakes print a message, no traceback."""
    try:
        config = parse_config(framework, argv)
        with StopRequest().installed() as stop:
            return train(config, Log(config.quiet), stop)
    except CudaboxError as exc:
        print(exc.render(), file=sys.stderr, flush=True)
        return int(exc.exit_code)
    except SystemExit as exc:  # argparse: --help (0) or a bad option (2)
        return exc.code if isinstance(exc.code, int) else 2
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        return 128 + signal.SIGINT
