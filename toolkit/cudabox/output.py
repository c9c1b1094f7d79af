"""Human and machine output: aligned tables for people, JSON for scripts, progress on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

from cudabox.errors import UsageError


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


def read_json(path: Path, what: str, how_to_make: str) -> Any:
    """Parse a JSON file a user passed; a missing or broken file is a usage error, not a crash."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{what} {path} does not exist", "check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{what} {path} cannot be read: {exc}", "check the file") from None
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{what} {path} is not JSON ({exc.msg}, line {exc.lineno})", how_to_make
        ) from None
