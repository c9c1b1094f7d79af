"""`cudabox select`: judge every image on this host (or the hosts given) and pick the newest fit.

No engine or registry is opened unless --local or --registry asks for their images. In a project
folder (or with --project) the candidates are the project's images, judged with the GPU code of
the extensions its cudabox.lock adds.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from cudabox.choice import (
    catalog_candidates,
    engine_candidates,
    project_candidates,
    registry_candidates,
    selection,
)
from cudabox.commands._shared import hosts_from_files
from cudabox.errors import ExitCode, NoImageFits, UsageError
from cudabox.images.catalog import load_catalog
from cudabox.options import REGISTRY_ENV, registry_settings
from cudabox.output import print_json, progress, table
from cudabox.project.candidates import read_project_lock
from cudabox.project.declaration import load_project
from cudabox.project.discover import project_folder
from cudabox.resolver import Flavor, Selection


@dataclass(frozen=True)
class SelectOptions:
    framework: str | None  # None: the project's (outside a project, an error)
    flavor: Flavor
    hosts: tuple[Path, ...]
    local: bool = False
    registry: str | None = None
    tag: str = "latest"
    registry_ca: Path | None = None
    json: bool = False
    project: Path | None = None  # the project folder whose images are the candidates

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SelectOptions:
        registry_settings(getattr(args, "tag", "latest"), getattr(args, "registry_ca", None))
        return cls(
            framework=args.framework,
            flavor=args.flavor,
            hosts=tuple(args.host),
            local=bool(getattr(args, "local", False)),
            registry=getattr(args, "registry", None) or os.environ.get(REGISTRY_ENV) or None,
            tag=getattr(args, "tag", "latest"),
            registry_ca=getattr(args, "registry_ca", None),
            json=bool(getattr(args, "json", False)),
            project=project_folder(
                getattr(args, "project", None), bool(getattr(args, "no_project", False))
            ),
        )


def cmd_select(args: argparse.Namespace) -> int:
    options = SelectOptions.from_args(args)
    selection = selection_for(options)
    if options.json:
        print_json(selection.to_json())
    else:
        print(render_selection(selection))
    if selection.selected is None:
        if not options.json:
            raise NoImageFits(selection.message or "no image fits", selection.fix)
        return ExitCode.NO_FIT
    return ExitCode.OK


def selection_for(options: SelectOptions) -> Selection:
    catalog = load_catalog()
    framework = options.framework
    if options.project is not None:
        project = load_project(options.project)
        if framework not in (None, project.framework):
            raise UsageError(
                f"--framework {framework}, but the project {project.name} is a "
                f"{project.framework} project",
                "drop --framework in a project folder, or pass --no-project",
            )
        framework = project.framework
        candidates = project_candidates(project, read_project_lock(project), catalog)
        progress(f"cudabox: the images of the project {project.name} ({options.project})")
    elif framework is None:
        raise UsageError(
            "--framework is required outside a project folder",
            "pass --framework torch or --framework tensorflow",
        )
    elif options.registry:
        # Imported here: the HTTP stack, which `cudabox select` without --registry skips.
        from cudabox.registry import RegistryClient

        with RegistryClient(ca_bundle=options.registry_ca) as client:
            candidates = registry_candidates(
                catalog, client, options.registry, options.tag, framework
            )
    elif options.local:
        # Imported here: the Docker SDK, which `cudabox select` without --local skips.
        from cudabox.engine import Engine

        with Engine.connect(read_timeout=30) as engine:
            candidates = engine_candidates(catalog, engine)
    else:
        candidates = catalog_candidates(catalog)
    for note in candidates.notes:
        progress(f"cudabox: {note}")
    hosts = hosts_from_files(options.hosts)
    return selection(candidates, hosts, framework, options.flavor)


def render_selection(selection: Selection) -> str:
    fleet = len(selection.hosts) > 1
    rows = []
    for verdict in selection.verdicts:
        mark = "fits" if verdict.fits else "no"
        why = "; ".join(r.render(fleet) for r in verdict.reasons) or "-"
        image = verdict.image
        # A project image is named by its tag: the project on that catalog image.
        shown = image.tag if image.project else image.name
        rows.append([shown, image.flavor, str(image.cuda or "-"), mark, why])
    text = table(["image", "flavor", "CUDA", "fits", "reasons"], rows)
    if selection.selected:
        text += f"\n\nselected: {selection.selected.name} ({selection.selected.tag})"
    return text
