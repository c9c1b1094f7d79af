"""`cudabox publish`: push built and verified images to a registry.

In a project folder (or with --project), the project's images: each pushed as
REPO/<project>:<catalog image>, rebuilt first when its lock, base or recipe moved on.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path

from cudabox.choice import ProjectImages, project_candidates
from cudabox.commands._registry import registry_from
from cudabox.commands._shared import package_sources
from cudabox.engine import Engine
from cudabox.errors import ExitCode, Unavailable, UsageError
from cudabox.images.build import BUILD_READ_TIMEOUT_S
from cudabox.images.catalog import Catalog, ImageSpec, load_catalog
from cudabox.images.context import BuildOptions
from cudabox.images.publish import publish_image
from cudabox.images.remote import image_reference
from cudabox.images.targets import resolve_targets
from cudabox.options import PackageSources, registry_settings
from cudabox.output import print_json, table
from cudabox.progress import TransferProgress
from cudabox.project.building import ensure_project_image
from cudabox.project.candidates import read_project_lock
from cudabox.project.declaration import load_project
from cudabox.project.discover import project_folder
from cudabox.registry import RegistryClient


def cmd_publish(args: argparse.Namespace) -> int:
    repo = registry_from(args.registry)
    _, ca = registry_settings(args.tag, args.registry_ca)
    sources = package_sources(args)
    catalog = load_catalog()
    folder = project_folder(getattr(args, "project", None), getattr(args, "no_project", False))
    if folder is not None:
        return _publish_project(args, folder, catalog, repo, ca, sources)
    specs = resolve_targets(catalog, args.targets)
    with (
        Engine.connect(read_timeout=BUILD_READ_TIMEOUT_S) as engine,
        RegistryClient(ca_bundle=ca) as client,
    ):
        results = [
            publish_image(engine, spec, repo, catalog.root, sources, client) for spec in specs
        ]
    if args.json:
        print_json([asdict(r) for r in results])
        return int(ExitCode.OK)
    rows = [
        [
            r.name,
            r.pinned,
            r.immutable.rpartition(":")[2],
            f"{r.layers_uploaded}/{r.layers}",
            "yes" if r.immutable_existed else "no",
        ]
        for r in results
    ]
    print(table(["image", "pinned", "immutable tag", "layers uploaded", "was there"], rows))
    return int(ExitCode.OK)


# ---- a project's images --------------------------------------------------------------------------


@dataclass(frozen=True)
class ProjectPublished:
    image: str  # the catalog image it is built on
    reference: str  # REPO/<project>:<image>
    digest: str
    pinned: str  # REPO/<project>@sha256:...
    baked: bool  # the code is in the image (what a Kubernetes pod needs)
    built: bool  # built (or rebuilt) before the push


def _publish_project(
    args: argparse.Namespace,
    folder: Path,
    catalog: Catalog,
    repo: str,
    ca: Path | None,
    sources: PackageSources,
) -> int:
    project = load_project(folder)
    candidates = project_candidates(project, read_project_lock(project), catalog)
    assert candidates.project is not None
    specs = _named_project_images(candidates.catalog.images, args.targets)
    with (
        Engine.connect(read_timeout=BUILD_READ_TIMEOUT_S) as engine,
        RegistryClient(ca_bundle=ca) as client,
    ):
        if not args.targets:
            # Without names: the images built here (a CUDA base is not built just to publish).
            specs = [s for s in specs if engine.image(s.tag) is not None]
            if not specs:
                raise Unavailable(
                    f"no image of the project {project.name} is built on this engine",
                    "run `cudabox build` in the project folder first, or name the images: "
                    f"`cudabox publish IMAGE --registry {repo}`",
                )
        results = [
            publish_project_image(engine, client, candidates.project, spec, repo, sources)
            for spec in specs
        ]
    if args.json:
        print_json([asdict(r) for r in results])
        return int(ExitCode.OK)
    rows = [[r.image, r.pinned, "yes" if r.baked else "no"] for r in results]
    print(table(["image", "pinned", "code baked"], rows))
    return int(ExitCode.OK)


def _named_project_images(specs: tuple[ImageSpec, ...], targets: list[str]) -> list[ImageSpec]:
    """The project images on the catalog images named (all of them when none are)."""
    if not targets:
        return list(specs)
    names = {s.base_name: s for s in specs}
    unknown = [t for t in targets if t not in names]
    if unknown:
        raise UsageError(
            f"the project has no image on {', '.join(unknown)}",
            f"name one of its images: {', '.join(n for n in names if n)}",
        )
    return [names[t] for t in targets]


def publish_project_image(
    engine: Engine,
    client: RegistryClient,
    images: ProjectImages,
    spec: ImageSpec,
    repo: str,
    sources: PackageSources,
) -> ProjectPublished:
    """Push the project image of `spec` (made current first) as REPO/<project>:<image>."""
    build = ensure_project_image(
        engine, images.project, images.lock, images.base(spec), BuildOptions(sources)
    )
    ref = image_reference(repo, images.project.image_name, images.base(spec).name)
    bar = TransferProgress(f"push {ref}")
    engine.tag(build.tag, str(ref))
    try:
        digest = engine.push(str(ref), events=bar)
    finally:
        engine.remove_image(str(ref))  # only the tag: the image stays as the project's tag
    bar.finish()
    if digest is None:
        digest = client.image(ref).digest
    return ProjectPublished(
        image=build.image,
        reference=str(ref),
        digest=digest,
        pinned=str(ref.pinned(digest)),
        baked=build.baked,
        built=build.built,
    )
