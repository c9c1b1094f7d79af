"""How long the light commands take from invocation to exit (goal: probe and select under 0.15 s).

    python benchmarks/startup.py [--runs N]

Runs `cudabox probe`, `cudabox select` (on a recorded host profile) and `cudabox --help` N times
as fresh processes and prints the median wall time and the median CPU time (user + system, which
a busy machine does not inflate), and the interpreter's own start-up for comparison. Figures,
not a test.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST = ROOT / "tests" / "fixtures" / "hosts" / "h100.json"
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "cudabox probe": [sys.executable, "-m", "cudabox", "probe"],
    "cudabox probe --json": [sys.executable, "-m", "cudabox", "probe", "--json"],
    "cudabox select (h100 profile)": [
        sys.executable,
        "-m",
        "cudabox",
        "select",
        "--framework",
        "torch",
        "--host",
        str(HOST),
    ],
    "cudabox --help": [sys.executable, "-m", "cudabox", "--help"],
}


def measure(command: list[str], runs: int) -> tuple[float, float]:
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        walls.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    runs = parser.parse_args().runs
    # As installed: with bytecode (an environment with PYTHONDONTWRITEBYTECODE would otherwise
    # compile cudabox on every run).
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "toolkit")], check=True)
    print(f"{'command':34} {'wall (median)':>14} {'CPU (median)':>14}")
    for name, command in COMMANDS.items():
        wall, cpu = measure(command, runs)
        print(f"{name:34} {wall * 1000:11.0f} ms {cpu * 1000:11.0f} ms")
    print(
        f"{runs} runs each; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
        f"{sys.version.split()[0]}"
    )


if __name__ == "__main__":
    main()
