"""Building a catalog image, for `cudabox build`, `verify`, `publish` and `run`.

A build assembles a small context (cudabox.images.context), builds it with the classic builder,
then (build_and_verify) runs the framework inside the image to check that it reports what the
catalog and the labels say (cudabox.images.verify).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cudabox.errors import EngineError
from cudabox.images.base import choose_base
from cudabox.images.catalog import ImageSpec, load_catalog
from cudabox.images.context import BuildOptions, build_args, build_context, final_stage_layers
from cudabox.images.labels import LAYERS, labels_for, provenance_labels
from cudabox.images.lock import lock_digest
from cudabox.images.verify import require_verified, verify_image
from cudabox.options import PackageSources
from cudabox.output import progress

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
    base_info = engine.image(base.ref)
    if base_info is not None and spec.dockerfile.is_file():
        layers = len(base_info.diff_ids) + final_stage_layers(spec.dockerfile.read_text())
        labels[LAYERS] = str(layers)
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
