"""The lock file: an image's hash-locked requirements, read strictly, and its digest.

The lock is the only place a version changes; images.locking makes it (`cudabox lock`), the
build installs it, and the labels carry its digest. Standard library and `packaging` only: the
modules that make, build, verify and publish images all read it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name

from cudabox.errors import DataError

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
        name = canonicalize_name(match[1])
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
