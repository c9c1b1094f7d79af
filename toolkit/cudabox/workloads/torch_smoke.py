"""PyTorch smoke training: a residual MLP on a synthetic task, the way GPU training should look.

- Input pipeline: a DataLoader with worker processes (pinned memory and non-blocking copies on
  GPU). Batch k is a pure function of (seed, k), so a resumed run replays the exact data.
- GPU: bf16 autocast where the GPU has it (Ampere+), else fp16 with a GradScaler; TF32 for
  what stays fp32; fused AdamW; `--compile` for torch.compile. The default size on a GPU keeps it
  busy with matmuls (common.SIZINGS), on a CPU it stays small.
- CPU: fp32 and deterministic algorithms, so that kill + resume gives bitwise-equal weights.
- Checkpoints are written atomically; SIGTERM/SIGINT stop at a step boundary with a checkpoint.
- Under torchrun (WORLD_SIZE set): one rank per process, gloo on CPU, NCCL on GPU (cuda:
  LOCAL_RANK). Each rank trains on its slice of every global batch, so the data of a step is the
  same at any world size; DistributedDataParallel averages the gradients. Rank 0 alone writes
  checkpoints and metrics and reads the checkpoint on --resume (it reaches the others through the
  process group, so the nodes need no shared folder). Without torchrun: one process, no
  process group, as before.

Run: python -m cudabox.workloads.torch_smoke --help
     python -m torch.distributed.run --standalone --nproc-per-node 2 \\
         -m cudabox.workloads.torch_smoke --out runs/torch
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import signal
import time
from datetime import timedelta
from typing import Any

from cudabox.errors import UsageError
from cudabox.workloads import common
from cudabox.workloads.common import Config, Log, StopRequest, World

_import_start = time.perf_counter()
import torch  # noqa: E402  (timed: import cost is one of the reported figures)
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402, N812
from torch import nn  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

IMPORT_SECONDS = time.perf_counter() - _import_start
# (The classes below carry `type: ignore[misc]` for mypy runs where torch is not installed and
# its classes are Any.)
CHECKPOINT = "checkpoint.pt"
# How long a rank waits for the others in a collective before it fails: long enough for rank 0 to
# write a checkpoint or evaluate, short enough that a lost rank ends the job in minutes.
COLLECTIVE_TIMEOUT = timedelta(minutes=5)


# --- data ------------------------------------------------------------------------------------


def make_task(seed: int, train_size: int) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    """(train, held-out) splits of (features, labels), generated in memory from `seed`."""
    gen = torch.Generator().manual_seed(common.stream_seed(seed, common.DATA))
    n_clusters = common.CLASSES * common.CLUSTERS_PER_CLASS
    centres = common.CENTRE_SCALE * torch.randn(n_clusters, common.FEATURES, generator=gen)

    def draw(n: int) -> tuple[Any, Any]:
        cluster = torch.randint(0, n_clusters, (n,), generator=gen)
        noise = common.POINT_NOISE * torch.randn(n, common.FEATURES, generator=gen)
        return centres[cluster] + noise, cluster // common.CLUSTERS_PER_CLASS

    return draw(train_size), draw(common.EVAL_SIZE)


class StepBatches(Dataset[tuple[Any, Any]]):  # type: ignore[misc, unused-ignore]
    """Item k is this rank's slice of the training batch of step k: a fresh permutation per
    epoch, plus jitter.

    Used with `sampler=range(start, steps)` and `batch_size=None`, so each worker builds whole
    batches (no per-sample collation) and resuming at step k needs no loader state at all.
    """

    def __init__(
        self, features: Any, labels: Any, seed: int, batch_size: int, world: World
    ) -> None:
        self.features, self.labels = features, labels
        self.seed, self.batch_size = seed, batch_size
        self.rows = common.shard(batch_size, world)
        self._epoch, self._order = -1, labels

    def __getitem__(self, step: int) -> tuple[Any, Any]:
        epoch, offset = common.batch_position(step, self.batch_size, len(self.labels))
        if epoch != self._epoch:  # each worker keeps its current epoch's permutation
            gen = torch.Generator().manual_seed(common.stream_seed(self.seed, common.ORDER, epoch))
            self._epoch, self._order = epoch, torch.randperm(len(self.labels), generator=gen)
        start, stop = self.rows
        index = self._order[offset + start : offset + stop]
        pieces = []
        for seed, first, rows in common.jitter_chunks(
            self.seed, step, self.batch_size, start, stop
        ):
            gen = torch.Generator().manual_seed(seed)
            chunk = torch.randn(rows, common.FEATURES, generator=gen)
            pieces.append(chunk[max(start - first, 0) : stop - first])
        jitter = common.AUGMENT_NOISE * (pieces[0] if len(pieces) == 1 else torch.cat(pieces))
        return self.features[index] + jitter, self.labels[index]


def ignore_stop_signals(_worker_id: int) -> None:
    """In each DataLoader worker: leave SIGTERM/SIGINT to the training process.

    torchrun (and Ctrl-C at a terminal) signal the whole process group. A worker that died of it
    would make the loader raise in the main process before it could finish the step and write its
    checkpoint; workers still exit when the main process does (the loader watches it).
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# --- model -----------------------------------------------------------------------------------


class Block(nn.Module):  # type: ignore[misc, unused-ignore]
    """Pre-norm residual MLP block: x + W2 gelu(W1 norm(x))."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, 2 * width)
        self.down = nn.Linear(2 * width, width)

    def forward(self, x: Any) -> Any:
        return x + self.down(F.gelu(self.up(self.norm(x))))


class ResidualMLP(nn.Module):  # type: ignore[misc, unused-ignore]
    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        self.stem = nn.Linear(common.FEATURES, width)
        self.blocks = nn.Sequential(*(Block(width) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, common.CLASSES)

    def forward(self, x: Any) -> Any:
        return self.head(self.norm(self.blocks(self.stem(x))))


def weights_sha256(model: Any) -> str:
    """sha256 over every parameter and buffer (name, then raw bytes), in state_dict order."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        data = tensor.detach().cpu().contiguous()
        digest.update(name.encode())
        # Raw bytes without numpy (not every torch image has it): the tensor is contiguous.
        digest.update(ctypes.string_at(data.data_ptr(), data.numel() * data.element_size()))
    return digest.hexdigest()


def warmup_cosine(steps: int) -> Any:
    """LR factor: linear warm-up over 5% of the steps, then cosine decay to zero."""
    warm = max(1, steps // 20)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

    return factor


# --- device, precision and ranks -------------------------------------------------------------


def pick_device(config: Config, world: World) -> tuple[Any, common.Precision, common.Sizing]:
    """(device, precision, sizing). --device cuda without a usable GPU is an error, never a
    fallback."""
    has_cuda = torch.cuda.is_available()
    if config.device == "cuda" and not has_cuda:
        built = torch.version.cuda
        found = (
            f"this torch {torch.__version__} is a CPU-only build"
            if built is None
            else f"torch {torch.__version__} (CUDA {built}) sees no usable GPU"
        )
        raise common.no_gpu_error(found)
    if config.device == "cpu" or not has_cuda:
        device = torch.device("cpu")
    else:
        count = torch.cuda.device_count()
        if world.local_rank >= count:
            raise UsageError(
                f"rank {world.rank} is local rank {world.local_rank} of its node, but this node "
                f"has {count} visible GPU{'s' if count != 1 else ''}: one rank per GPU",
                f"pass --nproc-per-node {count} or fewer (or --device cpu)",
            )
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    kind: common.DeviceKind = "cuda" if device.type == "cuda" else "cpu"
    capability = tuple(torch.cuda.get_device_capability(device)) if kind == "cuda" else (0, 0)
    bf16_ok = kind == "cpu" or capability >= (8, 0)
    precision = common.choose_precision(config.precision, kind, bf16_ok, device_name(device))
    return device, precision, common.sizing_for(kind, (capability[0], capability[1]))


class TorchCollectives:
    """common.Collectives over a CPU (gloo) group: the stop vote never waits for the GPU."""

    def __init__(self, group: Any, size: int) -> None:
        self.group, self.size = group, size

    def agree_stop(self, signum: int) -> int:
        vote = torch.tensor([signum], dtype=torch.int64)
        dist.all_reduce(vote, op=dist.ReduceOp.MAX, group=self.group)
        return int(vote.item())

    def gather(self, value: float) -> list[float]:
        mine = torch.tensor([value], dtype=torch.float64)
        every = [torch.zeros_like(mine) for _ in range(self.size)]
        dist.all_gather(every, mine, group=self.group)
        return [float(t.item()) for t in every]

    def mean(self, value: float) -> float:
        total = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(total, group=self.group)
        return float(total.item()) / self.size

    def broadcast(self, value: int) -> int:
        sent = torch.tensor([value], dtype=torch.int64)
        dist.broadcast(sent, src=0, group=self.group)
        return int(sent.item())

    def barrier(self) -> None:
        dist.barrier(group=self.group)

    def broadcast_object(self, value: Any) -> Any:
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]


def join_group(world: World, device: Any) -> TorchCollectives:
    """Join torchrun's process group (env://): gloo on CPU, NCCL on GPU, plus a gloo group for
    the loop's small CPU-side votes when the gradients go over NCCL."""
    if device.type == "cuda":
        dist.init_process_group("nccl", timeout=COLLECTIVE_TIMEOUT, device_id=device)
        control = dist.new_group(backend="gloo", timeout=COLLECTIVE_TIMEOUT)
    else:
        dist.init_process_group("gloo", timeout=COLLECTIVE_TIMEOUT)
        control = dist.group.WORLD
    return TorchCollectives(control, world.size)


def configure_backends(device: Any) -> bool:
    """Deterministic kernels on CPU; TF32 and cuDNN autotuning on GPU. Returns TF32 on/off."""
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
        return False
    backends: Any = torch.backends  # attributes differ across the torch versions we ship
    if hasattr(backends, "fp32_precision"):  # torch >= 2.9: the allow_tf32 flags are deprecated
        backends.cuda.matmul.fp32_precision = "tf32"
        backends.cudnn.conv.fp32_precision = "tf32"
    else:
        backends.cuda.matmul.allow_tf32 = True
        backends.cudnn.allow_tf32 = True
    backends.cudnn.benchmark = True
    return True


def synchronize(device: Any) -> None:
    """Wait until the GPU finished what was queued (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- training --------------------------------------------------------------------------------


def evaluate(model: Any, data: tuple[Any, Any], device: Any, autocast: Any) -> tuple[float, float]:
    features, labels = data
    model.eval()
    total_loss, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(labels), 1024):
            x = features[start : start + 1024].to(device)
            y = labels[start : start + 1024].to(device)
            with autocast():
                logits = model(x).float()
            total_loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.argmax(dim=1) == y).sum().item())
    model.train()
    return total_loss / len(labels), correct / len(labels)


def read_checkpoint(
    config: Config, world: World, log: Log, comms: TorchCollectives | None
) -> dict[str, Any] | None:
    """The checkpoint in OUT on --resume, read by rank 0 and handed to every rank."""
    path = config.out / CHECKPOINT
    saved = None
    if config.resume and world.is_main:
        if path.exists():
            saved = torch.load(path, map_location="cpu", weights_only=True)
        else:
            log.progress(f"no checkpoint in {config.out}: starting from step 0")
    if comms is not None and config.resume:
        saved = comms.broadcast_object(saved)
    if saved is not None:
        common.check_resume(config, saved["trajectory"], path)
        written = saved.get("world_size", 1)
        log.progress(f"resuming from step {saved['step']} ({path})")
        if written != world.size:
            # Same data and global batch at any world size: the run continues as it would have,
            # up to the order in which the ranks' gradients are summed.
            log.progress(
                f"the checkpoint was written by {written} rank(s), this run has {world.size}: "
                "the weights will match an uninterrupted run closely, not bitwise"
            )
    return saved


def train(config: Config, world: World, log: Log, stop: StopRequest) -> int:
    device, precision, sizing = pick_device(config, world)
    config = common.sized(config, sizing, world.size)
    comms = join_group(world, device) if world.launched else None
    try:
        return _train(config, world, log, stop, device, precision, comms)
    finally:
        if comms is not None:
            dist.destroy_process_group()


def _train(
    config: Config,
    world: World,
    log: Log,
    stop: StopRequest,
    device: Any,
    precision: common.Precision,
    comms: TorchCollectives | None,
) -> int:
    tf32 = configure_backends(device)
    cuda = device.type == "cuda"
    if config.threads:
        torch.set_num_threads(config.threads)

    train_split, eval_split = make_task(config.seed, config.train_size)
    torch.manual_seed(common.stream_seed(config.seed, common.INIT))
    model = ResidualMLP(config.width, config.depth).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01, fused=cuda)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(config.steps))
    # Loss scaling only for fp16: bf16 has fp32's exponent range, so gradients do not underflow.
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def autocast() -> Any:
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    checkpoint_path = config.out / CHECKPOINT
    start_step, loss_curve, resumed_from = 0, [], None
    saved = read_checkpoint(config, world, log, comms)
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["rng"]["cpu"])
        if cuda and saved["rng"]["cuda"] is not None:
            torch.cuda.set_rng_state(saved["rng"]["cuda"], device)
        start_step, loss_curve = saved["step"], [list(p) for p in saved["loss_curve"]]
        resumed_from = saved.get("world_size", 1)
        del saved

    # DDP, not an all-reduce after backward: it overlaps the gradient all-reduce with the
    # backward pass bucket by bucket and is what torch.compile's DDPOptimizer expects, so the
    # smoke run takes the path real training takes. On gloo its sums are reproducible.
    wrapped: Any = model
    if world.launched:
        wrapped = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    forward = torch.compile(wrapped) if config.compile else wrapped

    def save_checkpoint(step: int) -> None:
        state = {
            "trajectory": config.trajectory(),
            "world_size": world.size,
            "step": step,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": {
                "cpu": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(device) if cuda else None,
            },
            "loss_curve": loss_curve,
        }
        common.atomic_write(checkpoint_path, lambda handle: torch.save(state, handle))

    loader = DataLoader(
        StepBatches(*train_split, seed=config.seed, batch_size=config.batch_size, world=world),
        sampler=range(start_step, config.steps),
        batch_size=None,
        num_workers=config.workers,
        pin_memory=cuda,
        persistent_workers=config.workers > 0,
        prefetch_factor=4 if config.workers > 0 else None,
        worker_init_fn=ignore_stop_signals,
    )
    ranks = f", {world.size} ranks" if world.launched else ""
    log.starting(
        device_name(device),
        f"{precision}{', compiled' if config.compile else ''}{ranks}",
        config,
        start_step,
    )

    steps = common.Steps(
        config,
        world,
        log,
        stop,
        comms or common.Solo(),
        start_step=start_step,
        loss_curve=loss_curve,
        wait=lambda _loss: synchronize(device),
        value=lambda loss: float(loss.item()),
        save=save_checkpoint,
    )
    model.train()
    for x_cpu, y_cpu in loader:
        x = x_cpu.to(device, non_blocking=True)
        y = y_cpu.to(device, non_blocking=True)
        with autocast():
            logits = forward(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaled: Any = scaler.scale(loss)  # unchanged unless fp16 loss scaling is on
        scaled.backward()
        scaler.step(optimizer)
        scaler.update()
        schedule.step()
        if steps.after_step(loss):
            break
    steps.finish()
    del loader  # stop the workers before evaluation and exit

    cudnn: Any = torch.backends.cudnn
    facts = common.Facts(
        framework_version=torch.__version__,
        cuda_version=torch.version.cuda,
        cudnn_version=cudnn.version() if cudnn.is_available() else None,
        device="cuda" if cuda else "cpu",
        device_name=device_name(device),
        precision=precision,
        compile=config.compile,
        tf32=tf32,
        import_s=IMPORT_SECONDS,
        peak_memory_bytes=torch.cuda.max_memory_allocated(device)
        if cuda
        else common.peak_rss_bytes(),
        peak_memory_source="cuda_max_memory_allocated" if cuda else "process_max_rss",
        checkpoint=str(checkpoint_path),
        backend=dist.get_backend() if world.launched else None,
        extra={"resumed_from_world_size": resumed_from},
    )
    return common.conclude(
        steps,
        facts,
        evaluate=lambda: evaluate(model, eval_split, device, autocast),
        digest=lambda: weights_sha256(model),
    )


def device_name(device: Any) -> str:
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    return common.cpu_name()


def main(argv: list[str] | None = None) -> int:
    return common.run("torch", train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
