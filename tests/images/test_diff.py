"""`cudabox diff` on synthetic `docker save` archives built here, byte by byte.

Each archive is what the engine writes: Docker 20.10's layout (a folder per layer, a symlink for a
layer written already, manifest.json last) or the OCI layout of newer engines (blobs named by
digest, gzip layers too). Layers carry whiteouts, opaque folders, hard links, symlinks and
dist-info folders, so every rule of the merged filesystem is checked against a known answer.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import tarfile
import tracemalloc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from packaging.utils import canonicalize_name as canonical_name

from cudabox.container import ImageInfo
from cudabox.errors import IntegrityError, UsageError
from cudabox.images.diff import (
    SHOWN_PATHS,
    ChunkStream,
    ImageDiff,
    ImageSide,
    Tree,
    compare,
    diff_images,
    distributions,
    read_layer,
    read_saved,
    render,
    side_of,
)
from cudabox.output import human_bytes

SITE = "usr/local/lib/python3.11/site-packages"


# ---- building archives -----------------------------------------------------------------------


@dataclass(frozen=True)
class M:
    """One member of a layer tarball."""

    name: str
    kind: str = "file"  # file, dir, sym, hard, char
    data: bytes = b""
    target: str = ""
    mode: int = 0o644
    uid: int = 0
    mtime: int = 0


def file(name: str, data: bytes, mode: int = 0o644, uid: int = 0, mtime: int = 0) -> M:
    return M(name, "file", data, mode=mode, uid=uid, mtime=mtime)


def folder(name: str, mode: int = 0o755) -> M:
    return M(name, "dir", mode=mode)


def symlink(name: str, target: str) -> M:
    return M(name, "sym", target=target, mode=0o777)


def hardlink(name: str, target: str) -> M:
    return M(name, "hard", target=target)


def whiteout(path: str) -> M:
    head, _, base = path.rpartition("/")
    return file(f"{head}/.wh.{base}" if head else f".wh.{base}", b"")


def opaque(path: str) -> M:
    return file(f"{path}/.wh..wh..opq", b"")


def record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def dist(
    name: str, version: str, files: dict[str, bytes], site: str = SITE, extra_meta: str = ""
) -> list[M]:
    """A wheel as pip installs it: its files, plus METADATA and RECORD in its dist-info folder."""
    info = f"{name.replace('-', '_')}-{version}.dist-info"
    metadata = (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{extra_meta}\nA description.\n"
    )
    members = [file(f"{site}/{path}", data) for path, data in files.items()]
    members.append(file(f"{site}/{info}/METADATA", metadata.encode()))
    rows = [f"{p},{record_hash(d)},{len(d)}" for p, d in files.items()]
    rows += [
        f"{info}/METADATA,{record_hash(metadata.encode())},{len(metadata)}",
        f"{info}/RECORD,,",
    ]
    members.append(file(f"{site}/{info}/RECORD", ("\n".join(rows) + "\n").encode()))
    return members


def layer(*members: M | list[M], gz: bool = False) -> bytes:
    flat: list[M] = []
    for m in members:
        flat.extend(m if isinstance(m, list) else [m])
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in flat:
            info = tarfile.TarInfo(m.name)
            info.mode, info.uid, info.gid, info.mtime = m.mode, m.uid, m.uid, m.mtime
            if m.kind == "file":
                info.size = len(m.data)
                tar.addfile(info, io.BytesIO(m.data))
                continue
            info.type = {
                "dir": tarfile.DIRTYPE,
                "sym": tarfile.SYMTYPE,
                "hard": tarfile.LNKTYPE,
                "char": tarfile.CHRTYPE,
            }[m.kind]
            info.linkname = m.target
            tar.addfile(info)
    data = buffer.getvalue()
    return gzip.compress(data, mtime=0) if gz else data


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def diff_id(data: bytes) -> str:
    return "sha256:" + sha(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)


def config_of(layers: Sequence[bytes], name: str) -> bytes:
    return json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": {"test.name": name}},
            "rootfs": {"type": "layers", "diff_ids": [diff_id(x) for x in layers]},
        },
        sort_keys=True,
    ).encode()


@dataclass
class Archive:
    data: bytes
    ids: list[str] = field(default_factory=list)

    def stream(self) -> io.BufferedReader:
        return io.BufferedReader(ChunkStream(chunks(self.data, 7919)))


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _add(tar: tarfile.TarFile, name: str, data: bytes | None = None, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    if link:
        info.type, info.linkname = tarfile.SYMTYPE, link
        tar.addfile(info)
    elif data is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def docker_save(*images: Sequence[bytes]) -> Archive:
    """Docker 20.10's `docker save A B`: sorted names, a folder per layer, a layer the archive
    already holds written as a symlink to it, manifest.json near the end."""
    members: dict[str, tuple[bytes | None, str]] = {}
    manifest: list[dict[str, Any]] = []
    ids: list[str] = []
    written: dict[str, str] = {}  # diff_id -> the folder holding it
    for n, layers in enumerate(images):
        config = config_of(layers, f"image{n}")
        ids.append("sha256:" + sha(config))
        members[f"{sha(config)}.json"] = (config, "")
        paths, chain = [], ""
        for i, data in enumerate(layers):
            chain = sha((chain + diff_id(data)).encode())
            # The top layer's folder is named after the image too (as Docker's v1 ids are).
            v1 = sha((chain + (sha(config) if i == len(layers) - 1 else "")).encode())
            members[v1] = (None, "")
            members[f"{v1}/VERSION"] = (b"1.0", "")
            members[f"{v1}/json"] = (json.dumps({"id": v1}).encode(), "")
            if diff_id(data) in written and written[diff_id(data)] != v1:
                members[f"{v1}/layer.tar"] = (None, f"../{written[diff_id(data)]}/layer.tar")
            else:
                written[diff_id(data)] = v1
                members[f"{v1}/layer.tar"] = (data, "")
            paths.append(f"{v1}/layer.tar")
        manifest.append(
            {
                "Config": f"{sha(config)}.json",
                "RepoTags": [f"test/image{n}:latest"],
                "Layers": paths,
            }
        )
    members["manifest.json"] = (json.dumps(manifest).encode(), "")
    members["repositories"] = (b"{}", "")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in sorted(members):
            content, link = members[name]
            _add(tar, name, content, link)
    return Archive(buffer.getvalue(), ids)


def oci_save(*images: Sequence[bytes]) -> Archive:
    """The OCI layout newer engines write: blobs by digest (configs and manifests too)."""
    blobs: dict[str, bytes] = {}
    manifest, ids = [], []
    for n, layers in enumerate(images):
        config = config_of(layers, f"image{n}")
        ids.append("sha256:" + sha(config))
        blobs[sha(config)] = config
        for data in layers:
            blobs[sha(data)] = data
        oci_manifest = json.dumps({"schemaVersion": 2, "layers": [sha(x) for x in layers]}).encode()
        blobs[sha(oci_manifest)] = oci_manifest
        manifest.append(
            {
                "Config": f"blobs/sha256/{sha(config)}",
                "RepoTags": [f"test/image{n}:latest"],
                "Layers": [f"blobs/sha256/{sha(x)}" for x in layers],
            }
        )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        _add(tar, "blobs")
        _add(tar, "blobs/sha256")
        for digest in sorted(blobs):
            _add(tar, f"blobs/sha256/{digest}", blobs[digest])
        _add(tar, "index.json", b'{"schemaVersion": 2, "manifests": []}')
        _add(tar, "manifest.json", json.dumps(manifest).encode())
        _add(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
    return Archive(buffer.getvalue(), ids)


def compared(a: Sequence[bytes], b: Sequence[bytes], oci: bool = False) -> ImageDiff:
    archive = (oci_save if oci else docker_save)(a, b)
    saved = read_saved(archive.stream())
    return compare(
        side_of("test/a", 0, saved.image(archive.ids[0])),
        side_of("test/b", 0, saved.image(archive.ids[1])),
    )


def tree(*layers: bytes) -> Tree:
    return Tree.of(read_layer(io.BytesIO(x)) for x in layers)


def paths(diff: ImageDiff, change: str) -> list[str]:
    return [f.path for f in diff.files if f.change == change]


BASE = layer(
    folder("etc"),
    file("etc/os-release", b"bookworm\n"),
    folder("usr"),
    folder("usr/bin"),
    file("usr/bin/python3.11", b"\x7fELF python", mode=0o755),
    symlink("usr/bin/python3", "python3.11"),
    folder("opt/app"),
    file("opt/app/a.txt", b"a"),
    file("opt/app/b.txt", b"b"),
    folder("opt/app/sub"),
    file("opt/app/sub/c.txt", b"c"),
)


# ---- the merged filesystem -------------------------------------------------------------------


def test_whiteout_removes_a_file_and_a_whole_folder_of_a_lower_layer() -> None:
    upper = layer(whiteout("etc/os-release"), whiteout("opt/app/sub"))
    fs = tree(BASE, upper)
    assert "/etc/os-release" not in fs.nodes
    assert "/opt/app/sub" not in fs.nodes and "/opt/app/sub/c.txt" not in fs.nodes
    assert "/etc" in fs.nodes and "/opt/app/a.txt" in fs.nodes
    assert not any(".wh." in p for p in fs.nodes)


def test_opaque_folder_hides_lower_content_but_keeps_its_own_layer() -> None:
    # The marker comes after the layer's own file here: it must still hide only what is below.
    upper = layer(folder("opt/app"), file("opt/app/new.txt", b"n"), opaque("opt/app"))
    fs = tree(BASE, upper)
    assert sorted(p for p in fs.nodes if p.startswith("/opt/app/")) == ["/opt/app/new.txt"]
    assert fs.nodes["/opt/app"].kind == "dir"


def test_file_over_a_folder_hides_the_folder_and_folder_over_a_file_replaces_it() -> None:
    upper = layer(file("opt/app/sub", b"now a file"), folder("etc/os-release"))
    fs = tree(BASE, upper)
    assert fs.nodes["/opt/app/sub"].kind == "file"
    assert "/opt/app/sub/c.txt" not in fs.nodes
    assert fs.nodes["/etc/os-release"].kind == "dir"


def test_hard_link_has_its_targets_content_and_follows_it_in_a_diff() -> None:
    old = layer(folder("bin"), file("bin/perl", b"perl 5.36"), hardlink("bin/perl5.36", "bin/perl"))
    new = layer(folder("bin"), file("bin/perl", b"perl 5.38"), hardlink("bin/perl5.36", "bin/perl"))
    fs = tree(old)
    assert fs.nodes["/bin/perl5.36"].digest == fs.nodes["/bin/perl"].digest == sha(b"perl 5.36")
    assert fs.nodes["/bin/perl5.36"].kind == "file"
    diff = compared([BASE, old], [BASE, new])
    assert paths(diff, "changed") == ["/bin/perl", "/bin/perl5.36"]


def test_parent_folders_missing_from_a_tarball_are_made() -> None:
    fs = tree(layer(file("./deep/er/x", b"x")))
    assert fs.nodes["/deep"].kind == fs.nodes["/deep/er"].kind == "dir"
    assert fs.children["/deep/er"] == {"/deep/er/x"}


def test_layer_size_counts_files_and_symlink_targets_and_hard_links_once() -> None:
    data = layer(
        file("a", b"12345"), hardlink("b", "a"), symlink("c", "a-target"), folder("d"), opaque("d")
    )
    assert read_layer(io.BytesIO(data)).size == 5 + len("a-target")


# ---- reading a `docker save` stream ----------------------------------------------------------


def test_a_layer_both_images_share_is_read_once() -> None:
    top_a, top_b = layer(file("a", b"a")), layer(file("b", b"b"))
    archive = docker_save([BASE, top_a], [BASE, top_b])
    assert archive.data.count(b"layer.tar") > 3  # the symlink is there
    saved = read_saved(archive.stream())
    assert saved.layers_read == 3
    a, b = saved.image(archive.ids[0]), saved.image(archive.ids[1])
    assert a.layers[0] is b.layers[0]
    assert a.diff_ids == (diff_id(BASE), diff_id(top_a))
    assert a.tags == ("test/image0:latest",)


def test_a_layer_shared_in_another_position_is_also_read_once() -> None:
    one, two = layer(file("one", b"1")), layer(file("two", b"2"))
    archive = docker_save([BASE, one, two], [BASE, two, one])
    saved = read_saved(archive.stream())
    assert saved.layers_read == 3


def test_oci_layout_with_gzip_layers_reads_like_dockers_own() -> None:
    top_a = layer(file("etc/a", b"a"), gz=True)
    top_b = layer(file("{odd name", b"b"))  # a layer whose first byte is "{", like JSON's
    empty = layer()  # all zeros, as `ENV`-only steps of some builders leave
    diff = compared([BASE, empty, top_a], [BASE, top_b], oci=True)
    assert diff.a.diff_ids[1:] == (diff_id(empty), diff_id(top_a))
    assert diff.a.layer_sizes[1] == 0
    assert paths(diff, "added") == ["/{odd name"] and paths(diff, "removed") == ["/etc/a"]


def test_a_missing_layer_or_image_is_an_integrity_error() -> None:
    archive = docker_save([BASE])
    saved = read_saved(archive.stream())
    with pytest.raises(IntegrityError, match="holds no image sha256:0000"):
        saved.image("sha256:" + "0" * 64)
    broken = io.BytesIO()
    with tarfile.open(fileobj=broken, mode="w") as tar:
        _add(tar, "manifest.json", b'[{"Config": "c.json", "Layers": ["l/layer.tar"]}]')
        _add(tar, "c.json", json.dumps({"rootfs": {"diff_ids": ["sha256:x"]}}).encode())
    with pytest.raises(IntegrityError, match=r"lacks its layer l/layer\.tar"):
        read_saved(io.BytesIO(broken.getvalue()))
    inside_a_layer = archive.data.index(BASE) + len(BASE) // 2
    with pytest.raises(IntegrityError, match="not a readable `docker save` archive"):
        read_saved(io.BytesIO(archive.data[:inside_a_layer]))
    # Cut between members, the archive just ends early: its manifest (written last) is missing.
    with pytest.raises(IntegrityError, match=r"has no manifest\.json"):
        read_saved(io.BytesIO(archive.data[: archive.data.index(BASE) - 512]))


def test_file_content_is_streamed_not_kept(tmp_path: Path) -> None:
    """A 64 MiB file passes through with a few MiB of Python memory at most."""
    big = 64 << 20

    class Zeros(io.RawIOBase):
        def __init__(self) -> None:
            self.left = big

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            count = min(len(buffer), self.left)
            buffer[:count] = bytes(count)
            self.left -= count
            return count

    layer_path = tmp_path / "layer.tar"
    with tarfile.open(layer_path, mode="w") as tar:
        info = tarfile.TarInfo("big.bin")
        info.size = big
        tar.addfile(info, io.BufferedReader(Zeros()))
    digest = hashlib.sha256()
    with layer_path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    config = json.dumps({"rootfs": {"diff_ids": ["sha256:" + digest.hexdigest()]}}).encode()
    archive_path = tmp_path / "save.tar"
    with tarfile.open(archive_path, mode="w") as tar:
        tar.add(layer_path, arcname="l1/layer.tar")
        _add(tar, "c.json", config)
        _add(tar, "manifest.json", b'[{"Config": "c.json", "Layers": ["l1/layer.tar"]}]')
    tracemalloc.start()
    try:
        with archive_path.open("rb") as stream:
            saved = read_saved(stream)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    (image,) = saved.images.values()
    node = Tree.of(image.layers).nodes["/big.bin"]
    assert node.size == big and node.digest == sha(bytes(big))
    assert peak < 12 << 20, f"peak {peak / 2**20:.1f} MiB: file content is being kept"


# ---- distributions ---------------------------------------------------------------------------


def test_distributions_come_from_metadata_and_record_and_own_their_pyc() -> None:
    files = {"fake/__init__.py": b"x = 1\n", "fake/core.py": b"y = 2\n"}
    pyc = file(f"{SITE}/fake/__pycache__/core.cpython-311.pyc", b"compiled")
    fs = tree(layer(dist("Fake.Dist", "1.0", files), pyc, file(f"{SITE}/loose.py", b"")))
    (found,) = distributions(fs).values()
    assert (found.name, found.version) == ("Fake.Dist", "1.0")
    assert found.location == "/" + SITE
    assert f"/{SITE}/fake/__pycache__/core.cpython-311.pyc" in found.files
    assert f"/{SITE}/loose.py" not in found.files
    assert found.size == sum(len(d) for d in files.values()) + len(b"compiled") + sum(
        fs.nodes[p].size for p in found.files if p.startswith(found.dist_info + "/")
    )
    assert canonical_name("Fake.Dist") == canonical_name("fake_dist") == "fake-dist"


def test_dist_info_outside_site_packages_is_not_a_distribution() -> None:
    fs = tree(layer(dist("stray", "1.0", {"stray.py": b""}, site="opt/wheels")))
    assert distributions(fs) == {}


def test_version_change_addition_and_removal_of_distributions() -> None:
    old = layer(
        dist("fake-dist", "1.0", {"fake/__init__.py": b"v1"}),
        dist("gone", "0.1", {"gone.py": b"bye"}),
        dist("same", "3.0", {"same.py": b"s"}),
    )
    new = layer(
        dist("fake-dist", "1.1", {"fake/__init__.py": b"v1.1", "fake/extra.py": b"e"}),
        dist("same", "3.0", {"same.py": b"s"}),
        dist("fresh", "2.0", {"fresh/__init__.py": b"f"}),
    )
    diff = compared([BASE, old], [BASE, new])
    by_name = {d.name: d for d in diff.distributions}
    assert sorted(by_name) == ["fake-dist", "fresh", "gone"]
    changed = by_name["fake-dist"]
    assert (changed.change, changed.old_version, changed.new_version) == ("changed", "1.0", "1.1")
    assert changed.files_added == 1 and changed.files_removed == 0
    assert changed.files_changed == 3  # __init__.py, METADATA, RECORD
    assert changed.new_size is not None and changed.old_size is not None
    assert changed.new_size > changed.old_size
    assert (by_name["fresh"].change, by_name["fresh"].new_version) == ("added", "2.0")
    assert (by_name["gone"].change, by_name["gone"].old_version) == ("removed", "0.1")
    # None of their files is reported again as a file outside distributions.
    assert diff.files == ()
    assert diff.verdict == "different" and diff.exit_code == 1


def test_same_version_with_different_bytes_is_a_changed_distribution() -> None:
    files = {"fake/__init__.py": b"x"}
    pyc_a = file(f"{SITE}/fake/__pycache__/__init__.cpython-311.pyc", b"stamp 1")
    pyc_b = file(f"{SITE}/fake/__pycache__/__init__.cpython-311.pyc", b"stamp 2")
    diff = compared(
        [layer(dist("fake", "1.0", files), pyc_a)], [layer(dist("fake", "1.0", files), pyc_b)]
    )
    (change,) = diff.distributions
    assert (change.change, change.old_version, change.new_version) == ("changed", "1.0", "1.0")
    assert change.files_changed == 1
    assert diff.files == ()


# ---- files outside distributions, layers, verdicts -------------------------------------------


def test_files_added_removed_and_changed_in_content_mode_owner_and_target() -> None:
    upper_a = layer(file("etc/conf", b"1"), file("etc/gone", b"g"))
    upper_b = layer(
        file("etc/conf", b"2"),
        file("opt/app/a.txt", b"a", mode=0o755),
        file("opt/app/b.txt", b"b", uid=1000),
        symlink("usr/bin/python3", "python3.12"),
        file("etc/new", b"n"),
        folder("var/empty"),
        folder("var/full"),
        file("var/full/x", b"x"),
    )
    diff = compared([BASE, upper_a], [BASE, upper_b])
    changed = {f.path: f.what for f in diff.files if f.change == "changed"}
    assert changed == {
        "/etc/conf": ("content",),
        "/opt/app/a.txt": ("mode",),
        "/opt/app/b.txt": ("owner",),
        "/usr/bin/python3": ("target",),
    }
    # An empty new folder is told; a full one is told by what it holds.
    assert paths(diff, "added") == ["/etc/new", "/var/empty", "/var/full/x"]
    assert paths(diff, "removed") == ["/etc/gone"]
    conf = next(f for f in diff.files if f.path == "/etc/conf")
    assert (conf.old_size, conf.new_size) == (1, 1)


def test_file_times_alone_make_different_layers_but_the_same_files() -> None:
    diff = compared(
        [BASE, layer(file("etc/x", b"same", mtime=1))],
        [BASE, layer(file("etc/x", b"same", mtime=2))],
    )
    assert diff.a.diff_ids != diff.b.diff_ids
    assert diff.verdict == "same-files" and diff.exit_code == 0
    assert diff.layers.chain_shared.count == 1
    assert diff.layers.b_fetch_chain == 4
    assert "identical files" in render(diff)


def test_chain_sharing_stops_at_the_first_different_layer_but_set_sharing_does_not() -> None:
    one, two = layer(file("one", b"11")), layer(file("two", b"222"))
    diff = compared([BASE, one, two], [BASE, two, one])
    base_size = read_layer(io.BytesIO(BASE)).size
    assert diff.layers.shared.count == 3
    assert diff.layers.shared.bytes == base_size + 2 + 3
    assert diff.layers.chain_shared.count == 1
    assert diff.layers.chain_shared.bytes == base_size
    assert diff.layers.b_fetch_chain == 5  # Docker pulls both again: their parents differ
    assert diff.layers.b_fetch_set == 0  # a store by digest has them all
    assert [r.chain_shared for r in diff.layers.b] == [True, False, False]
    assert [r.shared for r in diff.layers.b] == [True, True, True]
    assert diff.verdict == "same-files"  # same files in the end: the upper layers commute


def test_identical_layers_are_not_read_at_all() -> None:
    class Refuses:
        def image(self, ref: str) -> ImageInfo | None:
            ids = {"x:1": "sha256:" + "1" * 64, "x:2": "sha256:" + "2" * 64}
            if ref not in ids:
                return None
            return ImageInfo(ids[ref], (ref,), 1000, {}, {}, "", "", ("sha256:aa", "sha256:bb"))

        def image_tarball(self, *refs: str, chunk_size: int = 0) -> Iterator[bytes]:
            raise AssertionError("identical images must not be saved")

    diff = diff_images(Refuses(), "x:1", "x:2")  # type: ignore[arg-type]
    assert diff.verdict == "identical" and diff.exit_code == 0
    assert diff.layers.shared.count == diff.layers.chain_shared.count == 2
    assert diff.layers.shared.bytes == 1000 and diff.layers.b_fetch_chain == 0
    assert [r.size for r in diff.layers.a] == [None, None]
    assert "identical: the same layers" in render(diff)
    with pytest.raises(UsageError, match="image nothere:1 is not on this engine"):
        diff_images(Refuses(), "x:1", "nothere:1")  # type: ignore[arg-type]


def test_diff_images_reads_one_stream_for_both_images() -> None:
    top_a, top_b = layer(file("etc/a", b"a")), layer(file("etc/b", b"b"))
    archive = docker_save([BASE, top_a], [BASE, top_b])
    asked: list[tuple[str, ...]] = []

    class Saves:
        def image(self, ref: str) -> ImageInfo:
            n = int(ref[-1])
            layers = (diff_id(BASE), diff_id([top_a, top_b][n]))
            return ImageInfo(archive.ids[n], (ref,), 100 + n, {}, {}, "", "", layers)

        def image_tarball(self, *refs: str, chunk_size: int = 0) -> Iterator[bytes]:
            asked.append(refs)
            return chunks(archive.data, 65536)

    diff = diff_images(Saves(), "img:0", "img:1")  # type: ignore[arg-type]
    assert asked == [tuple(archive.ids)]
    assert diff.layers_read == 3
    assert (diff.a.size, diff.b.size) == (100, 101)
    assert paths(diff, "added") == ["/etc/b"]


# ---- output ----------------------------------------------------------------------------------


def test_json_shape_is_the_documented_one() -> None:
    old = layer(dist("fake", "1.0", {"fake.py": b"1"}), file("etc/x", b"1"))
    new = layer(dist("fake", "1.1", {"fake.py": b"2"}), file("etc/x", b"2"), file("etc/y", b""))
    report = compared([BASE, old], [BASE, new]).to_json()
    assert report["kind"] == "cudabox.diff" and report["schema"] == 1
    assert set(report) == {
        "kind",
        "schema",
        "cudabox_version",
        "verdict",
        "a",
        "b",
        "layers",
        "distributions",
        "files",
        "layers_read",
        "seconds",
    }
    assert report["verdict"] == "different"
    assert set(report["a"]) == {"ref", "id", "size", "base", "layers"}
    assert report["a"]["base"] is None  # no labels: no base claimed
    assert set(report["a"]["layers"][0]) == {"diff_id", "size", "shared", "chain_shared"}
    assert set(report["layers"]) == {"shared", "chain_shared", "b_fetch"}
    assert set(report["layers"]["b_fetch"]) == {"chain", "set"}
    (dist_change,) = report["distributions"]
    assert dist_change == {
        "change": "changed",
        "name": "fake",
        "location": "/" + SITE,
        "old_version": "1.0",
        "new_version": "1.1",
        "old_size": dist_change["old_size"],
        "new_size": dist_change["new_size"],
        "files": {"added": 0, "removed": 0, "changed": 3},
    }
    assert report["files"]["added"] == 1 and report["files"]["changed"] == 1
    assert report["files"]["entries"][0] == {
        "path": "/etc/x",
        "change": "changed",
        "kind": "file",
        "old_size": 1,
        "new_size": 1,
        "what": ["content"],
    }
    json.dumps(report)  # serialisable as it is


def test_each_side_names_the_base_its_labels_say_it_was_built_on() -> None:
    bootstrap = {
        "org.opencontainers.image.base.name": "cudabox/debian-python:bookworm",
        "org.opencontainers.image.base.digest": "sha256:" + "b" * 64,
    }
    official = {
        "org.opencontainers.image.base.name": "python:3.11-slim-bookworm",
        "org.opencontainers.image.base.digest": "sha256:" + "c" * 64,
    }
    labels = {"x:1": bootstrap, "x:2": bootstrap, "x:3": official, "x:4": {}}

    class Labelled:
        def image(self, ref: str) -> ImageInfo | None:
            layers = ("sha256:aa", "sha256:bb")
            return ImageInfo(
                "sha256:" + ref[-1] * 64, (ref,), 1000, labels[ref], {}, "", "", layers
            )

    def diff(a: str, b: str) -> ImageDiff:
        return diff_images(Labelled(), a, b)  # type: ignore[arg-type]

    same = diff("x:1", "x:2")
    assert same.to_json()["a"]["base"] == {
        "name": "cudabox/debian-python:bookworm",
        "digest": "sha256:" + "b" * 64,
    }
    assert f"both built on cudabox/debian-python:bookworm@sha256:{'b' * 64}" in render(same)
    text = render(diff("x:1", "x:3")).splitlines()
    assert text[2:4] == [
        f"A built on cudabox/debian-python:bookworm@sha256:{'b' * 64}",
        f"B built on python:3.11-slim-bookworm@sha256:{'c' * 64}",
    ]
    unlabelled = diff("x:3", "x:4")
    assert unlabelled.to_json()["b"]["base"] is None
    assert "B built on (no base label)" in render(unlabelled)


def test_human_output_lists_the_first_paths_and_counts_the_rest() -> None:
    many = layer(*(file(f"etc/f{i:03d}", b"x") for i in range(SHOWN_PATHS + 5)))
    diff = compared([BASE], [BASE, many])
    text = render(diff)
    assert f"files outside distributions: {SHOWN_PATHS + 5} added" in text
    assert "/etc/f000" in text and f"/etc/f{SHOWN_PATHS - 1:03d}" in text
    assert f"/etc/f{SHOWN_PATHS:03d}" not in text
    assert "... and 5 more added (--json lists all)" in text
    assert text.splitlines()[-1].startswith("different:")
    assert len(diff.to_json()["files"]["entries"]) == SHOWN_PATHS + 5


def test_sizes_read_as_docker_images_shows_them() -> None:
    assert [human_bytes(n) for n in (None, 6, 325_400, 951_100_000, 1_160_000_000)] == [
        "-",
        "6 B",
        "325.4 kB",
        "951.1 MB",
        "1.16 GB",
    ]


def test_identical_sides_need_no_tree_but_different_ones_do() -> None:
    side = ImageSide("x", "sha256:1", ("sha256:a",), 10, (None,))
    other = ImageSide("y", "sha256:2", ("sha256:b",), 10, (None,))
    assert compare(side, side).verdict == "identical"
    with pytest.raises(ValueError, match="need their trees"):
        compare(side, other)
