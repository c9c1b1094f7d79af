"""The scaffolding every sourced fact table under data/ shares: strict TOML, known top-level keys,
a [sources] table, lists of [[row]] tables. Each loader checks its own rows' fields."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cudabox.errors import DataError
from cudabox.output import decode_text

DATA = Path(__file__).parent / "data"  # package data, beside the modules


def read_data(name: str, fix: str) -> tuple[str, str]:
    """(text, where) of data/NAME; an unreadable or non-UTF-8 file is a DataError."""
    where = f"cudabox's data/{name}"
    try:
        raw = (DATA / name).read_bytes()
    except OSError as exc:
        raise DataError(f"{where} cannot be read: {exc.strerror}", fix) from None
    return decode_text(raw, where, fix, DataError), where


def parse_table(
    data: Mapping[str, Any] | str, where: str, fix: str, allowed: Iterable[str]
) -> Mapping[str, Any]:
    """The parsed file (from its text, or as given), with no top-level key but `allowed`."""
    if isinstance(data, str):
        try:
            data = tomllib.loads(data)
        except tomllib.TOMLDecodeError as exc:
            raise DataError(f"{where} is not valid TOML: {exc}", fix) from None
    unknown = set(data) - set(allowed)
    if unknown:
        raise DataError(f"{where}: unknown top-level key {sorted(unknown)[0]!r}", fix)
    return data


def sources_of(data: Mapping[str, Any], where: str, fix: str) -> dict[str, str]:
    """The [sources] table: source key -> where the facts come from."""
    sources = data.get("sources") or {}
    if not isinstance(sources, dict) or not all(isinstance(v, str) for v in sources.values()):
        raise DataError(f"{where}: [sources] must map each source key to a text", fix)
    return {str(key): str(value) for key, value in sources.items()}


def rows_of(
    data: Mapping[str, Any], table: str, where: str, fix: str, required: bool = True
) -> list[dict[str, Any]]:
    """The [[table]] rows, each a table (an absent list is an error when `required`)."""
    rows = data.get(table)
    if not rows:
        if required:
            raise DataError(f"{where}: no [[{table}]] rows", fix)
        return []
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise DataError(f"{where}: '{table}' must be a list of [[{table}]] tables", fix)
    return rows


def check_cited(row: Mapping[str, Any], sources: Mapping[str, str], at: str, fix: str) -> None:
    """Every source key a row cites (comma-separated) is in [sources]."""
    for key in str(row["source"]).split(","):
        if key not in sources:
            raise DataError(f"{at} cites unknown source {key!r}", fix)
