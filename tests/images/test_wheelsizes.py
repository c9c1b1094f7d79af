"""Installed sizes from wheels' central directories: tag matching, zip parsing, simple indexes.

The indexes are real HTTP servers on localhost (JSON and HTML pages, files with real Range support,
one that ignores Range); the wheels are built here with zipfile, a zip64 one included.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import random
import socket
import threading
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cudabox.errors import DataError, Unavailable
from cudabox.images.catalog import load_catalog
from cudabox.images.lock import Pin
from cudabox.images.wheelsizes import (
    IMAGE_TARGET,
    PYPI_SIMPLE,
    TAIL_BYTES,
    Sources,
    Tag,
    Target,
    ZipListing,
    default_ca_bundle,
    files_from_html,
    files_from_json,
    local_listing,
    locate_central_directory,
    parse_central_directory,
    parse_wheel_filename,
    sources_for,
    wheel_rank,
    wheel_sizes,
)

# -- tags -------------------------------------------------------------------------------------------


def test_target_parses_the_catalog_python_and_the_lock_platform() -> None:
    assert Target.parse("3.11", "x86_64-manylinux_2_28") == Target((3, 11), (2, 28), "x86_64")
    assert Target((3, 11), (2, 28), "x86_64") == IMAGE_TARGET
    with pytest.raises(DataError):
        Target.parse("3.11", "linux/amd64")


def test_platforms_run_from_the_image_glibc_down_with_legacy_names_beside_theirs() -> None:
    platforms = IMAGE_TARGET.platforms()
    assert platforms[0] == "manylinux_2_28_x86_64"
    assert "manylinux_2_29_x86_64" not in platforms
    at = platforms.index("manylinux_2_17_x86_64")
    assert platforms[at + 1] == "manylinux2014_x86_64"
    assert "manylinux1_x86_64" in platforms
    assert platforms[-1] == "linux_x86_64"


def test_tags_are_those_of_packaging_in_the_same_order() -> None:
    tags = pytest.importorskip("packaging.tags")
    platforms = list(IMAGE_TARGET.platforms())
    expected = [
        *tags.cpython_tags((3, 11), abis=["cp311"], platforms=platforms),
        *tags.compatible_tags((3, 11), interpreter="cp311", platforms=platforms),
    ]
    assert [str(t) for t in IMAGE_TARGET.tags()] == [str(t) for t in expected]


@pytest.mark.parametrize(
    "filename",
    [
        "numpy-2.4.6-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
        "torch-2.10.0-cp311-cp311-manylinux_2_28_x86_64.whl",
        "markupsafe-3.0.4-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
        "cryptography-46.0.0-cp39-abi3-manylinux_2_28_x86_64.whl",
        "old-1.0-cp311-cp311-manylinux1_x86_64.whl",
        "local-1.0-cp311-cp311-linux_x86_64.whl",
        "six-1.17.0-py2.py3-none-any.whl",
        "typing_extensions-4.16.0-py3-none-any.whl",
        "triton-3.6.0-1-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
    ],
)
def test_wheels_pip_installs_on_the_image(filename: str) -> None:
    assert wheel_rank(filename) is not None


@pytest.mark.parametrize(
    "filename",
    [
        "torch-2.10.0-cp312-cp312-manylinux_2_28_x86_64.whl",  # another Python
        "numpy-2.4.6-cp311-cp311-manylinux_2_31_x86_64.whl",  # needs a newer glibc
        "numpy-2.4.6-cp311-cp311-manylinux_2_28_aarch64.whl",
        "numpy-2.4.6-cp311-cp311-musllinux_1_2_x86_64.whl",
        "numpy-2.4.6-cp311-cp311-win_amd64.whl",
        "numpy-2.4.6-cp311-cp311-macosx_14_0_arm64.whl",
        "newabi-1.0-cp312-abi3-manylinux_2_28_x86_64.whl",  # the stable ABI of a newer Python
        "legacy-1.0-py2-none-any.whl",
        "numpy-2.4.6.tar.gz",
        "not-a-wheel.whl",
    ],
)
def test_wheels_pip_refuses_on_the_image(filename: str) -> None:
    assert wheel_rank(filename) is None


def test_pip_prefers_the_most_specific_wheel() -> None:
    order = [
        "x-1-cp311-cp311-manylinux_2_28_x86_64.whl",
        "x-1-cp311-cp311-manylinux_2_17_x86_64.whl",
        "x-1-cp311-cp311-linux_x86_64.whl",
        "x-1-cp311-abi3-manylinux_2_28_x86_64.whl",
        "x-1-cp39-abi3-manylinux_2_28_x86_64.whl",
        "x-1-py3-none-manylinux_2_28_x86_64.whl",
        "x-1-py3-none-any.whl",
    ]
    ranks = [wheel_rank(name) for name in order]
    assert all(r is not None for r in ranks)
    assert ranks == sorted(ranks)  # type: ignore[type-var]
    assert len(set(ranks)) == len(ranks)
    # A compressed tag set ranks as its best member.
    assert wheel_rank("x-1-cp311-cp311-manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl") == ranks[0]


def test_parse_wheel_filename_expands_compressed_tags_and_keeps_the_build() -> None:
    wheel = parse_wheel_filename("Foo_Bar-1.0-7-py2.py3-none-any.whl")
    assert wheel is not None
    assert wheel.distribution == "foo-bar"
    assert wheel.build == "7"
    assert wheel.tags == {Tag("py2", "none", "any"), Tag("py3", "none", "any")}


# -- the central directory ----------------------------------------------------------------------


def make_wheel(path: Path, files: Mapping[str, bytes], comment: bytes = b"") -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.mkdir("pkg")
        for name, data in files.items():
            archive.writestr(name, data)
        archive.comment = comment
    return path


def zipfile_listing(path: Path) -> ZipListing:
    with zipfile.ZipFile(path) as archive:
        infos = [i for i in archive.infolist() if not i.is_dir()]
    return ZipListing(len(infos), sum(i.file_size for i in infos))


def listing_from_bytes(data: bytes) -> ZipListing:
    tail = data[-TAIL_BYTES:]
    where = locate_central_directory(tail, len(data), "test.whl")
    return parse_central_directory(
        data[where.offset : where.offset + where.size], where.entries, "test.whl"
    )


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def test_listing_sums_uncompressed_sizes_and_skips_directories(tmp_path: Path) -> None:
    files = {
        "pkg/a.py": b"print(1)\n" * 1000,
        "pkg/b.so": payload(50_000),
        "x.dist-info/RECORD": b"",
    }
    path = make_wheel(tmp_path / "x-1-py3-none-any.whl", files, comment=b"a comment")
    expected = ZipListing(3, 9000 + 50_000)
    assert zipfile_listing(path) == expected
    assert listing_from_bytes(path.read_bytes()) == expected
    assert local_listing(path) == expected
    # A comment holding the record's signature is not taken for the record (zipfile itself
    # stumbles on this one).
    path = make_wheel(tmp_path / "y-1-py3-none-any.whl", files, comment=b"PK\x05\x06 fake")
    assert listing_from_bytes(path.read_bytes()) == expected


def test_zip64_sizes_and_records_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # zipfile writes zip64 fields for anything above ZIP64_LIMIT: lowering it makes a small zip64
    # wheel with the same layout as torch's multi-GB ones (0xFFFFFFFF sizes, zip64 extras/records).
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 1000)
    files = {f"pkg/m{i}.so": payload(3000 + i, seed=i) for i in range(5)}
    path = make_wheel(tmp_path / "z-1-cp311-cp311-manylinux_2_28_x86_64.whl", files)
    monkeypatch.undo()
    data = path.read_bytes()
    assert b"PK\x06\x06" in data and b"PK\x06\x07" in data  # zip64 record and locator
    assert b"\xff\xff\xff\xff" in data
    assert listing_from_bytes(data) == zipfile_listing(path) == ZipListing(5, 15010)


def test_many_entries_make_a_zip64_directory_larger_than_the_tail(many_entries: Path) -> None:
    data = many_entries.read_bytes()
    where = locate_central_directory(data[-TAIL_BYTES:], len(data), "many")
    assert where.entries == 70_000  # above the 65535 of a plain zip: zip64 record
    assert where.size > TAIL_BYTES
    assert listing_from_bytes(data) == zipfile_listing(many_entries) == ZipListing(*MANY_LISTING)


def test_bytes_before_the_archive_do_not_shift_the_directory(tmp_path: Path) -> None:
    path = make_wheel(tmp_path / "x-1-py3-none-any.whl", {"pkg/a": payload(100)})
    assert listing_from_bytes(b"#!stub\n" * 10 + path.read_bytes()) == ZipListing(1, 100)


def test_damaged_archives_are_data_errors(tmp_path: Path) -> None:
    data = make_wheel(tmp_path / "x-1-py3-none-any.whl", {"pkg/a": payload(100)}).read_bytes()
    with pytest.raises(DataError, match="not a zip"):
        locate_central_directory(data[:-10], len(data) - 10, "x.whl")
    where = locate_central_directory(data, len(data), "x.whl")
    with pytest.raises(DataError, match="damaged"):
        parse_central_directory(b"\0" * where.size, where.entries, "x.whl")


MANY = 70_000
MANY_LISTING = (MANY, sum(i % 7 for i in range(MANY)))


@pytest.fixture(scope="module")
def many_entries(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("many") / "many-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for i in range(MANY):
            archive.writestr(f"many/m{i}.py", b"x" * (i % 7))
    return path


# -- a simple index on localhost ----------------------------------------------------------------


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Index:
    """What one test server serves, and what it was asked."""

    files: dict[str, bytes] = field(default_factory=dict)
    json: bool = True  # answer PEP 691 JSON when asked (else always HTML)
    ranges: bool = True  # honour Range (else send the whole file, as some servers do)
    status: int | None = None  # answer everything with this status
    streamed: dict[str, int] = field(default_factory=dict)  # lazily made bodies: name -> size
    asked: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range)
    sent: dict[str, int] = field(default_factory=dict)  # bytes of a streamed body written
    done: threading.Event = field(default_factory=threading.Event)
    url: str = ""

    def add(self, filename: str, data: bytes) -> str:
        self.files[filename] = data
        return f"sha256:{sha(data)}"

    def project(self, name: str) -> list[tuple[str, str]]:
        names = [*self.files, *self.streamed]
        return [
            (n, sha(self.files[n]) if n in self.files else sha(n.encode()))
            for n in names
            if _project(n) == name
        ]


def _project(filename: str) -> str:
    wheel = parse_wheel_filename(filename)
    return wheel.distribution if wheel else filename.rsplit("-", 1)[0].lower()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        index = self.server.index
        index.asked.append((self.path, self.headers.get("Range")))
        if index.status is not None:
            return self._send(index.status, b"no", "text/plain")
        parts = self.path.strip("/").split("/")
        if parts[0] == "simple" and len(parts) == 2:
            return self._page(parts[1])
        if parts[0] == "files" and len(parts) == 2 and parts[1] in index.streamed:
            return self._stream(parts[1], index.streamed[parts[1]])
        if parts[0] == "files" and len(parts) == 2 and parts[1] in index.files:
            return self._file(index.files[parts[1]])
        self._send(404, b"not found", "text/plain")

    def _send(
        self, status: int, body: bytes, kind: str, extra: Mapping[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _page(self, project: str) -> None:
        files = self.server.index.project(project)
        if not files:
            return self._send(404, b"no such project", "text/plain")
        if self.server.index.json and "json" in self.headers.get("Accept", ""):
            page = {
                "meta": {"api-version": "1.0"},
                "name": project,
                "files": [
                    {"filename": n, "url": f"../../files/{n}", "hashes": {"sha256": h}}
                    for n, h in files
                ],
            }
            body = json.dumps(page).encode()
            return self._send(200, body, "application/vnd.pypi.simple.v1+json")
        links = "".join(f'<a href="/files/{n}#sha256={h}">{n}</a><br>\n' for n, h in files)
        self._send(200, f"<html><body>{links}</body></html>".encode(), "text/html")

    def _file(self, data: bytes) -> None:
        wanted = self.headers.get("Range")
        if not wanted or not self.server.index.ranges:
            return self._send(200, data, "application/octet-stream")
        first, last = wanted.removeprefix("bytes=").split("-")
        if first == "":
            start, end = max(0, len(data) - int(last)), len(data) - 1
        else:
            start, end = int(first), min(int(last), len(data) - 1)
        extra = {"Content-Range": f"bytes {start}-{end}/{len(data)}"}
        self._send(206, data[start : end + 1], "application/octet-stream", extra)

    def _stream(self, name: str, size: int) -> None:
        """A big file from a server that ignores Range: count what actually went out."""
        index = self.server.index
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        chunk = b"\0" * 65536
        sent = 0
        try:
            while sent < size:
                self.wfile.write(chunk)
                sent += len(chunk)
        except OSError:
            self.close_connection = True
        finally:
            index.sent[name] = sent
            index.done.set()


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    index: Index


Serve = Callable[[Index], Index]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """`serve(index)` starts a server on localhost for `index`, sets its url and returns it."""
    servers: list[Server] = []

    def start(index: Index) -> Index:
        server = Server(("127.0.0.1", 0), Handler)
        server.index = index
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        index.url = f"http://127.0.0.1:{server.server_address[1]}/simple"
        servers.append(server)
        return index

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def wheel_bytes(tmp_path: Path, filename: str, files: Mapping[str, bytes]) -> bytes:
    return make_wheel(tmp_path / filename, files).read_bytes()


def pin(name: str, version: str, *hashes: str) -> Pin:
    return Pin(name, version, hashes)


BEST = "demo-1.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"


def demo_index(
    tmp_path: Path, *, json_pages: bool = True, ranges: bool = True
) -> tuple[Index, Pin]:
    """A project whose lock lists an sdist and four wheels; pip would pick BEST on the image."""
    index = Index(json=json_pages, ranges=ranges)
    hashes = [
        index.add("demo-1.0.tar.gz", b"sdist"),
        index.add(BEST, wheel_bytes(tmp_path, BEST, {"demo/_c.so": payload(40_000)})),
        index.add(
            "demo-1.0-py3-none-any.whl",
            wheel_bytes(tmp_path, "any.whl", {"demo/slow.py": b"#" * 10}),
        ),
        index.add(
            "demo-1.0-cp312-cp312-manylinux_2_28_x86_64.whl",
            wheel_bytes(tmp_path, "312.whl", {"demo/_c.so": payload(10)}),
        ),
        index.add(
            "demo-1.0-cp311-cp311-musllinux_1_2_x86_64.whl",
            wheel_bytes(tmp_path, "musl.whl", {"demo/_c.so": payload(20)}),
        ),
    ]
    return index, pin("demo", "1.0", *hashes)


@pytest.mark.parametrize("json_pages", [True, False], ids=["json", "html"])
def test_the_wheel_pip_would_install_is_measured_with_range_requests(
    serve: Serve, tmp_path: Path, json_pages: bool
) -> None:
    index, demo = demo_index(tmp_path, json_pages=json_pages)
    serve(index)
    (size,) = wheel_sizes([demo], Sources((index.url,)))
    assert size.filename == BEST
    assert size.location == f"{index.url.removesuffix('/simple')}/files/{BEST}"
    assert size.download_bytes == len(index.files[BEST])
    assert (size.installed_bytes, size.files) == (40_000, 1)
    # One page and one range for the whole file: the directory was in the tail.
    assert index.asked == [("/simple/demo/", None), (f"/files/{BEST}", f"bytes=-{TAIL_BYTES}")]


def test_a_directory_beyond_the_tail_takes_a_second_range(serve: Serve, many_entries: Path) -> None:
    data = many_entries.read_bytes()
    index = serve(Index(files={many_entries.name: data}))
    (size,) = wheel_sizes([pin("many", "1.0", f"sha256:{sha(data)}")], Sources((index.url,)))
    assert (size.files, size.installed_bytes) == MANY_LISTING
    ranges = [r for _, r in index.asked if r]
    assert ranges[0] == f"bytes=-{TAIL_BYTES}"
    assert len(ranges) == 2 and not ranges[1].startswith("bytes=-")  # start-end: the directory
    assert size.download_bytes == len(data)


def test_several_pins_come_back_in_lock_order(serve: Serve, tmp_path: Path) -> None:
    index = Index()
    pins = [
        pin(
            f"p{i}",
            "1.0",
            index.add(
                f"p{i}-1.0-py3-none-any.whl", wheel_bytes(tmp_path, f"{i}.whl", {"a": payload(i)})
            ),
        )
        for i in range(12)
    ]
    serve(index)
    sizes = wheel_sizes(pins, Sources((index.url,)), workers=4)
    assert [(s.name, s.installed_bytes) for s in sizes] == [(f"p{i}", i) for i in range(12)]


def test_a_small_file_from_a_server_ignoring_range_is_read_whole(
    serve: Serve, tmp_path: Path
) -> None:
    index, demo = demo_index(tmp_path, ranges=False)
    serve(index)
    (size,) = wheel_sizes([demo], Sources((index.url,)))
    assert (size.filename, size.installed_bytes) == (BEST, 40_000)


def test_a_big_file_from_a_server_ignoring_range_is_not_downloaded(serve: Serve) -> None:
    name = "huge-1.0-cp311-cp311-manylinux_2_28_x86_64.whl"
    total = 256 * 1024 * 1024
    index = serve(Index(streamed={name: total}))
    huge = pin("huge", "1.0", f"sha256:{sha(name.encode())}")
    with pytest.raises(Unavailable, match="ignores Range") as caught:
        wheel_sizes([huge], Sources((index.url,)))
    assert caught.value.fix and "Range" in caught.value.fix
    assert index.done.wait(10)
    assert index.sent[name] < total // 4  # the client hung up; socket buffers hold a few MB


def test_the_same_wheel_elsewhere_is_used_when_a_server_ignores_range(
    serve: Serve, tmp_path: Path
) -> None:
    name = "huge-1.0-cp311-cp311-manylinux_2_28_x86_64.whl"
    data = wheel_bytes(tmp_path, name, {"huge/_c.so": payload(5000)})
    bad = serve(Index(files={name: data}, ranges=False))
    good = serve(Index(files={name: data}))
    huge = pin("huge", "1.0", f"sha256:{sha(data)}")
    (size,) = wheel_sizes([huge], Sources((bad.url, good.url)), max_whole_bytes=1000)
    assert size.location.startswith(good.url.removesuffix("/simple"))
    assert size.installed_bytes == 5000


def test_a_hash_that_matches_no_file_is_a_data_error(serve: Serve, tmp_path: Path) -> None:
    index, _ = demo_index(tmp_path)
    serve(index)
    with pytest.raises(DataError, match="none of its 1 hashes") as caught:
        wheel_sizes([pin("demo", "1.0", "sha256:" + "0" * 64)], Sources((index.url,)))
    assert caught.value.fix and "cudabox lock" in caught.value.fix


def test_no_wheel_for_the_platform_among_the_hashes_is_a_data_error(
    serve: Serve, tmp_path: Path
) -> None:
    index, demo = demo_index(tmp_path)
    serve(index)
    not_here = tuple(h for h in demo.hashes if h != f"sha256:{sha(index.files[BEST])}")
    not_here = tuple(
        h for h in not_here if h != f"sha256:{sha(index.files['demo-1.0-py3-none-any.whl'])}"
    )
    with pytest.raises(DataError, match="none of its locked files is a wheel") as caught:
        wheel_sizes([pin("demo", "1.0", *not_here)], Sources((index.url,)))
    assert "demo-1.0.tar.gz" in caught.value.message
    assert "musllinux" in caught.value.message


def test_every_failing_pin_is_counted_in_the_error(serve: Serve, tmp_path: Path) -> None:
    index, demo = demo_index(tmp_path)
    serve(index)
    lost = [pin(f"lost{i}", "1.0", "sha256:" + "0" * 64) for i in range(3)]
    with pytest.raises(DataError, match=r"lost0==1.0: .*\(and 2 more pins failed\)"):
        wheel_sizes([demo, *lost], Sources((index.url,)))


def test_page_parsers_resolve_relative_urls_and_keep_the_wanted_hashes() -> None:
    page_url = "https://mirror.example/simple/demo/"
    a, b = "a" * 64, "b" * 64
    html = (
        f'<a href="../../f/demo-1.0-py3-none-any.whl#sha256={a}">x</a>'
        f'<a href="https://cdn.example/demo-1.0.tar.gz#sha256={b}">y</a>'
        '<a href="demo-0.9.tar.gz">no hash</a>'
    )
    files = files_from_html(html, page_url, "src")
    assert [(f.filename, f.location, f.sha256) for f in files] == [
        ("demo-1.0-py3-none-any.whl", "https://mirror.example/f/demo-1.0-py3-none-any.whl", a),
        ("demo-1.0.tar.gz", "https://cdn.example/demo-1.0.tar.gz", b),
        ("demo-0.9.tar.gz", "https://mirror.example/simple/demo/demo-0.9.tar.gz", None),
    ]
    assert [f.sha256 for f in files_from_html(html, page_url, "src", frozenset({b}))] == [b]
    page = {
        "files": [
            {
                "filename": "demo-1.0-py3-none-any.whl",
                "url": "../../f/demo-1.0-py3-none-any.whl",
                "hashes": {"sha256": a},
            },
            {"filename": "demo-1.0.tar.gz", "url": "/g/demo-1.0.tar.gz", "hashes": {}},
        ]
    }
    files = files_from_json(page, page_url, "src")
    assert [(f.location, f.sha256) for f in files] == [
        ("https://mirror.example/f/demo-1.0-py3-none-any.whl", a),
        ("https://mirror.example/g/demo-1.0.tar.gz", None),
    ]
    assert files_from_json(page, page_url, "src", frozenset({b})) == []
    with pytest.raises(DataError):
        files_from_json({"meta": {}}, page_url, "src")


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/simple"


def test_an_unreachable_index_is_unavailable() -> None:
    with pytest.raises(Unavailable, match="unreachable") as caught:
        wheel_sizes([pin("demo", "1.0", "sha256:" + "0" * 64)], Sources((closed_port_url(),)))
    assert caught.value.fix and "CUDABOX_WHEELHOUSE" in caught.value.fix


def test_a_failing_index_is_asked_once_and_others_still_answer(
    serve: Serve, tmp_path: Path
) -> None:
    failing = serve(Index(status=503))
    good = Index()
    pins = [
        pin(
            f"p{i}",
            "1.0",
            good.add(f"p{i}-1.0-py3-none-any.whl", wheel_bytes(tmp_path, f"{i}.whl", {"a": b"x"})),
        )
        for i in range(3)
    ]
    serve(good)
    sizes = wheel_sizes(pins, Sources((failing.url, good.url)), workers=1)
    assert len(sizes) == 3
    assert len(failing.asked) == 1


def test_a_project_missing_from_one_index_is_found_in_the_next(
    serve: Serve, tmp_path: Path
) -> None:
    empty = serve(Index())
    index, demo = demo_index(tmp_path)
    serve(index)
    (size,) = wheel_sizes([demo], Sources((empty.url, index.url)))
    assert size.filename == BEST
    assert empty.asked == [("/simple/demo/", None)]


def test_a_wheelhouse_file_is_hashed_and_read_locally(tmp_path: Path) -> None:
    house = tmp_path / "house"
    house.mkdir()
    local = make_wheel(
        house / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl", {"t": payload(777)}
    )
    make_wheel(house / "torch-2.12.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl", {"t": b""})
    torch = pin("torch", "2.13.0+cpu", f"sha256:{sha(local.read_bytes())}")
    # An unreachable index does not matter once the wheelhouse holds the locked file.
    (size,) = wheel_sizes([torch], Sources((closed_port_url(),), (house,)))
    assert (size.location, size.download_bytes) == (str(local), local.stat().st_size)
    assert (size.installed_bytes, size.files) == (777, 1)
    # A file of the right name but another content is not the locked one.
    with pytest.raises(Unavailable):
        wheel_sizes(
            [pin("torch", "2.13.0+cpu", "sha256:" + "1" * 64)],
            Sources((closed_port_url(),), (house,)),
        )
    with pytest.raises(DataError):
        wheel_sizes([pin("torch", "2.13.0+cpu", "sha256:" + "1" * 64)], Sources((), (house,)))


def test_a_file_url_index_is_read_like_pips(tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    wheel = make_wheel(files / "demo-1.0-py3-none-any.whl", {"demo/a.py": payload(321)})
    page = tmp_path / "simple" / "demo"
    page.mkdir(parents=True)
    digest = sha(wheel.read_bytes())
    (page / "index.html").write_text(
        f'<a href="../../files/{wheel.name}#sha256={digest}">{wheel.name}</a>'
    )
    index_url = (tmp_path / "simple").as_uri()
    (size,) = wheel_sizes([pin("demo", "1.0", f"sha256:{digest}")], Sources((index_url,)))
    assert (size.location, size.installed_bytes) == (str(wheel), 321)


# -- where to look -------------------------------------------------------------------------------


def test_sources_follow_the_catalog_and_a_mirror_replaces_pypi() -> None:
    catalog = load_catalog()
    cpu = catalog.get("torch-2.13-cpu")
    assert cpu.index_url
    assert sources_for(cpu) == Sources((PYPI_SIMPLE, cpu.index_url))
    mirror = "https://mirror.example/simple"
    house = Path("/wheels")
    assert sources_for(cpu, mirror=mirror, wheelhouses=[house]) == Sources(
        (mirror, cpu.index_url), (house,)
    )
    assert sources_for(catalog.get("torch-2.15-cu132")) == Sources((PYPI_SIMPLE,))


def test_the_ca_bundle_comes_from_the_environment_first(tmp_path: Path) -> None:
    assert default_ca_bundle({"REQUESTS_CA_BUNDLE": "/a.pem", "SSL_CERT_FILE": "/b.pem"}) == Path(
        "/a.pem"
    )
    assert default_ca_bundle({"SSL_CERT_FILE": "/b.pem"}) == Path("/b.pem")
    host = Path("/etc/ssl/certs/ca-certificates.crt")
    assert default_ca_bundle({}) == (host if host.is_file() else None)
