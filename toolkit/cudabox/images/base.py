"""`cudabox base`: make the catalog's base image(s) locally, for hosts that cannot pull them.

Air-gapped clusters (and this project's CI) have no registry. mmdebstrap builds a minimal Debian
with Python from Debian packages, `docker import` turns it into an image, and it is tagged
exactly as the catalog names it, so the Dockerfiles work unchanged. The package list it contains
is recorded in images/base/, so what the base holds is reviewable.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cudabox.errors import BuildError, CudaboxError, ExitCode, Unavailable, UsageError
from cudabox.images.catalog import load_catalog
from cudabox.output import print_json, progress, table

if TYPE_CHECKING:
    from cudabox.engine import Engine

PACKAGES = ("python3", "python3-venv", "ca-certificates")
SUITES = ("bullseye", "bookworm", "trixie")
# What `docker import` drops and the official python images set.
IMPORT_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["python3"]',
)


@dataclass(frozen=True)
class BaseResult:
    image: str
    action: str  # "built" or "exists"
    python: str | None = None
    packages: int | None = None
    size: int | None = None
    seconds: float | None = None
    package_list: str | None = None


def suite_of(image: str) -> str:
    """The Debian suite a base image name implies ('python:3.11-slim-bookworm' -> 'bookworm')."""
    tag = image.rpartition(":")[2]
    for suite in SUITES:
        if re.search(rf"(^|-){suite}$", tag):
            return suite
    raise UsageError(
        f"cannot tell which Debian suite the base image {image!r} is",
        f"name a base whose tag ends in one of {', '.join(SUITES)}, or pull {image} instead",
    )


def package_list_path(images_dir: Path, image: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", image).strip("-")
    return images_dir / "base" / f"{safe}.txt"


def mmdebstrap_command(suite: str, tarball: Path) -> list[str]:
    return ["mmdebstrap", "--variant=apt", f"--include={','.join(PACKAGES)}", suite, str(tarball)]


def bootstrap(engine: Engine, image: str, images_dir: Path) -> BaseResult:
    """Build `image` from Debian packages and record its package list."""
    if shutil.which("mmdebstrap") is None:
        raise Unavailable(
            "mmdebstrap is not installed", "apt-get install -y mmdebstrap (or pull the base image)"
        )
    suite = suite_of(image)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cudabox-base-") as tmp:
        tarball = Path(tmp) / "base.tar"
        command = mmdebstrap_command(suite, tarball)
        progress(f"base {image}: {' '.join(command)}")
        _stream(command)
        progress(f"base {image}: docker import")
        changes = [
            *IMPORT_CHANGES,
            f'LABEL cudabox.images.base="mmdebstrap {suite} {" ".join(PACKAGES)}"',
        ]
        engine.import_tarball(tarball, image, changes)
    result = engine.run(
        image,
        [
            "sh",
            "-c",
            "python3 -c 'import platform; print(platform.python_version())' && dpkg-query -W -f '${Package}=${Version}\\n'",
        ],
        timeout=120,
    )
    if not result.ok:
        raise BuildError(f"the new base {image} does not run python3: {result.output.strip()}")
    python, *packages = result.output.split()
    record = package_list_path(images_dir, image)
    record.parent.mkdir(parents=True, exist_ok=True)
    header = [
        f"# Packages in the locally bootstrapped base image {image} (written by `cudabox base`).",
        f"# Made with: {' '.join(mmdebstrap_command(suite, Path('base.tar')))}",
        f"# Python {python}",
    ]
    record.write_text("\n".join([*header, *sorted(packages)]) + "\n")
    info = engine.image(image)
    return BaseResult(
        image=image,
        action="built",
        python=python,
        packages=len(packages),
        size=info.size if info else None,
        seconds=round(time.monotonic() - started, 1),
        package_list=str(record),
    )


def _stream(command: list[str]) -> None:
    """Run a command, passing its output on as progress; BuildError with its tail on failure."""
    tail: list[str] = []
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail = [*tail[-30:], line]
            progress(f"  {line}")
    if proc.returncode != 0:
        raise BuildError(
            f"{command[0]} failed (exit {proc.returncode}):\n" + "\n".join(tail),
            "check that the host's apt sources answer (mmdebstrap reuses them)",
        )


def cmd_base(args: argparse.Namespace) -> int:
    from cudabox.engine import Engine

    catalog = load_catalog()
    bases = sorted({spec.base_image for spec in catalog.images})
    results = []
    with Engine.connect() as engine:
        for image in bases:
            if engine.has_image(image) and not args.force:
                progress(f"base {image}: already on this engine (use --force to rebuild it)")
                info = engine.image(image)
                results.append(
                    BaseResult(image=image, action="exists", size=info.size if info else None)
                )
                continue
            if not args.force and not args.no_pull and _pulled(engine, image):
                info = engine.image(image)
                results.append(
                    BaseResult(image=image, action="pulled", size=info.size if info else None)
                )
                continue
            results.append(bootstrap(engine, image, catalog.root))
    if args.json:
        print_json([r.__dict__ for r in results])
    else:
        rows = [
            [
                r.image,
                r.action,
                r.python or "-",
                r.packages or "-",
                _mb(r.size),
                r.seconds or "-",
                r.package_list or "-",
            ]
            for r in results
        ]
        print(
            table(
                ["base image", "action", "python", "packages", "size", "seconds", "package list"],
                rows,
            )
        )
    return ExitCode.OK


def _pulled(engine: Engine, image: str) -> bool:
    """The normal case: the registry has the pinned base. Where none answers, we bootstrap."""
    progress(f"base {image}: pulling")
    try:
        engine.pull(image, progress=lambda line: progress(f"  {line}"))
    except CudaboxError as exc:
        progress(f"base {image}: cannot pull ({exc.message.splitlines()[0]}); bootstrapping it")
        return False
    return engine.has_image(image)


def _mb(size: int | None) -> str:
    return f"{size / 1e6:.0f} MB" if size else "-"
