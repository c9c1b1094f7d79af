"""A fake of the nvidia-ml-py module for failure-path tests.

It raises the binding's real error classes (`pynvml.NVMLError(code)` picks the subclass), so the
code under test sees exactly what a real driver would make it see. Only the functions the probe
and doctor use are provided; a scenario is a list of FakeGpu plus module-level failures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml

NVMLError = pynvml.NVMLError


def err(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)


@dataclass
class FakeMig:
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3 MIG 3g.40gb"
    memory_mib: int = 40448


@dataclass
class FakeGpu:
    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    cc: tuple[int, int] = (9, 0)
    memory_mib: int = 81559
    pci_device_id: int = 0x233010DE
    bus_id: str = "00000000:18:00.0"
    brand: int = pynvml.NVML_BRAND_NVIDIA
    mig_mode: tuple[int, int] | None = None  # None: MIG not supported
    migs: list[FakeMig | None] = field(default_factory=list)  # None: an empty slot
    fail: dict[str, int] = field(default_factory=dict)  # function name -> NVML error code
    extra: dict[str, Any] = field(default_factory=dict)  # free-form values for other queries


class FakeNvml:
    """Module-like object: attribute access mirrors `pynvml`."""

    NVMLError = pynvml.NVMLError

    def __init__(
        self,
        gpus: list[FakeGpu] | None = None,
        driver: str | bytes = "580.95.05",
        cuda: int | None = 13000,
        init_error: int | None = None,
        fail: dict[str, int] | None = None,
        has_v2: bool = True,
    ) -> None:
        self.gpus = gpus or []
        self.driver = driver
        self.cuda = cuda
        self.init_error = init_error
        self.fail = fail or {}
        self.initialised = False
        self.shutdowns = 0
        if not has_v2:
            self.fail["nvmlSystemGetCudaDriverVersion_v2"] = pynvml.NVML_ERROR_FUNCTION_NOT_FOUND
        for name in dir(pynvml):
            if name.startswith("NVML_") and not hasattr(self, name):
                setattr(self, name, getattr(pynvml, name))

    # library-wide
    def _check(self, fn: str, gpu: FakeGpu | None = None) -> None:
        if not self.initialised:
            raise err(pynvml.NVML_ERROR_UNINITIALIZED)
        code = self.fail.get(fn) or (gpu.fail.get(fn) if gpu else None)
        if code:
            raise err(code)

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise err(self.init_error)
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1
        self.initialised = False

    def nvmlSystemGetDriverVersion(self) -> str | bytes:
        self._check("nvmlSystemGetDriverVersion")
        return self.driver

    def nvmlSystemGetNVMLVersion(self) -> str:
        self._check("nvmlSystemGetNVMLVersion")
        return "13." + (self.driver.decode() if isinstance(self.driver, bytes) else self.driver)

    def nvmlSystemGetCudaDriverVersion_v2(self) -> int:
        self._check("nvmlSystemGetCudaDriverVersion_v2")
        if self.cuda is None:
            raise err(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
        return self.cuda

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._check("nvmlSystemGetCudaDriverVersion")
        return self.cuda or 0

    def nvmlDeviceGetCount(self) -> int:
        self._check("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        gpu = self.gpus[index]
        self._check("nvmlDeviceGetHandleByIndex", gpu)
        return SimpleNamespace(gpu=gpu, mig=None)

    # per device (a handle is a namespace holding the FakeGpu, or a FakeMig)
    def _gpu(self, handle: Any, fn: str) -> FakeGpu:
        gpu: FakeGpu = handle.gpu
        self._check(fn, gpu)
        return gpu

    def nvmlDeviceGetName(self, handle: Any) -> str:
        gpu = self._gpu(handle, "nvmlDeviceGetName")
        return handle.mig.name if handle.mig else gpu.name

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        gpu = self._gpu(handle, "nvmlDeviceGetUUID")
        return handle.mig.uuid if handle.mig else gpu.uuid

    def nvmlDeviceGetCudaComputeCapability(self, handle: Any) -> tuple[int, int]:
        return self._gpu(handle, "nvmlDeviceGetCudaComputeCapability").cc

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any:
        gpu = self._gpu(handle, "nvmlDeviceGetMemoryInfo")
        mib = handle.mig.memory_mib if handle.mig else gpu.memory_mib
        return SimpleNamespace(total=mib * 1024 * 1024, used=0, free=mib * 1024 * 1024)

    def nvmlDeviceGetPciInfo(self, handle: Any) -> Any:
        gpu = self._gpu(handle, "nvmlDeviceGetPciInfo")
        return SimpleNamespace(pciDeviceId=gpu.pci_device_id, busId=gpu.bus_id)

    def nvmlDeviceGetBrand(self, handle: Any) -> int:
        return self._gpu(handle, "nvmlDeviceGetBrand").brand

    def nvmlDeviceGetMigMode(self, handle: Any) -> list[int]:
        gpu = self._gpu(handle, "nvmlDeviceGetMigMode")
        if gpu.mig_mode is None:
            raise err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return list(gpu.mig_mode)

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: Any) -> int:
        gpu = self._gpu(handle, "nvmlDeviceGetMaxMigDeviceCount")
        return len(gpu.migs)

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Any, slot: int) -> Any:
        gpu = self._gpu(handle, "nvmlDeviceGetMigDeviceHandleByIndex")
        mig = gpu.migs[slot]
        if mig is None:
            raise err(pynvml.NVML_ERROR_NOT_FOUND)
        return SimpleNamespace(gpu=gpu, mig=mig)

    def __getattr__(self, name: str) -> Any:
        # Per-GPU free-form values: nvmlDeviceGetX(handle) returns gpu.extra["nvmlDeviceGetX"].
        if name.startswith("nvmlDevice"):

            def query(handle: Any, *args: Any) -> Any:
                gpu = self._gpu(handle, name)
                if name not in gpu.extra:
                    raise err(pynvml.NVML_ERROR_NOT_SUPPORTED)
                value = gpu.extra[name]
                return value(*args) if callable(value) else value

            return query
        raise AttributeError(name)
