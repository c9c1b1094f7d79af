"""`cudabox prune`: remove what builds and runs leave on the engine, and say the bytes freed."""

from __future__ import annotations

import argparse

from cudabox.engine import Engine
from cudabox.errors import ExitCode
from cudabox.images.prune import PruneOptions, parse_labels, prune
from cudabox.output import human_bytes, print_json, progress, table


def cmd_prune(args: argparse.Namespace) -> int:
    options = PruneOptions(
        bool(args.images), bool(args.dry_run), bool(args.json), parse_labels(args.label)
    )
    with Engine.connect() as engine:
        report = prune(engine, options)
    if options.json:
        print_json(report.to_json())
        return ExitCode.OK
    if report.removed:
        print(
            table(
                ["would remove" if report.dry_run else "removed", "id", "name", "serves", "frees"],
                [
                    [i.kind, _short_id(i.id), i.name, i.serves or "-", human_bytes(i.bytes)]
                    for i in report.removed
                ],
            )
        )
    for item in report.kept:
        progress(f"prune: kept {item.kind} {_short_id(item.id)} {item.name}: {item.reason}")
    verb = "would free" if report.dry_run else "freed"
    line = f"prune: {verb} {human_bytes(report.freed_bytes)} ({report.freed_bytes} bytes)"
    if not options.images:
        line += "; the images cudabox built stay (--images removes them too)"
    print(line)
    return ExitCode.OK


def _short_id(value: str) -> str:
    return value.removeprefix("sha256:")[:12]
