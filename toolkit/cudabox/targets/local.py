"""The local target: a container on this host's engine (Docker, or Podman's Docker API)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cudabox.choice import Candidates, Request, choose
from cudabox.container import Mount
from cudabox.errors import UsageError
from cudabox.host import HostProfile
from cudabox.launch import OUT_DIR, launch
from cudabox.resolver import Flavor
from cudabox.targets import Job, Outcome, TargetName

if TYPE_CHECKING:
    from cudabox.engine import Engine
    from cudabox.registry import RegistryClient


@dataclass(frozen=True)
class LocalTarget:
    engine: Engine | None  # None: a dry run on a host without an engine
    host: HostProfile  # this host, as NVML sees it
    candidates: Candidates
    registry: RegistryClient | None = None  # reads an --image reference the engine lacks

    @property
    def name(self) -> TargetName:
        return "local"

    def out_dir(self, out: Path) -> str:
        return OUT_DIR  # `out` is mounted there

    def run(self, job: Job) -> Outcome:
        options = job.launch
        flavor: Flavor = "cpu" if options.cpu else ("cuda" if job.require_gpu else "auto")
        request = Request(
            job.framework,
            options.image,
            flavor,
            require_gpu=job.require_gpu,
            skip_fit_check=options.skip_fit_check,
        )
        choice = choose(
            request, [self.host], self.candidates, engine=self.engine, registry=self.registry
        )
        if job.workload and choice.image.framework != job.framework:
            raise UsageError(
                f"--image {options.image} is a {choice.image.framework} image; the "
                f"{job.framework} workload cannot run in it",
                f"name a {job.framework} image, or drop --image",
            )
        mounts = (Mount(str(job.out), OUT_DIR),) if job.out is not None else ()
        code = launch(
            self.engine,
            options,
            choice,
            job.program,
            mounts,
            job.to_stderr,
            self.candidates.project,
        )
        return Outcome(code, choice.image.name, choice.why)
