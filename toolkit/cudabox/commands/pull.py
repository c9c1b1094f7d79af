"""`cudabox pull`: pre-pull for a fleet, by digest, after judging the images in the registry.

Named targets are pulled as published; without targets, the image that fits this host. In a
project folder (or with --project), the project's images as `cudabox publish` pushed them
(REPO/<project>:<image>), tagged as the project's own once pulled, so `cudabox run` takes them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cudabox.choice import Request, choose, registry_candidates, registry_project_candidates
from cudabox.commands._registry import registry_from
from cudabox.engine import Engine
from cudabox.errors import ExitCode, NotFound, UsageError
from cudabox.images.catalog import Catalog, ImageSpec, load_catalog
from cudabox.images.publish import pull_judged
from cudabox.images.targets import resolve_targets
from cudabox.nvml import probe
from cudabox.options import registry_settings
from cudabox.output import print_json, progress, table
from cudabox.project.building import project_tag
from cudabox.project.candidates import read_project_lock
from cudabox.project.declaration import load_project
from cudabox.project.discover import project_folder
from cudabox.registry import RegistryClient


def cmd_pull(args: argparse.Namespace) -> int:
    repo = registry_from(args.registry)
    tag, ca = registry_settings(args.tag, args.registry_ca)
    catalog = load_catalog()
    folder = project_folder(getattr(args, "project", None), getattr(args, "no_project", False))
    if folder is not None:
        return _pull_project(args, folder, catalog, repo, ca)
    with RegistryClient(ca_bundle=ca) as client:
        if args.targets:
            chosen = _named(catalog, args.targets, client, repo, tag)
        else:
            candidates = registry_candidates(catalog, client, repo, tag, args.framework)
            _show(candidates.notes)
            request = Request(framework=args.framework, flavor=args.flavor)
            chosen = [choose(request, [probe()], candidates).image]
    with Engine.connect(read_timeout=600) as engine:
        for spec in chosen:
            pull_judged(engine, spec)
    rows = [{"name": s.name, "pinned": s.tag} for s in chosen]
    if args.json:
        print_json(rows)
    else:
        print(table(["image", "pinned"], [[r["name"], r["pinned"]] for r in rows]))
    return int(ExitCode.OK)


def _named(
    catalog: Catalog, targets: list[str], client: RegistryClient, repo: str, tag: str
) -> list[ImageSpec]:
    """The registry's images of the named targets, each pinned to its digest, or NotFound."""
    named = Catalog(images=tuple(resolve_targets(catalog, targets)), root=catalog.root)
    candidates = registry_candidates(named, client, repo, tag, framework=None)
    _show(candidates.notes)
    wanted = {s.name for s in named.images}
    chosen = [s for s in candidates.catalog.images if s.name in wanted]
    missing = sorted(wanted - {s.name for s in chosen})
    if missing:
        raise NotFound(
            f"{repo} has no usable {', '.join(missing)} under tag {tag!r}",
            f"publish it: `cudabox publish {' '.join(missing)} --registry {repo}`",
        )
    return chosen


def _show(notes: tuple[str, ...]) -> None:
    for note in notes:
        progress(f"cudabox: {note}")


# ---- a project's images --------------------------------------------------------------------------


def _pull_project(
    args: argparse.Namespace, folder: Path, catalog: Catalog, repo: str, ca: Path | None
) -> int:
    """The project image that fits this host (or the ones named), judged from the registry's
    labels before any layer moves, pulled by digest and tagged as the project's image."""
    if args.targets:
        raise UsageError(
            "in a project folder, pull chooses the project's image that fits this host",
            "drop the image names (or pass --no-project to pull catalog images)",
        )
    project = load_project(folder)
    with RegistryClient(ca_bundle=ca) as client:
        candidates = registry_project_candidates(
            project, read_project_lock(project), catalog, client, repo
        )
    _show(candidates.notes)
    request = Request(framework=project.framework, flavor=args.flavor)
    chosen = choose(request, [probe()], candidates)
    progress(f"cudabox: {chosen.image.tag}: {chosen.why}")
    local = project_tag(project.image_name, chosen.image.base_name or chosen.image.name)
    with Engine.connect(read_timeout=600) as engine:
        pull_judged(engine, chosen.image)
        engine.tag(chosen.image.tag, local)
    rows = [{"name": chosen.image.name, "pinned": chosen.image.tag, "tag": local}]
    if args.json:
        print_json(rows)
    else:
        print(
            table(["image", "pinned", "tagged"], [[r["name"], r["pinned"], r["tag"]] for r in rows])
        )
    return int(ExitCode.OK)
