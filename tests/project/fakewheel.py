"""Real wheels made in a test: pure ones with dependencies, and ones holding a compiled extension
with known GPU code (an ELF from elfbuild.py with a fatbin, linking libcudart.so.N).

They are complete wheels (METADATA, WHEEL, RECORD with hashes), so uv resolves them from a
`--find-links` folder and pip installs them.
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from project.elfbuild import Entry, fatbin, shared_object

EXTENSION_TAG = "cp311-cp311-manylinux_2_28_x86_64"


def make_wheel(
    folder: Path,
    name: str,
    version: str,
    *,
    files: Mapping[str, bytes] | None = None,
    requires: Sequence[str] = (),
    tag: str = "py3-none-any",
) -> Path:
    """A wheel `NAME-VERSION-TAG.whl` in `folder` holding `files` (default: NAME/__init__.py)."""
    module = name.replace("-", "_")
    files = dict(files) if files is not None else {f"{module}/__init__.py": b""}
    dist_info = f"{module}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires
    )
    pure = tag.endswith("-none-any")
    wheel = (
        "Wheel-Version: 1.0\nGenerator: cudabox-tests\n"
        f"Root-Is-Purelib: {'true' if pure else 'false'}\nTag: {tag}\n"
    )
    members = {
        **files,
        f"{dist_info}/METADATA": metadata.encode(),
        f"{dist_info}/WHEEL": wheel.encode(),
    }
    record = "".join(
        f"{path},sha256={_digest(data)},{len(data)}\n" for path, data in members.items()
    )
    record += f"{dist_info}/RECORD,,\n"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{module}-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, data in members.items():
            archive.writestr(_info(member), data)
        archive.writestr(_info(f"{dist_info}/RECORD"), record)
    return path


def extension_wheel(
    folder: Path,
    name: str = "fakeext",
    version: str = "1.0",
    *,
    sass: Sequence[int] = (80, 90),
    ptx: Sequence[int] = (90,),
    needed: Sequence[str] = ("libcudart.so.12",),
    tag: str = EXTENSION_TAG,
    requires: Sequence[str] = (),
) -> Path:
    """A wheel whose `NAME/_ops.so` has SASS for `sass`, PTX for `ptx` (80 = sm_80) and links
    `needed` (default libcudart.so.12): fakeext-1.0-cp311-cp311-manylinux_2_28_x86_64.whl."""
    entries = [Entry("sass", a) for a in sass] + [Entry("ptx", a) for a in ptx]
    module = name.replace("-", "_")
    elf = shared_object(needed=needed, sections=[(".nv_fatbin", fatbin(entries))])
    files = {
        f"{module}/__init__.py": b"from . import _ops  # noqa: F401\n",
        f"{module}/_ops.so": elf,
    }
    return make_wheel(folder, name, version, files=files, requires=requires, tag=tag)


def _info(member: str) -> zipfile.ZipInfo:
    # A fixed date: the same arguments give the same bytes (and the same sha256).
    info = zipfile.ZipInfo(member, date_time=(2020, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    return info


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
