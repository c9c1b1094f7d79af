"""Where a job runs: one `Job` value, one `Target` protocol, and the options each target takes.

Four targets: `local` (a container on this host's Docker or Podman engine), `here` (this Python,
no container: `train --here`), `slurm` and `k8s` (a job on a cluster). Like TorchX's schedulers,
each target declares the options it takes; an option given to a target that does not take it is
refused (exit 2) with the target that would take it, never silently dropped.

The implementations (`targets.local`, `.here`, `.slurm`, `.kubernetes`) wrap the use cases and
adapters that exist (`launch`, `cluster`, `slurm`, `kube`, the renderers in `jobs/`); each gets
its opened adapters from the command that builds it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, get_args

from cudabox.errors import UsageError

if TYPE_CHECKING:
    from cudabox.launch import LaunchOptions

TargetName = Literal["local", "here", "slurm", "k8s"]
Scheduler = Literal["none", "slurm", "k8s"]  # --scheduler's choices; none: not on a cluster

TARGETS: tuple[TargetName, ...] = get_args(TargetName)
DESCRIBED: Mapping[TargetName, str] = {
    "local": "a container on this host",
    "here": "this Python, without a container",
    "slurm": "a Slurm job",
    "k8s": "a Kubernetes job",
}
_SELECTED_BY: Mapping[TargetName, str] = {
    "local": "without --here or --scheduler",
    "here": "--here",
    "slurm": "--scheduler slurm",
    "k8s": "--scheduler k8s",
}

_CONTAINER: tuple[TargetName, ...] = ("local", "slurm", "k8s")
_CLUSTER: tuple[TargetName, ...] = ("slurm", "k8s")
_ONE_NODE: tuple[TargetName, ...] = ("local", "here")  # one node of a job started by hand

# The options that not every target takes: the flag, and the targets that take it. Options every
# target takes (--framework, --cpu, --nproc-per-node, --dry-run, the workload's) are not listed.
TAKEN_BY: Mapping[str, tuple[TargetName, ...]] = {
    "--image": _CONTAINER,
    "--registry": _CONTAINER,
    "--tag": _CONTAINER,
    "--registry-ca": _CONTAINER,
    "--env": _CONTAINER,
    "--shm-size": _CONTAINER,
    "--label": ("local", "slurm"),  # Slurm: the labels of each node's `cudabox run` container
    "--workspace": ("local", "slurm"),  # Slurm: where the job is submitted from
    "--gpus": ("local",),  # a cluster job asks with --gpus-per-node
    "--no-build": ("local",),  # cluster nodes never build
    "--ulimit": ("local",),
    "--mount": ("local",),
    "--nnodes": _ONE_NODE,
    "--rdzv-endpoint": _ONE_NODE,
    "--rdzv-id": _ONE_NODE,
    "--node-addr": _ONE_NODE,
    "--node-rank": _ONE_NODE,
    "--nodes": _CLUSTER,
    "--name": _CLUSTER,
    "--gpus-per-node": _CLUSTER,
    "--host": _CLUSTER,
    "--launcher": ("slurm",),
    "--partition": ("slurm",),
    "--time": ("slurm",),
    "--wait-pending": ("slurm",),
    "--k8s-kind": ("k8s",),
    "--namespace": ("k8s",),
}


def takes(target: TargetName) -> frozenset[str]:
    """The target-specific options `target` takes."""
    return frozenset(flag for flag, names in TAKEN_BY.items() if target in names)


def target_for(scheduler: Scheduler, here: bool) -> TargetName:
    """The target the command line chose: --here, --scheduler, or this host's engine."""
    if here and scheduler != "none":
        raise UsageError(
            f"--here and --scheduler {scheduler} choose two places to run: {DESCRIBED['here']}, "
            f"and {DESCRIBED[scheduler]}",
            f"drop --here to submit the job, or drop --scheduler {scheduler} to run here",
        )
    if here:
        return "here"
    return "local" if scheduler == "none" else scheduler


def refuse_foreign(target: TargetName, given: Sequence[str]) -> None:
    """UsageError (exit 2) naming every one of the `given` options that `target` does not take,
    and the targets that take each."""
    foreign = [flag for flag in given if target not in TAKEN_BY.get(flag, (target,))]
    if not foreign:
        return
    where = f"the {target} target ({DESCRIBED[target]})"
    if len(foreign) == 1:
        (flag,) = foreign
        message = f"{where} does not take {flag}; the {_names(TAKEN_BY[flag])} target"
        message += "s do" if len(TAKEN_BY[flag]) > 1 else " does"
    else:
        each = ", ".join(f"{flag} ({_names(TAKEN_BY[flag])})" for flag in foreign)
        message = f"{where} takes none of {each}"
    # The targets that would take them all, if any: the fix may name them.
    common = [t for t in TARGETS if all(t in TAKEN_BY[flag] for flag in foreign)]
    dropped = " ".join(foreign)
    fix = f"drop {dropped}"
    if common:
        fix += ", or choose " + " or ".join(f"the {t} target ({_SELECTED_BY[t]})" for t in common)
    raise UsageError(message, fix)


def _names(targets: Sequence[TargetName]) -> str:
    return " and ".join(targets)


@dataclass(frozen=True)
class Job:
    """One job, whatever runs it: the program, how its container starts, where output goes."""

    framework: str
    program: tuple[str, ...]  # the command, before torchrun wraps it for several processes
    launch: LaunchOptions
    # The host folder the program writes to (train --out): mounted by the local target, a shared
    # folder for Slurm; Kubernetes pods and this Python are told their own (Target.out_dir).
    out: Path | None = None
    require_gpu: bool = False  # refuse at once where no GPU is visible
    workload: bool = False  # the framework's own workload: the image must be of that framework
    to_stderr: bool = False  # our stdout is kept for a --json summary


@dataclass(frozen=True)
class Outcome:
    """What ran: the exit code (None: a dry run printed it), and which image, and why."""

    code: int | None
    image: str
    why: str
    finished: bool = True  # False: submitted only (Kubernetes); nothing to summarise yet


class Target(Protocol):
    """A place a job runs. `name` is how errors and the command line name it."""

    @property
    def name(self) -> TargetName: ...

    def out_dir(self, out: Path) -> str:
        """Where the program writes `out`, as the program sees it (in its container or pod)."""
        ...

    def run(self, job: Job) -> Outcome: ...
