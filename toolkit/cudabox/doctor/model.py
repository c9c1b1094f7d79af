"""The doctor's data: one `Check` per finding, gathered into a `DoctorReport` (a stable JSON form).

docs/doctor.md documents the JSON; `SCHEMA_VERSION` changes when a key changes meaning or goes
away (new keys may appear without a bump). Schema 2 adds `readings`: what the run read, so that
`cudabox doctor --replay` can judge it again without the host; schema 1 reports still load.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cudabox.errors import ExitCode, UsageError
from cudabox.health import HostHealth
from cudabox.host import HostProfile
from cudabox.images.catalog import FRAMEWORKS
from cudabox.output import JsonFields, read_json, shown

SCHEMA_VERSION = 2
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
class XidRecord:
    """One Xid the run saw: an NVML event during the load, or a kernel log line."""

    xid: int
    gpu_index: int | None  # None: the GPU could not be told (a kernel line without a bus id)
    source: str  # "nvml" (event during the run) or "kernel-log"
    time: float | None = None  # seconds since the epoch; None where the source gives none
    text: str | None = None  # the kernel log line, as read

    def to_json(self) -> dict[str, Any]:
        return {
            "xid": self.xid,
            "gpu_index": self.gpu_index,
            "source": self.source,
            "time": self.time,
            "text": self.text,
        }


@dataclass(frozen=True)
class Sample:
    """One NVML reading of one GPU while the load ran (the burn's temperature and clock curve)."""

    index: int
    t: float  # seconds since the sampling began
    temperature_c: int | None = None
    sm_clock_mhz: int | None = None
    power_w: float | None = None
    clock_event_reasons: int | None = None  # bit mask, nvmlClocksEventReason*

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "t": self.t,
            "temperature_c": self.temperature_c,
            "sm_clock_mhz": self.sm_clock_mhz,
            "power_w": self.power_w,
            "clock_event_reasons": self.clock_event_reasons,
        }


@dataclass(frozen=True)
class Readings:
    """What a doctor run read, kept in its report so that `--replay` judges it again.

    Host, framework and performance checks are pure functions of these readings. Checks whose
    verdict comes from doing something (reaching the engine, starting a container, training)
    are kept as `observed`: a replay repeats them as they were.
    """

    host: HostHealth | None = None  # NVML before the load; None: not read (a schema 1 report)
    pci_gpus: tuple[str, ...] | None = None  # NVIDIA GPUs on the PCI bus; None: unreadable
    kernel_module: str | None = None  # /proc/driver/nvidia/version
    framework: dict[str, Any] | None = None  # the in-image script's raw result; None: not run
    framework_note: str | None = None  # why there is no framework result
    framework_gpus: bool = True  # whether the framework ran with the host's GPUs passed in
    xids: tuple[XidRecord, ...] = ()
    xid_notes: tuple[str, ...] = ()  # why a source of Xids could not be read
    samples: tuple[Sample, ...] = ()  # NVML sampled during the load (level full)
    sample_note: str | None = None  # why there are no samples
    host_after: HostHealth | None = None  # NVML after the load: ECC and PCIe replay deltas
    load_seconds: float | None = None  # how long the load between `host` and `host_after` ran
    observed: tuple[Check, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "host": None if self.host is None else self.host.to_json(),
            "pci_gpus": None if self.pci_gpus is None else list(self.pci_gpus),
            "kernel_module": self.kernel_module,
            "framework": self.framework,
            "framework_note": self.framework_note,
            "framework_gpus": self.framework_gpus,
            "xids": [x.to_json() for x in self.xids],
            "xid_notes": list(self.xid_notes),
            "samples": [s.to_json() for s in self.samples],
            "sample_note": self.sample_note,
            "host_after": None if self.host_after is None else self.host_after.to_json(),
            "load_seconds": self.load_seconds,
            "observed": [c.to_json() for c in self.observed],
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> Readings:
        """The `readings` of a report; every key it knows checked, keys from newer versions ignored."""
        with _as_report_error():
            if not isinstance(data, dict):
                raise UsageError(
                    f"{where}: readings must be an object, got {shown(data)}", _REGENERATE
                )
            # Unknown keys come from a newer cudabox and are ignored (docs/doctor.md).
            missing = [key for key in _READINGS_KEYS if key not in data]
            if missing:
                raise UsageError(f"{where}: readings has no {missing[0]!r} key", _REGENERATE)
            read = JsonFields(data, where, _REGENERATE, "readings.")
            pci = data["pci_gpus"]
            if pci is not None and not (
                isinstance(pci, list) and all(isinstance(p, str) for p in pci)
            ):
                read.fail("pci_gpus", "must be a list of PCI bus ids, or null")
            framework = data["framework"]
            if framework is not None and not isinstance(framework, dict):
                read.fail("framework", "must be the in-image script's result (an object), or null")
            notes = read.items("xid_notes")
            if not all(isinstance(n, str) for n in notes):
                read.fail("xid_notes", "must be a list of texts")
            seconds = data["load_seconds"]
            if seconds is not None and (type(seconds) not in (int, float) or seconds < 0):
                read.fail("load_seconds", "must be a number of seconds >= 0, or null")
            return cls(
                host=_health(data["host"], f"{where}: readings.host"),
                pci_gpus=None if pci is None else tuple(pci),
                kernel_module=read.text("kernel_module"),
                framework=framework,
                framework_note=read.text("framework_note"),
                framework_gpus=read.flag("framework_gpus", True),
                xids=tuple(
                    _xid(item, where, f"readings.xids[{n}].")
                    for n, item in enumerate(read.items("xids"))
                ),
                xid_notes=tuple(notes),
                samples=tuple(
                    _sample(item, where, f"readings.samples[{n}].")
                    for n, item in enumerate(read.items("samples"))
                ),
                sample_note=read.text("sample_note"),
                host_after=_health(data["host_after"], f"{where}: readings.host_after"),
                load_seconds=None if seconds is None else float(seconds),
                observed=tuple(
                    Check.from_json(item, where, f"readings.observed[{n}].")
                    for n, item in enumerate(read.items("observed"))
                ),
            )


_READINGS_KEYS = (
    "host",
    "pci_gpus",
    "kernel_module",
    "framework",
    "framework_note",
    "framework_gpus",
    "xids",
    "xid_notes",
    "samples",
    "sample_note",
    "host_after",
    "load_seconds",
    "observed",
)
_XID_KEYS = ("xid", "gpu_index", "source", "time", "text")
_SAMPLE_KEYS = ("index", "t", "temperature_c", "sm_clock_mhz", "power_w", "clock_event_reasons")


def _health(data: Any, where: str) -> HostHealth | None:
    return None if data is None else HostHealth.from_json(data, where=where)


def _object(data: Any, keys: tuple[str, ...], where: str, prefix: str) -> JsonFields:
    if not isinstance(data, dict):
        raise UsageError(f"{where}: {prefix.rstrip('.')} must be an object", _REGENERATE)
    unknown = sorted(set(data) - set(keys))
    missing = [key for key in keys if key not in data]
    if unknown or missing:
        problem = f"unknown key {unknown[0]!r}" if unknown else f"no {missing[0]!r} key"
        raise UsageError(f"{where}: {prefix.rstrip('.')} has {problem}", _REGENERATE)
    return JsonFields(data, where, _REGENERATE, prefix)


def _number(read: JsonFields, key: str) -> float | None:
    value = read.data.get(key)
    if value is not None and (type(value) not in (int, float) or not math.isfinite(value)):
        read.fail(key, "must be a number or null")
    return None if value is None else float(value)


def _xid(data: Any, where: str, prefix: str) -> XidRecord:
    read = _object(data, _XID_KEYS, where, prefix)
    source = read.text("source")
    if source not in ("nvml", "kernel-log"):
        read.fail("source", "must be 'nvml' or 'kernel-log'")
    return XidRecord(
        xid=read.index("xid"),
        gpu_index=read.count("gpu_index"),
        source=source,
        time=_number(read, "time"),
        text=read.text("text"),
    )


def _sample(data: Any, where: str, prefix: str) -> Sample:
    read = _object(data, _SAMPLE_KEYS, where, prefix)
    t = _number(read, "t")
    if t is None:
        read.fail("t", "must be a number of seconds")
    return Sample(
        index=read.index("index"),
        t=t,
        temperature_c=read.count("temperature_c"),
        sm_clock_mhz=read.count("sm_clock_mhz"),
        power_w=_number(read, "power_w"),
        clock_event_reasons=read.count("clock_event_reasons"),
    )


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
    readings: Readings | None = None  # None: a schema 1 report, which cannot be replayed
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
            "readings": None if self.readings is None else self.readings.to_json(),
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
            wanted = _REPORT_KEYS + (("readings",) if schema >= 2 else ())
            missing = [key for key in wanted if key not in data]
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
                readings=None
                if schema < 2 or data.get("readings") is None
                else Readings.from_json(data["readings"], where),
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
