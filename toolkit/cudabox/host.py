"""The host profile: what a machine's NVIDIA stack looks like, as plain data.

`probe --json` writes it; `select --host FILE` and `report` read it back on other machines,
so the JSON form is a stable interface (see `SCHEMA_VERSION`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cudabox.errors import UsageError
from cudabox.output import read_json
from cudabox.versions import CudaVersion, parse_cc

SCHEMA_VERSION = 1

# NVML brands that mark consumer cards, where CUDA forward compatibility is never available.
CONSUMER_BRANDS = frozenset({"GeForce", "GeForce RTX", "Titan", "Titan RTX"})


@dataclass(frozen=True)
class MigDevice:
    index: int
    uuid: str
    name: str | None = None
    memory_total_mib: int | None = None
    visible: bool = True


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str | None = None
    name: str | None = None
    compute_capability: str | None = None  # "9.0"; None when the GPU could not be read
    memory_total_mib: int | None = None
    pci_device_id: str | None = None  # "0x233010DE": device id in the high half, vendor low
    pci_bus_id: str | None = None
    brand: str | None = None
    mig_enabled: bool = False
    mig_devices: tuple[MigDevice, ...] = ()
    visible: bool = True  # after CUDA_VISIBLE_DEVICES
    error: str | None = None  # set when NVML failed for this GPU alone
    fix: str | None = None

    @property
    def cc(self) -> tuple[int, int] | None:
        return parse_cc(self.compute_capability) if self.compute_capability else None

    @property
    def is_consumer(self) -> bool:
        return self.brand in CONSUMER_BRANDS or (self.name or "").startswith("NVIDIA GeForce")

    @property
    def label(self) -> str:
        return f"GPU {self.index} ({self.name or 'unknown'}, CC {self.compute_capability or '?'})"


@dataclass(frozen=True)
class HostProfile:
    driver_version: str | None
    cuda_driver_version: str | None  # highest CUDA the driver supports, "13.0"
    gpus: tuple[Gpu, ...] = ()
    status: str = "ok"  # "ok", "no-driver" or "error"
    message: str | None = None  # why status is not ok, in words
    fix: str | None = None
    hostname: str | None = None
    nvml_version: str | None = None
    cuda_visible_devices: str | None = None
    source: str | None = field(default=None, compare=False)  # file it was read from

    @property
    def name(self) -> str:
        return self.hostname or self.source or "this host"

    @property
    def visible_gpus(self) -> tuple[Gpu, ...]:
        """GPUs a CUDA process would use; unreadable GPUs count, since they still need kernels."""
        return tuple(g for g in self.gpus if g.visible)

    @property
    def driver_cuda(self) -> CudaVersion | None:
        return CudaVersion.parse(self.cuda_driver_version) if self.cuda_driver_version else None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("source")
        return {"schema": SCHEMA_VERSION, **data}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2) + "\n"

    @classmethod
    def from_json(cls, data: Any, source: str | None = None) -> HostProfile:
        where = source or "host profile"
        if not isinstance(data, dict):
            raise UsageError(
                f"{where} is not a JSON object", "pass the output of `cudabox probe --json`"
            )
        try:
            gpus = tuple(_gpu_from_json(g) for g in data.get("gpus") or [])
            return cls(
                driver_version=_opt_str(data.get("driver_version")),
                cuda_driver_version=_opt_str(data.get("cuda_driver_version")),
                gpus=gpus,
                status=str(data.get("status", "ok")),
                message=_opt_str(data.get("message")),
                fix=_opt_str(data.get("fix")),
                hostname=_opt_str(data.get("hostname")),
                nvml_version=_opt_str(data.get("nvml_version")),
                cuda_visible_devices=_opt_str(data.get("cuda_visible_devices")),
                source=source,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(
                f"{where} is not a valid host profile: {exc}",
                "regenerate it with `cudabox probe --json > FILE` on that host",
            ) from None

    @classmethod
    def load(cls, path: Path) -> HostProfile:
        data = read_json(path, "host file", "write it with `cudabox probe --json > FILE`")
        # Doctor reports embed the profile under "host"; accept those too.
        if isinstance(data, dict) and isinstance(data.get("host"), dict) and "gpus" not in data:
            data = data["host"]
        return cls.from_json(data, source=path.stem)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _gpu_from_json(data: Any) -> Gpu:
    if not isinstance(data, dict):
        raise TypeError("each entry of 'gpus' must be an object")
    cc = _opt_str(data.get("compute_capability"))
    if cc is not None:
        parse_cc(cc)  # validates
    migs = tuple(
        MigDevice(
            index=int(m["index"]),
            uuid=str(m["uuid"]),
            name=_opt_str(m.get("name")),
            memory_total_mib=_opt_int(m.get("memory_total_mib")),
            visible=bool(m.get("visible", True)),
        )
        for m in data.get("mig_devices") or []
    )
    return Gpu(
        index=int(data["index"]),
        uuid=_opt_str(data.get("uuid")),
        name=_opt_str(data.get("name")),
        compute_capability=cc,
        memory_total_mib=_opt_int(data.get("memory_total_mib")),
        pci_device_id=_opt_str(data.get("pci_device_id")),
        pci_bus_id=_opt_str(data.get("pci_bus_id")),
        brand=_opt_str(data.get("brand")),
        mig_enabled=bool(data.get("mig_enabled", False)),
        mig_devices=migs,
        visible=bool(data.get("visible", True)),
        error=_opt_str(data.get("error")),
        fix=_opt_str(data.get("fix")),
    )


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)
