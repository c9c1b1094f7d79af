"""The doctor's data: one `Check` per finding, gathered into a `DoctorReport` (a stable JSON form).

docs/doctor.md documents the JSON; `SCHEMA_VERSION` changes when a key changes meaning or goes
away (new keys may appear without a bump).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cudabox.errors import ExitCode, UsageError
from cudabox.host import HostProfile
from cudabox.images.catalog import FRAMEWORKS
from cudabox.output import JsonFields, read_json, shown

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
    def from_json(cls, data: Any, where: str = "check", prefix: str = "") -> Check:
        """One check as a report (or the in-image script) wrote it; every key checked.

        `where` names the input in messages ("report nodes/a.json"), `prefix` the check in it
        ("checks[3].").
        """
        with _as_report_error():
            if not isinstance(data, dict):
                raise UsageError(
                    f"{where}: {prefix.rstrip('.') or 'a check'} must be an object, "
                    f"got {shown(data)}",
                    _REGENERATE,
                )
            for key in _CHECK_KEYS:
                if key not in data:
                    raise UsageError(
                        f"{where}: {prefix.rstrip('.') or 'the check'} has no {key!r} key",
                        _REGENERATE,
                    )
            read = JsonFields(data, where, _REGENERATE, prefix)
            cid = read.text("id")
            if not cid:
                read.fail("id", "must be a check id (text)")
            layer = read.text("layer")
            if layer not in LAYERS:
                read.fail("layer", f"must be one of {', '.join(LAYERS)}")
            status = next((s for s in STATUSES if s == data["status"]), None)  # typed Status
            if status is None:
                read.fail("status", f"must be one of {', '.join(STATUSES)}")
            message = read.text("message")
            if message is None:
                read.fail("message", "must be text")
            duration = data.get("duration_s")
            if duration is not None and (type(duration) not in (int, float) or duration < 0):
                read.fail("duration_s", "must be a number of seconds >= 0, or null")
            return cls(
                id=cid,
                layer=layer,
                status=status,
                message=message,
                value=_value(read, "value"),
                expected=_value(read, "expected"),
                unit=read.text("unit"),
                fix=read.text("fix"),
                duration_s=None if duration is None else float(duration),
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
    def from_json(
        cls, data: Any, source: str | None = None, where: str | None = None
    ) -> DoctorReport:
        """The report `doctor --json` wrote; every key checked, so a wrong file is a usage error.

        `where` names the input in messages ("report nodes/a.json"); `source` becomes the node's
        name when its host profile has no hostname.
        """
        where = where or (f"doctor report {source}" if source else "doctor report")
        if not isinstance(data, dict) or data.get("kind") != KIND:
            raise UsageError(f"{where} is not a cudabox doctor report", _REGENERATE)
        schema = data.get("schema")
        if type(schema) is int and schema > SCHEMA_VERSION:
            raise UsageError(
                f"{where} has doctor schema {schema!r}; this cudabox reads up to {SCHEMA_VERSION}",
                "upgrade cudabox on this machine",
            )
        if type(schema) is not int or schema < 1:
            raise UsageError(
                f"{where} has doctor schema {shown(schema)}; this cudabox reads up to "
                f"{SCHEMA_VERSION}",
                _REGENERATE,
            )
        with _as_report_error():
            missing = [key for key in _REPORT_KEYS if key not in data]
            if missing:
                raise UsageError(
                    f"{where} is not a complete doctor report: it has no {missing[0]!r} key",
                    _REGENERATE,
                )
            read = JsonFields(data, where, _REGENERATE)
            version = read.text("cudabox_version")
            if not version:
                read.fail("cudabox_version", "must be a version (text)")
            timestamp = read.text("timestamp")
            if timestamp is None:
                read.fail("timestamp", "must be an ISO 8601 time (text)")
            try:
                dt.datetime.fromisoformat(timestamp)
            except ValueError:
                read.fail("timestamp", "must be an ISO 8601 time")
            level = next((v for v in LEVELS if v == data["level"]), None)
            if level is None:
                read.fail("level", f"must be one of {', '.join(LEVELS)}")
            framework = read.text("framework")
            if framework not in FRAMEWORKS:
                read.fail("framework", f"must be one of {', '.join(FRAMEWORKS)}")
            versions = data.get("versions", {})
            if not isinstance(versions, dict):
                read.fail("versions", "must be an object")
            found = JsonFields(versions, where, _REGENERATE, "versions.")
            items = read.items("checks", required=True)
            if not items:
                read.fail("checks", "must list the checks the doctor ran")
            return cls(
                cudabox_version=version,
                timestamp=timestamp,
                level=level,
                framework=framework,
                image=read.text("image"),
                here=read.flag("here", False),
                host=HostProfile.from_json(data["host"], source=source, where=f"{where}: host"),
                checks=tuple(
                    Check.from_json(item, where, f"checks[{n}].") for n, item in enumerate(items)
                ),
                versions={key: found.text(key) for key in versions},
                source=source,
            )

    @classmethod
    def load(cls, path: Path) -> DoctorReport:
        data = read_json(path, "report", "write it with `cudabox doctor --json FILE`")
        return cls.from_json(data, source=path.stem, where=f"report {path}")


_REGENERATE = "regenerate it with `cudabox doctor --json FILE` on that node"
_REPORT_KEYS = ("cudabox_version", "timestamp", "level", "framework", "here", "host", "checks")
_CHECK_KEYS = ("id", "layer", "status", "message")


@contextmanager
def _as_report_error() -> Iterator[None]:
    """The host profile's reader (host.py) suggests `cudabox probe`; in a report the doctor's
    run made the file, so its fix is to run the doctor again."""
    try:
        yield
    except UsageError as exc:
        raise UsageError(exc.message, _REGENERATE) from None


def _value(read: JsonFields, key: str) -> Value:
    """A measured value: a number, a text, a flag or null (lists stay out of the table)."""
    value = read.data.get(key)
    if value is not None and not isinstance(value, int | float | str | bool):
        read.fail(key, "must be a number, text, true, false or null")
    return value
