"""`cudabox verify`'s work: prove each image's contents, record them, compare the layers.

An image missing from the engine is built first. What each image reported goes into the record
(images/verified.json or --record) and is compared layer by layer with the entry it replaces.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cudabox.images.build import build_image, remove_built
from cudabox.images.catalog import ImageSpec
from cudabox.images.context import BuildOptions
from cudabox.images.record import (
    LayerComparison,
    Layers,
    compare_layers,
    read_record,
    record_entry,
    write_record,
)
from cudabox.images.verify import require_verified, verify_image
from cudabox.output import check_writable, progress

if TYPE_CHECKING:
    from cudabox.engine import Engine


@dataclass(frozen=True)
class VerifyOptions:
    build: BuildOptions  # how a missing image is built
    record: Path | None = None  # where to record what each image reported
    remove_after: bool = False  # remove each image once verified (a failing one is kept)
    gpus: bool = False  # give the containers the host's GPUs


@dataclass(frozen=True)
class Verified:
    name: str
    entry: dict[str, Any]  # the record's entry (docs/verify.md)
    layers: LayerComparison  # against the entry it replaces


def previous_record(images_dir: Path, options: VerifyOptions) -> dict[str, dict[str, Any]]:
    """The entries each build is compared with: the record it would replace, or the catalog's.

    Called before any build: a record that cannot be written or read fails now, not after an
    hour of builds.
    """
    if options.record:
        check_writable(options.record, "verified record")
    return read_record(options.record or images_dir / "verified.json")


def verify_images(
    engine: Engine,
    specs: Sequence[ImageSpec],
    images_dir: Path,
    options: VerifyOptions,
    previous: Mapping[str, dict[str, Any]],
) -> list[Verified]:
    """Verify (building when missing) each image; raises on the first that fails its proof.

    `previous` (from previous_record) holds the entries the new ones are compared with.
    """
    results = []
    for spec in specs:
        built = None
        if not engine.has_image(spec.tag):
            built = build_image(engine, spec, options.build, images_dir)
        checked = verify_image(engine, spec, images_dir, gpus=options.gpus)
        if not checked.ok and options.remove_after:
            stage = (
                f" and its build stage {built.build_stage_id}"
                if built and built.build_stage_id
                else ""
            )
            progress(
                f"verify {spec.name}: failed; kept {spec.tag}{stage} for inspection "
                "(docker rmi them when done)"
            )
        require_verified(checked)
        recorded = previous.get(spec.name)
        entry = record_entry(spec, checked, built, recorded)
        layers = compare_layers(
            spec.name, Layers.of(entry), Layers.of(recorded) if recorded else None
        )
        if options.record:
            write_record(options.record, {spec.name: entry})
            progress(f"verify {spec.name}: recorded in {options.record}")
        if options.remove_after:
            progress(f"verify {spec.name}: removing {spec.tag}")
            remove_built(engine, spec.tag, built)
        results.append(Verified(spec.name, entry, layers))
    return results
