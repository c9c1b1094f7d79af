"""Layer 2, the container engine: reachable, its version, and whether it can pass GPUs.

The engine is reached through a narrow protocol (`EngineFacts`) that cudabox.engine's `Engine`
satisfies through `EngineAdapter`; tests pass a real engine or a stub.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cudabox.doctor.cdi import NVIDIA_KIND, CdiSpec
from cudabox.doctor.model import Check, check
from cudabox.host import HostProfile

LAYER = "engine"
HOOK = "nvidia-container-runtime-hook"  # Docker registers its "nvidia" GPU driver when this exists
TOOLKIT_FIX = (
    "install the NVIDIA Container Toolkit (https://docs.nvidia.com/datacenter/cloud-native/"
    "container-toolkit/latest/install-guide.html), then `sudo nvidia-ctk runtime configure "
    "--runtime=docker` and restart the engine; for Podman or CDI: `sudo nvidia-ctk cdi generate "
    "--output=/etc/cdi/nvidia.yaml`"
)


class EngineFacts(Protocol):
    """What the engine layer asks the engine: `docker version` and `docker info`, as dicts."""

    def version(self) -> Mapping[str, Any]: ...

    def info(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class EngineView:
    """The engine's answers plus what this machine's filesystem says (for a local engine)."""

    version: Mapping[str, Any]
    info: Mapping[str, Any]
    local: bool  # DOCKER_HOST unset or a unix socket: the daemon shares our filesystem
    hook_found: bool
    cdi_specs: tuple[CdiSpec, ...]

    @property
    def name(self) -> str:
        platform = str((self.version.get("Platform") or {}).get("Name") or "")
        return "Podman" if "podman" in platform.lower() else "Docker"

    @property
    def engine_version(self) -> str:
        return str(self.version.get("Version") or "unknown")

    @property
    def runtimes(self) -> tuple[str, ...]:
        return tuple(sorted((self.info.get("Runtimes") or {}).keys()))

    @property
    def nvidia_specs(self) -> tuple[CdiSpec, ...]:
        return tuple(s for s in self.cdi_specs if s.is_nvidia_gpu)

    @property
    def cdi_supported(self) -> bool:
        # Podman always reads CDI; Docker (>= 25) lists the folders it reads as CDISpecDirs.
        return self.name == "Podman" or bool(self.info.get("CDISpecDirs"))


def is_local_engine(env: Mapping[str, str] | None = None) -> bool:
    host = (os.environ if env is None else env).get("DOCKER_HOST", "")
    return host == "" or host.startswith("unix://")


def gather(
    engine: EngineFacts, cdi_specs: Sequence[CdiSpec], env: Mapping[str, str] | None = None
) -> EngineView:
    local = is_local_engine(env)
    return EngineView(
        version=engine.version(),
        info=engine.info(),
        local=local,
        hook_found=local and shutil.which(HOOK) is not None,
        cdi_specs=tuple(cdi_specs) if local else (),
    )


def unreachable(message: str, fix: str | None) -> Check:
    return check("engine.reachable", LAYER, "fail", message, fix=fix)


def engine_checks(view: EngineView, host: HostProfile) -> list[Check]:
    return [_reachable(view), _gpu_runtime(view, host), _cdi_spec(view, host)]


def _reachable(view: EngineView) -> Check:
    api = view.version.get("ApiVersion")
    return check(
        "engine.reachable",
        LAYER,
        "pass",
        f"{view.name} {view.engine_version} answers (API {api or '?'})",
        f"{view.name} {view.engine_version}",
    )


def _gpu_runtime(view: EngineView, host: HostProfile) -> Check:
    cid = "engine.gpu_runtime"
    ways = []
    if "nvidia" in view.runtimes:
        ways.append("nvidia runtime")
    if view.hook_found:
        ways.append(HOOK)
    specs = view.nvidia_specs
    if specs and view.cdi_supported:
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
        else f"; CDI specs exist but {view.name} {view.engine_version} does not read CDI"
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
            fix=TOOLKIT_FIX,
        )
    return check(
        cid,
        LAYER,
        "fail",
        f"the engine cannot pass GPUs into containers: {why}",
        "none",
        "nvidia runtime or CDI",
        fix=TOOLKIT_FIX,
    )


def _cdi_spec(view: EngineView, host: HostProfile) -> Check:
    cid = "engine.cdi_spec"
    specs = view.nvidia_specs
    if not view.local:
        return check(cid, LAYER, "skip", "remote engine: its CDI specs are not readable from here")
    if not specs:
        return check(cid, LAYER, "skip", f"no {NVIDIA_KIND} CDI spec in /etc/cdi or /var/run/cdi")
    driver = host.driver_version
    if driver is None:
        return check(
            cid, LAYER, "warn",
            f"{specs[0].path} describes NVIDIA GPUs but this host has no working driver",
            fix="remove the spec, or install the driver and regenerate it: "
            f"`sudo nvidia-ctk cdi generate --output={specs[0].path}`",
        )  # fmt: skip
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


class EngineAdapter:
    """EngineFacts over cudabox.engine.Engine."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def version(self) -> Mapping[str, Any]:
        return dict(self.engine.version())

    def info(self) -> Mapping[str, Any]:
        return dict(self.engine.info())
