"""Checks what main.py learned: held-out error near the noise floor, weights near the true ones.

python examples/tensorflow/test.py   # after main.py, from the same directory; exits 1 on failure
"""

from __future__ import annotations

import sys

import tensorflow as tf
from main import NOISE, TRUE_BIAS, WEIGHTS, build_model, make_data, true_weights

TOLERANCE = 0.02


def main() -> int:
    if not WEIGHTS.exists():
        print(f"FAILED: no {WEIGHTS} in this directory: run main.py first", file=sys.stderr)
        return 1
    model = build_model()
    model.load_weights(WEIGHTS)
    x, y = make_data(4096, seed=1)  # held out: main.py trained on seed 0
    mse = float(tf.reduce_mean(tf.square(model(x) - y)))
    kernel, bias = model.layers[-1].get_weights()
    w_error = float(tf.reduce_max(tf.abs(kernel[:, 0] - true_weights())))
    b_error = abs(float(bias[0]) - TRUE_BIAS)
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
