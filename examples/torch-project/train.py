"""Classify three interleaved spirals with a small MLP; score held-out data with torchmetrics.

A training project as cudabox runs it: torch is the catalog image's, torchmetrics and tqdm are
this project's own dependencies (pyproject.toml), locked against each image's pins (cudabox.lock)
and layered on the image by `cudabox build`. Runs on the GPU when one is visible, else the CPU,
for a few seconds; exits 1 when the held-out accuracy is below --min-accuracy.

    cudabox run                    # in this folder: the command of [tool.cudabox]
    cudabox run -- python train.py --epochs 60
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch
import torchmetrics
from torch import nn
from tqdm import tqdm

CLASSES = 3


def spirals(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n points on CLASSES interleaved noisy spirals; another seed gives held-out points."""
    gen = torch.Generator().manual_seed(seed)
    label = torch.randint(0, CLASSES, (n,), generator=gen)
    radius = torch.rand(n, generator=gen)
    angle = 4.0 * radius + label * (2 * math.pi / CLASSES) + 0.2 * torch.randn(n, generator=gen)
    points = torch.stack([radius * torch.sin(angle), radius * torch.cos(angle)], dim=1)
    return points, label


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--min-accuracy", type=float, default=0.9)
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"device: {device} ({name}), torch {torch.__version__}, torchmetrics {torchmetrics.__version__}"
    )

    torch.manual_seed(0)
    x, y = (t.to(device) for t in spirals(12_000, seed=0))
    x_test, y_test = (t.to(device) for t in spirals(3_000, seed=1))
    model = nn.Sequential(
        nn.Linear(2, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, CLASSES)
    ).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()

    loss = torch.zeros(())
    start = time.perf_counter()
    for _ in tqdm(range(args.epochs), desc="epochs", file=sys.stdout, disable=None):
        order = torch.randperm(len(x), device=device)
        for i in range(0, len(x), args.batch_size):
            batch = order[i : i + args.batch_size]
            loss = loss_fn(model(x[batch]), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()  # kernels run asynchronously; wait before reading the clock
    seconds = time.perf_counter() - start
    print(f"trained {args.epochs} epochs in {seconds:.1f} s, last loss {loss.item():.4f}")

    accuracy = torchmetrics.Accuracy(task="multiclass", num_classes=CLASSES).to(device)
    f1 = torchmetrics.F1Score(task="multiclass", num_classes=CLASSES, average="macro").to(device)
    model.eval()
    with torch.no_grad():
        predicted = model(x_test).argmax(dim=1)
    accuracy.update(predicted, y_test)
    f1.update(predicted, y_test)
    score = accuracy.compute().item()
    print(f"held-out accuracy {score:.3f}, macro F1 {f1.compute().item():.3f}")
    if score < args.min_accuracy:
        print(f"FAILED: accuracy {score:.3f} < {args.min_accuracy}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
