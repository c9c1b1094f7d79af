"""`cudabox build`: build catalog images and check what is inside them (unless --no-verify)."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Any

from cudabox.engine import Engine
from cudabox.errors import ExitCode
from cudabox.images.build import BUILD_READ_TIMEOUT_S, build_image
from cudabox.images.catalog import load_catalog
from cudabox.images.context import BuildOptions
from cudabox.images.targets import resolve_targets
from cudabox.images.verify import require_verified, verify_image
from cudabox.options import PackageSources
from cudabox.output import human_bytes, print_json, table


def build_options(args: argparse.Namespace) -> BuildOptions:
    """The package sources and cache choice `build` and `verify` share."""
    sources = PackageSources.resolve(
        ca_cert=args.ca_cert,
        index_url=args.index_url,
        wheelhouses=args.wheelhouse,
        host_pip=args.host_pip,
    )
    return BuildOptions(sources, nocache=args.no_cache)


def cmd_build(args: argparse.Namespace) -> int:
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
