"""`cudabox lock`'s work: compile each catalog image's lock from its .in file with uv.

The lock is made for the image's platform and Python (not the host's) by `uv pip compile
--generate-hashes`, and is reproducible: same inputs, same file (the header holds no date and no
host path). A trailer records each wheel's installed size, which decides the image's layers.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cudabox.errors import DataError, Unavailable, UsageError
from cudabox.images.catalog import ImageSpec
from cudabox.images.lock import PLATFORM, Pin, parse_lock
from cudabox.images.wheelsizes import default_ca_bundle, sources_for, target_for, wheel_sizes
from cudabox.options import WHEELHOUSE_ENV, PackageSources
from cudabox.output import write_atomic


def find_uv() -> str:
    # The uv of this Python's environment first (a venv that is not on PATH), then PATH's.
    beside = Path(sys.executable).with_name("uv")
    uv = str(beside) if beside.is_file() else shutil.which("uv")
    if uv is None:
        raise Unavailable(
            "uv is not installed (cudabox lock runs `uv pip compile`)", "pip install uv"
        )
    return uv


def compile_args(
    spec: ImageSpec, wheelhouses: tuple[Path, ...], index_url: str | None
) -> list[str]:
    """The `uv pip compile` arguments for an image (without the uv binary and the .in path).

    Only images whose wheels live off PyPI (catalog `index_url`, e.g. torch +cpu) resolve from the
    wheelhouse or that index, so the other locks do not depend on what this host has on disk.
    """
    args = [
        "pip",
        "compile",
        "--python-version",
        spec.python,
        "--python-platform",
        PLATFORM,
        "--generate-hashes",
    ]
    if index_url:
        args += ["--index-url", index_url]
    if spec.index_url:
        if wheelhouses:
            for folder in wheelhouses:
                args += ["--find-links", str(folder)]
        else:
            # The framework's own index on top of PyPI; pick the best match across both.
            args += ["--extra-index-url", spec.index_url, "--index-strategy", "unsafe-best-match"]
    return args


def header(spec: ImageSpec, args: list[str], relative_in: str) -> str:
    """The lock's header: the command that made it, with no host path in it."""
    shown = list(args)
    for n, word in enumerate(args[:-1]):
        if word == "--find-links":
            shown[n + 1] = f"${WHEELHOUSE_ENV}"
    return (
        f"# Hash-locked requirements of the cudabox image {spec.name}. Do not edit: regenerate with\n"
        f"#    cudabox lock {spec.name}\n"
        f"# which runs\n"
        f"#    uv {' '.join(shown)} {relative_in}\n"
    )


def lock_image(spec: ImageSpec, root: Path, sources: PackageSources) -> str:
    """Compile the lock text for one image, keeping the current lock's versions where they fit."""
    if not spec.requirements.is_file():
        raise UsageError(f"{spec.name}: requirements file {spec.requirements} does not exist")
    args = compile_args(spec, sources.wheelhouses, sources.index_url)
    relative_in = spec.requirements.relative_to(root).as_posix()
    env = {k: v for k, v in os.environ.items() if not k.startswith("UV_")}
    with tempfile.TemporaryDirectory(prefix="cudabox-lock-") as tmp:
        # uv prefers the versions already in its output file: relocking changes nothing that
        # the .in file does not ask to change.
        output = Path(tmp) / "lock.txt"
        if spec.lock.is_file():
            shutil.copyfile(spec.lock, output)
        # Relative paths, run from images/, so "# via -r ..." notes do not name the checkout.
        command = [find_uv(), *args, "--no-header", "--quiet", "-o", str(output), relative_in]
        proc = subprocess.run(
            command, cwd=root, capture_output=True, text=True, env=env, check=False
        )
        if proc.returncode != 0:
            fix = "check the .in file and that the index answers"
            if spec.index_url and not sources.wheelhouses:
                fix = f"its wheels live on {spec.index_url}; where that is unreachable, pass --wheelhouse DIR (or {WHEELHOUSE_ENV}) holding them"
            raise DataError(f"{spec.name}: uv pip compile failed:\n{proc.stderr.strip()}", fix)
        body = output.read_text()
    text = header(spec, args, relative_in) + body
    # A lock cudabox cannot read back is a bug: fail here, not in the build.
    pins = parse_lock(text, str(spec.lock))
    return text + sizes_trailer(spec, pins, sources)


def sizes_trailer(spec: ImageSpec, pins: dict[str, Pin], sources: PackageSources) -> str:
    """`# cudabox:installed-bytes NAME==VERSION BYTES` per pin: what decides the image's layers.

    Read from each wheel's file list (its zip central directory), so no wheel is downloaded.
    """
    sizes = wheel_sizes(
        pins.values(),
        sources_for(spec, mirror=sources.index_url, wheelhouses=sources.wheelhouses),
        target=target_for(spec),
        ca_bundle=sources.ca_cert or default_ca_bundle(),
    )
    lines = [
        "# Installed size of each distribution, from its wheel's file list (cudabox render gives",
        "# every distribution of 30 MB or more a layer of its own):",
        *(f"# cudabox:installed-bytes {s.name}=={s.version} {s.installed_bytes}" for s in sizes),
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Locked:
    name: str
    lock: Path
    packages: int
    changed: bool
    sha256: str


def write_lock(spec: ImageSpec, text: str) -> Locked:
    """Write the lock when its text changed (atomically: a build never reads half a lock)."""
    pins = parse_lock(text, str(spec.lock))  # a lock cudabox cannot read back is never written
    old = spec.lock.read_text() if spec.lock.is_file() else None
    if old != text:
        spec.lock.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(spec.lock, text, "lock")
    return Locked(
        spec.name, spec.lock, len(pins), old != text, hashlib.sha256(text.encode()).hexdigest()
    )
