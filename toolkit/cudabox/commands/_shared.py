"""What several commands read from their arguments the same way: the hosts a command is about,
and where packages come from (the flags cli._source_args gives lock, build, verify, publish)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from cudabox.host import HostProfile
from cudabox.options import PackageSources


def package_sources(args: argparse.Namespace) -> PackageSources:
    """--ca-cert, --index-url, --wheelhouse and --host-pip, with their environment variables."""
    return PackageSources.resolve(
        ca_cert=args.ca_cert,
        index_url=args.index_url,
        wheelhouses=args.wheelhouse,
        host_pip=args.host_pip,
    )


def hosts_from_files(files: Sequence[Path]) -> list[HostProfile]:
    """Host profiles read from files, or this host's own probe when none are named."""
    if files:
        return [HostProfile.load(path) for path in files]
    from cudabox.nvml import probe  # NVML's bindings load only when this host is probed

    return [probe()]
