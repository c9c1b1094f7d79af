"""`cudabox report` on doctor reports of a mixed fleet (fixtures: all-pass H100, failing H100, CPU),
and its fleet view on four 8 x H100 nodes (fixtures/doctor/reports/fleet)."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cudabox.choice import catalog_candidates
from cudabox.cli import main
from cudabox.doctor.fleet import (
    DRIFT_FIELDS,
    OUTLIER_FAIL_BELOW,
    OUTLIER_WARN_BELOW,
    FleetView,
    Measurement,
    Outlier,
    check_matrix,
    choose,
    fleet_view,
    load_reports,
    measurements,
    outliers,
)
from cudabox.doctor.model import Check, DoctorReport
from cudabox.errors import ExitCode
from cudabox.host import HostProfile
from cudabox.images.catalog import load_catalog

REPORTS = Path(__file__).parents[1] / "fixtures" / "doctor" / "reports"
FLEET = sorted(REPORTS.glob("*.json"))


def test_fixtures_are_the_mixed_fleet() -> None:
    reports = {r.node: r for r in load_reports(FLEET)}
    assert set(reports) == {"gpu-a", "gpu-b", "cpu-c"}
    assert reports["gpu-a"].counts()["fail"] == 0
    assert reports["gpu-b"].counts()["fail"] == 2
    assert reports["cpu-c"].host.gpus == ()


def test_matrix_says_which_node_fails_which_check() -> None:
    matrix = check_matrix(load_reports(FLEET))
    assert matrix["host.pcie_link.gpu0"] == {"gpu-a": "pass", "gpu-b": "fail"}
    assert matrix["perf.h2d_bandwidth.gpu0"] == {"gpu-a": "pass", "gpu-b": "fail"}
    assert matrix["perf.matmul_bf16.gpu0"]["gpu-b"] == "warn"
    assert matrix["training.smoke"] == {"gpu-a": "pass", "gpu-b": "pass", "cpu-c": "pass"}
    # Layer order: host checks first, training last.
    ids = list(matrix)
    assert ids[0].startswith("host.") and ids[-1] == "training.smoke"


def test_report_table_and_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["report", *map(str, FLEET)])
    out = capsys.readouterr().out
    assert code == ExitCode.FAILED
    rows = {
        line.split()[0]: line.split()
        for line in out.splitlines()
        if line.startswith(("host.", "perf."))
    }
    assert rows["host.pcie_link.gpu0"][1:] == ["-", "ok", "FAIL"]  # columns: cpu-c, gpu-a, gpu-b
    assert "no torch image fits every node" in out
    assert "fits the GPU nodes (gpu-a, gpu-b): torch-2.15-cu132" in out
    assert "fits every node, on the CPU (cpu-c, gpu-a, gpu-b): torch-2.13-cpu" in out


def test_gpu_nodes_alone_share_an_image(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["report", "--json", *map(str, REPORTS.glob("gpu-*.json"))])
    data = json.loads(capsys.readouterr().out)
    assert code == ExitCode.FAILED  # gpu-b still fails checks
    assert data["selection"]["selected"]["name"] == "torch-2.15-cu132"
    assert data["cpu_selection"] is None
    nodes = {n["node"]: n for n in data["nodes"]}
    assert nodes["gpu-b"]["failed"] == ["host.pcie_link.gpu0", "perf.h2d_bandwidth.gpu0"]
    assert nodes["gpu-a"]["failed"] == []


def test_all_passing_fleet_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(REPORTS / "gpu-a.json")]) == ExitCode.OK
    assert "image that fits every node: torch-2.15-cu132" in capsys.readouterr().out


def test_choice_uses_the_embedded_host_profiles() -> None:
    choice = choose(load_reports(FLEET), "torch", catalog_candidates(load_catalog()))
    assert choice.every.selected is None
    assert choice.gpu_nodes is not None and choice.gpu_nodes.selected is not None
    assert choice.cpu is not None and choice.cpu.selected is not None
    assert choice.cpu.selected.flavor == "cpu"


def test_a_doctor_report_is_a_host_file_for_select() -> None:
    profile = HostProfile.load(REPORTS / "gpu-a.json")
    assert profile.hostname == "gpu-a" and profile.gpus[0].pci_device_id == "0x233010DE"


def test_bad_inputs_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    probe_only = tmp_path / "probe.json"
    probe_only.write_text(json.dumps({"driver_version": None, "gpus": []}))
    assert main(["report", str(probe_only)]) == ExitCode.USAGE
    assert "is not a cudabox doctor report" in capsys.readouterr().err
    assert (
        main(["report", str(REPORTS / "gpu-a.json"), str(REPORTS / "gpu-a.json")]) == ExitCode.USAGE
    )
    assert "appears in more than one report" in capsys.readouterr().err
    future = json.loads((REPORTS / "gpu-a.json").read_text())
    future["schema"] = 99
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps(future))
    assert main(["report", str(newer)]) == ExitCode.USAGE
    assert "upgrade cudabox" in capsys.readouterr().err


def test_report_round_trips() -> None:
    report = DoctorReport.load(REPORTS / "gpu-b.json")
    again = DoctorReport.from_json(json.loads(report.dumps()), source="gpu-b")
    assert again == report


# The fleet view: outliers against the fleet median, drift against the majority.
# Fixtures: four 8 x H100 nodes (fleet/generate.py): h100-n3 12 % slow on bf16, h100-n4 another
# VBIOS; the other tests build on h100-n1 and change one thing.

FLEET_DIR = REPORTS / "fleet"
FLEET4 = sorted(FLEET_DIR.glob("*.json"))


def _node(name: str, bf16: float = 1.0, busbw: float = 1.0, **host: Any) -> DoctorReport:
    """h100-n1 renamed, its bf16 figures (and NCCL) scaled, its host profile changed."""
    base = DoctorReport.load(FLEET_DIR / "h100-n1.json")
    checks = tuple(
        replace(c, value=round(c.value * bf16, 1))
        if c.id.startswith("perf.matmul_bf16.") and isinstance(c.value, float)
        else replace(c, value=round(c.value * busbw, 1))
        if c.id == "perf.nccl_busbw" and isinstance(c.value, float)
        else c
        for c in base.checks
    )
    profile = replace(base.host, hostname=name, **host)
    return replace(base, host=profile, checks=checks)


def _health(report: DoctorReport, gpu: int, **changes: Any) -> DoctorReport:
    """The report with GPU `gpu`'s NVML readings changed (VBIOS, ECC, power limit)."""
    assert report.readings is not None and report.readings.host is not None
    host = report.readings.host
    gpus = tuple(replace(g, **changes) if g.index == gpu else g for g in host.gpus)
    readings = replace(report.readings, host=replace(host, gpus=gpus))
    return replace(report, readings=readings)


def _problems(view: FleetView) -> set[tuple[str, str, str]]:
    return {
        (f.measurement.node, f.measurement.check_id, f.status)
        if isinstance(f, Outlier)
        else (f.node, f.field, f.status)
        for f in view.problems()
    }


def test_fleet_fixtures_give_one_slow_node_and_one_vbios_drift() -> None:
    view = fleet_view(load_reports(FLEET4))
    bf16 = {(o.measurement.node, o.measurement.gpu) for o in view.outliers if o.status == "fail"}
    assert bf16 == {("h100-n3", gpu) for gpu in range(8)}
    failing = [o for o in view.outliers if o.status == "fail"]
    assert all(o.measurement.metric == "matmul_bf16" and 0.86 < o.ratio < 0.9 for o in failing)
    assert all(o.fix and "slower than the fleet's NVIDIA H100 80GB HBM3" in o.fix for o in failing)
    (vbios,) = [d for d in view.drift if d.status != "pass"]
    assert (vbios.node, vbios.field, vbios.status) == ("h100-n4", "vbios_version", "warn")
    assert (vbios.value, vbios.majority, vbios.gpus) == (
        "96.00.61.00.01",
        "96.00.74.00.11",
        tuple(range(8)),
    )
    assert vbios.fix and "flash the VBIOS the fleet runs (96.00.74.00.11)" in vbios.fix
    # Every perf figure of every GPU was compared: 4 metrics x 8 GPUs x 4 nodes, plus NCCL.
    assert len(view.outliers) == 4 * 8 * 4 + 4
    assert view.status == "fail"


def test_a_node_12_percent_below_its_peers_fails_with_the_fix() -> None:
    fleet = [_node("a"), _node("b"), _node("c"), _node("slow", bf16=0.88)]
    view = fleet_view(fleet)
    assert _problems(view) == {("slow", f"perf.matmul_bf16.gpu{g}", "fail") for g in range(8)}
    slow = next(o for o in view.outliers if o.measurement.node == "slow")
    assert slow.ratio == pytest.approx(0.88, abs=0.01)
    assert slow.median == pytest.approx(791.3, rel=0.02)  # the peers' figure, not the slow one's
    assert "of the fleet median" in slow.message and slow.fix is not None
    assert "nvidia-smi -q -d POWER,CLOCK,PERFORMANCE" in slow.fix


def test_a_node_7_percent_below_warns_and_a_healthy_fleet_passes() -> None:
    view = fleet_view([_node("a"), _node("b"), _node("c"), _node("meh", bf16=0.93)])
    assert _problems(view) == {("meh", f"perf.matmul_bf16.gpu{g}", "warn") for g in range(8)}
    healthy = fleet_view([_node("a"), _node("b"), _node("c"), _node("d", bf16=0.97)])
    assert healthy.problems() == [] and healthy.status == "pass"
    assert {f.status for f in healthy.findings} == {"pass"}
    assert all(o.fix is None for o in healthy.outliers)


def test_thresholds_are_strictly_below() -> None:
    sample = Measurement("n", "perf.x.gpu0", "x", "GPU", 0, 90.0, "GB/s")
    peers = [replace(sample, node=f"p{n}", value=100.0) for n in range(3)]
    at_fail = {o.measurement.node: o.status for o in outliers([*peers, sample])}
    assert at_fail["n"] == "warn"  # 0.90 x is not below 0.90 x
    at_warn = outliers([*peers, replace(sample, value=95.0)])
    assert {o.measurement.node: o.status for o in at_warn}["n"] == "pass"
    assert (OUTLIER_WARN_BELOW, OUTLIER_FAIL_BELOW) == (0.95, 0.90)


def test_node_level_nccl_is_compared_per_topology() -> None:
    view = fleet_view([_node("a"), _node("b"), _node("c"), _node("slow", busbw=0.8)])
    (nccl,) = [o for o in view.problems() if isinstance(o, Outlier)]
    assert (nccl.measurement.check_id, nccl.measurement.gpu, nccl.status) == (
        "perf.nccl_busbw",
        None,
        "fail",
    )
    assert nccl.measurement.model == "8x NVIDIA H100 80GB HBM3"
    assert nccl.fix and "nvidia-smi topo -m" in nccl.fix


def test_only_rates_are_compared() -> None:
    """A count (PCIe replays) is worse when higher: the fleet median says nothing of it."""
    replays = Check("perf.pcie_replay.gpu0", "performance", "pass", "0 replays", 3, 8, "replays")
    p2p = Check("perf.p2p.gpu0-gpu1", "performance", "pass", "370 GB/s", 370.5, 316, "GB/s")
    report = _node("a")
    measured = measurements(replace(report, checks=(*report.checks, replays, p2p)))
    ids = {m.check_id for m in measured}
    assert "perf.pcie_replay.gpu0" not in ids and "perf.nccl_busbw" in ids
    (pair,) = [m for m in measured if m.check_id == "perf.p2p.gpu0-gpu1"]
    assert (pair.metric, pair.gpu, pair.model) == (
        "p2p.gpu0-gpu1",
        None,
        "8x NVIDIA H100 80GB HBM3",
    )
    assert len(measured) == 4 * 8 + 2


def test_small_groups_and_other_models_give_no_verdict() -> None:
    # Two nodes: three NCCL values are too few, and the 8 x H100 GPUs of two nodes still compare.
    two = fleet_view([_node("a"), _node("slow", bf16=0.5, busbw=0.5)])
    assert not any(o.measurement.metric == "nccl_busbw" for o in two.outliers)
    assert {o.measurement.node for o in two.outliers if o.status == "fail"} == {"slow"}
    # A node of another model is not measured against the H100s (and alone, not at all).
    base = _node("other")
    a100 = tuple(replace(g, name="NVIDIA A100-SXM4-80GB") for g in base.host.gpus)
    fleet = [_node("a"), _node("b"), _node("c"), _node("other", bf16=0.5, gpus=a100)]
    view = fleet_view(fleet)
    assert view.problems() == []
    assert not any(o.measurement.node == "other" for o in view.outliers)


def test_drift_driver_and_fewer_gpus_than_siblings() -> None:
    base = _node("short")
    fleet = [
        _node("a"),
        _node("b"),
        _node("old", driver_version="570.86.15"),
        _node("short", gpus=base.host.gpus[:7]),
    ]
    view = fleet_view(fleet)
    assert _problems(view) == {("old", "driver_version", "warn"), ("short", "gpu_count", "fail")}
    old = next(d for d in view.drift if d.node == "old" and d.field == "driver_version")
    assert (old.value, old.majority) == ("570.86.15", "580.95.05")
    assert old.fix and "install the driver the fleet runs (580.95.05)" in old.fix
    short = next(d for d in view.drift if d.node == "short" and d.field == "gpu_count")
    assert (short.value, short.majority, short.status) == (7, 8, "fail")
    assert short.fix and "Xid 79" in short.fix and "nvidia-smi -L" in short.fix


def test_drift_without_a_majority_flags_both_and_says_so() -> None:
    view = fleet_view([_node("a"), _node("b", driver_version="570.86.15")])
    drivers = [d for d in view.drift if d.field == "driver_version"]
    assert {(d.node, d.status, d.majority) for d in drivers} == {
        ("a", "warn", None),
        ("b", "warn", None),
    }
    assert "no majority" in drivers[0].message
    # A GPU count tie: the node with fewer GPUs is the one that lost some.
    short = _node("short")
    counts = fleet_view([_node("a"), _node("short", gpus=short.host.gpus[:6])])
    assert _problems(counts) == {("short", "gpu_count", "fail")}


def test_drift_in_the_nvml_readings_per_gpu() -> None:
    fleet = [
        _node("a"),
        _health(_node("capped"), 3, power_limit_w=500.0),
        _health(_health(_node("noecc"), 0, ecc_enabled=False), 1, ecc_enabled=False),
    ]
    view = fleet_view(fleet)
    assert _problems(view) == {
        ("capped", "power_limit_w", "warn"),
        ("noecc", "ecc_enabled", "warn"),
    }
    capped = next(d for d in view.drift if d.node == "capped" and d.field == "power_limit_w")
    assert (capped.value, capped.majority, capped.gpus) == (500, 700, (3,))
    assert capped.fix and "nvidia-smi -i N -pl W" in capped.fix and "700 W" in capped.fix
    noecc = next(d for d in view.drift if d.node == "noecc" and d.field == "ecc_enabled")
    assert (noecc.value, noecc.majority, noecc.gpus) == (False, True, (0, 1))
    assert "ecc enabled off on GPU 0-1" in noecc.message


def test_a_schema_1_report_compares_driver_and_count_only() -> None:
    old = replace(_node("old"), readings=None)
    view = fleet_view([_node("a"), _node("b"), old])
    fields = {d.field for d in view.drift if d.node == "old"}
    assert fields == {"driver_version", "gpu_count"}
    assert {d.field for d in view.drift if d.node == "a"} == set(DRIFT_FIELDS)


def test_fleet_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--json", *map(str, FLEET4)]) == ExitCode.FAILED
    fleet = json.loads(capsys.readouterr().out)["fleet"]
    assert set(fleet) == {"thresholds", "outliers", "drift"}
    assert fleet["thresholds"] == {
        "warn_below": 0.95,
        "fail_below": 0.9,
        "min_values": 3,
        "min_nodes": 2,
    }
    outlier_keys = {
        "node",
        "id",
        "metric",
        "model",
        "gpu",
        "value",
        "median",
        "ratio",
        "unit",
        "status",
        "message",
        "fix",
    }
    assert all(set(o) == outlier_keys for o in fleet["outliers"])
    drift_keys = {"node", "field", "model", "value", "majority", "gpus", "status", "message", "fix"}
    assert all(set(d) == drift_keys for d in fleet["drift"])
    slow = next(
        o
        for o in fleet["outliers"]
        if o["id"] == "perf.matmul_bf16.gpu6" and o["node"] == "h100-n3"
    )
    assert slow["status"] == "fail" and slow["metric"] == "matmul_bf16" and slow["gpu"] == 6
    assert slow["unit"] == "TFLOP/s" and 0.86 < slow["ratio"] < 0.9 and slow["fix"]
    (vbios,) = [d for d in fleet["drift"] if d["status"] != "pass"]
    assert vbios["gpus"] == list(range(8)) and vbios["majority"] == "96.00.74.00.11"


def test_fleet_table_and_exit_code(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["report", *map(str, FLEET4)]) == ExitCode.FAILED
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith(("h100-n3 ", "h100-n4 "))]
    fleet_rows = [r for r in rows if r[1].startswith(("perf.", "vbios"))]
    assert fleet_rows[0][:2] == ["h100-n3", "perf.matmul_bf16.gpu0"]
    assert fleet_rows[0][-1] == "FAIL" and "median" in fleet_rows[0]
    assert fleet_rows[-1][1] == "vbios_version" and fleet_rows[-1][-1] == "WARN"
    assert "fix: flash the VBIOS the fleet runs" in out
    # A fleet outlier alone (every node's own checks pass) still exits 1.
    files = []
    for report in (_node("a"), _node("b"), _node("c"), _node("slow", bf16=0.88)):
        path = tmp_path / f"{report.node}.json"
        path.write_text(report.dumps())
        files.append(str(path))
    assert main(["report", *files]) == ExitCode.FAILED
    assert "nodes unlike their peers" in capsys.readouterr().out
    assert main(["report", *files[:3]]) == ExitCode.OK
    assert "no node is an outlier or drifts from its peers" in capsys.readouterr().out
    assert main(["report", "--all", *files[:3]]) == ExitCode.OK
    listed = capsys.readouterr().out.split("every node against its peers:")[1]
    assert "perf.nccl_busbw" in listed and "gpu_count" in listed and "FAIL" not in listed


def test_the_fleet_fixtures_are_what_the_generator_writes(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("generate_fleet", FLEET_DIR / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    template = json.loads((REPORTS / "gpu-a.json").read_text())
    profile = json.loads((REPORTS.parents[1] / "hosts" / "h100.json").read_text())
    for number, path in enumerate(FLEET4, start=1):
        written = module.node_report(path.stem, number, template, profile).dumps()
        assert written == path.read_text(), f"{path} is stale: run {FLEET_DIR / 'generate.py'}"
