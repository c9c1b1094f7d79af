"""scripts/gpu-evidence without a GPU: the refusal, the records' limits, the verdicts, and the
import of a GPU run's records (a synthetic records folder made from the fixtures)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from importlib.machinery import SourceFileLoader
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from cudabox.doctor.fleet import load_reports
from cudabox.doctor.perf import parse_perf
from cudabox.host import HostProfile
from cudabox.images.catalog import load_catalog
from cudabox.resolver import select

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "scripts" / "gpu-evidence"
FIXTURES = ROOT / "tests" / "fixtures"
GPU_REPORT = FIXTURES / "doctor" / "reports" / "gpu-a.json"  # an all-pass H100, doctor full
PERF_TOML = ROOT / "toolkit" / "cudabox" / "data" / "gpu_perf.toml"


def _load_script() -> ModuleType:
    loader = SourceFileLoader("gpu_evidence", str(SCRIPT))
    spec = importlib.util.spec_from_loader("gpu_evidence", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_evidence"] = module  # dataclasses look their module up
    loader.exec_module(module)
    return module


ge = _load_script()


def run_script(
    *args: str, python: str = sys.executable, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def interpreters() -> list[str]:
    """This test Python (nvidia-ml-py, no driver) and a bare python3 (no cudabox dependencies)."""
    found = [sys.executable]
    bare = shutil.which("python3")
    if bare and Path(bare).resolve() != Path(sys.executable).resolve():
        version = subprocess.run(
            [bare, "-c", "import sys; print(sys.version_info >= (3, 11))"],
            capture_output=True,
            text=True,
            check=False,
        )
        if version.stdout.strip() == "True":
            found.append(bare)
    return found


# ---- no GPU: exit 4 within seconds ------------------------------------------------------------


@pytest.mark.parametrize("python", interpreters())
def test_without_a_gpu_it_stops_within_seconds_with_exit_4(python: str, tmp_path: Path) -> None:
    out = tmp_path / "records"
    started = time.monotonic()
    result = run_script("--out", str(out), python=python)
    elapsed = time.monotonic() - started
    profile = json.loads((out / "probe.json").read_text())
    if ge.no_gpu_reason(profile) is None:
        pytest.skip("this host has a usable GPU")
    assert result.returncode == 4, result.stderr
    assert elapsed < 10, f"took {elapsed:.1f} s"
    assert "gpu-evidence: error: no usable NVIDIA GPU here" in result.stderr
    assert profile["message"] in result.stderr  # the probe's own reason, not a guess
    assert "fix: " in result.stderr and "Traceback" not in result.stderr
    # Nothing but the probe ran; its record and the reason stay.
    assert sorted(p.name for p in out.iterdir()) == ["log.txt", "probe.json", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdict"] == "no-gpu" and summary["exit_code"] == 4
    assert [s["name"] for s in summary["steps"]] == ["probe"]


def test_a_folder_with_other_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    result = run_script("--out", str(tmp_path))
    assert result.returncode == 2
    assert "holds other files (notes.txt)" in result.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_an_earlier_runs_records_are_replaced_not_mixed(tmp_path: Path) -> None:
    (tmp_path / "train-fp32.json").write_text("{}")
    run_script("--out", str(tmp_path))
    assert not (tmp_path / "train-fp32.json").exists()


# ---- the GPU gate on recorded hosts -----------------------------------------------------------


def host_json(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / "hosts" / f"{name}.json").read_text())
    return data


def test_the_gate_passes_a_gpu_host_and_names_what_is_missing_elsewhere() -> None:
    assert ge.no_gpu_reason(host_json("h100")) is None
    assert ge.no_gpu_reason(host_json("h100-mig")) is None
    cpu = host_json("cpu-only")
    assert ge.no_gpu_reason(cpu) == f"the probe says no-driver: {cpu['message']}"
    hidden = host_json("h100")
    hidden["cuda_visible_devices"] = ""
    for gpu in hidden["gpus"]:
        gpu["visible"] = False
    assert "none visible (CUDA_VISIBLE_DEVICES='')" in str(ge.no_gpu_reason(hidden))
    lost = host_json("h200")
    for gpu in lost["gpus"]:
        gpu["error"] = "GPU is lost"
    assert ge.no_gpu_reason(lost) == "no visible GPU answers NVML: GPU is lost"
    assert ge.no_gpu_reason(None) == "`cudabox probe --json` gave no host profile"


def test_default_precision_follows_the_workloads_auto_rule() -> None:
    assert ge.default_precision(host_json("h100"), on_cpu=False) == "bf16"
    assert ge.default_precision(host_json("t4"), on_cpu=False) == "fp16"
    assert ge.default_precision(host_json("h100"), on_cpu=True) == "fp32"


# ---- what a GPU machine can send back ---------------------------------------------------------


def test_records_limits_eight_plain_files_under_16_mib(tmp_path: Path) -> None:
    for name in ge.RECORD_FILES:
        (tmp_path / name).write_text("{}")
    assert ge.check_records(tmp_path) == []
    assert len(ge.RECORD_FILES) == ge.MAX_FILES
    with (tmp_path / "log.txt").open("wb") as handle:  # sparse: 16 MiB costs no disk
        handle.truncate(ge.MAX_BYTES)
    assert ge.check_records(tmp_path) == ["log.txt is 16,777,216 bytes, the limit is 16 MiB"]
    (tmp_path / "log.txt").write_text("")
    (tmp_path / "extra").mkdir()
    problems = ge.check_records(tmp_path)
    assert "9 entries" in problems[0] and "extra is not a plain file" in problems[1]


def test_the_log_keeps_the_tail_of_long_output() -> None:
    text = "".join(f"line {n}\n" for n in range(200_000))
    kept = ge.tail(text, 1024)
    assert len(kept.encode()) < 1100 and kept.endswith("line 199999\n")
    assert kept.startswith("[... ") and ge.tail("short", 1024) == "short"


# ---- timeouts stop the whole process tree -----------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state  # a killed child waits as a zombie for its reaper


GRANDCHILD = (
    "import subprocess, sys, time; "
    "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
    "open(sys.argv[1], 'w').write(str(p.pid)); time.sleep(float(sys.argv[2]))"
)


@pytest.mark.parametrize(("sleep", "timeout", "timed_out"), [(120, 3, True), (0, 60, False)])
def test_a_step_leaves_no_process_behind(
    tmp_path: Path, sleep: float, timeout: float, timed_out: bool
) -> None:
    pid_file = tmp_path / "pid"
    argv = [sys.executable, "-c", GRANDCHILD, str(pid_file), str(sleep)]
    code, stopped, _out, _err, seconds = ge.run_command(argv, timeout, tmp_path, dict(os.environ))
    assert stopped is timed_out and (code is None) is timed_out
    assert seconds < timeout + ge.TERM_GRACE_S + 5
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(grandchild), "the workload's own children must not outlive the step"


def _groups_running(marker: str) -> set[int]:
    """Process groups of the processes whose command line holds `marker`."""
    groups = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                groups.add(os.getpgid(int(proc.name)))
        except (OSError, ProcessLookupError):
            continue
    return groups


def _group_alive(pgid: int) -> bool:
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if os.getpgid(int(proc.name)) == pgid and _alive(int(proc.name)):
                return True
        except (OSError, ProcessLookupError):
            continue
    return False


def test_sigterm_stops_the_running_step_and_keeps_the_records(tmp_path: Path) -> None:
    out = tmp_path / "records"
    script = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--out", str(out), "--allow-cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        groups: set[int] = set()
        while not groups and time.monotonic() < deadline and script.poll() is None:
            groups = _groups_running(f"{out}/doctor.json")  # the doctor step is running
            time.sleep(0.2)
        assert groups, "the doctor step did not start"
        script.send_signal(15)
        _, stderr = script.communicate(timeout=60)
    finally:
        if script.poll() is None:
            script.kill()
    assert script.returncode == 128 + 15, stderr
    assert "stopped by SIGTERM" in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdict"] == "stopped" and summary["steps"][-1]["name"] == "stopped"
    assert not any(_group_alive(pgid) for pgid in groups), "the doctor outlived the script"


# ---- verdicts ---------------------------------------------------------------------------------


def ran(args: list[str], code: int | None = 0, stdout: str = "", stderr: str = "") -> Any:
    return ge.Ran(tuple(args), code, code is None, 1.0, 90.0, stdout, stderr)


def report(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / "doctor" / "reports" / name).read_text())
    return data


def test_doctor_verdicts() -> None:
    good = ge.judge_doctor(ran(["doctor"]), report("gpu-a.json"), want_gpu=True)
    assert good.ok and good.note == "26 pass, 0 warn, 0 fail, 2 skip"
    bad = ge.judge_doctor(ran(["doctor"], 1), report("gpu-b.json"), want_gpu=True)
    assert not bad.ok and "FAIL: host.pcie_link.gpu0, perf.h2d_bandwidth.gpu0" in bad.note
    assert "warn: perf.matmul_bf16.gpu0" in bad.note
    # A clean CPU report is no GPU evidence (a CPU-only torch on a GPU host looks like this).
    cpu = ge.judge_doctor(ran(["doctor"]), report("cpu-c.json"), want_gpu=True)
    assert not cpu.ok and "the framework did not use the GPU" in cpu.note
    assert ge.judge_doctor(ran(["doctor"]), report("cpu-c.json"), want_gpu=False).ok
    timed_out = ge.judge_doctor(ran(["doctor"], None), None, want_gpu=True)
    assert not timed_out.ok and timed_out.note == "timed out after 90 s"
    assert ge.judge_doctor(None, None, want_gpu=True).note.startswith("not run")
    assert ge.perf_value(report("gpu-a.json"), "matmul_bf16") == 791.3


def test_doctor_step_records_the_load_checks_of_level_full() -> None:
    # A level-full doctor report of an H200 (the replay fixture): every load check of GPU 0.
    load = ge.load_record(report("replay/h200-healthy.json"))
    assert set(load) == {*ge.LOAD_CHECKS, "nvml_samples"} and load["nvml_samples"] == 61
    assert load["burn.tflops.gpu0"] == {"status": "pass", "value": 772.4}
    assert load["burn.throttle.gpu0"]["status"] == "pass"
    assert load["mem.pattern.gpu0"] == {"status": "pass", "value": 0}
    assert load["perf.nccl_busbw"]["status"] == "skip"  # one GPU
    slowed = ge.load_record(report("replay/h200-burn-hw-slowdown.json"))
    assert slowed["burn.throttle.gpu0"] == {"status": "fail", "value": "HW slowdown"}
    assert ge.load_record(report("gpu-a.json")) == {"nvml_samples": None}  # schema 1: none
    assert "--burn-seconds" in Path(ge.__file__ or "").read_text()


def gpu_metrics(**changes: Any) -> dict[str, Any]:
    metrics = {
        "schema": 1,
        "framework": "torch",
        "framework_version": "2.11.0+cu130",
        "cuda_version": "13.0",
        "device": "cuda",
        "device_name": "NVIDIA H100 80GB HBM3",
        "precision": "bf16",
        "compile": False,
        "samples_per_s": 2_000_000.0,
        "achieved_tflops": 400.0,
        "time_to_first_step_s": 9.5,
        "final_loss": 0.1006,
        "passed": True,
        "status": "passed",
        "config": {"width": 4096, "depth": 8, "batch_size": 8192, "steps": 300},
    }
    return {**metrics, **changes}


def test_training_verdicts_and_share_of_the_bf16_matmul() -> None:
    bf16, compiled, fp32 = ge.TRAIN_RUNS
    step, record = ge.train_record(bf16, ran(["train"]), {}, gpu_metrics(), 800.0, "cuda", "bf16")
    assert step.ok and record["share_of_bf16_matmul"] == 0.5
    assert "2,000,000 samples/s, 400 TFLOP/s, 50.0% of bf16 matmul" in step.note
    cases = [
        (compiled, gpu_metrics(), "compile=False"),
        (fp32, gpu_metrics(), "precision bf16, not fp32"),
        (bf16, gpu_metrics(device="cpu"), "ran on cpu, not cuda"),
        (bf16, gpu_metrics(passed=False, status="failed"), "status failed"),
        (bf16, gpu_metrics(samples_per_s=None), "no steady-state samples/s"),
    ]
    for run, metrics, problem in cases:
        want = "fp32" if run is fp32 else "bf16"
        step, _ = ge.train_record(run, ran(["train"]), {}, metrics, 800.0, "cuda", want)
        assert not step.ok and problem in step.note
    step, record = ge.train_record(
        bf16, ran(["train"], 4, stderr="cudabox: error: no GPU"), None, None, None, "cuda", "bf16"
    )
    assert not step.ok and step.note == "exit 4, no metrics: cudabox: error: no GPU"
    assert record["share_of_bf16_matmul"] is None


def test_select_exit_3_is_a_record_not_a_crash() -> None:
    nothing = json.dumps({"selected": None, "message": "driver too old", "candidates": []})
    step, record = ge.select_record("torch", ran(["select"], 3, stdout=nothing))
    assert step.ok and record["selected"] is None and record["why"] == "driver too old"
    step, _ = ge.select_record("torch", ran(["select"], 2, stderr="cudabox: error: bad host"))
    assert not step.ok and step.note == "exit 2: cudabox: error: bad host"


# ---- import: a synthetic GPU run made from the fixtures ---------------------------------------


def cudabox_select(framework: str, host: Path) -> Any:
    args = ["select", "--framework", framework, "--host", str(host), "--json"]
    done = subprocess.run(
        [sys.executable, "-m", "cudabox", *args], capture_output=True, text=True, check=False
    )
    return ran(args, done.returncode, done.stdout, done.stderr)


def synthetic_records(folder: Path) -> Path:
    """What `--out` writes on an H100: the gpu-a doctor report as if run with --here."""
    folder.mkdir()
    doctor = {**report("gpu-a.json"), "here": True, "image": None}
    (folder / "probe.json").write_text(json.dumps(doctor["host"]))
    (folder / "doctor.json").write_text(json.dumps(doctor))
    selections = {
        fw: ge.select_record(fw, cudabox_select(fw, folder / "probe.json"))[1]
        for fw in ("torch", "tensorflow")
    }
    select_file = {"kind": f"{ge.KIND}.select", "schema": ge.SCHEMA, **selections}
    (folder / "select.json").write_text(json.dumps(select_file))
    peak = ge.perf_value(doctor, "matmul_bf16")
    changes: dict[str, dict[str, Any]] = {
        "bf16": {},
        "compile": {"compile": True},
        "fp32": {"precision": "fp32"},
    }
    for run in ge.TRAIN_RUNS:
        args = ["train", "torch", "--here", "--require-gpu", "--out", "/tmp/x", "--json"]
        args += ["--", *run.options] if run.options else []
        metrics = gpu_metrics(**changes[run.name])
        want = str(metrics["precision"])
        step, record = ge.train_record(run, ran(args), {}, metrics, peak, "cuda", want)
        assert step.ok, step.note
        (folder / f"train-{run.name}.json").write_text(json.dumps(record))
    summary = {
        "kind": ge.KIND,
        "schema": ge.SCHEMA,
        "finished": "2026-11-28T10:00:00+00:00",
        "duration_s": 201.5,
        "allow_cpu": False,
        "python_version": "3.12.3",
        "failed": [],
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def blocks(stdout: str) -> dict[str, str]:
    """The import's paste blocks, by the file each one is for."""
    found = {}
    for chunk in stdout.split(ge.SCISSORS + " ")[1:]:
        title, _, body = chunk.partition("\n")
        found[title.split(":")[0]] = body.split(ge.SCISSORS)[0]
    return found


def test_import_makes_fixtures_perf_rows_and_a_results_section(tmp_path: Path) -> None:
    records = synthetic_records(tmp_path / "records")
    repo = tmp_path / "repo"
    (repo / PERF_TOML.relative_to(ROOT)).parent.mkdir(parents=True)
    shutil.copy(PERF_TOML, repo / PERF_TOML.relative_to(ROOT))
    result = run_script("--import", str(records), "--repo", str(repo), "--where", "a test rig")
    assert result.returncode == 0, result.stderr

    # The probe becomes a host fixture the resolver reads, with the image the machine picked.
    host_fixture = repo / "tests/fixtures/hosts/h100-80gb-hbm3-real.json"
    assert json.loads(host_fixture.read_text()) == json.loads((records / "probe.json").read_text())
    picked = json.loads((records / "select.json").read_text())["torch"]["selected"]
    chosen = select(load_catalog(), [HostProfile.load(host_fixture)], "torch").selected
    assert chosen is not None and chosen.name == picked == "torch-2.15-cu132"
    # The doctor report becomes a fixture `cudabox report` reads (outside reports/'s fleet).
    doctor_fixture = repo / "tests/fixtures/doctor/reports/real/h100-80gb-hbm3-here.json"
    (loaded,) = load_reports([doctor_fixture])
    assert loaded.here and loaded.counts()["fail"] == 0

    pasted = blocks(result.stdout)
    assert set(pasted) == {
        "tests/test_resolver.py",
        "toolkit/cudabox/data/gpu_perf.toml",
        "benchmarks/RESULTS.md",
    }
    assert (
        '("h100-80gb-hbm3-real", "torch", "torch-2.15-cu132", ""),'
        in pasted["tests/test_resolver.py"]
    )

    # The rows, merged into the real table, are what the doctor then expects of an H100.
    toml_text = pasted["toolkit/cudabox/data/gpu_perf.toml"]
    data = tomllib.loads(PERF_TOML.read_text())
    for row in data["row"]:  # each measured H100 row there is named as replaced
        if row["pci_device_id"] == "0x233010DE" and row["kind"] == "measured":
            assert f"# replaces the measured row {row['value']:g} ({row['source']})" in toml_text
    rows = tomllib.loads(toml_text)
    source = rows["sources"]["CB-H100-2026-11-28"]
    assert source.startswith("scripts/gpu-evidence on a test rig: NVIDIA H100 80GB HBM3, driver")
    assert "8192^3 bf16 matmul 791.3 TFLOP/s" in source
    data["sources"].update(rows["sources"])
    new = {(r["pci_device_id"], r["metric"]) for r in rows["row"]}
    data["row"] = [
        r
        for r in data["row"]
        if not (r["kind"] == "measured" and (r["pci_device_id"], r["metric"]) in new)
    ] + rows["row"]
    table = parse_perf(data)
    for metric, value in (
        ("matmul_bf16", 791.3),
        ("matmul_tf32", 371.2),
        ("mem_bandwidth", 2968.4),
    ):
        want = table.expect("0x233010DE", metric)
        assert want is not None and (want.value, want.basis) == (value, "measured")
        assert want.source == "CB-H100-2026-11-28"

    section = pasted["benchmarks/RESULTS.md"]
    for fact in (
        "## GPU: NVIDIA H100 80GB HBM3",
        "driver 580.95.05 (CUDA 13.0)",
        "torch 2.15.0+cu132",
        "`python3 scripts/gpu-evidence --out DIR`",
        "`cudabox train torch --here --require-gpu -- --precision fp32`",
        "| 2,000,000 | 400.0 | 50.5% |",
        "width 4096, depth 8, batch 8192, 300 steps",
        "bf16 matmul 791.3 TFLOP/s",
    ):
        assert fact in section, fact


def test_import_keeps_a_changed_fixture_unless_forced(tmp_path: Path) -> None:
    records = synthetic_records(tmp_path / "records")
    repo = tmp_path / "repo"
    assert run_script("--import", str(records), "--repo", str(repo)).returncode == 0
    again = run_script("--import", str(records), "--repo", str(repo))
    assert again.returncode == 0 and "unchanged" in again.stdout
    # A rerun on another day: both fixtures would change, and neither is written.
    doctor_fixture = repo / "tests/fixtures/doctor/reports/real/h100-80gb-hbm3-here.json"
    before = doctor_fixture.read_text()
    for name, key, value in (
        ("probe.json", "hostname", "other"),
        ("doctor.json", "timestamp", "x"),
    ):
        data = json.loads((records / name).read_text())
        (records / name).write_text(json.dumps({**data, key: value}))
    refused = run_script("--import", str(records), "--repo", str(repo))
    assert refused.returncode == 2 and "exists with other content" in refused.stderr
    assert doctor_fixture.read_text() == before
    forced = run_script("--import", str(records), "--repo", str(repo), "--force")
    assert forced.returncode == 0
    assert json.loads(doctor_fixture.read_text())["timestamp"] == "x"


def test_import_refuses_a_cpu_test_run(tmp_path: Path) -> None:
    records = synthetic_records(tmp_path / "records")
    summary = json.loads((records / "summary.json").read_text())
    (records / "summary.json").write_text(json.dumps({**summary, "allow_cpu": True}))
    result = run_script("--import", str(records), "--repo", str(tmp_path / "repo"))
    assert result.returncode == 2 and "recorded with --allow-cpu" in result.stderr
    assert not (tmp_path / "repo").exists()


# ---- the whole run, on the CPU ----------------------------------------------------------------

# Short runs, so that the test takes a minute or two; the GPU record uses the defaults.
SHORT = "--steps 30 --workers 0 --max-loss 10 --min-accuracy 0"


@pytest.mark.slow
def test_allow_cpu_runs_every_step_into_eight_small_files(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    out = tmp_path / "records"
    result = run_script(
        "--out", str(out), "--allow-cpu", f"--workload={SHORT}", "--budget", "1500", timeout=1600
    )
    summary = json.loads((out / "summary.json").read_text())
    assert result.returncode == 0, result.stdout + result.stderr
    assert summary["verdict"] == "ok" and summary["allow_cpu"] is True
    names = [s["name"] for s in summary["steps"]]
    assert names == [
        "probe",
        "select-torch",
        "select-tensorflow",
        "doctor",
        "train-bf16",
        "train-compile",
        "train-fp32",
    ]
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(ge.RECORD_FILES) and ge.check_records(out) == []
    assert all((out / name).stat().st_size < ge.MAX_BYTES for name in files)
    assert "not GPU evidence" in result.stdout and "verdict: ok" in result.stdout

    selections = json.loads((out / "select.json").read_text())
    assert selections["torch"]["selected"] == "torch-2.13-cpu"
    assert json.loads((out / "doctor.json").read_text())["level"] == "full"
    for run in ge.TRAIN_RUNS:
        record = json.loads((out / f"train-{run.name}.json").read_text())
        metrics = record["metrics"]
        assert metrics["device"] == "cpu" and metrics["compile"] == ("--compile" in run.options)
        assert record["samples_per_s"] > 0 and record["achieved_tflops"] > 0
        assert record["share_of_bf16_matmul"] is None  # no GPU, no matmul figure
        # Checkpoints went to a temporary folder, which is gone.
        assert not Path(metrics["checkpoint"]).exists()
        assert run.name in result.stdout

    refused = run_script("--import", str(out), "--repo", str(tmp_path / "repo"))
    assert refused.returncode == 2 and "--allow-cpu" in refused.stderr
