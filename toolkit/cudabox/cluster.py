"""`cudabox train/run --scheduler slurm|k8s`: the same job, on the engines clusters already run.

The image is chosen for the cluster's nodes (the host profiles given with --host, else this
host), pinned by digest when a registry is named; the job is a `JobSpec`, rendered by the pure
renderers (`jobs.sbatch`, `jobs.manifests`) and handed to the thin adapters (`slurm`, `kube`).
--dry-run prints what would be submitted.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cudabox.errors import ExitCode, NoImageFits, UsageError
from cudabox.host import HostProfile
from cudabox.images.catalog import ImageSpec
from cudabox.jobs.spec import JobSpec
from cudabox.launch import (
    LaunchOptions,
    candidates,
    named_image,
    passed_environment,
    require_visible_gpu,
)
from cudabox.output import progress
from cudabox.resolver import Flavor, select

# Inside a Kubernetes pod without a shared folder, the workload writes here (the pod's own disk).
POD_OUT = "/tmp/cudabox/out"


@dataclass(frozen=True)
class ClusterOptions:
    scheduler: str  # "slurm" or "k8s"
    nodes: int
    gpus_per_node: int | None  # None: one per process for a CUDA image, none for a CPU one
    launcher: str
    partition: str | None
    time_limit: str | None
    k8s_kind: str
    namespace: str | None
    hosts: tuple[Path, ...]
    name: str | None = None
    wait_pending: bool = False  # Slurm: wait on a pending reason that never clears by itself

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ClusterOptions:
        if args.nodes < 1:
            raise UsageError(
                f"--nodes {args.nodes}: a job needs at least one node", "pass --nodes 1 or more"
            )
        if args.nnodes != 1 or args.rdzv_endpoint:
            raise UsageError(
                "--nnodes and --rdzv-endpoint are for one node of a job started by hand; with "
                "--scheduler the job is given --nodes and finds its rendezvous itself",
                f"drop them and pass --nodes {max(args.nnodes, args.nodes)}",
            )
        if args.gpus_per_node is not None and args.gpus_per_node < 0:
            raise UsageError("--gpus-per-node must not be negative", "pass 0 for a CPU job")
        if args.cpu and args.gpus_per_node:
            raise UsageError("--cpu and --gpus-per-node contradict each other", "drop one of them")
        if args.wait_pending and args.scheduler != "slurm":
            raise UsageError(
                f"--wait-pending is for Slurm jobs, not --scheduler {args.scheduler}",
                "drop --wait-pending, or pass --scheduler slurm",
            )
        return cls(
            scheduler=args.scheduler,
            nodes=args.nodes,
            gpus_per_node=0 if args.cpu else args.gpus_per_node,
            launcher=args.launcher,
            partition=args.partition,
            time_limit=args.time,
            k8s_kind=args.k8s_kind,
            namespace=args.namespace,
            hosts=tuple(args.host),
            name=args.name,
            wait_pending=args.wait_pending,
        )


def choose_cluster_image(
    framework: str, launch: LaunchOptions, cluster: ClusterOptions
) -> tuple[ImageSpec, str]:
    """The image every node of the cluster can run, and why; pinned by digest with a registry."""
    if launch.image != "auto":
        return named_image(launch.image, launch.registry_ca), "named with --image"
    if cluster.hosts:
        hosts = [HostProfile.load(path) for path in cluster.hosts]
        where = f"the {len(hosts)} node profile(s) given with --host"
    else:
        from cudabox.nvml import probe

        hosts = [probe()]
        where = "this host (pass --host FILE with `cudabox probe --json` of the compute nodes)"
    gpus = cluster.gpus_per_node
    flavor: Flavor = "cpu" if launch.cpu or gpus == 0 else ("cuda" if gpus else "auto")
    if flavor == "cuda" and not cluster.hosts:
        require_visible_gpu(framework, hosts[0], here=False)
    selection = select(candidates(framework, launch), hosts, framework, flavor)
    if selection.selected is None:
        raise NoImageFits(selection.message or f"no {framework} image fits {where}", selection.fix)
    return (
        selection.selected,
        f"newest {framework} {selection.selected.flavor} image that fits {where}",
    )


def job_spec(
    framework: str,
    launch: LaunchOptions,
    cluster: ClusterOptions,
    program: Sequence[str],
    out_dir: Path | None,
) -> tuple[JobSpec, str]:
    image, why = choose_cluster_image(framework, launch, cluster)
    gpus = cluster.gpus_per_node
    if gpus is None:
        gpus = launch.nproc_per_node if image.is_cuda else 0
    short = "tf" if framework == "tensorflow" else framework
    spec = JobSpec(
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
    return spec, why


def submit(
    framework: str,
    launch: LaunchOptions,
    cluster: ClusterOptions,
    program: Sequence[str],
    out_dir: Path | None,
) -> int | None:
    """Render the job; print it (--dry-run, None) or submit it (Slurm: follow it to its end)."""
    spec, why = job_spec(framework, launch, cluster, program, out_dir)
    progress(f"cudabox: image {spec.image.name} ({spec.image_ref}): {why}")
    if cluster.scheduler == "slurm":
        return _slurm(spec, launch, cluster, out_dir)
    return _kubernetes(spec, launch, cluster)


def _slurm(
    spec: JobSpec, launch: LaunchOptions, cluster: ClusterOptions, out_dir: Path | None
) -> int | None:
    from cudabox.jobs.sbatch import ClusterFeatures, SbatchOptions, choose_launcher, render

    if launch.dry_run and cluster.launcher != "auto":
        features = ClusterFeatures(pyxis=False, apptainer=False)
    else:
        from cudabox import slurm

        features = slurm.detect()
    launcher, why = choose_launcher(cluster.launcher, features)
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
    script = render(spec, options, why)
    if launch.dry_run:
        print(script, end="")
        return None
    from cudabox import slurm

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


def _kubernetes(spec: JobSpec, launch: LaunchOptions, cluster: ClusterOptions) -> int | None:
    from cudabox.jobs.affinity import gfd_labels
    from cudabox.jobs.manifests import render

    manifests = render(spec, cluster.k8s_kind, namespace=cluster.namespace)  # type: ignore[arg-type]
    if manifests.affinity is not None:
        for path in cluster.hosts:
            host = HostProfile.load(path)
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
    from cudabox import kube

    applied = kube.apply(manifests, namespace=cluster.namespace)
    for name in applied.objects:
        print(name)
    progress(
        f"cudabox: submitted; follow it with `kubectl logs -f job/{spec.name}"
        f"{' -n ' + cluster.namespace if cluster.namespace else ''}`"
    )
    return int(ExitCode.OK)
