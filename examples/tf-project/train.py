"""Classify three interleaved spirals with a Keras MLP whose width and learning rate KerasTuner
picks; exits 1 when the held-out accuracy of the best model is below --min-accuracy.

A training project as cudabox runs it: TensorFlow and Keras are the catalog image's, keras-tuner
is this project's own dependency (pyproject.toml), locked against each image's pins
(cudabox.lock) and layered on the image by `cudabox build`. Keras uses the GPU when one is
visible, else the CPU; the search takes a few seconds. The tuner's trials go to a temporary
folder (or --out), not into the mounted project.

    cudabox run                    # in this folder: the command of [tool.cudabox]
    cudabox run -- python train.py --trials 6
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TF's C++ start-up notices
import keras
import keras_tuner
import numpy as np
import tensorflow as tf

CLASSES = 3


def spirals(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n points on CLASSES interleaved noisy spirals; another seed gives held-out points."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, CLASSES, n)
    radius = rng.random(n)
    angle = 4.0 * radius + label * (2 * math.pi / CLASSES) + 0.2 * rng.standard_normal(n)
    points = np.stack([radius * np.sin(angle), radius * np.cos(angle)], axis=1)
    return points.astype("float32"), label


def build_model(hp: keras_tuner.HyperParameters) -> keras.Model:
    units = hp.Choice("units", [32, 64, 128])
    model = keras.Sequential(
        [
            keras.Input(shape=(2,)),
            keras.layers.Dense(units, activation="relu"),
            keras.layers.Dense(units, activation="relu"),
            keras.layers.Dense(CLASSES),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(hp.Float("lr", 1e-3, 3e-2, sampling="log")),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--min-accuracy", type=float, default=0.9)
    parser.add_argument("--out", default=None, help="the tuner's folder (default: a temporary one)")
    args = parser.parse_args()

    gpus = tf.config.list_physical_devices("GPU")
    print(
        f"device: {'GPU ' + gpus[0].name if gpus else 'CPU'}, tensorflow {tf.__version__}, "
        f"keras {keras.__version__}, keras-tuner {keras_tuner.__version__}"
    )
    keras.utils.set_random_seed(0)
    x, y = spirals(6_000, seed=0)
    x_test, y_test = spirals(3_000, seed=1)

    with tempfile.TemporaryDirectory(prefix="tuner-") as scratch:
        tuner = keras_tuner.RandomSearch(
            build_model,
            objective="val_accuracy",
            max_trials=args.trials,
            seed=0,
            directory=args.out or scratch,
            project_name="spirals",
            overwrite=True,
        )
        start = time.perf_counter()
        tuner.search(x, y, epochs=args.epochs, batch_size=128, validation_split=0.2, verbose=0)
        seconds = time.perf_counter() - start
        best = tuner.get_best_hyperparameters(1)[0]
    print(
        f"searched {args.trials} trials of {args.epochs} epochs in {seconds:.1f} s: "
        f"best units={best.get('units')}, lr={best.get('lr'):.4f}"
    )
    # The usual last step: the best settings, trained afresh on all the training data.
    model = build_model(best)
    model.fit(x, y, epochs=args.epochs, batch_size=128, verbose=0)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(f"held-out accuracy {accuracy:.3f}")
    if accuracy < args.min_accuracy:
        print(f"FAILED: accuracy {accuracy:.3f} < {args.min_accuracy}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
