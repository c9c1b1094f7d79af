"""Runs the real smoke workloads in subprocesses, on the CPU, and can stop them mid-run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = {"torch": "cudabox.workloads.torch_smoke", "tensorflow": "cudabox.workloads.tf_smoke"}
STEP_LINE = re.compile(r"^step\s+(\d+)/")
# Small, fast runs that still learn: 200 steps of a narrower model, a checkpoint every 50, a
# progress line every 10.
FAST = [
    "--steps",
    "200",
    "--width",
    "128",
    "--depth",
    "2",
    "--checkpoint-every",
    "50",
    "--log-every",
    "10",
]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    # The toolkit from this checkout, whatever the interpreter; no GPU, so runs are CPU runs
    # (deterministic) even on a GPU host.
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT / "toolkit"), env.get("PYTHONPATH")])
    )
    env["CUDA_VISIBLE_DEVICES"] = ""
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return env


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    out: Path

    @property
    def metrics(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.out / "metrics.json").read_text())
        return data


@dataclass
class Workload:
    framework: str

    def command(self, args: Sequence[str]) -> list[str]:
        return [sys.executable, "-m", MODULES[self.framework], *args]

    def run(self, out: Path, *args: str, timeout: float = 120) -> Run:
        proc = subprocess.run(
            self.command(["--out", str(out), *args]),
            capture_output=True,
            text=True,
            env=subprocess_env(),
            timeout=timeout,
            check=False,
        )
        return Run(proc.returncode, proc.stdout, proc.stderr, out)

    def run_until(self, out: Path, step: int, signum: int, *args: str) -> Run:
        """Start a run, send `signum` once its progress line for `step` appears, wait for it."""
        proc = subprocess.Popen(
            self.command(["--out", str(out), *args]),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=subprocess_env(),
        )
        seen: list[str] = []
        try:
            assert proc.stderr is not None
            for line in proc.stderr:
                seen.append(line)
                match = STEP_LINE.match(line)
                if match and int(match.group(1)) >= step:
                    proc.send_signal(signum)
                    break
            else:
                pytest.fail(f"the run ended before step {step}:\n{''.join(seen)}")
            stdout, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return Run(proc.returncode, stdout, "".join(seen) + stderr, out)


def no_traceback(run: Run) -> bool:
    return "Traceback" not in run.stderr and "Traceback" not in run.stdout
