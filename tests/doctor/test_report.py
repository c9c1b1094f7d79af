"""`cudabox report` on doctor reports of a mixed fleet (fixtures: all-pass H100, failing H100, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cudabox.cli import main
from cudabox.doctor.model import DoctorReport
from cudabox.errors import ExitCode
from cudabox.host import HostProfile
from cudabox.report import check_matrix, choose, load_reports

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
    choice = choose(load_reports(FLEET), "torch")
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
