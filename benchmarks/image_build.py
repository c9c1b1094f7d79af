"""Image figures: layers, reproducibility, size overhead, cold build and cudabox-only rebuild.

Prints figures; asserts nothing. Builds under cudabox-bench/* tags and removes what it made.

    python benchmarks/image_build.py [IMAGE ...]     (default: torch-2.13-cpu)
        two cold builds (--no-cache): seconds, layers, how many layers are identical, the size
        overhead over base + installed packages, and a rebuild after a cudabox-only edit
    python benchmarks/image_build.py --plan [--from A] [--to B ...]
        no build: every catalog image's package layers from its lock (count, largest share), and
        the bytes a host holding A downloads for B (the layers above the lowest one they
        do not share); needs the index for the wheels' download sizes

Build settings come from CUDABOX_CA_CERT / _INDEX_URL / _WHEELHOUSE, or the host's pip config
with CUDABOX_HOST_PIP=1 (what the nox session sets).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import cudabox
from cudabox.engine import Engine
from cudabox.images.build import BuildResult, build_image, remove_built
from cudabox.images.catalog import Catalog, ImageSpec, load_catalog
from cudabox.images.context import BuildOptions
from cudabox.images.lock import parse_lock
from cudabox.images.render import Layer, installed_sizes, plan_layers
from cudabox.images.verify import verify_image
from cudabox.options import PackageSources


def build_figures(catalog: Catalog, names: list[str]) -> None:
    options = BuildOptions(PackageSources.resolve(), nocache=True, quiet=True)
    with Engine.connect(read_timeout=3600) as engine:
        for name in names:
            spec = catalog.get(name)
            made: list[tuple[str, BuildResult | None]] = []
            try:
                cold = []
                for n in (1, 2):
                    tag = f"cudabox-bench/{name}:cold{n}"
                    cold.append(build_image(engine, spec, options, catalog.root, tag=tag))
                    made.append((tag, cold[-1]))
                first, second = (engine.image(b.tag) for b in cold)
                assert first is not None and second is not None
                same = sum(a == b for a, b in zip(first.diff_ids, second.diff_ids, strict=False))
                checked = verify_image(engine, spec, catalog.root, tag=cold[0].tag, run_units=False)
                content = checked.base_bytes + checked.packages_bytes
                overhead = 100 * (checked.image_bytes - content) / content if content else 0.0
                sizes = layer_sizes(engine, cold[0].tag)
                edited_tag = f"cudabox-bench/{name}:edited"
                with tempfile.TemporaryDirectory() as tmp:
                    source = Path(tmp) / "cudabox"
                    shutil.copytree(
                        Path(cudabox.__file__).parent,
                        source,
                        ignore=shutil.ignore_patterns("__pycache__"),
                    )
                    (source / "_bench_edit.py").write_text(f"EDITED = {time.time()!r}\n")
                    started = time.monotonic()
                    edited = build_image(
                        engine,
                        spec,
                        replace(options, nocache=False),
                        catalog.root,
                        tag=edited_tag,
                        cudabox_src=source,
                    )
                    rebuild = time.monotonic() - started
                made.append((edited_tag, None))
                total = sum(sizes)
                print(f"{name}: cold builds {cold[0].seconds:.1f} s and {cold[1].seconds:.1f} s")
                print(
                    f"{name}: {len(first.diff_ids)} layers, {same} identical in both cold builds; "
                    f"largest layer {max(sizes) / 1e6:,.0f} MB of {total / 1e6:,.0f} MB "
                    f"({100 * max(sizes) / total:.1f} %)"
                )
                print(
                    f"{name}: size overhead over base + installed packages {overhead:.3f} % "
                    f"({(checked.image_bytes - content) / 1e3:,.0f} kB)"
                )
                print(
                    f"{name}: rebuild after a cudabox-only edit {rebuild:.1f} s "
                    f"({edited.cached_steps} steps from cache)"
                )
            finally:
                for tag, result in reversed(made):
                    remove_built(engine, tag, result)


def layer_sizes(engine: Engine, tag: str) -> list[int]:
    """Each layer's size as the engine counts it (history entries with a layer), bottom first."""
    history = engine.client.api.history(tag)
    return [int(h.get("Size") or 0) for h in reversed(history) if int(h.get("Size") or 0) > 0]


def plan(spec: ImageSpec) -> list[Layer]:
    text = spec.lock.read_text()
    return plan_layers(spec.framework, parse_lock(text), installed_sizes(text))


def download_sizes(spec: ImageSpec) -> dict[tuple[str, str], int]:
    """Each pin's wheel download size: what its layer weighs compressed, give or take."""
    from cudabox.images.wheelsizes import default_ca_bundle, sources_for, target_for, wheel_sizes

    sources = PackageSources.resolve()
    sizes = wheel_sizes(
        parse_lock(spec.lock.read_text()).values(),
        sources_for(spec, mirror=sources.index_url, wheelhouses=sources.wheelhouses),
        target=target_for(spec),
        ca_bundle=sources.ca_cert or default_ca_bundle(),
    )
    return {(s.name, s.version): s.download_bytes for s in sizes}


def plan_figures(catalog: Catalog, held: str | None, wanted: list[str]) -> None:
    print(f"{'image':18} {'package layers':>14} {'installed':>11} {'largest layer':>28}")
    for spec in catalog.images:
        layers = plan(spec)
        total = sum(layer.installed_bytes for layer in layers)
        big = max(layers, key=lambda layer: layer.installed_bytes)
        print(
            f"{spec.name:18} {len(layers):>14} {total / 1e6:>8,.0f} MB "
            f"{big.name:>14} {100 * big.installed_bytes / total:5.1f} %"
        )
    print("(image layers = base + 2 (user, venv) + package layers + 1 (cudabox))")
    if held is None:
        return
    have = [(p.name, p.version) for layer in plan(catalog.get(held)) for p in layer.pins]
    have_layers = [
        tuple((p.name, p.version) for p in layer.pins) for layer in plan(catalog.get(held))
    ]
    for name in wanted:
        spec = catalog.get(name)
        compressed = download_sizes(spec)
        layers = plan(spec)
        shared = 0
        for mine, theirs in zip(have_layers, layers, strict=False):
            if mine != tuple((p.name, p.version) for p in theirs.pins):
                break
            shared += 1
        fetched = layers[shared:]
        installed = sum(layer.installed_bytes for layer in fetched)
        download = sum(compressed[(p.name, p.version)] for layer in fetched for p in layer.pins)
        same_pins = sum(1 for layer in fetched for p in layer.pins if (p.name, p.version) in have)
        print(
            f"holding {held}, pulling {name}: {len(fetched)} of {len(layers)} package layers "
            f"fetched, {installed / 1e6:,.0f} MB installed, about {download / 1e6:,.0f} MB "
            f"compressed (wheel sizes); {same_pins} of the fetched pins are held too, above the "
            "first layer that differs"
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("images", nargs="*", default=["torch-2.13-cpu"])
    parser.add_argument("--plan", action="store_true", help="figures from the locks; no build")
    parser.add_argument("--from", dest="held", default=None, help="--plan: the image a host holds")
    parser.add_argument("--to", action="append", default=[], help="--plan: the image it pulls")
    args = parser.parse_args()
    catalog = load_catalog()
    if args.plan:
        plan_figures(catalog, args.held, args.to)
    else:
        build_figures(catalog, args.images)
    return 0


if __name__ == "__main__":
    sys.exit(main())
