"""Print, as one JSON line, what this image's TensorFlow reports about itself (no GPU needed).

`cudabox build` / `cudabox verify` run this inside the image and compare it with the catalog and
the image's labels.
"""

import importlib.metadata
import json
import os
import platform
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf


def installed() -> tuple[dict[str, str], int]:
    """Installed distributions (name -> version) and the bytes their files take on disk."""
    versions, total = {}, 0
    for dist in importlib.metadata.distributions():
        versions[dist.metadata["Name"].lower()] = dist.version
        for file in dist.files or ():
            path = Path(file.locate())
            if path.is_file():
                total += path.stat().st_size
    return versions, total


info = dict(tf.sysconfig.get_build_info())
packages, packages_bytes = installed()
print(
    json.dumps(
        {
            "framework": "tensorflow",
            "framework_version": tf.__version__,
            "cuda": info.get("cuda_version") if info.get("is_cuda_build") else None,
            "cudnn": info.get("cudnn_version") if info.get("is_cuda_build") else None,
            "arch_list": list(info.get("cuda_compute_capabilities") or []),
            "gpu_count": len(tf.config.list_physical_devices("GPU")),
            "python": platform.python_version(),
            "uid": os.getuid(),
            "build_info": {k: str(v) for k, v in info.items()},
            "packages": packages,
            "packages_bytes": packages_bytes,
        }
    )
)
