"""Container overhead and start-up stages of the smoke workload; prints figures, asserts nothing.

Runs `cudabox train FRAMEWORK` in its image and with `--here`, alternating, and reports
samples/s in the container over samples/s here (same seed, steps and framework version on both
sides: the host needs the image's framework release installed), and the time from invoking
`cudabox train` to the first step, split into container start, framework import, first step.

    python benchmarks/launch_overhead.py [--framework torch] [--rounds 3] [--steps 400] [--cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def run(framework: str, here: bool, steps: int, cpu: bool, out: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "cudabox", "train", framework, "--out", str(out)]
    command += ["--here"] if here else []
    command += ["--cpu"] if cpu else []
    command += ["--", "--steps", str(steps), "--quiet", "--seed", "0"]
    invoked = time.time()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    metrics: dict[str, Any] = json.loads((out / "metrics.json").read_text())
    metrics["invoked_unix"] = invoked
    return metrics


def stages(m: dict[str, Any]) -> dict[str, float]:
    start = m["start_unix"] - m["invoked_unix"]  # CLI, probe, engine, container, interpreter
    first = m["first_step_unix"] - m["start_unix"] - m["import_s"]
    return {
        "to_process_start_s": start,
        "framework_import_s": m["import_s"],
        "to_first_step_s": first,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--framework", default="torch", choices=("torch", "tensorflow"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--cpu", action="store_true", help="use the CPU image (and the CPU here)")
    args = parser.parse_args()
    results: dict[str, list[dict[str, Any]]] = {"container": [], "here": []}
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(args.rounds):
            for side in ("container", "here"):
                out = Path(tmp) / f"{side}-{n}"
                results[side].append(run(args.framework, side == "here", args.steps, args.cpu, out))
    rate = {side: statistics.median(m["samples_per_s"] for m in ms) for side, ms in results.items()}
    versions = {side: ms[0].get("framework_version") for side, ms in results.items()}
    print(f"framework versions: container {versions['container']}, here {versions['here']}")
    for side, ms in results.items():
        figures = ", ".join(f"{m['samples_per_s']:.0f}" for m in ms)
        print(f"{side:9s} samples/s per round: {figures} (median {rate[side]:.0f})")
    print(f"container / here samples/s: {rate['container'] / rate['here']:.3f}")
    for side, ms in results.items():
        parts = [stages(m) for m in ms]
        medians = {k: statistics.median(p[k] for p in parts) for k in parts[0]}
        print(
            f"{side:9s} start-up (median): " + ", ".join(f"{k} {v:.2f}" for k, v in medians.items())
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
