"""The only module that talks to NVML (NVIDIA's official binding, nvidia-ml-py, module `pynvml`).

Every NVML call goes through `Nvml.call`, which turns NVML's error codes into a diagnosis and a
fix. A GPU whose queries fail becomes an entry with `error` set; the other GPUs are still read.
Tests pass a fake library object with the same functions and error classes.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from cudabox.health import (
    FABRIC_STATES,
    RECOVERY_ACTIONS,
    GpuHealth,
    GpuSample,
    HostHealth,
    XidEvent,
)
from cudabox.host import Gpu, HostProfile, MigDevice
from cudabox.versions import CudaVersion

T = TypeVar("T")

# NVML return codes (nvml.h); stable across driver branches.
INVALID_ARGUMENT = 2
NOT_SUPPORTED = 3
NO_PERMISSION = 4
NOT_FOUND = 6
DRIVER_NOT_LOADED = 9
TIMEOUT = 10
LIBRARY_NOT_FOUND = 12
FUNCTION_NOT_FOUND = 13
GPU_IS_LOST = 15
LIB_RM_VERSION_MISMATCH = 18

_DIAGNOSES: dict[int, tuple[str, str]] = {
    LIBRARY_NOT_FOUND: (
        "the NVML library (libnvidia-ml.so.1) was not found: no NVIDIA driver is installed here",
        "install the NVIDIA driver; inside a container, start it with GPUs (--gpus all) through the NVIDIA Container Toolkit",
    ),
    DRIVER_NOT_LOADED: (
        "the NVIDIA kernel driver is not loaded",
        "load it with `modprobe nvidia` or reboot; `dmesg | grep -i nvrm` says why it did not load",
    ),
    LIB_RM_VERSION_MISMATCH: (
        "driver/library version mismatch: the NVML library and the loaded kernel module come from different driver versions (usually a driver upgrade without a reboot)",
        "reload the NVIDIA kernel modules (stop GPU processes, `rmmod nvidia_uvm nvidia_drm nvidia_modeset nvidia`, `modprobe nvidia`) or reboot",
    ),
    NO_PERMISSION: (
        "no permission to query the GPU",
        "check the permissions of /dev/nvidia* (the user may need the 'video' group) or run with the rights the driver expects",
    ),
    GPU_IS_LOST: (
        "the GPU is lost (it stopped answering, often after an Xid 79 'fallen off the bus')",
        "check `dmesg` for Xid errors, then reset the GPU (`nvidia-smi -r -i N`) or reboot; check power and cooling",
    ),
    FUNCTION_NOT_FOUND: (
        "the driver does not provide this NVML function (nvidia-ml-py is newer than the driver)",
        "upgrade the NVIDIA driver, or install the nvidia-ml-py release that matches the driver branch",
    ),
}


class NvmlFailure(Exception):
    """An NVML call failed; `diagnosis` and `fix` are meant for people."""

    def __init__(self, code: int | None, diagnosis: str, fix: str) -> None:
        super().__init__(diagnosis)
        self.code = code
        self.diagnosis = diagnosis
        self.fix = fix


def diagnose(code: int | None, raw: str) -> tuple[str, str]:
    if code in _DIAGNOSES:
        return _DIAGNOSES[code]
    return (
        f"NVML error: {raw}",
        "run `nvidia-smi` to see whether the driver answers; check `dmesg` for Xid errors",
    )


def pynvml_owners() -> list[str]:
    """Who provides the `pynvml` module Python would import: ["nvidia-ml-py"] when all is well.

    NVIDIA's nvidia-ml-py ships a single module file, pynvml.py; the unofficial `pynvml`
    distribution (before 12.0) ships a package folder that shadows it. Only in that case is the
    package metadata read, to name the culprit (importing importlib.metadata alone costs more
    than the rest of `cudabox probe`).
    """
    spec = importlib.util.find_spec("pynvml")
    if spec is None or spec.origin is None:
        return []
    origin = Path(spec.origin)
    if origin.name != "__init__.py":
        return ["nvidia-ml-py"]
    from importlib import metadata  # only on this error path: it costs start-up time

    try:
        owners = metadata.packages_distributions().get("pynvml", [])
    except Exception:  # broken metadata: still not NVIDIA's module layout
        owners = []
    return [o for o in owners if o.lower().replace("_", "-") != "nvidia-ml-py"] or ["pynvml"]


def require_driver_library() -> None:
    """NvmlFailure(LIBRARY_NOT_FOUND) when the driver's libnvidia-ml.so.1 cannot be loaded.

    What nvmlInit would find first, found without importing the binding (a 6,000-line module
    that costs more than the rest of `cudabox probe` on a host without a GPU).
    """
    import ctypes  # start-up: only when the probe looks for the driver library

    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        diagnosis, fix = _DIAGNOSES[LIBRARY_NOT_FOUND]
        raise NvmlFailure(LIBRARY_NOT_FOUND, diagnosis, fix) from None


def load_pynvml() -> Any:
    """The official binding, once the driver library is known to be there.

    The unofficial `pynvml` distribution that shadows it is refused first, then a missing
    driver library is found without importing the binding at all.
    """
    owners = pynvml_owners()
    if owners and all(o.lower().replace("_", "-") != "nvidia-ml-py" for o in owners):
        raise NvmlFailure(
            None,
            f"the `pynvml` module comes from {', '.join(owners)}, not NVIDIA's nvidia-ml-py",
            "pip uninstall pynvml && pip install nvidia-ml-py",
        )
    require_driver_library()
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        raise NvmlFailure(
            None, "nvidia-ml-py is not installed", "pip install nvidia-ml-py"
        ) from None


@dataclass
class Nvml:
    """A thin session over the binding: `call` is the one place errors are translated."""

    lib: Any

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        except self.lib.NVMLError as exc:
            code = getattr(exc, "value", None)
            diagnosis, fix = diagnose(code, str(exc))
            raise NvmlFailure(code, diagnosis, fix) from None

    def optional(self, fn: Callable[..., T] | str, *args: Any) -> T | None:
        """For fields some GPUs or drivers lack: 'not supported' and 'not found' read as None.

        `fn` may be a function's name, for functions an older binding does not define at all.
        """
        function: Callable[..., T] | None = (
            getattr(self.lib, fn, None) if isinstance(fn, str) else fn
        )
        if function is None:
            return None
        try:
            return self.call(function, *args)
        except NvmlFailure as exc:
            if exc.code in (NOT_SUPPORTED, FUNCTION_NOT_FOUND, NOT_FOUND):
                return None
            raise

    def __enter__(self) -> Nvml:
        self.call(self.lib.nvmlInit)
        return self

    def __exit__(self, *exc: object) -> None:
        # Shutting down a half-initialised library is not worth reporting.
        with contextlib.suppress(self.lib.NVMLError):
            self.lib.nvmlShutdown()


def _text(value: Any) -> str:
    # Older or forked bindings return bytes where nvidia-ml-py returns str.
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class HostReading:
    """One pass over NVML: the profile `probe` shows and, when asked, the doctor's health readings."""

    profile: HostProfile
    health: HostHealth | None = None


def probe(lib: Any | None = None, env: Mapping[str, str] | None = None) -> HostProfile:
    """Read the host's driver and GPUs. Never raises for a missing or broken driver."""
    return read_host(lib, env).profile


def read_host(
    lib: Any | None = None, env: Mapping[str, str] | None = None, with_health: bool = False
) -> HostReading:
    """Read the driver and every GPU once, through one session and one handle per GPU."""
    env = os.environ if env is None else env
    visible_spec = env.get("CUDA_VISIBLE_DEVICES")
    hostname = socket.gethostname()
    try:
        session = Nvml(lib if lib is not None else load_pynvml())
        with session:
            driver = _text(session.call(session.lib.nvmlSystemGetDriverVersion))
            cuda = _cuda_driver_version(session)
            nvml_version = session.optional(session.lib.nvmlSystemGetNVMLVersion)
            count = int(session.call(session.lib.nvmlDeviceGetCount))
            read = [_read_gpu(session, index, with_health) for index in range(count)]
    except NvmlFailure as exc:
        no_driver = exc.code in (LIBRARY_NOT_FOUND, DRIVER_NOT_LOADED)
        profile = HostProfile(
            driver_version=None,
            cuda_driver_version=None,
            gpus=(),
            status="no-driver" if no_driver else "error",
            message=exc.diagnosis,
            fix=exc.fix,
            hostname=hostname,
            cuda_visible_devices=visible_spec,
        )
        sick = HostHealth(
            status="no-driver" if no_driver or exc.code is None else "error",
            code=exc.code,
            message=exc.diagnosis,
            fix=exc.fix,
        )
        return HostReading(profile, sick if with_health else None)
    gpus = [gpu for gpu, _ in read]
    nvml_text = _text(nvml_version) if nvml_version is not None else None
    profile = HostProfile(
        driver_version=driver,
        cuda_driver_version=str(cuda) if cuda else None,
        gpus=tuple(apply_visibility(gpus, visible_spec)),
        status="ok",
        message=None if gpus else "the driver is loaded but reports no GPU",
        hostname=hostname,
        nvml_version=nvml_text,
        cuda_visible_devices=visible_spec,
    )
    if not with_health:
        return HostReading(profile)
    healths = tuple(h for _, h in read if h is not None)
    return HostReading(
        profile,
        HostHealth(
            status="ok",
            driver_version=driver,
            nvml_version=nvml_text,
            device_count=count,
            gpus=healths,
        ),
    )


def _cuda_driver_version(session: Nvml) -> CudaVersion | None:
    # _v2 reads libcuda itself; v1 may return a made-up "supported" value when libcuda is missing.
    value = session.optional("nvmlSystemGetCudaDriverVersion_v2")
    if value is None:
        value = session.optional(session.lib.nvmlSystemGetCudaDriverVersion)
    return CudaVersion.from_int(int(value)) if value else None


def _read_gpu(session: Nvml, index: int, with_health: bool) -> tuple[Gpu, GpuHealth | None]:
    """The GPU's profile entry and (with_health) its health readings, from one handle."""
    lib = session.lib
    try:
        handle = session.call(lib.nvmlDeviceGetHandleByIndex, index)
    except NvmlFailure as exc:
        return (
            Gpu(index=index, error=exc.diagnosis, fix=exc.fix),
            GpuHealth(index=index, error=exc.diagnosis, fix=exc.fix) if with_health else None,
        )
    gpu = _read_profile(session, index, handle)
    return gpu, _read_health(session, index, handle, gpu) if with_health else None


def _read_profile(session: Nvml, index: int, handle: Any) -> Gpu:
    lib = session.lib
    try:
        major, minor = session.call(lib.nvmlDeviceGetCudaComputeCapability, handle)
        memory = session.call(lib.nvmlDeviceGetMemoryInfo, handle)
        pci = session.optional(lib.nvmlDeviceGetPciInfo, handle)
        brand = session.optional(lib.nvmlDeviceGetBrand, handle)
        mig = session.optional(lib.nvmlDeviceGetMigMode, handle)
        mig_enabled = mig is not None and int(mig[0]) == 1
        return Gpu(
            index=index,
            uuid=_text(session.call(lib.nvmlDeviceGetUUID, handle)),
            name=_text(session.call(lib.nvmlDeviceGetName, handle)),
            compute_capability=f"{major}.{minor}",
            memory_total_mib=int(memory.total) // (1024 * 1024),
            pci_device_id=f"0x{int(pci.pciDeviceId):08X}" if pci is not None else None,
            pci_bus_id=_text(pci.busId) if pci is not None else None,
            brand=_brand_name(lib, brand),
            mig_enabled=mig_enabled,
            mig_devices=tuple(_read_migs(session, handle)) if mig_enabled else (),
        )
    except NvmlFailure as exc:
        uuid = None
        with contextlib.suppress(Exception):  # the GPU is known broken; its uuid is a bonus
            uuid = _text(lib.nvmlDeviceGetUUID(handle))
        return Gpu(index=index, uuid=uuid, error=exc.diagnosis, fix=exc.fix)


def _read_migs(session: Nvml, handle: Any) -> list[MigDevice]:
    lib = session.lib
    slots = session.optional(lib.nvmlDeviceGetMaxMigDeviceCount, handle) or 0
    devices = []
    for slot in range(int(slots)):
        mig = session.optional(lib.nvmlDeviceGetMigDeviceHandleByIndex, handle, slot)
        if mig is None:
            continue  # an empty slot: no instance was created there
        memory = session.optional(lib.nvmlDeviceGetMemoryInfo, mig)
        devices.append(
            MigDevice(
                index=slot,
                uuid=_text(session.call(lib.nvmlDeviceGetUUID, mig)),
                name=_text(session.optional(lib.nvmlDeviceGetName, mig) or "") or None,
                memory_total_mib=int(memory.total) // (1024 * 1024) if memory is not None else None,
            )
        )
    return devices


def _brand_name(lib: Any, brand: int | None) -> str | None:
    if brand is None:
        return None
    names = {
        getattr(lib, attr): attr.removeprefix("NVML_BRAND_")
        for attr in dir(lib)
        if attr.startswith("NVML_BRAND_") and attr != "NVML_BRAND_COUNT"
    }
    raw = names.get(brand)
    return _PRETTY_BRANDS.get(raw, raw.replace("_", " ").title()) if raw else f"brand {brand}"


_PRETTY_BRANDS = {
    "GEFORCE": "GeForce",
    "GEFORCE_RTX": "GeForce RTX",
    "TITAN": "Titan",
    "TITAN_RTX": "Titan RTX",
    "TESLA": "Tesla",
    "QUADRO": "Quadro",
    "QUADRO_RTX": "Quadro RTX",
    "NVIDIA_RTX": "NVIDIA RTX",
    "NVIDIA": "NVIDIA",
}


def apply_visibility(gpus: list[Gpu], spec: str | None) -> list[Gpu]:
    """Mark what CUDA_VISIBLE_DEVICES lets a CUDA process see (indices, GPU-/MIG- UUIDs).

    Like the CUDA runtime, parsing stops at the first entry that matches nothing.
    """
    if spec is None:
        return gpus
    shown_gpus: set[int] = set()
    shown_migs: set[str] = set()
    for entry in (e.strip() for e in spec.split(",")):
        hit = _match_entry(gpus, entry)
        if hit is None:
            break
        gpu_index, mig_uuid = hit
        shown_gpus.add(gpu_index)
        if mig_uuid:
            shown_migs.add(mig_uuid)
    result = []
    for gpu in gpus:
        migs = tuple(
            MigDevice(
                m.index,
                m.uuid,
                m.name,
                m.memory_total_mib,
                visible=m.uuid in shown_migs or (gpu.index in shown_gpus and not shown_migs),
            )
            for m in gpu.mig_devices
        )
        result.append(replace(gpu, visible=gpu.index in shown_gpus, mig_devices=migs))
    return result


def _match_entry(gpus: list[Gpu], entry: str) -> tuple[int, str | None] | None:
    if entry.isdigit():
        number = int(entry)
        return (number, None) if any(g.index == number for g in gpus) else None
    if entry.startswith("MIG-"):
        for gpu in gpus:
            for mig in gpu.mig_devices:
                if mig.uuid == entry:
                    return gpu.index, mig.uuid
        return None
    if entry.startswith("GPU-"):
        # CUDA accepts any unique prefix of a GPU UUID.
        matches = [g for g in gpus if g.uuid and g.uuid.startswith(entry)]
        return (matches[0].index, None) if len(matches) == 1 else None
    return None


# --- Health readings for `cudabox doctor` (read with the profile, from the same handles) ------


def health(lib: Any | None = None) -> HostHealth:
    """Read what `cudabox doctor` judges. Never raises for a missing or broken driver."""
    reading = read_host(lib, with_health=True)
    assert reading.health is not None  # with_health always reads it
    return reading.health


def _read_health(session: Nvml, index: int, handle: Any, gpu: Gpu) -> GpuHealth:
    lib = session.lib
    uuid, name = gpu.uuid, gpu.name
    if gpu.error is not None:
        return GpuHealth(index=index, uuid=uuid, error=gpu.error, fix=gpu.fix)
    try:
        pci = session.optional(lib.nvmlDeviceGetPciInfo, handle)
        persistence = session.optional(lib.nvmlDeviceGetPersistenceMode, handle)
        ecc = session.optional(lib.nvmlDeviceGetEccMode, handle)
        ecc_on = ecc is not None and int(ecc[0]) == 1
        ecc_volatile = ecc_aggregate = None
        if ecc_on:
            uncorrected = getattr(lib, "NVML_MEMORY_ERROR_TYPE_UNCORRECTED", 1)
            ecc_volatile = session.optional(
                lib.nvmlDeviceGetTotalEccErrors,
                handle,
                uncorrected,
                getattr(lib, "NVML_VOLATILE_ECC", 0),
            )
            ecc_aggregate = session.optional(
                lib.nvmlDeviceGetTotalEccErrors,
                handle,
                uncorrected,
                getattr(lib, "NVML_AGGREGATE_ECC", 1),
            )
        sbe = dbe = pages_pending = None
        remap = None
        if ecc_on:
            # Ampere and newer remap rows instead of retiring pages; older GPUs retire pages.
            remap = session.optional(lib.nvmlDeviceGetRemappedRows, handle)
            if remap is None:
                sbe_pages = session.optional(lib.nvmlDeviceGetRetiredPages, handle, 0)
                dbe_pages = session.optional(lib.nvmlDeviceGetRetiredPages, handle, 1)
                sbe = len(sbe_pages) if sbe_pages is not None else None
                dbe = len(dbe_pages) if dbe_pages is not None else None
                pending = session.optional(lib.nvmlDeviceGetRetiredPagesPendingStatus, handle)
                pages_pending = None if pending is None else int(pending) == 1
        reasons = _clock_reasons(session, handle)
        mig = session.optional(lib.nvmlDeviceGetMigMode, handle)
        return GpuHealth(
            index=index,
            uuid=uuid,
            name=name,
            pci_device_id=f"0x{int(pci.pciDeviceId):08X}" if pci is not None else None,
            pci_bus_id=_text(pci.busId) if pci is not None else None,
            persistence_mode=None if persistence is None else int(persistence) == 1,
            ecc_enabled=None if ecc is None else ecc_on,
            ecc_uncorrected_volatile=_opt_count(ecc_volatile),
            ecc_uncorrected_aggregate=_opt_count(ecc_aggregate),
            retired_pages_sbe=sbe,
            retired_pages_dbe=dbe,
            retired_pages_pending=pages_pending,
            remapped_rows_correctable=int(remap[0]) if remap is not None else None,
            remapped_rows_uncorrectable=int(remap[1]) if remap is not None else None,
            remap_pending=bool(remap[2]) if remap is not None else None,
            remap_failure=bool(remap[3]) if remap is not None else None,
            clock_event_reasons=reasons,
            pcie_gen_current=_opt_count(
                session.optional(lib.nvmlDeviceGetCurrPcieLinkGeneration, handle)
            ),
            pcie_gen_max=_opt_count(
                session.optional(lib.nvmlDeviceGetMaxPcieLinkGeneration, handle)
            ),
            pcie_gen_gpu_max=_opt_count(
                session.optional("nvmlDeviceGetGpuMaxPcieLinkGeneration", handle)
            ),
            pcie_width_current=_opt_count(
                session.optional(lib.nvmlDeviceGetCurrPcieLinkWidth, handle)
            ),
            pcie_width_max=_opt_count(session.optional(lib.nvmlDeviceGetMaxPcieLinkWidth, handle)),
            mig_current=int(mig[0]) if mig is not None else None,
            mig_pending=int(mig[1]) if mig is not None else None,
            **_hardware(session, handle),
        )
    except NvmlFailure as exc:
        return GpuHealth(index=index, uuid=uuid, name=name, error=exc.diagnosis, fix=exc.fix)


def _soft(session: Nvml, fn: Callable[..., T] | str, *args: Any) -> T | None:
    """`optional`, and None too where the driver refuses or cannot say (no permission in a VM,
    an unknown error): these readings came later than the others, and a GPU that answers the
    older ones must not turn unreadable over one of them. A lost GPU still raises."""
    try:
        return session.optional(fn, *args)
    except NvmlFailure as exc:
        if exc.code == GPU_IS_LOST:
            raise
        return None


def _hardware(session: Nvml, handle: Any) -> dict[str, Any]:
    """The hardware-fault readings: fabric, recovery action, NVLink, PCIe replays, sensors."""
    lib = session.lib
    vbios = _soft(session, "nvmlDeviceGetVbiosVersion", handle)
    limit_mw = _soft(session, "nvmlDeviceGetEnforcedPowerLimit", handle)
    if limit_mw is None:
        limit_mw = _soft(session, "nvmlDeviceGetPowerManagementLimit", handle)
    power_mw = _soft(session, "nvmlDeviceGetPowerUsage", handle)
    fabric_state, fabric_status = _fabric(session, handle)
    action = _field_int(session, handle, "NVML_FI_DEV_GET_GPU_RECOVERY_ACTION")
    active, total = _nvlinks(session, handle)
    sm = getattr(lib, "NVML_CLOCK_SM", 1)
    return {
        "vbios_version": _text(vbios) if vbios is not None else None,
        "power_limit_w": int(limit_mw) / 1000 if limit_mw is not None else None,
        "fabric_state": fabric_state,
        "fabric_status": fabric_status,
        # An action newer than this table is still an action: "unknown" fails, never passes.
        "recovery_action": None if action is None else RECOVERY_ACTIONS.get(action, "unknown"),
        "nvlink_active": active,
        "nvlink_total": total,
        "pcie_replay_count": _opt_count(_soft(session, "nvmlDeviceGetPcieReplayCounter", handle)),
        "temperature_c": _opt_count(
            _soft(session, "nvmlDeviceGetTemperature", handle, _temperature_gpu(lib))
        ),
        "sm_clock_mhz": _opt_count(_soft(session, "nvmlDeviceGetClockInfo", handle, sm)),
        "max_sm_clock_mhz": _opt_count(_soft(session, "nvmlDeviceGetMaxClockInfo", handle, sm)),
        "power_w": int(power_mw) / 1000 if power_mw is not None else None,
    }


def _temperature_gpu(lib: Any) -> int:
    return int(getattr(lib, "NVML_TEMPERATURE_GPU", 0))


def _fabric(session: Nvml, handle: Any) -> tuple[str | None, str | None]:
    """(state, error text) of the GPU's registration with the NVSwitch fabric manager."""
    lib = session.lib
    struct = getattr(lib, "c_nvmlGpuFabricInfo_t", None)
    if struct is None:
        return None, None  # a binding older than the fabric API
    import ctypes  # here, not at the top: `cudabox probe` starts faster without it

    info = struct()
    if _soft(session, "nvmlDeviceGetGpuFabricInfo", handle, ctypes.byref(info)) is None:
        return None, None
    state = int(info.state)
    name = FABRIC_STATES[state] if 0 <= state < len(FABRIC_STATES) else None
    status = int(info.status)
    # The registration's own result is only meaningful once it completed.
    failed = name == "completed" and status != 0
    return name, str(lib.NVMLError(status)) if failed else None


def _field_int(session: Nvml, handle: Any, field_name: str) -> int | None:
    """One integer field of nvmlDeviceGetFieldValues; None when the driver does not know it."""
    lib = session.lib
    field_id = getattr(lib, field_name, None)
    if field_id is None:
        return None  # the binding predates the field
    values = _soft(session, "nvmlDeviceGetFieldValues", handle, [field_id])
    if not values:
        return None
    value = values[0]
    if int(value.nvmlReturn) != 0:  # each field has its own result; NOT_SUPPORTED is common
        return None
    kind = int(value.valueType)
    member = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal"}.get(
        kind, "usVal"
    )
    return int(getattr(value.value, member))


def _nvlinks(session: Nvml, handle: Any) -> tuple[int | None, int | None]:
    """(active, total) NVLink links; (0, 0) for a GPU without NVLink, None when not reported."""
    lib = session.lib
    count = _field_int(session, handle, "NVML_FI_DEV_NVLINK_LINK_COUNT")
    links = range(count) if count is not None else range(getattr(lib, "NVML_NVLINK_MAX_LINKS", 18))
    active = answered = 0
    for link in links:
        try:
            state = session.optional("nvmlDeviceGetNvLinkState", handle, link)
        except NvmlFailure as exc:
            if exc.code == GPU_IS_LOST:
                raise
            break  # INVALID_ARGUMENT: past the GPU's last link
        if state is None:
            if count is None:
                break  # without a link count, the first unsupported link ends the list
            continue
        answered += 1
        active += int(int(state) == 1)
    if count is None:
        return (active, answered) if answered else (None, None)
    return active, count


def _clock_reasons(session: Nvml, handle: Any) -> int | None:
    # The "event reasons" call replaced the "throttle reasons" one (same bits) in newer drivers.
    value = session.optional("nvmlDeviceGetCurrentClocksEventReasons", handle)
    if value is None:
        value = session.optional("nvmlDeviceGetCurrentClocksThrottleReasons", handle)
    return _opt_count(value)


def _opt_count(value: Any) -> int | None:
    return None if value is None else int(value)


# --- Xid events and sensor samples while the doctor's load runs --------------------------------


class XidWatch:
    """Collects NVML's Xid events (nvmlEventTypeXidCriticalError) while its block runs.

    `with XidWatch(lib) as watch: ...; watch.events`. Never raises for a host that cannot watch
    (no driver, a driver or GPU without Xid events): `supported` is then False and `reason` says
    why. A thread waits on the event set, so the block itself runs undisturbed.
    """

    def __init__(self, lib: Any | None = None, poll_ms: int = 200) -> None:
        self._lib = lib
        self._poll_ms = poll_ms
        self._session: Nvml | None = None
        self._event_set: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._events: list[XidEvent] = []
        self.supported = False
        self.reason: str | None = "the watch has not started"
        self.watched: tuple[int, ...] = ()  # the GPU indexes whose Xid events are registered

    @property
    def events(self) -> tuple[XidEvent, ...]:
        with self._lock:
            return tuple(self._events)

    def __enter__(self) -> XidWatch:
        try:
            session = Nvml(self._lib if self._lib is not None else load_pynvml())
            session.__enter__()
        except NvmlFailure as exc:
            self.reason = f"NVML cannot start: {exc.diagnosis}"
            return self
        self._session = session
        lib = session.lib
        kind = getattr(lib, "nvmlEventTypeXidCriticalError", 0x8)
        try:
            self._event_set = session.call(lib.nvmlEventSetCreate)
            watched = []
            for index in range(int(session.call(lib.nvmlDeviceGetCount))):
                try:
                    handle = session.call(lib.nvmlDeviceGetHandleByIndex, index)
                    session.call(lib.nvmlDeviceRegisterEvents, handle, kind, self._event_set)
                except NvmlFailure:
                    continue  # this GPU cannot report events (or is lost); watch the others
                watched.append(index)
        except NvmlFailure as exc:
            self.reason = f"NVML events are not available: {exc.diagnosis}"
            self._close()
            return self
        if not watched:
            self.reason = "the driver reports no Xid events for these GPUs"
            self._close()
            return self
        self.watched = tuple(watched)
        self.supported, self.reason = True, None
        self._thread = threading.Thread(target=self._wait, name="xid-watch", daemon=True)
        self._thread.start()
        return self

    def _wait(self) -> None:
        while not self._stop.is_set():
            if not self._receive(self._poll_ms):
                return

    def _receive(self, timeout_ms: int) -> bool:
        """Take one event (or time out); False when waiting cannot go on."""
        assert self._session is not None
        lib = self._session.lib
        try:
            data = lib.nvmlEventSetWait_v2(self._event_set, timeout_ms)
        except lib.NVMLError as exc:
            code = getattr(exc, "value", None)
            if code == TIMEOUT:
                return True
            if code == GPU_IS_LOST:
                # A lost GPU surfaces here, often right after its Xid 79; keep waiting for the others.
                return True
            self.reason = f"waiting for Xid events stopped: {diagnose(code, str(exc))[0]}"
            return False
        index: int | None
        try:
            index = int(lib.nvmlDeviceGetIndex(data.device))
        except lib.NVMLError:
            index = None
        with self._lock:
            self._events.append(XidEvent(index, int(data.eventData), time.time()))
        return True

    def _close(self) -> None:
        if self._session is None:
            return
        lib = self._session.lib
        if self._event_set is not None:
            with contextlib.suppress(lib.NVMLError):
                lib.nvmlEventSetFree(self._event_set)
            self._event_set = None
        self._session.__exit__()
        self._session = None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            # What arrived between the thread's last wait and now.
            while self._event_set is not None and self._receive_pending():
                pass
        self._close()

    def _receive_pending(self) -> bool:
        before = len(self._events)
        self._receive(0)
        return len(self._events) > before


def sample_gpus(
    lib: Any | None,
    seconds: float,
    interval: float = 1.0,
    stop: threading.Event | None = None,
) -> list[GpuSample]:
    """Read every GPU's temperature, SM clock, power and clock reasons each `interval` seconds.

    Runs for `seconds` (or until `stop` is set), the first round at t=0; meant for a thread
    beside the load. Never raises: no driver gives no samples, an unreadable sensor None.
    """
    stop = stop or threading.Event()
    samples: list[GpuSample] = []
    try:
        session = Nvml(lib if lib is not None else load_pynvml())
        with session:
            lib = session.lib
            handles = []
            for index in range(int(session.call(lib.nvmlDeviceGetCount))):
                with contextlib.suppress(NvmlFailure):
                    handles.append((index, session.call(lib.nvmlDeviceGetHandleByIndex, index)))
            started = time.monotonic()
            rounds = 0
            while True:
                t = round(time.monotonic() - started, 3)
                samples.extend(_sample(session, index, handle, t) for index, handle in handles)
                rounds += 1
                next_at = rounds * interval
                if next_at > seconds:
                    break
                if stop.wait(max(0.0, next_at - (time.monotonic() - started))):
                    break
    except NvmlFailure:
        pass  # no driver, or it went away: what was sampled so far stands
    return samples


def _sample(session: Nvml, index: int, handle: Any, t: float) -> GpuSample:
    """One GPU's sensors; a sensor that fails reads None, so a GPU lost mid-burn leaves a gap
    in its own curve (its Xid and the readings after the load say why) and not in the others'."""
    lib = session.lib

    def read(fn: str, *args: Any) -> int | None:
        try:
            return _opt_count(session.optional(fn, handle, *args))
        except NvmlFailure:
            return None

    try:
        reasons = _clock_reasons(session, handle)
    except NvmlFailure:
        reasons = None
    power = read("nvmlDeviceGetPowerUsage")
    return GpuSample(
        index=index,
        t=t,
        temperature_c=read("nvmlDeviceGetTemperature", _temperature_gpu(lib)),
        sm_clock_mhz=read("nvmlDeviceGetClockInfo", getattr(lib, "NVML_CLOCK_SM", 1)),
        power_w=power / 1000 if power is not None else None,
        clock_event_reasons=reasons,
    )
