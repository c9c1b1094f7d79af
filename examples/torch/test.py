"""Checks what main.py learned: held-out error near the noise floor, weights near the true ones.

python examples/torch/test.py   # after main.py, from the same directory; exits 1 on failure
"""

from __future__ import annotations

import sys

import torch
from main import FEATURES, NOISE, TRUE_BIAS, WEIGHTS, make_data, true_weights
from torch import nn

TOLERANCE = 0.02


def main() -> int:
    if not WEIGHTS.exists():
        print(f"FAILED: no {WEIGHTS} in this directory: run main.py first", file=sys.stderr)
        return 1
    model = nn.Linear(FEATURES, 1)
    model.load_state_dict(torch.load(WEIGHTS, weights_only=True))
    x, y = make_data(4096, seed=1)  # held out: main.py trained on seed 0
    with torch.no_grad():
        mse = nn.functional.mse_loss(model(x), y).item()
    w_error = (model.weight.detach().squeeze(0) - true_weights()).abs().max().item()
    b_error = abs(model.bias.item() - TRUE_BIAS)
    print(f"held-out MSE {mse:.5f} (noise floor {NOISE**2:.5f})")
    print(f"largest weight error {w_error:.4f}, bias error {b_error:.4f} (tolerance {TOLERANCE})")
    failures = []
    if mse > 1.5 * NOISE**2:
        failures.append(f"held-out MSE {mse:.5f} > {1.5 * NOISE**2:.5f}")
    if w_error > TOLERANCE or b_error > TOLERANCE:
        failures.append("learned weights are not close to the true ones")
    if failures:
        print("FAILED: " + "; ".join(failures), file=sys.stderr)
        return 1
    print("passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
