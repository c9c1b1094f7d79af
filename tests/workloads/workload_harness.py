"""Runs the real smoke workloads in subprocesses, on the CPU, and can stop them mid-run."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
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


# A torch run small enough for several processes on two shared cores, that still learns: the
# ranks' share of every 256-sample batch, a checkpoint every 25 steps, one math thread per rank
# (the same for every launcher, so that weights compare bitwise).
DIST = [
    "--steps",
    "100",
    "--width",
    "128",
    "--depth",
    "2",
    "--checkpoint-every",
    "25",
    "--log-every",
    "5",
    "--workers",
    "1",
    "--threads",
    "1",
]


def torchrun(nproc: int, rdzv: str | None = None, nnodes: int = 1) -> list[str]:
    """The launcher as users type it: standalone on one node, else c10d rendezvous at `rdzv`."""
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    if rdzv is None:
        return [*launcher, "--standalone"]
    return [
        *launcher,
        f"--nnodes={nnodes}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={rdzv}",
        "--rdzv-id=cudabox-test",
        "--max-restarts=0",
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (torchrun starts its ranks in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(proc: subprocess.Popen[str]) -> None:
    """SIGKILL a process and everything it started: a node lost with its ranks."""
    for pid in [*descendants(proc.pid), proc.pid]:
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.kill(pid, signal.SIGKILL)
    proc.wait()


@dataclass
class Workload:
    framework: str
    launcher: Sequence[str] = ()  # e.g. torchrun(2); empty: the module in this Python

    def command(self, args: Sequence[str]) -> list[str]:
        if self.launcher:
            return [*self.launcher, "-m", MODULES[self.framework], *args]
        return [sys.executable, "-m", MODULES[self.framework], *args]

    def start(
        self, out: Path, *args: str, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(["--out", str(out), *args]),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**subprocess_env(), **(env or {})},
            start_new_session=True,  # its own process group, as a job in a terminal
        )

    def run(
        self, out: Path, *args: str, timeout: float = 120, env: Mapping[str, str] | None = None
    ) -> Run:
        proc = self.start(out, *args, env=env)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        finally:
            if proc.poll() is None:
                kill_tree(proc)
        return Run(proc.returncode, stdout, stderr, out)

    def run_until(self, out: Path, step: int, signum: int, *args: str, group: bool = False) -> Run:
        """Start a run, send `signum` once its progress line for `step` appears, wait for it.

        group: signal the process group, as Ctrl-C at a terminal does. SIGKILL always takes the
        whole tree (torchrun's ranks too), as a lost node would.
        """
        proc = self.start(out, *args)
        seen: list[str] = []
        try:
            assert proc.stderr is not None
            for line in proc.stderr:
                seen.append(line)
                match = STEP_LINE.match(line)
                if match and int(match.group(1)) >= step:
                    if signum == signal.SIGKILL:
                        kill_tree(proc)
                    elif group:
                        os.killpg(proc.pid, signum)
                    else:
                        proc.send_signal(signum)
                    break
            else:
                pytest.fail(f"the run ended before step {step}:\n{''.join(seen)}")
            stdout, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                kill_tree(proc)
        return Run(proc.returncode, stdout, "".join(seen) + stderr, out)


def no_traceback(run: Run) -> bool:
    return "Traceback" not in run.stderr and "Traceback" not in run.stdout
