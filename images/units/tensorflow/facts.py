"""Print, as one JSON line, what this image's TensorFlow reports about itself (no GPU needed).

`cudabox build` / `cudabox verify` run this inside the image and compare it with the catalog and
the image's labels.
"""

import importlib.metadata
import importlib.util
import json
import os
import platform
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf


def installed() -> tuple[dict[str, str], int]:
    """Installed distributions (name -> version) and the bytes their files take on disk."""
    versions, files = {}, set()
    for dist in importlib.metadata.distributions():
        versions[dist.metadata["Name"].lower()] = dist.version
        for file in dist.files or ():
            path = Path(file.locate())
            files.add(path)
            if path.suffix == ".py":
                # The image compiles bytecode itself (RECORD does not list it): it is the package's.
                files.add(Path(importlib.util.cache_from_source(path)))
    total = sum(path.stat().st_size for path in files if path.is_file())
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
