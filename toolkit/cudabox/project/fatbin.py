"""The GPU code compiled into shared objects and wheels, read in pure Python (no cuobjdump).

An ELF64 `.so` built by nvcc carries its device code in the `.nv_fatbin` section (and
`__nv_relfatbin` for relocatable device code). Each section holds one or more fatbin containers:

    container header, 16 bytes: u32 magic 0xBA55ED50, u16 version, u16 header size,
                                u64 size of the entries that follow the header
    entry header, 64 bytes:     u16 kind (1 PTX, 2 ELF/SASS), u16 version, u32 header size,
                                u64 payload size, u32 compressed size, u32 (unused here),
                                u16 minor, u16 major, u32 arch (80 for sm_80),
                                u32 name offset, u32 name length,
                                u64 flags (0x2000 or 0x8000: compressed),
                                u64 (zero), u64 decompressed size
    payload:                    header size bytes after the entry's start, payload size long

This layout is not published by NVIDIA; it is the reverse-engineered form documented by the
open-source fatbin decompressor of Niklas Eiling (RWTH Aachen, "cuda-fatbin-decompression",
Apache-2.0) and by the Rust crate `fatbinary` that builds on it; cudabox reads only the headers.
The ELF parts (section headers, SHT_DYNAMIC, DT_NEEDED) follow the System V gABI.

Reading never loads a file whole: a wheel's members are streamed, entry payloads are skipped,
and only the ELF header, the section table, the dynamic section and fatbin headers are read.
"""

from __future__ import annotations

import re
import struct
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from cudabox.errors import DataError
from cudabox.versions import Arch

FATBIN_MAGIC = 0xBA55ED50
FATBIN_SECTIONS = (".nv_fatbin", "__nv_relfatbin")
KIND_PTX = 1
KIND_ELF = 2
# 0x2000: compressed (the decompressor's own constant). 0x8000: observed in NVIDIA's CUDA 13
# wheels on exactly the entries whose compressed and decompressed sizes are set (a newer
# compression); entries with neither bit have both sizes zero.
COMPRESSED_FLAGS = 0x2000 | 0x8000

_CONTAINER = struct.Struct("<IHHQ")
_ENTRY = struct.Struct("<HHIQIIHHIIIQQQ")
_SECTION = struct.Struct("<IIQQQQIIQQ")
_DYN = struct.Struct("<qQ")
_SHT_DYNAMIC = 6
_SHT_NOBITS = 8
_DT_NEEDED = 1
_MAGIC_BYTES = struct.pack("<I", FATBIN_MAGIC)
# The section table usually follows .shstrtab at the end of the file: read both in one window,
# so a compressed wheel member is not decompressed a third time to reach the names.
_TAIL_WINDOW = 256 * 1024
_SCAN_CHUNK = 64 * 1024
_SKIP_CHUNK = 1024 * 1024
_SO_RE = re.compile(r"\.so(?:\.\d+)*$")
_CUDART_RE = re.compile(r"^libcudart\.so\.(\d+)$")
_FIX = "rebuild the file, or report it to cudabox with the wheel's name"


@dataclass(frozen=True)
class FatbinEntry:
    kind: str  # "sass" or "ptx"
    arch: Arch  # the base architecture: an sm_90a entry reads 9.0 (see flags)
    compressed: bool
    # The entry's raw flags. In CUDA 13 wheels, bit 0x100000 marks some sm_90/sm_100 entries and
    # 0x200000 some sm_120 ones (likely the arch- and family-specific "a"/"f" targets); bit
    # 0x1000000 is on every sm_100+ entry. Unconfirmed without cuobjdump, so kept, not decoded.
    flags: int = 0


@dataclass(frozen=True)
class GpuCode:
    """The architectures compiled into a file (or the union over several)."""

    sass: tuple[Arch, ...] = ()
    ptx: tuple[Arch, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.sass or self.ptx)

    @classmethod
    def of(cls, entries: Iterable[FatbinEntry]) -> GpuCode:
        entries = list(entries)
        return cls(
            sass=_sorted({e.arch for e in entries if e.kind == "sass"}),
            ptx=_sorted({e.arch for e in entries if e.kind == "ptx"}),
        )

    @classmethod
    def union(cls, codes: Iterable[GpuCode]) -> GpuCode:
        codes = list(codes)
        return cls(
            sass=_sorted({a for c in codes for a in c.sass}),
            ptx=_sorted({a for c in codes for a in c.ptx}),
        )


@dataclass(frozen=True)
class SharedObject:
    name: str  # the path inside the wheel, or the file's path
    entries: tuple[FatbinEntry, ...]
    needed: tuple[str, ...]  # DT_NEEDED, in order

    @property
    def code(self) -> GpuCode:
        return GpuCode.of(self.entries)

    @property
    def cuda_runtime_majors(self) -> tuple[int, ...]:
        """The CUDA runtime majors it links (libcudart.so.12 -> 12)."""
        return tuple(sorted({int(m[1]) for n in self.needed if (m := _CUDART_RE.match(n))}))


@dataclass(frozen=True)
class WheelCode:
    wheel: str
    files: tuple[SharedObject, ...]  # every ELF shared object in the wheel

    @property
    def code(self) -> GpuCode:
        return GpuCode.union(f.code for f in self.files)

    @property
    def cuda_runtime_majors(self) -> tuple[int, ...]:
        return tuple(sorted({m for f in self.files for m in f.cuda_runtime_majors}))

    @property
    def with_code(self) -> tuple[SharedObject, ...]:
        return tuple(f for f in self.files if not f.code.empty)


def _sorted(archs: set[Arch]) -> tuple[Arch, ...]:
    return tuple(sorted(archs, key=lambda a: (a.major, a.minor, a.suffix)))


class _Reader:
    """Positioned reads over a stream, forward where possible (a zip member rewinds by
    decompressing again from its start), with one cached window."""

    def __init__(self, stream: IO[bytes], name: str, cheap_seek: bool) -> None:
        self.stream = stream
        self.name = name
        self.cheap_seek = cheap_seek
        self.window_start = 0
        self.window = b""

    def _go(self, offset: int) -> None:
        if self.cheap_seek:
            self.stream.seek(offset)
            return
        # A zip member seeks by decompressing in 16 MiB reads; skipping in 1 MiB reads keeps
        # the memory of a 2 GB member small. Going back means starting over.
        if offset < self.stream.tell():
            self.stream.seek(0)
        while (gap := offset - self.stream.tell()) > 0:
            if not self.stream.read(min(gap, _SKIP_CHUNK)):
                break

    def read_at(self, offset: int, size: int, what: str) -> bytes:
        start = offset - self.window_start
        if start >= 0 and start + size <= len(self.window):
            return self.window[start : start + size]
        self._go(offset)
        data = self.stream.read(size)
        if len(data) != size:
            raise DataError(
                f"{self.name}: the {what} at byte {offset} runs past the end of the file "
                "(truncated or not a valid ELF file)",
                _FIX,
            )
        return data

    def keep(self, offset: int, size: int, what: str) -> None:
        self.window = b""
        self.window = self.read_at(offset, size, what)
        self.window_start = offset


def read_shared_object(
    stream: IO[bytes], name: str, cheap_seek: bool = True
) -> SharedObject | None:
    """The fatbin entries and DT_NEEDED of an ELF64 file; None when it is not ELF at all.

    `cheap_seek` False: the stream is a compressed zip member, read forward in small steps."""
    reader = _Reader(stream, name, cheap_seek)
    stream.seek(0)
    ident = stream.read(64)
    if not ident.startswith(b"\x7fELF"):
        return None  # a linker script or other text named .so
    if len(ident) < 64 or ident[4] != 2 or ident[5] != 1:
        raise DataError(
            f"{name}: only 64-bit little-endian ELF files are read (class {ident[4:5].hex()}, "
            f"data {ident[5:6].hex()})",
            "GPU wheels for linux x86_64 and aarch64 are ELF64 little-endian",
        )
    (shoff,) = struct.unpack_from("<Q", ident, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", ident, 0x3A)
    if shoff == 0 or shnum == 0:
        return SharedObject(name, (), ())  # no section table (stripped by sstrip): nothing to read
    if shentsize != _SECTION.size or shstrndx >= shnum:
        raise DataError(f"{name}: unexpected ELF section table (entry size {shentsize})", _FIX)
    window_start = max(0, shoff - _TAIL_WINDOW)
    reader.keep(window_start, shoff - window_start + shnum * shentsize, "section table")
    table = reader.read_at(shoff, shnum * shentsize, "section table")
    sections = [_SECTION.unpack_from(table, i * shentsize) for i in range(shnum)]
    names_header = sections[shstrndx]
    names = reader.read_at(names_header[4], names_header[5], "section name table")
    reader.window = b""

    def section_name(index: int) -> str:
        start = sections[index][0]
        return names[start : names.index(b"\0", start)].decode("ascii", "replace")

    wanted: list[tuple[int, int, str]] = []  # (offset, index, role), read in file order
    for index, header in enumerate(sections):
        kind, offset, size, link = header[1], header[4], header[5], header[6]
        if kind == _SHT_DYNAMIC and link < shnum:
            wanted += [(offset, index, "dynamic"), (sections[link][4], link, "dynstr")]
        elif section_name(index) in FATBIN_SECTIONS and kind != _SHT_NOBITS and size:
            wanted.append((offset, index, "fatbin"))
    raw: dict[str, bytes] = {}
    entries: list[FatbinEntry] = []
    for offset, index, role in sorted(wanted):
        size = sections[index][5]
        if role == "fatbin":
            entries += _fatbin_entries(reader, offset, size, section_name(index))
        else:
            raw[role] = reader.read_at(offset, size, f"{role} section")
    return SharedObject(
        name, tuple(entries), _needed(raw.get("dynamic", b""), raw.get("dynstr", b""))
    )


def _needed(dynamic: bytes, strings: bytes) -> tuple[str, ...]:
    needed: list[str] = []
    for start in range(0, len(dynamic) - _DYN.size + 1, _DYN.size):
        tag, value = _DYN.unpack_from(dynamic, start)
        if tag == 0:  # DT_NULL ends the table
            break
        if tag == _DT_NEEDED and value < len(strings):
            end = strings.find(b"\0", value)
            needed.append(strings[value : end if end >= 0 else None].decode("utf-8", "replace"))
    return tuple(needed)


def _fatbin_entries(reader: _Reader, start: int, size: int, section: str) -> list[FatbinEntry]:
    """Every entry of every container in one fatbin section; payloads are skipped, not read."""
    entries: list[FatbinEntry] = []
    pos, end = start, start + size
    while pos + _CONTAINER.size <= end:
        magic, _version, header_size, fat_size = _CONTAINER.unpack(
            reader.read_at(pos, _CONTAINER.size, f"{section} container header")
        )
        if magic != FATBIN_MAGIC:
            pos = _next_container(reader, start, pos, end, section)
            continue
        if header_size < _CONTAINER.size or pos + header_size + fat_size > end:
            raise DataError(
                f"{reader.name}: the fatbin container at byte {pos} of {section} claims "
                f"{fat_size} bytes, past the section's end",
                _FIX,
            )
        entry, stop = pos + header_size, pos + header_size + fat_size
        while entry + _ENTRY.size <= stop:
            fields = _ENTRY.unpack(reader.read_at(entry, _ENTRY.size, f"{section} entry header"))
            kind, entry_header, payload, arch, flags = (
                fields[0],
                fields[2],
                fields[3],
                fields[8],
                fields[11],
            )
            if kind not in (KIND_PTX, KIND_ELF) or entry_header < _ENTRY.size:
                raise DataError(
                    f"{reader.name}: fatbin entry at byte {entry} of {section} has kind {kind} "
                    f"and header size {entry_header}; expected kind 1 (PTX) or 2 (ELF)",
                    _FIX,
                )
            entries.append(
                FatbinEntry(
                    kind="ptx" if kind == KIND_PTX else "sass",
                    arch=Arch(arch // 10, arch % 10),
                    compressed=bool(flags & COMPRESSED_FLAGS),
                    flags=flags,
                )
            )
            entry += entry_header + payload
        pos = stop
    return entries


def _next_container(reader: _Reader, start: int, pos: int, end: int, section: str) -> int:
    """The next 8-byte-aligned container magic after `pos` (containers are padded apart)."""
    search = pos + 8 - (pos - start) % 8
    while search < end:
        chunk = reader.read_at(search, min(_SCAN_CHUNK, end - search), f"{section} padding")
        found = 0
        while (found := chunk.find(_MAGIC_BYTES, found)) >= 0:
            if (search + found - start) % 8 == 0:
                return search + found
            found += 1
        search += len(chunk)
    return end


def read_file(path: Path) -> SharedObject | None:
    """The GPU code of one shared object on disk."""
    try:
        with path.open("rb") as stream:
            return read_shared_object(stream, str(path))
    except OSError as exc:
        raise DataError(f"{path} cannot be read: {exc.strerror}", "check the path") from None


def read_wheel(path: Path) -> WheelCode:
    """The GPU code of every shared object in a wheel, member by member (streamed)."""
    files: list[SharedObject] = []
    try:
        with zipfile.ZipFile(path) as wheel:
            for info in wheel.infolist():
                if info.is_dir() or not _SO_RE.search(info.filename):
                    continue
                with wheel.open(info) as member:
                    found = read_shared_object(
                        member, f"{path.name}:{info.filename}", cheap_seek=False
                    )
                if found is not None:
                    files.append(found)
    except zipfile.BadZipFile as exc:
        raise DataError(f"{path} is not a wheel (zip): {exc}", "download the wheel again") from None
    except OSError as exc:
        raise DataError(f"{path} cannot be read: {exc.strerror}", "check the path") from None
    return WheelCode(path.name, tuple(files))
