"""The Kubernetes target: an Indexed Job, a JobSet or a TrainJob, applied with kubectl."""

from __future__ import annotations

from dataclasses import dataclass, replace
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
from cudabox.errors import UsageError
from cudabox.host import HostProfile
from cudabox.images.catalog import ImageSpec
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
        request = replace(
            image_request(job.framework, job.launch, self.cluster),
            skip_fit_check=job.launch.skip_fit_check,
        )
        choice = choose(
            request,
            self.hosts,
            self.candidates,
            engine=self.engine,
            registry=self.registry,
            hosts_text=hosts_text(self.cluster),
        )
        refuse_unbaked(choice.image, self.candidates)
        # The pod writes to its own disk: nothing comes back to summarise.
        spec = job_spec(job.framework, job.launch, self.cluster, choice, job.program, None)
        progress(f"cudabox: image {spec.image.name} ({spec.image_ref}): {choice.why}")
        for warning in choice.warnings:
            progress(f"cudabox: warning: {warning}")
        code = submit_kubernetes(spec, job.launch, self.cluster, self.hosts, self.kube)
        return Outcome(code, "k8s job", "see above", finished=False)


def refuse_unbaked(image: ImageSpec, candidates: Candidates) -> None:
    """A pod has no /workspace of the caller's: a project image without its code baked in
    would start without the code, so it is refused (exit 2) before anything is submitted."""
    project = candidates.project
    if image.project is None or project is None or project.project.settings.bake:
        return
    raise UsageError(
        f"the project {image.project}'s code is mounted at /workspace by `cudabox run`, and a "
        "Kubernetes pod has no mount of this folder: the job would run without the code",
        "set `bake = true` in [tool.cudabox] (the code goes into the image's last layer), then "
        "`cudabox build` and `cudabox publish` in the project folder, and submit again",
    )
