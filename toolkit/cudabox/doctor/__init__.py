"""`cudabox doctor`: validate a driver/CUDA setup end to end, layer by layer.

Each check has a stable id, a status (pass, warn, fail, skip), a measured value where one
applies, and a fix. docs/doctor.md documents every check and the JSON schema.
"""

from __future__ import annotations

import argparse

from cudabox.doctor.model import LAYERS, DoctorReport
from cudabox.errors import Unavailable
from cudabox.output import check_writable, table, write_atomic

__all__ = ["cmd_doctor", "render_summary"]


def cmd_doctor(args: argparse.Namespace) -> int:
    from cudabox.doctor.run import Doctor, Options

    if args.here and args.image != "auto":
        from cudabox.errors import UsageError

        raise UsageError(
            "--here checks this Python environment, not an image", "drop --image, or drop --here"
        )
    if args.json is not None:
        # Before the run: a `full` run takes minutes, and its results must not be lost to a typo.
        check_writable(args.json, "doctor report")
    doctor = Doctor(
        Options(framework=args.framework, image=args.image, level=args.level, here=args.here)
    )
    report = doctor.run()
    if args.json is not None:
        write_atomic(args.json, report.dumps(), "doctor report")
    to_stdout = args.json is not None and str(args.json) == "-"
    summary = render_summary(report)
    print(summary, file=__import__("sys").stderr if to_stdout else None)
    if doctor.unavailable is not None:
        raise Unavailable(
            f"the {args.level} level needs a container engine: {doctor.unavailable}",
            "start one (see engine.reachable's fix), or run `cudabox doctor --here` to check this "
            "Python environment without containers",
        )
    return report.exit_code(args.strict)


def render_summary(report: DoctorReport) -> str:
    order = {layer: n for n, layer in enumerate(LAYERS)}
    rows = []
    for c in sorted(report.checks, key=lambda c: order.get(c.layer, len(order))):
        value = "" if c.value is None else f"{c.value}{' ' + c.unit if c.unit else ''}"
        expected = "" if c.expected is None else str(c.expected)
        note = c.message if len(c.message) <= 60 else c.message[:57] + "..."
        status = c.status.upper() if c.status in ("fail", "warn") else c.status
        rows.append([c.layer, c.id, status, value, expected, note])
    counts = report.counts()
    lines = [
        table(["layer", "check", "status", "value", "expected", "message"], rows),
        "",
        f"{report.node}: {counts['pass']} pass, {counts['warn']} warn, {counts['fail']} fail, "
        f"{counts['skip']} skip (level {report.level}{', here' if report.here else ''}"
        f"{', image ' + report.image if report.image else ''})",
    ]
    problems = [c for c in report.checks if c.status in ("fail", "warn")]
    for c in problems:
        lines.append(f"  {c.status.upper()} {c.id}: {c.message}")
        if c.fix:
            lines.append(f"       fix: {c.fix}")
    return "\n".join(lines)
