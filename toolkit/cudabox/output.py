"""Human and machine output: aligned tables for people, JSON for scripts, progress on stderr.

Also the one reader of files a user or the project names (strict: UTF-8, no NaN, no duplicate
keys, bounded size and depth) and the one writer of reports (checked before the work, atomic).
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO, TypeVar

from cudabox.errors import CudaboxError, DiskFull, UsageError

T = TypeVar("T")

# Host profiles and doctor reports are kilobytes; the bound keeps /dev/zero-like inputs finite.
MAX_INPUT_BYTES = 16 * 1024 * 1024
# Host profiles nest four levels deep (profile, gpus, gpu, mig_devices); reports five.
MAX_JSON_DEPTH = 64
# A JSON integer longer than this is not a count cudabox reads (Python refuses 4300+ digits).
_MAX_INT_DIGITS = 30


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    cells = [
        [str(h) for h in headers],
        *([("" if c is None else str(c)) for c in row] for row in rows),
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def print_json(data: Any, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    stream.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def progress(message: str) -> None:
    """Progress lines go to stderr so that --json output on stdout stays parseable."""
    print(message, file=sys.stderr, flush=True)


def human_bytes(count: int | None) -> str:
    """Decimal units, as `docker images` shows sizes: 1.16 GB, 325.4 kB, 6 B; None is "-"."""
    if count is None:
        return "-"
    if abs(count) < 1000:
        return f"{count} B"
    if abs(count) < 1000**3:
        return f"{count / 1000:.1f} kB" if abs(count) < 1000**2 else f"{count / 1000**2:.1f} MB"
    return f"{count / 1000**3:,.2f} GB"


# ---- reading ------------------------------------------------------------------------------


def read_text(path: Path, what: str, fix: str, error: type[CudaboxError] = UsageError) -> str:
    """The text of the file `path`: a regular file or a pipe, UTF-8, at most MAX_INPUT_BYTES.

    Every way it can fail is an `error` (UsageError for a user's file, DataError for the
    project's data) naming the file, never an OSError or a UnicodeDecodeError.
    """
    where = f"{what} {path}"
    try:
        info = path.stat()
    except FileNotFoundError:
        raise error(f"{where} does not exist", f"check the path, or {fix}") from None
    except NotADirectoryError:
        raise error(
            f"{where} does not exist (a part of the path is a file)", f"check the path, or {fix}"
        ) from None
    except OSError as exc:
        raise error(f"{where} cannot be read: {exc.strerror}", "check the path") from None
    if stat.S_ISDIR(info.st_mode):
        raise error(f"{where} is a directory, not a file", fix)
    if stat.S_ISREG(info.st_mode):
        # O_NONBLOCK: a /proc or /sys file that waits for events (/proc/kmsg) answers at once.
        flags = os.O_RDONLY | os.O_NONBLOCK
    elif stat.S_ISFIFO(info.st_mode):
        flags = os.O_RDONLY  # `--host <(ssh node cudabox probe --json)`: wait for the writer
    else:
        raise error(f"{where} is a device or a socket, not a file", fix)
    try:
        fd = os.open(path, flags | os.O_CLOEXEC)
        try:
            data = _read_bounded(fd)
        finally:
            os.close(fd)
    except BlockingIOError:
        raise error(
            f"{where} cannot be read without waiting (a /proc or device file?)", fix
        ) from None
    except OSError as exc:
        raise error(f"{where} cannot be read: {exc.strerror}", "check the file") from None
    if len(data) > MAX_INPUT_BYTES:
        raise error(f"{where} is larger than {MAX_INPUT_BYTES // 2**20} MiB", fix)
    return decode_text(data, where, fix, error)


def _read_bounded(fd: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_INPUT_BYTES:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def decode_text(data: bytes, where: str, fix: str, error: type[CudaboxError] = UsageError) -> str:
    """Strict UTF-8 (a leading byte-order mark is allowed); the error names line and byte."""
    try:
        return data.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise error(
            f"{where} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line})", fix
        ) from None


def read_json(
    path: Path, what: str, how_to_make: str, error: type[CudaboxError] = UsageError
) -> Any:
    """Parse a JSON file a user passed; any way it is broken is a usage error, not a crash."""
    text = read_text(path, what, how_to_make, error)
    return parse_json(text, f"{what} {path}", how_to_make, error)


class _Refused(ValueError):
    """Raised from the json hooks; json.loads lets it through unchanged."""


def parse_json(text: str, where: str, fix: str, error: type[CudaboxError] = UsageError) -> Any:
    """RFC 8259 JSON only: no NaN or Infinity, numbers that fit, unique keys, bounded nesting."""
    try:
        data = json.loads(
            text,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
            object_pairs_hook=_unique_keys,
        )
    except _Refused as exc:
        raise error(f"{where} is not valid JSON: {exc}", fix) from None
    except json.JSONDecodeError as exc:
        raise error(
            f"{where} is not JSON ({exc.msg}, line {exc.lineno} column {exc.colno})", fix
        ) from None
    except RecursionError:
        raise error(f"{where} is nested deeper than JSON cudabox reads", fix) from None
    problem = _deep_problem(data)
    if problem:
        raise error(f"{where} is not valid JSON: {problem}", fix)
    return data


def _refuse_constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"the number {text[:40]} is too large")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise _Refused(f"the number {text[:20]}... has more than {_MAX_INT_DIGITS} digits")
    return int(text)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _Refused(f"the key {key!r} appears twice in one object")
        result[key] = value
    return result


def _deep_problem(data: Any) -> str | None:
    """Nesting beyond MAX_JSON_DEPTH, or text that cannot be printed (a lone \\udc80 escape)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            items = [*value.keys(), *value.values()]
        elif isinstance(value, list):
            items = value
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return f"the text {value[:40]!r} holds an unpaired surrogate escape"
            continue
        else:
            continue
        if depth > MAX_JSON_DEPTH:
            return f"it is nested deeper than {MAX_JSON_DEPTH} levels"
        stack.extend((item, depth + 1) for item in items)
    return None


# ---- writing ------------------------------------------------------------------------------


def check_writable(path: Path, what: str) -> None:
    """Fail now, before any work, when `path` cannot take `what` (a folder, no folder, read-only).

    '-' (standard output) always can. The check creates and removes a temporary file beside the
    target, which is what write_atomic does for real.
    """
    if str(path) == "-":
        return
    target = _resolve(path, what)
    if target.is_dir():
        raise UsageError(
            f"cannot write the {what} to {path}: it is a directory",
            f"name a file, e.g. {path / 'report.json'}",
        )
    if target.exists() and not target.is_file():
        return  # a device or a pipe (/dev/stdout): written in place, as a stream
    folder = target.parent
    if not folder.is_dir():
        raise UsageError(
            f"cannot write the {what} to {path}: the folder {folder} does not exist",
            f"create it first (mkdir -p {folder}), or choose another path",
        )
    import tempfile  # only commands that write a report pay for its import

    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise _write_error(exc, what, path) from None
    os.close(fd)
    Path(probe).unlink()


def write_atomic(path: Path, text: str, what: str) -> None:
    """Write `text` to `path` whole or not at all: a temporary file beside it, then a rename.

    '-' is standard output; an existing device or pipe is written in place.
    """
    if str(path) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    import tempfile  # start-up: output loads for every command, files are written rarely

    target = _resolve(path, what)
    try:
        if target.exists() and not target.is_file() and not target.is_dir():
            with target.open("w", encoding="utf-8") as stream:
                stream.write(text)
            return
        fd, temporary = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
        )
    except OSError as exc:
        raise _write_error(exc, what, path) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        # mkstemp makes the file 0600; give it the mode a plain write would have.
        mode = stat.S_IMODE(target.stat().st_mode) if target.is_file() else 0o666 & ~_umask()
        Path(temporary).chmod(mode)
        Path(temporary).replace(target)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise _write_error(exc, what, path) from None


def _resolve(path: Path, what: str) -> Path:
    """The real place `path` names: a symbolic link's target is replaced, not the link."""
    try:
        return path.resolve()
    except FileNotFoundError:  # a relative path, and the working directory was deleted
        raise UsageError(
            f"cannot write the {what} to {path}: the working directory no longer exists",
            "cd to an existing folder, or give an absolute path",
        ) from None


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _write_error(exc: OSError, what: str, path: Path) -> CudaboxError:
    if exc.errno == errno.ENOSPC:
        return DiskFull(
            f"no space left to write the {what} to {path}",
            "free some space on that file system, or choose another path",
        )
    reason = {
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.ENOENT: "its folder takes no new files (a /proc or /sys folder?)",
    }
    return UsageError(
        f"cannot write the {what} to {path}: {reason.get(exc.errno or 0, exc.strerror)}",
        "choose a path in a folder you can write to",
    )


class JsonFields:
    """Typed reads of one JSON object a user gave; a wrong value is a UsageError naming the
    file and the key, with `fix` (how that file is made again)."""

    def __init__(self, data: dict[str, Any], where: str, fix: str, prefix: str = "") -> None:
        self.data, self.where, self.fix, self.prefix = data, where, fix, prefix

    def fail(self, key: str, problem: str) -> NoReturn:
        value = self.data.get(key)
        raise UsageError(
            f"{self.where}: {self.prefix}{key} {problem}, got {shown(value)}", self.fix
        )

    def text(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is not None and not isinstance(value, str):
            self.fail(key, "must be text or null")
        return value

    def parsed(self, key: str, parse: Callable[[str], T]) -> T:
        value = self.data[key]
        try:
            return parse(value)
        except ValueError as exc:
            raise UsageError(f"{self.where}: {self.prefix}{key}: {exc}", self.fix) from None

    def flag(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            self.fail(key, "must be true or false")
        return value

    def count(self, key: str) -> int | None:
        """A whole number >= 0 (MiB) or null; booleans and 1.0 are not counts."""
        value = self.data.get(key)
        if value is not None and (type(value) is not int or value < 0):
            self.fail(key, "must be a whole number >= 0")
        return value

    def index(self, key: str) -> int:
        value = self.count(key)
        if value is None:
            self.fail(key, "must be a whole number >= 0")
        return value

    def items(self, key: str, required: bool = False) -> list[Any]:
        value = self.data.get(key)
        if value is None and not required:
            return []
        if not isinstance(value, list):
            self.fail(key, "must be a list")
        return value


def shown(value: Any) -> str:
    """A value as JSON, cut short, for an error message."""
    text = json.dumps(value, default=repr)
    return text if len(text) <= 40 else text[:37] + "..."
