"""`cudabox pull`: pre-pull for a fleet, by digest, after judging the images in the registry.

Named targets are pulled as published; without targets, the image that fits this host.
"""

from __future__ import annotations

import argparse

from cudabox.choice import Request, choose, registry_candidates
from cudabox.commands._registry import registry_from
from cudabox.engine import Engine
from cudabox.errors import ExitCode, NotFound
from cudabox.images.catalog import Catalog, ImageSpec, load_catalog
from cudabox.images.publish import pull_judged
from cudabox.images.targets import resolve_targets
from cudabox.nvml import probe
from cudabox.options import registry_settings
from cudabox.output import print_json, progress, table
from cudabox.registry import RegistryClient


def cmd_pull(args: argparse.Namespace) -> int:
    repo = registry_from(args.registry)
    tag, ca = registry_settings(args.tag, args.registry_ca)
    catalog = load_catalog()
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
