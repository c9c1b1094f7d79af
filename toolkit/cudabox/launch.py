"""`cudabox run` and `cudabox train`: the user's command in the image that fits, GPUs wired in.

The container is always removed, whatever happens: normal exit, a failing command, Ctrl-C,
SIGTERM, or an error while starting. Signals reach the command through the container's init.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from cudabox.images.catalog import FRAMEWORKS, ImageSpec, load_catalog
from cudabox.errors import ExitCode, NoImageFits, Unavailable, UsageError
from cudabox.host import HostProfile
from cudabox.output import print_json, progress, table
from cudabox.resolver import Flavor, select

if TYPE_CHECKING:
    from cudabox.engine import ContainerSpec, Engine, GpuRequest, RunningContainer

WORKDIR = "/workspace"
OUT_DIR = "/cudabox/out"
DEFAULT_SHM = "4g"  # Docker's 64 MB /dev/shm breaks DataLoader workers


@dataclass(frozen=True)
class Choice:
    image: ImageSpec
    why: str
    profile: HostProfile


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser(
        "run",
        help="run a command in the image that fits this host, GPUs wired in",
        description="Run COMMAND in the matching image with the current directory at /workspace.",
    )
    _container_args(run)
    run.add_argument("--framework", choices=FRAMEWORKS, default="torch")
    run.add_argument("command", nargs="*", help="the command; put it after -- when it has options")
    run.set_defaults(func=cmd_run)

    train = sub.add_parser(
        "train",
        help="run the smoke training workload (in its image, or --here)",
        description="Train the smoke workload and print a summary; extra workload options after --.",
    )
    train.add_argument("framework", choices=FRAMEWORKS)
    train.add_argument(
        "--here", action="store_true", help="run in this Python, without a container"
    )
    train.add_argument(
        "--require-gpu",
        action="store_true",
        help="fail at once unless a usable GPU is visible (never train on the CPU)",
    )
    train.add_argument(
        "--out", type=Path, default=None, help="checkpoints and metrics (default: runs/FRAMEWORK)"
    )
    train.add_argument("--json", action="store_true", help="print the summary as JSON")
    _container_args(train)
    train.set_defaults(func=cmd_train)


def _container_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", default="auto", help="a catalog image name, or auto (default)")
    parser.add_argument(
        "--gpus",
        default=None,
        help="all, a count, or device ids/UUIDs (default: every visible GPU)",
    )
    parser.add_argument("--cpu", action="store_true", help="use the CPU image and pass no GPU")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the equivalent docker run command"
    )
    parser.add_argument(
        "--no-build", action="store_true", help="fail instead of building a missing image"
    )
    parser.add_argument(
        "--shm-size", default=DEFAULT_SHM, help=f"size of /dev/shm (default {DEFAULT_SHM})"
    )
    parser.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--ulimit",
        action="append",
        default=[],
        metavar="NAME=SOFT[:HARD]",
        help="container rlimits",
    )


# ---- choosing and preparing the image ---------------------------------------------------------


def choose_image(
    framework: str, image: str, cpu: bool, require_gpu: bool, profile: HostProfile
) -> Choice:
    catalog = load_catalog()
    if image != "auto":
        return Choice(catalog.get(image), "named with --image", profile)
    if require_gpu:
        require_visible_gpu(framework, profile, here=False)
    flavor: Flavor = "cpu" if cpu else ("cuda" if require_gpu else "auto")
    selection = select(catalog, [profile], framework, flavor)
    if selection.selected is None:
        raise NoImageFits(selection.message or "no image fits this host", selection.fix)
    verdict = next(v for v in selection.verdicts if v.image == selection.selected)
    notes = "; ".join(r.text for r in verdict.reasons)
    why = f"newest {framework} {selection.selected.flavor} image that fits this host"
    if flavor == "auto" and not profile.visible_gpus:
        why += f"; no usable GPU ({profile.message or 'none visible'})"
    return Choice(selection.selected, f"{why}{' (' + notes + ')' if notes else ''}", profile)


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
    """Build the image when the engine lacks it (or say which command builds it)."""
    info = engine.image(spec.tag)
    if info is not None:
        _warn_if_stale(spec, info.labels)
        return
    if not build_missing:
        raise Unavailable(
            f"image {spec.tag} is not built",
            f"build it with `cudabox build {spec.name}` (or drop --no-build)",
        )
    from cudabox.images import build

    progress(f"cudabox: {spec.tag} is missing; building it (`cudabox build {spec.name}`)")
    build.build_image(engine, spec, build.BuildOptions.from_env())
    build.require_verified(build.verify_image(engine, spec, load_catalog().root))


def _warn_if_stale(spec: ImageSpec, labels: dict[str, str]) -> None:
    from cudabox.images.lock import lock_digest

    built = labels.get("cudabox.lock_sha256")
    if built and spec.lock.is_file() and lock_digest(spec.lock) != built:
        progress(
            f"cudabox: warning: {spec.tag} was built from an older {spec.lock.name}; rebuild with `cudabox build {spec.name}`"
        )


def gpu_request(
    choice: Choice, gpus: str | None, cpu: bool, engine_info: dict[str, Any] | None
) -> GpuRequest | None:
    """GPUs for the container: what --gpus says, else every visible GPU for a CUDA image."""
    from cudabox.engine import GpuRequest

    if cpu:
        if gpus:
            raise UsageError("--cpu and --gpus contradict each other", "drop one of them")
        return None
    cdi = engine_info is not None and has_nvidia_cdi(engine_info)
    if gpus is not None:
        return parse_gpus(gpus, cdi)
    if not choice.image.is_cuda:
        return None
    visible = choice.profile.visible_gpus
    if not visible:
        progress("cudabox: warning: no GPU is visible; the CUDA image runs on the CPU")
        return None
    if choice.profile.cuda_visible_devices is not None:
        ids = tuple(g.uuid or str(g.index) for g in visible)
        return GpuRequest(device_ids=ids, cdi=cdi)
    return GpuRequest(count=-1, cdi=cdi)


def parse_gpus(text: str, cdi: bool) -> GpuRequest:
    from cudabox.engine import GpuRequest

    text = text.strip()
    if text == "all":
        return GpuRequest(count=-1, cdi=cdi)
    if text.isdigit():
        if int(text) < 1:
            raise UsageError("--gpus 0 asks for no GPU", "use --cpu to run without GPUs")
        if cdi:
            return GpuRequest(device_ids=tuple(str(i) for i in range(int(text))), cdi=True)
        return GpuRequest(count=int(text))
    ids = tuple(part.strip() for part in text.removeprefix("device=").split(",") if part.strip())
    if not ids or not all(i.isdigit() or i.startswith(("GPU-", "MIG-")) for i in ids):
        raise UsageError(
            f"--gpus {text!r} is not all, a count, or a list of indices/UUIDs",
            "e.g. --gpus all, --gpus 2, --gpus 0,1 or --gpus GPU-3f2a...",
        )
    return GpuRequest(device_ids=ids, cdi=cdi)


def has_nvidia_cdi(info: dict[str, Any]) -> bool:
    """True when the engine reads CDI specs and one of them provides nvidia.com/gpu devices."""
    for folder in info.get("CDISpecDirs") or []:
        for path in sorted(Path(folder).glob("*.*")) if Path(folder).is_dir() else []:
            try:
                if "nvidia.com/gpu" in path.read_text(errors="replace"):
                    return True
            except OSError:
                continue
    return False


# Podman's defaults can exceed the limits its service may set, and runc then refuses to start
# ("error setting rlimit ... operation not permitted"); these caps start on every host tried.
_PODMAN_CAPS = {"nofile": 65536, "nproc": 16384}


def is_podman(info: dict[str, Any]) -> bool:
    components = info.get("_version", {}).get("Components") or []
    return any("podman" in str(c.get("Name", "")).lower() for c in components)


def refuse_podman_gpus(info: dict[str, Any] | None, gpus: GpuRequest | None) -> None:
    """Podman's Docker-compatible API accepts GPU device requests and ignores them; say so."""
    if gpus is not None and info is not None and is_podman(info):
        raise Unavailable(
            "this engine is Podman, whose Docker-compatible API ignores GPU requests: the "
            "container would run without its GPUs",
            "run with Docker and the NVIDIA Container Toolkit, or run Podman yourself with CDI "
            "(`podman run --device nvidia.com/gpu=all ...`; --dry-run prints the rest); "
            "or pass --cpu",
        )


def podman_ulimits(info: dict[str, Any]) -> tuple[tuple[str, int, int], ...]:
    """Explicit rlimits for Podman engines: the caller's own, capped; none for Docker."""
    if not is_podman(info):
        return ()
    limits = []
    for name, which in (("nofile", resource.RLIMIT_NOFILE), ("nproc", resource.RLIMIT_NPROC)):
        soft, _hard = resource.getrlimit(which)
        cap = _PODMAN_CAPS[name]
        value = cap if soft == resource.RLIM_INFINITY else min(soft, cap)
        limits.append((name, value, value))
    return tuple(limits)


def parse_ulimits(items: Sequence[str]) -> tuple[tuple[str, int, int], ...]:
    limits = []
    for item in items:
        name, _, values = item.partition("=")
        soft, _, hard = values.partition(":")
        if not name or not soft.isdigit() or not (hard or soft).isdigit():
            raise UsageError(
                f"--ulimit {item!r} is not NAME=SOFT[:HARD]", "e.g. --ulimit nofile=1024:4096"
            )
        limits.append((name, int(soft), int(hard or soft)))
    return tuple(limits)


def _pairs(items: Sequence[str], flag: str) -> dict[str, str]:
    result = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} {item!r} is not KEY=VALUE", f"write it as {flag} NAME=value")
        result[key] = value
    return result


def container_spec(
    choice: Choice,
    command: Sequence[str],
    args: argparse.Namespace,
    gpus: GpuRequest | None,
    ulimits: tuple[tuple[str, int, int], ...],
    extra_mounts: Sequence[tuple[str, str, bool]] = (),
) -> ContainerSpec:
    from cudabox.engine import ContainerSpec

    run_id = uuid.uuid4().hex[:12]
    environment = {"HOME": "/tmp", "PYTHONUNBUFFERED": "1", **_pairs(args.env, "--env")}
    return ContainerSpec(
        image=choice.image.tag,
        command=tuple(command),
        name=f"cudabox-run-{run_id}",
        workdir=WORKDIR,
        mounts=((str(Path.cwd()), WORKDIR, False), *extra_mounts),
        environment=environment,
        # Files written to the mounted directory belong to the caller, not to root.
        user=f"{os.getuid()}:{os.getgid()}",
        gpus=gpus,
        shm_size=args.shm_size,
        labels={
            "cudabox.run": run_id,
            "cudabox.image": choice.image.name,
            **_pairs(args.label, "--label"),
        },
        ulimits=parse_ulimits(getattr(args, "ulimit", [])) or ulimits,
    )


# ---- running ------------------------------------------------------------------------------------


@contextmanager
def forwarded_signals(container: RunningContainer) -> Iterator[None]:
    """Ctrl-C and SIGTERM go to the container; a second one kills it."""
    received: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        if len(received) == 1:
            progress(f"cudabox: passing {signal.Signals(signum).name} to {container.name}")
            container.signal(signum)
        else:
            progress(f"cudabox: killing {container.name}")
            container.signal(signal.SIGKILL)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_container(engine: Engine, spec: ContainerSpec, to_stderr: bool = False) -> int:
    """Start, stream the output, forward signals, return the exit code; always remove."""
    from cudabox.engine import start_container

    container = start_container(engine, spec)
    try:
        with forwarded_signals(container):
            out = sys.stderr.buffer if to_stderr else sys.stdout.buffer
            for chunk in container.stream():
                out.write(chunk)
                out.flush()
            return container.wait()
    finally:
        container.remove()


def _engine_and_info(dry_run: bool) -> tuple[Engine | None, dict[str, Any] | None]:
    from cudabox.engine import Engine, engine_info

    try:
        engine = Engine.connect()
    except Unavailable:
        if dry_run:
            return None, None  # a dry run only prints; it needs no engine
        raise
    return engine, engine_info(engine)


def _probe() -> HostProfile:
    from cudabox.nvml import probe

    return probe()


def launch(
    args: argparse.Namespace,
    choice: Choice,
    command: Sequence[str],
    extra_mounts: Sequence[tuple[str, str, bool]] = (),
    to_stderr: bool = False,
) -> int | None:
    """Wire the GPUs, then print the docker command (--dry-run, returns None) or run it."""
    progress(f"cudabox: image {choice.image.name}: {choice.why}")
    engine, info = _engine_and_info(args.dry_run)
    gpus = gpu_request(choice, args.gpus, args.cpu, info)
    refuse_podman_gpus(info, gpus)
    spec = container_spec(choice, command, args, gpus, podman_ulimits(info or {}), extra_mounts)
    if engine is None or args.dry_run:  # no engine happens only on a dry run
        print(shlex.join(spec.docker_cli()))
        if engine is not None:
            engine.close()
        return None
    with engine:
        ensure_image(engine, choice.image, build_missing=not args.no_build)
        return run_container(engine, spec, to_stderr)


def cmd_run(args: argparse.Namespace) -> int:
    command = [*args.command, *args.rest]
    if not command:
        raise UsageError(
            "no command to run", "put it after --, e.g. `cudabox run -- python train.py`"
        )
    choice = choose_image(args.framework, args.image, args.cpu, False, _probe())
    code = launch(args, choice, command)
    return ExitCode.OK if code is None else code


# ---- training ----------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from cudabox.workloads import module_for

    workload = list(args.rest)  # workload options come after --
    out = (args.out or Path("runs") / args.framework).resolve()
    module = module_for(args.framework)
    if args.require_gpu:
        workload = ["--device", "cuda", *workload]
    elif args.cpu:
        workload = ["--device", "cpu", *workload]
    if args.here:
        if args.require_gpu:
            require_visible_gpu(args.framework, _probe(), here=True)
        return _train_here(module, out, workload, args)

    choice = choose_image(args.framework, args.image, args.cpu, args.require_gpu, _probe())
    if not args.dry_run:
        out.mkdir(parents=True, exist_ok=True)
    command = ["python", "-m", module, "--out", OUT_DIR, *workload]
    # With --json, stdout carries only the summary; the workload's progress goes to stderr.
    code = launch(args, choice, command, ((str(out), OUT_DIR, False),), to_stderr=args.json)
    if code is None:
        return ExitCode.OK
    _summarise(out, choice.image.name, choice.why, code, args.json)
    return code


def _train_here(module: str, out: Path, workload: list[str], args: argparse.Namespace) -> int:
    import importlib.util

    package = "torch" if args.framework == "torch" else "tensorflow"
    if importlib.util.find_spec(package) is None:
        raise Unavailable(
            f"{package} is not installed in this Python ({sys.executable})",
            f"install it here, or drop --here to train in the {args.framework} image",
        )
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", module, "--out", str(out), *workload]
    progress(f"cudabox: training here: {shlex.join(command)}")
    process = subprocess.Popen(command, stdout=sys.stderr if args.json else None)
    try:
        code = process.wait()
    except KeyboardInterrupt:
        # The child got the same Ctrl-C from the terminal; let it save and stop.
        code = process.wait()
    _summarise(out, "here", f"this Python ({sys.executable})", code, args.json)
    return code


def _summarise(out: Path, image: str, why: str, code: int, as_json: bool) -> None:
    metrics_path = out / "metrics.json"
    metrics: dict[str, Any] = {}
    if metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text())
        except json.JSONDecodeError:
            metrics = {}
    summary = {
        "image": image,
        "why": why,
        "exit_code": code,
        "passed": bool(metrics.get("passed")) and code == 0,
        "device": metrics.get("device_name"),
        "samples_per_s": metrics.get("samples_per_s"),
        "final_loss": metrics.get("final_loss"),
        "final_accuracy": metrics.get("final_accuracy"),
        "time_to_first_step_s": metrics.get("time_to_first_step_s"),
        "metrics": str(metrics_path) if metrics else None,
    }
    if as_json:
        print_json(summary)
        return
    rows = [[key, _fmt(value)] for key, value in summary.items()]
    print(table(["summary", ""], rows))


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return "-" if value is None else str(value)
