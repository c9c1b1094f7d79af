"""What the doctor reads of a host's GPUs: typed values, with their strict JSON form.

`cudabox.nvml` fills them in (the only module that talks to NVML); the doctor's checks judge
them, and a report carries them so that `cudabox doctor --replay` can judge them again. Nothing
here imports NVML.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from cudabox.errors import UsageError
from cudabox.output import JsonFields, shown


@dataclass(frozen=True)
class GpuHealth:
    """Raw NVML health readings of one GPU; None means the GPU or driver does not report it."""

    index: int
    uuid: str | None = None
    name: str | None = None
    pci_device_id: str | None = None
    pci_bus_id: str | None = None
    persistence_mode: bool | None = None
    ecc_enabled: bool | None = None
    ecc_uncorrected_volatile: int | None = None  # since the last driver load or GPU reset
    ecc_uncorrected_aggregate: int | None = None  # over the GPU's life
    retired_pages_sbe: int | None = None  # pre-Ampere page retirement, single-bit cause
    retired_pages_dbe: int | None = None  # double-bit cause
    retired_pages_pending: bool | None = None
    remapped_rows_correctable: int | None = None  # Ampere and newer: row remapping
    remapped_rows_uncorrectable: int | None = None
    remap_pending: bool | None = None
    remap_failure: bool | None = None
    clock_event_reasons: int | None = None  # bit mask, nvmlClocksEventReason*
    pcie_gen_current: int | None = None
    pcie_gen_max: int | None = None  # the most this GPU in this slot can reach
    pcie_gen_gpu_max: int | None = None  # the most the GPU itself can do
    pcie_width_current: int | None = None
    pcie_width_max: int | None = None
    mig_current: int | None = None  # NVML_DEVICE_MIG_ENABLE = 1
    mig_pending: int | None = None
    vbios_version: str | None = None
    power_limit_w: float | None = None  # the enforced power limit
    fabric_state: str | None = None  # FABRIC_STATES; NVSwitch systems register each GPU
    fabric_status: str | None = None  # NVML's error text when the registration failed
    recovery_action: str | None = None  # RECOVERY_ACTIONS: what the driver asks to be done
    nvlink_active: int | None = None
    nvlink_total: int | None = None  # links the GPU has; 0: no NVLink
    pcie_replay_count: int | None = None  # since the driver loaded
    temperature_c: int | None = None
    sm_clock_mhz: int | None = None
    max_sm_clock_mhz: int | None = None
    power_w: float | None = None
    error: str | None = None  # set when this GPU could not be read
    fix: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: Any, where: str = "GPU health", prefix: str = "") -> GpuHealth:
        """Readings as `to_json` wrote them; every key checked, none missing (unknown ones ignored)."""
        read = _strict_object(data, _GPU_HEALTH_KEYS, where, prefix)
        values: dict[str, Any] = {}
        for key, kind in _GPU_HEALTH_KINDS.items():
            values[key] = _typed(read, key, kind)
        if values["index"] is None:
            read.fail("index", "must be a whole number >= 0")
        for key, allowed in (
            ("fabric_state", FABRIC_STATES),
            ("recovery_action", (*RECOVERY_ACTIONS.values(), "unknown")),
        ):
            if values[key] is not None and values[key] not in allowed:
                read.fail(key, f"must be one of {', '.join(allowed)}, or null")
        return cls(**values)


# Each field's JSON kind: counts are whole numbers >= 0; temperatures may be below zero.
_GPU_HEALTH_KINDS: dict[str, str] = {
    "index": "count",
    "uuid": "text",
    "name": "text",
    "pci_device_id": "text",
    "pci_bus_id": "text",
    "persistence_mode": "flag",
    "ecc_enabled": "flag",
    "ecc_uncorrected_volatile": "count",
    "ecc_uncorrected_aggregate": "count",
    "retired_pages_sbe": "count",
    "retired_pages_dbe": "count",
    "retired_pages_pending": "flag",
    "remapped_rows_correctable": "count",
    "remapped_rows_uncorrectable": "count",
    "remap_pending": "flag",
    "remap_failure": "flag",
    "clock_event_reasons": "count",
    "pcie_gen_current": "count",
    "pcie_gen_max": "count",
    "pcie_gen_gpu_max": "count",
    "pcie_width_current": "count",
    "pcie_width_max": "count",
    "mig_current": "count",
    "mig_pending": "count",
    "vbios_version": "text",
    "power_limit_w": "number",
    "fabric_state": "text",
    "fabric_status": "text",
    "recovery_action": "text",
    "nvlink_active": "count",
    "nvlink_total": "count",
    "pcie_replay_count": "count",
    "temperature_c": "int",
    "sm_clock_mhz": "count",
    "max_sm_clock_mhz": "count",
    "power_w": "number",
    "error": "text",
    "fix": "text",
}
_GPU_HEALTH_KEYS = tuple(_GPU_HEALTH_KINDS)
_REGENERATE = "record the readings again with `cudabox doctor --json FILE` on that host"

# nvmlGpuFabricState_t and nvmlDeviceGpuRecoveryAction_t (nvml.h), as cudabox names them.
FABRIC_STATES = ("not_supported", "not_started", "in_progress", "completed")
RECOVERY_ACTIONS = {
    0: "none",
    1: "reset",
    2: "reboot",
    3: "drain",  # drain peer-to-peer traffic
    4: "drain_and_reset",
    5: "recover_imex_domain",
    6: "bus_reset",
    7: "system_reboot",
}


def _strict_object(data: Any, keys: tuple[str, ...], where: str, prefix: str) -> JsonFields:
    name = prefix.rstrip(".") or "the readings"
    if not isinstance(data, dict):
        raise UsageError(f"{where}: {name} must be an object, got {shown(data)}", _REGENERATE)
    # Keys this cudabox does not know were written by a newer one: ignored, as docs/doctor.md
    # promises for reports (a new key needs no schema bump). A missing key is a broken report.
    missing = [key for key in keys if key not in data]
    if missing:
        raise UsageError(f"{where}: {name} has no {missing[0]!r} key", _REGENERATE)
    return JsonFields(data, where, _REGENERATE, prefix)


def _typed(read: JsonFields, key: str, kind: str) -> Any:
    value = read.data.get(key)
    if kind == "text":
        return read.text(key)
    if kind == "flag":
        if value is not None and not isinstance(value, bool):
            read.fail(key, "must be true, false or null")
        return value
    if kind == "count":
        return read.count(key)
    if kind == "int":
        if value is not None and type(value) is not int:
            read.fail(key, "must be a whole number or null")
        return value
    # "number": JSON has one number type; 250 and 250.0 are the same watts.
    if value is not None and (type(value) not in (int, float) or not math.isfinite(value)):
        read.fail(key, "must be a number or null")
    return None if value is None else float(value)


@dataclass(frozen=True)
class HostHealth:
    status: str  # "ok", "no-driver" or "error" (as HostProfile.status)
    code: int | None = None  # the NVML error code behind a non-ok status
    message: str | None = None
    fix: str | None = None
    driver_version: str | None = None
    nvml_version: str | None = None
    device_count: int | None = None
    gpus: tuple[GpuHealth, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "code": self.code,
            "message": self.message,
            "fix": self.fix,
            "driver_version": self.driver_version,
            "nvml_version": self.nvml_version,
            "device_count": self.device_count,
            "gpus": [g.to_json() for g in self.gpus],
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "host health") -> HostHealth:
        """Readings as `to_json` wrote them; every key checked, none missing (unknown ones ignored)."""
        read = _strict_object(data, _HOST_HEALTH_KEYS, where, "")
        status = read.text("status")
        if status not in _HEALTH_STATUSES:
            read.fail("status", f"must be one of {', '.join(_HEALTH_STATUSES)}")
        code = data["code"]
        if code is not None and type(code) is not int:
            read.fail("code", "must be an NVML error code (a whole number) or null")
        gpus = tuple(
            GpuHealth.from_json(item, where, f"gpus[{n}].")
            for n, item in enumerate(read.items("gpus", required=True))
        )
        indexes = [g.index for g in gpus]
        if len(set(indexes)) != len(indexes):
            raise UsageError(f"{where}: two GPUs have the same index", _REGENERATE)
        return cls(
            status=str(status),
            code=code,
            message=read.text("message"),
            fix=read.text("fix"),
            driver_version=read.text("driver_version"),
            nvml_version=read.text("nvml_version"),
            device_count=read.count("device_count"),
            gpus=gpus,
        )


_HOST_HEALTH_KEYS = (
    "status",
    "code",
    "message",
    "fix",
    "driver_version",
    "nvml_version",
    "device_count",
    "gpus",
)
_HEALTH_STATUSES = ("ok", "no-driver", "error")


@dataclass(frozen=True)
class XidEvent:
    """One critical Xid NVML reported: the driver's code for a GPU fault (docs: NVIDIA's Xid catalog)."""

    gpu_index: int | None  # None: NVML could not say which GPU
    xid: int
    time: float  # seconds since the epoch, when the watch received it


@dataclass(frozen=True)
class GpuSample:
    """One GPU's sensors at one moment of a load: the burn's temperature and clock curve."""

    index: int
    t: float  # seconds since sampling began
    temperature_c: int | None
    sm_clock_mhz: int | None
    power_w: float | None
    clock_event_reasons: int | None  # bit mask, nvmlClocksEventReason*
