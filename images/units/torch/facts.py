"""Print, as one JSON line, what this image's torch reports about itself (no GPU needed).

`cudabox build` / `cudabox verify` run this inside the image and compare it with the catalog and
the image's labels.
"""

import importlib.metadata
import importlib.util
import json
import os
import platform
from pathlib import Path

import torch


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


def arch_list() -> list[str]:
    """The compiled GPU targets. get_arch_list() is [] without a GPU before torch 2.11 or so,
    while the flags it reads are compiled in and answer on any machine."""
    listed = torch.cuda.get_arch_list()
    if listed or not torch.version.cuda:
        return listed
    return torch._C._cuda_getArchFlags().split()


packages, packages_bytes = installed()
print(
    json.dumps(
        {
            "framework": "torch",
            "framework_version": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.version.cuda else None,
            "arch_list": arch_list(),
            "gpu_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
            "python": platform.python_version(),
            "uid": os.getuid(),
            "packages": packages,
            "packages_bytes": packages_bytes,
        }
    )
)
