"""images/verified.json: what each image reported about itself when it was last verified.

Each entry also records the image's layers (diff_ids) and the base it was really built on (name
and digest, from its labels), so that a build elsewhere can be compared with it layer by layer:
`compare_layers()` is a pure function of two entries. The format is documented in docs/verify.md.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cudabox.errors import DataError
from cudabox.images.catalog import ImageSpec
from cudabox.images.lock import lock_digest
from cudabox.images.verify import VerifyResult
from cudabox.output import read_json, write_atomic

if TYPE_CHECKING:
    from cudabox.images.build import BuildResult

# 2: diff_ids, base_digest and base_layers; base_image is the base the image was built on.
RECORD_SCHEMA = 2
READABLE_SCHEMAS = (1, 2)  # schema 1 is schema 2 without the layer fields


def record_entry(
    spec: ImageSpec,
    result: VerifyResult,
    build: BuildResult | None,
    previous: dict[str, Any] | None,
) -> dict[str, Any]:
    lock_sha = lock_digest(spec.lock)
    build_seconds = build.seconds if build else None
    if build_seconds is None and previous and previous.get("lock_sha256") == lock_sha:
        build_seconds = previous.get("build_seconds")  # verified an image built earlier
    reported = dict(result.reported)
    return {
        "tag": result.tag,
        "verified_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "lock_sha256": lock_sha,
        # The base it was built on (its labels), not the catalog's: a bootstrap is another base.
        # "" for an image without a base label: unknown, rather than the catalog's guess.
        "base_image": result.base.name if result.base else "",
        "base_digest": result.base.digest if result.base and result.base.digest else None,
        "base_layers": result.base_layers,
        "diff_ids": list(result.diff_ids),
        "reported": {k: reported[k] for k in sorted(reported)},
        "units": result.units,
        "image_bytes": result.image_bytes,
        "base_bytes": result.base_bytes,
        "packages_bytes": result.packages_bytes,
        "overhead_pct": result.overhead_pct,
        "build_seconds": build_seconds,
        "build_cached_steps": build.cached_steps
        if build
        else (previous or {}).get("build_cached_steps"),
    }


def write_record(path: Path, entries: dict[str, dict[str, Any]]) -> None:
    """Add or replace `entries` in the record at `path`, keeping the other images' entries."""
    images = {**read_record(path), **entries}
    data = {"schema": RECORD_SCHEMA, "images": dict(sorted(images.items()))}
    write_atomic(path, json.dumps(data, indent=2) + "\n", "verified record")


def _is_int(value: Any) -> bool:
    return type(value) is int


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


def _is_digest(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("sha256:") and len(value) == 71


# Every key an entry may have, and what its value must be (None is allowed where it says so).
_FIELDS: dict[str, tuple[str, Any]] = {
    "tag": ("a text", lambda v: isinstance(v, str)),
    "verified_at": ("a text", lambda v: isinstance(v, str)),
    "lock_sha256": ("a text", lambda v: isinstance(v, str)),
    "base_image": ("a text", lambda v: isinstance(v, str)),
    "base_digest": ("a sha256:... digest or null", lambda v: v is None or _is_digest(v)),
    "base_layers": ("a count or null", lambda v: v is None or (_is_int(v) and v >= 0)),
    "diff_ids": (
        "a list of sha256:... digests",
        lambda v: isinstance(v, list) and all(_is_digest(d) for d in v),
    ),
    "reported": ("an object", lambda v: isinstance(v, dict)),
    "units": (
        "an object of texts",
        lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
    ),
    "image_bytes": ("a count", _is_int),
    "base_bytes": ("a count or null", lambda v: v is None or _is_int(v)),
    "packages_bytes": ("a count", _is_int),
    "overhead_pct": ("a number or null", lambda v: v is None or _is_number(v)),
    "build_seconds": ("a number or null", lambda v: v is None or _is_number(v)),
    "build_cached_steps": ("a count or null", lambda v: v is None or _is_int(v)),
}
_REQUIRED = ("tag",)


def read_record(path: Path) -> dict[str, dict[str, Any]]:
    """Each image's entry in the record at `path`; {} when there is no record yet."""
    if not path.exists():
        return {}
    fix = "restore it from git, or delete it: `cudabox verify NAME --record FILE` writes a new one"
    data = read_json(path, "verified record", fix, error=DataError)
    where = f"verified record {path}"
    if not isinstance(data, dict):
        raise DataError(f"{where} is not a JSON object", fix)
    schema = data.get("schema")
    if type(schema) is not int or schema not in READABLE_SCHEMAS:
        raise DataError(
            f"{where} has schema {schema!r}; this cudabox reads schema "
            + " or ".join(map(str, READABLE_SCHEMAS)),
            fix,
        )
    unknown = sorted(set(data) - {"schema", "images"})
    if unknown:
        raise DataError(f"{where}: unknown top-level key {unknown[0]!r}", fix)
    images = data.get("images")
    if not isinstance(images, dict):
        raise DataError(f"{where}: 'images' must be an object of image name -> entry", fix)
    for name, entry in images.items():
        if not isinstance(entry, dict):
            raise DataError(f"{where}: the entry of {name!r} must be an object", fix)
        for key in _REQUIRED:
            if key not in entry:
                raise DataError(f"{where}: the entry of {name!r} has no {key!r}", fix)
        for key, value in entry.items():
            if key not in _FIELDS:
                raise DataError(f"{where}: the entry of {name!r} has an unknown key {key!r}", fix)
            what, valid = _FIELDS[key]
            if not valid(value):
                shown = json.dumps(value)
                raise DataError(
                    f"{where}: {name}.{key} must be {what}, not "
                    + (shown if len(shown) <= 40 else shown[:37] + "..."),
                    fix,
                )
    return images


# ---- a build against the record, layer by layer ----------------------------------------------

Verdict = Literal["same", "differs", "not-recorded"]
Reason = Literal["same", "another-base", "another-lock", "not-reproducible", "not-recorded"]
Part = Literal["base", "image", "unknown"]


@dataclass(frozen=True)
class Layers:
    """What an entry says about how an image was built: enough to compare two builds."""

    lock_sha256: str
    base_name: str
    base_digest: str | None
    base_layers: int | None
    diff_ids: tuple[str, ...] | None  # None: not recorded (an entry from before schema 2)

    @classmethod
    def of(cls, entry: Mapping[str, Any]) -> Layers:
        diff_ids = entry.get("diff_ids")
        return cls(
            lock_sha256=str(entry.get("lock_sha256") or ""),
            base_name=str(entry.get("base_image") or ""),
            base_digest=entry.get("base_digest") or None,
            base_layers=entry.get("base_layers"),
            diff_ids=tuple(diff_ids) if diff_ids else None,
        )

    @property
    def base(self) -> str:
        return (
            f"{self.base_name}@{_short(self.base_digest)}" if self.base_digest else self.base_name
        )


@dataclass(frozen=True)
class LayerMatch:
    index: int  # 1 is the bottom layer
    part: Part  # the base's layer, or one the image's Dockerfile added
    built: str | None  # None: the build has fewer layers than the record
    recorded: str | None  # None: the record has fewer layers than the build

    @property
    def same(self) -> bool:
        return self.built is not None and self.built == self.recorded


@dataclass(frozen=True)
class LayerComparison:
    name: str
    verdict: Verdict
    reason: Reason
    why: str
    layers: tuple[LayerMatch, ...] = ()

    @property
    def matching(self) -> int:
        return sum(layer.same for layer in self.layers)

    def lines(self) -> list[str]:
        """The comparison as a user reads it: one summary line, then one line per layer."""
        if self.verdict == "not-recorded":
            return [f"{self.name}: layers: {self.why}"]
        head = f"{self.name}: layers: {self.matching} of {len(self.layers)} match the record"
        lines = [head if self.verdict == "same" else f"{head}; {self.why}"]
        for layer in self.layers:
            built = _short(layer.built) if layer.built else "(none)"
            text = f"  {layer.index:>2} {layer.part:<5} {built}"
            if layer.same:
                lines.append(f"{text}  same")
            else:
                recorded = _short(layer.recorded) if layer.recorded else "(none)"
                lines.append(f"{text}  differs (recorded {recorded})")
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "why": self.why,
            "matching": self.matching,
            "layers": [
                {
                    "index": layer.index,
                    "part": layer.part,
                    "built": layer.built,
                    "recorded": layer.recorded,
                    "same": layer.same,
                }
                for layer in self.layers
            ],
        }


def _short(digest: str | None) -> str:
    """sha256:0123456789ab: enough to tell layers apart in a line."""
    return (digest or "")[:19]


def _other_base(built: Layers, recorded: Layers) -> bool:
    if built.base_digest and recorded.base_digest:
        differs = built.base_digest != recorded.base_digest
    else:
        differs = built.base_name != recorded.base_name  # a record without a digest: by name
    if not differs or built.base_layers is None or built.base_layers != recorded.base_layers:
        return differs
    # A bootstrap made again from the same packages has another image id (`docker import` dates
    # its config) but the same layers: that is the same base.
    count = built.base_layers
    return (built.diff_ids or ())[:count] != (recorded.diff_ids or ())[:count]


def compare_layers(name: str, built: Layers, recorded: Layers | None) -> LayerComparison:
    """A build against its record, layer by layer, and why they differ where that can be told.

    The reasons, checked in this order: another base digest (every layer above a base differs
    with it), another lock (other packages), else the same inputs gave other bytes.
    """
    if recorded is None:
        return LayerComparison(name, "not-recorded", "not-recorded", "not in the record")
    if recorded.diff_ids is None:
        return LayerComparison(
            name,
            "not-recorded",
            "not-recorded",
            "not yet recorded (the record predates layer records): nothing to compare",
        )
    mine, theirs = built.diff_ids or (), recorded.diff_ids
    base_layers = built.base_layers if built.base_layers is not None else recorded.base_layers
    layers = tuple(
        LayerMatch(
            index=i + 1,
            part="unknown" if base_layers is None else "base" if i < base_layers else "image",
            built=mine[i] if i < len(mine) else None,
            recorded=theirs[i] if i < len(theirs) else None,
        )
        for i in range(max(len(mine), len(theirs)))
    )
    if all(layer.same for layer in layers):
        return LayerComparison(name, "same", "same", "every layer is the recorded one", layers)
    if _other_base(built, recorded):
        return LayerComparison(
            name,
            "differs",
            "another-base",
            f"built on another base ({built.base}; the record: {recorded.base})",
            layers,
        )
    if built.lock_sha256 != recorded.lock_sha256:
        return LayerComparison(
            name,
            "differs",
            "another-lock",
            f"another lock ({built.lock_sha256[:12] or 'none'}; the record: "
            f"{recorded.lock_sha256[:12] or 'none'})",
            layers,
        )
    return LayerComparison(
        name,
        "differs",
        "not-reproducible",
        "a layer differs from the record: the build is not reproducible here",
        layers,
    )
