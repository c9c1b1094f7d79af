"""Layer 6, training: the framework's smoke workload for a short run must learn."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cudabox.container import ContainerEngine
from cudabox.doctor.model import Check, check
from cudabox.errors import CudaboxError
from cudabox.images.catalog import ImageSpec
from cudabox.workloads import module_for

LAYER = "training"
CID = "training.smoke"
METRICS_MARKER = "CUDABOX_DOCTOR_METRICS"


def smoke_args(out: str, metrics: str) -> list[str]:
    # The workload's default length: its learning thresholds are set for it.
    return ["--out", out, "--metrics", metrics, "--quiet"]


def judge(
    exit_code: int | None, metrics: Mapping[str, Any] | None, output: str, where: str
) -> Check:
    tail = " | ".join(output.strip().splitlines()[-3:]) or "no output"
    if metrics is None:
        return check(
            CID,
            LAYER,
            "fail",
            f"the smoke workload ({where}) exited {exit_code} without metrics: {tail}",
            fix="run it by hand to see the error: `python -m cudabox.workloads.torch_smoke`",
        )
    loss = metrics.get("final_loss")
    rate = metrics.get("samples_per_s")
    device = f"{metrics.get('device_name', '?')}, {metrics.get('precision', '?')}"
    speed = f", {rate:,.0f} samples/s" if isinstance(rate, int | float) else ""
    value = round(float(loss), 4) if isinstance(loss, int | float) else None
    expected = (metrics.get("thresholds") or {}).get("max_loss")
    if exit_code == 0 and metrics.get("passed"):
        return check(
            CID,
            LAYER,
            "pass",
            f"learned on {device} ({where}): held-out loss {value}{speed}",
            value,
            f"<{expected}",
            unit="loss",
        )
    return check(
        CID,
        LAYER,
        "fail",
        f"did not learn on {device} ({where}): held-out loss {value}{speed}; {tail}",
        value,
        f"<{expected}",
        unit="loss",
        fix="a setup that computes but does not learn points at wrong arithmetic: see the framework.matmul "
        "checks and host.ecc",
    )


def train_here(framework: str, timeout: float) -> Check:
    with tempfile.TemporaryDirectory(prefix="cudabox-doctor-") as tmp:
        metrics_path = Path(tmp) / "metrics.json"
        command = [sys.executable, "-m", module_for(framework), *smoke_args(tmp, str(metrics_path))]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            return check(
                CID,
                LAYER,
                "fail",
                f"the smoke workload ran past {timeout:.0f} s",
                fix="run it by hand to see where it stalls",
            )
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
        return judge(done.returncode, metrics, done.stdout + done.stderr, "here")


def train_in_image(engine: ContainerEngine, spec: ImageSpec, gpus: bool, timeout: float) -> Check:
    module = module_for(spec.framework)
    out = "/tmp/cudabox-smoke"
    args = " ".join(smoke_args(out, f"{out}/metrics.json"))
    script = (
        f"python -m {module} {args}; rc=$?; echo; echo {METRICS_MARKER}; "
        f"cat {out}/metrics.json 2>/dev/null; echo; exit $rc"
    )
    try:
        outcome = engine.run(spec.tag, ["sh", "-c", script], timeout=timeout, gpus=gpus)
    except CudaboxError as exc:
        return check(
            CID, LAYER, "fail", f"the smoke workload did not start: {exc.message}", fix=exc.fix
        )
    metrics = None
    text = outcome.output
    if METRICS_MARKER in text:
        body = text.rsplit(METRICS_MARKER, 1)[1].strip()
        try:
            metrics = json.loads(body) if body else None
        except ValueError:
            metrics = None
    where = f"in {spec.name}"
    if outcome.timed_out:
        return check(
            CID,
            LAYER,
            "fail",
            f"the smoke workload ran past {timeout:.0f} s {where}",
            fix="run it by hand: `cudabox run -- python -m cudabox.workloads.torch_smoke`",
        )
    return judge(outcome.exit_code, metrics, text.split(METRICS_MARKER)[0], where)
