"""`cudabox doctor` end to end: exit codes, the JSON schema, and the layers on a stubbed GPU host."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from cudabox import nvml
from cudabox.cli import main
from cudabox.container import EngineDescription
from cudabox.doctor.gpu_checks import MARKER
from cudabox.doctor.model import LAYERS, STATUSES
from cudabox.doctor.run import Doctor, Environment, Options
from cudabox.errors import ExitCode
from fakenvml import SCENARIOS, FakeGpu, FakeNvml

CHECK_KEYS = ["id", "layer", "status", "value", "expected", "unit", "message", "fix", "duration_s"]
TOP_KEYS = [
    "kind",
    "schema",
    "cudabox_version",
    "timestamp",
    "level",
    "framework",
    "image",
    "here",
    "host",
    "versions",
    "summary",
    "checks",
    "readings",
]


def assert_schema(data: dict[str, Any]) -> None:
    assert list(data) == TOP_KEYS
    assert data["kind"] == "cudabox.doctor" and data["schema"] == 2
    assert data["host"]["schema"] == 1 and "gpus" in data["host"]
    for item in data["checks"]:
        assert list(item) == CHECK_KEYS
        assert item["status"] in STATUSES and item["layer"] in LAYERS
    assert sum(data["summary"].values()) == len(data["checks"])


@pytest.fixture
def no_nvidia(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """This CPU host as it is, made explicit: no NVML library."""
    monkeypatch.setattr(nvml, "load_pynvml", lambda: SCENARIOS["no-driver"])


def test_quick_without_an_engine_could_not_run(
    no_nvidia: None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/absent.sock")
    out = tmp_path / "r.json"
    assert main(["doctor", "--level", "quick", "--json", str(out)]) == ExitCode.UNAVAILABLE
    err = capsys.readouterr().err
    assert "needs a container engine" in err and "cudabox doctor --here" in err
    data = json.loads(out.read_text())  # the report is written even so
    assert_schema(data)
    reachable = next(c for c in data["checks"] if c["id"] == "engine.reachable")
    assert reachable["status"] == "fail" and reachable["fix"]


def test_here_standard_on_this_cpu_host(
    no_nvidia: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("torch")
    out = tmp_path / "r.json"
    assert main(["doctor", "--level", "standard", "--here", "--json", str(out)]) == ExitCode.OK
    data = json.loads(out.read_text())
    assert_schema(data)
    status = {c["id"]: c["status"] for c in data["checks"]}
    assert status["framework.import"] == "pass" and status["framework.matmul.cpu"] == "pass"
    assert status["framework.cuda_init"] == "skip" and status["perf.matmul_bf16"] == "skip"
    assert not any(c["layer"] in ("engine", "container") for c in data["checks"])
    assert data["here"] is True and data["versions"]["framework"].startswith("torch ")
    assert "skip" in capsys.readouterr().out


def test_failures_exit_one_and_warnings_only_with_strict(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(nvml, "load_pynvml", lambda: SCENARIOS["hw-slowdown"])
    assert main(["doctor", "--level", "quick", "--here"]) == ExitCode.FAILED
    assert "fix: the GPU asserted hardware slowdown" in capsys.readouterr().out
    monkeypatch.setattr(nvml, "load_pynvml", lambda: SCENARIOS["no-persistence"])
    assert main(["doctor", "--level", "quick", "--here"]) == ExitCode.OK
    assert main(["doctor", "--level", "quick", "--here", "--strict"]) == ExitCode.FAILED


def test_usage_errors_exit_two(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--here", "--image", "torch-2.13-cpu"]) == ExitCode.USAGE
    with pytest.raises(SystemExit) as stop:
        main(["doctor", "--level", "thorough"])
    assert stop.value.code == ExitCode.USAGE


# --- the container path on a GPU host, with a stub engine ------------------------------------


@dataclass
class StubImage:
    env: dict[str, str] = field(default_factory=lambda: {"NVIDIA_REQUIRE_CUDA": "cuda>=13.0"})
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class StubRun:
    exit_code: int | None
    output: str
    timed_out: bool = False


@dataclass
class StubEngine:
    """Answers like a healthy GPU engine; records what it was asked to run."""

    uuids: list[str]
    ran: list[tuple[str, bool]] = field(default_factory=list)

    @property
    def description(self) -> EngineDescription:
        return EngineDescription.from_answers(
            {"Version": "28.2.2", "ApiVersion": "1.50", "Platform": {"Name": "Docker Engine"}},
            {"Runtimes": {"runc": {}, "nvidia": {}}},
        )

    def image(self, ref: str) -> StubImage | None:
        return StubImage()

    def run(
        self,
        image: str,
        command: Sequence[str],
        *,
        timeout: float,
        files: Mapping[str, bytes] | None = None,
        gpus: bool = False,
    ) -> StubRun:
        self.ran.append((" ".join(command), gpus))
        if "--nvml-uuids" in command:
            return StubRun(0, MARKER + json.dumps({"uuids": self.uuids}) + "\n")
        if "--json" in command:
            result = {
                "versions": {"framework": "torch 2.15.0+cu132"},
                "checks": [
                    {
                        "id": "framework.cuda_init",
                        "layer": "framework",
                        "status": "pass",
                        "message": "ok",
                    }
                ],
                "measurements": [
                    {
                        "id": "perf.matmul_bf16.gpu0",
                        "value": 500.0,
                        "unit": "TFLOP/s",
                        "gpu_uuid": self.uuids[0],
                        "gpu_index": 0,
                    }
                ],
            }
            return StubRun(0, "progress\n" + MARKER + json.dumps(result) + "\n")
        metrics = {
            "passed": True,
            "final_loss": 0.1,
            "samples_per_s": 1e5,
            "device_name": "H100",
            "precision": "bf16",
            "thresholds": {"max_loss": 0.35},
        }
        return StubRun(0, "training...\nCUDABOX_DOCTOR_METRICS\n" + json.dumps(metrics) + "\n")

    def close(self) -> None:
        pass


def test_gpu_host_through_a_stub_engine(tmp_path: Path) -> None:
    lib = SCENARIOS["healthy"]
    engine = StubEngine([lib.gpus[0].uuid])
    env = Environment(nvml_lib=lib, connect=lambda: engine, pci_root=tmp_path, say=lambda _: None)
    report = Doctor(Options(level="full"), env).run()
    checks = {c.id: c for c in report.checks}
    assert report.image == "torch-2.15-cu132"
    assert checks["engine.gpu_runtime"].status == "pass"
    assert checks["container.require_cuda"].status == "pass"
    assert checks["container.gpus"].status == "pass"
    bf16 = checks["perf.matmul_bf16.gpu0"]  # 500 of the H100's measured 798: below 0.75 x
    assert (bf16.status, bf16.expected) == ("fail", 798.0)
    assert checks["training.smoke"].status == "pass"
    assert all(gpus for _, gpus in engine.ran), "every in-image run must get the GPUs"
    assert report.exit_code() == ExitCode.FAILED


def test_container_missing_a_gpu_fails(tmp_path: Path) -> None:
    second = replace(FakeGpu(), uuid="GPU-second", bus_id="00000000:2A:00.0")
    lib = FakeNvml(gpus=[FakeGpu(), second])  # two GPUs on the host; the container sees one
    engine = StubEngine([lib.gpus[0].uuid])
    env = Environment(nvml_lib=lib, connect=lambda: engine, pci_root=tmp_path, say=lambda _: None)
    checks = {c.id: c for c in Doctor(Options(level="standard"), env).run().checks}
    found = checks["container.gpus"]
    assert found.status == "fail" and "missing GPU-second" in found.message
    assert (found.value, found.expected) == ("1 of 2", "2 of 2")
