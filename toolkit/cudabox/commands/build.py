"""`cudabox build`: build catalog images and check what is inside them (unless --no-verify).

With no TARGET in a project folder (or with --project DIR), it builds the project's image on the
catalog image that fits this host, on each --image NAME, or on every image of the lock
(--all-images): cudabox.project.building.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cudabox.commands._shared import package_sources
from cudabox.engine import Engine
from cudabox.errors import ExitCode, UsageError
from cudabox.images.build import BUILD_READ_TIMEOUT_S, build_image
from cudabox.images.catalog import load_catalog
from cudabox.images.context import BuildOptions
from cudabox.images.targets import resolve_targets
from cudabox.images.verify import require_verified, verify_image
from cudabox.output import human_bytes, print_json, progress, table


def build_options(args: argparse.Namespace) -> BuildOptions:
    """The package sources and cache choice `build` and `verify` share."""
    sources = package_sources(args)
    return BuildOptions(sources, nocache=args.no_cache)


def cmd_build(args: argparse.Namespace) -> int:
    if not args.targets:
        from cudabox.project.discover import project_folder  # only a project build needs it

        folder = project_folder(args.project, args.no_project)
        if folder is not None:
            return _build_project(args, folder)
    elif args.project is not None or args.image or args.all_images:
        raise UsageError(
            "TARGET builds catalog images; --project, --image and --all-images build a project",
            "drop the TARGET to build the project, or the project options to build the images",
        )
    catalog = load_catalog()
    specs = resolve_targets(catalog, args.targets)
    options = build_options(args)
    rows = []
    with Engine.connect(read_timeout=BUILD_READ_TIMEOUT_S) as engine:
        for spec in specs:
            built = build_image(engine, spec, options, catalog.root)
            entry: dict[str, Any] = asdict(built)
            if not args.no_verify:
                checked = verify_image(engine, spec, catalog.root)
                require_verified(checked)
                entry["verified"] = True
                entry["overhead_pct"] = checked.overhead_pct
            rows.append(entry)
    if args.json:
        print_json(rows)
        return ExitCode.OK
    print(
        table(
            ["image", "tag", "seconds", "size", "cached steps", "verified"],
            [
                [
                    r["name"],
                    r["tag"],
                    r["seconds"],
                    human_bytes(r["size"]) if r["size"] else "-",
                    r["cached_steps"],
                    "yes" if r.get("verified") else "no",
                ]
                for r in rows
            ],
        )
    )
    return ExitCode.OK


def _build_project(args: argparse.Namespace, folder: Path) -> int:
    """The project's image on the image that fits this host, each --image, or --all-images."""
    from dataclasses import replace

    from cudabox.choice import Candidates, Request, choose
    from cudabox.project.building import ensure_project_image
    from cudabox.project.candidates import project_specs, read_project_lock
    from cudabox.project.declaration import load_project

    catalog = load_catalog()
    project = load_project(folder)
    lock = read_project_lock(project)
    # The locked candidates as the resolver judges them (with their extensions; current lock
    # only), and the catalog images they are built on.
    judged = project_specs(project, lock, catalog)
    locked = [catalog.get(spec.name) for spec in judged]
    if args.image:
        names = {spec.name for spec in locked}
        unknown = [name for name in args.image if name not in names]
        if unknown:
            raise UsageError(
                f"--image {unknown[0]}: not one of the project's locked images",
                f"use one of: {', '.join(sorted(names))} (or add it to [tool.cudabox] images "
                "and run `cudabox lock`)",
            )
        specs = [spec for spec in locked if spec.name in args.image]
    elif args.all_images:
        specs = locked
    else:
        from cudabox.nvml import probe  # NVML: only when the host decides

        choice = choose(
            Request(project.framework), [probe()], Candidates(replace(catalog, images=judged))
        )
        progress(f"project {project.name}: {choice.image.name}, {choice.why}")
        specs = [next(spec for spec in locked if spec.name == choice.image.name)]
    options = build_options(args)
    rows = []
    with Engine.connect(read_timeout=BUILD_READ_TIMEOUT_S) as engine:
        for spec in specs:
            built = ensure_project_image(
                engine, project, lock, spec, options, bake=args.bake, nocache=args.no_cache
            )
            rows.append(asdict(built))
    if args.json:
        print_json(rows)
        return ExitCode.OK
    print(
        table(
            ["image", "tag", "seconds", "size", "added", "baked", "built"],
            [
                [
                    r["image"],
                    r["tag"],
                    r["seconds"],
                    human_bytes(r["size"]),
                    human_bytes(r["added_bytes"]),
                    "yes" if r["baked"] else "no",
                    "yes" if r["built"] else "no (up to date)",
                ]
                for r in rows
            ],
        )
    )
    return ExitCode.OK
