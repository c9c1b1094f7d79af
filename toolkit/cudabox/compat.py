"""CUDA compatibility facts (data/compat.toml), loaded once into typed lookups."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from itertools import pairwise
from typing import Any

from cudabox.errors import DataError
from cudabox.sourced import check_cited, parse_table, read_data, rows_of, sources_of
from cudabox.versions import CudaVersion, DriverVersion, parse_cc


@dataclass(frozen=True)
class Compat:
    toolkit_drivers: tuple[tuple[CudaVersion, DriverVersion], ...]  # ascending by CUDA
    minor_version_floors: dict[int, DriverVersion]
    tegra: frozenset[tuple[int, int]]

    def toolkit_driver(self, cuda: CudaVersion) -> DriverVersion | None:
        """The driver bundled with this CUDA (or the next release with a row, 12.7 -> 12.8)."""
        for version, driver in self.toolkit_drivers:
            if version >= cuda:
                return driver
        return None

    def minor_version_floor(self, major: int) -> DriverVersion | None:
        return self.minor_version_floors.get(major)

    def cuda_for_driver(self, driver: DriverVersion) -> CudaVersion | None:
        """The newest CUDA whose toolkit driver this driver reaches (for profiles without it)."""
        best = None
        for version, needed in self.toolkit_drivers:
            if driver >= needed:
                best = version
        return best

    def is_tegra(self, cc: tuple[int, int]) -> bool:
        return cc in self.tegra


# Each table's keys and their TOML types; every row also names its source.
_TABLES: dict[str, dict[str, type]] = {
    "toolkit_driver": {"cuda": str, "driver": str, "source": str},
    "minor_version_floor": {"cuda_major": int, "driver": str, "source": str},
    "tegra": {"compute_capability": str, "source": str},
}
_FIX = "reinstall cudabox; if you edited data/compat.toml, correct the row it names"


def parse_compat(data: Mapping[str, Any] | str, where: str = "compat.toml") -> Compat:
    """The facts of compat.toml (its text, or the parsed table); any flaw is a DataError."""
    data = parse_table(data, where, _FIX, {*_TABLES, "sources"})
    sources = sources_of(data, where, _FIX)
    rows = {table: _rows(data, table, sources, where) for table in _TABLES}
    try:
        drivers = sorted(
            (CudaVersion.parse(r["cuda"]), DriverVersion.parse(r["driver"]))
            for r in rows["toolkit_driver"]
        )
        floors = [
            (r["cuda_major"], DriverVersion.parse(r["driver"])) for r in rows["minor_version_floor"]
        ]
        tegra = [parse_cc(r["compute_capability"]) for r in rows["tegra"]]
    except ValueError as exc:
        raise DataError(f"{where}: {exc}", _FIX) from None
    for (cuda, driver), (newer, newer_driver) in pairwise(drivers):
        if cuda == newer:
            raise DataError(f"{where}: two [[toolkit_driver]] rows for CUDA {cuda}", _FIX)
        if newer_driver < driver:
            raise DataError(
                f"{where}: CUDA {newer} needs driver {newer_driver}, older than CUDA {cuda}'s "
                f"{driver}",
                _FIX,
            )
    majors = [major for major, _ in floors]
    if len(set(majors)) != len(majors):
        raise DataError(f"{where}: two [[minor_version_floor]] rows for one CUDA major", _FIX)
    return Compat(tuple(drivers), dict(floors), frozenset(tegra))


def _rows(
    data: Mapping[str, Any], table: str, sources: Mapping[str, str], where: str
) -> list[dict[str, Any]]:
    """The rows of [[table]], each with exactly its keys, of their types, citing known sources."""
    rows = rows_of(data, table, where, _FIX)
    keys = _TABLES[table]
    for n, row in enumerate(rows, start=1):
        at = f"{where} [[{table}]] row {n}"
        for key in row:
            if key not in keys:
                raise DataError(f"{at}: unknown key {key!r}", _FIX)
        for key, kind in keys.items():
            if key not in row:
                raise DataError(f"{at}: missing key {key!r}", _FIX)
            value = row[key]
            if not isinstance(value, kind) or isinstance(value, bool):
                raise DataError(
                    f"{at}: {key!r} must be {'a whole number' if kind is int else 'a string'}, "
                    f"got {value!r}",
                    _FIX,
                )
        check_cited(row, sources, at, _FIX)
    return rows


@cache
def load_compat() -> Compat:
    text, where = read_data("compat.toml", _FIX)
    return parse_compat(text, where)
