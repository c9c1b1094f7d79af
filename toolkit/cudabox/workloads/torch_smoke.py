"""PyTorch smoke training: a residual MLP on a synthetic task, the way GPU training should look.

- Input pipeline: a DataLoader with worker processes (pinned memory and non-blocking copies on
  GPU). Batch k is a pure function of (seed, k), so a resumed run replays the exact data.
- GPU: bf16 autocast where the GPU has it (Ampere+), else fp16 with a GradScaler; TF32 for
  what stays fp32; fused AdamW; `--compile` for torch.compile.
- CPU: fp32 and deterministic algorithms, so that kill + resume gives bitwise-equal weights.
- Checkpoints are written atomically; SIGTERM/SIGINT stop at a step boundary with a checkpoint.

Run: python -m cudabox.workloads.torch_smoke --help
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import time
from typing import Any

from cudabox.errors import UsageError
from cudabox.workloads import common
from cudabox.workloads.common import Config, Log, StopRequest

_import_start = time.perf_counter()
import torch  # noqa: E402  (timed: import cost is one of the reported figures)
import torch.nn.functional as F  # noqa: E402, N812
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

IMPORT_SECONDS = time.perf_counter() - _import_start
# (The classes below carry `type: ignore[misc]` for mypy runs where torch is not installed and
# its classes are Any.)
CHECKPOINT = "checkpoint.pt"


# --- data ------------------------------------------------------------------------------------


def make_task(seed: int) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    """(train, held-out) splits of (features, labels), generated in memory from `seed`."""
    gen = torch.Generator().manual_seed(common.stream_seed(seed, common.DATA))
    n_clusters = common.CLASSES * common.CLUSTERS_PER_CLASS
    centres = common.CENTRE_SCALE * torch.randn(n_clusters, common.FEATURES, generator=gen)

    def draw(n: int) -> tuple[Any, Any]:
        cluster = torch.randint(0, n_clusters, (n,), generator=gen)
        noise = common.POINT_NOISE * torch.randn(n, common.FEATURES, generator=gen)
        return centres[cluster] + noise, cluster // common.CLUSTERS_PER_CLASS

    return draw(common.TRAIN_SIZE), draw(common.EVAL_SIZE)


class StepBatches(Dataset[tuple[Any, Any]]):  # type: ignore[misc, unused-ignore]
    """Item k is the training batch of step k: a fresh permutation per epoch, plus jitter.

    Used with `sampler=range(start, steps)` and `batch_size=None`, so each worker builds whole
    batches (no per-sample collation) and resuming at step k needs no loader state at all.
    """

    def __init__(self, features: Any, labels: Any, seed: int, batch_size: int) -> None:
        self.features, self.labels = features, labels
        self.seed, self.batch_size = seed, batch_size
        self._epoch, self._order = -1, labels

    def __getitem__(self, step: int) -> tuple[Any, Any]:
        epoch, offset = common.batch_position(step, self.batch_size)
        if epoch != self._epoch:  # each worker keeps its current epoch's permutation
            gen = torch.Generator().manual_seed(common.stream_seed(self.seed, common.ORDER, epoch))
            self._epoch, self._order = epoch, torch.randperm(len(self.labels), generator=gen)
        index = self._order[offset : offset + self.batch_size]
        gen = torch.Generator().manual_seed(common.stream_seed(self.seed, common.JITTER, step))
        jitter = common.AUGMENT_NOISE * torch.randn(len(index), common.FEATURES, generator=gen)
        return self.features[index] + jitter, self.labels[index]


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


# --- device and precision --------------------------------------------------------------------


def pick_device(config: Config) -> tuple[Any, str]:
    """(device, precision). --device cuda without a usable GPU is an error, never a fallback."""
    has_cuda = torch.cuda.is_available()
    if config.device == "cuda" and not has_cuda:
        built = torch.version.cuda
        found = (
            f"this torch {torch.__version__} is a CPU-only build"
            if built is None
            else f"torch {torch.__version__} (CUDA {built}) sees no usable GPU"
        )
        raise common.no_gpu_error(found)
    device = torch.device("cuda" if config.device != "cpu" and has_cuda else "cpu")
    bf16_ok = device.type == "cpu" or torch.cuda.get_device_capability(device) >= (8, 0)
    precision = config.precision
    if precision == "auto":
        precision = "fp32" if device.type == "cpu" else ("bf16" if bf16_ok else "fp16")
    if precision == "fp16" and device.type == "cpu":
        raise UsageError("--precision fp16 needs a GPU", "pass --precision bf16 or fp32 on CPU")
    if precision == "bf16" and not bf16_ok:
        raise UsageError(
            f"{torch.cuda.get_device_name(device)} has no bf16 (needs compute capability 8.0+)",
            "pass --precision fp16 (with loss scaling) or leave --precision auto",
        )
    return device, precision


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


def synchronize(device: Any) -> float:
    """A clock reading after the GPU finished what was queued (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


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


def train(config: Config, log: Log, stop: StopRequest) -> int:
    device, precision = pick_device(config)
    if config.batch_size > common.TRAIN_SIZE:
        raise UsageError(f"--batch-size must be at most {common.TRAIN_SIZE} (the training set)")
    tf32 = configure_backends(device)
    cuda = device.type == "cuda"
    if config.threads:
        torch.set_num_threads(config.threads)

    train_split, eval_split = make_task(config.seed)
    torch.manual_seed(common.stream_seed(config.seed, common.INIT))
    model = ResidualMLP(config.width, config.depth).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01, fused=cuda)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(config.steps))
    # Loss scaling only for fp16: bf16 has fp32's exponent range, so gradients do not underflow.
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def autocast() -> Any:
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    forward = torch.compile(model) if config.compile else model

    checkpoint_path = config.out / CHECKPOINT
    start_step, loss_curve = 0, []
    if config.resume and checkpoint_path.exists():
        saved = torch.load(checkpoint_path, map_location=device, weights_only=True)
        common.check_resume(config, saved["trajectory"], checkpoint_path)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["rng"]["cpu"].cpu())  # map_location moved it
        if cuda and saved["rng"]["cuda"] is not None:
            torch.cuda.set_rng_state(saved["rng"]["cuda"].cpu(), device)
        start_step, loss_curve = saved["step"], [list(p) for p in saved["loss_curve"]]
        log.progress(f"resuming from step {start_step} ({checkpoint_path})")
    elif config.resume:
        log.progress(f"no checkpoint in {config.out}: starting from step 0")

    def save_checkpoint(step: int) -> None:
        state = {
            "trajectory": config.trajectory(),
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
        StepBatches(*train_split, seed=config.seed, batch_size=config.batch_size),
        sampler=range(start_step, config.steps),
        batch_size=None,
        num_workers=config.workers,
        pin_memory=cuda,
        persistent_workers=config.workers > 0,
        prefetch_factor=4 if config.workers > 0 else None,
    )
    log.progress(
        f"training on {device_name(device)} ({precision}{', compiled' if config.compile else ''}): "
        f"steps {start_step}..{config.steps}, batch {config.batch_size}, workers {config.workers}"
    )

    throughput = common.Throughput(start_step, config.steps, config.batch_size)
    first_step_at: float | None = None
    first_step_unix: float | None = None
    done = start_step
    last_log = (start_step, time.perf_counter())
    model.train()
    for step, (x_cpu, y_cpu) in enumerate(loader, start=start_step):
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
        done = step + 1

        if first_step_at is None:
            first_step_at, first_step_unix = synchronize(device), time.time()
        if done == throughput.from_step:
            throughput.begin(synchronize(device))
        if done % config.log_every == 0 or done == config.steps:
            value = loss.item()  # synchronizes; only on logging steps
            loss_curve.append([done, value])
            now = time.perf_counter()
            rate = (done - last_log[0]) * config.batch_size / max(now - last_log[1], 1e-9)
            last_log = (done, now)
            log.progress(f"step {done:>6}/{config.steps}  loss {value:.4f}  {rate:,.0f} samples/s")
        if done % config.checkpoint_every == 0 or stop.signum is not None:
            save_checkpoint(done)
        if stop.signum is not None:
            break
    throughput.finish(done, synchronize(device))
    del loader  # stop the workers before evaluation and exit

    cudnn: Any = torch.backends.cudnn
    metrics = common.base_metrics(config)
    metrics.update(
        framework_version=torch.__version__,
        cuda_version=torch.version.cuda,
        cudnn_version=cudnn.version() if cudnn.is_available() else None,
        device=device.type,
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
    )
    result = common.Result(
        start_step=start_step,
        steps_done=done,
        loss_curve=loss_curve,
        final_train_loss=loss_curve[-1][1] if loss_curve else None,
        first_step_at=first_step_at,
        first_step_unix=first_step_unix,
        throughput=throughput,
    )
    if stop.signum is not None and done < config.steps:  # a signal after the last step: done
        return common.finish_interrupted(config, log, metrics, result, stop, weights_sha256(model))
    eval_loss, eval_accuracy = evaluate(model, eval_split, device, autocast)
    return common.finish(
        config, log, metrics, result, eval_loss, eval_accuracy, weights_sha256(model)
    )


def device_name(device: Any) -> str:
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    return common.cpu_name()


def main(argv: list[str] | None = None) -> int:
    return common.run("torch", train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
