"""`cudabox base`: the images' base: the official image where a registry answers, else a bootstrap.

The catalog names the official base (`python:3.11-slim-bookworm`, pinned by digest where one was
read). Air-gapped clusters (and this project's CI) have no registry: there mmdebstrap builds a
minimal Debian with its own Python from Debian packages, and `docker import` makes it the image
`cudabox/debian-python:SUITE`. It has its own name, since it is not the official image (another
Python, in another place); builds take whichever of the two the engine has, and label the image
with the one they used. With SOURCE_DATE_EPOCH (a fixed default otherwise), the same package
versions give the same layer, byte for byte. The package list is recorded in images/base/.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cudabox.errors import (
    BuildError,
    CudaboxError,
    Interrupted,
    Unavailable,
    UsageError,
)
from cudabox.images.catalog import ImageSpec
from cudabox.images.context import source_date_epoch
from cudabox.output import progress

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


BOOTSTRAP_REPOSITORY = "cudabox/debian-python"


@dataclass(frozen=True)
class BaseChoice:
    """The base a build uses: its reference and what pins it (a repo digest, else the image id)."""

    ref: str
    digest: str
    bootstrapped: bool


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


def bootstrap_name(official: str) -> str:
    """The local stand-in for an official base: 'python:3.11-slim-bookworm' -> 'cudabox/debian-python:bookworm'."""
    return f"{BOOTSTRAP_REPOSITORY}:{suite_of(official.partition('@')[0])}"


def choose_base(engine: Engine, spec: ImageSpec) -> BaseChoice:
    """The official base if the engine has it; else the bootstrap; else pull the official one."""
    for ref, bootstrapped in ((spec.base_image, False), (bootstrap_name(spec.base_image), True)):
        info = engine.image(ref)
        if info is not None:
            digest = info.repo_digests[0].partition("@")[2] if info.repo_digests else info.id
            return BaseChoice(ref, digest, bootstrapped)
    progress(f"build {spec.name}: base image {spec.base_image} is not here; pulling it")
    try:
        engine.pull(spec.base_image, progress=lambda line: progress(f"  {line}"))
    except (UsageError, Interrupted):
        raise
    except CudaboxError as exc:
        raise Unavailable(
            f"neither the base image {spec.base_image} nor its bootstrap "
            f"{bootstrap_name(spec.base_image)} is on this engine, and the pull failed "
            f"({exc.message.splitlines()[0]})",
            f"pull it (`docker pull {spec.base_image}`), or where no registry answers run "
            f"`cudabox base` (it bootstraps {bootstrap_name(spec.base_image)} from Debian packages)",
        ) from None
    info = engine.image(spec.base_image)
    if info is None:
        raise Unavailable(f"pulling {spec.base_image} left no image", "run `cudabox base`")
    return BaseChoice(
        spec.base_image, (info.repo_digests or (info.id,))[0].rpartition("@")[2], False
    )


def mmdebstrap_command(suite: str, tarball: Path) -> list[str]:
    return ["mmdebstrap", "--variant=apt", f"--include={','.join(PACKAGES)}", suite, str(tarball)]


def bootstrap(
    engine: Engine, official: str, images_dir: Path, image: str | None = None
) -> BaseResult:
    """Build the bootstrap of `official` (as `image`) from Debian packages; record its packages."""
    if shutil.which("mmdebstrap") is None:
        raise Unavailable(
            "mmdebstrap is not installed", "apt-get install -y mmdebstrap (or pull the base image)"
        )
    suite = suite_of(official.partition("@")[0])
    image = image or bootstrap_name(official)
    started = time.monotonic()
    epoch = source_date_epoch()
    with tempfile.TemporaryDirectory(prefix="cudabox-base-") as tmp:
        tarball = Path(tmp) / "base.tar"
        command = mmdebstrap_command(suite, tarball)
        progress(f"base {image}: SOURCE_DATE_EPOCH={epoch} {' '.join(command)}")
        # mmdebstrap clamps every time to SOURCE_DATE_EPOCH and drops logs and machine ids:
        # the same package versions give the same tarball, hence the same layer.
        _stream(command, {**os.environ, "SOURCE_DATE_EPOCH": str(epoch)})
        progress(f"base {image}: docker import")
        changes = [
            *IMPORT_CHANGES,
            # What it stands in for; not base.name, which would claim it was built from it.
            f'LABEL cudabox.base="mmdebstrap {suite} {" ".join(PACKAGES)}" '
            f'cudabox.stands_in_for="{official}"',
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
        f"# Packages in {image}, the local bootstrap of {official} (written by `cudabox base`).",
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


def _stream(command: list[str], env: dict[str, str] | None = None) -> None:
    """Run a command, passing its output on as progress; BuildError with its tail on failure."""
    tail: list[str] = []
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
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


@dataclass(frozen=True)
class BaseOptions:
    force: bool
    no_pull: bool
    json: bool


def ensure_base(
    engine: Engine, official: str, images_dir: Path, options: BaseOptions
) -> BaseResult:
    """The official base (there, or pulled), else its bootstrap (there, or made now)."""
    local = bootstrap_name(official)
    if not options.force:
        for ref in (official, local):
            info = engine.image(ref)
            if info is not None:
                progress(f"base {ref}: already on this engine (use --force to bootstrap anew)")
                return BaseResult(image=ref, action="exists", size=info.size)
        if not options.no_pull and _pulled(engine, official):
            info = engine.image(official)
            return BaseResult(image=official, action="pulled", size=info.size if info else None)
    return bootstrap(engine, official, images_dir)


def _pulled(engine: Engine, image: str) -> bool:
    """The normal case: the registry has the pinned base. Where none answers, we bootstrap.

    Any failure of the pull falls back, whatever its class (an engine that cannot reach the
    registry, a registry without the image, a refusal); only a mistake in the name, or the user
    stopping cudabox, is not a reason to bootstrap instead.
    """
    progress(f"base {image}: pulling")
    try:
        engine.pull(image, progress=lambda line: progress(f"  {line}"))
    except (UsageError, Interrupted):
        raise
    except CudaboxError as exc:
        why = pull_failure_reason(exc.message, image)
    else:
        if engine.has_image(image):
            return True
        why = "the pull left no image"
    progress(
        f"base: {image} could not be pulled ({why}); bootstrapping {bootstrap_name(image)} "
        "from Debian packages"
    )
    return False


def pull_failure_reason(message: str, image: str) -> str:
    """The short reason in an engine's pull error ('registry-1.docker.io does not resolve').

    The engine's messages read "could not pull IMAGE: REASON (what the engine said)".
    """
    first = message.splitlines()[0] if message else "unknown error"
    reason = first.removeprefix(f"could not pull {image}: ")
    if reason != first and " (" in reason:
        reason = reason.partition(" (")[0]
    return reason
