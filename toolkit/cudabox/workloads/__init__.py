"""The smoke training workloads, one per framework; they run in every image and with `--here`.

Importing this package does not import torch or tensorflow: each framework is imported by its
workload module when that workload runs (and its import time is part of the metrics).

    python -m cudabox.workloads.torch_smoke --help
    python -m cudabox.workloads.tf_smoke --help
    python -m torch.distributed.run --standalone --nproc-per-node 2 \
        -m cudabox.workloads.torch_smoke --out runs/torch
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from cudabox.errors import UsageError

# framework name (as in the catalog) -> module
MODULES = {"torch": "cudabox.workloads.torch_smoke", "tensorflow": "cudabox.workloads.tf_smoke"}


def module_for(framework: str) -> str:
    """The `python -m` module name of a framework's workload."""
    try:
        return MODULES[framework]
    except KeyError:
        raise UsageError(
            f"no smoke workload for framework {framework!r}",
            f"pick one of: {', '.join(MODULES)}",
        ) from None


def main(framework: str, argv: Sequence[str] = ()) -> int:
    """Run a framework's workload in this Python; returns its exit code.

    0 learned, 1 did not learn, 2 bad options (or --device cuda without a GPU), 130/143 stopped
    by SIGINT/SIGTERM. Raises UsageError for an unknown framework, and ModuleNotFoundError
    (name "torch" or "tensorflow") when the framework is not installed here.
    """
    module = importlib.import_module(module_for(framework))
    code: int = module.main(list(argv))
    return code
