"""The Slurm target: an sbatch job on the cluster, followed to its end."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from cudabox.choice import Candidates, LabelledImages, choose
from cudabox.cluster import (
    ClusterOptions,
    SlurmApi,
    hosts_text,
    image_request,
    job_spec,
    submit_slurm,
)
from cudabox.host import HostProfile
from cudabox.output import progress
from cudabox.targets import Job, Outcome, TargetName

if TYPE_CHECKING:
    from cudabox.registry import RegistryClient


@dataclass(frozen=True)
class SlurmTarget:
    cluster: ClusterOptions
    hosts: tuple[HostProfile, ...]  # the nodes' profiles (--host), else this host's
    candidates: Candidates
    slurm: SlurmApi  # the `cudabox.slurm` adapter
    engine: LabelledImages | None = None  # reads an --image reference, when one is named
    registry: RegistryClient | None = None

    @property
    def name(self) -> TargetName:
        return "slurm"

    def out_dir(self, out: Path) -> str:
        return str(out)  # a shared folder: every node writes where the submit host reads

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
        spec = job_spec(job.framework, job.launch, self.cluster, choice, job.program, job.out)
        progress(f"cudabox: image {spec.image.name} ({spec.image_ref}): {choice.why}")
        for warning in choice.warnings:
            progress(f"cudabox: warning: {warning}")
        code = submit_slurm(spec, job.launch, self.cluster, job.out, self.slurm)
        return Outcome(code, "slurm job", "see above")
