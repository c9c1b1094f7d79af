"""Cluster jobs (`--scheduler slurm|k8s`): the same job, on the engines clusters already run.

The image is chosen (by `choice`) for the cluster's nodes: the host profiles given with --host,
else this host; pinned by digest when a registry is named. The job is a `JobSpec`, rendered by
the pure renderers (`jobs.sbatch`, `jobs.manifests`) and handed to the thin adapters (`slurm`,
`kube`), which the caller passes in. --dry-run prints what would be submitted.
"""

from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal, Protocol

from cudabox.choice import ImageChoice, Request
from cudabox.errors import ExitCode, UsageError
from cudabox.host import HostProfile
from cudabox.jobs.affinity import gfd_labels
from cudabox.jobs.manifests import Kind, Manifests
from cudabox.jobs.manifests import render as render_manifests
from cudabox.jobs.sbatch import ClusterFeatures, LauncherChoice, SbatchOptions, choose_launcher
from cudabox.jobs.sbatch import render as render_sbatch
from cudabox.jobs.spec import JobSpec
from cudabox.launch import LaunchOptions, passed_environment
from cudabox.output import progress
from cudabox.resolver import Flavor

if TYPE_CHECKING:
    from cudabox.kube import Applied
    from cudabox.slurm import JobResult

# Inside a Kubernetes pod without a shared folder, the workload writes here (the pod's own disk).
POD_OUT = "/tmp/cudabox/out"

ClusterScheduler = Literal["slurm", "k8s"]


@dataclass(frozen=True)
class ClusterOptions:
    """How the job is asked of the cluster, checked when made."""

    scheduler: ClusterScheduler
    nodes: int = 1
    gpus_per_node: int | None = None  # None: one per process for a CUDA image, none for CPU
    launcher: LauncherChoice = "auto"
    partition: str | None = None
    time_limit: str | None = None
    k8s_kind: Kind = "job"
    namespace: str | None = None
    hosts: tuple[Path, ...] = ()
    name: str | None = None
    wait_pending: bool = False  # Slurm: wait on a pending reason that never clears by itself

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise UsageError(
                f"--nodes {self.nodes}: a job needs at least one node", "pass --nodes 1 or more"
            )
        if self.gpus_per_node is not None and self.gpus_per_node < 0:
            raise UsageError("--gpus-per-node must not be negative", "pass 0 for a CPU job")


class SlurmApi(Protocol):
    """What a Slurm job needs of the `cudabox.slurm` adapter."""

    def detect(self) -> ClusterFeatures: ...

    def submit(self, script: str, workdir: Path | None = None) -> str: ...

    def follow(
        self,
        job_id: str,
        log_path: Path | None = None,
        out: BinaryIO | None = None,
        poll_s: float = ...,
        wait_pending: bool = False,
    ) -> JobResult: ...

    def require_success(self, result: JobResult) -> None: ...


class KubeApi(Protocol):
    """What a Kubernetes job needs of the `cudabox.kube` adapter."""

    def apply(self, manifests: Manifests, *, namespace: str | None = None) -> Applied: ...


def image_request(framework: str, launch: LaunchOptions, cluster: ClusterOptions) -> Request:
    """What the nodes ask of the image: CPU with --cpu or 0 GPUs, CUDA with GPUs per node."""
    gpus = cluster.gpus_per_node
    flavor: Flavor = "cpu" if launch.cpu or gpus == 0 else ("cuda" if gpus else "auto")
    # Without --host, this host stands for the nodes: a GPU job on it needs a GPU here too.
    need_gpu = flavor == "cuda" and not cluster.hosts
    return Request(framework, launch.image, flavor, require_gpu=need_gpu)


def hosts_text(cluster: ClusterOptions) -> str:
    """Which hosts the image was chosen for, as the why says it."""
    if cluster.hosts:
        return f"the {len(cluster.hosts)} node profile(s) given with --host"
    return "this host (pass --host FILE with `cudabox probe --json` of the compute nodes)"


def job_spec(
    framework: str,
    launch: LaunchOptions,
    cluster: ClusterOptions,
    choice: ImageChoice,
    program: Sequence[str],
    out_dir: Path | None,
) -> JobSpec:
    image = choice.image
    gpus = cluster.gpus_per_node
    if gpus is None:
        gpus = launch.nproc_per_node if image.is_cuda else 0
    short = "tf" if framework == "tensorflow" else framework
    return JobSpec(
        # A new name per run: a Kubernetes Job's template cannot be changed once applied.
        name=cluster.name or f"cudabox-{short}-{uuid.uuid4().hex[:6]}",
        image=image,
        image_ref=image.tag,
        program=tuple(program),
        nodes=cluster.nodes,
        nproc_per_node=launch.nproc_per_node,
        gpus_per_node=gpus,
        env={**passed_environment(), **launch.env},
        shm_size=launch.shm_size,
        out_dir=str(out_dir) if out_dir is not None else None,
    )


def submit_slurm(
    spec: JobSpec,
    launch: LaunchOptions,
    cluster: ClusterOptions,
    out_dir: Path | None,
    slurm: SlurmApi,
) -> int | None:
    """Render the script; print it (--dry-run, None) or submit it and follow it to its end."""
    if launch.dry_run and cluster.launcher != "auto":
        features = ClusterFeatures(pyxis=False, apptainer=False)
    else:
        features = slurm.detect()
    launcher, launcher_why = choose_launcher(cluster.launcher, features)
    # The cudabox launcher on each node: a local tag must be there already (no builds on compute
    # nodes); a pinned registry image is pulled. The user's labels mark its containers.
    run_args: tuple[str, ...] = ("--no-build",) if "@" not in spec.image_ref else ()
    run_args += tuple(
        arg for key, value in launch.labels.items() for arg in ("--label", f"{key}={value}")
    )
    options = SbatchOptions(
        launcher=launcher,
        partition=cluster.partition,
        time_limit=cluster.time_limit,
        output=str(out_dir / "slurm-%j.log") if out_dir else "cudabox-%j.log",
        cudabox=_cudabox_executable(),
        run_args=run_args,
    )
    script = render_sbatch(spec, options, launcher_why)
    if launch.dry_run:
        print(script, end="")
        return None
    job_id = slurm.submit(script, workdir=launch.workspace)
    progress(f"cudabox: submitted Slurm job {job_id} ({launcher.value}); following its log")
    # A job Slurm will never start (more nodes than the partition has, ...) is cancelled with
    # exit 4 and what the partition offers, unless --wait-pending.
    result = slurm.follow(job_id, out=sys.stderr.buffer, wait_pending=cluster.wait_pending)
    slurm.require_success(result)
    return int(ExitCode.OK)


def _cudabox_executable() -> str:
    """The cudabox the nodes run: this one (a shared filesystem, as for the output), by path."""
    beside = Path(sys.executable).with_name("cudabox")
    if beside.is_file():
        return str(beside)
    return shutil.which("cudabox") or "cudabox"


def submit_kubernetes(
    spec: JobSpec,
    launch: LaunchOptions,
    cluster: ClusterOptions,
    hosts: Sequence[HostProfile],
    kube: KubeApi,
) -> int | None:
    """Render the manifests; print them (--dry-run, None) or apply them (`kube`: the adapter)."""
    manifests = render_manifests(spec, cluster.k8s_kind, namespace=cluster.namespace)
    if manifests.affinity is not None and cluster.hosts:
        for host in hosts:
            if not host.visible_gpus:
                continue
            admitted = manifests.affinity.admits(gfd_labels(host))
            progress(
                f"cudabox: a node like {host.name} is {'admitted' if admitted else 'kept out'} "
                "by the job's node affinity"
            )
    if "@" not in spec.image_ref:
        progress(
            f"cudabox: warning: {spec.image_ref} is a local tag that the cluster cannot pull; "
            "publish the images and pass --registry REPO (pinned by digest)"
        )
    if launch.dry_run:
        print(manifests.to_yaml(), end="")
        return None
    if "@" not in spec.image_ref:
        raise UsageError(
            f"the cluster's nodes cannot pull the local image {spec.image_ref}",
            "publish it (`cudabox publish NAME --registry REPO`) and pass --registry REPO",
        )
    applied = kube.apply(manifests, namespace=cluster.namespace)
    for name in applied.objects:
        print(name)
    progress(
        f"cudabox: submitted; follow it with `kubectl logs -f job/{spec.name}"
        f"{' -n ' + cluster.namespace if cluster.namespace else ''}`"
    )
    return int(ExitCode.OK)
