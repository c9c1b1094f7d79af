"""A fake NVML library for the doctor's host layer, with one named scenario per failure.

It stands in for the `pynvml` module: the same function names, and errors raised as real
`pynvml.NVMLError` subclasses (built with `pynvml.NVMLError(code)`), as the driver would.
"""

# The fake mirrors NVML's own camelCase function names.

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Any

import pynvml

H100_SXM = "0x233010DE"
MIB = 1024 * 1024


@dataclass(frozen=True)
class FakeGpu:
    uuid: str = "GPU-11111111-2222-3333-4444-555555555555"
    name: str = "NVIDIA H100 80GB HBM3"
    cc: tuple[int, int] = (9, 0)
    memory_mib: int = 81559
    pci_device_id: int = 0x233010DE
    bus_id: str = "00000000:18:00.0"
    persistence: int = 1
    ecc: tuple[int, int] = (1, 1)
    ecc_volatile: int = 0
    ecc_aggregate: int = 0
    remapped_rows: tuple[int, int, int, int] | None = (0, 0, 0, 0)  # None: pre-Ampere GPU
    retired_sbe: tuple[int, ...] = ()
    retired_dbe: tuple[int, ...] = ()
    retired_pending: int = 0
    clock_reasons: int = 0x1  # idle
    pcie_gen: tuple[int, int, int] = (1, 5, 5)  # current, max of link, max of GPU
    pcie_width: tuple[int, int] = (16, 16)
    mig: tuple[int, int] | None = (0, 0)
    lost: bool = False  # every query raises GPU_IS_LOST


@dataclass
class FakeNvml:
    """Module-like: attribute access gives the NVML functions `cudabox.nvml` calls."""

    gpus: list[FakeGpu] = field(default_factory=lambda: [FakeGpu()])
    driver: str = "580.95.05"
    nvml_version: str = "13.580.95.05"
    cuda: int = 13000
    init_error: int | None = None
    missing: set[str] = field(default_factory=set)  # functions the "driver" lacks

    NVMLError = pynvml.NVMLError
    NVML_BRAND_NVIDIA = 14
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    NVML_VOLATILE_ECC = 0
    NVML_AGGREGATE_ECC = 1

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("nvml") and name in object.__getattribute__(self, "missing"):

            def absent(*_: Any) -> Any:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)

            return absent
        return object.__getattribute__(self, name)

    # -- system --
    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)

    def nvmlShutdown(self) -> None:
        pass

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.driver

    def nvmlSystemGetNVMLVersion(self) -> str:
        return self.nvml_version

    def nvmlSystemGetCudaDriverVersion_v2(self) -> int:
        return self.cuda

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return self.cuda

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    # -- devices: the handle is the FakeGpu itself --
    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        return self._alive(self.gpus[index])

    def _alive(self, gpu: FakeGpu) -> FakeGpu:
        if gpu.lost:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return gpu

    def nvmlDeviceGetUUID(self, h: FakeGpu) -> str:
        return self._alive(h).uuid

    def nvmlDeviceGetName(self, h: FakeGpu) -> str:
        return h.name

    def nvmlDeviceGetCudaComputeCapability(self, h: FakeGpu) -> tuple[int, int]:
        return h.cc

    def nvmlDeviceGetMemoryInfo(self, h: FakeGpu) -> Any:
        return SimpleNamespace(total=h.memory_mib * MIB)

    def nvmlDeviceGetPciInfo(self, h: FakeGpu) -> Any:
        return SimpleNamespace(pciDeviceId=h.pci_device_id, busId=h.bus_id)

    def nvmlDeviceGetBrand(self, h: FakeGpu) -> int:
        return self.NVML_BRAND_NVIDIA

    def nvmlDeviceGetMigMode(self, h: FakeGpu) -> list[int]:
        if h.mig is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return list(h.mig)

    def nvmlDeviceGetMaxMigDeviceCount(self, h: FakeGpu) -> int:
        return 0

    def nvmlDeviceGetPersistenceMode(self, h: FakeGpu) -> int:
        return h.persistence

    def nvmlDeviceGetEccMode(self, h: FakeGpu) -> list[int]:
        return list(h.ecc)

    def nvmlDeviceGetTotalEccErrors(self, h: FakeGpu, error_type: int, counter: int) -> int:
        assert error_type == 1, "the doctor reads uncorrected errors only"
        return h.ecc_volatile if counter == 0 else h.ecc_aggregate

    def nvmlDeviceGetRemappedRows(self, h: FakeGpu) -> tuple[int, int, int, int]:
        if h.remapped_rows is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return h.remapped_rows

    def nvmlDeviceGetRetiredPages(self, h: FakeGpu, cause: int) -> list[int]:
        return list(h.retired_sbe if cause == 0 else h.retired_dbe)

    def nvmlDeviceGetRetiredPagesPendingStatus(self, h: FakeGpu) -> int:
        return h.retired_pending

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: FakeGpu) -> int:
        return h.clock_reasons

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h: FakeGpu) -> int:
        return h.clock_reasons

    def nvmlDeviceGetCurrPcieLinkGeneration(self, h: FakeGpu) -> int:
        return h.pcie_gen[0]

    def nvmlDeviceGetMaxPcieLinkGeneration(self, h: FakeGpu) -> int:
        return h.pcie_gen[1]

    def nvmlDeviceGetGpuMaxPcieLinkGeneration(self, h: FakeGpu) -> int:
        return h.pcie_gen[2]

    def nvmlDeviceGetCurrPcieLinkWidth(self, h: FakeGpu) -> int:
        return h.pcie_width[0]

    def nvmlDeviceGetMaxPcieLinkWidth(self, h: FakeGpu) -> int:
        return h.pcie_width[1]


def healthy(**gpu: Any) -> FakeNvml:
    return FakeNvml(gpus=[replace(FakeGpu(), **gpu)])


# One scenario per real failure; the tests assert each one's status and fix.
SCENARIOS: dict[str, FakeNvml] = {
    "healthy": healthy(),
    "hw-slowdown": healthy(clock_reasons=0x8),
    "hw-thermal": healthy(clock_reasons=0x40 | 0x20),
    "power-brake": healthy(clock_reasons=0x80),
    "sw-thermal": healthy(clock_reasons=0x20),
    "downtrained-width": healthy(pcie_gen=(5, 5, 5), pcie_width=(8, 16)),
    "gen-low-under-load": healthy(clock_reasons=0x0, pcie_gen=(3, 5, 5)),
    "slot-limited": healthy(pcie_gen=(4, 4, 5)),
    "retired-pages-pending": healthy(
        name="Tesla V100-SXM2-32GB",
        cc=(7, 0),
        remapped_rows=None,
        retired_dbe=(0x1000,),
        retired_pending=1,
    ),
    "retired-pages-many": healthy(
        name="Tesla V100-SXM2-32GB", cc=(7, 0), remapped_rows=None, retired_sbe=tuple(range(12))
    ),
    "remap-failure": healthy(remapped_rows=(3, 5, 0, 1)),
    "remap-pending": healthy(remapped_rows=(0, 1, 1, 0)),
    "ecc-volatile": healthy(ecc_volatile=2, ecc_aggregate=2),
    "ecc-aggregate": healthy(ecc_aggregate=4),
    "no-persistence": healthy(persistence=0),
    "mig-pending": healthy(mig=(0, 1)),
    "mig-no-instances": healthy(mig=(1, 1)),
    "mismatch": FakeNvml(init_error=pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH),
    "library-skew": FakeNvml(nvml_version="13.580.82.07"),
    "no-driver": FakeNvml(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND),
    "gpu-lost": FakeNvml(gpus=[FakeGpu(), replace(FakeGpu(), uuid="GPU-lost", lost=True)]),
    "old-driver-api": FakeNvml(
        missing={
            "nvmlDeviceGetCurrentClocksEventReasons",
            "nvmlDeviceGetGpuMaxPcieLinkGeneration",
        },
        gpus=[replace(FakeGpu(), clock_reasons=0x40, pcie_gen=(5, 5, 5))],
    ),
}
