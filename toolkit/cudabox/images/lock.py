"""`cudabox lock`: regenerate each catalog image's hash-locked requirements from its .in file.

The lock is the only place a version changes. It is made for the image's platform and Python
(not the host's) by `uv pip compile --generate-hashes`, and is reproducible: same inputs, same
file (the header holds no date and no host path).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cudabox.errors import DataError, ExitCode, Unavailable, UsageError
from cudabox.images.catalog import ImageSpec, load_catalog
from cudabox.images.targets import resolve_targets
from cudabox.options import WHEELHOUSE_ENV, PackageSources
from cudabox.output import print_json, progress, table

PLATFORM = "x86_64-manylinux_2_28"
_PIN_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")
_HASH_RE = re.compile(r"--hash=(sha256:[0-9a-f]{64})")
# As pip reads a requirements file (pip/_internal/req/req_file.py): a comment runs from a '#'
# at the start or after white space, and a line ending in a backslash goes on unless it has one.
_COMMENT_RE = re.compile(r"(^|\s+)#.*$")


@dataclass(frozen=True)
class Pin:
    name: str  # normalised (PEP 503)
    version: str
    hashes: tuple[str, ...]


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_lock(text: str, where: str = "lock") -> dict[str, Pin]:
    """The pins of a hash-locked requirements file, by normalised name.

    Raises DataError naming `where` (the lock's path) and the line when an entry is not pinned
    with == or carries no hash, since `pip install --require-hashes` would refuse such a file
    anyway; also when a distribution is pinned twice or nothing is pinned at all.
    """
    fix = "regenerate it with `cudabox lock NAME`"
    pins: dict[str, Pin] = {}
    first_line: dict[str, int] = {}
    for number, raw in _requirement_lines(text):
        line = _COMMENT_RE.sub("", raw).strip()
        if not line:
            continue
        if line.startswith("-"):
            raise DataError(
                f"{where} line {number}: options ({line.split()[0]}) do not belong in a lock", fix
            )
        match = _PIN_RE.match(line)
        if not match:
            raise DataError(f"{where} line {number}: {line[:60]!r} is not pinned with ==", fix)
        hashes = tuple(_HASH_RE.findall(line))
        if not hashes:
            raise DataError(f"{where} line {number}: {match[1]}=={match[2]} has no --hash", fix)
        name = normalise(match[1])
        if name in pins:
            raise DataError(
                f"{where} line {number}: {name} is pinned twice (also on line {first_line[name]})",
                fix,
            )
        pins[name] = Pin(name=name, version=match[2], hashes=hashes)
        first_line[name] = number
    if not pins:
        raise DataError(f"{where} pins no distribution", fix)
    return pins


def _requirement_lines(text: str) -> Iterator[tuple[int, str]]:
    """Each entry with its continuation lines joined, and the number of the line it starts on.

    splitlines() ends a line at LF or CRLF alike, so a lock saved on Windows reads the same.
    """
    start = 0
    parts: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not parts:
            start = number
        if line.endswith("\\") and not _COMMENT_RE.search(line):
            parts.append(line[:-1])
            continue
        parts.append(line)
        yield start, " ".join(parts)
        parts = []
    if parts:
        yield start, " ".join(parts)


def lock_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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
    from cudabox.images.wheelsizes import default_ca_bundle, sources_for, target_for, wheel_sizes

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


def cmd_lock(args: argparse.Namespace) -> int:
    catalog = load_catalog()
    sources = PackageSources.resolve(
        ca_cert=args.ca_cert,
        index_url=args.index_url,
        wheelhouses=args.wheelhouse,
        host_pip=args.host_pip,
    )
    rows = []
    for spec in resolve_targets(catalog, args.targets, empty_means_all=True):
        progress(f"lock {spec.name}: {spec.requirements.relative_to(catalog.root)}")
        text = lock_image(spec, catalog.root, sources)
        old = spec.lock.read_text() if spec.lock.is_file() else None
        spec.lock.parent.mkdir(parents=True, exist_ok=True)
        if old != text:
            spec.lock.write_text(text)
        pins = parse_lock(text, str(spec.lock))
        rows.append(
            {
                "name": spec.name,
                "lock": str(spec.lock.relative_to(catalog.root)),
                "packages": len(pins),
                "changed": old != text,
                "sha256": hashlib.sha256(text.encode()).hexdigest(),
            }
        )
    if args.json:
        print_json(rows)
    else:
        print(
            table(
                ["image", "lock", "packages", "changed", "sha256"],
                [
                    [
                        r["name"],
                        r["lock"],
                        r["packages"],
                        "yes" if r["changed"] else "no",
                        str(r["sha256"])[:12],
                    ]
                    for r in rows
                ],
            )
        )
    return ExitCode.OK
