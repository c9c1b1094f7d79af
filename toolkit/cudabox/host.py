"""The host profile: what a machine's NVIDIA stack looks like, as plain data.

`probe --json` writes it; `select --host FILE` and `report` read it back on other machines,
so the JSON form is a stable interface (see `SCHEMA_VERSION`).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cudabox.errors import UsageError
from cudabox.output import JsonFields, read_json, shown
from cudabox.versions import CudaVersion, DriverVersion, parse_cc

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
    def from_json(
        cls, data: Any, source: str | None = None, where: str | None = None
    ) -> HostProfile:
        """The profile `probe --json` wrote; every key checked, so a wrong file is a usage error.

        `where` names the input in messages ("host file nodes/a.json"); `source` becomes the
        profile's name when it has no hostname.
        """
        where = where or (f"host profile {source}" if source else "host profile")
        if not isinstance(data, dict):
            raise UsageError(
                f"{where} is not a JSON object", "pass the output of `cudabox probe --json`"
            )
        read = JsonFields(data, where, _REGENERATE)
        if "schema" not in data:
            raise UsageError(
                f"{where} is not a host profile: it has no 'schema' key",
                "write one with `cudabox probe --json > FILE` on that host",
            )
        schema = data["schema"]
        if type(schema) is not int or not 1 <= schema <= SCHEMA_VERSION:
            raise UsageError(
                f"{where} has host profile schema {shown(schema)}; this cudabox reads schema "
                f"{SCHEMA_VERSION}",
                _REGENERATE,
            )
        missing = [key for key in _REQUIRED_KEYS if key not in data]
        if missing:
            raise UsageError(
                f"{where} is not a host profile: it has no {missing[0]!r} key", _REGENERATE
            )
        driver = read.text("driver_version")
        if driver is not None:
            read.parsed("driver_version", DriverVersion.parse)
        cuda = read.text("cuda_driver_version")
        if cuda is not None:
            read.parsed("cuda_driver_version", CudaVersion.parse)
        status = read.text("status")
        if status not in STATUSES:
            read.fail("status", f"must be one of {', '.join(STATUSES)}")
        gpus = tuple(
            _gpu_from_json(item, f"gpus[{n}]", where)
            for n, item in enumerate(read.items("gpus", required=True))
        )
        indexes = [g.index for g in gpus]
        for index in indexes:
            if indexes.count(index) > 1:
                raise UsageError(f"{where}: two GPUs have index {index}", _REGENERATE)
        return cls(
            driver_version=driver,
            cuda_driver_version=cuda,
            gpus=gpus,
            status=str(status),
            message=read.text("message"),
            fix=read.text("fix"),
            hostname=read.text("hostname"),
            nvml_version=read.text("nvml_version"),
            cuda_visible_devices=read.text("cuda_visible_devices"),
            source=source,
        )

    @classmethod
    def load(cls, path: Path) -> HostProfile:
        data = read_json(path, "host file", "write it with `cudabox probe --json > FILE`")
        # Doctor reports embed the profile under "host"; accept those too.
        if isinstance(data, dict) and isinstance(data.get("host"), dict) and "gpus" not in data:
            data = data["host"]
        return cls.from_json(data, source=path.stem, where=f"host file {path}")


STATUSES = ("ok", "no-driver", "error")
_REQUIRED_KEYS = ("driver_version", "cuda_driver_version", "gpus", "status")
_GPU_REQUIRED_KEYS = ("index", "compute_capability")
_REGENERATE = "regenerate it with `cudabox probe --json > FILE` on that host"
_PCI_ID_RE = re.compile(r"^0x[0-9A-Fa-f]{8}$")

T = TypeVar("T")


def _gpu_from_json(data: Any, prefix: str, where: str) -> Gpu:
    if not isinstance(data, dict):
        raise UsageError(f"{where}: {prefix} must be an object, got {shown(data)}", _REGENERATE)
    read = JsonFields(data, where, _REGENERATE, prefix + ".")
    for key in _GPU_REQUIRED_KEYS:
        if key not in data:
            raise UsageError(f"{where}: {prefix} has no {key!r} key", _REGENERATE)
    cc = read.text("compute_capability")
    if cc is not None:
        read.parsed("compute_capability", parse_cc)
    pci = read.text("pci_device_id")
    if pci is not None and not _PCI_ID_RE.match(pci):
        read.fail("pci_device_id", "must be of the form 0x233010DE")
    migs = []
    for n, item in enumerate(read.items("mig_devices")):
        mig_prefix = f"{prefix}.mig_devices[{n}]"
        if not isinstance(item, dict):
            raise UsageError(
                f"{where}: {mig_prefix} must be an object, got {shown(item)}", _REGENERATE
            )
        mig = JsonFields(item, where, _REGENERATE, mig_prefix + ".")
        uuid = mig.text("uuid")
        if uuid is None:
            mig.fail("uuid", "must be text")
        migs.append(
            MigDevice(
                index=mig.index("index"),
                uuid=uuid,
                name=mig.text("name"),
                memory_total_mib=mig.count("memory_total_mib"),
                visible=mig.flag("visible", True),
            )
        )
    return Gpu(
        index=read.index("index"),
        uuid=read.text("uuid"),
        name=read.text("name"),
        compute_capability=cc,
        memory_total_mib=read.count("memory_total_mib"),
        pci_device_id=pci,
        pci_bus_id=read.text("pci_bus_id"),
        brand=read.text("brand"),
        mig_enabled=read.flag("mig_enabled", False),
        mig_devices=tuple(migs),
        visible=read.flag("visible", True),
        error=read.text("error"),
        fix=read.text("fix"),
    )
