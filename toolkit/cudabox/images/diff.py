"""`cudabox diff A B`: what differs between two images, and what a host holding A downloads for B.

Both images are read from one `docker save` stream, in which the engine writes a layer the two
share only once; so each distinct layer is read and hashed once, as it streams past (no file
content is kept in memory, which is what makes 6 GB CUDA images workable). Each image's layers
are then replayed in order into a tree of the merged filesystem (whiteouts and opaque folders
applied) and the two trees are compared: Python distributions (from `*.dist-info/METADATA` and
`RECORD` in any site-packages), then every other path. Images with the same layers (the same
diff_ids in the same order) have the same filesystem by construction and are not read at all.

Everything but `diff_images` works on typed values and byte streams; it reads the engine it is
given (cudabox.commands.diff opens it). The JSON shape is documented in docs/diff.md.
"""

from __future__ import annotations

import csv
import email.parser
import gzip
import hashlib
import io
import json
import posixpath
import re
import tarfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import IO, TYPE_CHECKING, Any, Literal

from packaging.utils import canonicalize_name

from cudabox import __version__
from cudabox.errors import CudaboxError, ExitCode, IntegrityError, UsageError
from cudabox.images.catalog import load_catalog
from cudabox.images.labels import BuiltOn, built_on
from cudabox.output import human_bytes, table

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

    from cudabox.container import ImageInfo
    from cudabox.engine import Engine

SCHEMA = 1
SHOWN_PATHS = 20  # paths listed per kind of change in the human output (--json lists all)
CHUNK = 1 << 20
# dist-info files whose content is parsed as it streams past; larger ones are only hashed.
_KEEP_LIMIT = {"METADATA": 16 << 20, "RECORD": 64 << 20}
# Small members of a `docker save` stream (manifests, configs) are kept to be parsed at the end.
_SMALL_LIMIT = 16 << 20
_SITE_DIRS = ("site-packages", "dist-packages")
_DIST_FILE = re.compile(r"/(?:site|dist)-packages/[^/]+\.dist-info/(METADATA|RECORD)$")
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"

Progress = Callable[[str], None]
Kind = Literal["file", "dir", "symlink", "other"]
Verdict = Literal["identical", "same-files", "different"]
Change = Literal["added", "removed", "changed"]


# ---- what a layer holds ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Node:
    """One path of a filesystem, without its content: kind, metadata and a content digest."""

    kind: Kind
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    size: int = 0
    digest: str = ""  # sha256 of a file's content (hex)
    target: str = ""  # a symlink's target; "major:minor" of a device
    # Parsed from dist-info files as they streamed past (their content is not kept).
    meta: tuple[str, str] | None = None  # (Name, Version) of a METADATA file
    record: tuple[str, ...] = ()  # the paths a RECORD file lists, as written there

    def differences(self, other: Node) -> tuple[str, ...]:
        """What differs, in the words the output uses; file times are deliberately ignored."""
        if self.kind != other.kind:
            return ("kind",)
        found = []
        if self.kind == "file" and (self.digest, self.size) != (other.digest, other.size):
            found.append("content")
        if self.kind in ("symlink", "other") and self.target != other.target:
            found.append("target")
        if self.mode != other.mode:
            found.append("mode")
        if (self.uid, self.gid) != (other.uid, other.gid):
            found.append("owner")
        return tuple(found)


Action = Literal["add", "link", "whiteout", "opaque"]


@dataclass(frozen=True, slots=True)
class Entry:
    """One member of a layer tarball, as an operation on the filesystem below it."""

    path: str  # absolute, normalised: "/usr/lib/x"
    action: Action
    node: Node | None = None  # for "add"
    link: str = ""  # a hard link's target path (for "link")
    mode: int = 0  # a hard link's own header (kept for its mode and owner)
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class Layer:
    entries: tuple[Entry, ...]
    # Bytes of its files as the engine counts them (`docker history`'s SIZE): regular files, plus
    # symlinks by the length of their target, hard links once.
    size: int


def _norm(name: str) -> str:
    """A member name as an absolute path: "./usr/lib/" -> "/usr/lib"."""
    return posixpath.normpath("/" + name.lstrip("/"))


def read_layer(stream: IO[bytes]) -> Layer:
    """A layer tarball (uncompressed or gzip), each file hashed as it passes; content not kept."""
    reader = stream if isinstance(stream, io.BufferedReader) else io.BufferedReader(_Raw(stream))
    source: IO[bytes] | gzip.GzipFile = reader
    if reader.peek(2)[:2] == b"\x1f\x8b":
        source = gzip.GzipFile(fileobj=reader, mode="rb")
    entries: list[Entry] = []
    size = 0
    with _open_tar(source) as tar:
        while (member := tar.next()) is not None:
            tar.members.clear()  # type: ignore[attr-defined]  # else it keeps every header read
            path = _norm(member.name)
            if path == "/":
                continue
            folder, base = posixpath.split(path)
            if base == _OPAQUE:
                entries.append(Entry(folder, "opaque"))
                continue
            if base.startswith(_WHITEOUT + _WHITEOUT[1:]):
                continue  # aufs bookkeeping (.wh..wh.plnk, ...): not part of the filesystem
            if base.startswith(_WHITEOUT):
                entries.append(Entry(posixpath.join(folder, base[len(_WHITEOUT) :]), "whiteout"))
                continue
            meta = (member.mode & 0o7777, member.uid, member.gid)
            if member.islnk():
                link = _norm(member.linkname)
                entries.append(
                    Entry(path, "link", link=link, mode=meta[0], uid=meta[1], gid=meta[2])
                )
            elif member.isreg():
                fileobj = tar.extractfile(member)
                assert fileobj is not None  # a regular member always has content
                entries.append(Entry(path, "add", _read_file(path, member.size, fileobj, meta)))
                size += member.size
            elif member.issym():
                node = Node("symlink", *meta, size=len(member.linkname), target=member.linkname)
                entries.append(Entry(path, "add", node))
                size += len(member.linkname)
            elif member.isdir():
                entries.append(Entry(path, "add", Node("dir", *meta)))
            else:
                device = f"{member.devmajor}:{member.devminor}" if member.isdev() else ""
                entries.append(Entry(path, "add", Node("other", *meta, target=device)))
    return Layer(tuple(entries), size)


def _read_file(path: str, size: int, fileobj: IO[bytes], meta: tuple[int, int, int]) -> Node:
    digest = hashlib.sha256()
    found = _DIST_FILE.search(path)
    keep: list[bytes] | None = [] if found and size <= _KEEP_LIMIT[found[1]] else None
    while chunk := fileobj.read(CHUNK):
        digest.update(chunk)
        if keep is not None:
            keep.append(chunk)
    node = Node("file", *meta, size=size, digest=digest.hexdigest())
    if keep is None or found is None:
        return node
    text = b"".join(keep).decode("utf-8", errors="replace")
    if found[1] == "METADATA":
        return replace(node, meta=_parse_metadata(text))
    return replace(node, record=_parse_record(text))


def _parse_metadata(text: str) -> tuple[str, str] | None:
    headers = email.parser.HeaderParser().parsestr(text.split("\n\n", 1)[0])
    name, version = headers.get("Name"), headers.get("Version")
    return (str(name).strip(), str(version).strip()) if name and version else None


def _parse_record(text: str) -> tuple[str, ...]:
    return tuple(row[0] for row in csv.reader(io.StringIO(text)) if row and row[0])


# ---- a `docker save` stream ------------------------------------------------------------------


@dataclass(frozen=True)
class SavedImage:
    id: str  # sha256:<hex> of its config
    tags: tuple[str, ...]
    diff_ids: tuple[str, ...]
    layers: tuple[Layer, ...]  # in order, bottom first


@dataclass(frozen=True)
class SavedArchive:
    images: Mapping[str, SavedImage]  # by image id
    layers_read: int  # distinct layer tarballs read (a layer both images share counts once)

    def image(self, image_id: str) -> SavedImage:
        try:
            return self.images[image_id]
        except KeyError:
            raise IntegrityError(
                f"the saved archive holds no image {image_id} (it has {', '.join(self.images) or 'none'})",
                "check that the engine still has the image (it may have been removed meanwhile)",
            ) from None


def read_saved(stream: IO[bytes], progress: Progress | None = None) -> SavedArchive:
    """Every image of a `docker save` stream (Docker's own layout or the OCI one), read once.

    The manifest comes last in Docker's layout, so layers are read (and hashed) as they come and
    put in order at the end. A layer the engine wrote as a link to another is not read again.
    """
    try:
        return _read_saved(stream, progress)
    except (tarfile.TarError, EOFError, zlib.error, json.JSONDecodeError, KeyError) as exc:
        raise IntegrityError(
            f"the saved images are not a readable `docker save` archive: {exc}",
            "retry; if it persists, check the engine's disk and its log",
        ) from None


def _read_saved(stream: IO[bytes], progress: Progress | None) -> SavedArchive:
    layers: dict[str, Layer] = {}
    links: dict[str, str] = {}
    small: dict[str, bytes] = {}
    with _open_tar(stream) as outer:
        while (member := outer.next()) is not None:
            outer.members.clear()  # type: ignore[attr-defined]
            name = posixpath.normpath(member.name)
            if member.issym() or member.islnk():
                base = posixpath.dirname(name) if member.issym() else ""
                links[name] = posixpath.normpath(posixpath.join(base, member.linkname))
                continue
            if not member.isreg():
                continue
            # A BufferedReader (tarfile's ExFileObject), so it can be peeked into.
            reader = outer.extractfile(member)
            assert isinstance(reader, io.BufferedReader)
            if _is_metadata(name, member.size, reader):
                small[name] = reader.read()
                continue
            if progress:
                progress(f"reading layer {len(layers) + 1} ({human_bytes(member.size)})")
            layers[name] = read_layer(reader)
    images = _images_of(layers, links, small)
    return SavedArchive(images, len(layers))


def _is_metadata(name: str, size: int, reader: io.BufferedReader) -> bool:
    """JSON and small bookkeeping members (kept); everything else is a layer tarball."""
    if size > _SMALL_LIMIT:
        return False
    base = posixpath.basename(name)
    if base.endswith(".json") or base in ("json", "VERSION", "repositories", "oci-layout"):
        return True
    # OCI blobs are named by digest only: a layer is a tarball (ustar magic at byte 257, or an
    # empty one, all zeros) or gzip; configs and manifests are JSON.
    head = reader.peek(512)[:512]
    return not (head[:2] == b"\x1f\x8b" or head[257:262] == b"ustar" or not head.strip(b"\0"))


def _images_of(
    layers: Mapping[str, Layer], links: Mapping[str, str], small: Mapping[str, bytes]
) -> dict[str, SavedImage]:
    def resolve(path: str) -> str:
        seen = set()
        path = posixpath.normpath(path)
        while path in links and path not in seen:
            seen.add(path)
            path = links[path]
        return path

    raw_manifest = small.get("manifest.json")
    if raw_manifest is None:
        raise IntegrityError(
            "the saved archive has no manifest.json", "check that the engine is Docker-compatible"
        )
    images: dict[str, SavedImage] = {}
    for item in json.loads(raw_manifest):
        config_path = resolve(str(item["Config"]))
        config_bytes = small.get(config_path)
        if config_bytes is None:
            raise IntegrityError(f"the saved archive lacks the image config {config_path}")
        image_id = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
        config = json.loads(config_bytes)
        diff_ids = tuple(str(d) for d in (config.get("rootfs") or {}).get("diff_ids") or ())
        paths = [resolve(str(p)) for p in item.get("Layers") or ()]
        if len(paths) != len(diff_ids):
            raise IntegrityError(
                f"image {image_id}: the archive lists {len(paths)} layers, its config {len(diff_ids)}"
            )
        missing = [p for p in paths if p not in layers]
        if missing:
            raise IntegrityError(f"image {image_id}: the archive lacks its layer {missing[0]}")
        images[image_id] = SavedImage(
            image_id,
            tuple(item.get("RepoTags") or ()),
            diff_ids,
            tuple(layers[p] for p in paths),
        )
    return images


def _open_tar(stream: IO[bytes] | gzip.GzipFile) -> tarfile.TarFile:
    """A tar stream read front to back, in tarfile's random-access mode over a forward-only file.

    tarfile's own stream mode ("r|") copies its whole read buffer on every 512-byte header read:
    with a buffer big enough for fast content reads, that made a 1.2 GB image take minutes.
    """
    return tarfile.TarFile(fileobj=_Forward(stream), mode="r")  # type: ignore[arg-type]


class _Forward:
    """A stream with the tell() and forward seek() that tarfile's random-access mode uses."""

    def __init__(self, stream: IO[bytes] | gzip.GzipFile) -> None:
        self._stream = stream
        self._position = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._position += len(data)
        return data

    def tell(self) -> int:
        return self._position

    def seek(self, position: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            position += self._position
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("a stream cannot seek from its end")
        if position < self._position:
            raise io.UnsupportedOperation("a stream cannot seek backwards")
        while self._position < position:
            skipped = self._stream.read(min(CHUNK, position - self._position))
            if not skipped:
                break
            self._position += len(skipped)
        return self._position


class _Raw(io.RawIOBase):
    """Any binary file object as a raw stream, so that a BufferedReader can peek into it."""

    def __init__(self, fileobj: IO[bytes]) -> None:
        self._fileobj = fileobj

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self._fileobj.read(len(view))
        view[: len(data)] = data
        return len(data)


class ChunkStream(io.RawIOBase):
    """An iterator of byte chunks (the engine's answer) as a readable raw stream."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._left = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        while not self._left:
            try:
                self._left = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        count = min(len(view), len(self._left))
        view[:count] = self._left[:count]
        self._left = self._left[count:]
        return count


# ---- the merged filesystem -------------------------------------------------------------------


class Tree:
    """The filesystem an image's layers make, path -> Node, with each folder's children."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {"/": Node("dir")}
        self.children: dict[str, set[str]] = {"/": set()}

    @classmethod
    def of(cls, layers: Iterable[Layer]) -> Tree:
        tree = cls()
        for layer in layers:
            tree.apply(layer)
        return tree

    def apply(self, layer: Layer) -> None:
        # Whiteouts and opaque markers hide only what the layers below hold (OCI image spec), so
        # they go first, whatever their place in the tarball.
        for entry in layer.entries:
            if entry.action == "whiteout":
                self.remove(entry.path)
            elif entry.action == "opaque":
                for child in list(self.children.get(entry.path, ())):
                    self.remove(child)
        for entry in layer.entries:
            if entry.action == "add":
                assert entry.node is not None
                self.put(entry.path, entry.node)
            elif entry.action == "link":
                # A hard link is the same file under a second name: its content is the target's.
                target = self.nodes.get(entry.link)
                if target is not None and target.kind == "file":
                    node = replace(target, mode=entry.mode, uid=entry.uid, gid=entry.gid)
                else:
                    node = Node("file", entry.mode, entry.uid, entry.gid, digest=f"->{entry.link}")
                self.put(entry.path, node)

    def put(self, path: str, node: Node) -> None:
        old = self.nodes.get(path)
        if old is not None and old.kind == "dir" and node.kind != "dir":
            self.remove(path)  # a file over a folder hides all of it
        self._ensure_folder(posixpath.dirname(path))
        self.nodes[path] = node
        if node.kind == "dir":
            self.children.setdefault(path, set())
        self.children[posixpath.dirname(path)].add(path)

    def _ensure_folder(self, path: str) -> None:
        node = self.nodes.get(path)
        if node is not None and node.kind == "dir":
            return
        # Tarballs may omit a parent folder that a lower layer made; one that nobody made is
        # created as the engine would, and a non-folder in the way is replaced.
        self.put(path, Node("dir"))

    def remove(self, path: str) -> None:
        if path not in self.nodes or path == "/":
            return
        for child in list(self.children.get(path, ())):
            self.remove(child)
        del self.nodes[path]
        self.children.pop(path, None)
        self.children[posixpath.dirname(path)].discard(path)

    def under(self, path: str) -> Iterator[str]:
        for child in self.children.get(path, ()):
            yield child
            yield from self.under(child)


# ---- distributions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Distribution:
    name: str  # as its METADATA spells it
    version: str
    location: str  # the site-packages folder
    dist_info: str  # its *.dist-info folder
    files: frozenset[str]  # paths it owns (see distributions())
    size: int  # bytes of the files it owns that exist

    @property
    def key(self) -> tuple[str, str]:
        return self.location, canonicalize_name(self.name)


def distributions(tree: Tree) -> dict[tuple[str, str], Distribution]:
    """Every distribution installed in a site-packages (or dist-packages) folder of the tree.

    A distribution owns the paths its RECORD lists, its dist-info folder, and the
    `__pycache__/*.pyc` of the `.py` files it owns (compiled after installation, so not in RECORD).
    """
    found: dict[tuple[str, str], Distribution] = {}
    owner: dict[str, tuple[str, str]] = {}
    for path in sorted(p for p in tree.nodes if p.endswith(".dist-info/METADATA")):
        node = tree.nodes[path]
        dist_info = posixpath.dirname(path)
        location = posixpath.dirname(dist_info)
        if node.meta is None or posixpath.basename(location) not in _SITE_DIRS:
            continue
        record = tree.nodes.get(dist_info + "/RECORD")
        files = (
            {posixpath.normpath(posixpath.join(location, p)) for p in record.record}
            if record
            else set()
        )
        files.update(tree.under(dist_info))
        files.add(dist_info)
        dist = Distribution(node.meta[0], node.meta[1], location, dist_info, frozenset(files), 0)
        if dist.key in found:
            continue  # two dist-info folders for one name (a broken install): the first wins
        found[dist.key] = dist
        for owned in files:
            owner.setdefault(owned, dist.key)
    extra: dict[tuple[str, str], set[str]] = {}
    for path in tree.nodes:
        folder, base = posixpath.split(path)
        if posixpath.basename(folder) == "__pycache__" and base.endswith(".pyc"):
            source = posixpath.join(posixpath.dirname(folder), base.split(".", 1)[0] + ".py")
            if source in owner:
                extra.setdefault(owner[source], set()).add(path)
    result = {}
    for key, dist in found.items():
        all_files = dist.files | extra.get(key, set())
        size = sum(
            n.size for p in all_files if (n := tree.nodes.get(p)) is not None and n.kind == "file"
        )
        result[key] = replace(dist, files=all_files, size=size)
    return result


# ---- the comparison --------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageSide:
    """One image as the comparison sees it; `tree` is None when its layers were not read."""

    ref: str
    id: str
    diff_ids: tuple[str, ...]
    size: int  # bytes, as the engine counts them
    layer_sizes: tuple[int | None, ...]
    tree: Tree | None = None
    base: BuiltOn | None = None  # the base it was built on, from its labels (None: unlabelled)


@dataclass(frozen=True)
class LayerRow:
    diff_id: str
    size: int | None  # None when the layers were not read (identical images)
    shared: bool  # the other image has this diff_id somewhere
    chain_shared: bool  # this layer and every one below it equal the other image's


@dataclass(frozen=True)
class Sharing:
    count: int
    bytes: int


@dataclass(frozen=True)
class LayerComparison:
    a: tuple[LayerRow, ...]
    b: tuple[LayerRow, ...]
    shared: Sharing  # distinct diff_ids in both images, wherever they sit
    chain_shared: Sharing  # the common bottom of the two stacks: what `docker pull` skips
    b_fetch_chain: int  # bytes of B a host holding A still downloads with Docker
    b_fetch_set: int  # ... with a store that dedups by digest (registries, containerd)


@dataclass(frozen=True)
class DistChange:
    change: Change
    name: str
    location: str
    old_version: str | None
    new_version: str | None
    old_size: int | None
    new_size: int | None
    files_added: int = 0
    files_removed: int = 0
    files_changed: int = 0


@dataclass(frozen=True)
class FileChange:
    path: str
    change: Change
    kind: Kind  # on B's side, or A's for a removed path
    old_size: int | None
    new_size: int | None
    what: tuple[str, ...] = ()  # for "changed": kind, content, target, mode, owner


@dataclass(frozen=True)
class ImageDiff:
    a: ImageSide
    b: ImageSide
    layers: LayerComparison
    distributions: tuple[DistChange, ...]
    files: tuple[FileChange, ...]
    seconds: float = 0.0
    layers_read: int = 0

    @property
    def verdict(self) -> Verdict:
        if self.a.diff_ids == self.b.diff_ids:
            return "identical"
        return "different" if self.distributions or self.files else "same-files"

    @property
    def exit_code(self) -> int:
        return ExitCode.FAILED if self.verdict == "different" else ExitCode.OK

    def count(self, change: Change) -> int:
        return sum(1 for f in self.files if f.change == change)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "cudabox.diff",
            "schema": SCHEMA,
            "cudabox_version": __version__,
            "verdict": self.verdict,
            "a": _side_json(self.a, self.layers.a),
            "b": _side_json(self.b, self.layers.b),
            "layers": {
                "shared": {"count": self.layers.shared.count, "bytes": self.layers.shared.bytes},
                "chain_shared": {
                    "count": self.layers.chain_shared.count,
                    "bytes": self.layers.chain_shared.bytes,
                },
                "b_fetch": {"chain": self.layers.b_fetch_chain, "set": self.layers.b_fetch_set},
            },
            "distributions": [
                {
                    "change": d.change,
                    "name": d.name,
                    "location": d.location,
                    "old_version": d.old_version,
                    "new_version": d.new_version,
                    "old_size": d.old_size,
                    "new_size": d.new_size,
                    "files": {
                        "added": d.files_added,
                        "removed": d.files_removed,
                        "changed": d.files_changed,
                    },
                }
                for d in self.distributions
            ],
            "files": {
                "added": self.count("added"),
                "removed": self.count("removed"),
                "changed": self.count("changed"),
                "entries": [
                    {
                        "path": f.path,
                        "change": f.change,
                        "kind": f.kind,
                        "old_size": f.old_size,
                        "new_size": f.new_size,
                        "what": list(f.what),
                    }
                    for f in self.files
                ],
            },
            "layers_read": self.layers_read,
            "seconds": round(self.seconds, 2),
        }


def _side_json(side: ImageSide, rows: Sequence[LayerRow]) -> dict[str, Any]:
    return {
        "ref": side.ref,
        "id": side.id,
        "size": side.size,
        "base": {"name": side.base.name, "digest": side.base.digest} if side.base else None,
        "layers": [
            {
                "diff_id": r.diff_id,
                "size": r.size,
                "shared": r.shared,
                "chain_shared": r.chain_shared,
            }
            for r in rows
        ],
    }


def compare_layers(a: ImageSide, b: ImageSide) -> LayerComparison:
    """Which layers B shares with A, counted both ways a store can share them."""
    chain = 0
    for left, right in zip(a.diff_ids, b.diff_ids, strict=False):
        if left != right:
            break
        chain += 1
    a_set, b_set = set(a.diff_ids), set(b.diff_ids)

    def rows(side: ImageSide, other: set[str]) -> tuple[LayerRow, ...]:
        return tuple(
            LayerRow(d, s, d in other, i < chain)
            for i, (d, s) in enumerate(zip(side.diff_ids, side.layer_sizes, strict=True))
        )

    a_rows, b_rows = rows(a, b_set), rows(b, a_set)
    if a.diff_ids == b.diff_ids:
        # Not read: every byte is shared, and the engine's total is the only size known.
        everything = Sharing(len(a_set), b.size)
        return LayerComparison(a_rows, b_rows, everything, Sharing(chain, b.size), 0, 0)
    sizes = {r.diff_id: r.size or 0 for r in b_rows}
    shared = Sharing(len(a_set & b_set), sum(sizes[d] for d in a_set & b_set))
    chain_bytes = sum(r.size or 0 for r in b_rows[:chain])
    fetch_set = sum(sizes[d] for d in b_set - a_set)
    total_b = sum(r.size or 0 for r in b_rows)
    return LayerComparison(
        a_rows, b_rows, shared, Sharing(chain, chain_bytes), total_b - chain_bytes, fetch_set
    )


def compare(a: ImageSide, b: ImageSide) -> ImageDiff:
    """The whole comparison; trees are needed unless both images have the same layers."""
    layers = compare_layers(a, b)
    if a.diff_ids == b.diff_ids:
        return ImageDiff(a, b, layers, (), ())
    if a.tree is None or b.tree is None:
        raise ValueError("images with different layers need their trees to be compared")
    dists_a, dists_b = distributions(a.tree), distributions(b.tree)
    dist_changes = _compare_distributions(a.tree, b.tree, dists_a, dists_b)
    owned = set().union(*(d.files for d in dists_a.values()), *(d.files for d in dists_b.values()))
    files = _compare_paths(a.tree, b.tree, owned)
    return ImageDiff(a, b, layers, dist_changes, files)


def _compare_distributions(
    tree_a: Tree,
    tree_b: Tree,
    dists_a: Mapping[tuple[str, str], Distribution],
    dists_b: Mapping[tuple[str, str], Distribution],
) -> tuple[DistChange, ...]:
    changes = []
    for key in sorted(dists_a.keys() | dists_b.keys(), key=lambda k: (k[1], k[0])):
        old, new = dists_a.get(key), dists_b.get(key)
        if old is None and new is not None:
            changes.append(
                DistChange("added", new.name, new.location, None, new.version, None, new.size)
            )
        elif new is None and old is not None:
            changes.append(
                DistChange("removed", old.name, old.location, old.version, None, old.size, None)
            )
        elif old is not None and new is not None:
            # The dist-info folder is named after the version: compare it under B's name.
            old_paths = {
                _renamed(p, old.dist_info, new.dist_info): p for p in old.files if p in tree_a.nodes
            }
            new_paths = {p for p in new.files if p in tree_b.nodes}
            both = old_paths.keys() & new_paths
            changed = sum(
                1 for p in both if tree_b.nodes[p].differences(tree_a.nodes[old_paths[p]])
            )
            added, removed = len(new_paths - both), len(old_paths.keys() - both)
            if old.version != new.version or added or removed or changed:
                changes.append(
                    DistChange(
                        "changed",
                        new.name,
                        new.location,
                        old.version,
                        new.version,
                        old.size,
                        new.size,
                        added,
                        removed,
                        changed,
                    )
                )
    return tuple(changes)


def _renamed(path: str, old: str, new: str) -> str:
    if path == old or path.startswith(old + "/"):
        return new + path[len(old) :]
    return path


def _compare_paths(tree_a: Tree, tree_b: Tree, owned: set[str]) -> tuple[FileChange, ...]:
    """Paths outside every distribution that differ. Folders count only when empty on their side
    (a non-empty one is already told by what it holds) or when their mode or owner changed."""
    changes = []
    for path in sorted((tree_a.nodes.keys() | tree_b.nodes.keys()) - owned):
        old, new = tree_a.nodes.get(path), tree_b.nodes.get(path)
        if old is None and new is not None:
            if new.kind != "dir" or not tree_b.children.get(path):
                changes.append(FileChange(path, "added", new.kind, None, _size(new)))
        elif new is None and old is not None:
            if old.kind != "dir" or not tree_a.children.get(path):
                changes.append(FileChange(path, "removed", old.kind, _size(old), None))
        elif old is not None and new is not None:
            what = new.differences(old)
            if what:
                changes.append(FileChange(path, "changed", new.kind, _size(old), _size(new), what))
    return tuple(changes)


def _size(node: Node) -> int | None:
    return node.size if node.kind in ("file", "symlink") else None


def side_of(ref: str, size: int, saved: SavedImage) -> ImageSide:
    return ImageSide(
        ref,
        saved.id,
        saved.diff_ids,
        size,
        tuple(layer.size for layer in saved.layers),
        Tree.of(saved.layers),
    )


# ---- the engine side -------------------------------------------------------------------------


def diff_images(
    engine: Engine, a_ref: str, b_ref: str, progress: Progress | None = None
) -> ImageDiff:
    """Compare two images on the engine, reading their layers only when they differ."""
    started = time.monotonic()
    a, b = _image(engine, a_ref), _image(engine, b_ref)
    if a.diff_ids == b.diff_ids:
        result = compare(
            *(
                ImageSide(r, i.id, i.diff_ids, i.size, (None,) * len(i.diff_ids))
                for r, i in ((a_ref, a), (b_ref, b))
            )
        )
    else:
        chunks = engine.image_tarball(*dict.fromkeys([a.id, b.id]), chunk_size=CHUNK)
        archive = read_saved(io.BufferedReader(ChunkStream(chunks), CHUNK), progress)
        sides = []
        for ref, info in ((a_ref, a), (b_ref, b)):
            saved = archive.image(info.id)
            if saved.diff_ids != info.diff_ids:
                raise IntegrityError(
                    f"{ref}: the saved layers are not the ones the engine lists",
                    "retry; if it persists, the engine's image store is damaged",
                )
            sides.append(side_of(ref, info.size, saved))
        result = replace(compare(sides[0], sides[1]), layers_read=archive.layers_read)
    return replace(
        result,
        a=replace(result.a, base=built_on(a.labels)),
        b=replace(result.b, base=built_on(b.labels)),
        seconds=time.monotonic() - started,
    )


def _image(engine: Engine, ref: str) -> ImageInfo:
    """The engine's image `ref`; a catalog name (`torch-2.13-cpu`) stands for its tag."""
    info = engine.image(ref)
    if info is None and "/" not in ref and ":" not in ref:
        try:
            tag = load_catalog().get(ref).tag
        except CudaboxError:
            tag = ""
        info = engine.image(tag) if tag else None
    if info is None:
        raise UsageError(
            f"image {ref} is not on this engine",
            "name an image of `docker images` (name:tag or id), or build it: `cudabox build NAME`",
        )
    return info


def render(diff: ImageDiff) -> str:
    """The human report: layers, then distributions, then other files, then the verdict."""
    lay = diff.layers
    b_unread = diff.verdict == "identical"
    lines = [
        f"A  {diff.a.ref}  ({diff.a.id.removeprefix('sha256:')[:12]})",
        f"B  {diff.b.ref}  ({diff.b.id.removeprefix('sha256:')[:12]})",
        *_base_lines(diff.a.base, diff.b.base),
        "",
        table(
            ["layers", "count", "bytes"],
            [
                ["in A", len(diff.a.diff_ids), human_bytes(diff.a.size)],
                ["in B", len(diff.b.diff_ids), human_bytes(diff.b.size)],
                ["shared (any position)", lay.shared.count, human_bytes(lay.shared.bytes)],
                [
                    "shared chain (from the bottom)",
                    lay.chain_shared.count,
                    human_bytes(lay.chain_shared.bytes),
                ],
            ],
        ),
        "",
        f"a host holding A downloads for B: {human_bytes(lay.b_fetch_chain)} with docker pull"
        f" (layers above the shared chain), {human_bytes(lay.b_fetch_set)} from a store that"
        " dedups by digest (uncompressed sizes; registries send them compressed)",
    ]
    if not b_unread:
        dists = diff.distributions
        lines += ["", f"distributions: {_counts(dists)}"]
        if dists:
            lines.append(
                table(
                    ["change", "name", "A", "B", "size A", "size B", "files", "location"],
                    [
                        [
                            d.change,
                            d.name,
                            d.old_version or "-",
                            d.new_version or "-",
                            human_bytes(d.old_size),
                            human_bytes(d.new_size),
                            _dist_files(d),
                            d.location,
                        ]
                        for d in dists
                    ],
                )
            )
        lines += ["", f"files outside distributions: {_counts(diff.files)}"]
        for change in ("added", "removed", "changed"):
            picked = [f for f in diff.files if f.change == change]
            for f in picked[:SHOWN_PATHS]:
                suffix = f"  ({', '.join(f.what)})" if f.what else ""
                kind = "" if f.kind == "file" else f" [{f.kind}]"
                lines.append(f"  {change:<8} {f.path}{kind}{suffix}")
            if len(picked) > SHOWN_PATHS:
                lines.append(
                    f"  ... and {len(picked) - SHOWN_PATHS} more {change} (--json lists all)"
                )
    lines += ["", _verdict_line(diff)]
    return "\n".join(lines)


def _base_lines(a: BuiltOn | None, b: BuiltOn | None) -> list[str]:
    """Which base each image was built on (its labels): one line when they share it."""
    if a is None and b is None:
        return []
    if a == b:
        return [f"both built on {a}"]
    return [f"A built on {a or '(no base label)'}", f"B built on {b or '(no base label)'}"]


def _counts(changes: Sequence[DistChange] | Sequence[FileChange]) -> str:
    if not changes:
        return "none differ"
    counts = {c: sum(1 for x in changes if x.change == c) for c in ("added", "removed", "changed")}
    return ", ".join(f"{n} {c}" for c, n in counts.items() if n)


def _dist_files(d: DistChange) -> str:
    if d.change != "changed":
        return "-"
    parts = [(d.files_added, "+"), (d.files_removed, "-"), (d.files_changed, "~")]
    return " ".join(f"{sign}{n}" for n, sign in parts if n) or "same"


def _verdict_line(diff: ImageDiff) -> str:
    if diff.verdict == "identical":
        return "identical: the same layers (diff_ids) in the same order; nothing to download"
    if diff.verdict == "same-files":
        return (
            "identical files: the filesystems hold the same content, but "
            f"{len(diff.b.diff_ids) - diff.layers.chain_shared.count} layer(s) of B differ "
            "(file times or layer boundaries), so they are downloaded again"
        )
    return (
        f"different: {len(diff.distributions)} distribution(s) and {len(diff.files)} other path(s)"
    )
