"""`cudabox report FILE...`: one table for a fleet, from the doctor reports of its nodes.

Which node fails which check, and which catalog image fits every node (the resolver, fed with
the host profiles the reports embed).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cudabox.doctor.model import LAYERS, DoctorReport, Status
from cudabox.errors import ExitCode, UsageError
from cudabox.images.catalog import load_catalog
from cudabox.output import print_json, table
from cudabox.resolver import Selection, select

_MARK: dict[Status, str] = {"pass": "ok", "warn": "WARN", "fail": "FAIL", "skip": "skip"}


def load_reports(files: Sequence[Path]) -> list[DoctorReport]:
    reports = [_load(path) for path in files]
    names = [r.node for r in reports]
    for name in names:
        if names.count(name) > 1:
            sources = ", ".join(
                str(f) for f, r in zip(files, reports, strict=True) if r.node == name
            )
            raise UsageError(
                f"node {name!r} appears in more than one report ({sources})",
                "pass one report per node (the newest)",
            )
    return reports


def _load(path: Path) -> DoctorReport:
    try:
        return DoctorReport.load(path)
    except UsageError as exc:
        # The report's parts are checked by their own readers, which know the node, not the file.
        if str(path) in exc.message:
            raise
        raise UsageError(f"report {path}: {exc.message}", exc.fix) from None


def fleet_framework(reports: Sequence[DoctorReport], wanted: str | None) -> str:
    if wanted:
        return wanted
    frameworks = sorted({r.framework for r in reports})
    if len(frameworks) > 1:
        raise UsageError(
            f"the reports were made for different frameworks ({', '.join(frameworks)})",
            "choose one with --framework",
        )
    return frameworks[0]


def check_matrix(reports: Sequence[DoctorReport]) -> dict[str, dict[str, Status]]:
    """check id -> node -> status, ordered by layer then id; a node without the check is absent."""
    layer_of: dict[str, str] = {}
    for report in reports:
        for c in report.checks:
            layer_of.setdefault(c.id, c.layer)
    order = {layer: n for n, layer in enumerate(LAYERS)}
    ids = sorted(layer_of, key=lambda cid: (order.get(layer_of[cid], len(order)), cid))
    matrix: dict[str, dict[str, Status]] = {cid: {} for cid in ids}
    for report in reports:
        for c in report.checks:
            matrix[c.id][report.node] = c.status
    return matrix


@dataclass(frozen=True)
class FleetChoice:
    """The image for every node; when none fits, the best for the GPU nodes and the CPU fallback."""

    every: Selection
    gpu_nodes: Selection | None = None  # nodes with a visible GPU, when they are not all nodes
    cpu: Selection | None = None


def choose(reports: Sequence[DoctorReport], framework: str) -> FleetChoice:
    catalog = load_catalog()
    hosts = [r.host for r in reports]
    every = select(catalog, hosts, framework, "auto")
    if every.selected is not None:
        return FleetChoice(every)
    with_gpu = [h for h in hosts if h.visible_gpus]
    gpu_nodes = (
        select(catalog, with_gpu, framework, "cuda") if 0 < len(with_gpu) < len(hosts) else None
    )
    cpu = select(catalog, hosts, framework, "cpu") if with_gpu else None
    return FleetChoice(every, gpu_nodes, cpu)


def fleet_json(reports: Sequence[DoctorReport], choice: FleetChoice) -> dict[str, Any]:
    return {
        "nodes": [
            {
                "node": r.node,
                "hostname": r.host.hostname,
                "level": r.level,
                "timestamp": r.timestamp,
                "driver_version": r.host.driver_version,
                "gpus": [g.name for g in r.host.gpus],
                "summary": r.counts(),
                "failed": [c.id for c in r.checks if c.status == "fail"],
                "warned": [c.id for c in r.checks if c.status == "warn"],
            }
            for r in reports
        ],
        "checks": check_matrix(reports),
        "selection": choice.every.to_json(),
        "gpu_nodes_selection": choice.gpu_nodes.to_json() if choice.gpu_nodes else None,
        "cpu_selection": choice.cpu.to_json() if choice.cpu else None,
    }


def render(reports: Sequence[DoctorReport], choice: FleetChoice, show_all: bool) -> str:
    selection = choice.every
    node_rows = []
    for r in reports:
        counts = r.counts()
        gpus = sorted({g.name or "unreadable" for g in r.host.gpus})
        gpu_text = f"{len(r.host.gpus)}x {', '.join(gpus)}" if gpus else "none"
        verdict = "FAIL" if counts["fail"] else ("WARN" if counts["warn"] else "ok")
        node_rows.append(
            [
                r.node,
                gpu_text,
                r.host.driver_version or "-",
                r.level,
                counts["pass"],
                counts["warn"],
                counts["fail"],
                counts["skip"],
                verdict,
            ]
        )
    parts = [
        table(
            ["node", "GPUs", "driver", "level", "pass", "warn", "fail", "skip", "verdict"],
            node_rows,
        )
    ]

    nodes = [r.node for r in reports]
    matrix = check_matrix(reports)
    shown = {
        cid: row
        for cid, row in matrix.items()
        if show_all or any(s in ("fail", "warn") for s in row.values())
    }
    if shown:
        rows = [
            [cid, *(_MARK[row[n]] if n in row else "-" for n in nodes)]
            for cid, row in shown.items()
        ]
        title = "every check" if show_all else "checks that fail or warn somewhere"
        parts.append(f"{title}:\n" + table(["check", *nodes], rows))
    else:
        parts.append("no check fails or warns on any node")

    if selection.selected is not None:
        chosen = selection.selected
        parts.append(f"image that fits every node: {chosen.name} ({chosen.tag})")
    else:
        lines = [f"no {selection.framework} image fits every node: {selection.message}"]
        if selection.fix:
            lines.append(f"  fix: {selection.fix}")
        for label, other in (
            ("the GPU nodes", choice.gpu_nodes),
            ("every node, on the CPU", choice.cpu),
        ):
            if other is not None and other.selected is not None:
                names = ", ".join(h.name for h in other.hosts)
                lines.append(
                    f"fits {label} ({names}): {other.selected.name} ({other.selected.tag})"
                )
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def cmd_report(args: argparse.Namespace) -> int:
    reports = load_reports(args.files)
    framework = fleet_framework(reports, args.framework)
    choice = choose(reports, framework)
    if args.json:
        print_json(fleet_json(reports, choice))
    else:
        print(render(reports, choice, args.all))
    if any(c.status == "fail" for r in reports for c in r.checks):
        return int(ExitCode.FAILED)
    if choice.every.selected is None:
        return int(ExitCode.NO_FIT)
    return int(ExitCode.OK)
