"""Render a JobSpec as an sbatch script: one task per node, torchrun on each, in the job's image.

Pure: a JobSpec and options in, the script's text out (golden-tested). Submitting it is
`cudabox.slurm`'s job. Which container launcher the script uses is decided here too
(`choose_launcher`), from what `cudabox.slurm.detect()` saw on the submit host.

How every launcher keeps a task to the GPUs Slurm gave it: Slurm sets CUDA_VISIBLE_DEVICES for
each task from its allocation (and, with `ConstrainDevices=yes`, hides the other devices through
the task's cgroup). pyxis and Apptainer start the container inside the task, so both the cgroup
and the variable apply there; `cudabox run` starts a Docker container outside the task's cgroup,
so it passes Docker only the GPUs named in CUDA_VISIBLE_DEVICES.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal, get_args

from cudabox.errors import UsageError
from cudabox.jobs.spec import JobSpec, Rendezvous, shell_line, torchrun_argv

WORKSPACE = "/workspace"  # the job's working directory inside the container, as in `cudabox run`
DEFAULT_OUTPUT = "cudabox-%j.log"  # relative to the job's working directory; %j is the job id
# With no fixed port, the rendezvous port comes from the job id: two jobs whose first node is the
# same then meet on different ports. Below the Linux ephemeral range (32768+), so no outgoing
# connection holds it by chance.
PORT_BASE, PORT_SPAN = 20000, 10000

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class Launcher(StrEnum):
    PYXIS = "pyxis"  # srun --container-image (NVIDIA pyxis + enroot)
    APPTAINER = "apptainer"  # srun apptainer exec docker://...
    CUDABOX = "cudabox"  # srun cudabox run ... (Docker on every node)


AUTO = "auto"
LauncherChoice = Literal["auto", "pyxis", "apptainer", "cudabox"]  # --launcher
LAUNCHER_CHOICES: tuple[str, ...] = get_args(LauncherChoice)


@dataclass(frozen=True)
class ClusterFeatures:
    """What the submit host offers, as `cudabox.slurm.detect()` found it."""

    pyxis: bool  # `srun --help` lists --container-image
    apptainer: bool  # `apptainer` is on the submit host's PATH
    slurm_version: str | None = None


@dataclass(frozen=True)
class SbatchOptions:
    """Everything about the script that is not the job itself."""

    launcher: Launcher
    partition: str | None = None
    time_limit: str | None = None  # sbatch --time: MM, HH:MM:SS, D-HH:MM:SS, ...
    account: str | None = None
    output: str = DEFAULT_OUTPUT  # sbatch --output (stdout and stderr together)
    cpus_per_task: int | None = None  # every process torchrun starts shares the task's CPUs
    rdzv_port: int | None = None  # None: derived from the job id (see PORT_BASE)
    cudabox: str = "cudabox"  # the cudabox executable on the nodes (the cudabox launcher)
    run_args: tuple[str, ...] = ()  # more `cudabox run` options, e.g. ("--no-build",)
    env: Mapping[str, str] = field(default_factory=dict)  # exported before srun, after spec.env
    sbatch_args: tuple[str, ...] = ()  # more #SBATCH lines, e.g. ("--exclusive", "--mem=0")


def choose_launcher(requested: str, features: ClusterFeatures) -> tuple[Launcher, str]:
    """The launcher for `--launcher REQUESTED`, and why.

    An explicit choice is taken as it is: the compute nodes may have what the submit host lacks.
    `auto` can only look at the submit host, and assumes the compute nodes match it.
    """
    if requested != AUTO:
        try:
            launcher = Launcher(requested)
        except ValueError:
            raise UsageError(
                f"--launcher {requested!r} is not a launcher",
                f"use one of: {', '.join(LAUNCHER_CHOICES)}",
            ) from None
        return launcher, "asked for with --launcher"
    if features.pyxis:
        found = "srun offers pyxis's --container-image on the submit host"
        return Launcher.PYXIS, f"{found}; the compute nodes are assumed to match it"
    if features.apptainer:
        found = "no pyxis, but apptainer is installed on the submit host"
        return Launcher.APPTAINER, f"{found}; the compute nodes are assumed to match it"
    found = "neither pyxis nor apptainer on the submit host"
    return Launcher.CUDABOX, f"{found}; the compute nodes are assumed to match it"


def render(spec: JobSpec, options: SbatchOptions, why: str | None = None) -> str:
    """The sbatch script for `spec`; `why` (from choose_launcher) goes into its header."""
    _check(spec, options)
    lines = [
        "#!/bin/bash",
        f"# Rendered by cudabox: {_summary(spec)}.",
        f"# Launcher: {options.launcher.value}" + (f" ({why})." if why else "."),
        *_directives(spec, options),
        # No pipefail: `| head` may close the pipe early, which must not fail the job.
        "set -eu",
        "",
    ]
    if spec.nodes > 1:
        port = (
            str(options.rdzv_port)
            if options.rdzv_port is not None
            else f"$(({PORT_BASE} + SLURM_JOB_ID % {PORT_SPAN}))"
        )
        why_port = (
            "fixed by the caller"
            if options.rdzv_port is not None
            else "from the job id, so two jobs sharing a first node use different ports"
        )
        lines += [
            "# torchrun's c10d rendezvous is hosted by the first node of the allocation;",
            f"# the port is {why_port}.",
            'MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
            f"MASTER_PORT={port}",
            "export MASTER_ADDR MASTER_PORT",
        ]
    lines += _environment(spec, options)
    lines += ["", *_launch(spec, options), ""]
    return "\n".join(lines)


# ---- the parts ---------------------------------------------------------------------------------


def _summary(spec: JobSpec) -> str:
    procs = "process" if spec.nproc_per_node == 1 else "processes"
    nodes = "node" if spec.nodes == 1 else "nodes"
    where = f"{spec.gpus_per_node} GPU(s) per node (NCCL)" if spec.uses_gpus else "CPU only (gloo)"
    return (
        f"{spec.image.name} on {spec.nodes} {nodes} x {spec.nproc_per_node} {procs} "
        f"(world size {spec.world_size}), {where}"
    )


def _directives(spec: JobSpec, options: SbatchOptions) -> list[str]:
    args = [
        f"--job-name={spec.name}",
        f"--nodes={spec.nodes}",
        # One task per node: torchrun starts the node's processes itself.
        "--ntasks-per-node=1",
        f"--output={options.output}",
    ]
    if spec.uses_gpus:
        args.append(f"--gpus-per-node={spec.gpus_per_node}")
    if options.cpus_per_task is not None:
        args.append(f"--cpus-per-task={options.cpus_per_task}")
    for flag, value in (
        ("partition", options.partition),
        ("time", options.time_limit),
        ("account", options.account),
    ):
        if value is not None:
            args.append(f"--{flag}={value}")
    args += options.sbatch_args
    return [f"#SBATCH {arg}" for arg in args]


def _environment(spec: JobSpec, options: SbatchOptions) -> list[str]:
    lines = ["export PYTHONUNBUFFERED=1  # the log streams while the job runs"]
    if options.launcher is Launcher.PYXIS and not spec.uses_gpus:
        # enroot's NVIDIA hook mounts the GPUs named by NVIDIA_VISIBLE_DEVICES, and the image says
        # "all"; a CPU job gets none. (A GPU job keeps "all": Slurm's cgroup limits what it sees.)
        lines.append("export NVIDIA_VISIBLE_DEVICES=void")
    for key, value in {**spec.env, **options.env}.items():
        lines.append(f"export {key}={shlex.quote(value)}")
    return lines


def _launch(spec: JobSpec, options: SbatchOptions) -> list[str]:
    rdzv = "$MASTER_ADDR:$MASTER_PORT"
    banner = 'echo "cudabox: job $SLURM_JOB_ID on $SLURM_JOB_NODELIST'
    banner += f', rendezvous at {rdzv}"' if spec.nodes > 1 else '"'
    # --kill-on-bad-exit: one failed node ends the job instead of leaving its peers waiting.
    srun = ["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    launcher = options.launcher
    gpus = spec.uses_gpus
    if launcher is Launcher.CUDABOX:
        comments = ["# Every node runs `cudabox run` (Docker; host networking across nodes)."]
        if gpus:
            comments.append(
                "# Docker containers live outside the task's cgroup: `cudabox run` passes Docker "
                "only the GPUs in the task's CUDA_VISIBLE_DEVICES."
            )
        return [banner, *comments, _lines(srun, _cudabox_argv(spec, options, rdzv))]

    torchrun = _torchrun(spec)
    mounts = [("$PWD", WORKSPACE)]
    if spec.out_dir:
        mounts.append((spec.out_dir, spec.out_dir))
    limited = (
        "Slurm limits each task to its GPUs (cgroup, CUDA_VISIBLE_DEVICES); the container is in it."
    )
    if launcher is Launcher.PYXIS:
        container = [
            f"--container-image={enroot_image(spec.image_ref)}",
            "--container-mounts=" + ",".join(f"{src}:{dst}" for src, dst in mounts),
            f"--container-workdir={WORKSPACE}",
        ]
        comments = [
            "# pyxis starts the image inside every task; enroot shares the host's network and "
            "/dev/shm."
        ]
        if gpus:
            comments.append(f"# {limited}")
        return [banner, *comments, _lines(srun, container, torchrun)]
    apptainer = ["apptainer", "exec"]
    if gpus:
        apptainer.append("--nv")
    for src, dst in mounts:
        apptainer += ["--bind", f"{src}:{dst}"]
    apptainer += ["--pwd", WORKSPACE, f"docker://{_registry_ref(spec.image_ref, launcher)}"]
    comments = [
        "# Apptainer runs the image inside every task, with the task's environment, the host's "
        "network and /dev/shm."
    ]
    if gpus:
        comments.append(f"# --nv brings in the driver. {limited}")
    return [banner, *comments, _lines(srun, apptainer, torchrun)]


def _lines(*parts: list[str]) -> str:
    """One shell command, one part (srun, the container, the program) per line."""
    return " \\\n    ".join(shell_line(part) for part in parts)


def _torchrun(spec: JobSpec) -> list[str]:
    if spec.nodes == 1:
        return torchrun_argv(spec.program, 1, spec.nproc_per_node, None)
    # The port is a shell expression, which Rendezvous.port (an int) cannot hold: render with a
    # placeholder port and put the expression in its place.
    argv = torchrun_argv(
        spec.program,
        spec.nodes,
        spec.nproc_per_node,
        Rendezvous(host="$MASTER_ADDR", port=0, job_id="$SLURM_JOB_ID"),
    )
    return [
        "--rdzv-endpoint=$MASTER_ADDR:$MASTER_PORT"
        if word == "--rdzv-endpoint=$MASTER_ADDR:0"
        else word
        for word in argv
    ]


def _cudabox_argv(spec: JobSpec, options: SbatchOptions, rdzv: str) -> list[str]:
    argv = [options.cudabox, "run", "--image", spec.image_ref]
    argv += ["--nnodes", str(spec.nodes), "--nproc-per-node", str(spec.nproc_per_node)]
    if spec.nodes > 1:
        argv += ["--rdzv-endpoint", rdzv, "--rdzv-id", "$SLURM_JOB_ID"]
    if not spec.uses_gpus:
        argv.append("--cpu")
    argv += ["--shm-size", spec.shm_size]
    # `cudabox run` passes into the container only the variables it is given.
    for key in {**spec.env, **options.env}:
        argv += ["--env", f"{key}=${key}"]  # the value exported above
    if spec.out_dir:
        argv += ["--mount", f"{spec.out_dir}:{spec.out_dir}"]
    return [*argv, *options.run_args, "--", *spec.program]


# ---- image references --------------------------------------------------------------------------


def registry_of(ref: str) -> str | None:
    """The registry named in a Docker reference, or None when it names none (Docker's rule: the
    first path component is a registry when it has a dot or a port, or is localhost)."""
    first, slash, _ = ref.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return None


def enroot_image(ref: str) -> str:
    """A Docker reference as pyxis wants it: enroot separates the registry with '#'
    (REGISTRY#REPO[:TAG|@DIGEST]; the '@digest' form needs a recent enroot)."""
    registry = registry_of(_registry_ref(ref, Launcher.PYXIS))
    assert registry is not None  # _registry_ref refused references without one
    return f"{registry}#{ref[len(registry) + 1 :]}"


def _registry_ref(ref: str, launcher: Launcher) -> str:
    if registry_of(ref) is None:
        raise UsageError(
            f"the image {ref!r} names no registry, so the compute nodes cannot pull it with "
            f"{launcher.value} (it would be looked up on Docker Hub)",
            "push the image to a registry the nodes reach and pass its REGISTRY/REPO@sha256:... "
            "reference, or use --launcher cudabox with the image present on every node",
        )
    return ref


# ---- checks ------------------------------------------------------------------------------------


def _check(spec: JobSpec, options: SbatchOptions) -> None:
    # sbatch reads #SBATCH lines itself, word by word: a value with a space would be cut.
    directive_values = {
        "--job-name": spec.name,
        "--partition": options.partition,
        "--time": options.time_limit,
        "--account": options.account,
        "--output": options.output,
    }
    for flag, value in directive_values.items():
        if value is not None and (not value or any(c.isspace() for c in value)):
            raise UsageError(
                f"{flag} {value!r} is empty or holds white space, which #SBATCH lines cannot carry",
                f"pass a {flag} value without spaces",
            )
    if options.run_args and options.launcher is not Launcher.CUDABOX:
        raise UsageError(
            f"`cudabox run` options {list(options.run_args)} were given, but the launcher is "
            f"{options.launcher.value}",
            "pass them only with --launcher cudabox",
        )
    for arg in options.sbatch_args:
        if not arg.startswith("-") or any(c.isspace() for c in arg):
            raise UsageError(
                f"extra sbatch option {arg!r} is not one --flag[=value] word",
                "pass each sbatch option as one word, e.g. --exclusive or --mem=0",
            )
    for key in {**spec.env, **options.env}:
        if not _ENV_NAME.fullmatch(key):
            raise UsageError(
                f"environment variable name {key!r} is not a shell name",
                "use letters, digits and underscores, not starting with a digit",
            )
    if options.cpus_per_task is not None and options.cpus_per_task < 1:
        raise UsageError("--cpus-per-task must be at least 1", "pass 1 or more, or leave it out")
    if options.rdzv_port is not None and not 1 <= options.rdzv_port <= 65535:
        raise UsageError(f"rendezvous port {options.rdzv_port} is not a TCP port", "use 1-65535")
    if options.launcher is not Launcher.CUDABOX:
        _registry_ref(spec.image_ref, options.launcher)
    if spec.out_dir is not None and not spec.out_dir.startswith("/"):
        raise UsageError(
            f"the output folder {spec.out_dir!r} is not an absolute path",
            "give a folder on a filesystem every node shares, as an absolute path",
        )
