"""Which distributions belong to a framework (data/framework_packages.toml): the ones the catalog
image provides, never locked by the project, and the companions that imply a framework."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

from packaging.utils import canonicalize_name

from cudabox.errors import DataError
from cudabox.sourced import check_cited, parse_table, read_data, rows_of, sources_of

Role = Literal["image", "companion", "project"]
_FRAMEWORKS = ("torch", "tensorflow", "any")
_ROLES = ("image", "companion", "project")
_FIX = "reinstall cudabox; if you edited data/framework_packages.toml, correct the row it names"
_KEYS: dict[str, type] = {"name": str, "framework": str, "role": str, "source": str}
_OPTIONAL: dict[str, type] = {"same-as": str}
_NAME_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*(?:-?\*)?$")


@dataclass(frozen=True)
class FrameworkPackage:
    name: str  # a normalised name, or a prefix ending in "*"
    framework: str  # "torch", "tensorflow" or "any"
    role: Role
    source: str
    # Another distribution of the same package (tensorflow-cpu is tensorflow without CUDA): a
    # project's pin on either is judged against whichever of them the image has.
    same_as: str | None = None

    @property
    def is_prefix(self) -> bool:
        return self.name.endswith("*")


@dataclass(frozen=True)
class FrameworkPackages:
    rows: tuple[FrameworkPackage, ...]
    sources: Mapping[str, str]

    def match(self, distribution: str) -> FrameworkPackage | None:
        """The row for a distribution name (any spelling): exact name first, else longest prefix."""
        name = canonicalize_name(distribution)
        for row in self.rows:
            if not row.is_prefix and row.name == name:
                return row
        prefixes = [r for r in self.rows if r.is_prefix and name.startswith(r.name[:-1])]
        return max(prefixes, key=lambda r: len(r.name), default=None)

    def from_image(self, distribution: str) -> bool:
        row = self.match(distribution)
        return row is not None and row.role == "image"

    def variants(self, distribution: str) -> tuple[str, ...]:
        """The distribution and every other name the same package ships under (same-as)."""
        name = canonicalize_name(distribution)
        row = self.match(name)
        root = row.same_as if row is not None and row.same_as else name
        return tuple(dict.fromkeys([name, root, *(r.name for r in self.rows if r.same_as == root)]))

    def implies(self, distribution: str) -> str | None:
        """The framework that naming this distribution implies, if any."""
        row = self.match(distribution)
        if row is None or row.role == "project" or row.framework == "any":
            return None
        return row.framework


def parse_framework_packages(
    data: Mapping[str, Any] | str, where: str = "framework_packages.toml"
) -> FrameworkPackages:
    """The table (its text, or parsed); any flaw is a DataError naming the row."""
    data = parse_table(data, where, _FIX, {"schema", "sources", "package"})
    if type(data.get("schema")) is not int or data.get("schema") != 1:
        raise DataError(f"{where}: 'schema' must be 1, got {data.get('schema')!r}", _FIX)
    sources = sources_of(data, where, _FIX)
    rows: list[FrameworkPackage] = []
    for n, row in enumerate(rows_of(data, "package", where, _FIX), start=1):
        at = f"{where} row {n}"
        unknown = sorted(set(row) - set(_KEYS) - set(_OPTIONAL))
        if unknown:
            raise DataError(f"{at}: unknown key {unknown[0]!r}", _FIX)
        for key, kind in _KEYS.items():
            if type(row.get(key)) is not kind:
                raise DataError(
                    f"{at}: {key!r} must be a {kind.__name__}, got {row.get(key)!r}", _FIX
                )
        same_as = row.get("same-as")
        if same_as is not None and (
            type(same_as) is not str or canonicalize_name(same_as) != same_as
        ):
            raise DataError(
                f"{at}: 'same-as' must be a normalised distribution name, got {same_as!r}", _FIX
            )
        check_cited(row, sources, at, _FIX)
        name = row["name"]
        if not _NAME_RE.match(name) or (not name.endswith("*") and canonicalize_name(name) != name):
            raise DataError(
                f"{at}: name {name!r} is not a normalised distribution name or a prefix ending in '*'",
                _FIX,
            )
        if row["framework"] not in _FRAMEWORKS:
            raise DataError(
                f"{at}: framework must be one of {_FRAMEWORKS}, got {row['framework']!r}", _FIX
            )
        if row["role"] not in _ROLES:
            raise DataError(f"{at}: role must be one of {_ROLES}, got {row['role']!r}", _FIX)
        if any(r.name == name for r in rows):
            raise DataError(f"{at}: a second row for {name!r}", _FIX)
        rows.append(FrameworkPackage(name, row["framework"], row["role"], row["source"], same_as))
    return FrameworkPackages(tuple(rows), sources)


@cache
def load_framework_packages() -> FrameworkPackages:
    text, where = read_data("framework_packages.toml", _FIX)
    return parse_framework_packages(text, where)
