"""`cudabox run`: the user's command in the image that fits, GPUs wired in (and the launch that
`cudabox train` shares).

The container is always removed, whatever happens: normal exit, a failing command, Ctrl-C,
SIGTERM, a closed terminal (SIGHUP), or an error while starting. Signals reach the command through
the container's init. stdout and stderr stay apart, as with `docker run`.
"""

from __future__ import annotations

import os
import resource
import shlex
import signal
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from cudabox.choice import ImageChoice, ProjectImages
from cudabox.container import (
    ContainerSpec,
    EngineDescription,
    GpuRequest,
    Mount,
    RunningContainer,
    Ulimit,
)
from cudabox.errors import Unavailable, UsageError
from cudabox.images.catalog import ImageSpec
from cudabox.images.labels import PROJECT_LOCK
from cudabox.jobs.spec import Rendezvous, torchrun_argv
from cudabox.options import DEFAULT_SHM, PackageSources, absolute, current_directory
from cudabox.output import progress

if TYPE_CHECKING:
    from cudabox.engine import Engine

WORKDIR = "/workspace"
OUT_DIR = "/cudabox/out"
# Several processes per container (NCCL, DataLoader workers): NVIDIA's NGC containers ask for
# unlimited locked memory and a 64 MB stack.
MULTIPROCESS_ULIMITS = (Ulimit("memlock", -1, -1), Ulimit("stack", 67108864, 67108864))
# Host variables that steer collective communication; they reach the container as they are.
PASSED_ENV_PREFIXES = ("NCCL_", "MASTER_", "GLOO_", "TORCH_NCCL_", "TORCH_DISTRIBUTED_")
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass(frozen=True)
class LaunchOptions:
    """How `cudabox run`/`train` start the container, checked before anything starts."""

    framework: str = "torch"
    image: str = "auto"
    gpus: str | None = None
    cpu: bool = False
    dry_run: bool = False
    build_missing: bool = True
    shm_size: str = DEFAULT_SHM
    env: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    ulimits: tuple[Ulimit, ...] = ()
    workspace: Path = Path("/nonexistent")
    mounts: tuple[Mount, ...] = ()
    nproc_per_node: int = 1
    nnodes: int = 1
    rdzv: Rendezvous | None = None
    registry: str | None = None  # choose and pull there instead of building
    registry_tag: str = "latest"
    registry_ca: Path | None = None
    skip_fit_check: bool = False  # a named --image that does not fit runs anyway (said)

    def __post_init__(self) -> None:
        # Checked here, once: every target and every path below may rely on it.
        if self.cpu and self.gpus is not None:
            raise UsageError("--cpu and --gpus contradict each other", "drop one of them")

    @property
    def distributed(self) -> bool:
        return self.nproc_per_node > 1 or self.nnodes > 1


# What schedulers tell each node about its place: Slurm's node id, a Kubernetes Indexed Job's
# index. srun and the pod set them per node, where a job script cannot.
NODE_RANK_VARIABLES = ("SLURM_NODEID", "JOB_COMPLETION_INDEX")
NODE_NAME_VARIABLE = "SLURMD_NODENAME"  # the node's name as Slurm knows it (resolvable)


def node_rank(given: int | None, env: Mapping[str, str] | None = None) -> int | None:
    """This node's rank in the job: --node-rank, else the scheduler's variable, else unknown.

    The node of rank 0 hosts torchrun's rendezvous store; without a rank, torchrun guesses from
    host names, which fails when several nodes share one machine (each thinks it is the host).
    """
    if given is not None:
        if given < 0:
            raise UsageError("--node-rank must not be negative", "the first node is 0")
        return given
    env = os.environ if env is None else env
    for name in NODE_RANK_VARIABLES:
        text = env.get(name, "")
        if text.isdigit():
            return int(text)
    return None


def parse_mount(item: str) -> Mount:
    """SRC:DST[:ro]: an existing host folder or file, at an absolute path in the container."""
    parts = item.split(":")
    read_only = len(parts) == 3 and parts[2] == "ro"
    if len(parts) not in (2, 3) or (len(parts) == 3 and not read_only):
        raise UsageError(
            f"--mount {item!r} is not SRC:DST or SRC:DST:ro", "e.g. --mount /shared/data:/data:ro"
        )
    source, target = Path(parts[0]).expanduser(), parts[1]
    if not source.exists():
        raise UsageError(f"--mount {item!r}: {source} does not exist", "name an existing path")
    if not target.startswith("/") or target in ("/", WORKDIR):
        raise UsageError(
            f"--mount {item!r}: the container path must be absolute and not / or {WORKDIR}",
            "e.g. --mount /shared/runs:/shared/runs (use --workspace for /workspace)",
        )
    return Mount(str(source.resolve()), target, read_only)


def workspace_from(named: Path | None) -> Path:
    """The host folder mounted at /workspace: the current one, or the one named.

    The filesystem root is never mounted unless named: run from `/` by accident, the whole
    host would be writable inside the container.
    """
    folder = absolute(named) if named is not None else current_directory().resolve()
    if named is None and folder == Path("/"):
        raise UsageError(
            "the current directory is /, and mounting it at /workspace would expose the whole "
            "host read-write inside the container",
            "cd into a project folder, or pass --workspace / if that is really meant",
        )
    if not folder.is_dir():
        raise UsageError(f"--workspace {folder} is not a folder", "name an existing folder")
    return folder


# ---- preparing the image ------------------------------------------------------------------------


def ensure_image(
    engine: Engine, spec: ImageSpec, build_missing: bool, project: ProjectImages | None = None
) -> None:
    """Pull a registry image by digest, or build a catalog image the engine lacks, or make the
    project's image present and current (built on its catalog image when missing or stale)."""
    ours = project is not None and spec.project == project.project.name
    if ours and project is not None and "@" not in spec.tag:
        ensure_project(engine, spec, build_missing, project)
        return
    if "@" in spec.tag:
        # Imported here, as the build below: a run of an image the engine has loads neither.
        from cudabox.images.publish import pull_judged

        pull_judged(engine, spec)
        return
    info = engine.image(spec.tag)
    if info is not None:
        _warn_if_stale(spec, info.labels)
        return
    if not build_missing:
        raise Unavailable(
            f"image {spec.tag} is not built",
            f"build it with `cudabox build {spec.name}` (or drop --no-build)",
        )
    from cudabox.images.build import build_and_verify  # the build machinery: see the pull

    progress(f"cudabox: {spec.tag} is missing; building it (`cudabox build {spec.name}`)")
    build_and_verify(engine, spec, PackageSources.resolve())


def ensure_project(
    engine: Engine, spec: ImageSpec, build_missing: bool, project: ProjectImages
) -> None:
    """The project image of `spec`: kept when current (an edit of mounted code changes nothing),
    else built on its catalog image. --no-build runs what is there, and builds nothing."""
    present = engine.image(spec.tag)
    base = project.base(spec)
    pulled = present is not None and present.labels.get(PROJECT_LOCK) == project.lock.sha256
    if pulled and engine.image(base.tag) is None:
        return  # pulled (`cudabox pull`): its catalog image is not here to build on
    if not build_missing:
        if present is None:
            raise Unavailable(
                f"the project image {spec.tag} is not built",
                "run `cudabox build` in the project folder (or drop --no-build)",
            )
        return
    # Imported here: the build machinery, which a run of a catalog image does not load.
    from cudabox.images.context import BuildOptions
    from cudabox.project.building import ensure_project_image

    ensure_project_image(
        engine,
        project.project,
        project.lock,
        base,
        lambda: BuildOptions(PackageSources.resolve()),  # read only when it builds
        build_missing=True,
        bake=None,
    )


def _warn_if_stale(spec: ImageSpec, labels: dict[str, str]) -> None:
    from cudabox.images.lock import lock_digest  # the locking machinery: only for this check

    built = labels.get("cudabox.lock_sha256")
    if built and spec.lock.is_file() and lock_digest(spec.lock) != built:
        progress(
            f"cudabox: warning: {spec.tag} was built from an older {spec.lock.name}; rebuild with `cudabox build {spec.name}`"
        )


def gpu_request(
    choice: ImageChoice, gpus: str | None, cpu: bool, engine: EngineDescription | None
) -> GpuRequest | None:
    """GPUs for the container: what --gpus says, else every visible GPU for a CUDA image."""
    if cpu:
        return None  # LaunchOptions refuses --cpu with --gpus
    cdi = engine is not None and engine.gpus_through_cdi
    if gpus is not None:
        return parse_gpus(gpus, cdi)
    if not choice.image.is_cuda:
        return None
    visible = choice.profile.visible_gpus
    if not visible:
        progress("cudabox: warning: no GPU is visible; the CUDA image runs on the CPU")
        return None
    if choice.profile.cuda_visible_devices is not None:
        # Only the GPUs CUDA_VISIBLE_DEVICES shows (Slurm sets it from the allocation).
        ids = tuple(g.uuid or str(g.index) for g in visible)
        return GpuRequest(device_ids=ids, cdi=cdi)
    return GpuRequest(count=-1, cdi=cdi)


def parse_gpus(text: str, cdi: bool) -> GpuRequest:
    text = text.strip()
    if text == "all":
        return GpuRequest(count=-1, cdi=cdi)
    if text.isdigit():
        if int(text) < 1:
            raise UsageError("--gpus 0 asks for no GPU", "use --cpu to run without GPUs")
        if cdi:
            return GpuRequest(device_ids=tuple(str(i) for i in range(int(text))), cdi=True)
        return GpuRequest(count=int(text))
    ids = tuple(part.strip() for part in text.removeprefix("device=").split(","))
    valid = all(i.isdigit() or i.startswith(("GPU-", "MIG-")) for i in ids)
    if not text or not valid or len(set(ids)) != len(ids):
        raise UsageError(
            f"--gpus {text!r} is not all, a count, or a list of distinct indices/UUIDs",
            "e.g. --gpus all, --gpus 2, --gpus 0,1 or --gpus GPU-3f2a...",
        )
    return GpuRequest(device_ids=ids, cdi=cdi)


def refuse_podman_gpus(engine: EngineDescription | None, gpus: GpuRequest | None) -> None:
    """Podman's Docker-compatible API accepts GPU device requests and ignores them; say so."""
    if gpus is not None and engine is not None and engine.is_podman:
        raise Unavailable(
            "this engine is Podman, whose Docker-compatible API ignores GPU requests: the "
            "container would run without its GPUs",
            "run with Docker and the NVIDIA Container Toolkit, or run Podman yourself with CDI "
            "(`podman run --device nvidia.com/gpu=all ...`; --dry-run prints the rest); "
            "or pass --cpu",
        )


# Podman's defaults can exceed the limits its service may set, and runc then refuses to start
# ("error setting rlimit ... operation not permitted"); these caps start on every host tried.
_PODMAN_CAPS = {"nofile": 65536, "nproc": 16384}


def podman_ulimits(engine: EngineDescription | None) -> tuple[Ulimit, ...]:
    """Explicit rlimits for Podman engines: the caller's own, capped; none for Docker."""
    if engine is None or not engine.is_podman:
        return ()
    limits = []
    for name, which in (("nofile", resource.RLIMIT_NOFILE), ("nproc", resource.RLIMIT_NPROC)):
        soft, _hard = resource.getrlimit(which)
        cap = _PODMAN_CAPS[name]
        value = cap if soft == resource.RLIM_INFINITY else min(soft, cap)
        limits.append(Ulimit(name, value, value))
    return tuple(limits)


def container_ulimits(
    options: LaunchOptions, engine: EngineDescription | None
) -> tuple[Ulimit, ...]:
    """The user's --ulimit values win; then the multi-process set; then Podman's caps."""
    chosen = {u.name: u for u in podman_ulimits(engine)}
    if options.distributed and (engine is None or not engine.is_podman):
        chosen.update({u.name: capped(u) for u in MULTIPROCESS_ULIMITS})
    chosen.update({u.name: u for u in options.ulimits})
    return tuple(chosen.values())


_RLIMITS = {"memlock": resource.RLIMIT_MEMLOCK, "stack": resource.RLIMIT_STACK}
_CAP_SYS_RESOURCE = 24  # linux/capability.h


def _may_raise_limits(status: Path = Path("/proc/self/status")) -> bool:
    """False only when we are root and lack CAP_SYS_RESOURCE (then so does a local engine)."""
    if os.geteuid() != 0:
        return True  # the engine is another process, normally root with its capabilities
    try:
        for line in status.read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> _CAP_SYS_RESOURCE & 1)
    except (OSError, ValueError, IndexError):
        pass
    return True


def capped(limit: Ulimit) -> Ulimit:
    """`limit`, lowered to this host's hard limit where the engine cannot raise limits past it.

    A root engine with CAP_SYS_RESOURCE can (the usual case: NCCL over RDMA wants unlimited
    memlock). Where cudabox itself is root without that capability (sandboxes, some VMs), the
    engine is too, and runc fails with "error setting rlimit type 8: operation not permitted".
    """
    which = _RLIMITS.get(limit.name)
    if which is None or _may_raise_limits():
        return limit
    hard = resource.getrlimit(which)[1]
    if hard == resource.RLIM_INFINITY:
        return limit
    value = hard if limit.hard == -1 else min(limit.hard, hard)
    return Ulimit(limit.name, value, value)


def passed_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """NCCL_*, MASTER_*, ... from the host, so collective settings reach the ranks."""
    env = os.environ if env is None else env
    return {k: v for k, v in sorted(env.items()) if k.startswith(PASSED_ENV_PREFIXES)}


def launched_command(command: Sequence[str], options: LaunchOptions) -> list[str]:
    """The command as given, or under torchrun when several processes or nodes are asked for."""
    if not options.distributed:
        return list(command)
    return torchrun_argv(command, options.nnodes, options.nproc_per_node, options.rdzv)


def container_spec(
    choice: ImageChoice,
    command: Sequence[str],
    options: LaunchOptions,
    gpus: GpuRequest | None,
    ulimits: tuple[Ulimit, ...],
    extra_mounts: Sequence[Mount] = (),
) -> ContainerSpec:
    run_id = uuid.uuid4().hex[:12]
    environment = {
        "HOME": "/tmp",
        "PYTHONUNBUFFERED": "1",
        **passed_environment(),
        **options.env,
    }
    return ContainerSpec(
        image=choice.image.tag,
        command=tuple(command),
        name=f"cudabox-run-{run_id}",
        workdir=WORKDIR,
        mounts=(Mount(str(options.workspace), WORKDIR), *options.mounts, *extra_mounts),
        environment=environment,
        # Files written to the mounted directory belong to the caller, not to root.
        user=f"{os.getuid()}:{os.getgid()}",
        gpus=gpus,
        shm_size=options.shm_size,
        labels={**options.labels, "cudabox.run": run_id, "cudabox.image": choice.image.name},
        ulimits=ulimits,
        host_network=options.nnodes > 1,
    )


# ---- running ------------------------------------------------------------------------------------


@contextmanager
def forwarded_signals(container: RunningContainer) -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP go to the container; a second one kills it."""
    received: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        if len(received) == 1:
            # A closed terminal (SIGHUP) means stop: the command gets SIGTERM, as from `docker stop`.
            sent = signal.SIGTERM if signum == signal.SIGHUP else signum
            progress(f"cudabox: passing {signal.Signals(sent).name} to {container.name}")
            container.signal(sent)
        else:
            progress(f"cudabox: killing {container.name}")
            container.signal(signal.SIGKILL)

    previous = {s: signal.signal(s, forward) for s in FORWARDED_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_container(engine: Engine, spec: ContainerSpec, to_stderr: bool = False) -> int:
    """Start, stream the output, forward signals, return the exit code; always remove.

    The command's stderr goes to our stderr; its stdout to our stdout (or to stderr when our
    stdout is reserved for a --json summary).
    """
    with engine.started(spec) as container, forwarded_signals(container):
        out = sys.stderr.buffer if to_stderr else sys.stdout.buffer
        for stdout, stderr in container.stream():
            if stdout:
                out.write(stdout)
                out.flush()
            if stderr:
                sys.stderr.buffer.write(stderr)
                sys.stderr.buffer.flush()
        return container.wait()


def launch(
    engine: Engine | None,
    options: LaunchOptions,
    choice: ImageChoice,
    command: Sequence[str],
    extra_mounts: Sequence[Mount] = (),
    to_stderr: bool = False,
    project: ProjectImages | None = None,
) -> int | None:
    """Wire the GPUs, then print the docker command (--dry-run, returns None) or run it.

    `engine` is None only for a dry run on a host without one: the command is printed as it
    would run on Docker.
    """
    shown = choice.image.tag if choice.image.project else choice.image.name
    progress(f"cudabox: image {shown}: {choice.why}")
    for warning in choice.warnings:
        progress(f"cudabox: warning: {warning}")
    described = engine.description if engine is not None else None
    gpus = gpu_request(choice, options.gpus, options.cpu, described)
    refuse_podman_gpus(described, gpus)
    spec = container_spec(
        choice,
        launched_command(command, options),
        options,
        gpus,
        container_ulimits(options, described),
        extra_mounts,
    )
    if engine is None or options.dry_run:
        print(shlex.join(spec.docker_cli()))
        return None
    ensure_image(engine, choice.image, options.build_missing, project)
    return run_container(engine, spec, to_stderr)
