"""`cudabox doctor`: validate a driver/CUDA setup end to end, layer by layer (the command is
commands/doctor.py; run.py reads and judges, model.py is the report, fleet.py the fleet view).

Each check has a stable id, a status (pass, warn, fail, skip), a measured value where one
applies, and a fix. docs/doctor.md documents every check and the JSON schema.
"""

from __future__ import annotations

from cudabox.doctor.model import LAYERS, DoctorReport
from cudabox.output import table

__all__ = ["render_summary"]


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
