"""What both smoke workloads share: options, sizing, ranks, signals, files, the loop's bookkeeping,
the metrics and the verdict.

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
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any, Literal, Protocol

from cudabox.errors import CudaboxError, UsageError

# Taken when the workload package loads, before the framework import: the origin of every
# "time to ..." figure in the metrics.
STARTED = time.perf_counter()
STARTED_UNIX = time.time()

Framework = Literal["torch", "tensorflow"]
DeviceChoice = Literal["auto", "cpu", "cuda"]
DeviceKind = Literal["cpu", "cuda"]
PrecisionChoice = Literal["auto", "fp32", "bf16", "fp16"]
Precision = Literal["fp32", "bf16", "fp16"]

EXIT_PASSED = 0
EXIT_NOT_LEARNED = 1
METRICS_SCHEMA = 1


@dataclass(frozen=True)
class Config:
    """The options of one run. Fields named in TRAJECTORY decide the weights a run ends with.

    width, depth, batch_size and lr hold the small sizing until `sized` resolves them for the
    device the run got; `explicit` names those the command line set (they win over any sizing).
    """

    framework: Framework
    steps: int
    batch_size: int  # the global batch: samples per step over all ranks together
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
    explicit: frozenset[str] = frozenset()
    sizing: str = "small"
    train_size: int = 16384

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["out"] = str(self.out)
        data["metrics"] = str(self.metrics)
        data["explicit"] = sorted(self.explicit)
        return data

    def trajectory(self) -> dict[str, Any]:
        """The options a resumed run must share with the run that wrote the checkpoint."""
        return {key: getattr(self, key) for key in TRAJECTORY}


TRAJECTORY = ("framework", "steps", "batch_size", "lr", "seed", "width", "depth", "train_size")


# --- sizing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizing:
    """Default model, batch and rate for a kind of device; explicit options win.

    small (CPUs, GPUs without tensor cores): a correctness check that CI repeats many times, and
    whose global batch stays the same at any world size, so every world size trains on the same
    data. large (GPUs with tensor cores): also a speed check, so each GPU gets a batch big enough
    that its matmuls, not kernel launches, set the pace, and the global batch grows with the
    number of GPUs. A GPU without tensor cores would need minutes for the large run (a GTX 1080
    runs fp16 at 1/64 of its fp32 rate), so it keeps the small one.
    """

    name: Literal["small", "large"]
    width: int
    depth: int
    batch_size: int
    per_replica: bool  # batch_size is per GPU (times the world size), else global
    lr: float

    def batch_for(self, replicas: int) -> int:
        return self.batch_size * replicas if self.per_replica else self.batch_size


SIZINGS: dict[str, Sizing] = {
    "small": Sizing("small", width=256, depth=4, batch_size=256, per_replica=False, lr=3e-3),
    # Per GPU: 16384 x 2048 x 4096 matmuls (0.27 TFLOP each), 6.6 TFLOP a step, ~10 ms on an
    # H100 against ~1-2 ms of kernel launches. The peak learning rate shrinks with the width
    # (3e-3 * 256 / 2048, as muP scales Adam's rate for hidden layers): at 3e-3 a model this wide
    # overshoots in its first steps.
    "large": Sizing("large", width=2048, depth=4, batch_size=16384, per_replica=True, lr=4e-4),
}
SIZED = ("width", "depth", "batch_size", "lr")


def train_size_for(batch_size: int) -> int:
    """Training-set size: 64 batches per epoch (the CPU default's 16384 / 256), so that a run sees
    each sample about 5 times at any batch size and a wide model has data enough not to memorise.
    Capped at 2**23 samples (1 GiB of float32 features in each process)."""
    return min(max(TRAIN_SIZE, 64 * batch_size), MAX_TRAIN_SIZE)


def sizing_for(kind: DeviceKind, capability: tuple[int, int]) -> Sizing:
    """large on GPUs with tensor cores (compute capability 7.0+), small everywhere else."""
    return SIZINGS["large" if kind == "cuda" and capability >= (7, 0) else "small"]


def sized(config: Config, sizing: Sizing, replicas: int) -> Config:
    """The config with `sizing` filled in where the command line left it open."""

    def pick(key: str, default: int) -> int:
        return int(getattr(config, key)) if key in config.explicit else default

    width, depth = pick("width", sizing.width), pick("depth", sizing.depth)
    batch = pick("batch_size", sizing.batch_for(replicas))
    lr = config.lr if "lr" in config.explicit else sizing.lr
    if batch % replicas:
        raise UsageError(
            f"--batch-size {batch} does not split evenly over {replicas} ranks",
            f"pass a multiple of {replicas}: --batch-size is the global batch of all ranks",
        )
    train_size = train_size_for(batch)
    if batch > train_size:
        raise UsageError(f"--batch-size must be at most {train_size} (the training set)")
    return replace(
        config,
        width=width,
        depth=depth,
        batch_size=batch,
        lr=lr,
        sizing=sizing.name,
        train_size=train_size,
    )


# --- options ---------------------------------------------------------------------------------


def build_parser(framework: Framework) -> argparse.ArgumentParser:
    module = "torch_smoke" if framework == "torch" else "tf_smoke"
    cpu, gpu = SIZINGS["small"], SIZINGS["large"]
    parser = argparse.ArgumentParser(
        prog=f"python -m cudabox.workloads.{module}",
        description=(
            f"Smoke training for {framework}: a residual MLP learns a synthetic classification "
            "task; exits 0 only if it learned (1 if not, 2 on bad options, 130/143 if stopped)."
            + (
                " Runs under torchrun too (one rank per process: gloo on CPU, NCCL on GPU)."
                if framework == "torch"
                else " Uses every visible GPU of this node (MirroredStrategy)."
            )
        ),
    )
    add = parser.add_argument
    add("--steps", type=int, default=300, help="optimizer steps in total (default: 300)")
    add(
        "--batch-size",
        type=int,
        default=None,
        help=f"samples per step, all ranks together (default: {cpu.batch_size}; "
        f"{gpu.batch_size} per GPU on GPUs with tensor cores)",
    )
    add(
        "--lr",
        type=float,
        default=None,
        help=f"peak learning rate; 0 cannot learn (default: {cpu.lr:g}; {gpu.lr:g} on GPUs "
        "with tensor cores)",
    )
    add("--seed", type=int, default=0, help="seed for data, weights and data order (default: 0)")
    add(
        "--width",
        type=int,
        default=None,
        help=f"hidden width of the model (default: {cpu.width}; {gpu.width} on GPUs with "
        "tensor cores)",
    )
    add(
        "--depth",
        type=int,
        default=None,
        help=f"residual blocks (default: {cpu.depth}, on every device)",
    )
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
    explicit = frozenset(key for key in SIZED if getattr(args, key) is not None)
    cpu = SIZINGS["small"]
    width = cpu.width if args.width is None else args.width
    depth = cpu.depth if args.depth is None else args.depth
    batch_size = cpu.batch_size if args.batch_size is None else args.batch_size
    lr = cpu.lr if args.lr is None else args.lr
    checks = [
        (args.steps >= 1, "--steps must be at least 1", "pass --steps 300 (the default)"),
        (batch_size >= 1, "--batch-size must be at least 1", "pass --batch-size 256"),
        (lr >= 0, "--lr must not be negative", "pass --lr 3e-3"),
        (width >= 1 and depth >= 0, "--width/--depth out of range", "use the defaults"),
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
        batch_size=batch_size,
        lr=lr,
        seed=args.seed,
        width=width,
        depth=depth,
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
        explicit=explicit,
        train_size=train_size_for(batch_size),
    )


def no_gpu_error(found: str) -> UsageError:
    return UsageError(
        f"--device cuda was asked for, but {found}; refusing to train on the CPU instead",
        "run on a host with a usable NVIDIA GPU (check `cudabox probe`), or pass --device cpu",
    )


def choose_precision(
    requested: PrecisionChoice, kind: DeviceKind, bf16_ok: bool, device_name: str
) -> Precision:
    """auto: fp32 on CPU (bitwise resume), bf16 on Ampere+, fp16 with loss scaling before that."""
    if requested == "auto":
        return "fp32" if kind == "cpu" else ("bf16" if bf16_ok else "fp16")
    if requested == "fp16" and kind == "cpu":
        raise UsageError("--precision fp16 needs a GPU", "pass --precision bf16 or fp32 on CPU")
    if requested == "bf16" and not bf16_ok:
        raise UsageError(
            f"{device_name} has no bf16 (needs compute capability 8.0+)",
            "pass --precision fp16 (with loss scaling) or leave --precision auto",
        )
    return requested


def check_resume(config: Config, saved: dict[str, Any], where: Path) -> None:
    """A checkpoint only continues the run that wrote it: same options that shape the weights."""
    ours = config.trajectory()
    diff = [f"{k}={saved.get(k)!r} (now {ours[k]!r})" for k in ours if saved.get(k) != ours[k]]
    if diff:
        raise UsageError(
            f"the checkpoint in {where} was written with other options: {', '.join(diff)}",
            "pass the same options to --resume, or drop --resume (or use another --out) to start over",
        )


# --- ranks -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    """This process's place in a torchrun job, from the variables torchrun sets.

    Without WORLD_SIZE the process runs alone (launched=False) and does no collective at all.
    """

    rank: int = 0
    local_rank: int = 0
    size: int = 1
    launched: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes metrics and checkpoints and prints progress."""
        return self.rank == 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> World:
        env = os.environ if env is None else env
        if "WORLD_SIZE" not in env:
            return cls()
        values: dict[str, int] = {}
        for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
            text = env.get(name)
            try:
                values[name] = int(text) if text is not None else -1
            except ValueError:
                values[name] = -1
            if values[name] < 0:
                raise UsageError(
                    f"WORLD_SIZE is set, but {name}={text!r} is not a rank: this is not a "
                    "torchrun worker",
                    "launch with `torchrun --nproc-per-node N -m cudabox.workloads.torch_smoke`, "
                    "or unset WORLD_SIZE to train in one process",
                )
        size, rank = values["WORLD_SIZE"], values["RANK"]
        if size < 1 or rank >= size:
            raise UsageError(
                f"RANK={rank} does not fit WORLD_SIZE={size}",
                "let torchrun set RANK, LOCAL_RANK and WORLD_SIZE",
            )
        return cls(rank=rank, local_rank=values["LOCAL_RANK"], size=size, launched=True)


class Collectives(Protocol):
    """The few collectives the loop needs besides the framework's gradient reduction."""

    def agree_stop(self, signum: int) -> int:
        """The largest pending signal of any rank (0: none): every rank stops at the same step."""
        ...

    def gather(self, value: float) -> list[float]:
        """`value` of every rank, in rank order."""
        ...

    def mean(self, value: float) -> float:
        """The mean of `value` over the ranks (each rank's loss is over its own shard)."""
        ...

    def broadcast(self, value: int) -> int:
        """Rank 0's `value` on every rank."""
        ...

    def barrier(self) -> None: ...


class Solo:
    """One process: no other rank to agree with. `replicas` in-process replicas (TensorFlow's
    MirroredStrategy) share its clock, so each has the same share of the rate."""

    def __init__(self, replicas: int = 1) -> None:
        self.replicas = replicas

    def agree_stop(self, signum: int) -> int:
        return signum

    def gather(self, value: float) -> list[float]:
        return [value] * self.replicas

    def mean(self, value: float) -> float:
        return value  # in-process replicas: the framework reduced the loss already

    def broadcast(self, value: int) -> int:
        return value

    def barrier(self) -> None:
        return None


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
TRAIN_SIZE = 16384  # the small sizing's training set; train_size_for() gives the others
MAX_TRAIN_SIZE = 1 << 23
EVAL_SIZE = 4096
# Jitter is drawn in chunks of this many rows, each from its own stream, so that a rank draws only
# the chunks its shard covers, and a batch of up to JITTER_CHUNK rows is one stream (as before).
JITTER_CHUNK = 4096


def batch_position(step: int, batch_size: int, train_size: int = TRAIN_SIZE) -> tuple[int, int]:
    """(epoch, offset) of the batch for `step`: every epoch is one permutation, drop-last."""
    per_epoch = max(1, train_size // batch_size)
    return step // per_epoch, (step % per_epoch) * batch_size


def shard(batch_size: int, world: World) -> tuple[int, int]:
    """[start, stop) of this rank's rows in every global batch."""
    per_rank = batch_size // world.size
    return world.rank * per_rank, (world.rank + 1) * per_rank


def stream_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed for one (seed, purpose, index...) stream, stable across runs and machines."""
    value = seed & 0xFFFFFFFF
    for part in parts:
        value = (value * 0x9E3779B1 + part + 1) % (1 << 63)
    return value


# Stream purposes for stream_seed.
DATA, ORDER, JITTER, INIT = 1, 2, 3, 4


def jitter_chunks(
    seed: int, step: int, batch_size: int, start: int, stop: int
) -> Iterator[tuple[int, int, int]]:
    """(stream seed, first row, rows) of each jitter chunk that covers rows [start, stop) of step
    `step`'s batch of `batch_size` rows; a chunk's rows are drawn whole, then sliced."""
    for chunk in range(start // JITTER_CHUNK, (stop - 1) // JITTER_CHUNK + 1):
        # Chunk 0 keeps the single-stream recipe, so a batch of up to JITTER_CHUNK rows is the
        # same at every world size, and the same as before chunking existed.
        parts = (JITTER, step) if chunk == 0 else (JITTER, step, chunk)
        first = chunk * JITTER_CHUNK
        yield stream_seed(seed, *parts), first, min(JITTER_CHUNK, batch_size - first)


def train_flops_per_sample(width: int, depth: int) -> int:
    """Matmul FLOPs of one training sample: forward 2*MACs, backward twice the forward.

    Only the Linear layers: LayerNorm, GELU, the loss and the optimizer are memory-bound and
    add no matmul work; counting them would inflate achieved_tflops.
    """
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

    def starting(self, device: str, details: str, config: Config, start_step: int) -> None:
        """The line that opens training: where, how (`details`), and the run's shape."""
        self.progress(
            f"training on {device} ({details}): steps {start_step}..{config.steps}, "
            f"batch {config.batch_size}, width {config.width}, depth {config.depth} "
            f"({config.sizing} sizing), workers {config.workers}"
        )


class Throughput:
    """Samples/s over the steady state: the clock starts after `warmup` steps of this process.

    The first steps pay for allocator growth, cuDNN autotuning and compilation; counting them
    would measure start-up, which the metrics report on its own as time to first step. Time spent
    writing checkpoints is left out too (`exclude`): it is disk speed, reported as checkpoint_s.
    """

    def __init__(self, first_step: int, last_step: int, batch_size: int) -> None:
        self.warmup = min(10, max(1, (last_step - first_step) // 5))
        self.from_step = first_step + self.warmup
        self.batch_size = batch_size
        self.start: float | None = None
        self.excluded = 0.0
        self.samples_per_s: float | None = None

    def begin(self, now: float) -> None:
        """Call with a synchronized clock when step `from_step` is complete."""
        self.start = now

    def exclude(self, seconds: float) -> None:
        if self.start is not None:
            self.excluded += seconds

    def finish(self, steps_done: int, now: float) -> None:
        elapsed = None if self.start is None else now - self.start - self.excluded
        if elapsed is not None and steps_done > self.from_step and elapsed > 0:
            self.samples_per_s = (steps_done - self.from_step) * self.batch_size / elapsed


def peak_rss_bytes() -> int:
    # ru_maxrss is KiB on Linux, bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss) if sys.platform == "darwin" else int(rss) * 1024


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


class Steps:
    """The bookkeeping of a training loop, the same for both frameworks.

    The loop calls `after_step(loss)` once per optimizer step; it times the first step and the
    steady state, logs, agrees with the other ranks on a stop, checkpoints when due, and answers
    whether to leave the loop. `wait(loss)` blocks until the device finished the step (GPU work is
    asynchronous); `value(loss)` reads the loss (and waits too); `save(step)` writes a checkpoint
    and is called on rank 0 only.
    """

    def __init__(
        self,
        config: Config,
        world: World,
        log: Log,
        stop: StopRequest,
        comms: Collectives,
        *,
        start_step: int,
        loss_curve: list[list[float]],
        wait: Callable[[Any], object],
        value: Callable[[Any], float],
        save: Callable[[int], None],
    ) -> None:
        self.config, self.world, self.log, self.stop, self.comms = config, world, log, stop, comms
        self.start_step = self.done = start_step
        self.loss_curve = loss_curve
        self.wait, self.value, self.save = wait, value, save
        self.throughput = Throughput(start_step, config.steps, config.batch_size)
        self.first_step_at: float | None = None
        self.first_step_unix: float | None = None
        self.checkpoint_s = 0.0
        self.stopped = False
        self.loss: Any = None
        self._last_log = (start_step, time.perf_counter())

    def after_step(self, loss: Any) -> bool:
        """Book step `done + 1`; True when every rank is to leave the loop now."""
        config = self.config
        self.done += 1
        self.loss = loss
        done = self.done
        if self.first_step_at is None:
            self.wait(loss)
            self.first_step_at, self.first_step_unix = time.perf_counter(), time.time()
        if done == self.throughput.from_step:
            self.wait(loss)
            self.throughput.begin(time.perf_counter())
        if done % config.log_every == 0 or done == config.steps:
            # The loss of the global batch; waits for the device: only on logging steps.
            value = self.comms.mean(self.value(loss))
            self.loss_curve.append([done, value])
            now = time.perf_counter()
            last_step, last_time = self._last_log
            rate = (done - last_step) * config.batch_size / max(now - last_time, 1e-9)
            self._last_log = (done, now)
            self.log.progress(
                f"step {done:>6}/{config.steps}  loss {value:.4f}  {rate:,.0f} samples/s"
            )
        # Every step, so that a signal that reached some ranks only stops all of them together.
        signum = self.comms.agree_stop(self.stop.signum or 0)
        if signum:
            self.stop.signum, self.stopped = signum, True
        if done % config.checkpoint_every == 0 or self.stopped:
            self.checkpoint()
        return self.stopped

    def checkpoint(self) -> None:
        self.wait(self.loss)  # the device is idle: what follows is the checkpoint's own time
        began = time.perf_counter()
        if self.world.is_main:
            self.save(self.done)
        self.comms.barrier()  # every rank waits, so every rank leaves the same time out
        seconds = time.perf_counter() - began
        self.checkpoint_s += seconds
        self.throughput.exclude(seconds)

    def finish(self) -> None:
        if self.done > self.start_step:
            self.wait(self.loss)
        self.throughput.finish(self.done, time.perf_counter())

    @property
    def interrupted(self) -> bool:
        return self.stopped and self.done < self.config.steps  # a stop after the last step: done

    def to_metrics(self) -> dict[str, Any]:
        """The loop's figures. Rates: `global` counts every rank's samples, `per_rank` is a list
        indexed by rank of each rank's own samples/s; `samples_per_s` is the global rate."""
        config, world = self.config, self.world
        own = self.throughput.samples_per_s  # global batch over this rank's clock
        rates = self.comms.gather(-1.0 if own is None else own / world.size)
        per_rank = [None if rate < 0 else rate for rate in rates]
        flops = train_flops_per_sample(config.width, config.depth)
        first = self.first_step_at
        return {
            "steps": self.done,
            "start_step": self.start_step,
            "resumed": self.start_step > 0,
            "loss_curve": self.loss_curve,
            "final_train_loss": self.loss_curve[-1][1] if self.loss_curve else None,
            "world_size": world.size,
            "samples_per_s": own,
            "samples_per_s_global": own,
            "samples_per_s_per_rank": per_rank,
            "steady_state_from_step": self.throughput.from_step,
            "checkpoint_s": self.checkpoint_s,
            "time_to_first_step_s": None if first is None else first - STARTED,
            "first_step_unix": self.first_step_unix,
            "total_s": since_start(),
            "train_flops_per_sample": flops,
            "achieved_tflops": None if own is None else own * flops / 1e12,
            "achieved_tflops_per_rank": None if own is None else own * flops / 1e12 / world.size,
        }


# --- metrics and verdict ---------------------------------------------------------------------


@dataclass(frozen=True)
class Facts:
    """What the framework reports about the run's setup, for the metrics."""

    framework_version: str
    cuda_version: str | None
    cudnn_version: int | str | None
    device: DeviceKind
    device_name: str
    precision: Precision
    compile: bool
    tf32: bool
    import_s: float
    peak_memory_bytes: int
    peak_memory_source: str
    checkpoint: str
    backend: str | None  # how gradients meet: "gloo"/"nccl" (torchrun), None alone
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(data.pop("extra"))
        return data


def base_metrics(config: Config) -> dict[str, Any]:
    return {
        "schema": METRICS_SCHEMA,
        "framework": config.framework,
        "python_version": platform.python_version(),
        "config": config.to_json(),
        "sizing": config.sizing,
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


def conclude(
    steps: Steps,
    facts: Facts,
    evaluate: Callable[[], tuple[float, float]],
    digest: Callable[[], str],
) -> int:
    """After the loop: rank 0 judges the run, writes the metrics and prints one result line;
    every rank returns rank 0's exit code (which also keeps them all alive until it is written)."""
    config, log = steps.config, steps.log
    loop = steps.to_metrics()  # a collective: every rank, before rank 0 goes its own way
    code = 0
    if steps.world.is_main:
        metrics = {**base_metrics(config), **facts.to_json(), **loop}
        if steps.interrupted:
            code = _interrupted(config, log, metrics, steps, digest())
        else:
            where = f"{facts.device_name}, {facts.precision}"
            if steps.world.size > 1:
                where += f", {steps.world.size} ranks over {facts.backend}"
            loss, accuracy = evaluate()
            code = _judged(config, log, metrics, loss, accuracy, digest(), where)
    return steps.comms.broadcast(code)


def _judged(
    config: Config,
    log: Log,
    metrics: dict[str, Any],
    loss: float,
    accuracy: float,
    digest: str,
    where: str,
) -> int:
    passed, text = verdict(config, loss, accuracy)
    code = EXIT_PASSED if passed else EXIT_NOT_LEARNED
    metrics.update(
        final_loss=loss,
        final_accuracy=accuracy,
        thresholds={"max_loss": config.max_loss, "min_accuracy": config.min_accuracy},
        weights_sha256=digest,
        status="passed" if passed else "failed",
        passed=passed,
        exit_code=code,
    )
    write_json(config.metrics, metrics)
    rate = metrics["samples_per_s"]
    speed = (
        f"{rate:,.0f} samples/s" if rate is not None else "samples/s not measured (too few steps)"
    )
    if passed:
        log.result(f"passed: {text}; {speed} on {where}; metrics in {config.metrics}")
    else:
        log.result(
            f"FAILED: the model did not learn: {text} after {metrics['steps']} steps on {where}. "
            "A correct setup passes with the default options; check --lr/--steps, or the "
            f"numerics of this device and precision. Metrics in {config.metrics}"
        )
    return code


def _interrupted(
    config: Config, log: Log, metrics: dict[str, Any], steps: Steps, digest: str
) -> int:
    stop = steps.stop
    metrics.update(
        weights_sha256=digest, status="interrupted", passed=False, exit_code=stop.exit_code
    )
    write_json(config.metrics, metrics)
    name = signal.Signals(stop.signum).name if stop.signum else "signal"
    log.result(
        f"stopped by {name} after step {steps.done}; checkpoint in {config.out}: "
        "run again with --resume to continue"
    )
    return stop.exit_code


Train = Callable[[Config, World, Log, StopRequest], int]


def run(framework: Framework, train: Train, argv: list[str] | None) -> int:
    """Parse options, train with signal handling; user mistakes print a message, no traceback."""
    try:
        config = parse_config(framework, argv)
        world = World.from_env()
        with StopRequest().installed() as stop:
            # Progress and the result line come from rank 0 alone; errors from every rank.
            log = Log(config.quiet or not world.is_main)
            code = train(config, world, log, stop)
        return code
    except CudaboxError as exc:
        print(exc.render(), file=sys.stderr, flush=True)
        return int(exc.exit_code)
    except SystemExit as exc:  # argparse: --help (0) or a bad option (2)
        return exc.code if isinstance(exc.code, int) else 2
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        return 128 + signal.SIGINT
