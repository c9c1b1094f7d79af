"""The light commands: `probe`, `select` and `images` (no engine unless --local or --registry)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from cudabox.errors import CudaboxError, ExitCode, NoImageFits
from cudabox.host import HostProfile
from cudabox.output import print_json, progress, table

if TYPE_CHECKING:  # `cudabox probe` imports none of these: each command pays for what it uses
    from cudabox.images.catalog import Catalog
    from cudabox.resolver import Flavor, Selection


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
        from cudabox.options import REGISTRY_ENV, registry_settings

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


def hosts_from_files(files: Sequence[Path]) -> list[HostProfile]:
    """Host profiles read from files, or this host's own probe when none are named."""
    if files:
        return [HostProfile.load(path) for path in files]
    from cudabox.nvml import probe

    return [probe()]


def selection_for(options: SelectOptions) -> Selection:
    from cudabox.images.catalog import load_catalog
    from cudabox.resolver import select

    catalog = load_catalog()
    if options.registry:
        from cudabox.images.publish import registry_catalog

        catalog = registry_catalog(
            catalog, options.registry, options.tag, options.registry_ca, options.framework
        )
    elif options.local:
        catalog = with_local_images(catalog)
    return select(catalog, hosts_from_files(options.hosts), options.framework, options.flavor)


def with_local_images(catalog: Catalog) -> Catalog:
    """The catalog plus the engine's cudabox-labelled images that it does not already name."""
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


def cmd_probe(args: argparse.Namespace) -> int:
    from cudabox.nvml import probe

    profile = probe()
    if args.json:
        print_json(profile.to_json())
    else:
        print(render_profile(profile))
    if profile.status == "error":
        return ExitCode.UNAVAILABLE
    return ExitCode.OK


def render_profile(profile: HostProfile) -> str:
    lines = [
        f"host:    {profile.name}",
        f"driver:  {profile.driver_version or '-'}  (CUDA {profile.cuda_driver_version or '-'})",
    ]
    if profile.status != "ok" or profile.message:
        lines.append(f"status:  {profile.status}: {profile.message}")
        if profile.fix:
            lines.append(f"fix:     {profile.fix}")
    if profile.gpus:
        rows = []
        for g in profile.gpus:
            mig = f"on ({len(g.mig_devices)} instances)" if g.mig_enabled else "off"
            memory = f"{g.memory_total_mib} MiB" if g.memory_total_mib is not None else "-"
            rows.append(
                [
                    g.index,
                    g.name or f"error: {g.error}",
                    g.compute_capability or "-",
                    memory,
                    mig,
                    "yes" if g.visible else "no",
                ]
            )
        lines += ["", table(["GPU", "name", "CC", "memory", "MIG", "visible"], rows)]
    return "\n".join(lines)


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


def cmd_images(args: argparse.Namespace) -> int:
    from cudabox.images.catalog import load_catalog

    catalog = load_catalog()
    if args.json:
        print_json(
            [
                {
                    "name": i.name,
                    "framework": i.framework,
                    "framework_version": i.framework_version,
                    "flavor": i.flavor,
                    "cuda": str(i.cuda) if i.cuda else None,
                    "cudnn": i.cudnn,
                    "sass_archs": [str(a) for a in i.sass_archs],
                    "ptx_archs": [str(a) for a in i.ptx_archs],
                    "min_driver": str(i.min_driver) if i.min_driver else None,
                    "tag": i.tag,
                }
                for i in catalog.images
            ]
        )
        return ExitCode.OK
    rows = [
        [
            i.name,
            i.framework_version,
            i.flavor,
            str(i.cuda or "-"),
            i.cudnn or "-",
            " ".join(str(a) for a in i.sass_archs) or "-",
            " ".join(str(a) for a in i.ptx_archs) or "-",
            str(i.min_driver or "-"),
        ]
        for i in catalog.images
    ]
    print(table(["image", "version", "flavor", "CUDA", "cuDNN", "SASS", "PTX", "min driver"], rows))
    return ExitCode.OK
