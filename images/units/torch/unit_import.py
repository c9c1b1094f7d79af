"""The framework and cudabox import, and the interpreter is the image's venv."""

import sys

import numpy
import pynvml
import torch

import cudabox.images.catalog

assert sys.prefix == "/opt/venv", sys.prefix
assert torch.__version__ and numpy.__version__
assert hasattr(pynvml, "nvmlInit") and cudabox.images.catalog.FRAMEWORKS
print(f"torch {torch.__version__}, numpy {numpy.__version__}")
