"""`cudabox verify`: check that images hold what the catalog says, building them if missing.

Each verified image is compared layer by layer with the record it would replace (--record) or the
catalog's images/verified.json; --remove-after removes each image once verified.
"""

from __future__ import annotations

import argparse

from cudabox.commands.build import build_options
from cudabox.engine import Engine
from cudabox.errors import ExitCode
from cudabox.images.build import BUILD_READ_TIMEOUT_S, build_image, remove_built
from cudabox.images.catalog import load_catalog
from cudabox.images.labels import cudnn_text
from cudabox.images.record import (
    LayerComparison,
    Layers,
    compare_layers,
    read_record,
    record_entry,
    write_record,
)
from cudabox.images.targets import resolve_targets
from cudabox.images.verify import require_verified, verify_image
from cudabox.output import check_writable, human_bytes, print_json, progress, table


def cmd_verify(args: argparse.Namespace) -> int:
    catalog = load_catalog()
    specs = resolve_targets(catalog, args.targets)
    options = build_options(args)
    if args.record:
        # A record that cannot be written must fail now, not after an hour of builds.
        check_writable(args.record, "verified record")
    # The build is compared layer by layer with the record it would replace (or the catalog's).
    reference = args.record or catalog.root / "verified.json"
    previous = read_record(reference)
    rows = []
    comparisons: list[LayerComparison] = []
    with Engine.connect(read_timeout=BUILD_READ_TIMEOUT_S) as engine:
        for spec in specs:
            built = None
            if not engine.has_image(spec.tag):
                built = build_image(engine, spec, options, catalog.root)
            checked = verify_image(engine, spec, catalog.root, gpus=args.gpus)
            if not checked.ok and args.remove_after:
                stage = (
                    f" and its build stage {built.build_stage_id}"
                    if built and built.build_stage_id
                    else ""
                )
                progress(
                    f"verify {spec.name}: failed; kept {spec.tag}{stage} for inspection (docker rmi them when done)"
                )
            require_verified(checked)
            entry = record_entry(spec, checked, built, previous.get(spec.name))
            recorded = previous.get(spec.name)
            layers = compare_layers(
                spec.name, Layers.of(entry), Layers.of(recorded) if recorded else None
            )
            comparisons.append(layers)
            if args.record:
                write_record(args.record, {spec.name: entry})
                progress(f"verify {spec.name}: recorded in {args.record}")
            if args.remove_after:
                progress(f"verify {spec.name}: removing {spec.tag}")
                remove_built(engine, spec.tag, built)
            rows.append({"name": spec.name, **entry, "layers": layers.to_json()})
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
