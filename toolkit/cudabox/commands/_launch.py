"""What `run` and `train` share at the edge: the arguments as typed options, the target chosen
and checked, and the target built with its adapters opened."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from cudabox.choice import (
    Candidates,
    catalog_candidates,
    is_reference,
    project_candidates,
    registry_candidates,
    registry_project_candidates,
    require_visible_gpu,
)
from cudabox.cluster import ClusterOptions
from cudabox.errors import Unavailable, UsageError
from cudabox.host import HostProfile
from cudabox.images.catalog import load_catalog
from cudabox.jobs.spec import Rendezvous
from cudabox.launch import (
    NODE_NAME_VARIABLE,
    LaunchOptions,
    node_rank,
    parse_gpus,
    parse_mount,
    workspace_from,
)
from cudabox.options import (
    DEFAULT_SHM,
    REGISTRY_ENV,
    parse_pairs,
    parse_size,
    parse_ulimit,
    registry_settings,
)
from cudabox.output import progress
from cudabox.project.candidates import read_project_lock
from cudabox.project.declaration import Project, load_project
from cudabox.project.discover import project_folder
from cudabox.targets import TAKEN_BY, Target, TargetName, refuse_foreign, target_for

if TYPE_CHECKING:
    from cudabox.engine import Engine
    from cudabox.registry import RegistryClient

# The arguments' defaults where they are not empty (None, False, []): an option still at its
# default was not given. tests/launch/test_targets.py checks this against the parser.
_NOT_EMPTY_DEFAULTS: dict[str, object] = {
    "image": "auto",
    "shm_size": DEFAULT_SHM,
    "tag": "latest",
    "nnodes": 1,
    "nodes": 1,
    "launcher": "auto",
    "k8s_kind": "job",
}


def given_options(args: argparse.Namespace) -> list[str]:
    """The target-specific options given on the command line (not left at their defaults)."""
    given = []
    for flag in TAKEN_BY:
        dest = flag.lstrip("-").replace("-", "_")
        value = getattr(args, dest, None)
        # `is`, not `in (None, False)`: 0 == False, and `--gpus-per-node 0` is an option given.
        empty = value is None or value is False or value == []
        if not empty and value != _NOT_EMPTY_DEFAULTS.get(dest):
            given.append(flag)
    return given


def chosen_target(args: argparse.Namespace, here: bool = False) -> TargetName:
    """The target the arguments choose, refusing any option it does not take (exit 2)."""
    target = target_for(args.scheduler, here)
    refuse_foreign(target, given_options(args))
    return target


def project_of(args: argparse.Namespace, target: TargetName) -> Project | None:
    """The project whose images the job runs in: --project, else the current folder when it
    declares one; None with --no-project, and for `train --here` (no container)."""
    if target == "here":
        return None
    folder = project_folder(getattr(args, "project", None), getattr(args, "no_project", False))
    return load_project(folder) if folder is not None else None


def launch_options(
    args: argparse.Namespace, target: TargetName, project: Project | None = None
) -> LaunchOptions:
    """How the job starts, checked before anything starts. In a project, /workspace is the
    project's folder unless --workspace names another."""
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
    return LaunchOptions(
        framework=project.framework if project is not None else args.framework,
        image=args.image,
        gpus=args.gpus,
        cpu=args.cpu,
        dry_run=args.dry_run,
        build_missing=not args.no_build,
        shm_size=parse_size(args.shm_size, "--shm-size"),
        env=parse_pairs(args.env, "--env"),
        labels=parse_pairs(args.label, "--label"),
        ulimits=tuple(parse_ulimit(item) for item in args.ulimit),
        # Nothing is mounted here (train --here), so no workspace is needed.
        workspace=Path("/nonexistent")
        if target == "here"
        else (
            project.root
            if project is not None and args.workspace is None
            else workspace_from(args.workspace)
        ),
        mounts=tuple(parse_mount(item) for item in args.mount),
        nproc_per_node=nproc,
        nnodes=nnodes,
        rdzv=_rendezvous(args) if nnodes > 1 else None,
        registry=(args.registry or os.environ.get(REGISTRY_ENV) or "").rstrip("/") or None,
        registry_tag=registry_settings(args.tag, args.registry_ca)[0],
        registry_ca=args.registry_ca,
        skip_fit_check=bool(getattr(args, "skip_fit_check", False)),
    )


def _rendezvous(args: argparse.Namespace) -> Rendezvous:
    if not args.rdzv_endpoint:
        raise UsageError(
            f"--nnodes {args.nnodes} needs --rdzv-endpoint HOST:PORT (where the ranks meet)",
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
    return Rendezvous(
        host,
        int(port),
        args.rdzv_id or "cudabox",
        is_host=None if rank is None else rank == 0,
        local_addr=args.node_addr or os.environ.get(NODE_NAME_VARIABLE) or None,
    )


def cluster_options(args: argparse.Namespace) -> ClusterOptions:
    """How the job is asked of the cluster (--scheduler slurm|k8s)."""
    if args.cpu and args.gpus_per_node:
        raise UsageError("--cpu and --gpus-per-node contradict each other", "drop one of them")
    return ClusterOptions(
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


# ---- the target, with its adapters opened ------------------------------------------------------


def _probe() -> HostProfile:
    from cudabox.nvml import probe  # NVML's bindings load only when this host is probed

    return probe()


@contextmanager
def opened_target(
    target: TargetName,
    args: argparse.Namespace,
    options: LaunchOptions,
    require_gpu: bool = False,
    project: Project | None = None,
) -> Iterator[Target]:
    """The target, its adapters opened for as long as the job runs, and closed after.

    Each target's modules are imported when it is chosen (start-up time: `train --here` loads no
    Docker SDK or HTTP stack, a local run no Slurm or Kubernetes code).
    """
    if target == "here":
        from cudabox.targets.here import HereTarget

        yield HereTarget(_probe() if require_gpu else None)
        return
    from cudabox.registry import RegistryClient

    with ExitStack() as stack:
        reference = is_reference(options.image)
        registry = None
        if options.registry or reference:
            registry = stack.enter_context(RegistryClient(ca_bundle=options.registry_ca))
        if target == "local":
            from cudabox.targets.local import LocalTarget

            host = _probe()
            if require_gpu:  # at once, before the engine: a GPU run never falls back to the CPU
                require_visible_gpu(options.framework, host)
            candidates = _candidates(options, registry, project)
            engine = _connect(options.dry_run)
            if engine is not None:
                stack.callback(engine.close)
            yield LocalTarget(engine, host, candidates, registry)
            return
        cluster = cluster_options(args)
        hosts = tuple(HostProfile.load(p) for p in cluster.hosts) or (_probe(),)
        candidates = _candidates(options, registry, project)
        # Only a named reference is read from the engine; without an engine, from its registry.
        engine = _connect(dry_run=True) if reference else None
        if engine is not None:
            stack.callback(engine.close)
        if target == "slurm":
            from cudabox import slurm
            from cudabox.targets.slurm import SlurmTarget

            yield SlurmTarget(cluster, hosts, candidates, slurm, engine, registry)
        else:
            from cudabox import kube
            from cudabox.targets.kubernetes import KubernetesTarget

            yield KubernetesTarget(cluster, hosts, candidates, kube, engine, registry)


def _candidates(
    options: LaunchOptions, registry: RegistryClient | None, project: Project | None = None
) -> Candidates:
    """The catalog's images, or the project's; with --registry (when the image is chosen) those
    the registry holds, pulled by digest once chosen."""
    catalog = load_catalog()
    lock = read_project_lock(project) if project is not None else None
    if registry is None or not options.registry or options.image != "auto":
        if project is not None and lock is not None:
            return project_candidates(project, lock, catalog)
        return catalog_candidates(catalog)
    if project is not None and lock is not None:  # as `cudabox publish` pushed them
        found = registry_project_candidates(project, lock, catalog, registry, options.registry)
    else:
        found = registry_candidates(
            catalog, registry, options.registry, options.registry_tag, options.framework
        )
    for note in found.notes:
        progress(f"cudabox: {note}")
    return found


def _connect(dry_run: bool) -> Engine | None:
    from cudabox.engine import Engine  # the Docker SDK loads only for a container target

    try:
        return Engine.connect()
    except Unavailable:
        if dry_run:
            return None  # a dry run only prints; it needs no engine
        raise
