"""`cudabox select`: judge every image on this host (or the hosts given) and pick the newest fit.

No engine or registry is opened unless --local or --registry asks for their images.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, replace
from pathlib import Path

from cudabox.commands._hosts import hosts_from_files
from cudabox.errors import CudaboxError, ExitCode, NoImageFits
from cudabox.images.catalog import Catalog, load_catalog
from cudabox.options import REGISTRY_ENV, registry_settings
from cudabox.output import print_json, progress, table
from cudabox.resolver import Flavor, Selection, select


@dataclass(frozen=True)
class SelectOptions:
    framework: str
    flavor: Flavor
    hosts: tuple[Path, ...]
    local: bool = False
    registry: str | None = None
    tag: str = "latest"
    registry_ca: Path | None = None
    json: bool = False

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
    if options.registry:
        # Imported here: the HTTP stack, which `cudabox select` without --registry skips.
        from cudabox.images.publish import registry_catalog

        catalog = registry_catalog(
            catalog, options.registry, options.tag, options.registry_ca, options.framework
        )
    elif options.local:
        catalog = _with_local_images(catalog)
    return select(catalog, hosts_from_files(options.hosts), options.framework, options.flavor)


def _with_local_images(catalog: Catalog) -> Catalog:
    """The catalog plus the engine's cudabox-labelled images that it does not already name."""
    # Imported here: the Docker SDK, which `cudabox select` without --local skips.
    from cudabox.engine import Engine
    from cudabox.images.labels import spec_from_labels

    known = {image.tag for image in catalog.images}
    extra = []
    with Engine.connect(read_timeout=30) as engine:
        for info in engine.images_with_label("cudabox.image"):
            tag = info.tags[0]
            if tag in known:
                continue
            try:
                spec = spec_from_labels(info.labels, tag)
            except CudaboxError as exc:
                progress(f"cudabox: skipping {tag}: {exc.message}")
                continue
            extra.append(replace(spec, name=f"{spec.name}@{tag}", tag=tag))
    return replace(catalog, images=(*catalog.images, *extra))


def render_selection(selection: Selection) -> str:
    fleet = len(selection.hosts) > 1
    rows = []
    for verdict in selection.verdicts:
        mark = "fits" if verdict.fits else "no"
        why = "; ".join(r.render(fleet) for r in verdict.reasons) or "-"
        rows.append(
            [verdict.image.name, verdict.image.flavor, str(verdict.image.cuda or "-"), mark, why]
        )
    text = table(["image", "flavor", "CUDA", "fits", "reasons"], rows)
    if selection.selected:
        text += f"\n\nselected: {selection.selected.name} ({selection.selected.tag})"
    return text
