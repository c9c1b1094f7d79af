"""`cudabox run`: the user's command in the image that fits, GPUs wired in (and the launch that
`cudabox train` shares).

The container is always removed, whatever happens: normal exit, a failing command, Ctrl-C,
SIGTERM, a closed terminal (SIGHUP), or an error while starting. Signals reach the command through
the container's init. stdout and stderr stay apart, as with `docker run`.
"""

from __future__ import annotations

import argparse
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

from cudabox.container import (
    ContainerSpec,
    EngineDescription,
    GpuRequest,
    Mount,
    RunningContainer,
    Ulimit,
)
from cudabox.errors import ExitCode, NoImageFits, Unavailable, UsageError
from cudabox.host import HostProfile
from cudabox.images.catalog import Catalog, ImageSpec, load_catalog
from cudabox.jobs.spec import Rendezvous, torchrun_argv
from cudabox.options import (
    REGISTRY_ENV,
    absolute,
    current_directory,
    parse_pairs,
    parse_size,
    parse_ulimit,
    registry_settings,
)
from cudabox.output import progress
from cudabox.resolver import Flavor, select

if TYPE_CHECKING:
    from cudabox.engine import Engine

WORKDIR = "/workspace"
OUT_DIR = "/cudabox/out"
DEFAULT_SHM = "4g"  # Docker's 64 MB /dev/shm breaks DataLoader workers
# Several processes per container (NCCL, DataLoader workers): NVIDIA's NGC containers ask for
# unlimited locked memory and a 64 MB stack.
MULTIPROCESS_ULIMITS = (Ulimit("memlock", -1, -1), Ulimit("stack", 67108864, 67108864))
# Host variables that steer collective communication; they reach the container as they are.
PASSED_ENV_PREFIXES = ("NCCL_", "MASTER_", "GLOO_", "TORCH_NCCL_", "TORCH_DISTRIBUTED_")
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass(frozen=True)
class Choice:
    image: ImageSpec
    why: str
    profile: HostProfile


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

    @classmethod
    def from_args(cls, args: argparse.Namespace, here: bool = False) -> LaunchOptions:
        """`here`: nothing is mounted (train --here), so no workspace is needed."""
        if args.cpu and args.gpus is not None:
            raise UsageError("--cpu and --gpus contradict each other", "drop one of them")
        if args.gpus is not None:
            parse_gpus(args.gpus, cdi=False)  # syntax only; CDI naming is decided later
        nproc, nnodes = args.nproc_per_node, args.nnodes
        if nproc < 1 or nnodes < 1:
            raise UsageError(
                "--nproc-per-node and --nnodes must be at least 1", "e.g. --nproc-per-node 2"
            )
        if nproc > 1 and args.framework == "tensorflow":
            raise UsageError(
                "--nproc-per-node runs torchrun, which the TensorFlow images do not have; the TF "
                "workload spreads over one node's GPUs in one process (MirroredStrategy)",
                "drop --nproc-per-node for TensorFlow",
            )
        if nnodes == 1 and (args.rdzv_endpoint or args.rdzv_id):
            raise UsageError(
                "--rdzv-endpoint and --rdzv-id only matter with --nnodes above 1",
                "drop them, or pass --nnodes N",
            )
        rdzv = None
        if nnodes > 1:
            if not args.rdzv_endpoint:
                raise UsageError(
                    f"--nnodes {nnodes} needs --rdzv-endpoint HOST:PORT (where the ranks meet)",
                    "pass the first node's address, e.g. --rdzv-endpoint node1:29500 (the Slurm "
                    "script cudabox renders does this for you)",
                )
            host, _, port = args.rdzv_endpoint.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise UsageError(
                    f"--rdzv-endpoint {args.rdzv_endpoint!r} is not HOST:PORT",
                    "e.g. --rdzv-endpoint node1:29500",
                )
            rank = node_rank(args.node_rank)
            rdzv = Rendezvous(
                host,
                int(port),
                args.rdzv_id or "cudabox",
                is_host=None if rank is None else rank == 0,
                local_addr=args.node_addr or os.environ.get(NODE_NAME_VARIABLE) or None,
            )
        return cls(
            framework=args.framework,
            image=args.image,
            gpus=args.gpus,
            cpu=args.cpu,
            dry_run=args.dry_run,
            build_missing=not args.no_build,
            shm_size=parse_size(args.shm_size, "--shm-size"),
            env=parse_pairs(args.env, "--env"),
            labels=parse_pairs(args.label, "--label"),
            ulimits=tuple(parse_ulimit(item) for item in args.ulimit),
            workspace=Path("/nonexistent") if here else workspace_from(args.workspace),
            mounts=tuple(parse_mount(item) for item in args.mount),
            nproc_per_node=nproc,
            nnodes=nnodes,
            rdzv=rdzv,
            registry=(args.registry or os.environ.get(REGISTRY_ENV) or "").rstrip("/") or None,
            registry_tag=registry_settings(args.tag, args.registry_ca)[0],
            registry_ca=args.registry_ca,
        )

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


# ---- choosing and preparing the image ---------------------------------------------------------


def choose_image(
    framework: str,
    image: str,
    cpu: bool,
    require_gpu: bool,
    profile: HostProfile,
    registry: LaunchOptions | None = None,
) -> Choice:
    """The image to run: named, or the newest that fits (in the registry when one is given)."""
    if image != "auto":
        ca = registry.registry_ca if registry is not None else None
        return Choice(named_image(image, ca), "named with --image", profile)
    if require_gpu:
        require_visible_gpu(framework, profile, here=False)
    flavor: Flavor = "cpu" if cpu else ("cuda" if require_gpu else "auto")
    selection = select(candidates(framework, registry), [profile], framework, flavor)
    if selection.selected is None:
        raise NoImageFits(selection.message or "no image fits this host", selection.fix)
    verdict = next(v for v in selection.verdicts if v.image == selection.selected)
    notes = "; ".join(r.text for r in verdict.reasons)
    where = " in the registry" if registry is not None and registry.registry else ""
    why = f"newest {framework} {selection.selected.flavor} image{where} that fits this host"
    if flavor == "auto" and not profile.visible_gpus:
        why += f"; no usable GPU ({profile.message or 'none visible'})"
    return Choice(selection.selected, f"{why}{' (' + notes + ')' if notes else ''}", profile)


def candidates(framework: str, options: LaunchOptions | None) -> Catalog:
    """The images to choose from: the catalog's, or those of them the registry holds."""
    catalog = load_catalog()
    if options is None or not options.registry:
        return catalog
    from cudabox.images.publish import registry_catalog

    return registry_catalog(
        catalog, options.registry, options.registry_tag, options.registry_ca, framework
    )


def named_image(image: str, ca: Path | None) -> ImageSpec:
    """The image --image names: a reference (judged from its labels), else a catalog name."""
    if is_reference(image):
        return image_from_reference(image, ca)
    return load_catalog().get(image)


def is_reference(image: str) -> bool:
    """An image reference (`cudabox/torch-2.13-cpu:latest`, `REPO/NAME@sha256:...`), not a name."""
    return "/" in image or "@" in image or ":" in image


def image_from_reference(ref: str, ca: Path | None = None) -> ImageSpec:
    """The facts of an image named by reference: from the engine's copy, else from its registry.

    Nothing is pulled here; the launch pulls exactly this reference when it is missing. An image
    without cudabox labels cannot be judged (Unlabelled), wherever it is.
    """
    from cudabox.engine import Engine
    from cudabox.errors import DataError, Unlabelled
    from cudabox.images.labels import spec_from_labels

    with Engine.connect(read_timeout=60) as engine:
        info = engine.image(ref)
    if info is not None:
        try:
            return spec_from_labels(dict(info.labels), ref)
        except DataError as exc:
            raise Unlabelled(
                exc.message,
                "run images built by cudabox (`cudabox build`), or pulled from a `cudabox "
                "publish`ed registry",
            ) from None
    from cudabox.images.remote import spec_of
    from cudabox.registry import RegistryClient

    with RegistryClient(ca_bundle=ca) as client:
        remote = client.image(ref)
    # Pinned to the digest that was read: a tag may move before the pull.
    return spec_of(remote, str(remote.pinned))


def require_visible_gpu(framework: str, profile: HostProfile, here: bool) -> None:
    """A GPU run on a host without a usable GPU fails at once; it never falls back to the CPU."""
    if profile.visible_gpus:
        return
    short = "tf" if framework == "tensorflow" else framework
    found = profile.message or "NVML lists no visible GPU"
    instead = f"cudabox train {framework} {'--here ' if here else ''}--cpu"
    raise Unavailable(
        f"no usable NVIDIA GPU on this host ({found}); a GPU run never falls back to the CPU",
        f"run `nox -s train-{short}-cpu` (or `{instead}`) instead",
    )


def ensure_image(engine: Engine, spec: ImageSpec, build_missing: bool) -> None:
    """Pull a registry image by digest, or build a catalog image the engine lacks."""
    if "@" in spec.tag:
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
    from cudabox.images.build import build_and_verify
    from cudabox.options import PackageSources

    progress(f"cudabox: {spec.tag} is missing; building it (`cudabox build {spec.name}`)")
    build_and_verify(engine, spec, PackageSources.resolve())


def _warn_if_stale(spec: ImageSpec, labels: dict[str, str]) -> None:
    from cudabox.images.lock import lock_digest

    built = labels.get("cudabox.lock_sha256")
    if built and spec.lock.is_file() and lock_digest(spec.lock) != built:
        progress(
            f"cudabox: warning: {spec.tag} was built from an older {spec.lock.name}; rebuild with `cudabox build {spec.name}`"
        )


def gpu_request(
    choice: Choice, gpus: str | None, cpu: bool, engine: EngineDescription | None
) -> GpuRequest | None:
    """GPUs for the container: what --gpus says, else every visible GPU for a CUDA image."""
    if cpu:
        if gpus:
            raise UsageError("--cpu and --gpus contradict each other", "drop one of them")
        return None
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
    choice: Choice,
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


def _connect(dry_run: bool) -> Engine | None:
    from cudabox.engine import Engine

    try:
        return Engine.connect()
    except Unavailable:
        if dry_run:
            return None  # a dry run only prints; it needs no engine
        raise


def probe_host() -> HostProfile:
    from cudabox.nvml import probe

    return probe()


def launch(
    options: LaunchOptions,
    choice: Choice,
    command: Sequence[str],
    extra_mounts: Sequence[Mount] = (),
    to_stderr: bool = False,
) -> int | None:
    """Wire the GPUs, then print the docker command (--dry-run, returns None) or run it."""
    progress(f"cudabox: image {choice.image.name}: {choice.why}")
    engine = _connect(options.dry_run)
    try:
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
        ensure_image(engine, choice.image, build_missing=options.build_missing)
        return run_container(engine, spec, to_stderr)
    finally:
        if engine is not None:
            engine.close()


def cmd_run(args: argparse.Namespace) -> int:
    command = [*args.command, *args.rest]
    if not command:
        raise UsageError(
            "no command to run", "put it after --, e.g. `cudabox run -- python train.py`"
        )
    options = LaunchOptions.from_args(args)
    if args.scheduler != "none":
        from cudabox.cluster import ClusterOptions, submit

        cluster = ClusterOptions.from_args(args)
        code = submit(options.framework, options, cluster, command, out_dir=None)
        return ExitCode.OK if code is None else code
    choice = choose_image(
        options.framework, options.image, options.cpu, False, probe_host(), options
    )
    code = launch(options, choice, command)
    return ExitCode.OK if code is None else code
