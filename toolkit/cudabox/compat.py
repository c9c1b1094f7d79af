"""CUDA compatibility facts (data/compat.toml), loaded once into typed lookups."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from cudabox.errors import DataError
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


def parse_compat(data: dict[str, Any]) -> Compat:
    sources = data.get("sources", {})
    try:
        for table in ("toolkit_driver", "minor_version_floor", "tegra"):
            for row in data[table]:
                for key in str(row["source"]).split(","):
                    if key not in sources:
                        raise DataError(
                            f"compat data: {table} row {row} cites unknown source {key!r}"
                        )
        drivers = sorted(
            (CudaVersion.parse(r["cuda"]), DriverVersion.parse(r["driver"]))
            for r in data["toolkit_driver"]
        )
        floors = {
            int(r["cuda_major"]): DriverVersion.parse(r["driver"])
            for r in data["minor_version_floor"]
        }
        tegra = frozenset(parse_cc(r["compute_capability"]) for r in data["tegra"])
    except (KeyError, ValueError) as exc:
        raise DataError(f"compat data is malformed: {exc}") from None
    return Compat(tuple(drivers), floors, tegra)


@cache
def load_compat() -> Compat:
    text = resources.files("cudabox").joinpath("data/compat.toml").read_text()
    return parse_compat(tomllib.loads(text))
