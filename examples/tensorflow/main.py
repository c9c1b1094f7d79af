"""Linear regression on the GPU, done right: the first program to run in a cudabox image.

Learns y = Xw + b + noise (10 features, fixed seed) with SGD and mean-squared error, on the GPU
when one is visible and on the CPU otherwise. Keras places the model on the GPU by itself;
tf.data feeds it, shuffling each epoch and prefetching the next batch while one trains.

    python examples/tensorflow/main.py && python examples/tensorflow/test.py
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TF's C++ start-up notices
import keras
import tensorflow as tf

FEATURES = 10
NOISE = 0.1
TRUE_BIAS = 0.5
WEIGHTS = Path("linear_tf.weights.h5")  # in the current directory


def true_weights() -> tf.Tensor:
    return tf.random.stateless_normal([FEATURES], seed=[1234, 0])


def make_data(n: int, seed: int) -> tuple[tf.Tensor, tf.Tensor]:
    """n samples of y = Xw + b + noise; a different seed gives held-out data."""
    x = tf.random.stateless_normal([n, FEATURES], seed=[seed, 1])
    noise = NOISE * tf.random.stateless_normal([n], seed=[seed, 2])
    y = tf.linalg.matvec(x, true_weights()) + TRUE_BIAS + noise
    return x, y[:, None]


def build_model() -> keras.Model:
    return keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(1)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.1)
    args = parser.parse_args()

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        print(f"device: {gpus[0].name} ({details.get('device_name', 'GPU')}), TF {tf.__version__}")
    else:
        print(f"device: CPU (no GPU visible), TF {tf.__version__}")

    keras.utils.set_random_seed(0)
    x, y = make_data(8192, seed=0)
    data = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(8192, seed=0)
        .batch(args.batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    model = build_model()
    model.compile(optimizer=keras.optimizers.SGD(args.lr), loss="mse")

    start = time.perf_counter()
    # shuffle=False: the dataset already shuffles; fit returns once the work is done.
    model.fit(data, epochs=args.epochs, shuffle=False, verbose=0)
    seconds = max(time.perf_counter() - start, 1e-9)

    samples = args.epochs * len(x)
    print(f"trained {args.epochs} epochs in {seconds:.2f} s: {samples / seconds:,.0f} samples/s")
    mse = float(model.evaluate(x, y, batch_size=1024, verbose=0))
    print(f"training MSE {mse:.5f} (noise floor {NOISE**2:.5f})")
    model.save_weights(WEIGHTS)
    print(f"weights saved to {WEIGHTS}")


if __name__ == "__main__":
    main()
