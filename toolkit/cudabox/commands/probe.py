"""`cudabox probe`: read this host's NVIDIA driver and GPUs through NVML."""

from __future__ import annotations

import argparse

from cudabox.errors import ExitCode
from cudabox.host import HostProfile
from cudabox.nvml import probe
from cudabox.output import print_json, table


def cmd_probe(args: argparse.Namespace) -> int:
    profile = probe()
    if args.json:
        print_json(profile.to_json())
    else:
        print(render_profile(profile))
    if profile.status == "error":
        return ExitCode.UNAVAILABLE
    return ExitCode.OK


def render_profile(profile: HostProfile) -> str:
    lines = [
        f"host:    {profile.name}",
        f"driver:  {profile.driver_version or '-'}  (CUDA {profile.cuda_driver_version or '-'})",
    ]
    if profile.status != "ok" or profile.message:
        lines.append(f"status:  {profile.status}: {profile.message}")
        if profile.fix:
            lines.append(f"fix:     {profile.fix}")
    if profile.gpus:
        rows = []
        for g in profile.gpus:
            mig = f"on ({len(g.mig_devices)} instances)" if g.mig_enabled else "off"
            memory = f"{g.memory_total_mib} MiB" if g.memory_total_mib is not None else "-"
            rows.append(
                [
                    g.index,
                    g.name or f"error: {g.error}",
                    g.compute_capability or "-",
                    memory,
                    mig,
                    "yes" if g.visible else "no",
                ]
            )
        lines += ["", table(["GPU", "name", "CC", "memory", "MIG", "visible"], rows)]
    return "\n".join(lines)
