"""Image build figures: cold build time, size overhead, and the rebuild after a cudabox-only edit.

Prints figures; asserts nothing. Builds under a cudabox-bench/* tag and removes what it made.

    python benchmarks/image_build.py [IMAGE ...]      (default: torch-2.13-cpu)

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
from cudabox.images.build import BuildOptions, BuildResult, build_image, remove_built, verify_image
from cudabox.images.catalog import load_catalog
from cudabox.engine import Engine


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("images", nargs="*", default=["torch-2.13-cpu"])
    args = parser.parse_args()
    catalog = load_catalog()
    options = BuildOptions.from_env()
    with Engine.connect() as engine:
        for name in args.images:
            spec = catalog.get(name)
            tag = f"cudabox-bench/{name}:cold"
            edited_tag = f"cudabox-bench/{name}:edited"
            cold: BuildResult | None = None
            edited: BuildResult | None = None
            try:
                cold = build_image(engine, spec, replace(options, nocache=True), tag=tag)
                checked = verify_image(engine, spec, catalog.root, tag=tag, run_units=False)
                with tempfile.TemporaryDirectory() as tmp:
                    source = Path(tmp) / "cudabox"
                    shutil.copytree(
                        Path(cudabox.__file__).parent,
                        source,
                        ignore=shutil.ignore_patterns("__pycache__"),
                    )
                    (source / "_bench_edit.py").write_text(f"EDITED = {time.time()!r}\n")
                    started = time.monotonic()
                    edited = build_image(engine, spec, options, tag=edited_tag, cudabox_src=source)
                    rebuild = time.monotonic() - started
                print(f"{name}: cold build {cold.seconds:.1f} s, {cold.size / 1e6:,.0f} MB")
                if checked.overhead_pct is not None:
                    print(
                        f"{name}: size overhead over base + installed packages {checked.overhead_pct:.2f} %"
                    )
                print(
                    f"{name}: rebuild after a cudabox-only edit {rebuild:.1f} s "
                    f"({edited.cached_steps} steps from cache)"
                )
            finally:
                # The images and the build stage this run made (the edit reuses the cold one's).
                remove_built(engine, edited_tag, None)
                remove_built(engine, tag, cold)
    return 0


if __name__ == "__main__":
    sys.exit(main())
