"""Layer 5, performance: judge measured figures against data/gpu_perf.toml and the PCIe link.

Pure functions: the measurements come from gpu_checks.py (in the image or --here), the GPU's
model and link from the host layer's readings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from cudabox.doctor import host_layer
from cudabox.doctor.model import Check, Sample, Status, check
from cudabox.errors import DataError
from cudabox.health import GpuHealth, HostHealth
from cudabox.sourced import parse_table, read_data, rows_of, sources_of

LAYER = "performance"
FAIL_BELOW = 0.75  # x the expected value: datacenter diagnostics' threshold on measured rows
WARN_BELOW = 0.9
# Share of the datasheet peak a healthy card reaches in these benchmarks, for models with a peak
# row only. Measured on H100/H200 here: bf16 matmul 0.80 of peak, copy bandwidth 0.90 of peak;
# the fractions leave room for power-limited PCIe and consumer parts (docs/doctor.md).
PEAK_FRACTION = {"matmul_bf16": 0.6, "matmul_tf32": 0.6, "mem_bandwidth": 0.8}
UNITS = {
    "matmul_bf16": "TFLOP/s",
    "matmul_tf32": "TFLOP/s",
    "mem_bandwidth": "GB/s",
    "p2p_bandwidth": "GB/s",
    "nccl_busbw": "GB/s",
}
METRICS = tuple(UNITS)

# PCIe payload rate per lane, GB/s, after line encoding (8b/10b to Gen2, 128b/130b Gen3-5,
# FLIT 242/256 at Gen6).
PCIE_LANE_GBPS = {1: 0.25, 2: 0.5, 3: 0.985, 4: 1.969, 5: 3.938, 6: 7.563}
# Share of the link's payload rate a healthy pinned copy reaches, either direction (packet
# headers, flow control): 0.83, so a Gen5 x16 link is expected at 52 GB/s and fails below 39
# (docs/facts.md section 10).
H2D_FRACTION = 0.83


@dataclass(frozen=True)
class Expectation:
    value: float
    basis: str  # "measured", "reference" or "peak"
    source: str  # the row's source key
    peak: float | None = None
    floor: float | None = None  # fail below this, whatever the ratio


Key = tuple[str, str, int | None]  # (pci id, metric, GPUs in the node for node-wide metrics)


@dataclass(frozen=True)
class PerfTable:
    rows: dict[Key, dict[str, tuple[float, str]]]  # key -> kind -> (value, source)
    sources: dict[str, str]

    def expect(
        self, pci_device_id: str | None, metric: str, gpus: int | None = None
    ) -> Expectation | None:
        if pci_device_id is None:
            return None
        kinds = self.rows.get((pci_device_id.upper().replace("0X", "0x"), metric, gpus))
        if not kinds:
            return None
        peak = kinds.get("peak")
        floor = kinds["floor"][0] if "floor" in kinds else None
        for basis in ("measured", "reference"):
            if basis in kinds:
                value, source = kinds[basis]
                return Expectation(value, basis, source, peak[0] if peak else None, floor)
        if peak is None or metric not in PEAK_FRACTION:
            return None
        return Expectation(
            round(peak[0] * PEAK_FRACTION[metric], 1), "peak", peak[1], peak[0], floor
        )


_ROW_KEYS: dict[str, tuple[type, ...]] = {
    "pci_device_id": (str,),
    "name": (str,),
    "metric": (str,),
    "gpus": (int,),
    "kind": (str,),
    "value": (int, float),
    "source": (str,),
}
_OPTIONAL = ("name", "gpus")  # the model name is a comment for people; the PCI id is the key
KINDS = ("peak", "measured", "reference", "floor")
NODE_METRICS = ("nccl_busbw",)  # one figure per node, so per node size
_FIX = "reinstall cudabox; if you edited data/gpu_perf.toml, correct the row it names"


def parse_perf(data: Mapping[str, Any] | str, where: str = "gpu_perf.toml") -> PerfTable:
    """The table of gpu_perf.toml (its text, or the parsed table); any flaw is a DataError."""
    data = parse_table(data, where, _FIX, {"schema", "sources", "row"})
    if type(data.get("schema")) is not int or data.get("schema") != 1:
        raise DataError(f"{where}: 'schema' must be 1, got {data.get('schema')!r}", _FIX)
    sources = sources_of(data, where, _FIX)
    table = rows_of(data, "row", where, _FIX, required=False)
    rows: dict[Key, dict[str, tuple[float, str]]] = {}
    for n, row in enumerate(table, start=1):
        at = f"{where} row {n}"
        unknown = set(row) - set(_ROW_KEYS)
        if unknown:
            raise DataError(f"{at}: unknown key {sorted(unknown)[0]!r}", _FIX)
        for key, kinds in _ROW_KEYS.items():
            if key in _OPTIONAL and key not in row:
                continue
            if key not in row:
                raise DataError(f"{at}: missing key {key!r}", _FIX)
            if not isinstance(row[key], kinds) or isinstance(row[key], bool):
                raise DataError(f"{at}: {key!r} has the wrong type: {row[key]!r}", _FIX)
        pci, metric, kind, source = (
            row["pci_device_id"],
            row["metric"],
            row["kind"],
            row["source"],
        )
        gpus = row.get("gpus")
        value = float(row["value"])
        if not math.isfinite(value) or value <= 0:
            raise DataError(f"{at}: value must be a number above 0, got {row['value']!r}", _FIX)
        if not pci.startswith("0x") or len(pci) != 10 or not pci.upper().endswith("10DE"):
            raise DataError(f"{at}: pci_device_id {pci!r} is not of the form 0x233010DE", _FIX)
        if metric not in METRICS or kind not in KINDS:
            raise DataError(f"{at}: metric must be one of {METRICS}, kind one of {KINDS}", _FIX)
        if (gpus is not None) != (metric in NODE_METRICS) or (gpus is not None and gpus < 2):
            raise DataError(f"{at}: 'gpus' (2 or more) is given for {NODE_METRICS} only", _FIX)
        if source not in sources:  # one source per measured figure, named as it is
            raise DataError(f"{at}: source {source!r} is not in [sources]", _FIX)
        kinds_seen = rows.setdefault((pci.upper().replace("0X", "0x"), metric, gpus), {})
        if kind in kinds_seen:
            raise DataError(f"{at}: a second {kind} row for {pci} {metric}", _FIX)
        kinds_seen[kind] = (value, source)
    return PerfTable(rows, sources)


@cache
def load_perf() -> PerfTable:
    text, where = read_data("gpu_perf.toml", _FIX)
    return parse_perf(text, where)


def judge(
    measurement: Mapping[str, Any],
    gpu: GpuHealth | None,
    table: PerfTable | None = None,
    gpus: int | None = None,
) -> Check:
    """One check from one measurement (as gpu_checks.py wrote it); `gpus`: the node's count."""
    cid = str(measurement["id"])
    metric = cid.split(".")[1]
    if cid.startswith("perf.p2p."):
        metric = "p2p_bandwidth"
    elif cid == "perf.nccl_busbw":
        metric = "nccl_busbw"
    unit = str(measurement.get("unit") or UNITS.get(metric, ""))
    if measurement.get("error"):
        status: Status = "skip" if measurement.get("unsupported") else "fail"
        return check(
            cid,
            LAYER,
            status,
            str(measurement["error"]),
            unit=unit,
            fix="read the error; it came from the framework",
        )
    value = float(measurement["value"])
    if cid.startswith("mem.pattern."):
        return _judge_pattern(cid, measurement)
    if metric in LINK_METRICS:
        return _judge_link(cid, metric, value, unit, gpu)
    table = table or load_perf()
    model = gpu.name if gpu and gpu.name else "this GPU"
    pci = gpu.pci_device_id if gpu else None
    count = int(measurement.get("gpus") or gpus or 0) if metric in NODE_METRICS else None
    want = table.expect(pci, metric, count)
    if want is None:
        node = f"{count} x " if count else ""
        return check(
            cid,
            LAYER,
            "skip",
            f"measured {value:g} {unit}; no expected value for {node}{model} "
            f"({pci or 'unknown PCI id'}) in data/gpu_perf.toml, so no verdict",
            value,
            None,
            unit=unit,
        )
    if want.basis == "measured":
        basis = f"measured on a healthy {model} ({want.source})"
    elif want.basis == "reference":
        basis = f"a healthy {f'{count} x ' if count else ''}{model}'s figure ({want.source})"
    else:
        basis = (
            f"{PEAK_FRACTION.get(metric, 0):.0%} of the datasheet peak {want.peak:g} "
            "(no measured row yet)"
        )
    ratio = value / want.value
    text = f"{value:g} {unit} = {ratio:.0%} of the expected {want.value:g} ({basis})"
    fix = _slow_fix(metric)
    if want.floor is not None and value < want.floor:
        return check(
            cid,
            LAYER,
            "fail",
            f"{text}; below the floor {want.floor:g}",
            value,
            want.value,
            unit=unit,
            fix=fix,
        )
    if ratio < FAIL_BELOW and want.floor is None:
        return check(cid, LAYER, "fail", text, value, want.value, unit=unit, fix=fix)
    if ratio < WARN_BELOW:
        return check(cid, LAYER, "warn", text, value, want.value, unit=unit, fix=fix)
    return check(cid, LAYER, "pass", text, value, want.value, unit=unit)


def _slow_fix(metric: str) -> str:
    common = "look at host.clocks (throttling) and host.ecc; check that no other process uses the GPU (`nvidia-smi`)"
    if metric == "mem_bandwidth":
        return f"{common}; check the memory clock (`nvidia-smi -q -d CLOCK`)"
    if metric == "p2p_bandwidth":
        return (
            "the NVLink path between these GPUs is slow: see host.nvlink (links down), "
            "`nvidia-smi nvlink -s` and `nvidia-smi topo -m`; on NVSwitch systems host.fabric; "
            "reseat or service the board if a link stays degraded"
        )
    if metric == "nccl_busbw":
        return (
            "compare perf.p2p.* (a slow pair slows the whole ring) and host.nvlink; rerun with "
            "NCCL_DEBUG=INFO to see the transport (NVLS, P2P or SHM: SHM means no NVLink path); "
            "on NVSwitch systems check host.fabric"
        )
    return f"{common}; check the power limit (`nvidia-smi -q -d POWER`) and the SM clock under load"


# Copies over PCIe: share of the link's payload rate a healthy pinned copy reaches (packet
# headers, flow control; docs/facts.md section 10), and what both directions at once give.
LINK_METRICS = ("h2d_bandwidth", "d2h_bandwidth", "bidir_bandwidth")
BIDIR_FACTOR = 1.6  # x one direction; an estimate until a measured row replaces it


def link_expectation(
    gpu: GpuHealth | None, metric: str = "h2d_bandwidth"
) -> tuple[float, str] | None:
    """(expected GB/s, 'GenN xW') for a pinned copy over the GPU's best possible link."""
    if gpu is None or gpu.pcie_gen_max is None or gpu.pcie_width_max is None:
        return None
    per_lane = PCIE_LANE_GBPS.get(gpu.pcie_gen_max)
    if per_lane is None:
        return None
    one_way = per_lane * gpu.pcie_width_max * H2D_FRACTION
    factor = BIDIR_FACTOR if metric == "bidir_bandwidth" else 1.0
    return round(one_way * factor, 1), f"Gen{gpu.pcie_gen_max} x{gpu.pcie_width_max}"


_COPY_NAMES = {
    "h2d_bandwidth": "host-to-device",
    "d2h_bandwidth": "device-to-host",
    "bidir_bandwidth": "bidirectional",
}


def _judge_link(cid: str, metric: str, value: float, unit: str, gpu: GpuHealth | None) -> Check:
    link = link_expectation(gpu, metric)
    if link is None:
        return check(
            cid,
            LAYER,
            "skip",
            f"measured {value:g} {unit}; the PCIe link is not reported, so no verdict",
            value,
            None,
            unit=unit,
        )
    expected, name = link
    ratio = value / expected
    share = f"{H2D_FRACTION:.0%} of its payload rate"
    if metric == "bidir_bandwidth":
        share += f", x {BIDIR_FACTOR:g} for both directions"
    text = (
        f"{_COPY_NAMES[metric]} {value:g} {unit} = {ratio:.0%} of the {expected:g} a healthy "
        f"{name} link gives ({share})"
    )
    fix = (
        "the link is slower than it trained for: see host.pcie_link and perf.pcie_replay; reseat "
        "the GPU or move it to another slot; on multi-socket hosts check that the copy ran on the "
        "GPU's NUMA node (`nvidia-smi topo -m`; the doctor pins itself there when /sys says which)"
    )
    if ratio < FAIL_BELOW:
        return check(cid, LAYER, "fail", text, value, expected, unit=unit, fix=fix)
    if ratio < WARN_BELOW:
        return check(cid, LAYER, "warn", text, value, expected, unit=unit, fix=fix)
    return check(cid, LAYER, "pass", text, value, expected, unit=unit)


def _judge_pattern(cid: str, m: Mapping[str, Any]) -> Check:
    bad = int(m["value"])
    tested = float(m.get("tested_bytes") or 0) / 2**30
    if bad == 0:
        return check(
            cid,
            LAYER,
            "pass",
            f"{tested:.1f} GiB written and read back with 5 patterns, every byte right",
            0,
            0,
            unit="bytes",
        )
    which = ", ".join(f"{k}: {v}" for k, v in dict(m.get("patterns") or {}).items() if v)
    return check(
        cid,
        LAYER,
        "fail",
        f"{bad} byte(s) read back wrong from {tested:.1f} GiB ({which}): the GPU's memory "
        "returns other data than was written",
        bad,
        0,
        unit="bytes",
        fix="drain the node: compare host.ecc and mem.ecc (a memory fault ECC did not catch is "
        "worse than one it did), run `dcgmi diag -r 3` or NVIDIA's field diagnostic, and have "
        "the GPU replaced if it repeats",
    )


def perf_checks(
    measurements: Sequence[Mapping[str, Any]],
    gpus_by_uuid: Mapping[str, GpuHealth],
    gpus_by_index: Mapping[int, GpuHealth],
    table: PerfTable | None = None,
) -> list[Check]:
    """Judge every measurement; the GPU is found by UUID (as the framework saw it), else index.
    The burn's measurements are judged together (burn_checks): they compare GPUs."""
    out = []
    count = len(gpus_by_index) or None
    burns = []
    for m in measurements:
        if str(m["id"]).startswith("burn."):
            burns.append(m)
            continue
        gpu = _gpu_of(m, gpus_by_uuid, gpus_by_index)
        if gpu is None and m["id"] == "perf.nccl_busbw" and gpus_by_index:
            gpu = gpus_by_index[min(gpus_by_index)]  # a node figure: judged for the node's model
        judged = judge(m, gpu, table, count)
        duration = m.get("duration_s")
        out.append(judged.timed(float(duration)) if duration is not None else judged)
    if burns:
        out.extend(burn_checks(burns, gpus_by_uuid, gpus_by_index, table))
    return out


def _gpu_of(
    m: Mapping[str, Any],
    gpus_by_uuid: Mapping[str, GpuHealth],
    gpus_by_index: Mapping[int, GpuHealth],
) -> GpuHealth | None:
    uuid = m.get("gpu_uuid")
    gpu = gpus_by_uuid.get(str(uuid)) if uuid else None
    if gpu is None and m.get("gpu_index") is not None:
        gpu = gpus_by_index.get(int(m["gpu_index"]))
    return gpu


# --- the burn (level full) -------------------------------------------------------------------

BURN_WARN_BELOW_BEST = 0.9  # x the node's best GPU of the same model


def burn_checks(
    burns: Sequence[Mapping[str, Any]],
    gpus_by_uuid: Mapping[str, GpuHealth],
    gpus_by_index: Mapping[int, GpuHealth],
    table: PerfTable | None = None,
) -> list[Check]:
    """burn.tflops.gpuN against the model's bf16 figure and the node's best GPU of that model;
    burn.checksum: the same inputs gave the same bits on every GPU of a model and in every run."""
    table = table or load_perf()
    out: list[Check] = []
    good = [b for b in burns if not b.get("error")]
    best: dict[str, float] = {}
    for b in good:
        gpu = _gpu_of(b, gpus_by_uuid, gpus_by_index)
        model = gpu.name if gpu and gpu.name else "?"
        best[model] = max(best.get(model, 0.0), float(b["value"]))
    for b in burns:
        index = b.get("gpu_index")
        cid = f"burn.tflops.gpu{index}"
        if b.get("error"):
            out.append(
                check(
                    cid,
                    LAYER,
                    "fail",
                    f"the burn stopped: {b['error']}",
                    fix="read the error; a GPU that fails under sustained load needs "
                    "`dcgmi diag -r 3` and a look at host.xid",
                )
            )
            continue
        gpu = _gpu_of(b, gpus_by_uuid, gpus_by_index)
        model = gpu.name if gpu and gpu.name else "?"
        value = float(b["value"])
        want = table.expect(gpu.pci_device_id if gpu else None, "matmul_bf16")
        seconds = f" over {b.get('seconds')} s" if b.get("seconds") is not None else ""
        text = f"bf16 burn {value:g} TFLOP/s{seconds}"
        fix = (
            "the GPU slows down under sustained load: see burn.throttle (clocks, temperature, "
            "power) and the power limit (`nvidia-smi -q -d POWER`); check cooling and power cables"
        )
        if want is not None and value < FAIL_BELOW * want.value:
            out.append(
                check(
                    cid,
                    LAYER,
                    "fail",
                    f"{text} = {value / want.value:.0%} of the expected {want.value:g}",
                    value,
                    want.value,
                    unit="TFLOP/s",
                    fix=fix,
                )
            )
        elif value < BURN_WARN_BELOW_BEST * best[model]:
            out.append(
                check(
                    cid,
                    LAYER,
                    "warn",
                    f"{text} = {value / best[model]:.0%} of the node's best {model} "
                    f"({best[model]:g})",
                    value,
                    best[model],
                    unit="TFLOP/s",
                    fix=fix,
                )
            )
        else:
            expected = want.value if want is not None else None
            of = f" = {value / want.value:.0%} of the expected {want.value:g}" if want else ""
            out.append(check(cid, LAYER, "pass", text + of, value, expected, unit="TFLOP/s"))
    out.append(_checksum_check(good, gpus_by_uuid, gpus_by_index))
    return out


def _checksum_check(
    burns: Sequence[Mapping[str, Any]],
    gpus_by_uuid: Mapping[str, GpuHealth],
    gpus_by_index: Mapping[int, GpuHealth],
) -> Check:
    cid = "burn.checksum"
    if not burns:
        return check(cid, LAYER, "skip", "no burn finished, so no results to compare")
    by_model: dict[str, list[tuple[int, tuple[str, ...]]]] = {}
    for b in burns:
        gpu = _gpu_of(b, gpus_by_uuid, gpus_by_index)
        model = gpu.name if gpu and gpu.name else "?"
        sums = tuple(str(x) for x in b.get("checksums") or ())
        by_model.setdefault(model, []).append((int(b.get("gpu_index") or 0), sums))
    problems = []
    for model, runs in by_model.items():
        unsteady = [i for i, sums in runs if len(sums) != 1]
        if unsteady:
            problems.append(
                f"GPU {', '.join(map(str, unsteady))} gave different results for the same "
                "inputs during the burn"
            )
        answers: dict[tuple[str, ...], list[int]] = {}
        for i, sums in runs:
            answers.setdefault(sums, []).append(i)
        if len(answers) > 1:
            usual = max(answers.values(), key=len)
            odd = sorted(i for group in answers.values() if group is not usual for i in group)
            problems.append(
                f"GPU {', '.join(map(str, odd))} computed other bits than the other {model} GPUs"
            )
    count = len(burns)
    if problems:
        return check(
            cid,
            LAYER,
            "fail",
            "; ".join(problems) + ": silent data corruption",
            len(problems),
            0,
            fix="drain the node: a GPU that computes wrong results under load corrupts training "
            "silently; run `dcgmi diag -r 3`, check host.xid and host.ecc, and have the GPU "
            "replaced if it repeats",
        )
    return check(
        cid,
        LAYER,
        "pass",
        f"the same inputs gave the same bits on all {count} GPU(s), at the start, during "
        "and after the burn",
        count,
        count,
        unit="GPUs",
    )


# --- around the load: NVML before and after, and sampled during it ------------------------------

# Clock event reasons that fail a GPU when they show up while it is under load (nvml.h bits).
_LOAD_THROTTLES = {
    host_layer.HW_SLOWDOWN: "HW slowdown",
    host_layer.HW_THERMAL: "HW thermal slowdown",
    host_layer.SW_THERMAL: "SW thermal slowdown",
    host_layer.HW_POWER_BRAKE: "HW power brake",
}


def throttle_checks(
    samples: Sequence[Sample], indexes: Sequence[int], note: str | None = None
) -> list[Check]:
    """burn.throttle.gpuN: any HW slowdown, thermal or power-brake reason in the samples taken
    while the GPUs burned fails; the message carries the temperature and clock curve."""
    out = []
    for index in indexes:
        cid = f"burn.throttle.gpu{index}"
        mine = [s for s in samples if s.index == index]
        if not mine:
            why = note or "NVML was not sampled during the burn"
            out.append(check(cid, LAYER, "skip", f"no NVML samples for GPU {index}: {why}"))
            continue
        mask = 0
        for s in mine:
            mask |= s.clock_event_reasons or 0
        hit = [name for bit, name in _LOAD_THROTTLES.items() if mask & bit]
        curve = load_curve(mine)
        if hit:
            first = next(
                s.t for s in mine if any((s.clock_event_reasons or 0) & b for b in _LOAD_THROTTLES)
            )
            out.append(
                check(
                    cid,
                    LAYER,
                    "fail",
                    f"{', '.join(hit)} during the burn (first at {first:g} s); {curve}",
                    ", ".join(hit),
                    "none",
                    fix="the GPU cannot hold its clocks under sustained load: check cooling "
                    "(fans, airflow, inlet temperature), the GPU power cables and the power "
                    "supply's capacity; `nvidia-smi -q -d PERFORMANCE,TEMPERATURE,POWER` during a "
                    "load shows which reason; the BMC log shows power-brake events",
                )
            )
        else:
            out.append(check(cid, LAYER, "pass", f"no throttling under load; {curve}", "none"))
    return out


def load_curve(samples: Sequence[Sample]) -> str:
    """'temperature 41-83 C, SM clock 1980-1755 MHz (first-last), power up to 690 W, 61 samples'."""
    parts = []
    temps = [s.temperature_c for s in samples if s.temperature_c is not None]
    clocks = [s.sm_clock_mhz for s in samples if s.sm_clock_mhz is not None]
    power = [s.power_w for s in samples if s.power_w is not None]
    if temps:
        parts.append(f"temperature {min(temps)}-{max(temps)} C")
    if clocks:
        parts.append(f"SM clock {clocks[0]}->{clocks[-1]} MHz (lowest {min(clocks)})")
    if power:
        parts.append(f"power up to {max(power):.0f} W")
    span = samples[-1].t - samples[0].t
    parts.append(f"{len(samples)} samples over {span:g} s")
    return ", ".join(parts)


def ecc_delta_checks(before: HostHealth | None, after: HostHealth | None) -> list[Check]:
    """mem.ecc.gpuN: an uncorrectable ECC error, or a pending row remap, that appeared while
    the doctor's load ran is a failing GPU (DCGM's memory rules; docs/facts.md section 10)."""
    if before is None or after is None:
        return []
    out = []
    after_by_index = {g.index: g for g in after.gpus}
    for b in before.gpus:
        a = after_by_index.get(b.index)
        cid = f"mem.ecc.gpu{b.index}"
        if a is None or b.error or a.error:
            why = a.error if a is not None and a.error else "the GPU was not read after the load"
            out.append(check(cid, LAYER, "skip", why))
            continue
        if b.ecc_uncorrected_volatile is None or a.ecc_uncorrected_volatile is None:
            out.append(check(cid, LAYER, "skip", "ECC is off or its counters are not reported"))
            continue
        new = a.ecc_uncorrected_volatile - b.ecc_uncorrected_volatile
        pending = bool(a.remap_pending) and not b.remap_pending
        if new > 0 or pending:
            what = []
            if new > 0:
                what.append(f"{new} new uncorrectable ECC error(s)")
            if pending:
                what.append("a row remap became pending")
            out.append(
                check(
                    cid,
                    LAYER,
                    "fail",
                    f"{' and '.join(what)} during the doctor's load",
                    new,
                    0,
                    unit="errors",
                    fix="drain the node; reset the GPU (`nvidia-smi -r -i "
                    f"{b.index}`) so that a pending remap takes effect, then run `dcgmi diag -r 3`; "
                    "if errors return, have the GPU replaced",
                )
            )
        else:
            out.append(
                check(
                    cid,
                    LAYER,
                    "pass",
                    f"no new uncorrectable ECC error during the load "
                    f"({a.ecc_uncorrected_volatile} since the driver loaded)",
                    0,
                    0,
                    unit="errors",
                )
            )
    return out


def replay_delta_checks(
    before: HostHealth | None, after: HostHealth | None, seconds: float | None
) -> list[Check]:
    """perf.pcie_replay.gpuN over the load, by host_layer.replay_delta_check (DCGM's limit)."""
    if before is None or after is None or seconds is None:
        return []
    after_by_index = {g.index: g for g in after.gpus}
    out = []
    for b in before.gpus:
        a = after_by_index.get(b.index)
        out.append(
            host_layer.replay_delta_check(
                b.pcie_replay_count,
                a.pcie_replay_count if a is not None else None,
                seconds,
                gpu=b.index,
            )
        )
    return out
