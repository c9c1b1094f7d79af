"""`cudabox run` / `cudabox train` against the real engine, in the real CPU images.

Every container these tests start carries the label cudabox.test=RUN_ID (a value of this module's
own: other tests and sessions run containers labelled cudabox.test too, and are neither counted
nor killed here); the docker_engine fixture fails the session if one is left behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
RUN_ID = uuid.uuid4().hex[:12]
LABEL = ["--label", f"cudabox.test={RUN_ID}"]


def cudabox(*args: str, cwd: Path = ROOT, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cudabox", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        check=False,
    )


def managed(engine: Any) -> list[str]:
    """This module's containers (no other test's or session's)."""
    found = engine.containers.list(all=True, filters={"label": f"cudabox.test={RUN_ID}"})
    return [c.name for c in found]


@pytest.fixture(scope="module")
def torch_cpu(catalog_image: Any) -> str:
    return str(catalog_image("torch-2.13-cpu"))


@pytest.fixture(scope="module")
def tf_cpu(catalog_image: Any) -> str:
    return str(catalog_image("tf-2.21-cpu"))


def test_run_streams_output_returns_the_exit_code_and_maps_the_caller(
    torch_cpu: str, tmp_path: Path, docker_engine: Any
) -> None:
    script = "import os; print('inside', os.getcwd()); open('made.txt', 'w').write('x'); raise SystemExit(7)"
    result = cudabox(
        "run", "--image", "torch-2.13-cpu", *LABEL, "--", "python", "-c", script, cwd=tmp_path
    )
    assert result.returncode == 7, result.stderr
    assert "inside /workspace" in result.stdout
    made = tmp_path / "made.txt"
    assert made.read_text() == "x"
    assert (made.stat().st_uid, made.stat().st_gid) == (os.getuid(), os.getgid())
    assert managed(docker_engine) == []


def test_shared_memory_is_large_enough_for_loader_workers(torch_cpu: str, tmp_path: Path) -> None:
    script = "import os; s = os.statvfs('/dev/shm'); print(s.f_blocks * s.f_frsize)"
    result = cudabox("run", "--cpu", *LABEL, "--", "python", "-c", script, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[-1]) >= 4 * 1024**3


def test_an_engine_without_gpu_support_says_so_and_how_to_fix_it(
    torch_cpu: str, tmp_path: Path, docker_engine: Any
) -> None:
    runtimes = docker_engine.info().get("Runtimes", {})
    if "nvidia" in runtimes:
        pytest.skip("this engine has the NVIDIA runtime; the refusal path needs one without")
    result = cudabox(
        "run", "--image", "torch-2.13-cpu", "--gpus", "all", *LABEL, "--", "true", cwd=tmp_path
    )
    assert result.returncode == 4
    assert "cannot pass GPUs to containers" in result.stderr
    assert "could not select device driver" in result.stderr
    assert "nvidia-ctk runtime configure" in result.stderr
    assert "Traceback" not in result.stderr
    assert managed(docker_engine) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_reach_the_command_and_the_container_is_removed(
    torch_cpu: str, tmp_path: Path, docker_engine: Any, signum: signal.Signals
) -> None:
    script = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: (print('got TERM', flush=True), sys.exit(43)))\n"
        "signal.signal(signal.SIGINT, lambda *a: (print('got INT', flush=True), sys.exit(42)))\n"
        "print('ready', flush=True)\n"
        "time.sleep(120)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "cudabox", "run", "--cpu", *LABEL, "--", "python", "-c", script],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    assert len(managed(docker_engine)) == 1
    process.send_signal(signum)
    code = process.wait(timeout=60)
    output = process.stdout.read()
    expected = {signal.SIGTERM: (43, "got TERM"), signal.SIGINT: (42, "got INT")}[signum]
    assert (code, expected[1] in output) == (expected[0], True)
    assert managed(docker_engine) == []


def test_killing_the_launcher_outright_leaves_no_container(
    torch_cpu: str, tmp_path: Path, docker_engine: Any
) -> None:
    # SIGKILL gives the launcher no chance to clean up: the engine removes the container itself
    # once the command ends (auto-remove), so nothing is left behind.
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cudabox",
            "run",
            "--cpu",
            *LABEL,
            "--",
            "python",
            "-c",
            "print('ready', flush=True); import time; time.sleep(5)",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    process.kill()
    process.wait(timeout=30)
    deadline = time.monotonic() + 60
    while managed(docker_engine) and time.monotonic() < deadline:
        time.sleep(1)
    assert managed(docker_engine) == []


def _train(
    framework: str, out: Path, *workload: str, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    return cudabox(
        "train",
        framework,
        "--cpu",
        "--json",
        *LABEL,
        "--out",
        str(out),
        "--",
        *workload,
        timeout=timeout,
    )


def test_train_torch_cpu_end_to_end(torch_cpu: str, tmp_path: Path) -> None:
    result = _train("torch", tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert summary["passed"] and summary["image"] == "torch-2.13-cpu"
    assert summary["samples_per_s"] > 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["framework_version"] == "2.13.0+cpu"


def test_train_tf_cpu_end_to_end(tf_cpu: str, tmp_path: Path) -> None:
    result = _train("tensorflow", tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert summary["passed"] and summary["image"] == "tf-2.21-cpu"


def test_a_killed_container_resumes_to_the_same_weights(
    torch_cpu: str, tmp_path: Path, docker_engine: Any
) -> None:
    steps = ["--steps", "240", "--checkpoint-every", "40", "--workers", "2"]
    straight = _train("torch", tmp_path / "straight", *steps)
    assert straight.returncode == 0, straight.stderr[-2000:]

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cudabox",
            "train",
            "torch",
            "--cpu",
            *LABEL,
            "--out",
            str(killed),
            "--",
            *steps,
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not any(killed.glob("*.pt")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert any(killed.glob("*.pt")), "no checkpoint appeared"
    # Kill the container itself, hard, the way an OOM killer or a node failure would.
    for container in docker_engine.containers.list(filters={"label": f"cudabox.test={RUN_ID}"}):
        container.kill(signal="SIGKILL")
    process.wait(timeout=120)
    first = (
        json.loads((killed / "metrics.json").read_text())
        if (killed / "metrics.json").exists()
        else {}
    )
    assert first.get("steps") != 240, "the run finished before it was killed; nothing was tested"

    resumed = _train("torch", killed, *steps, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    assert b["resumed"] and b["start_step"] > 0
    assert a["weights_sha256"] == b["weights_sha256"]
    assert managed(docker_engine) == []


@pytest.mark.parametrize(
    ("image", "folder"), [("torch-2.13-cpu", "torch"), ("tf-2.21-cpu", "tensorflow")]
)
def test_examples_run_unchanged_in_their_containers(
    catalog_image: Any, image: str, folder: str, tmp_path: Path
) -> None:
    catalog_image(image)
    work = tmp_path / "repo"
    (work / "examples").mkdir(parents=True)
    import shutil

    shutil.copytree(ROOT / "examples" / folder, work / "examples" / folder)
    command = f"python examples/{folder}/main.py && python examples/{folder}/test.py"
    result = cudabox("run", "--image", image, *LABEL, "--", "sh", "-c", command, cwd=work)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "cpu" in result.stdout.lower()
