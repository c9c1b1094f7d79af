"""A fake of the nvidia-ml-py module (`pynvml`) for failure-path tests of the probe and doctor.

It raises the binding's real error classes (`pynvml.NVMLError(code)` picks the subclass), so the
code under test sees exactly what a real driver would make it see. A GPU is a FakeGpu; SCENARIOS
holds one named host per failure that real hosts have shown.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Any

import pynvml

MIB = 1024 * 1024


def err(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)


@dataclass(frozen=True)
class FakeMig:
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3 MIG 3g.40gb"
    memory_mib: int = 40448


@dataclass(frozen=True)
class FakeGpu:
    uuid: str = "GPU-11111111-2222-3333-4444-555555555555"
    name: str = "NVIDIA H100 80GB HBM3"
    cc: tuple[int, int] = (9, 0)
    memory_mib: int = 81559
    pci_device_id: int = 0x233010DE
    bus_id: str = "00000000:18:00.0"
    brand: int = pynvml.NVML_BRAND_NVIDIA
    mig: tuple[int, int] | None = (0, 0)  # (current, pending); None: MIG not supported
    migs: tuple[FakeMig | None, ...] = ()  # MIG instances by slot; None: an empty slot
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
    # An HGX H100 SXM board by default: fabric registered, 18 NVLink links up, nothing to recover.
    vbios: str = "96.00.99.00.01"
    power_limit_mw: int = 700000
    power_mw: int = 72000
    fabric: tuple[int, int] | None = (3, 0)  # (state, status); None: no fabric API (NOT_SUPPORTED)
    recovery_action: int | None = 0  # None: the field is not supported by this driver
    nvlinks: tuple[int, ...] | None = (1,) * 18  # state per link; None: no NVLink
    replay_count: int | None = 0
    temperature: int = 34
    sm_clock: tuple[int, int] = (345, 1980)  # current (idle), max
    events: bool = True  # can report Xid events
    lost: bool = False  # every query raises GPU_IS_LOST
    fail: Mapping[str, int] = field(default_factory=dict)  # function name -> NVML error code


@dataclass
class FakeNvml:
    """Module-like: attribute access gives the NVML functions cudabox calls."""

    gpus: list[FakeGpu] = field(default_factory=lambda: [FakeGpu()])
    driver: str | bytes = "580.95.05"
    nvml_version: str = "13.580.95.05"
    cuda: int | None = 13000  # None: libcuda missing
    init_error: int | None = None
    missing: set[str] = field(default_factory=set)  # functions the "driver" lacks
    fail: dict[str, int] = field(default_factory=dict)  # library-wide failures
    shutdowns: int = 0
    xids: deque[tuple[int, int]] = field(default_factory=deque)  # (GPU index, Xid) still to report

    NVMLError = pynvml.NVMLError
    c_nvmlGpuFabricInfo_t = pynvml.c_nvmlGpuFabricInfo_t

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("nvml") and name in object.__getattribute__(self, "missing"):

            def absent(*_: Any) -> Any:
                raise err(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)

            return absent
        if name.startswith("NVML_") and not name.startswith("NVMLError"):
            return getattr(pynvml, name)
        return object.__getattribute__(self, name)

    def __dir__(self) -> list[str]:
        return [*super().__dir__(), *(n for n in dir(pynvml) if n.startswith("NVML_"))]

    def _system(self, fn: str) -> None:
        if fn in self.fail:
            raise err(self.fail[fn])

    def _gpu(self, handle: Any, fn: str) -> FakeGpu:
        gpu: FakeGpu = handle.gpu
        if gpu.lost:
            raise err(pynvml.NVML_ERROR_GPU_IS_LOST)
        if fn in gpu.fail:
            raise err(gpu.fail[fn])
        return gpu

    # -- system --
    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise err(self.init_error)

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> str | bytes:
        self._system("nvmlSystemGetDriverVersion")
        return self.driver

    def nvmlSystemGetNVMLVersion(self) -> str:
        return self.nvml_version

    def nvmlSystemGetCudaDriverVersion_v2(self) -> int:
        if self.cuda is None:
            raise err(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
        return self.cuda

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._system("nvmlSystemGetCudaDriverVersion")
        return self.cuda or 0

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    # -- devices: a handle holds the FakeGpu, and the FakeMig for a MIG instance --
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        handle = SimpleNamespace(gpu=self.gpus[index], mig=None, index=index)
        self._gpu(handle, "nvmlDeviceGetHandleByIndex")
        return handle

    def nvmlDeviceGetIndex(self, h: Any) -> int:
        self._gpu(h, "nvmlDeviceGetIndex")
        return int(h.index)

    def nvmlDeviceGetUUID(self, h: Any) -> str:
        gpu = self._gpu(h, "nvmlDeviceGetUUID")
        return h.mig.uuid if h.mig else gpu.uuid

    def nvmlDeviceGetName(self, h: Any) -> str:
        gpu = self._gpu(h, "nvmlDeviceGetName")
        return h.mig.name if h.mig else gpu.name

    def nvmlDeviceGetCudaComputeCapability(self, h: Any) -> tuple[int, int]:
        return self._gpu(h, "nvmlDeviceGetCudaComputeCapability").cc

    def nvmlDeviceGetMemoryInfo(self, h: Any) -> Any:
        gpu = self._gpu(h, "nvmlDeviceGetMemoryInfo")
        mib = h.mig.memory_mib if h.mig else gpu.memory_mib
        return SimpleNamespace(total=mib * MIB, used=0, free=mib * MIB)

    def nvmlDeviceGetPciInfo(self, h: Any) -> Any:
        gpu = self._gpu(h, "nvmlDeviceGetPciInfo")
        return SimpleNamespace(pciDeviceId=gpu.pci_device_id, busId=gpu.bus_id)

    def nvmlDeviceGetBrand(self, h: Any) -> int:
        return self._gpu(h, "nvmlDeviceGetBrand").brand

    def nvmlDeviceGetMigMode(self, h: Any) -> list[int]:
        gpu = self._gpu(h, "nvmlDeviceGetMigMode")
        if gpu.mig is None:
            raise err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return list(gpu.mig)

    def nvmlDeviceGetMaxMigDeviceCount(self, h: Any) -> int:
        return len(self._gpu(h, "nvmlDeviceGetMaxMigDeviceCount").migs)

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h: Any, slot: int) -> Any:
        mig = self._gpu(h, "nvmlDeviceGetMigDeviceHandleByIndex").migs[slot]
        if mig is None:
            raise err(pynvml.NVML_ERROR_NOT_FOUND)
        return SimpleNamespace(gpu=h.gpu, mig=mig)

    def nvmlDeviceGetPersistenceMode(self, h: Any) -> int:
        return self._gpu(h, "nvmlDeviceGetPersistenceMode").persistence

    def nvmlDeviceGetEccMode(self, h: Any) -> list[int]:
        return list(self._gpu(h, "nvmlDeviceGetEccMode").ecc)

    def nvmlDeviceGetTotalEccErrors(self, h: Any, error_type: int, counter: int) -> int:
        assert error_type == 1, "the doctor reads uncorrected errors only"
        gpu = self._gpu(h, "nvmlDeviceGetTotalEccErrors")
        return gpu.ecc_volatile if counter == 0 else gpu.ecc_aggregate

    def nvmlDeviceGetRemappedRows(self, h: Any) -> tuple[int, int, int, int]:
        gpu = self._gpu(h, "nvmlDeviceGetRemappedRows")
        if gpu.remapped_rows is None:
            raise err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return gpu.remapped_rows

    def nvmlDeviceGetRetiredPages(self, h: Any, cause: int) -> list[int]:
        gpu = self._gpu(h, "nvmlDeviceGetRetiredPages")
        return list(gpu.retired_sbe if cause == 0 else gpu.retired_dbe)

    def nvmlDeviceGetRetiredPagesPendingStatus(self, h: Any) -> int:
        return self._gpu(h, "nvmlDeviceGetRetiredPagesPendingStatus").retired_pending

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: Any) -> int:
        return self._gpu(h, "nvmlDeviceGetCurrentClocksEventReasons").clock_reasons

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h: Any) -> int:
        return self._gpu(h, "nvmlDeviceGetCurrentClocksThrottleReasons").clock_reasons

    def nvmlDeviceGetCurrPcieLinkGeneration(self, h: Any) -> int:
        return self._gpu(h, "nvmlDeviceGetCurrPcieLinkGeneration").pcie_gen[0]

    def nvmlDeviceGetMaxPcieLinkGeneration(self, h: Any) -> int:
        return self._gpu(h, "nvmlDeviceGetMaxPcieLinkGeneration").pcie_gen[1]

    def nvmlDeviceGetGpuMaxPcieLinkGeneration(self, h: Any) -> int:
        return self._gpu(h, "nvmlDeviceGetGpuMaxPcieLinkGeneration").pcie_gen[2]

    def nvmlDeviceGetCurrPcieLinkWidth(self, h: Any) -> int:
        return self._gpu(h, "nvmlDeviceGetCurrPcieLinkWidth").pcie_width[0]

    def nvmlDeviceGetMaxPcieLinkWidth(self, h: Any) -> int:
        return self._gpu(h, "nvmlDeviceGetMaxPcieLinkWidth").pcie_width[1]

    # -- hardware-fault readings --
    def nvmlDeviceGetVbiosVersion(self, h: Any) -> str:
        return self._gpu(h, "nvmlDeviceGetVbiosVersion").vbios

    def nvmlDeviceGetEnforcedPowerLimit(self, h: Any) -> int:
        return self._gpu(h, "nvmlDeviceGetEnforcedPowerLimit").power_limit_mw

    def nvmlDeviceGetPowerManagementLimit(self, h: Any) -> int:
        return self._gpu(h, "nvmlDeviceGetPowerManagementLimit").power_limit_mw

    def nvmlDeviceGetPowerUsage(self, h: Any) -> int:
        return self._gpu(h, "nvmlDeviceGetPowerUsage").power_mw

    def nvmlDeviceGetGpuFabricInfo(self, h: Any, info: Any) -> int:
        gpu = self._gpu(h, "nvmlDeviceGetGpuFabricInfo")
        if gpu.fabric is None:
            raise err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        target = info._obj  # the binding takes ctypes.byref(c_nvmlGpuFabricInfo_t())
        target.state, target.status = gpu.fabric
        return pynvml.NVML_SUCCESS

    def nvmlDeviceGetFieldValues(self, h: Any, field_ids: list[int]) -> Any:
        gpu = self._gpu(h, "nvmlDeviceGetFieldValues")
        known = {
            pynvml.NVML_FI_DEV_GET_GPU_RECOVERY_ACTION: gpu.recovery_action,
            pynvml.NVML_FI_DEV_NVLINK_LINK_COUNT: None if gpu.nvlinks is None else len(gpu.nvlinks),
        }
        values = (pynvml.c_nvmlFieldValue_t * len(field_ids))()
        for slot, field_id in enumerate(field_ids):
            values[slot].fieldId = field_id
            value = known.get(field_id)
            if value is None:  # NVML answers per field: NOT_SUPPORTED for this one only
                values[slot].nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
                continue
            values[slot].nvmlReturn = pynvml.NVML_SUCCESS
            values[slot].valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
            values[slot].value.uiVal = value
        return values

    def nvmlDeviceGetNvLinkState(self, h: Any, link: int) -> int:
        gpu = self._gpu(h, "nvmlDeviceGetNvLinkState")
        if gpu.nvlinks is None:
            raise err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if link >= len(gpu.nvlinks):
            raise err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return gpu.nvlinks[link]

    def nvmlDeviceGetPcieReplayCounter(self, h: Any) -> int:
        gpu = self._gpu(h, "nvmlDeviceGetPcieReplayCounter")
        if gpu.replay_count is None:
            raise err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return gpu.replay_count

    def nvmlDeviceGetTemperature(self, h: Any, sensor: int) -> int:
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return self._gpu(h, "nvmlDeviceGetTemperature").temperature

    def nvmlDeviceGetClockInfo(self, h: Any, kind: int) -> int:
        assert kind == pynvml.NVML_CLOCK_SM
        return self._gpu(h, "nvmlDeviceGetClockInfo").sm_clock[0]

    def nvmlDeviceGetMaxClockInfo(self, h: Any, kind: int) -> int:
        assert kind == pynvml.NVML_CLOCK_SM
        return self._gpu(h, "nvmlDeviceGetMaxClockInfo").sm_clock[1]

    # -- Xid events: `xids` holds what the "driver" will report; raise_xid adds one live --
    def raise_xid(self, index: int, xid: int) -> None:
        self.xids.append((index, xid))

    def nvmlEventSetCreate(self) -> Any:
        self._system("nvmlEventSetCreate")
        return SimpleNamespace(registered=set(), freed=False)

    def nvmlDeviceRegisterEvents(self, h: Any, kinds: int, event_set: Any) -> None:
        gpu = self._gpu(h, "nvmlDeviceRegisterEvents")
        assert kinds & pynvml.nvmlEventTypeXidCriticalError
        if not gpu.events:
            raise err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        event_set.registered.add(h.index)

    def nvmlEventSetWait_v2(self, event_set: Any, timeout_ms: int) -> Any:
        for _ in range(len(self.xids)):
            index, xid = self.xids.popleft()
            if index in event_set.registered:
                return SimpleNamespace(
                    device=self.nvmlDeviceGetHandleByIndex(index),
                    eventType=pynvml.nvmlEventTypeXidCriticalError,
                    eventData=xid,
                )
            self.xids.append((index, xid))  # not watched: left for another set
        time.sleep(min(timeout_ms, 5) / 1000)  # the real call blocks up to timeout_ms
        raise err(pynvml.NVML_ERROR_TIMEOUT)

    def nvmlEventSetFree(self, event_set: Any) -> None:
        event_set.freed = True


def healthy(**gpu: Any) -> FakeNvml:
    return FakeNvml(gpus=[replace(FakeGpu(), **gpu)])


def board(count: int = 8, **changes: Any) -> list[FakeGpu]:
    """An HGX board of `count` GPUs; `changes` apply to GPU 1 (the faulty one)."""
    gpus = [
        replace(
            FakeGpu(),
            uuid=f"GPU-{n:08d}-2222-3333-4444-555555555555",
            bus_id=f"00000000:{0x18 + n:02X}:00.0",
        )
        for n in range(count)
    ]
    gpus[1] = replace(gpus[1], **changes)
    return gpus


# The Xids issue 17 names, each with a kernel log line as the driver writes it (GPU 0, bus 18).
XID_LINES: dict[int, str] = {
    79: "NVRM: Xid (PCI:0000:18:00): 79, pid=2411, name=python, GPU has fallen off the bus.",
    48: "NVRM: Xid (PCI:0000:18:00): 48, pid=2411, name=python, An uncorrectable double bit error (DBE) has been detected on GPU in the framebuffer at partition 6, subpartition 0.",
    63: "NVRM: Xid (PCI:0000:18:00): 63, pid=1896, Row Remapper: New row marked for remapping, reset gpu to activate.",
    64: "NVRM: Xid (PCI:0000:18:00): 64, pid=1896, Row Remapper: Failed to record a row remap.",
    94: "NVRM: Xid (PCI:0000:18:00): 94, pid=2411, name=python, Contained: SM (0x1). RST: No, D-RST: No",
    95: "NVRM: Xid (PCI:0000:18:00): 95, pid=2411, name=python, Uncontained: FBHUB. RST: Yes, D-RST: No",
    119: "NVRM: Xid (PCI:0000:18:00): 119, pid=2411, name=python, Timeout after 6s of waiting for RPC response from GPU0 GSP! Expected function 76 (GSP_RM_CONTROL).",
    120: "NVRM: Xid (PCI:0000:18:00): 120, pid=2411, name=python, GSP task timeout @ pc:0x4bd36ec, task: 1",
    74: "NVRM: Xid (PCI:0000:18:00): 74, pid=2411, name=python, NVLink: fatal error detected on link 4(0x0, 0x0, 0x10000, 0x0, 0x0, 0x0, 0x0)",
}


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
    "row-remaps-over-limit": healthy(remapped_rows=(500, 20, 0, 0)),
    "retired-pages-over-limit": healthy(
        name="Tesla V100-SXM2-32GB", cc=(7, 0), remapped_rows=None, retired_sbe=tuple(range(63))
    ),
    "fabric-not-started": FakeNvml(gpus=board(fabric=(1, 0))),
    "fabric-failed": FakeNvml(gpus=board(fabric=(3, pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES))),
    "recovery-reboot": healthy(recovery_action=2),
    "recovery-reset": healthy(recovery_action=1),
    "recovery-unknown": healthy(recovery_action=42),  # an action newer than cudabox
    "nvlink-down": FakeNvml(gpus=board(nvlinks=(1,) * 17 + (0,))),
    "h100-nvl-pair": FakeNvml(  # 12 links by design: no sibling has more, so no fault
        gpus=[
            replace(
                g,
                name="NVIDIA H100 NVL",
                pci_device_id=0x232110DE,
                nvlinks=(1,) * 12,
                fabric=(0, 0),
            )
            for g in board(2)
        ]
    ),
    "pcie-consumer": healthy(  # no fabric, NVLink, recovery field or replay counter
        name="NVIDIA GeForce RTX 4090",
        fabric=None,
        nvlinks=None,
        recovery_action=None,
        replay_count=None,
    ),
    **{f"xid-{xid}": FakeNvml(gpus=[FakeGpu()], xids=deque([(0, xid)])) for xid in XID_LINES},
    "old-driver-api": FakeNvml(
        missing={
            "nvmlDeviceGetCurrentClocksEventReasons",
            "nvmlDeviceGetGpuMaxPcieLinkGeneration",
        },
        gpus=[replace(FakeGpu(), clock_reasons=0x40, pcie_gen=(5, 5, 5))],
    ),
}
