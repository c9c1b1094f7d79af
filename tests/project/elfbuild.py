"""Synthetic ELF64 shared objects and fatbins for the fatbin reader's tests.

The layout is the one toolkit/cudabox/project/fatbin.py documents (System V gABI for ELF; the
reverse-engineered fatbin container/entry headers); `readelf` checks the ELF side in the tests.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

MAGIC = 0xBA55ED50
_SHT_PROGBITS, _SHT_STRTAB, _SHT_DYNAMIC = 1, 3, 6
_DYNSTR_AT = 64 + 2 * 56  # .dynstr follows the ELF header and the program headers


@dataclass(frozen=True)
class Entry:
    kind: str  # "sass" or "ptx"
    arch: int  # 80 for sm_80
    compressed: bool = False
    compression_flag: int = 0x2000  # CUDA 13's wheels set 0x8000 instead
    payload: bytes = b"\x00" * 24
    header_size: int = 64  # newer toolkits write 72-byte entry headers; the reader must follow it


def fatbin(entries: Sequence[Entry]) -> bytes:
    """One fatbin container: a 16-byte header, then each entry's header and payload."""
    body = b""
    for e in entries:
        payload = e.payload + b"\0" * (-len(e.payload) % 8)
        flags = 0x11 | (
            e.compression_flag if e.compressed else 0
        )  # 64-bit, linux, maybe compressed
        header = struct.pack(
            "<HHIQIIHHIIIQQQ",
            1 if e.kind == "ptx" else 2,
            0x0101,
            e.header_size,
            len(payload),
            len(payload) if e.compressed else 0,
            0,
            e.arch % 10,
            e.arch // 10,
            e.arch,
            0,
            0,
            flags,
            0,
            len(payload) * 3 if e.compressed else 0,
        )
        body += header + b"\0" * (e.header_size - 64) + payload
    return struct.pack("<IHHQ", MAGIC, 1, 16, len(body)) + body


def shared_object(
    needed: Sequence[str] = (),
    sections: Sequence[tuple[str, bytes]] = (),
    filler: int = 0,
    trailing: int = 0,
) -> bytes:
    """An ELF64 little-endian ET_DYN: .dynstr, .dynamic (DT_NEEDED...), the given PROGBITS
    sections (after `filler` zero bytes, to stand for a large library), .shstrtab, then
    `trailing` zero bytes (a section between the names and the table), then the table."""
    dynstr = b"\0"
    dynamic = b""
    for name in needed:
        dynamic += struct.pack("<qQ", 1, len(dynstr))
        dynstr += name.encode() + b"\0"
    # DT_STRTAB/DT_STRSZ (addresses equal file offsets: one PT_LOAD maps the file at 0).
    dynamic += struct.pack("<qQ", 5, _DYNSTR_AT) + struct.pack("<qQ", 10, len(dynstr))
    dynamic += struct.pack("<qQ", 0, 0)
    plan: list[tuple[str, int, bytes, int]] = [
        (".dynstr", _SHT_STRTAB, dynstr, 0),
        (".dynamic", _SHT_DYNAMIC, dynamic, 1),  # sh_link: section 1, .dynstr
        (".filler", _SHT_PROGBITS, b"\0" * filler, 0),
        *((name, _SHT_PROGBITS, data, 0) for name, data in sections),
    ]
    shstrtab = b"\0"
    name_offsets = []
    for name in [*(p[0] for p in plan), ".shstrtab", ".trailing"]:
        name_offsets.append(len(shstrtab))
        shstrtab += name.encode() + b"\0"
    names_index = len(plan) + 1  # after the null section
    plan.append((".shstrtab", _SHT_STRTAB, shstrtab, 0))
    plan.append((".trailing", _SHT_PROGBITS, b"\0" * trailing, 0))
    out = bytearray(64 + 2 * 56)  # ELF header, then two program headers
    assert len(out) == _DYNSTR_AT
    headers = [b"\0" * 64]
    for (_name, kind, data, link), name_offset in zip(plan, name_offsets, strict=True):
        out += b"\0" * (-len(out) % 8)
        headers.append(
            struct.pack(
                "<IIQQQQIIQQ",
                name_offset,
                kind,
                0,
                0,
                len(out),
                len(data),
                link,
                0,
                8,
                16 if kind == _SHT_DYNAMIC else 0,
            )
        )
        out += data
    out += b"\0" * (-len(out) % 8)
    shoff = len(out)
    out += b"".join(headers)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\0" * 8
    # e_phoff 64 and two program headers: readelf -d finds .dynamic through PT_DYNAMIC.
    fields = (ident, 3, 62, 1, 0, 64, shoff, 0, 64, 56, 2, 64, len(headers), names_index)
    out[:64] = struct.pack("<16sHHIQQQIHHHHHH", *fields)
    dyn_offset, dyn_size = struct.unpack_from("<QQ", headers[2], 24)
    load = struct.pack("<IIQQQQQQ", 1, 4, 0, 0, 0, len(out), len(out), 0x1000)  # PT_LOAD
    dyn = struct.pack("<IIQQQQQQ", 2, 6, dyn_offset, dyn_offset, dyn_offset, dyn_size, dyn_size, 8)
    out[64 : 64 + 112] = load + dyn
    return bytes(out)
