"""The examples, run as people run them: main.py trains and saves, test.py checks it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from workload_harness import ROOT, subprocess_env

pytestmark = pytest.mark.slow


def run(script: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_example_learns_the_true_weights(framework: str, tmp_path: Path) -> None:
    pytest.importorskip(framework)
    folder = ROOT / "examples" / framework

    trained = run(folder / "main.py", tmp_path)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert "device: " in trained.stdout and "samples/s" in trained.stdout
    assert "CPU" in trained.stdout  # the environment hides every GPU

    checked = run(folder / "test.py", tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "passed" in checked.stdout


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_example_check_fails_on_untrained_weights(framework: str, tmp_path: Path) -> None:
    pytest.importorskip(framework)
    folder = ROOT / "examples" / framework

    assert run(folder / "test.py", tmp_path).returncode == 1  # nothing trained yet
    untrained = run(folder / "main.py", tmp_path, "--epochs", "0")
    assert untrained.returncode == 0, untrained.stdout + untrained.stderr

    checked = run(folder / "test.py", tmp_path)
    assert checked.returncode == 1
    assert "not close to the true ones" in checked.stderr
