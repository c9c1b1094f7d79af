"""Container engines as typed values, without the Docker SDK.

`cudabox.engine` (the only module that imports the SDK) reads the engine once into an
`EngineDescription` and implements `ContainerEngine`; everything else (launch, doctor, build)
works with these types, and tests pass stubs that implement the same protocol.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from cudabox.cdi import NVIDIA_KIND, CdiSpec
from cudabox.errors import EngineError, Unavailable

EngineKind = Literal["docker", "podman"]

# Every container cudabox starts carries this label, so leftovers can be found and removed.
MANAGED_LABEL = "cudabox.managed"

GPU_PASSTHROUGH_FIX = (
    "install the NVIDIA Container Toolkit (https://docs.nvidia.com/datacenter/cloud-native/"
    "container-toolkit/latest/install-guide.html) and register it with the engine (`sudo nvidia-ctk "
    "runtime configure --runtime=docker`, then restart the engine), or generate a CDI spec (`sudo "
    "nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`); or run on the CPU with --cpu"
)
CDI_REGENERATE_FIX = (
    "regenerate the spec after a driver change: "
    "`sudo nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`"
)

_NO_GPU_RUNTIME = re.compile(
    r"could not select device driver|unknown or invalid runtime name: nvidia"
)
_CDI_UNRESOLVED = re.compile(r"unresolvable CDI devices|CDI device injection failed")
_DRIVER_TOO_OLD = re.compile(r"unsatisfied condition: cuda")


def gpu_refusal(text: str) -> Unavailable | None:
    """The engine's answer to a GPU request it cannot serve, as a diagnosis with its fix.

    The one place that reads these answers: launch, build units and the doctor all go through it.
    """
    if _NO_GPU_RUNTIME.search(text):
        return Unavailable(
            f"the container engine cannot pass GPUs to containers: {text.strip()}",
            GPU_PASSTHROUGH_FIX,
        )
    if _CDI_UNRESOLVED.search(text):
        return Unavailable(
            f"the engine's CDI specs do not provide the GPUs asked for: {text.strip()}",
            CDI_REGENERATE_FIX,
        )
    if _DRIVER_TOO_OLD.search(text):
        return Unavailable(
            f"the NVIDIA Container Toolkit refused the image: the driver is too old for its CUDA "
            f"({text.strip()})",
            "upgrade the NVIDIA driver, or pick an image this driver runs with `cudabox select`",
        )
    return None


# runc names the limit it could not set by its Linux RLIMIT_* number.
_RLIMIT_REFUSED = re.compile(r"error setting rlimit type (\d+)")
_RLIMIT_NAMES = (
    "cpu",
    "fsize",
    "data",
    "stack",
    "core",
    "rss",
    "nproc",
    "nofile",
    "memlock",
    "as",
    "locks",
    "sigpending",
    "msgqueue",
    "nice",
    "rtprio",
    "rttime",
)


def rlimit_refusal(text: str) -> EngineError | None:
    """The engine's answer to a --ulimit it may not set (above its own hard limit, without
    CAP_SYS_RESOURCE), naming the limit and how to ask for one it can grant."""
    found = _RLIMIT_REFUSED.search(text)
    if found is None:
        return None
    number = int(found[1])
    name = _RLIMIT_NAMES[number] if number < len(_RLIMIT_NAMES) else f"number {number}"
    return EngineError(
        f"the engine may not set the container's {name} limit that was asked for (it is above "
        f"the engine's own hard limit, and the engine cannot raise it): {text.strip()}",
        f"ask for a {name} limit the engine can grant: --ulimit {name}=N:N with N at most the "
        "engine's own hard limit (`ulimit -H -a` where it runs), which replaces cudabox's default; "
        "or let the engine raise limits (CAP_SYS_RESOURCE, or a higher Limit* in its systemd unit)",
    )


@dataclass(frozen=True)
class EngineDescription:
    """What the engine is and what it can do, read once when cudabox connects."""

    kind: EngineKind
    version: str
    api_version: str
    os: str = ""
    arch: str = ""
    runtimes: tuple[str, ...] = ()
    cdi_spec_dirs: tuple[str, ...] = ()
    # CDI specs found in those folders; only read when the engine shares our filesystem.
    cdi_specs: tuple[CdiSpec, ...] = ()
    local: bool = True  # DOCKER_HOST unset or a unix socket
    nvidia_hook: bool = False  # nvidia-container-runtime-hook on PATH (a local engine's GPU path)

    @classmethod
    def from_answers(
        cls,
        version: Mapping[str, Any],
        info: Mapping[str, Any],
        *,
        local: bool = True,
        nvidia_hook: bool = False,
        cdi_specs: Sequence[CdiSpec] = (),
    ) -> EngineDescription:
        """Parse the engine's `version` and `info` answers (the only place that reads them).

        Podman names itself in `Components` ("Podman Engine"); its `Platform.Name` is
        "os/arch/distro", so that field cannot tell the engines apart.
        """
        components = version.get("Components") or []
        names = " ".join(str(c.get("Name", "")) for c in components if isinstance(c, Mapping))
        kind: EngineKind = "podman" if "podman" in names.lower() else "docker"
        runtimes = info.get("Runtimes") or {}
        return cls(
            kind=kind,
            version=str(version.get("Version") or "unknown"),
            api_version=str(version.get("ApiVersion") or ""),
            os=str(version.get("Os") or info.get("OSType") or ""),
            arch=str(version.get("Arch") or info.get("Architecture") or ""),
            runtimes=tuple(sorted(str(r) for r in runtimes))
            if isinstance(runtimes, Mapping)
            else (),
            cdi_spec_dirs=tuple(str(d) for d in info.get("CDISpecDirs") or ()),
            cdi_specs=tuple(cdi_specs) if local else (),
            local=local,
            nvidia_hook=nvidia_hook and local,
        )

    @property
    def name(self) -> str:
        return "Podman" if self.kind == "podman" else "Docker"

    @property
    def is_podman(self) -> bool:
        return self.kind == "podman"

    @property
    def reads_cdi(self) -> bool:
        # Podman always reads CDI; Docker (>= 25) lists the folders it reads as CDISpecDirs.
        return self.is_podman or bool(self.cdi_spec_dirs)

    @property
    def nvidia_cdi_specs(self) -> tuple[CdiSpec, ...]:
        return tuple(s for s in self.cdi_specs if s.is_nvidia_gpu)

    @property
    def gpus_through_cdi(self) -> bool:
        """Name GPUs as CDI devices (nvidia.com/gpu=...) rather than through the runtime hook."""
        return self.reads_cdi and any(s.kind == NVIDIA_KIND for s in self.cdi_specs)

    @property
    def has_nvidia_runtime(self) -> bool:
        return "nvidia" in self.runtimes


@dataclass(frozen=True)
class ImageInfo:
    id: str
    tags: tuple[str, ...]
    size: int  # bytes, as the engine reports it (all layers)
    labels: dict[str, str]
    env: dict[str, str]
    user: str
    created: str
    diff_ids: tuple[str, ...] = ()  # the layers, bottom first (sha256 of each uncompressed tar)
    repo_digests: tuple[str, ...] = ()  # REPO@sha256:... for images pushed or pulled


@dataclass(frozen=True)
class RunResult:
    exit_code: int | None  # None when the container was killed at the timeout
    output: str  # stdout and stderr, interleaved as the engine kept them
    seconds: float
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


@dataclass(frozen=True)
class BuildOutcome:
    image_id: str
    layers: tuple[tuple[str, str], ...]  # (instruction, image id) per step, stages included
    cached_steps: int


@dataclass(frozen=True)
class TransferEvent:
    """One progress answer of a push or pull: a layer's state and its bytes so far."""

    layer: str | None  # short layer id; None for messages about the whole image
    status: str  # "Pulling fs layer", "Downloading", "Pushed", "Already exists", ...
    current: int | None = None
    total: int | None = None


@dataclass(frozen=True)
class Ulimit:
    name: str
    soft: int  # -1: unlimited
    hard: int

    def cli(self) -> str:
        return f"{self.name}={self.soft}:{self.hard}"


@dataclass(frozen=True)
class GpuRequest:
    """Which GPUs a container gets: all, a count, or device ids (indices or UUIDs)."""

    count: int | None = None  # -1 = all
    device_ids: tuple[str, ...] = ()
    # Name the devices through CDI (nvidia.com/gpu=...) instead of the runtime hook.
    cdi: bool = False

    def device_request(self) -> dict[str, Any]:
        """The Engine API's DeviceRequest for this request."""
        if self.cdi:
            ids = [f"nvidia.com/gpu={d}" for d in self.device_ids] or ["nvidia.com/gpu=all"]
            return {"driver": "cdi", "device_ids": ids}
        if self.device_ids:
            return {"device_ids": list(self.device_ids), "capabilities": [["gpu"]]}
        return {"count": self.count if self.count is not None else -1, "capabilities": [["gpu"]]}

    def cli(self) -> list[str]:
        if self.cdi:
            ids = self.device_ids or ("all",)
            return [arg for d in ids for arg in ("--device", f"nvidia.com/gpu={d}")]
        if self.device_ids:
            return ["--gpus", f'"device={",".join(self.device_ids)}"']
        return ["--gpus", "all" if self.count in (None, -1) else str(self.count)]


@dataclass(frozen=True)
class Mount:
    source: str  # a host path
    target: str  # the path inside the container
    read_only: bool = False


@dataclass(frozen=True)
class ContainerSpec:
    image: str
    command: tuple[str, ...]
    name: str
    workdir: str | None = None
    mounts: tuple[Mount, ...] = ()
    environment: Mapping[str, str] = field(default_factory=dict)
    user: str | None = None
    gpus: GpuRequest | None = None
    shm_size: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    ulimits: tuple[Ulimit, ...] = ()
    init: bool = True  # an init process forwards signals to the command and reaps zombies
    host_network: bool = False  # several nodes: the ranks reach each other on the hosts' network
    network: bool = True

    def docker_cli(self) -> list[str]:
        """The equivalent `docker run` command line."""
        args = ["docker", "run", "--rm", "--name", self.name]
        if self.init:
            args.append("--init")
        for key, value in self.labels.items():
            args += ["--label", f"{key}={value}"]
        if self.user:
            args += ["--user", self.user]
        for mount in self.mounts:
            args += ["-v", f"{mount.source}:{mount.target}{':ro' if mount.read_only else ''}"]
        if self.workdir:
            args += ["-w", self.workdir]
        if self.host_network:
            args += ["--network", "host"]
        elif not self.network:
            args += ["--network", "none"]
        if self.shm_size:
            args += ["--shm-size", self.shm_size]
        for limit in self.ulimits:
            args += ["--ulimit", limit.cli()]
        if self.gpus:
            args += self.gpus.cli()
        for key, value in self.environment.items():
            args += ["-e", f"{key}={value}"]
        return [*args, self.image, *self.command]


class RunningContainer(Protocol):
    """A started container: its output streams, signals, its exit code."""

    name: str

    def stream(self) -> Iterator[tuple[bytes | None, bytes | None]]:
        """(stdout chunk, stderr chunk) pairs from the first byte on, kept apart."""
        ...

    def signal(self, signum: int) -> None: ...

    def wait(self) -> int: ...


class ContainerEngine(Protocol):
    """What cudabox asks of a container engine (Docker, or Podman's Docker-compatible API)."""

    @property
    def description(self) -> EngineDescription: ...

    def image(self, ref: str) -> ImageInfo | None: ...

    def run(
        self,
        image: str,
        command: Sequence[str],
        *,
        timeout: float,
        files: Mapping[str, bytes] | None = None,
        files_dir: str = "/tmp/cudabox",
        environment: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        user: str | None = None,
        network: bool = False,
        gpus: bool = False,
    ) -> RunResult: ...

    def started(self, spec: ContainerSpec) -> AbstractContextManager[RunningContainer]: ...

    def close(self) -> None: ...
