"""Linear regression on the GPU, done right: the first program to run in a cudabox image.

Learns y = Xw + b + noise (10 features, fixed seed) with SGD and mean-squared error, on the GPU
when one is visible and on the CPU otherwise. The data lives on the device for the whole run
(no copy per step), and timing waits for the GPU, which runs asynchronously.

    python examples/torch/main.py && python examples/torch/test.py
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

FEATURES = 10
NOISE = 0.1
TRUE_BIAS = 0.5
WEIGHTS = Path("linear_torch.pt")  # in the current directory


def true_weights() -> torch.Tensor:
    return torch.randn(FEATURES, generator=torch.Generator().manual_seed(1234))


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n samples of y = Xw + b + noise; a different seed gives held-out data."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, FEATURES, generator=gen)
    y = x @ true_weights() + TRUE_BIAS + NOISE * torch.randn(n, generator=gen)
    return x, y.unsqueeze(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.1)
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {device} ({name}), torch {torch.__version__}")

    torch.manual_seed(0)
    x, y = (t.to(device) for t in make_data(8192, seed=0))
    model = nn.Linear(FEATURES, 1).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    loss_fn = nn.MSELoss()

    start = time.perf_counter()
    for _ in range(args.epochs):
        order = torch.randperm(len(x), device=device)  # shuffled on the device itself
        for i in range(0, len(x), args.batch_size):
            batch = order[i : i + args.batch_size]
            loss = loss_fn(model(x[batch]), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()  # kernels are queued asynchronously; wait before reading the clock
    seconds = max(time.perf_counter() - start, 1e-9)

    samples = args.epochs * len(x)
    print(f"trained {args.epochs} epochs in {seconds:.2f} s: {samples / seconds:,.0f} samples/s")
    with torch.no_grad():
        print(f"training MSE {loss_fn(model(x), y).item():.5f} (noise floor {NOISE**2:.5f})")
    torch.save(model.state_dict(), WEIGHTS)
    print(f"weights saved to {WEIGHTS}")


if __name__ == "__main__":
    main()
