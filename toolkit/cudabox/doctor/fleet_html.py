"""`cudabox report --html FILE`: the fleet view as one self-contained page.

Inline CSS and inline SVG only: no script, font or image from anywhere, so the page renders on
an air-gapped machine and can be mailed as it is. The verdicts come from report.py; this module
only draws them.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from cudabox.doctor.fleet import (
    OUTLIER_FAIL_BELOW,
    OUTLIER_WARN_BELOW,
    FleetChoice,
    FleetView,
    Outlier,
    check_matrix,
    finding_row,
)
from cudabox.doctor.model import DoctorReport, Status, worst

_COLOUR: dict[Status, str] = {
    "pass": "#2f6db5",
    "warn": "#d98a00",
    "fail": "#c62828",
    "skip": "#888888",
}
_BAND: dict[Status, str] = {"warn": "#fff3dc", "fail": "#fde3e3"}
_WORD: dict[Status, str] = {"pass": "ok", "warn": "WARN", "fail": "FAIL", "skip": "skip"}

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d1d1d;
       margin: 24px 32px; max-width: 1180px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 14px; margin: 18px 0 4px; }
p.lead { margin: 0 0 12px; color: #444; }
table { border-collapse: collapse; margin: 6px 0 10px; }
th, td { border: 1px solid #d6d6d6; padding: 3px 9px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td { white-space: nowrap; }
ol.fixes { margin: 4px 0 0; padding-left: 22px; max-width: 1100px; color: #333; }
ol.fixes li { margin-bottom: 4px; }
.st { font-weight: 700; }
.st-pass { color: #2e7d32; } .st-warn { color: #b36b00; } .st-fail { color: #c62828; }
.st-skip { color: #777; }
.legend span { display: inline-block; margin-right: 16px; font-size: 12px; color: #444; }
.dot { display: inline-block; width: 10px; height: 10px; border-radius: 50%;
       margin-right: 5px; vertical-align: -1px; }
figure { margin: 6px 0 18px; }
figcaption { font-size: 12px; color: #555; }
svg text { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; }
"""


def page(reports: Sequence[DoctorReport], choice: FleetChoice, view: FleetView) -> str:
    """The whole page: verdict, nodes, findings, failing checks, image choice, one chart per
    metric and GPU model."""
    statuses = [c.status for r in reports for c in r.checks] + [view.status]
    verdict = worst(statuses)
    times = sorted(r.timestamp for r in reports)
    span = times[0] if times[0] == times[-1] else f"{times[0]} to {times[-1]}"
    body = [
        "<h1>cudabox fleet report</h1>",
        f'<p class="lead">{len(reports)} nodes, doctor reports of {escape(span)}. '
        f"Verdict: {_status(verdict)}</p>",
        "<h2>Nodes</h2>",
        _nodes(reports, view),
        "<h2>Nodes unlike their peers</h2>",
        _findings(view),
        "<h2>Checks that fail or warn</h2>",
        _checks(reports),
        "<h2>Image for the fleet</h2>",
        _image(choice),
        "<h2>Each metric against the fleet median</h2>",
        _legend(),
        *_charts(view),
    ]
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        "<title>cudabox fleet report</title>\n"
        f"<style>{_CSS}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )


def _status(status: Status) -> str:
    return f'<span class="st st-{status}">{_WORD[status]}</span>'


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Cells are HTML already (escaped by the caller)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _td(text: object, css: str | None = None) -> str:
    attr = f' class="{css}"' if css else ""
    return f"<td{attr}>{escape(str(text))}</td>"


def _nodes(reports: Sequence[DoctorReport], view: FleetView) -> str:
    fleet: dict[str, list[Status]] = {}
    for f in view.findings:
        node = f.measurement.node if isinstance(f, Outlier) else f.node
        fleet.setdefault(node, []).append(f.status)
    rows = []
    for r in reports:
        counts = r.counts()
        names = sorted({g.name or "unreadable" for g in r.host.gpus})
        gpus = f"{len(r.host.gpus)}x {', '.join(names)}" if names else "none"
        checks = worst([c.status for c in r.checks])
        peers = worst(fleet.get(r.node, []))
        rows.append(
            [
                _td(r.node),
                _td(gpus),
                _td(r.host.driver_version or "-"),
                _td(r.level),
                *(_td(counts[s], "num") for s in ("pass", "warn", "fail", "skip")),
                f"<td>{_status(checks)}</td>",
                f"<td>{_status(peers) if r.node in fleet else '-'}</td>",
            ]
        )
    headers = ["node", "GPUs", "driver", "level", "pass", "warn", "fail", "skip"]
    return _table([*headers, "checks", "against peers"], rows)


def _findings(view: FleetView) -> str:
    problems = view.problems()
    if not problems:
        compared = len(view.outliers) + len(view.drift)
        if not compared:
            return "<p>Too few nodes of one GPU model to compare them with each other.</p>"
        return f"<p>No node is an outlier or drifts from its peers ({compared} comparisons).</p>"
    fixes = list(dict.fromkeys(f.fix for f in problems if f.fix))  # each fix said once
    rows = []
    for finding in problems:
        row = finding_row(finding)[:-1]  # the status is drawn, not written
        cells = [_td(c, "num" if n == 5 else None) for n, c in enumerate(row)]
        fix = f"fix {fixes.index(finding.fix) + 1}" if finding.fix else ""
        rows.append([*cells, f"<td>{_status(finding.status)}</td>", _td(fix)])
    headers = ["node", "metric / field", "GPU model", "value", "fleet", "ratio", "status", "fix"]
    listed = "".join(f"<li>{escape(fix)}</li>" for fix in fixes)
    return _table(headers, rows) + f'<ol class="fixes">{listed}</ol>'


def _checks(reports: Sequence[DoctorReport]) -> str:
    nodes = [r.node for r in reports]
    matrix = check_matrix(reports)
    rows = []
    for cid, row in matrix.items():
        if not any(s in ("fail", "warn") for s in row.values()):
            continue
        cells = [f"<td>{_status(row[n])}</td>" if n in row else _td("-") for n in nodes]
        rows.append([_td(cid), *cells])
    if not rows:
        return "<p>No check fails or warns on any node.</p>"
    return _table(["check", *nodes], rows)


def _image(choice: FleetChoice) -> str:
    every = choice.every
    if every.selected is not None:
        return (
            f"<p>Fits every node: {escape(every.selected.name)} ({escape(every.selected.tag)})</p>"
        )
    lines = [f"No {escape(every.framework)} image fits every node: {escape(every.message or '')}"]
    for label, other in (
        ("the GPU nodes", choice.gpu_nodes),
        ("every node, on the CPU", choice.cpu),
    ):
        if other is not None and other.selected is not None:
            lines.append(
                f"Fits {label}: {escape(other.selected.name)} ({escape(other.selected.tag)})"
            )
    return "<p>" + "<br>".join(lines) + "</p>"


def _legend() -> str:
    def dot(status: Status, text: str) -> str:
        return f'<span><i class="dot" style="background:{_COLOUR[status]}"></i>{text}</span>'

    return (
        '<p class="legend">'
        + dot("pass", "within the fleet")
        + dot("warn", f"below {OUTLIER_WARN_BELOW:g} x median")
        + dot("fail", f"below {OUTLIER_FAIL_BELOW:g} x median")
        + "<span>solid line: fleet median; dashed: the warn and fail thresholds</span></p>"
    )


def _charts(view: FleetView) -> list[str]:
    groups: dict[tuple[str, str], list[Outlier]] = {}
    for o in view.outliers:
        groups.setdefault((o.measurement.metric, o.measurement.model), []).append(o)
    if not groups:
        return ["<p>No metric was measured on enough nodes of one GPU model to draw.</p>"]
    out = []
    for (metric, model), found in groups.items():
        unit = found[0].measurement.unit or ""
        median = found[0].median
        failing = sorted({o.measurement.node for o in found if o.status == "fail"})
        caption = f"median {median:.4g} {unit}".rstrip()
        if failing:
            caption += f"; failing: {', '.join(failing)}"
        out.append(
            f"<figure><h3>{escape(metric)}: {escape(model)}</h3>{chart(found)}"
            f"<figcaption>{escape(caption)}</figcaption></figure>"
        )
    return out


def chart(found: Sequence[Outlier], width: int = 1080, height: int = 280) -> str:
    """One metric of one GPU model: a column per node, a dot per value, the median and the two
    thresholds as lines; a failing node's column is tinted and its name red."""
    nodes = list(dict.fromkeys(o.measurement.node for o in found))
    rotate = len(nodes) > 12  # names at an angle from here, and only the outliers' beyond 24
    crowded = len(nodes) > 24
    left, right, top, bottom = 70, 150, 16, 64 if rotate else 32
    plot_w, plot_h = width - left - right, height - top - bottom
    median = found[0].median
    values = [o.measurement.value for o in found]
    lo = min(min(values), median * OUTLIER_FAIL_BELOW) * 0.97
    hi = max(max(values), median) * 1.03
    if hi <= lo:
        hi = lo + 1

    def y(value: float) -> float:
        return top + plot_h * (hi - value) / (hi - lo)

    band = plot_w / len(nodes)
    unit = found[0].measurement.unit or ""
    parts = [
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(found[0].measurement.metric)} per node">'
    ]
    for n, node in enumerate(nodes):
        status = worst([o.status for o in found if o.measurement.node == node])
        if status in _BAND:
            parts.append(
                f'<rect x="{left + band * n:.1f}" y="{top}" width="{band:.1f}" '
                f'height="{plot_h}" fill="{_BAND[status]}"/>'
            )
    for step in range(5):  # the value axis: five ticks over the drawn range
        value = lo + (hi - lo) * step / 4
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
            'stroke="#eeeeee"/>'
            f'<text x="{left - 6}" y="{y(value) + 4:.1f}" font-size="11" text-anchor="end" '
            f'fill="#555">{value:.4g}</text>'
        )
    parts.append(
        f'<text x="14" y="{top + plot_h / 2:.1f}" font-size="11" fill="#555" '
        f'transform="rotate(-90 14 {top + plot_h / 2:.1f})" text-anchor="middle">'
        f"{escape(unit)}</text>"
    )
    lines = (
        (1.0, "#333333", "", f"median {median:.4g}"),
        (OUTLIER_WARN_BELOW, _COLOUR["warn"], ' stroke-dasharray="6 4"', "warn"),
        (OUTLIER_FAIL_BELOW, _COLOUR["fail"], ' stroke-dasharray="6 4"', "fail"),
    )
    for share, colour, dash, label in lines:
        at = y(median * share)
        text = label if share == 1.0 else f"{share:g} x ({label})"
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{at:.1f}" y2="{at:.1f}" '
            f'stroke="{colour}" stroke-width="1.5"{dash}/>'
            f'<text x="{left + plot_w + 6}" y="{at + 4:.1f}" font-size="11" '
            f'fill="{colour}">{escape(text)}</text>'
        )
    for n, node in enumerate(nodes):
        mine = sorted(
            (o for o in found if o.measurement.node == node),
            key=lambda o: -1 if o.measurement.gpu is None else o.measurement.gpu,
        )
        centre = left + band * (n + 0.5)
        spread = min(band * 0.6, 12.0 * len(mine))
        for k, o in enumerate(mine):
            x = centre if len(mine) == 1 else centre - spread / 2 + spread * k / (len(mine) - 1)
            failing = o.status == "fail"
            who = f"GPU {o.measurement.gpu}" if o.measurement.gpu is not None else "node"
            tip = f"{node} {who}: {o.measurement.value:g} {unit} ({o.ratio:.0%} of the median)"
            parts.append(
                f'<circle cx="{x:.1f}" cy="{y(o.measurement.value):.1f}" r="{6 if failing else 4.5}" '
                f'fill="{_COLOUR[o.status]}"'
                + (' stroke="#5a0000" stroke-width="1.5"' if failing else "")
                + f"><title>{escape(tip)}</title></circle>"
            )
        status = worst([o.status for o in mine])
        if status == "fail":  # at the top of its tinted column, clear of the names below
            parts.append(
                f'<text x="{centre:.1f}" y="{top + 14}" font-size="11" text-anchor="middle" '
                f'fill="{_COLOUR["fail"]}">FAIL {min(o.ratio for o in mine):.2f} x</text>'
            )
        if crowded and status == "pass":
            continue  # too many names to read: the failing and warning ones, the table the rest
        weight = ' font-weight="700"' if status in ("warn", "fail") else ""
        colour = _COLOUR[status] if status in ("warn", "fail") else "#222222"
        label_y = top + plot_h + 18
        turn = f' transform="rotate(-25 {centre:.1f} {label_y})"' if rotate else ""
        anchor = "end" if rotate else "middle"
        parts.append(
            f'<text x="{centre:.1f}" y="{label_y}" font-size="12" text-anchor="{anchor}" '
            f'fill="{colour}"{weight}{turn}>{escape(node)}</text>'
        )
    parts.append(
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" '
        'stroke="#bbbbbb"/></svg>'
    )
    return "".join(parts)
