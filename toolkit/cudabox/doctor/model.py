"""The doctor's data: one `Check` per finding, gathered into a `DoctorReport` (a stable JSON form).

docs/doctor.md documents the JSON; `SCHEMA_VERSION` changes when a key changes meaning or goes
away (new keys may appear without a bump).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cudabox.errors import ExitCode, UsageError
from cudabox.host import HostProfile
from cudabox.output import read_json

SCHEMA_VERSION = 1
KIND = "cudabox.doctor"

Status = Literal["pass", "warn", "fail", "skip"]
STATUSES: tuple[Status, ...] = ("pass", "warn", "fail", "skip")
LAYERS = ("host", "engine", "container", "framework", "performance", "training")
Level = Literal["quick", "standard", "full"]
LEVELS: tuple[Level, ...] = ("quick", "standard", "full")

# A measured value: a number, a short text, or a flag. Lists stay out to keep the table simple.
Value = int | float | str | bool | None


@dataclass(frozen=True)
class Check:
    """One finding. `id` is stable across releases; per-GPU checks end in `.gpuN`."""

    id: str
    layer: str
    status: Status
    message: str
    value: Value = None
    expected: Value = None
    unit: str | None = None
    fix: str | None = None
    duration_s: float | None = None

    def timed(self, seconds: float) -> Check:
        return Check(
            self.id,
            self.layer,
            self.status,
            self.message,
            self.value,
            self.expected,
            self.unit,
            self.fix,
            round(seconds, 3),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "layer": self.layer,
            "status": self.status,
            "value": self.value,
            "expected": self.expected,
            "unit": self.unit,
            "message": self.message,
            "fix": self.fix,
            "duration_s": self.duration_s,
        }

    @classmethod
    def from_json(cls, data: Any) -> Check:
        if not isinstance(data, dict):
            raise TypeError("each check must be an object")
        status = str(data["status"])
        if status not in STATUSES:
            raise ValueError(f"check {data.get('id')!r} has unknown status {status!r}")
        duration = data.get("duration_s")
        return cls(
            id=str(data["id"]),
            layer=str(data["layer"]),
            status=status,  # checked against STATUSES above
            message=str(data.get("message") or ""),
            value=_value(data.get("value")),
            expected=_value(data.get("expected")),
            unit=_opt_str(data.get("unit")),
            fix=_opt_str(data.get("fix")),
            duration_s=float(duration) if duration is not None else None,
        )


def check(
    id: str,
    layer: str,
    status: Status,
    message: str,
    value: Value = None,
    expected: Value = None,
    *,
    unit: str | None = None,
    fix: str | None = None,
) -> Check:
    """A Check with the fix dropped when it passes (a passing check needs no fix)."""
    return Check(
        id, layer, status, message, value, expected, unit, fix if status != "pass" else None
    )


def worst(statuses: list[Status]) -> Status:
    for status in ("fail", "warn", "pass"):
        if status in statuses:
            return status
    return "skip"


@dataclass(frozen=True)
class DoctorReport:
    cudabox_version: str
    timestamp: str  # ISO 8601, UTC
    level: str
    framework: str
    image: str | None  # the catalog image checked; None with --here or at quick level
    here: bool
    host: HostProfile
    checks: tuple[Check, ...]
    versions: dict[str, str | None] = field(default_factory=dict)
    source: str | None = field(default=None, compare=False)  # file it was read from

    @property
    def node(self) -> str:
        return self.host.hostname or self.source or "this host"

    def counts(self) -> dict[str, int]:
        return {s: sum(1 for c in self.checks if c.status == s) for s in STATUSES}

    def exit_code(self, strict: bool = False) -> int:
        statuses = {c.status for c in self.checks}
        if "fail" in statuses or (strict and "warn" in statuses):
            return int(ExitCode.FAILED)
        return int(ExitCode.OK)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "schema": SCHEMA_VERSION,
            "cudabox_version": self.cudabox_version,
            "timestamp": self.timestamp,
            "level": self.level,
            "framework": self.framework,
            "image": self.image,
            "here": self.here,
            "host": self.host.to_json(),
            "versions": dict(self.versions),
            "summary": self.counts(),
            "checks": [c.to_json() for c in self.checks],
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2) + "\n"

    @classmethod
    def from_json(cls, data: Any, source: str | None = None) -> DoctorReport:
        where = source or "doctor report"
        fix = "regenerate it with `cudabox doctor --json FILE` on that node"
        if not isinstance(data, dict) or data.get("kind") != KIND:
            raise UsageError(f"{where} is not a cudabox doctor report", fix)
        schema = data.get("schema")
        if not isinstance(schema, int) or schema > SCHEMA_VERSION:
            raise UsageError(
                f"{where} has doctor schema {schema!r}; this cudabox reads up to {SCHEMA_VERSION}",
                "upgrade cudabox on this machine",
            )
        try:
            versions = {str(k): _opt_str(v) for k, v in dict(data.get("versions") or {}).items()}
            return cls(
                cudabox_version=str(data["cudabox_version"]),
                timestamp=str(data["timestamp"]),
                level=str(data["level"]),
                framework=str(data.get("framework") or "torch"),
                image=_opt_str(data.get("image")),
                here=bool(data.get("here", False)),
                host=HostProfile.from_json(data["host"], source=source),
                checks=tuple(Check.from_json(c) for c in data["checks"]),
                versions=versions,
                source=source,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"{where} is not a valid doctor report: {exc}", fix) from None

    @classmethod
    def load(cls, path: Path) -> DoctorReport:
        data = read_json(path, "report", "write it with `cudabox doctor --json FILE`")
        return cls.from_json(data, source=path.stem)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _value(value: Any) -> Value:
    if value is None or isinstance(value, int | float | str | bool):
        return value
    raise TypeError(f"a check value must be a number, text or flag, not {type(value).__name__}")
