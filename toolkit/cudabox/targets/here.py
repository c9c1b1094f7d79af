"""The here target: this Python, without a container (`cudabox train --here`)."""

from __future__ import annotations

import importlib.util
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from cudabox.choice import require_visible_gpu
from cudabox.errors import Unavailable
from cudabox.host import HostProfile
from cudabox.launch import launched_command
from cudabox.output import progress
from cudabox.targets import Job, Outcome, TargetName

PACKAGES = {"torch": "torch", "tensorflow": "tensorflow"}  # the framework's import name


@dataclass(frozen=True)
class HereTarget:
    host: HostProfile | None = None  # this host's probe; needed only when a GPU is required

    @property
    def name(self) -> TargetName:
        return "here"

    def out_dir(self, out: Path) -> str:
        return str(out)

    def run(self, job: Job) -> Outcome:
        if job.require_gpu:
            if self.host is None:
                raise ValueError("HereTarget needs this host's profile to require a GPU")
            require_visible_gpu(job.framework, self.host, here=True)
        package = PACKAGES[job.framework]
        if importlib.util.find_spec(package) is None:
            raise Unavailable(
                f"{package} is not installed in this Python ({sys.executable})",
                f"install it here, or drop --here to train in the {job.framework} image",
            )
        command = launched_command(job.program, job.launch)
        if command[0] == "torchrun":
            command = [sys.executable, "-m", "torch.distributed.run", *command[1:]]
        else:
            command[0] = sys.executable
        why = f"this Python ({sys.executable})"
        if job.launch.dry_run:
            print(shlex.join(command))
            return Outcome(None, "here", why)
        progress(f"cudabox: training here: {shlex.join(command)}")
        return Outcome(_run(command, job.to_stderr), "here", why)


def _run(command: list[str], to_stderr: bool) -> int:
    """Run `command`, passing SIGTERM and SIGHUP on; its exit code."""
    process = subprocess.Popen(command, stdout=sys.stderr if to_stderr else None)

    def stop(signum: int, _frame: FrameType | None) -> None:
        # SIGTERM/SIGHUP reach only us: pass them on so the workload checkpoints and stops.
        process.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        try:
            return process.wait()
        except KeyboardInterrupt:
            # The child got the same Ctrl-C from the terminal; let it save and stop.
            return process.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
