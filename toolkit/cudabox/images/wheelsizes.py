"""What each locked distribution weighs once installed, read from its wheel's zip central directory.

The render gives every distribution of at least ~30 MB its own image layer, so it must know each
one's installed size without building the image and without downloading multi-GB wheels. A wheel
is a zip file whose central directory (at its end) lists every entry with its uncompressed size,
and pip installs exactly those entries. So for each pin of a lock this module:

1. lists the pin's files where pip would find them: the PEP 503/691 "simple" pages of the image's
   indexes (JSON asked for, HTML understood; http(s) and file:// URLs) and local wheelhouse folders;
2. keeps the files whose sha256 is one of the pin's hashes and picks the wheel pip would install on
   the image's platform (CPython 3.11, x86_64, glibc 2.28), ranking tags as pip does;
3. reads that wheel's central directory: with two HTTP Range requests at most (the tail for the
   end-of-central-directory record, zip64 included, then the directory itself when the tail did
   not hold it), or with zipfile for a local file.

Remote files are trusted to match the hash their index gives (checking it would mean downloading
them); wheelhouse files are hashed, since a folder has no index to vouch for them. A server that
ignores Range is never allowed to stream gigabytes: small files are read whole, larger ones fail
with Unavailable, and an equal file from another source is tried first.
"""

from __future__ import annotations

import hashlib
import html.parser
import json
import os
import re
import struct
import threading
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from urllib.parse import unquote, urldefrag, urljoin, urlparse
from urllib.request import url2pathname

import requests
import requests.adapters
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import InvalidWheelFilename
from packaging.utils import parse_wheel_filename as parse_wheel_name
from packaging.version import InvalidVersion, Version

from cudabox import __version__
from cudabox.errors import AuthError, CudaboxError, DataError, Unavailable
from cudabox.images.catalog import ImageSpec
from cudabox.images.lock import PLATFORM, Pin

PYPI_SIMPLE = "https://pypi.org/simple"
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
# PEP 691: JSON preferred, the HTML form (what plain static mirrors serve) accepted.
_ACCEPT_INDEX = f"{SIMPLE_JSON}, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
DEFAULT_WORKERS = 16
DEFAULT_TIMEOUT_S = 10.0  # connect and read, each; a simple page of a big project is a few MB
# A server that ignores Range sends the whole file: read it only when it is this small.
MAX_WHOLE_BYTES = 16 * 1024 * 1024

# Zip records (APPNOTE.TXT 4.3): the end of central directory record (22 bytes and a comment of up
# to 65535) is last; a zip64 archive puts its locator (20) and record (56) right before it.
_EOCD = struct.Struct("<4sHHHHIIH")
_EOCD_SIG = b"PK\x05\x06"
_ZIP64_LOCATOR = struct.Struct("<4sIQI")
_ZIP64_LOCATOR_SIG = b"PK\x06\x07"
_ZIP64_EOCD = struct.Struct("<4sQHHIIQQQQ")
_ZIP64_EOCD_SIG = b"PK\x06\x06"
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")
_CENTRAL_SIG = b"PK\x01\x02"
_ZIP64_EXTRA_ID = 0x0001
TAIL_BYTES = _EOCD.size + 0xFFFF + _ZIP64_LOCATOR.size + _ZIP64_EOCD.size
_CONTENT_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


# -- which wheel pip would install -------------------------------------------------------------


# Names the manylinux_2_x tags had before PEP 600 (pip accepts both).
_LEGACY_MANYLINUX = {(2, 17): "manylinux2014", (2, 12): "manylinux2010", (2, 5): "manylinux1"}
# The oldest glibc a manylinux tag exists for, per architecture (PEP 600 / packaging.tags).
_MIN_GLIBC_MINOR = {"x86_64": 5, "i686": 5}


@dataclass(frozen=True)
class Target:
    """The interpreter and platform an image installs wheels for."""

    python: tuple[int, int] = (3, 11)
    glibc: tuple[int, int] = (2, 28)
    arch: str = "x86_64"

    @classmethod
    def parse(cls, python: str, platform: str) -> Target:
        """From the catalog's python ("3.11") and uv's platform ("x86_64-manylinux_2_28")."""
        py = re.fullmatch(r"3\.(\d+)", python)
        plat = re.fullmatch(r"(\w+?)-manylinux_(\d+)_(\d+)", platform)
        if py is None or plat is None:
            raise DataError(
                f"cannot read python {python!r} / platform {platform!r} as a wheel target",
                "use a CPython 3.x version and an ARCH-manylinux_2_N platform",
            )
        return cls((3, int(py[1])), (int(plat[2]), int(plat[3])), plat[1])

    def platforms(self) -> tuple[str, ...]:
        """Platform tags, best first: newest glibc down to the oldest, then plain linux."""
        found: list[str] = []
        major, newest = self.glibc
        for minor in range(newest, _MIN_GLIBC_MINOR.get(self.arch, 17) - 1, -1):
            found.append(f"manylinux_{major}_{minor}_{self.arch}")
            legacy = _LEGACY_MANYLINUX.get((major, minor))
            if legacy:
                found.append(f"{legacy}_{self.arch}")
        found.append(f"linux_{self.arch}")
        return tuple(found)

    def tags(self) -> tuple[Tag, ...]:
        """Every tag pip accepts here, in pip's order of preference (packaging.tags.sys_tags)."""
        major, minor = self.python
        cp = f"cp{major}{minor}"
        platforms = self.platforms()
        return (
            *cpython_tags((major, minor), abis=[cp], platforms=platforms),
            *compatible_tags((major, minor), interpreter=cp, platforms=platforms),
        )


IMAGE_TARGET = Target.parse("3.11", PLATFORM)


@cache
def _priorities(target: Target) -> Mapping[Tag, int]:
    return {tag: rank for rank, tag in enumerate(target.tags())}


@dataclass(frozen=True)
class WheelName:
    distribution: str  # normalised (PEP 503)
    version: Version
    build: str | None
    tags: frozenset[Tag]


def parse_wheel_filename(filename: str) -> WheelName | None:
    """The parts of a wheel's file name (compressed tag sets expanded); None if not one."""
    try:
        name, version, build, found = parse_wheel_name(filename)
    except (InvalidWheelFilename, InvalidVersion):
        return None  # pip skips such a file too
    return WheelName(name, version, f"{build[0]}{build[1]}" if build else None, found)


def wheel_rank(filename: str, target: Target = IMAGE_TARGET) -> int | None:
    """How much pip prefers this file on `target` (0 best); None when pip would not install it."""
    wheel = parse_wheel_filename(filename)
    if wheel is None:
        return None
    priorities = _priorities(target)
    ranks = [priorities[tag] for tag in wheel.tags if tag in priorities]
    return min(ranks) if ranks else None


# -- the zip central directory -------------------------------------------------------------------


@dataclass(frozen=True)
class ZipListing:
    files: int  # entries that are files (directories left out)
    installed_bytes: int  # the sum of their uncompressed sizes
    # Top-level import names (top_level_modules of the file names); not part of the sizes' equality.
    modules: tuple[str, ...] = field(default=(), compare=False)


# A top-level entry is importable when it is a module file or a folder holding one.
_MODULE_FILE_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:\.[A-Za-z0-9_.-]+)?\.(?:py|so|pyd)$")
_IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def top_level_modules(names: Iterable[str]) -> tuple[str, ...]:
    """The top-level import names a wheel installs, from its file names (sorted).

    `pkg/__init__.py` and `pkg/sub/x.so` give `pkg`; `mod.py` and `mod.cpython-311-...so` give
    `mod`; `*.dist-info`, `*.data` and folders without Python or extension files give nothing.
    """
    found: set[str] = set()
    for name in names:
        head, _, rest = name.partition("/")
        if rest:
            if _IDENTIFIER_RE.match(head) and re.search(r"\.(?:py|so|pyd)$|\.so\.", rest):
                found.add(head)
        elif (match := _MODULE_FILE_RE.match(head)) is not None:
            found.add(match[1])
    found.discard("__pycache__")
    return tuple(sorted(found))


@dataclass(frozen=True)
class CentralDirectory:
    offset: int  # from the start of the file
    size: int
    entries: int


def locate_central_directory(tail: bytes, file_size: int, what: str) -> CentralDirectory:
    """Where the central directory lies, from the last bytes of a zip file (zip64 understood).

    `tail` must end at the end of the file and hold the end-of-central-directory record (the last
    TAIL_BYTES always do).
    """
    tail_start = file_size - len(tail)
    # The record's signature can occur inside its own comment: take the one whose comment length
    # reaches exactly the end of the file, as zipfile does.
    pos = tail.rfind(_EOCD_SIG)
    while pos >= 0:
        if pos + _EOCD.size <= len(tail):
            comment = struct.unpack_from("<H", tail, pos + _EOCD.size - 2)[0]
            if pos + _EOCD.size + comment == len(tail):
                break
        pos = tail.rfind(_EOCD_SIG, 0, pos)
    if pos < 0:
        raise DataError(f"{what} is not a zip file (no end of central directory record)")
    _, disk, cd_disk, _, entries, size, offset, _ = _EOCD.unpack_from(tail, pos)
    end = tail_start + pos  # the directory ends where the record begins...
    locator = pos - _ZIP64_LOCATOR.size
    if locator >= 0 and tail[locator : locator + 4] == _ZIP64_LOCATOR_SIG:
        record = locator - _ZIP64_EOCD.size
        if record < 0 or tail[record : record + 4] != _ZIP64_EOCD_SIG:
            raise DataError(f"{what}: zip64 locator without its end of central directory record")
        fields = _ZIP64_EOCD.unpack_from(tail, record)
        disk, cd_disk, entries, size, offset = fields[4], fields[5], fields[7], fields[8], fields[9]
        end = tail_start + record  # ...or where the zip64 record begins
    if disk != 0 or cd_disk != 0:
        raise DataError(f"{what} is a multi-part zip file, which no wheel is")
    # Measured back from its end, like zipfile does: right even with bytes before the archive.
    start = end - size
    if start < 0 or start + size > file_size:
        raise DataError(f"{what}: its central directory ({size} bytes at {offset}) is out of range")
    return CentralDirectory(start, size, entries)


def parse_central_directory(data: bytes, entries: int, what: str) -> ZipListing:
    """Count the files of a central directory and sum their uncompressed sizes."""
    pos = 0
    files = 0
    total = 0
    names: list[str] = []
    for _ in range(entries):
        if data[pos : pos + 4] != _CENTRAL_SIG or pos + _CENTRAL.size > len(data):
            raise DataError(f"{what}: central directory entry {files} is damaged")
        fields = _CENTRAL.unpack_from(data, pos)
        usize, name_len, extra_len, comment_len = fields[9], fields[10], fields[11], fields[12]
        name_end = pos + _CENTRAL.size + name_len
        if usize == 0xFFFFFFFF:  # the real size is in the zip64 extra field, first of its values
            usize = _zip64_size(data[name_end : name_end + extra_len], what)
        raw_name = data[pos + _CENTRAL.size : name_end]
        if not raw_name.endswith(b"/"):
            files += 1
            total += usize
            names.append(raw_name.decode("utf-8", errors="replace"))
        pos = name_end + extra_len + comment_len
    if pos != len(data):
        raise DataError(f"{what}: central directory holds more than its {entries} entries")
    return ZipListing(files, total, top_level_modules(names))


def _zip64_size(extra: bytes, what: str) -> int:
    pos = 0
    while pos + 4 <= len(extra):
        ident, length = struct.unpack_from("<HH", extra, pos)
        if ident == _ZIP64_EXTRA_ID and length >= 8:
            return int(struct.unpack_from("<Q", extra, pos + 4)[0])
        pos += 4 + length
    raise DataError(f"{what}: an entry's size is in a zip64 extra field it does not have")


def local_listing(path: Path) -> ZipListing:
    """The listing of a wheel on disk."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = [info for info in archive.infolist() if not info.is_dir()]
    except (OSError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read the wheel {path}: {exc}") from None
    return ZipListing(
        len(infos),
        sum(info.file_size for info in infos),
        top_level_modules(info.filename for info in infos),
    )


# -- where the files are ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Sources:
    """Where pip would look: simple indexes (http(s):// or file://) and wheelhouse folders."""

    index_urls: tuple[str, ...] = (PYPI_SIMPLE,)
    wheelhouses: tuple[Path, ...] = ()


def sources_for(
    spec: ImageSpec, *, mirror: str | None = None, wheelhouses: Sequence[Path] = ()
) -> Sources:
    """The sources of an image's wheels: a mirror (or PyPI), the image's own index, wheelhouses.

    Like `cudabox lock`: a mirror replaces PyPI; the catalog's `index_url` comes on top.
    """
    indexes = [mirror or PYPI_SIMPLE]
    if spec.index_url and spec.index_url not in indexes:
        indexes.append(spec.index_url)
    return Sources(tuple(indexes), tuple(wheelhouses))


def target_for(spec: ImageSpec) -> Target:
    return Target.parse(spec.python, PLATFORM)


def default_ca_bundle(env: Mapping[str, str] | None = None) -> Path | None:
    """The CA bundle to trust: the environment's, else the host's (TLS-intercepting proxies are
    trusted there, not in certifi's bundle), else None for requests' own."""
    env = os.environ if env is None else env
    for key in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        if env.get(key):
            return Path(env[key])
    return HOST_CA_BUNDLE if HOST_CA_BUNDLE.is_file() else None


@dataclass(frozen=True)
class DistFile:
    filename: str
    location: str  # a URL, or a local path
    sha256: str | None
    path: Path | None  # set when the file is on this machine
    source: str  # the index URL or wheelhouse it was listed by


class _LinkParser(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            href = dict(attrs).get("href")
            if href:
                self.hrefs.append(href)


def files_from_html(
    page: str, page_url: str, source: str, wanted: AbstractSet[str] | None = None
) -> list[DistFile]:
    """The files of a PEP 503 project page (one link each, the hash in its fragment); only those
    whose sha256 is in `wanted` when given."""
    parser = _LinkParser()
    parser.feed(page)
    found = []
    for href in parser.hrefs:
        fragment = urldefrag(href)[1]
        digest = re.fullmatch(r"sha256=([0-9a-f]{64})", fragment)
        sha256 = digest[1] if digest else None
        if wanted is None or sha256 in wanted:
            found.append(_dist_file(urldefrag(urljoin(page_url, href))[0], sha256, source))
    return found


def files_from_json(
    page: Mapping[str, object], page_url: str, source: str, wanted: AbstractSet[str] | None = None
) -> list[DistFile]:
    """The files of a PEP 691 project page; only those whose sha256 is in `wanted` when given."""
    files = page.get("files")
    if not isinstance(files, list):
        raise DataError(f"{page_url}: the index's JSON page has no file list")
    found = []
    for entry in files:
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
            continue
        hashes = entry.get("hashes")
        digest = hashes.get("sha256") if isinstance(hashes, dict) else None
        sha256 = digest if isinstance(digest, str) else None
        # Big projects list tens of thousands of files: resolve URLs only for the wanted ones.
        if wanted is None or sha256 in wanted:
            found.append(_dist_file(urldefrag(urljoin(page_url, entry["url"]))[0], sha256, source))
    return found


def _dist_file(url: str, sha256: str | None, source: str) -> DistFile:
    # pip names a file by its URL's last segment.
    parsed = urlparse(url)
    filename = unquote(parsed.path.rsplit("/", 1)[-1])
    path = Path(url2pathname(parsed.path)) if parsed.scheme == "file" else None
    return DistFile(filename, str(path) if path else url, sha256, path, source)


# -- the work ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WheelSize:
    """What one locked distribution weighs: the wheel pip installs, downloaded and installed."""

    name: str  # normalised
    version: str
    filename: str
    location: str  # the URL the wheel was read from, or its local path
    download_bytes: int
    installed_bytes: int  # sum of the entries' uncompressed sizes (no .pyc, no file system blocks)
    files: int
    sha256: str | None = None  # the wheel's digest (one of the pin's hashes)
    modules: tuple[str, ...] = ()  # its top-level import names
    local: bool = False  # `location` is a file on this machine (its digest checked)


def wheel_sizes(
    pins: Iterable[Pin],
    sources: Sources,
    *,
    target: Target = IMAGE_TARGET,
    ca_bundle: Path | None = None,
    workers: int = DEFAULT_WORKERS,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_whole_bytes: int = MAX_WHOLE_BYTES,
) -> tuple[WheelSize, ...]:
    """The installed size of every pin, in the pins' order; the pins are looked up in parallel.

    Raises DataError when a pin has no wheel for `target` among its hashes (or none of its hashes
    is in the sources), Unavailable when that may be because a source could not be reached.
    """
    results = wheel_sizes_each(
        pins,
        sources,
        target=target,
        ca_bundle=ca_bundle,
        workers=workers,
        timeout_s=timeout_s,
        max_whole_bytes=max_whole_bytes,
    )
    errors = [r for r in results if isinstance(r, CudaboxError)]
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more pins failed)" if len(errors) > 1 else ""
        raise type(first)(first.message + more, first.fix)
    return tuple(r for r in results if isinstance(r, WheelSize))


def wheel_sizes_each(
    pins: Iterable[Pin],
    sources: Sources,
    *,
    target: Target = IMAGE_TARGET,
    ca_bundle: Path | None = None,
    workers: int = DEFAULT_WORKERS,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_whole_bytes: int = MAX_WHOLE_BYTES,
) -> tuple[WheelSize | CudaboxError, ...]:
    """Like wheel_sizes, but one answer per pin: its size, or the error that pin met (a pin with
    no wheel for `target` among its hashes, an sdist-only one say, is a DataError)."""
    pins = list(pins)
    if not pins:
        return ()
    reader = _Reader(
        sources,
        target,
        ca_bundle if ca_bundle is not None else default_ca_bundle(),
        timeout_s,
        max_whole_bytes,
        workers,
    )
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(pins)))) as pool:
            futures = [pool.submit(reader.size, pin) for pin in pins]
        results: list[WheelSize | CudaboxError] = []
        for future in futures:
            exc = future.exception()
            if exc is None:
                results.append(future.result())
            elif isinstance(exc, CudaboxError):
                results.append(exc)
            else:
                raise exc
    finally:
        reader.close()
    return tuple(results)


class _SourceDown(Exception):
    """A source failed for one pin; it is not asked again for the others."""

    def __init__(self, error: CudaboxError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass(frozen=True)
class _Slice:
    data: bytes
    start: int
    file_size: int


class _Reader:
    """Lists and reads files for wheel_sizes; shared by its threads (requests' Session is)."""

    def __init__(
        self,
        sources: Sources,
        target: Target,
        ca_bundle: Path | None,
        timeout_s: float,
        max_whole_bytes: int,
        workers: int,
    ) -> None:
        self._sources = sources
        self._target = target
        self._verify: str | bool = str(ca_bundle) if ca_bundle else True
        self._timeout = (timeout_s, timeout_s)
        self._max_whole = max_whole_bytes
        self._session = requests.Session()
        self._session.headers["User-Agent"] = f"cudabox/{__version__}"
        adapter = requests.adapters.HTTPAdapter(pool_connections=8, pool_maxsize=max(workers, 10))
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._lock = threading.Lock()
        self._down: dict[str, CudaboxError] = {}

    def close(self) -> None:
        self._session.close()

    def size(self, pin: Pin) -> WheelSize:
        what = f"{pin.name}=={pin.version}"
        hashes = frozenset(h.removeprefix("sha256:") for h in pin.hashes)
        listed, down = self._list(pin, hashes)
        matching = [f for f in listed if f.sha256 in hashes]
        ranked = [
            (rank, order, f)
            for order, f in enumerate(matching)
            if (rank := wheel_rank(f.filename, self._target)) is not None
        ]
        if not ranked:
            raise self._not_found(what, pin, matching, down)
        ranked.sort(key=lambda item: (item[0], item[1]))
        # The same wheel may be listed by several sources: try the others if one fails to serve it.
        best = [
            f for rank, _, f in ranked if rank == ranked[0][0] and f.sha256 == ranked[0][2].sha256
        ]
        first_error: CudaboxError | None = None
        for candidate in best:
            try:
                download, listing = self._listing(candidate)
            except (Unavailable, AuthError) as exc:
                first_error = first_error or exc
                continue
            return WheelSize(
                pin.name,
                pin.version,
                candidate.filename,
                candidate.location,
                download,
                listing.installed_bytes,
                listing.files,
                candidate.sha256,
                listing.modules,
                candidate.path is not None,
            )
        assert first_error is not None
        raise first_error

    def _not_found(
        self, what: str, pin: Pin, matching: list[DistFile], down: list[CudaboxError]
    ) -> CudaboxError:
        searched = ", ".join([*self._sources.index_urls, *map(str, self._sources.wheelhouses)])
        if matching:
            names = ", ".join(sorted({f.filename for f in matching}))
            return DataError(
                f"{what}: none of its locked files is a wheel pip installs on "
                f"cp{self._target.python[0]}{self._target.python[1]} "
                f"manylinux_{self._target.glibc[0]}_{self._target.glibc[1]}_{self._target.arch} "
                f"(its hashes match {names})",
                "lock it for the image's platform (cudabox lock NAME), or build the wheel into a "
                "wheelhouse and lock from it",
            )
        if down:
            reasons = "; ".join(e.message for e in down)
            return Unavailable(
                f"{what}: no source that answered lists a file with its hashes, and some did not "
                f"answer ({reasons})",
                down[0].fix or "retry when the index answers, or pass a wheelhouse holding it",
            )
        return DataError(
            f"{what}: none of its {len(pin.hashes)} hashes matches a file in {searched}",
            "regenerate the lock (cudabox lock NAME) from the sources the image installs from, or "
            "name the index or wheelhouse that holds the locked files",
        )

    def _list(
        self, pin: Pin, hashes: AbstractSet[str]
    ) -> tuple[list[DistFile], list[CudaboxError]]:
        listed: list[DistFile] = []
        down: list[CudaboxError] = []
        for folder in self._sources.wheelhouses:
            listed += _wheelhouse_files(folder, pin)
        for index in self._sources.index_urls:
            with self._lock:
                known_down = self._down.get(index)
            if known_down is not None:
                down.append(known_down)
                continue
            try:
                listed += self._index_files(index, pin.name, hashes)
            except _SourceDown as exc:
                with self._lock:
                    self._down.setdefault(index, exc.error)
                down.append(exc.error)
        return listed, down

    def _index_files(self, index: str, name: str, wanted: AbstractSet[str]) -> list[DistFile]:
        page_url = f"{index.rstrip('/')}/{name}/"
        if urlparse(index).scheme == "file":
            page = Path(url2pathname(urlparse(page_url).path)) / "index.html"
            if not page.is_file():
                return []
            return files_from_html(page.read_text(errors="replace"), page.as_uri(), index, wanted)
        response = self._get(page_url, {"Accept": _ACCEPT_INDEX}, index, stream=False)
        if response.status_code == 404:
            return []
        self._check(response, page_url, index)
        if response.headers.get("Content-Type", "").split(";")[0].strip() == SIMPLE_JSON:
            try:
                page = json.loads(response.content)
            except ValueError as exc:
                raise DataError(
                    f"{page_url}: the index sent JSON that does not parse: {exc}"
                ) from None
            return files_from_json(page, response.url, index, wanted)
        return files_from_html(response.text, response.url, index, wanted)

    def _get(
        self, url: str, headers: Mapping[str, str], source: str, *, stream: bool
    ) -> requests.Response:
        try:
            return self._session.get(
                url,
                headers=dict(headers),
                timeout=self._timeout,
                verify=self._verify,
                stream=stream,
            )
        except requests.exceptions.SSLError as exc:
            raise _SourceDown(
                Unavailable(
                    f"{source}: TLS failed ({exc.__class__.__name__})",
                    "trust the proxy's or mirror's CA: REQUESTS_CA_BUNDLE=/path/to/ca.pem",
                )
            ) from None
        except requests.RequestException as exc:
            raise _SourceDown(
                Unavailable(
                    f"{source} is unreachable ({exc.__class__.__name__})",
                    "check the network or proxy, or use a mirror (CUDABOX_INDEX_URL) or a "
                    "wheelhouse (CUDABOX_WHEELHOUSE) that holds the locked wheels",
                )
            ) from None

    def _check(self, response: requests.Response, url: str, source: str) -> None:
        status = response.status_code
        if status in (401, 403):
            response.close()
            raise _SourceDown(
                AuthError(
                    f"{url} answered {status}",
                    "give the index's credentials in its URL (https://user:token@host/...) or "
                    "in ~/.netrc",
                )
            )
        if status >= 300:
            response.close()
            raise _SourceDown(
                Unavailable(f"{url} answered {status}", "retry later, or use another index")
            )

    def _listing(self, file: DistFile) -> tuple[int, ZipListing]:
        if file.path is not None:
            return file.path.stat().st_size, local_listing(file.path)
        try:
            return self._remote_listing(file)
        except _SourceDown as exc:
            raise exc.error from None

    def _remote_listing(self, file: DistFile) -> tuple[int, ZipListing]:
        url = file.location
        tail = self._range(url, f"bytes=-{TAIL_BYTES}", file.source)
        where = locate_central_directory(tail.data, tail.file_size, file.filename)
        if where.offset >= tail.start:
            data = tail.data[where.offset - tail.start : where.offset - tail.start + where.size]
        else:
            end = where.offset + where.size  # exclusive
            part = self._range(url, f"bytes={where.offset}-{end - 1}", file.source)
            data = part.data[where.offset - part.start : end - part.start]
            if len(data) != where.size:
                raise DataError(f"{url}: the server sent {len(data)} of the {where.size} asked")
        return tail.file_size, parse_central_directory(data, where.entries, file.filename)

    def _range(self, url: str, byte_range: str, source: str) -> _Slice:
        # identity: a range of a gzip-encoded body would not be a range of the file.
        headers = {"Range": byte_range, "Accept-Encoding": "identity"}
        response = self._get(url, headers, source, stream=True)
        try:
            self._check(response, url, source)
            if response.status_code == 206:
                return self._partial(response, url)
            return self._whole(response, url)
        finally:
            response.close()

    def _partial(self, response: requests.Response, url: str) -> _Slice:
        found = _CONTENT_RANGE_RE.match(response.headers.get("Content-Range", ""))
        if found is None:
            raise DataError(f"{url}: a partial answer without a readable Content-Range")
        start, last, total = (int(g) for g in found.groups())
        data = response.raw.read(last - start + 1, decode_content=False)
        if len(data) != last - start + 1:
            raise Unavailable(
                f"{url}: sent {len(data)} bytes for the range {start}-{last}", "retry"
            )
        return _Slice(data, start, total)

    def _whole(self, response: requests.Response, url: str) -> _Slice:
        """A server that ignored Range: read the body only when it is small, never gigabytes."""
        length = response.headers.get("Content-Length")
        fix = (
            "use an index whose server answers HTTP Range requests (PyPI and its CDN do), or put "
            "the wheel in a wheelhouse folder"
        )
        if length is not None and length.isdigit() and int(length) > self._max_whole:
            raise Unavailable(
                f"{url}: the server ignores Range and would send all {int(length)} bytes", fix
            )
        data = response.raw.read(self._max_whole + 1, decode_content=False)
        if len(data) > self._max_whole:
            raise Unavailable(
                f"{url}: the server ignores Range and sends more than {self._max_whole} bytes", fix
            )
        return _Slice(data, 0, len(data))


def _wheelhouse_files(folder: Path, pin: Pin) -> list[DistFile]:
    """The pin's wheels in a folder, hashed (only those with its name and version)."""
    found = []
    for path in sorted(folder.glob("*.whl")):
        wheel = parse_wheel_filename(path.name)
        if wheel is None or wheel.distribution != pin.name or wheel.version != Version(pin.version):
            continue
        with path.open("rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        found.append(DistFile(path.name, str(path), digest, path, str(folder)))
    return found


# -- whole wheels, for what their file list cannot say (the GPU code inside) --------------------


def wheel_cache(env: Mapping[str, str] | None = None) -> Path:
    """$XDG_CACHE_HOME/cudabox/wheels, else ~/.cache/cudabox/wheels."""
    env = os.environ if env is None else env
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "cudabox" / "wheels"


def fetch_wheel(
    wheel: WheelSize,
    cache: Path,
    *,
    ca_bundle: Path | None = None,
    timeout_s: float = 60.0,
) -> Path:
    """The wheel as a file on this machine: its wheelhouse copy, or a download kept in `cache`.

    The download's sha256 must be the one its index gave (and the lock holds); a cached file is
    hashed again before it is trusted, so a damaged cache is fetched anew.
    """
    if wheel.local:
        return Path(wheel.location)
    if wheel.sha256 is None:
        raise DataError(f"{wheel.filename}: its index gives no sha256 to check a download against")
    path = cache / wheel.sha256[:2] / wheel.sha256 / wheel.filename
    if path.is_file() and _sha256_of(path) == wheel.sha256:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    verify: str | bool = str(ca_bundle) if ca_bundle else True
    digest = hashlib.sha256()
    try:
        with requests.get(
            wheel.location,
            stream=True,
            timeout=(timeout_s, timeout_s),
            verify=verify,
            headers={"User-Agent": f"cudabox/{__version__}", "Accept-Encoding": "identity"},
        ) as response:
            if response.status_code >= 300:
                raise Unavailable(
                    f"{wheel.location} answered {response.status_code}",
                    "retry later, or put the wheel in a wheelhouse folder (--wheelhouse)",
                )
            with partial.open("wb") as out:
                for chunk in response.iter_content(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
    except requests.RequestException as exc:
        partial.unlink(missing_ok=True)
        raise Unavailable(
            f"downloading {wheel.location} failed ({exc.__class__.__name__})",
            "check the network or proxy, or put the wheel in a wheelhouse folder (--wheelhouse)",
        ) from None
    if digest.hexdigest() != wheel.sha256:
        partial.unlink(missing_ok=True)
        raise DataError(
            f"{wheel.location}: the download's sha256 is {digest.hexdigest()}, not the locked "
            f"{wheel.sha256}",
            "the index changed a published file: check the index, then relock",
        )
    partial.replace(path)
    return path


def _sha256_of(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
