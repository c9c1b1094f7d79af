"""Layer 2, the container engine: reachable, its version, and whether it can pass GPUs.

Judged from the engine's `EngineDescription` (cudabox.container), read once on connect; tests
build descriptions from recorded answers.
"""

from __future__ import annotations

from cudabox.cdi import NVIDIA_KIND
from cudabox.container import GPU_PASSTHROUGH_FIX, EngineDescription
from cudabox.doctor.model import Check, check
from cudabox.host import HostProfile

LAYER = "engine"
HOOK = "nvidia-container-runtime-hook"


def unreachable(message: str, fix: str | None) -> Check:
    return check("engine.reachable", LAYER, "fail", message, fix=fix)


def engine_checks(view: EngineDescription, host: HostProfile) -> list[Check]:
    return [_reachable(view), _gpu_runtime(view, host), _cdi_spec(view, host)]


def _reachable(view: EngineDescription) -> Check:
    api = view.api_version
    return check(
        "engine.reachable",
        LAYER,
        "pass",
        f"{view.name} {view.version} answers (API {api or '?'})",
        f"{view.name} {view.version}",
    )


def _gpu_runtime(view: EngineDescription, host: HostProfile) -> Check:
    cid = "engine.gpu_runtime"
    ways = []
    if "nvidia" in view.runtimes:
        ways.append("nvidia runtime")
    if view.nvidia_hook:
        ways.append(HOOK)
    specs = view.nvidia_cdi_specs
    if specs and view.reads_cdi:
        count = sum(len(s.devices) for s in specs)
        ways.append(f"CDI ({count} {NVIDIA_KIND} devices)")
    runtimes = ", ".join(view.runtimes) or "none"
    if ways:
        return check(
            cid, LAYER, "pass", f"GPUs can be passed through: {', '.join(ways)}", ", ".join(ways)
        )
    why = f"no NVIDIA runtime (runtimes: {runtimes}), no {HOOK}"
    why += (
        ", no NVIDIA CDI spec"
        if not specs
        else f"; CDI specs exist but {view.name} {view.version} does not read CDI"
    )
    if not view.local:
        why += " (a remote engine: its filesystem was not checked)"
    if not host.visible_gpus:
        return check(
            cid,
            LAYER,
            "skip",
            f"no GPU on this host, so nothing to pass; the engine could not pass one either: {why}",
            "none",
            fix=GPU_PASSTHROUGH_FIX,
        )
    return check(
        cid,
        LAYER,
        "fail",
        f"the engine cannot pass GPUs into containers: {why}",
        "none",
        "nvidia runtime or CDI",
        fix=GPU_PASSTHROUGH_FIX,
    )


def _cdi_spec(view: EngineDescription, host: HostProfile) -> Check:
    cid = "engine.cdi_spec"
    specs = view.nvidia_cdi_specs
    if not view.local:
        return check(cid, LAYER, "skip", "remote engine: its CDI specs are not readable from here")
    if not specs:
        return check(cid, LAYER, "skip", f"no {NVIDIA_KIND} CDI spec in /etc/cdi or /var/run/cdi")
    driver = host.driver_version
    if driver is None:
        return check(
            cid,
            LAYER,
            "warn",
            f"{specs[0].path} describes NVIDIA GPUs but this host has no working driver",
            fix="remove the spec, or install the driver and regenerate it: "
            f"`sudo nvidia-ctk cdi generate --output={specs[0].path}`",
        )
    host_uuids = {g.uuid for g in host.gpus if g.uuid}
    for spec in specs:
        regenerate = f"`sudo nvidia-ctk cdi generate --output={spec.path}` (the driver changed since it was written)"
        stale = [v for v in spec.driver_versions if v != driver]
        if stale:
            return check(
                cid,
                LAYER,
                "fail",
                f"{spec.path} was generated for driver {', '.join(stale)} but driver {driver} runs: "
                "containers would mount libraries that no longer exist",
                ", ".join(spec.driver_versions),
                driver,
                fix=f"regenerate it: {regenerate}",
            )
        gone = [d for d in spec.devices if d.startswith("GPU-") and d not in host_uuids]
        if gone and host_uuids:
            return check(
                cid,
                LAYER,
                "fail",
                f"{spec.path} names GPUs this host no longer has ({gone[0]}...)",
                len(gone),
                0,
                unit="GPUs",
                fix=f"regenerate it: `sudo nvidia-ctk cdi generate --output={spec.path}`",
            )
    names = ", ".join(str(s.path) for s in specs)
    return check(cid, LAYER, "pass", f"{names} match driver {driver}", driver, driver)
