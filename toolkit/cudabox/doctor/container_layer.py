"""Layer 3, the container: the image starts with GPUs, sees the host's GPUs, and its
NVIDIA_REQUIRE_CUDA is met. Also runs the in-image script (layers 4 and 5) for the runner.

The engine is reached through `cudabox.container.ContainerEngine`; tests pass stubs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from importlib import resources
from typing import Any

from cudabox.compat import load_compat
from cudabox.container import GPU_PASSTHROUGH_FIX, ContainerEngine, ImageInfo
from cudabox.doctor.gpu_checks import MARKER
from cudabox.doctor.model import Check, check
from cudabox.errors import CudaboxError
from cudabox.host import HostProfile
from cudabox.images.catalog import ImageSpec
from cudabox.versions import CudaVersion

LAYER = "container"
SCRIPT = "gpu_checks.py"
SCRIPT_DIR = "/tmp/cudabox"  # where Engine.run copies `files` by default
_REQUIRE = re.compile(r"cuda>=(\d+\.\d+)")


def script_bytes() -> bytes:
    return resources.files("cudabox.doctor").joinpath(SCRIPT).read_bytes()


def script_command(*args: str) -> list[str]:
    return ["python", f"{SCRIPT_DIR}/{SCRIPT}", *args]


def parse_result(output: str) -> dict[str, Any] | None:
    for line in reversed(output.splitlines()):
        if line.startswith(MARKER):
            data = json.loads(line[len(MARKER) :])
            return data if isinstance(data, dict) else None
    return None


def image_check(spec: ImageSpec, facts: ImageInfo | None) -> Check:
    if facts is None:
        return check(
            "container.image",
            LAYER,
            "fail",
            f"image {spec.tag} is not built",
            fix=f"cudabox build {spec.name}",
        )
    return check("container.image", LAYER, "pass", f"{spec.tag} is here", spec.tag)


def require_cuda_check(spec: ImageSpec, facts: ImageInfo, host: HostProfile) -> Check:
    cid = "container.require_cuda"
    if not spec.is_cuda:
        return check(cid, LAYER, "skip", "a CPU image needs no driver")
    declared = facts.env.get("NVIDIA_REQUIRE_CUDA") or facts.labels.get("com.nvidia.cuda.require")
    match = _REQUIRE.search(declared or "")
    if match is None:
        wanted = spec.cuda
        source = "the catalog (the image does not declare NVIDIA_REQUIRE_CUDA)"
    else:
        wanted = CudaVersion.parse(match[1])
        source = f"NVIDIA_REQUIRE_CUDA={declared}"
    assert wanted is not None
    have = host.driver_cuda
    if have is None:
        return check(
            cid, LAYER, "skip", f"no GPU driver on this host; the image needs CUDA >= {wanted}"
        )
    if have >= wanted:
        return check(
            cid,
            LAYER,
            "pass",
            f"driver CUDA {have} meets cuda>={wanted} ({source})",
            str(have),
            f">={wanted}",
        )
    floor = load_compat().minor_version_floor(wanted.major)
    return check(
        cid,
        LAYER,
        "fail",
        f"the driver supports CUDA {have}; the image requires cuda>={wanted} ({source}): the NVIDIA "
        "Container Toolkit refuses to start it",
        str(have),
        f">={wanted}",
        fix=f"upgrade the NVIDIA driver to >= {floor}, or pick an image with `cudabox select`"
        if floor
        else "upgrade the NVIDIA driver, or pick an image with `cudabox select`",
    )


def gpus_check(
    engine: ContainerEngine, spec: ImageSpec, host: HostProfile, timeout: float
) -> Check:
    """Start the image with every GPU and compare the UUIDs NVML shows inside with the host's."""
    cid = "container.gpus"
    host_uuids = sorted(g.uuid for g in host.gpus if g.uuid)
    if not host.gpus:
        return check(cid, LAYER, "skip", "no GPU on this host")
    try:
        outcome = engine.run(
            spec.tag,
            script_command("--nvml-uuids"),
            timeout=timeout,
            files={SCRIPT: script_bytes()},
            gpus=True,
        )
    except CudaboxError as exc:
        return check(
            cid,
            LAYER,
            "fail",
            f"the container did not start with GPUs: {exc.message}",
            fix=exc.fix or _ENGINE_FIX,
        )
    result = parse_result(outcome.output)
    if result is None or outcome.exit_code != 0:
        tail = outcome.output.strip().splitlines()[-1:] or ["no output"]
        return check(
            cid,
            LAYER,
            "fail",
            f"the container's GPU listing failed: {tail[0]}",
            fix=GPU_PASSTHROUGH_FIX,
        )
    if "error" in result:
        return check(cid, LAYER, "fail", str(result["error"]), fix=GPU_PASSTHROUGH_FIX)
    inside = sorted(str(u) for u in result.get("uuids") or [] if u)
    missing = [u for u in host_uuids if u not in inside]
    value = f"{len(inside)} of {len(host_uuids)}"
    if missing:
        return check(
            cid,
            LAYER,
            "fail",
            f"the container sees {value} host GPUs; missing {', '.join(missing)}",
            value,
            f"{len(host_uuids)} of {len(host_uuids)}",
            fix="check NVIDIA_VISIBLE_DEVICES in the image and the engine's device requests; "
            "regenerate a stale CDI spec (engine.cdi_spec)",
        )
    return check(
        cid,
        LAYER,
        "pass",
        f"the container sees the host's {len(inside)} GPU(s), UUIDs equal",
        value,
        value,
    )


_ENGINE_FIX = (
    "see engine.gpu_runtime and engine.cdi_spec; `docker run --rm --gpus all IMAGE nvidia-smi` "
    "shows the engine's own error"
)


def run_script(
    engine: ContainerEngine, spec: ImageSpec, args: Sequence[str], gpus: bool, timeout: float
) -> tuple[dict[str, Any] | None, str]:
    """Run gpu_checks.py in the image; (its result, or None with the reason)."""
    try:
        outcome = engine.run(
            spec.tag,
            script_command(*args),
            timeout=timeout,
            files={SCRIPT: script_bytes()},
            gpus=gpus,
        )
    except CudaboxError as exc:
        return None, exc.message
    if outcome.timed_out:
        return None, f"the in-image checks ran past {timeout:.0f} s"
    try:
        result = parse_result(outcome.output)
    except ValueError as exc:
        return None, f"the in-image checks printed a broken result: {exc}"
    if result is None:
        tail = " | ".join(outcome.output.strip().splitlines()[-3:]) or "no output"
        return None, f"the in-image checks exited {outcome.exit_code} without a result: {tail}"
    return result, ""
