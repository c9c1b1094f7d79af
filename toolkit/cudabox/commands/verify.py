"""`cudabox verify`: check that images hold what the catalog says, building them if missing."""

from __future__ import annotations

import argparse

from cudabox.commands.build import build_options
from cudabox.engine import Engine
from cudabox.errors import ExitCode
from cudabox.images.build import BUILD_READ_TIMEOUT_S
from cudabox.images.catalog import load_catalog
from cudabox.images.labels import cudnn_text
from cudabox.images.targets import resolve_targets
from cudabox.images.verifying import VerifyOptions, previous_record, verify_images
from cudabox.output import human_bytes, print_json, table


def cmd_verify(args: argparse.Namespace) -> int:
    catalog = load_catalog()
    specs = resolve_targets(catalog, args.targets)
    options = VerifyOptions(build_options(args), args.record, bool(args.remove_after), args.gpus)
    previous = previous_record(catalog.root, options)  # before the engine is even asked
    with Engine.connect(read_timeout=BUILD_READ_TIMEOUT_S) as engine:
        verified = verify_images(engine, specs, catalog.root, options, previous)
    rows = [{"name": v.name, **v.entry, "layers": v.layers.to_json()} for v in verified]
    comparisons = [v.layers for v in verified]
    if args.json:
        print_json(rows)
    else:
        print(
            table(
                [
                    "image",
                    "CUDA",
                    "cuDNN",
                    "size",
                    "packages",
                    "base",
                    "overhead",
                    "build s",
                    "units",
                ],
                [
                    [
                        r["name"],
                        r["reported"].get("cuda") or "-",
                        cudnn_text(r["reported"].get("cudnn")) or "-",
                        _size(r["image_bytes"]),
                        _size(r["packages_bytes"]),
                        _size(r["base_bytes"]),
                        f"{r['overhead_pct']}%" if r["overhead_pct"] is not None else "-",
                        r["build_seconds"] or "-",
                        f"{sum(v.startswith('ok') for v in r['units'].values())}/{len(r['units'])} ok",
                    ]
                    for r in rows
                ],
            )
        )
        for comparison in comparisons:
            print("\n".join(comparison.lines()))
    return ExitCode.OK


def _size(count: int | None) -> str:
    return human_bytes(count) if count else "-"
