"""The framework and cudabox import, and the interpreter is the image's venv."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy
import pynvml
import tensorflow as tf

import cudabox.images.catalog

assert sys.prefix == "/opt/venv", sys.prefix
assert tf.__version__ and numpy.__version__
assert hasattr(pynvml, "nvmlInit") and cudabox.images.catalog.FRAMEWORKS
print(f"tensorflow {tf.__version__}, keras {tf.keras.__version__}, numpy {numpy.__version__}")
