"""`cudabox doctor --replay`: a recorded report judged again gives the live run's verdicts."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cudabox import nvml
from cudabox.cli import main
from cudabox.container import EngineDescription
from cudabox.doctor.gpu_checks import MARKER
from cudabox.doctor.model import DoctorReport, Readings
from cudabox.doctor.run import (
    Doctor,
    Environment,
    Options,
    cuda_init_check,
    judge_framework,
    replay,
)
from cudabox.errors import ExitCode, UsageError
from cudabox.nvml import read_host
from fakenvml import SCENARIOS

REPORTS = Path(__file__).parents[1] / "fixtures" / "doctor" / "reports"


def verdicts(path: Path) -> list[tuple[str, str]]:
    return [(c["id"], c["status"]) for c in json.loads(path.read_text())["checks"]]


@pytest.fixture
def no_nvidia(monkeypatch: pytest.MonkeyPatch) -> None:
    """This CPU host as it is, made explicit: no NVML library."""
    monkeypatch.setattr(nvml, "load_pynvml", lambda: SCENARIOS["no-driver"])


@pytest.mark.docker
def test_live_quick_run_replays_to_the_same_verdicts(
    docker_engine: Any, no_nvidia: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    live, again = tmp_path / "live.json", tmp_path / "again.json"
    code = main(["doctor", "--level", "quick", "--json", str(live)])
    assert main(["doctor", "--replay", str(live), "--json", str(again)]) == code
    assert verdicts(again) == verdicts(live)
    assert any(cid == "engine.reachable" for cid, _ in verdicts(again))
    data = json.loads(live.read_text())
    assert data["schema"] == 2 and data["readings"]["host"]["status"] == "no-driver"


def test_live_here_standard_run_replays_to_the_same_verdicts(
    no_nvidia: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("torch")
    live, again = tmp_path / "live.json", tmp_path / "again.json"
    assert main(["doctor", "--here", "--level", "standard", "--json", str(live)]) == ExitCode.OK
    assert main(["doctor", "--replay", str(live), "--json", str(again)]) == ExitCode.OK
    assert verdicts(again) == verdicts(live)
    ids = [cid for cid, _ in verdicts(live)]
    assert "framework.cuda_init" in ids and "perf.matmul_bf16" in ids
    recorded = json.loads(live.read_text())["readings"]["framework"]
    assert recorded["cuda"]["built"] is None  # the CPU build of torch, recorded as read


def test_a_schema_1_report_is_refused_for_replay(capsys: pytest.CaptureFixture[str]) -> None:
    old = REPORTS / "gpu-a.json"
    assert json.loads(old.read_text())["schema"] == 1
    assert DoctorReport.load(old).readings is None  # it still loads, for `cudabox report`
    assert main(["doctor", "--replay", str(old)]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "has no readings" in err and "cudabox doctor --json FILE" in err


def test_replay_refuses_flags_that_would_change_the_reading(
    capsys: pytest.CaptureFixture[str],
) -> None:
    fixture = REPORTS / "replay" / "h200-healthy.json"
    assert main(["doctor", "--replay", str(fixture), "--level", "full"]) == ExitCode.USAGE
    assert "drop --level" in capsys.readouterr().err


def test_replay_without_readings_is_a_usage_error() -> None:
    report = DoctorReport.load(REPORTS / "gpu-b.json")
    with pytest.raises(UsageError, match="nothing to judge again"):
        replay(report)


# --- framework.cuda_init: CUDA that cannot start where NVML lists GPUs ------------------------

ERROR_802 = (
    "Unexpected error from cudaGetDeviceCount(). Did you run some cuda functions before calling "
    "NumCudaDevices() that might have already set an error? Error 802: system not yet initialized"
)


def script_result(error: str | None, built: str | None = "13.0") -> dict[str, object]:
    """What gpu_checks.py prints when torch sees no GPU (CUDA build, is_available() False)."""
    cuda_init = {
        "id": "framework.cuda_init",
        "layer": "framework",
        "status": "skip",
        "message": f"no GPU: {error}",
    }
    return {"checks": [cuda_init], "measurements": [], "cuda": {"built": built, "error": error}}


def gpu_host_readings(result: dict[str, object], gpus: bool = True) -> tuple[Readings, object]:
    reading = read_host(SCENARIOS["healthy"], env={}, with_health=True)
    return Readings(host=reading.health, framework=result, framework_gpus=gpus), reading.profile


def test_error_802_with_gpus_enumerated_fails_with_the_fabric_manager_fix() -> None:
    readings, profile = gpu_host_readings(script_result(ERROR_802))
    checks = {c.id: c for c in judge_framework(readings, profile, "torch")}  # type: ignore[arg-type]
    cuda = checks["framework.cuda_init"]
    assert cuda.status == "fail" and "NVML lists 1 GPU(s)" in cuda.message
    assert cuda.fix is not None and "nvidia-fabricmanager" in cuda.fix and "Fabric" in cuda.fix
    assert "driver's version" in cuda.fix
    for cid in ("perf.matmul_bf16", "perf.h2d_bandwidth"):  # cannot run: skip, saying why
        assert checks[cid].status == "skip" and "CUDA did not start" in checks[cid].message
        assert "802" in checks[cid].message


def test_other_cuda_init_errors_keep_their_own_fix() -> None:
    readings, profile = gpu_host_readings(
        script_result("CUDA driver version is insufficient for CUDA runtime version")
    )
    (cuda,) = [c for c in judge_framework(readings, profile, "torch") if c.id.endswith("init")]  # type: ignore[arg-type]
    assert cuda.status == "fail" and cuda.fix is not None
    assert "upgrade the driver" in cuda.fix and "fabricmanager" not in cuda.fix


def test_cuda_init_stays_a_skip_where_no_gpu_is_expected() -> None:
    # A CPU build of torch on a GPU host, and a container started without GPUs.
    for result, gpus in ((script_result("no CUDA", built=None), True), (script_result("x"), False)):
        readings, profile = gpu_host_readings(result, gpus)
        (found,) = [c for c in judge_framework(readings, profile, "torch") if "init" in c.id]  # type: ignore[arg-type]
        assert found.status == "skip"
    # No GPU in NVML at all: the message says why, the status stays skip.
    none = read_host(SCENARIOS["no-driver"], env={}, with_health=True)
    readings = Readings(host=none.health, framework=script_result(ERROR_802))
    cuda = judge_framework(readings, none.profile, "torch")[0]
    assert cuda.status == "skip" and cuda_init_check(cuda, {}, readings, none.profile) == cuda


def test_doctor_exits_one_on_error_802(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fixture = REPORTS / "replay" / "h200-cuda-802.json"
    assert main(["doctor", "--replay", str(fixture)]) == ExitCode.FAILED
    out = capsys.readouterr().out
    assert "FAIL framework.cuda_init" in out and "nvidia-fabricmanager" in out


# --- the recorded fixtures: every one replays to the verdicts it recorded ---------------------

FIXTURES = sorted((REPORTS / "replay").glob("*.json"))


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_each_fixture_replays_to_its_recorded_verdicts(path: Path) -> None:
    again = replay(DoctorReport.load(path))
    assert [(c.id, c.status) for c in again.checks] == verdicts(path)


@pytest.mark.parametrize("name", ["h200-healthy", "8xh200-healthy"])
def test_the_healthy_fixtures_are_all_pass(name: str) -> None:
    report = replay(DoctorReport.load(REPORTS / "replay" / f"{name}.json"))
    bad = [(c.id, c.status, c.message) for c in report.checks if c.status in ("fail", "warn")]
    assert bad == [] and report.exit_code() == ExitCode.OK
    ids = {c.id for c in report.checks}
    if name.startswith("8x"):  # the standard level's fabric checks, every ordered pair
        assert "perf.nccl_busbw" in ids and len([i for i in ids if i.startswith("perf.p2p.")]) == 56
    else:  # the full level's load checks
        assert {"mem.pattern.gpu0", "burn.tflops.gpu0", "burn.throttle.gpu0"} <= ids


@pytest.mark.parametrize(
    ("variant", "cid", "fix"),
    [
        ("cuda-802", "framework.cuda_init", "nvidia-fabricmanager"),
        ("burn-hw-slowdown", "burn.throttle.gpu0", "cooling"),
        ("burn-checksum", "burn.checksum", "drain the node"),
        ("burn-slow", "burn.tflops.gpu0", "burn.throttle"),
        ("mem-pattern", "mem.pattern.gpu0", "dcgmi diag -r 3"),
        ("ecc-new-uncorrectable", "mem.ecc.gpu0", "nvidia-smi -r -i 0"),
        ("remap-pending-after-load", "mem.ecc.gpu0", "pending remap"),
        ("slow-d2h", "perf.d2h_bandwidth.gpu0", "NUMA"),
        ("8x:p2p-slow-pair", "perf.p2p.gpu2-gpu5", "host.nvlink"),
        ("8x:nccl-slow", "perf.nccl_busbw", "NCCL_DEBUG=INFO"),
    ],
)
def test_each_fault_fixture_fails_its_check_with_the_fix(
    variant: str, cid: str, fix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    node, _, name = variant.rpartition(":")
    path = REPORTS / "replay" / f"{node or ''}h200-{name}.json"
    assert main(["doctor", "--replay", str(path)]) == ExitCode.FAILED
    report = replay(DoctorReport.load(path))
    failing = [c for c in report.checks if c.status == "fail"]
    assert [c.id for c in failing] == [cid]  # one reading changed, one check fails
    assert failing[0].fix is not None and fix in failing[0].fix
    assert f"FAIL {cid}" in capsys.readouterr().out


def test_replay_touches_neither_nvml_nor_an_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("replay must not read the host")

    monkeypatch.setattr(nvml, "load_pynvml", refuse)
    monkeypatch.setattr("cudabox.doctor.run.read_host", refuse)
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    assert main(["doctor", "--replay", str(REPORTS / "replay" / "h200-healthy.json")]) == 0


# --- a live run on a (fake) GPU host: the GPU path records what --replay needs ----------------


class GpuImageEngine:
    """A healthy engine whose image prints a GPU result with a burn (level full) in it."""

    def __init__(self, uuid: str) -> None:
        self.uuid = uuid
        self.commands: list[str] = []
        self.description = EngineDescription.from_answers(
            {"Version": "28.2.2", "ApiVersion": "1.50", "Platform": {"Name": "Docker Engine"}},
            {"Runtimes": {"runc": {}, "nvidia": {}}},
        )

    def image(self, ref: str) -> Any:
        return SimpleNamespace(env={"NVIDIA_REQUIRE_CUDA": "cuda>=13.0"}, labels={})

    def run(self, image: str, command: Sequence[str], **_: Any) -> Any:
        self.commands.append(" ".join(command))
        if "--nvml-uuids" in command:
            return SimpleNamespace(
                exit_code=0, timed_out=False, output=MARKER + json.dumps({"uuids": [self.uuid]})
            )
        if "--json" in command:
            time.sleep(1.5)  # the load: long enough for NVML samples
            burn = {
                "id": "burn.gpu0",
                "value": 500.0,
                "unit": "TFLOP/s",
                "checksums": ["ab"],
                "gpu_index": 0,
                "gpu_uuid": self.uuid,
            }
            result = {**script_result(None), "measurements": [burn]}
            result["checks"] = [{**result["checks"][0], "status": "pass", "message": "ok"}]
            return SimpleNamespace(
                exit_code=0, timed_out=False, output=MARKER + json.dumps(result) + "\n"
            )
        metrics = {"passed": True, "final_loss": 0.1, "thresholds": {"max_loss": 0.35}}
        text = "CUDABOX_DOCTOR_METRICS\n" + json.dumps(metrics) + "\n"
        return SimpleNamespace(exit_code=0, timed_out=False, output=text)

    def close(self) -> None:
        pass


def test_a_live_full_run_on_a_gpu_host_replays_to_the_same_verdicts(tmp_path: Path) -> None:
    lib = SCENARIOS["healthy"]
    engine = GpuImageEngine(lib.gpus[0].uuid)
    env = Environment(nvml_lib=lib, connect=lambda: engine, pci_root=tmp_path, say=lambda _: None)
    live = Doctor(Options(level="full", burn_seconds=7), env).run()
    script = next(c for c in engine.commands if "--json" in c)
    assert "--level full" in script and "--burn-seconds 7" in script
    readings = live.readings
    assert readings is not None and readings.host_after is not None
    assert readings.samples and {s.index for s in readings.samples} == {0}
    assert readings.load_seconds is not None and readings.load_seconds >= 1.5
    checks = {c.id: c for c in live.checks}
    assert checks["burn.throttle.gpu0"].status == "pass"  # the fake GPU is idle: no reason set
    assert checks["burn.tflops.gpu0"].status == "fail"  # 500 of the H100's 798: below 0.75 x
    again = replay(DoctorReport.from_json(json.loads(live.dumps())))
    assert [(c.id, c.status) for c in again.checks] == [(c.id, c.status) for c in live.checks]


def test_readings_are_read_strictly() -> None:
    data = json.loads((REPORTS / "replay" / "h200-healthy.json").read_text())
    assert DoctorReport.from_json(data).readings == replay(DoctorReport.from_json(data)).readings
    # A key a newer cudabox added is ignored, as the report format promises; the rest is checked.
    newer = {**data, "readings": {**data["readings"], "extra": 1}}
    assert DoctorReport.from_json(newer).readings == DoctorReport.from_json(data).readings
    broken = [
        ({k: v for k, v in data.items() if k != "readings"}, "has no 'readings' key"),
        ({**data, "readings": {**data["readings"], "framework": [1]}}, "readings.framework must"),
        (
            {**data, "readings": {**data["readings"], "samples": [{"index": 0}]}},
            r"samples\[0\] has no 't' key",
        ),
        (
            {**data, "readings": {**data["readings"], "xids": [{**XID, "source": "dmesg"}]}},
            "source must be 'nvml' or 'kernel-log'",
        ),
    ]
    for bad, message in broken:
        with pytest.raises(UsageError, match=message) as raised:
            DoctorReport.from_json(bad, where="report r.json")
        assert "cudabox doctor --json FILE" in (raised.value.fix or "")


XID = {"xid": 79, "gpu_index": 0, "source": "nvml", "time": 1.0, "text": None}
