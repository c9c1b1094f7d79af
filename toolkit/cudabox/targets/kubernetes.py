"""The Kubernetes target: an Indexed Job, a JobSet or a TrainJob, applied with kubectl."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cudabox.choice import Candidates, LabelledImages, choose
from cudabox.cluster import (
    POD_OUT,
    ClusterOptions,
    KubeApi,
    hosts_text,
    image_request,
    job_spec,
    submit_kubernetes,
)
from cudabox.host import HostProfile
from cudabox.output import progress
from cudabox.targets import Job, Outcome, TargetName

if TYPE_CHECKING:
    from cudabox.registry import RegistryClient


@dataclass(frozen=True)
class KubernetesTarget:
    cluster: ClusterOptions
    hosts: tuple[HostProfile, ...]  # the nodes' profiles (--host), else this host's
    candidates: Candidates
    kube: KubeApi  # the `cudabox.kube` adapter
    engine: LabelledImages | None = None  # reads an --image reference, when one is named
    registry: RegistryClient | None = None

    @property
    def name(self) -> TargetName:
        return "k8s"

    def out_dir(self, out: Path) -> str:
        return POD_OUT  # no shared folder: the pod's own disk

    def run(self, job: Job) -> Outcome:
        request = image_request(job.framework, job.launch, self.cluster)
        choice = choose(
            request,
            self.hosts,
            self.candidates,
            engine=self.engine,
            registry=self.registry,
            hosts_text=hosts_text(self.cluster),
        )
        # The pod writes to its own disk: nothing comes back to summarise.
        spec = job_spec(job.framework, job.launch, self.cluster, choice, job.program, None)
        progress(f"cudabox: image {spec.image.name} ({spec.image_ref}): {choice.why}")
        code = submit_kubernetes(spec, job.launch, self.cluster, self.hosts, self.kube)
        return Outcome(code, "k8s job", "see above", finished=False)
