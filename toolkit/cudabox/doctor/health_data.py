"""The host layer's sourced facts: the Xid catalog (data/xid.toml) and the hardware-health limits
(data/health_limits.toml). Strict loaders: a source per row, unknown keys refused."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

from cudabox.errors import DataError
from cudabox.sourced import check_cited, parse_table, read_data, rows_of, sources_of

XidStatus = Literal["fail", "warn"]


@dataclass(frozen=True)
class XidInfo:
    xid: int
    name: str
    status: XidStatus
    meaning: str
    fix: str  # `N` stands for the GPU's index
    source: str


@dataclass(frozen=True)
class HealthLimits:
    retired_pages_warn: int
    retired_pages_fail: int  # DCGM fails at >= this many retired pages
    remapped_rows_fail: int
    pcie_replays_per_minute: int  # DCGM's limit on the replay rate
    sources: Mapping[str, str]


_XID_FIX = "reinstall cudabox; if you edited data/xid.toml, correct the row it names"
_LIMITS_FIX = "reinstall cudabox; if you edited data/health_limits.toml, correct the row it names"
_XID_KEYS: dict[str, type] = {
    "xid": int,
    "name": str,
    "status": str,
    "meaning": str,
    "fix": str,
    "source": str,
}
_LIMIT_KEYS: dict[str, type] = {"name": str, "value": int, "unit": str, "source": str}
LIMIT_NAMES = tuple(
    name for name in HealthLimits.__dataclass_fields__ if name != "sources"
)  # every limit the loader requires


def _checked_row(row: Mapping[str, Any], keys: Mapping[str, type], at: str, fix: str) -> None:
    unknown = sorted(set(row) - set(keys))
    if unknown:
        raise DataError(f"{at}: unknown key {unknown[0]!r}", fix)
    for key, kind in keys.items():
        if key not in row:
            raise DataError(f"{at}: missing key {key!r}", fix)
        if type(row[key]) is not kind:
            raise DataError(f"{at}: {key!r} has the wrong type: {row[key]!r}", fix)


def _schema_1(data: Mapping[str, Any], where: str, fix: str) -> None:
    if type(data.get("schema")) is not int or data.get("schema") != 1:
        raise DataError(f"{where}: 'schema' must be 1, got {data.get('schema')!r}", fix)


def parse_xids(data: Mapping[str, Any] | str, where: str = "xid.toml") -> dict[int, XidInfo]:
    """The Xid catalog (its text, or the parsed table); any flaw is a DataError."""
    data = parse_table(data, where, _XID_FIX, {"schema", "sources", "xid"})
    _schema_1(data, where, _XID_FIX)
    sources = sources_of(data, where, _XID_FIX)
    catalog: dict[int, XidInfo] = {}
    for n, row in enumerate(rows_of(data, "xid", where, _XID_FIX), start=1):
        at = f"{where} row {n}"
        _checked_row(row, _XID_KEYS, at, _XID_FIX)
        check_cited(row, sources, at, _XID_FIX)
        xid, status = row["xid"], row["status"]
        if xid <= 0:
            raise DataError(f"{at}: xid must be a whole number above 0, got {xid!r}", _XID_FIX)
        if xid in catalog:
            raise DataError(f"{at}: a second row for Xid {xid}", _XID_FIX)
        if status not in ("fail", "warn"):
            raise DataError(f"{at}: status must be 'fail' or 'warn', got {status!r}", _XID_FIX)
        catalog[xid] = XidInfo(xid, row["name"], status, row["meaning"], row["fix"], row["source"])
    return catalog


def parse_limits(data: Mapping[str, Any] | str, where: str = "health_limits.toml") -> HealthLimits:
    """The health limits (their text, or the parsed table); any flaw is a DataError."""
    data = parse_table(data, where, _LIMITS_FIX, {"schema", "sources", "limit"})
    _schema_1(data, where, _LIMITS_FIX)
    sources = sources_of(data, where, _LIMITS_FIX)
    values: dict[str, int] = {}
    for n, row in enumerate(rows_of(data, "limit", where, _LIMITS_FIX), start=1):
        at = f"{where} row {n}"
        _checked_row(row, _LIMIT_KEYS, at, _LIMITS_FIX)
        check_cited(row, sources, at, _LIMITS_FIX)
        name, value = row["name"], row["value"]
        if name not in LIMIT_NAMES:
            raise DataError(
                f"{at}: unknown limit {name!r}; known: {', '.join(LIMIT_NAMES)}", _LIMITS_FIX
            )
        if name in values:
            raise DataError(f"{at}: a second row for {name}", _LIMITS_FIX)
        if value <= 0:
            raise DataError(f"{at}: value must be above 0, got {value!r}", _LIMITS_FIX)
        values[name] = value
    missing = [name for name in LIMIT_NAMES if name not in values]
    if missing:
        raise DataError(f"{where}: no row for the limit {missing[0]!r}", _LIMITS_FIX)
    return HealthLimits(sources=sources, **values)


@cache
def load_xids() -> dict[int, XidInfo]:
    text, where = read_data("xid.toml", _XID_FIX)
    return parse_xids(text, where)


@cache
def load_limits() -> HealthLimits:
    text, where = read_data("health_limits.toml", _LIMITS_FIX)
    return parse_limits(text, where)
