"""`cudabox build` and `cudabox verify`: build catalog images and prove what is inside them.

A build assembles a small context (cudabox.images.context), builds it with the classic builder,
then runs the framework inside the image to check that it reports what the catalog and the labels
say (cudabox.images.verify) unless --no-verify.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cudabox.errors import EngineError, ExitCode
from cudabox.images.base import choose_base
from cudabox.images.catalog import ImageSpec, load_catalog
from cudabox.images.context import BuildOptions, build_args, build_context
from cudabox.images.labels import cudnn_text, labels_for, provenance_labels
from cudabox.images.lock import lock_digest
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
from cudabox.options import PackageSources
from cudabox.output import check_writable, print_json, progress, table

if TYPE_CHECKING:
    from cudabox.engine import Engine

# A build step can stay silent for minutes (installing or copying a 6 GB venv).
BUILD_READ_TIMEOUT_S = 3600


@dataclass(frozen=True)
class BuildResult:
    name: str
    tag: str
    image_id: str
    seconds: float
    size: int
    cached_steps: int
    build_stage_id: str | None  # the build stage's last layer (the venv before the copy)
    layers: tuple[tuple[str, str], ...] = ()  # (instruction, image id) per step


def build_image(
    engine: Engine,
    spec: ImageSpec,
    options: BuildOptions,
    images_dir: Path,
    tag: str | None = None,
    cudabox_src: Path | None = None,
) -> BuildResult:
    tag = tag or spec.tag
    base = choose_base(engine, spec)
    started = time.monotonic()
    progress(f"build {spec.name} -> {tag} (base {base.ref})")

    def show(line: str) -> None:
        if not options.quiet or line.startswith("Step "):
            progress(f"  {line}")

    labels = {
        **labels_for(spec, lock_digest(spec.lock)),
        **provenance_labels(base.ref, base.digest, images_dir.parent),
    }
    with build_context(spec, options, images_dir, labels, cudabox_src) as context:
        outcome = engine.build(
            context,
            tag,
            buildargs=build_args(spec, options, base.ref),
            nocache=options.nocache,
            progress=show,
        )
    seconds = round(time.monotonic() - started, 1)
    info = engine.image(tag)
    froms = [
        n for n, (instruction, _) in enumerate(outcome.layers) if instruction.startswith("FROM ")
    ]
    build_stage_id = outcome.layers[froms[1] - 1][1] if len(froms) > 1 and froms[1] > 0 else None
    progress(f"build {spec.name}: {tag} in {seconds} s ({outcome.cached_steps} steps from cache)")
    return BuildResult(
        spec.name,
        tag,
        outcome.image_id,
        seconds,
        info.size if info else 0,
        outcome.cached_steps,
        build_stage_id,
        outcome.layers,
    )


def build_and_verify(engine: Engine, spec: ImageSpec, sources: PackageSources) -> BuildResult:
    """Build an image and refuse it unless it holds what the catalog says."""
    images_dir = load_catalog().root
    built = build_image(engine, spec, BuildOptions(sources), images_dir)
    require_verified(verify_image(engine, spec, images_dir))
    return built


def remove_built(engine: Engine, tag: str, build: BuildResult | None) -> None:
    """Remove the image and, when this run built it, its build stage (a CUDA venv is ~6 GB)."""
    engine.remove_image(tag)
    if build and build.build_stage_id:
        try:
            engine.remove_image(build.build_stage_id)
        except EngineError as exc:  # still the parent of another build's layers: keep it
            progress(f"  kept the build stage {build.build_stage_id}: {exc.message}")


# ---- commands ----------------------------------------------------------------------------


def _build_options(args: argparse.Namespace) -> BuildOptions:
    sources = PackageSources.resolve(
        ca_cert=args.ca_cert,
        index_url=args.index_url,
        wheelhouses=args.wheelhouse,
        host_pip=args.host_pip,
    )
    return BuildOptions(sources, nocache=args.no_cache)


def _mb(size: int) -> str:
    return f"{size / 1e6:,.0f} MB" if size else "-"


def cmd_build(args: argparse.Namespace) -> int:
    from cudabox.engine import Engine

    catalog = load_catalog()
    specs = resolve_targets(catalog, args.targets)
    options = _build_options(args)
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
    else:
        print(
            table(
                ["image", "tag", "seconds", "size", "cached steps", "verified"],
                [
                    [
                        r["name"],
                        r["tag"],
                        r["seconds"],
                        _mb(r["size"]),
                        r["cached_steps"],
                        "yes" if r.get("verified") else "no",
                    ]
                    for r in rows
                ],
            )
        )
    return ExitCode.OK


def cmd_verify(args: argparse.Namespace) -> int:
    from cudabox.engine import Engine

    catalog = load_catalog()
    specs = resolve_targets(catalog, args.targets)
    options = _build_options(args)
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
                        _mb(r["image_bytes"]),
                        _mb(r["packages_bytes"]),
                        _mb(r["base_bytes"]),
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
