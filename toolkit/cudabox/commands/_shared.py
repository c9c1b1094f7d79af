"""What several commands read from their arguments the same way: the hosts a command is about."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cudabox.host import HostProfile


def hosts_from_files(files: Sequence[Path]) -> list[HostProfile]:
    """Host profiles read from files, or this host's own probe when none are named."""
    if files:
        return [HostProfile.load(path) for path in files]
    from cudabox.nvml import probe  # NVML's bindings load only when this host is probed

    return [probe()]
