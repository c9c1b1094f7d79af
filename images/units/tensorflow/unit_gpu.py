"""On a GPU: a kernel runs on every visible device and agrees with the CPU. Without one: skip."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

gpus = tf.config.list_physical_devices("GPU")
if not gpus:
    print(f"no GPU visible (tensorflow {tf.__version__}): GPU branch skipped")
else:
    x = np.random.default_rng(0).standard_normal((256, 256)).astype("float32")
    expected = x @ x
    for index, gpu in enumerate(gpus):
        with tf.device(f"/GPU:{index}"):
            got = tf.matmul(x, x).numpy()
        assert np.allclose(got, expected, rtol=1e-3, atol=1e-3), (
            f"{gpu.name} disagrees with the CPU"
        )
        print(f"{gpu.name}: matmul ok")
