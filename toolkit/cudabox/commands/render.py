"""`cudabox render`: write each image's Dockerfile from the template and its lock (or --check)."""

from __future__ import annotations

import argparse

from cudabox.errors import ExitCode
from cudabox.images.catalog import load_catalog
from cudabox.images.render import RenderOptions, render_all
from cudabox.images.targets import resolve_targets
from cudabox.output import progress


def cmd_render(args: argparse.Namespace) -> int:
    options = RenderOptions(tuple(args.targets), bool(args.check))
    catalog = load_catalog()
    specs = resolve_targets(catalog, options.targets, empty_means_all=True)
    changed = render_all(specs, catalog.root, options.check)
    root = catalog.root.parent
    for path in changed:
        shown = path.relative_to(root) if path.is_relative_to(root) else path
        if options.check:
            progress(
                f"render: {shown} is not what `cudabox render` writes from the template and its lock"
            )
        else:
            progress(f"render: wrote {shown}")
    if options.check and changed:
        progress("fix: run `cudabox render` (or `nox -s render`) and commit the Dockerfiles")
        return int(ExitCode.FAILED)
    if not changed:
        progress(f"render: {len(specs)} Dockerfile(s) current")
    return int(ExitCode.OK)
