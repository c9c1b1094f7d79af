"""`cudabox report FILE...`: one table for a fleet, from the doctor reports of its nodes.

Which node fails which check, which node is slower than its peers or configured unlike them
(outliers and drift, pure functions of the reports), and which catalog image fits every node
(the one image choice, fed with the host profiles the reports embed). fleet_html.py draws the
page; commands/report.py is the command.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cudabox.choice import Candidates, selection
from cudabox.doctor.model import LAYERS, DoctorReport, Status, Value, worst
from cudabox.errors import UsageError
from cudabox.output import table
from cudabox.resolver import Selection

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


# The fleet's own yardstick (docs/facts.md, section 8): a GPU is compared with the median of its
# peers, the GPUs of the same model in the other reports. Warn at SuperBench's default variance
# rule (5 % below the fleet's baseline); fail at twice that margin.
OUTLIER_WARN_BELOW = 0.95
OUTLIER_FAIL_BELOW = 0.90
# A median of fewer values, or of one node's GPUs alone, says nothing about the fleet.
MIN_VALUES = 3
MIN_NODES = 2
# A GPU lost from a node breaks every job sized for the node; other drift works, but is off.
DRIFT_STATUS: dict[str, Status] = {
    "gpu_count": "fail",
    "driver_version": "warn",
    "vbios_version": "warn",
    "ecc_enabled": "warn",
    "power_limit_w": "warn",
}
DRIFT_FIELDS = tuple(DRIFT_STATUS)

_PERF_ID = re.compile(r"^perf\.(?P<metric>[A-Za-z0-9_.-]+?)(?:\.gpu(?P<gpu>\d+))?$")
_K = TypeVar("_K", bound=Hashable)


@dataclass(frozen=True)
class Measurement:
    """One perf.* measurement of a node: per GPU (`gpu` set) or for the whole node."""

    node: str
    check_id: str
    metric: str  # the id without "perf." and ".gpuN": "matmul_bf16", "nccl_busbw"
    model: str  # the GPU's model; for a node-level metric the node's GPUs, "8x NVIDIA H100 ..."
    gpu: int | None
    value: float
    unit: str | None


@dataclass(frozen=True)
class Outlier:
    """A measurement against the fleet median of its metric and GPU model."""

    measurement: Measurement
    median: float
    ratio: float
    status: Status
    message: str
    fix: str | None

    def to_json(self) -> dict[str, Any]:
        s = self.measurement
        return {
            "node": s.node,
            "id": s.check_id,
            "metric": s.metric,
            "model": s.model,
            "gpu": s.gpu,
            "value": s.value,
            "median": self.median,
            "ratio": round(self.ratio, 3),
            "unit": s.unit,
            "status": self.status,
            "message": self.message,
            "fix": self.fix,
        }


@dataclass(frozen=True)
class GpuFacts:
    index: int
    model: str
    vbios_version: str | None = None
    ecc_enabled: bool | None = None
    power_limit_w: float | None = None


@dataclass(frozen=True)
class NodeFacts:
    """What drift compares: the driver and each readable GPU's settings, None = not reported."""

    node: str
    driver_version: str | None
    gpus: tuple[GpuFacts, ...]


@dataclass(frozen=True)
class Drift:
    """One node's setting against the fleet majority for the same GPU model."""

    node: str
    field: str  # one of DRIFT_FIELDS
    model: str
    value: Value
    majority: Value  # None when the fleet has no majority
    gpus: tuple[int, ...]  # the node's GPUs that differ (per-GPU fields)
    status: Status
    message: str
    fix: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "field": self.field,
            "model": self.model,
            "value": self.value,
            "majority": self.majority,
            "gpus": list(self.gpus),
            "status": self.status,
            "message": self.message,
            "fix": self.fix,
        }


@dataclass(frozen=True)
class FleetView:
    outliers: tuple[Outlier, ...]
    drift: tuple[Drift, ...]

    @property
    def findings(self) -> tuple[Outlier | Drift, ...]:
        return (*self.outliers, *self.drift)

    @property
    def status(self) -> Status:
        return worst([f.status for f in self.findings])

    def problems(self) -> list[Outlier | Drift]:
        return [f for f in self.findings if f.status in ("warn", "fail")]

    def to_json(self) -> dict[str, Any]:
        return {
            "thresholds": {
                "warn_below": OUTLIER_WARN_BELOW,
                "fail_below": OUTLIER_FAIL_BELOW,
                "min_values": MIN_VALUES,
                "min_nodes": MIN_NODES,
            },
            "outliers": [o.to_json() for o in self.outliers],
            "drift": [d.to_json() for d in self.drift],
        }


def gpu_model(name: str | None, pci_device_id: str | None) -> str | None:
    return name or pci_device_id


def measurements(report: DoctorReport) -> list[Measurement]:
    """The report's perf.* rates (a number in a unit per second, whatever the check's status: a
    card with no expected figure is a skip with a value, and the fleet still compares it)."""
    models = {g.index: gpu_model(g.name, g.pci_device_id) for g in report.host.gpus}
    known = [m for m in models.values() if m]
    node_model = _node_model(known)
    out = []
    for c in report.checks:
        match = _PERF_ID.match(c.id)
        value = c.value
        if match is None or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        # Rates only (higher is better): a count such as perf.pcie_replay is worse when higher.
        if not (c.unit or "").endswith("/s"):
            continue
        if not value > 0:  # a rate of zero is a failed run, judged by the doctor itself
            continue
        gpu = int(match["gpu"]) if match["gpu"] is not None else None
        model = models.get(gpu) if gpu is not None else node_model
        if model is None:  # a GPU the profile does not name, or a node with no GPU
            continue
        out.append(
            Measurement(report.node, c.id, match["metric"], model, gpu, float(value), c.unit)
        )
    return out


def _node_model(models: Sequence[str]) -> str | None:
    if not models:
        return None
    counts = Counter(models)
    return " + ".join(f"{n}x {m}" for m, n in sorted(counts.items()))


def outliers(found: Sequence[Measurement]) -> list[Outlier]:
    """Each measurement against the median of its (metric, model) group (rates: higher is
    better). Groups too small to have a median of the fleet give no verdict."""
    groups = _grouped(found, lambda s: (s.metric, s.model))
    out = []
    for group in groups.values():
        if len(group) < MIN_VALUES or len({s.node for s in group}) < MIN_NODES:
            continue
        median = statistics.median(s.value for s in group)
        nodes = len({s.node for s in group})
        for s in group:
            out.append(_judge_outlier(s, median, len(group), nodes))
    return out


def _judge_outlier(s: Measurement, median: float, values: int, nodes: int) -> Outlier:
    ratio = s.value / median
    unit = f" {s.unit}" if s.unit else ""
    what = f"GPU {s.gpu}" if s.gpu is not None else "the node"
    text = (
        f"{what}: {s.value:g}{unit} = {ratio:.0%} of the fleet median {median:.4g} "
        f"({values} values of {s.model} on {nodes} nodes)"
    )
    status: Status = (
        "fail" if ratio < OUTLIER_FAIL_BELOW else "warn" if ratio < OUTLIER_WARN_BELOW else "pass"
    )
    return Outlier(s, median, ratio, status, text, _outlier_fix(s) if status != "pass" else None)


def _outlier_fix(s: Measurement) -> str:
    if s.gpu is None:
        return (
            f"this node is slower than its peers at {s.metric}: read its doctor report "
            "(the NVLink, PCIe and NCCL checks), compare `nvidia-smi topo -m` with a healthy "
            "node, and drain it until it matches"
        )
    return (
        f"these GPUs are slower than the fleet's {s.model} at {s.metric}: read the node's doctor "
        "report (host.clocks, host.pcie_link, the perf.* messages), compare its power limit and "
        "clocks under load with a healthy node (`nvidia-smi -q -d POWER,CLOCK,PERFORMANCE`), and "
        "drain the node if it stays slow"
    )


def node_facts(report: DoctorReport) -> NodeFacts:
    """The model from the host profile; VBIOS, ECC mode and power limit from the NVML readings
    a schema 2 report carries (a schema 1 report compares driver and GPU count only)."""
    host = report.readings.host if report.readings is not None else None
    health = {g.uuid or f"#{g.index}": g for g in host.gpus} if host is not None else {}
    gpus = []
    for g in report.host.gpus:
        model = gpu_model(g.name, g.pci_device_id)
        if model is None:  # a GPU NVML could not read: it counts as missing
            continue
        read = health.get(g.uuid or "") or health.get(f"#{g.index}")
        if read is None:
            gpus.append(GpuFacts(g.index, model))
            continue
        gpus.append(
            GpuFacts(g.index, model, read.vbios_version, read.ecc_enabled, read.power_limit_w)
        )
    return NodeFacts(report.node, report.host.driver_version, tuple(gpus))


def drift(nodes: Sequence[NodeFacts]) -> list[Drift]:
    """Each node's settings against the majority of the nodes with the same GPU model."""
    models = sorted({g.model for n in nodes for g in n.gpus})
    out: list[Drift] = []
    for model in models:
        siblings = [n for n in nodes if any(g.model == model for g in n.gpus)]
        if len(siblings) < MIN_NODES:
            continue
        mine = {n.node: [g for g in n.gpus if g.model == model] for n in siblings}
        out += _node_field(model, "gpu_count", {n.node: len(mine[n.node]) for n in siblings})
        out += _node_field(model, "driver_version", {n.node: n.driver_version for n in siblings})
        for name in ("vbios_version", "ecc_enabled", "power_limit_w"):
            out += _gpu_field(model, name, mine)
    return out


def _node_field(model: str, name: str, values: Mapping[str, Value]) -> list[Drift]:
    known = {node: v for node, v in values.items() if v is not None}
    if len(known) < MIN_NODES:
        return []
    majority = _majority(list(known.values()), highest=name == "gpu_count")
    out = []
    for node, value in known.items():
        differs = majority is None or value != majority
        if name == "gpu_count" and majority is not None:
            differs = isinstance(value, int) and isinstance(majority, int) and value < majority
        out.append(_judge_drift(node, name, model, value, majority, (), differs, known))
    return out


def _gpu_field(model: str, name: str, gpus: dict[str, list[GpuFacts]]) -> list[Drift]:
    read: dict[str, list[tuple[int, Value]]] = {
        node: [(g.index, v) for g in listed if (v := _setting(g, name)) is not None]
        for node, listed in gpus.items()
    }
    read = {node: values for node, values in read.items() if values}
    if len(read) < MIN_NODES:
        return []
    majority = _majority([v for values in read.values() for _, v in values])
    per_node: dict[str, Value] = {n: vs[0][1] for n, vs in read.items()}  # for "no majority"
    out = []
    for node, values in read.items():
        off = tuple(i for i, v in values if majority is None or v != majority)
        distinct = sorted({v for i, v in values if i in off}, key=str) or [values[0][1]]
        value: Value = distinct[0] if len(distinct) == 1 else ", ".join(map(str, distinct))
        out.append(_judge_drift(node, name, model, value, majority, off, bool(off), per_node))
    return out


def _setting(gpu: GpuFacts, name: str) -> Value:
    if name == "vbios_version":
        return gpu.vbios_version
    if name == "ecc_enabled":
        return gpu.ecc_enabled
    # NVML reports milliwatts; a watt is the resolution nvidia-smi sets and shows.
    return None if gpu.power_limit_w is None else round(gpu.power_limit_w)


def _majority(values: Sequence[Value], highest: bool = False) -> Value:
    """The most common value; on a tie, None (who drifted is unknown), or with `highest` the
    largest of the tied (a GPU count: the node with fewer GPUs is the one that lost some)."""
    ranked = Counter(values).most_common()
    top = [v for v, n in ranked if n == ranked[0][1]]
    if len(top) == 1:
        return top[0]
    if highest:
        return max(v for v in top if isinstance(v, int | float))
    return None


def _judge_drift(
    node: str,
    name: str,
    model: str,
    value: Value,
    majority: Value,
    gpus: tuple[int, ...],
    differs: bool,
    values: Mapping[str, Value],
) -> Drift:
    label = name.replace("_", " ")
    on = f" on GPU {gpu_list(gpus)}" if gpus else ""
    if not differs:
        text = f"{label} {_shown(value)}, as the fleet's {model} nodes"
        return Drift(node, name, model, value, majority, gpus, "pass", text, None)
    if majority is None:
        spread = "; ".join(f"{n}: {_shown(v)}" for n, v in sorted(values.items()))
        text = f"{label} {_shown(value)}{on}; the {model} nodes have no majority ({spread})"
    else:
        text = f"{label} {_shown(value)}{on}; the fleet's {model} nodes have {_shown(majority)}"
    return Drift(
        node,
        name,
        model,
        value,
        majority,
        gpus,
        DRIFT_STATUS[name],
        text,
        _drift_fix(name, majority),
    )


def gpu_list(indices: Sequence[int]) -> str:
    """GPU indices as people write them: "0-7", "0, 2, 5-6"."""
    runs: list[list[int]] = []
    for index in sorted(indices):
        if runs and index == runs[-1][-1] + 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


def _shown(value: Value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _drift_fix(name: str, majority: Value) -> str:
    want = _shown(majority) if majority is not None else "one value"
    if name == "gpu_count":
        return (
            f"the node has fewer GPUs than its siblings ({want}): run `nvidia-smi -L` and "
            "`cudabox doctor` there (host.gpus_enumerated), look for Xid 79 (fallen off the bus) "
            "in `dmesg`, then reseat or replace the GPU"
        )
    if name == "driver_version":
        return (
            f"install the driver the fleet runs ({want}), or upgrade every node of the model "
            "together: CUDA support and NCCL's behaviour follow the driver"
        )
    if name == "vbios_version":
        return (
            f"flash the VBIOS the fleet runs ({want}) with the server vendor's firmware bundle, "
            "then reset the GPU (`nvidia-smi -q | grep VBIOS` shows it)"
        )
    if name == "ecc_enabled":
        return (
            f"set ECC to match the fleet ({want}): `nvidia-smi -i N -e 1` (or 0), then reset the "
            "GPU or reboot"
        )
    return (
        f"set the power limit the fleet runs ({want} W): `nvidia-smi -i N -pl W`; find what "
        "lowered it (a power-capping policy, the BMC)"
    )


def _grouped(
    items: Sequence[Measurement], key: Callable[[Measurement], _K]
) -> dict[_K, list[Measurement]]:
    groups: dict[_K, list[Measurement]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups


def fleet_view(reports: Sequence[DoctorReport]) -> FleetView:
    return FleetView(
        tuple(outliers([s for r in reports for s in measurements(r)])),
        tuple(drift([node_facts(r) for r in reports])),
    )


@dataclass(frozen=True)
class FleetChoice:
    """The image for every node; when none fits, the best for the GPU nodes and the CPU fallback."""

    every: Selection
    gpu_nodes: Selection | None = None  # nodes with a visible GPU, when they are not all nodes
    cpu: Selection | None = None


def choose(reports: Sequence[DoctorReport], framework: str, candidates: Candidates) -> FleetChoice:
    hosts = [r.host for r in reports]
    every = selection(candidates, hosts, framework, "auto")
    if every.selected is not None:
        return FleetChoice(every)
    with_gpu = [h for h in hosts if h.visible_gpus]
    gpu_nodes = (
        selection(candidates, with_gpu, framework, "cuda")
        if 0 < len(with_gpu) < len(hosts)
        else None
    )
    cpu = selection(candidates, hosts, framework, "cpu") if with_gpu else None
    return FleetChoice(every, gpu_nodes, cpu)


def fleet_json(
    reports: Sequence[DoctorReport], choice: FleetChoice, view: FleetView
) -> dict[str, Any]:
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
        "fleet": view.to_json(),
    }


def finding_row(finding: Outlier | Drift) -> list[str]:
    """node, metric or field, GPU model, value, fleet median or majority, ratio, status."""
    if isinstance(finding, Outlier):
        s = finding.measurement
        unit = f" {s.unit}" if s.unit else ""
        return [
            s.node,
            s.check_id,
            s.model,
            f"{s.value:g}{unit}",
            f"median {finding.median:.4g}",
            f"{finding.ratio:.2f}",
            _MARK[finding.status],
        ]
    gpus = f" (GPU {gpu_list(finding.gpus)})" if finding.gpus else ""
    majority = "no majority" if finding.majority is None else f"majority {_shown(finding.majority)}"
    return [
        finding.node,
        finding.field,
        finding.model,
        f"{_shown(finding.value)}{gpus}",
        majority,
        "-",
        _MARK[finding.status],
    ]


def fleet_rows(view: FleetView, show_all: bool) -> list[list[str]]:
    return [finding_row(f) for f in view.findings if show_all or f.status != "pass"]


def render(
    reports: Sequence[DoctorReport], choice: FleetChoice, view: FleetView, show_all: bool
) -> str:
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

    rows = fleet_rows(view, show_all)
    if rows:
        title = (
            "every node against its peers" if show_all else "nodes unlike their peers (fleet view)"
        )
        headers = ["node", "metric / field", "GPU model", "value", "fleet", "ratio", "status"]
        lines = [f"{title}:", table(headers, rows)]
        fixes = {f.fix for f in view.problems() if f.fix}
        lines += [f"  fix: {fix}" for fix in sorted(fixes)]
        parts.append("\n".join(lines))
    elif view.outliers or view.drift:
        compared = len(view.outliers) + len(view.drift)
        parts.append(f"no node is an outlier or drifts from its peers ({compared} comparisons)")

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
