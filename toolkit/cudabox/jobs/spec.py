"""What a distributed training job is, independent of the engine that schedules it."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cudabox.errors import UsageError
from cudabox.images.catalog import ImageSpec
from cudabox.options import DEFAULT_SHM

DEFAULT_RDZV_PORT = 29500


@dataclass(frozen=True)
class Rendezvous:
    """torchrun's c10d rendezvous: where the ranks meet (the first node) and the job's id."""

    host: str  # a host name, an address, or a shell expression such as "$MASTER_ADDR"
    port: int = DEFAULT_RDZV_PORT
    job_id: str = "cudabox"
    # Whether this node hosts the rendezvous store; None lets torchrun decide by host name, which
    # is right unless several "nodes" share one machine (then each would think it is the host).
    is_host: bool | None = None
    # This node's address as the others reach it; None: its FQDN. Several "nodes" on one machine
    # (containers with the host's network) share an FQDN and, in their own PID namespaces, even
    # a pid, and the rendezvous would take them for one node.
    local_addr: str | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class JobSpec:
    """One training job: `program` runs under torchrun on every node, in `image_ref`."""

    name: str  # job name: Slurm --job-name, Kubernetes object names (DNS-1123)
    image: ImageSpec  # the image's facts (the Kubernetes node affinity is derived from them)
    image_ref: str  # what each node runs: REGISTRY/REPO/NAME@sha256:... or a local tag
    program: tuple[str, ...]  # e.g. ("python", "-m", "cudabox.workloads.torch_smoke", "--out", ...)
    nodes: int = 1
    nproc_per_node: int = 1
    gpus_per_node: int = 0  # 0: a CPU job (gloo); >0: that many GPUs per node (NCCL)
    env: Mapping[str, str] = field(default_factory=dict)
    rdzv_port: int = DEFAULT_RDZV_PORT
    shm_size: str = DEFAULT_SHM
    out_dir: str | None = None  # a host folder every node can write (shared filesystem), if any

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise UsageError(
                f"--nodes {self.nodes}: a job needs at least one node", "pass --nodes 1 or more"
            )
        if self.nproc_per_node < 1:
            raise UsageError(
                f"--nproc-per-node {self.nproc_per_node}: each node needs at least one process",
                "pass --nproc-per-node 1 or more (one per GPU is usual)",
            )
        if self.gpus_per_node < 0:
            raise UsageError("--gpus-per-node must not be negative", "pass 0 for a CPU job")
        if not self.program:
            raise UsageError("the job has no program to run", "put it after --")

    @property
    def world_size(self) -> int:
        return self.nodes * self.nproc_per_node

    @property
    def uses_gpus(self) -> bool:
        return self.gpus_per_node > 0


def torchrun_argv(
    program: Sequence[str], nnodes: int, nproc_per_node: int, rdzv: Rendezvous | None
) -> list[str]:
    """torchrun for `program`: standalone on one node, else c10d rendezvous at `rdzv`.

    `python -m mod args` becomes `torchrun ... -m mod args`, `python script.py args` becomes
    `torchrun ... script.py args`, anything else runs with `--no-python`.
    """
    launcher = ["torchrun", f"--nproc-per-node={nproc_per_node}"]
    if rdzv is None:
        launcher.append("--standalone")
    else:
        launcher += [
            f"--nnodes={nnodes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={rdzv.endpoint}",
            f"--rdzv-id={rdzv.job_id}",
        ]
        if rdzv.is_host is not None:
            launcher.append(f"--rdzv-conf=is_host={str(rdzv.is_host).lower()}")
        if rdzv.local_addr is not None:
            launcher.append(f"--local-addr={rdzv.local_addr}")
    words = list(program)
    if words and words[0] in ("python", "python3"):
        rest = words[1:]
        if not rest:
            raise UsageError(
                "`python` alone is not a program to launch", "name a script or -m MODULE"
            )
        # torchrun takes a script or -m MODULE; interpreter options (-c, -u, ...) need the
        # interpreter itself.
        if rest[0] == "-m" or not rest[0].startswith("-"):
            return [*launcher, *rest]
    return [*launcher, "--no-python", *words]


def shell_line(argv: Sequence[str]) -> str:
    """argv as one shell line. Words holding "$VAR" are double-quoted, so the variable expands
    where the line runs (on the node); every other word is quoted literally."""
    return " ".join(_expanding(word) if "$" in word else shlex.quote(word) for word in argv)


def _expanding(word: str) -> str:
    escaped = word.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`")
    return f'"{escaped}"'
