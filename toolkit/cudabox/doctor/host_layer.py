"""Layer 1, the host: judge NVML's health readings. Pure functions of the readings below.

The readings come from `cudabox.nvml.health()`, the PCI bus (sysfs), /proc and the kernel log;
tests feed fake ones. docs/doctor.md explains each rule; the limits and the Xid catalog are
sourced data (data/health_limits.toml, data/xid.toml).
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cudabox.doctor.health_data import HealthLimits, XidInfo, load_limits, load_xids
from cudabox.doctor.model import Check, Status, XidRecord, check
from cudabox.health import GpuHealth, HostHealth
from cudabox.host import HostProfile
from cudabox.nvml import LIB_RM_VERSION_MISMATCH, XidWatch

LAYER = "host"

# nvmlClocksEventReason* bits (nvml.h; the same bits as the older ThrottleReason names).
GPU_IDLE = 0x1
APPLICATIONS_CLOCKS = 0x2
SW_POWER_CAP = 0x4
HW_SLOWDOWN = 0x8
SYNC_BOOST = 0x10
SW_THERMAL = 0x20
HW_THERMAL = 0x40
HW_POWER_BRAKE = 0x80
DISPLAY_CLOCKS = 0x100

# Reasons that mean the hardware is protecting itself: clocks are cut hard, training crawls.
_FAILING_REASONS = {
    HW_SLOWDOWN: (
        "HW slowdown",
        "the GPU asserted hardware slowdown (over temperature or a power-supply signal): check cooling, "
        "fans and the GPU power cables; `nvidia-smi -q -d PERFORMANCE,TEMPERATURE,POWER` shows which",
    ),
    HW_THERMAL: (
        "HW thermal slowdown",
        "the GPU is too hot and the hardware cut its clocks: check airflow, fans, heatsink contact "
        "and the inlet temperature (`nvidia-smi -q -d TEMPERATURE`)",
    ),
    HW_POWER_BRAKE: (
        "HW power brake",
        "the system asserted the external power-brake signal: check the power supply's capacity "
        "and the GPU power cables, and the BMC log for power events",
    ),
}
_WARNING_REASONS = {
    SW_THERMAL: (
        "SW thermal slowdown",
        "the driver lowered clocks to stay under the GPU's temperature target: improve airflow "
        "(`nvidia-smi -q -d TEMPERATURE` shows the target)",
    ),
}
_HARMLESS_REASONS = {
    GPU_IDLE: "idle",
    APPLICATIONS_CLOCKS: "application clocks",
    SW_POWER_CAP: "SW power cap",
    SYNC_BOOST: "sync boost",
    DISPLAY_CLOCKS: "display clocks",
}


@dataclass(frozen=True)
class HostReadings:
    """Everything the host layer judges, read at one moment."""

    health: HostHealth
    profile: HostProfile
    pci_gpus: tuple[str, ...] | None = None  # NVIDIA display-class PCI functions; None: unreadable
    kernel_module: str | None = None  # version from /proc/driver/nvidia/version


def read_pci_gpus(root: Path = Path("/sys/bus/pci/devices")) -> tuple[str, ...] | None:
    """Bus ids of NVIDIA GPUs on the PCI bus (vendor 0x10de, class 0x03xxxx), driver or not."""
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return None
    found = []
    for entry in entries:
        try:
            vendor = (entry / "vendor").read_text().strip().lower()
            klass = (entry / "class").read_text().strip().lower()
        except OSError:
            continue
        if vendor == "0x10de" and klass.startswith("0x03"):
            found.append(entry.name)
    return tuple(found)


def read_kernel_module(path: Path = Path("/proc/driver/nvidia/version")) -> str | None:
    """The loaded kernel module's version: 'NVRM version: NVIDIA UNIX ... Kernel Module  580.95.05 ...'."""
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("NVRM version:"):
            for word in line.split():
                if word[:1].isdigit() and "." in word:
                    return word
    return None


def host_checks(readings: HostReadings) -> list[Check]:
    health = readings.health
    checks = [_driver_loaded(readings), _driver_library(readings)]
    if health.status != "ok":
        checks.append(
            check(
                "host.gpus_enumerated",
                LAYER,
                "skip",
                "no GPU can be listed without a working driver",
            )
        )
        return checks
    checks.append(_enumerated(readings))
    readable = [g for g in health.gpus if g.error is None]
    for gpu in readable:
        # host.gpus_enumerated already fails for an unreadable GPU, with its own fix.
        checks.extend(gpu_checks(gpu, readings.profile, readable, health.driver_version))
    return checks


def _driver_loaded(r: HostReadings) -> Check:
    cid = "host.driver_loaded"
    h = r.health
    if h.status == "ok":
        return check(
            cid, LAYER, "pass", f"NVIDIA driver {h.driver_version} answers", h.driver_version
        )
    if h.code == LIB_RM_VERSION_MISMATCH:
        return check(
            cid,
            LAYER,
            "pass",
            "the kernel module is loaded (NVML cannot use it: see host.driver_library)",
            r.kernel_module,
        )
    if h.status == "no-driver" and not r.pci_gpus:
        return check(
            cid, LAYER, "skip", f"no GPU: {h.message}; no NVIDIA GPU on the PCI bus either"
        )
    on_bus = f"; {len(r.pci_gpus)} NVIDIA GPU(s) on the PCI bus" if r.pci_gpus else ""
    return check(cid, LAYER, "fail", f"{h.message}{on_bus}", fix=h.fix)


def _driver_library(r: HostReadings) -> Check:
    cid = "host.driver_library"
    h = r.health
    if h.code == LIB_RM_VERSION_MISMATCH:
        module = f" (kernel module {r.kernel_module})" if r.kernel_module else ""
        return check(cid, LAYER, "fail", f"{h.message}{module}", r.kernel_module, fix=h.fix)
    if h.status != "ok" or h.driver_version is None:
        return check(cid, LAYER, "skip", "no driver to compare against")
    driver = h.driver_version
    # NVML's own version is "<CUDA major>.<driver version>", e.g. 12.580.95.05.
    library = h.nvml_version.split(".", 1)[1] if h.nvml_version and "." in h.nvml_version else None
    for name, other in (("NVML library", library), ("kernel module", r.kernel_module)):
        if other is not None and other != driver:
            return check(
                cid,
                LAYER,
                "fail",
                f"the {name} is {other} but the driver reports {driver}: "
                "parts of two driver installs are in use (usually an upgrade without a reboot)",
                other,
                driver,
                fix="reload the NVIDIA kernel modules (stop GPU processes, `rmmod nvidia_uvm nvidia_drm "
                "nvidia_modeset nvidia`, `modprobe nvidia`) or reboot",
            )
    return check(cid, LAYER, "pass", f"library and kernel module agree on {driver}", driver, driver)


def _enumerated(r: HostReadings) -> Check:
    cid = "host.gpus_enumerated"
    h = r.health
    count = h.device_count or 0
    readable = [g for g in h.gpus if g.error is None]
    broken = [g for g in h.gpus if g.error is not None]
    on_bus = len(r.pci_gpus) if r.pci_gpus else 0
    expected = max(count, on_bus)
    if broken:
        first = broken[0]
        return check(
            cid,
            LAYER,
            "fail",
            f"{len(readable)} of {count} GPUs answer; GPU {first.index}: {first.error}",
            len(readable),
            expected,
            unit="GPUs",
            fix=first.fix,
        )
    if on_bus > count:
        return check(
            cid,
            LAYER,
            "fail",
            f"{on_bus} NVIDIA GPUs are on the PCI bus but the driver initialised {count}",
            count,
            on_bus,
            unit="GPUs",
            fix="`dmesg | grep -iE 'NVRM|Xid'` says why a GPU failed to initialise (RmInitAdapter failed: "
            "power, seating or a GPU fallen off the bus); reseat it or reboot",
        )
    if count == 0:
        return check(
            cid, LAYER, "skip", "no GPU: the driver is loaded but reports no GPU", 0, 0, unit="GPUs"
        )
    return check(
        cid, LAYER, "pass", f"{count} GPU(s) enumerated and readable", count, expected, unit="GPUs"
    )


def gpu_checks(
    gpu: GpuHealth,
    profile: HostProfile,
    peers: Sequence[GpuHealth] = (),
    driver: str | None = None,
    limits: HealthLimits | None = None,
) -> list[Check]:
    """One GPU's checks; `peers` are the node's readable GPUs (NVLink compares siblings)."""
    limits = limits or load_limits()
    return [
        _persistence(gpu),
        _ecc(gpu),
        _retired_memory(gpu, limits),
        _clocks(gpu),
        _pcie_link(gpu),
        _mig(gpu, profile),
        _fabric(gpu, driver),
        _recovery_action(gpu),
        _pcie_replay(gpu),
        _nvlink(gpu, peers),
    ]


def _persistence(g: GpuHealth) -> Check:
    cid = f"host.persistence.gpu{g.index}"
    if g.persistence_mode is None:
        return check(cid, LAYER, "skip", "persistence mode is not reported for this GPU")
    if g.persistence_mode:
        return check(cid, LAYER, "pass", "persistence mode is on", "on", "on")
    return check(
        cid,
        LAYER,
        "warn",
        "persistence mode is off: the driver tears the GPU down between jobs, so every CUDA start "
        "pays seconds of initialisation and settings can reset",
        "off",
        "on",
        fix="run the persistence daemon (`systemctl enable --now nvidia-persistenced`) or "
        f"`sudo nvidia-smi -i {g.index} -pm 1`",
    )


def _ecc(g: GpuHealth) -> Check:
    cid = f"host.ecc.gpu{g.index}"
    if g.ecc_enabled is None:
        return check(cid, LAYER, "skip", "this GPU has no ECC memory")
    if not g.ecc_enabled:
        return check(cid, LAYER, "pass", "ECC is off: memory errors go undetected", "off")
    volatile = g.ecc_uncorrected_volatile
    aggregate = g.ecc_uncorrected_aggregate
    if volatile:
        return check(
            cid,
            LAYER,
            "fail",
            f"{volatile} uncorrectable ECC error(s) since the driver loaded: the job that hit them "
            "crashed, and the GPU may keep failing",
            volatile,
            0,
            unit="errors",
            fix=f"drain GPU {g.index}, reset it (`nvidia-smi -r -i {g.index}`) or reboot, then run "
            "`dcgmi diag -r 3`; if errors come back, have the GPU replaced (RMA)",
        )
    if aggregate:
        return check(
            cid,
            LAYER,
            "warn",
            f"{aggregate} uncorrectable ECC error(s) over the GPU's life, none since the driver loaded",
            aggregate,
            0,
            unit="errors",
            fix="watch it: if the count grows, run `dcgmi diag -r 3` and have the GPU replaced",
        )
    if volatile is None and aggregate is None:
        return check(cid, LAYER, "skip", "ECC is on but the error counters are not reported")
    return check(cid, LAYER, "pass", "ECC is on; no uncorrectable errors", 0, 0, unit="errors")


def _retired_memory(g: GpuHealth, limits: HealthLimits) -> Check:
    cid = f"host.retired_memory.gpu{g.index}"
    reset = (
        f"reset GPU {g.index} (`nvidia-smi -r -i {g.index}`, with no process using it) or reboot"
    )
    replace_it = f"drain GPU {g.index}, run `dcgmi diag -r 3` and have the GPU replaced (RMA)"
    if g.remap_failure is not None:
        rows = (g.remapped_rows_correctable or 0) + (g.remapped_rows_uncorrectable or 0)
        if g.remap_failure:
            return check(
                cid,
                LAYER,
                "fail",
                "row remapping failed: the GPU has no spare memory rows left for a failing row",
                rows,
                None,
                unit="rows",
                fix="take the GPU out of service, run `dcgmi diag -r 3` and have it replaced (RMA)",
            )
        if g.remap_pending:
            return check(
                cid,
                LAYER,
                "fail",
                "a row remap is pending: a failing memory row stays in use until the GPU is reset",
                rows,
                None,
                unit="rows",
                fix=reset,
            )
        if rows >= limits.remapped_rows_fail:
            return check(
                cid,
                LAYER,
                "fail",
                f"{rows} memory rows remapped, at or over the limit of {limits.remapped_rows_fail}: "
                "the GPU's memory is failing",
                rows,
                limits.remapped_rows_fail,
                unit="rows",
                fix=replace_it,
            )
        return check(
            cid,
            LAYER,
            "pass",
            f"{rows} row(s) remapped, none pending",
            rows,
            limits.remapped_rows_fail,
            unit="rows",
        )
    if g.retired_pages_pending is not None or g.retired_pages_dbe is not None:
        pages = (g.retired_pages_sbe or 0) + (g.retired_pages_dbe or 0)
        if g.retired_pages_pending:
            return check(
                cid,
                LAYER,
                "fail",
                "a page retirement is pending: a failing memory page stays in use until the driver reloads",
                pages,
                None,
                unit="pages",
                fix=reset,
            )
        if pages >= limits.retired_pages_fail:
            return check(
                cid,
                LAYER,
                "fail",
                f"{pages} memory pages retired, at or over DCGM's limit of {limits.retired_pages_fail}",
                pages,
                limits.retired_pages_fail,
                unit="pages",
                fix=replace_it,
            )
        if pages >= limits.retired_pages_warn:
            return check(
                cid,
                LAYER,
                "warn",
                f"{pages} memory pages retired: the GPU's memory is degrading",
                pages,
                limits.retired_pages_warn,
                unit="pages",
                fix="run `dcgmi diag -r 3`; plan to replace the GPU if the count keeps growing",
            )
        return check(
            cid,
            LAYER,
            "pass",
            f"{pages} page(s) retired, none pending",
            pages,
            limits.retired_pages_fail,
            unit="pages",
        )
    return check(cid, LAYER, "skip", "no page retirement or row remapping on this GPU (no ECC)")


def reason_names(mask: int) -> list[str]:
    table = {
        **{b: n for b, (n, _) in _FAILING_REASONS.items()},
        **{b: n for b, (n, _) in _WARNING_REASONS.items()},
    }
    table.update(_HARMLESS_REASONS)
    names = [name for bit, name in sorted(table.items()) if mask & bit]
    unknown = mask & ~sum(table)
    if unknown:
        names.append(f"other (0x{unknown:x})")
    return names


def _clocks(g: GpuHealth) -> Check:
    cid = f"host.clocks.gpu{g.index}"
    mask = g.clock_event_reasons
    if mask is None:
        return check(cid, LAYER, "skip", "clock event reasons are not reported for this GPU")
    value = ", ".join(reason_names(mask)) or "none"
    for bits, status in ((_FAILING_REASONS, "fail"), (_WARNING_REASONS, "warn")):
        hits = [(n, f) for b, (n, f) in bits.items() if mask & b]
        if hits:
            names = ", ".join(n for n, _ in hits)
            return check(
                cid,
                LAYER,
                status,  # type: ignore[arg-type]  # "fail" or "warn"
                f"clocks are held down by {names}",
                value,
                "no hardware or thermal slowdown",
                fix="; ".join(f for _, f in hits),
            )
    return check(cid, LAYER, "pass", f"clock reasons: {value} (none of them a slowdown)", value)


def _pcie_link(g: GpuHealth) -> Check:
    cid = f"host.pcie_link.gpu{g.index}"
    gen, gen_max, width, width_max = (
        g.pcie_gen_current,
        g.pcie_gen_max,
        g.pcie_width_current,
        g.pcie_width_max,
    )
    if None in (gen, gen_max, width, width_max):
        return check(
            cid, LAYER, "skip", "the PCIe link is not reported (an SXM or virtualised GPU?)"
        )
    assert gen is not None and gen_max is not None and width is not None and width_max is not None
    value = f"Gen{gen} x{width}"
    expected = f"Gen{gen_max} x{width_max}"
    reseat = (
        f"check `lspci -vv -s {g.pci_bus_id or 'BUS'} | grep -E 'LnkCap|LnkSta'`; reseat the GPU, "
        "check the riser and cables, and the slot's PCIe setting in the BIOS"
    )
    # Width is not a power state on NVIDIA GPUs: fewer lanes than the link can do is a fault.
    if width < width_max:
        return check(
            cid,
            LAYER,
            "fail",
            f"the link trained at x{width} of x{width_max}: host-to-device copies run at a fraction of their speed",
            value,
            expected,
            fix=reseat,
        )
    gpu_max = g.pcie_gen_gpu_max
    slot_note = ""
    if gpu_max is not None and gen_max < gpu_max:
        slot_note = f"; the slot limits the link to Gen{gen_max} (the GPU can do Gen{gpu_max})"
    if gen < gen_max:
        idle = g.clock_event_reasons is not None and bool(g.clock_event_reasons & GPU_IDLE)
        if idle:
            # GPUs drop the link's speed at idle to save power and raise it under load.
            status: Status = "warn" if slot_note else "pass"
            return check(
                cid,
                LAYER,
                status,
                f"Gen{gen} at idle (power saving), up to Gen{gen_max} under load{slot_note}",
                value,
                expected,
                fix=_slot_fix(gpu_max),
            )
        return check(
            cid,
            LAYER,
            "warn",
            f"the link runs at Gen{gen} of Gen{gen_max} while the GPU is not idle{slot_note}; "
            "perf.h2d_bandwidth measures it under load",
            value,
            expected,
            fix=f"if host-to-device bandwidth is low too: {reseat}",
        )
    if slot_note:
        return check(
            cid, LAYER, "warn", f"{value}{slot_note}", value, expected, fix=_slot_fix(gpu_max)
        )
    return check(cid, LAYER, "pass", f"{value}, the most the link can do", value, expected)


def _slot_fix(gpu_max: int | None) -> str:
    return f"move the GPU to a Gen{gpu_max} slot, or set the slot's PCIe speed to Auto/Gen{gpu_max} in the BIOS"


def _mig(g: GpuHealth, profile: HostProfile) -> Check:
    cid = f"host.mig.gpu{g.index}"
    if g.mig_current is None:
        return check(cid, LAYER, "skip", "MIG is not supported on this GPU")
    on = g.mig_current == 1
    value = "on" if on else "off"
    if g.mig_pending is not None and g.mig_pending != g.mig_current:
        want = "on" if g.mig_pending == 1 else "off"
        return check(
            cid,
            LAYER,
            "warn",
            f"MIG is {value} but a change to {want} is pending until the GPU resets",
            value,
            want,
            fix=f"reset GPU {g.index} (`nvidia-smi -r -i {g.index}`) or reboot to apply it, or set it back",
        )
    if not on:
        return check(cid, LAYER, "pass", "MIG is off: CUDA sees the whole GPU", value)
    gpu = next((p for p in profile.gpus if p.index == g.index), None)
    instances = len(gpu.mig_devices) if gpu is not None else 0
    if instances == 0:
        return check(
            cid,
            LAYER,
            "fail",
            "MIG is on but no GPU instance exists: CUDA sees no device on this GPU",
            value,
            fix=f"create instances (`nvidia-smi mig -i {g.index} -cgi <profiles> -C`) or turn MIG off "
            f"(`nvidia-smi -i {g.index} -mig 0` and a reset)",
        )
    return check(
        cid,
        LAYER,
        "pass",
        f"MIG is on with {instances} instance(s); CUDA sees each instance as a device",
        value,
    )


def _fabric(g: GpuHealth, driver: str | None) -> Check:
    cid = f"host.fabric.gpu{g.index}"
    state = g.fabric_state
    if state is None or state == "not_supported":
        return check(cid, LAYER, "skip", "this GPU has no NVSwitch fabric to join")
    version = f" ({driver})" if driver else ""
    fix = (
        f"start the NVIDIA fabric manager of the same version as the driver{version}: "
        "`systemctl enable --now nvidia-fabricmanager` (the nvidia-fabricmanager package of the "
        "driver's exact version); `journalctl -u nvidia-fabricmanager` says why it stopped, "
        "`nvidia-smi -q | grep -A2 Fabric` shows each GPU's state"
    )
    if state == "completed" and g.fabric_status is None:
        return check(cid, LAYER, "pass", "the GPU joined the NVSwitch fabric", state, "completed")
    if state == "completed":
        return check(
            cid,
            LAYER,
            "fail",
            f"the GPU's registration with the NVSwitch fabric failed: {g.fabric_status}; CUDA "
            "fails on it with error 802 'system not yet initialized'",
            "failed",
            "completed",
            fix=fix,
        )
    words = "has not started" if state == "not_started" else "is still in progress"
    return check(
        cid,
        LAYER,
        "fail",
        f"the GPU's registration with the NVSwitch fabric {words}: NVML lists the GPU but CUDA "
        "fails with error 802 'system not yet initialized' until the fabric manager registers it",
        state,
        "completed",
        fix=fix,
    )


_RECOVERY = {
    "reset": "the driver asks for a GPU reset",
    "reboot": "the driver asks for a reboot of the node",
    "drain": "the driver asks to drain peer-to-peer (NVLink) traffic from the GPU",
    "drain_and_reset": "the driver asks to drain peer-to-peer traffic, then reset the GPU",
    "recover_imex_domain": "the driver asks to recover the GPU's IMEX domain",
    "bus_reset": "the driver asks for a reset of the GPU's PCIe bus",
    "system_reboot": "the driver asks for a reboot of the system",
}


def _recovery_fix(action: str, index: int) -> str:
    reset = f"reset it (`nvidia-smi -r -i {index}`, with no process using it)"
    return {
        "reset": f"drain GPU {index}, then {reset}",
        "reboot": "drain the node's jobs, then reboot it",
        "drain": f"stop the jobs using GPU {index} and its NVLink peers; then rerun the doctor",
        "drain_and_reset": f"stop the jobs using GPU {index} and its NVLink peers, then {reset}",
        "recover_imex_domain": "restart the IMEX daemon of the GPU's NVLink domain "
        "(`systemctl restart nvidia-imex`), then rerun the doctor",
        "bus_reset": f"drain GPU {index}, then {reset} or reboot",
        "system_reboot": "drain the node's jobs, then reboot it (a full power cycle if a "
        "reboot does not clear it)",
    }.get(action, "do what `nvidia-smi -q` says under the GPU's recovery action")


def _recovery_action(g: GpuHealth) -> Check:
    cid = f"host.recovery_action.gpu{g.index}"
    action = g.recovery_action
    if action is None:
        return check(cid, LAYER, "skip", "the driver does not report a recovery action")
    if action == "none":
        return check(cid, LAYER, "pass", "the driver asks for no recovery action", action, "none")
    return check(
        cid,
        LAYER,
        "fail",
        f"{_RECOVERY.get(action, f'the driver asks for recovery action {action!r}')}: the GPU "
        "is not fit for work until that is done",
        action,
        "none",
        fix=_recovery_fix(action, g.index),
    )


def _pcie_replay(g: GpuHealth) -> Check:
    cid = f"host.pcie_replay.gpu{g.index}"
    count = g.pcie_replay_count
    if count is None:
        return check(cid, LAYER, "skip", "the PCIe replay counter is not reported for this GPU")
    # The count since the driver loaded has no limit of its own: DCGM judges its rate, which
    # perf.* judges during the copies (replay_delta_check).
    return check(
        cid,
        LAYER,
        "pass",
        f"{count} PCIe replay(s) since the driver loaded; the rate under load is what counts",
        count,
        unit="replays",
    )


def replay_delta_check(
    before: int | None,
    after: int | None,
    seconds: float,
    *,
    gpu: int | None = None,
    cid: str = "perf.pcie_replay",
    layer: str = "performance",
    limits: HealthLimits | None = None,
) -> Check:
    """PCIe replays during a load of `seconds`, against DCGM's limit per minute.

    A window shorter than a minute is judged as one minute (its replays all fell within one),
    so a few replays during a short copy do not extrapolate into a failure.
    """
    limits = limits or load_limits()
    name = f"{cid}.gpu{gpu}" if gpu is not None else cid
    if before is None or after is None:
        return check(name, layer, "skip", "the PCIe replay counter is not reported for this GPU")
    if after < before:
        return check(
            name,
            layer,
            "skip",
            f"the replay counter went back from {before} to {after} (the driver reloaded or the "
            "GPU was reset during the load)",
        )
    delta = after - before
    minutes = max(seconds, 60.0) / 60.0
    allowed = limits.pcie_replays_per_minute * minutes
    rate = f"{delta} PCIe replay(s) in {seconds:.1f} s"
    if delta > allowed:
        return check(
            name,
            layer,
            "fail",
            f"{rate}, over DCGM's limit of {limits.pcie_replays_per_minute} a minute: the link "
            "retransmits packets (signal integrity), so copies slow down and can fail",
            delta,
            round(allowed, 1),
            unit="replays",
            fix="reseat the GPU and check its riser and cables; `lspci -vv` shows the link's "
            "error status; if it persists, move the GPU to another slot or have the board serviced",
        )
    return check(
        name,
        layer,
        "pass",
        f"{rate}, within DCGM's limit of {limits.pcie_replays_per_minute} a minute",
        delta,
        round(allowed, 1),
        unit="replays",
    )


def _nvlink(g: GpuHealth, peers: Sequence[GpuHealth]) -> Check:
    cid = f"host.nvlink.gpu{g.index}"
    active, total = g.nvlink_active, g.nvlink_total
    if active is None or not total:
        return check(
            cid, LAYER, "skip", "this GPU has no NVLink (or the driver does not report it)"
        )
    # Compare with siblings of the same model, not a fixed count: H100 NVL has 12 links by
    # design, H100 SXM 18, and a PCIe card may carry a bridge on some links only.
    model = g.pci_device_id or g.name
    siblings = [
        p
        for p in peers
        if p.index != g.index
        and (p.pci_device_id or p.name) == model
        and p.nvlink_active is not None
        and p.nvlink_total
    ]
    value = f"{active}/{total}"
    if not siblings:
        return check(
            cid,
            LAYER,
            "pass",
            f"{active} of {total} NVLink links active; no other GPU of this model to compare with",
            value,
        )
    best = max(p.nvlink_active or 0 for p in siblings)
    if active < best:
        return check(
            cid,
            LAYER,
            "fail",
            f"{active} of {total} NVLink links active, while its siblings of the same model have "
            f"{best}: GPU-to-GPU traffic over the missing links is lost or rerouted",
            value,
            f"{best}/{total}",
            fix=f"`nvidia-smi nvlink -s -i {g.index}` lists the inactive links and "
            f"`nvidia-smi nvlink -e -i {g.index}` their errors; reset the GPU (`nvidia-smi -r -i "
            f"{g.index}`) or reboot; a link that stays down needs the baseboard or NVLink bridge "
            "serviced",
        )
    return check(
        cid,
        LAYER,
        "pass",
        f"{active} of {total} NVLink links active, as many as its siblings of the same model",
        value,
        value,
    )


# --- Xid errors: the kernel log and NVML's events ----------------------------------------------

XID_CID = "host.xid"
# NVRM: Xid (PCI:0000:65:00): 79, pid=1234, name=python, GPU has fallen off the bus.
_XID_LINE = re.compile(r"NVRM: Xid \((?:PCI:)?([0-9A-Fa-f:.]+)\): (\d+)")


def parse_kernel_xids(
    text: str, gpus: Sequence[GpuHealth] = (), boot: float | None = None
) -> tuple[XidRecord, ...]:
    """The `NVRM: Xid` lines of kernel log text (/dev/kmsg records or `dmesg` output), each
    with the NVML index of the GPU whose PCI address it names, where one of `gpus` has it, and,
    given the `boot` time (seconds since the epoch), the time of a line stamped `[ 12.345678]`."""
    by_bus = {_bus_key(g.pci_bus_id): g.index for g in gpus if g.pci_bus_id}
    found = []
    for line in text.splitlines():
        match = _XID_LINE.search(line)
        if match:
            record = line[line.index("NVRM: Xid") :].strip()
            gpu = by_bus.get(_bus_key(match.group(1)))
            stamp = _STAMP.match(line)
            when = round(boot + float(stamp.group(1)), 3) if stamp and boot is not None else None
            found.append(XidRecord(int(match.group(2)), gpu, "kernel-log", when, record))
    return tuple(found)


_STAMP = re.compile(r"\s*\[\s*(\d+\.\d+)\]")  # seconds since boot, as dmesg prints them


def _bus_key(address: str | None) -> tuple[int, ...] | None:
    """(domain, bus, device) of '0000:65:00' (the kernel's) or '00000000:65:00.0' (NVML's)."""
    parts = (address or "").split(".")[0].split(":")
    try:
        numbers = tuple(int(p, 16) for p in parts)
    except ValueError:
        return None
    return numbers if len(numbers) == 3 else None


def read_kernel_xids(
    gpus: Sequence[GpuHealth] = (),
    kmsg: Path = Path("/dev/kmsg"),
    dmesg: Sequence[str] = ("dmesg",),
) -> tuple[tuple[XidRecord, ...], str | None]:
    """(Xid lines since boot, None) or ((), why the kernel log cannot be read).

    /dev/kmsg is read without blocking (it waits for new records otherwise); `dmesg` is the
    fallback where the device is absent, as in most containers.
    """
    reasons = []
    # Both stamp lines with the monotonic clock's seconds since boot.
    boot = time.time() - time.clock_gettime(time.CLOCK_MONOTONIC)
    try:
        return parse_kernel_xids(_read_kmsg(kmsg), gpus, boot), None
    except OSError as exc:
        reasons.append(f"{kmsg}: {exc.strerror or exc}")
    try:
        done = subprocess.run(list(dmesg), capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        reasons.append(f"{' '.join(dmesg)}: {getattr(exc, 'strerror', None) or exc}")
    else:
        if done.returncode == 0:
            return parse_kernel_xids(done.stdout, gpus, boot), None
        lines = done.stderr.strip().splitlines()
        reasons.append(f"{' '.join(dmesg)}: {lines[-1] if lines else f'exit {done.returncode}'}")
    return (), "the kernel log cannot be read (" + "; ".join(reasons) + ")"


def kmsg_line(record: bytes) -> str:
    """A /dev/kmsg record ("priority,sequence,microseconds,flags;message" and ` KEY=value`
    continuation lines) as dmesg prints it: "[   12.345678] message"."""
    header, _, message = record.decode(errors="replace").partition(";")
    fields = header.split(",")
    micros = int(fields[2]) if len(fields) > 2 and fields[2].isdigit() else 0
    return f"[{micros / 1e6:12.6f}] {message.splitlines()[0] if message else ''}"


def _read_kmsg(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    records = []
    try:
        while True:
            try:
                chunk = os.read(fd, 8192)  # one record per read
            except BlockingIOError:
                break  # every record so far is read
            except OSError as exc:
                if exc.errno == errno.EPIPE:
                    continue  # records were overwritten while reading: go on with the next
                raise
            if not chunk:
                break
            records.append(kmsg_line(chunk))
    finally:
        os.close(fd)
    return "\n".join(records)


def gather_xids(
    watch: XidWatch, kernel: tuple[tuple[XidRecord, ...], str | None]
) -> tuple[tuple[XidRecord, ...], tuple[str, ...]]:
    """(every Xid seen, why a source could not be read) from a closed watch and the kernel log
    (`read_kernel_xids`): what a report records and `xid_check` judges."""
    records, kernel_note = kernel
    events = tuple(XidRecord(e.xid, e.gpu_index, "nvml", e.time) for e in watch.events)
    notes = []
    if not watch.supported:
        notes.append(f"NVML's Xid events were not watched: {watch.reason}")
    elif watch.reason:
        notes.append(watch.reason)
    if kernel_note:
        notes.append(kernel_note)
    return records + events, tuple(notes)


def xid_check(
    xids: Sequence[XidRecord],
    notes: Sequence[str] = (),
    sources: int = 2,
    catalog: dict[int, XidInfo] | None = None,
) -> Check:
    """One verdict over every Xid seen: the kernel log since boot and NVML's events during the run.

    `notes` hold why a source could not be read, one each; with all `sources` unread and no
    Xid, the check is a skip.
    """
    catalog = catalog if catalog is not None else load_xids()
    if not xids:
        if len(notes) >= sources:
            return check(XID_CID, LAYER, "skip", "no source of Xids: " + "; ".join(notes))
        unread = f" ({'; '.join(notes)})" if notes else ""
        return check(XID_CID, LAYER, "pass", f"no Xid error{unread}", 0, 0, unit="Xids")
    seen: dict[int, list[XidRecord]] = {}
    for record in xids:
        seen.setdefault(record.xid, []).append(record)
    findings: list[tuple[Status, str, str]] = []
    for xid, records in seen.items():
        info = catalog.get(xid)
        gpus = sorted({r.gpu_index for r in records if r.gpu_index is not None})
        where = _xid_where(records, gpus)
        if info is None:
            findings.append(
                (
                    "fail",
                    f"Xid {xid} x{len(records)}{where}{_last(records)}: not in cudabox's catalog",
                    f"Xid {xid}: see NVIDIA's Xid catalog "
                    "(https://docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html)",
                )
            )
            continue
        fix = info.fix
        if len(gpus) == 1:  # the catalog's `N` becomes the GPU's index
            fix = re.sub(r"\bN\b", str(gpus[0]), fix).replace("gpuN", f"gpu{gpus[0]}")
        findings.append(
            (
                info.status,
                f"Xid {xid} ({info.name}) x{len(records)}{where}{_last(records)}: {info.meaning}",
                f"Xid {xid}: {fix}",
            )
        )
    findings.sort(key=lambda f: f[0] != "fail")  # failures first
    status: Status = "fail" if findings[0][0] == "fail" else "warn"
    return check(
        XID_CID,
        LAYER,
        status,
        "; ".join(message for _, message, _ in findings),
        ", ".join(str(x) for x in seen),
        "no Xid",
        fix="; ".join(fix for _, _, fix in findings),
    )


def _last(records: Sequence[XidRecord]) -> str:
    """', last at 2026-12-03 06:10:00 UTC' (old kernel-log Xids can be told from new ones)."""
    times = [r.time for r in records if r.time is not None]
    if not times:
        return ""
    when = dt.datetime.fromtimestamp(max(times), dt.UTC)
    return f", last at {when:%Y-%m-%d %H:%M:%S} UTC"


def _xid_where(records: Sequence[XidRecord], gpus: list[int]) -> str:
    parts = []
    if gpus:
        parts.append("on GPU " + ", ".join(str(g) for g in gpus))
    sources = sorted({r.source for r in records})
    parts.append(
        "in "
        + " and ".join(
            "the kernel log" if s == "kernel-log" else "NVML's events during the run"
            for s in sources
        )
    )
    return " " + " ".join(parts)
