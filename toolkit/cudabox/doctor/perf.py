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

from cudabox.doctor.model import Check, Status, check
from cudabox.errors import DataError
from cudabox.nvml import GpuHealth
from cudabox.sourced import parse_table, read_data, rows_of, sources_of

LAYER = "performance"
FAIL_BELOW = 0.75  # x the expected value: datacenter diagnostics' threshold on measured rows
WARN_BELOW = 0.9
# Share of the datasheet peak a healthy card reaches in these benchmarks, for models with a peak
# row only. Measured on H100/H200 here: bf16 matmul 0.80 of peak, copy bandwidth 0.90 of peak;
# the fractions leave room for power-limited PCIe and consumer parts (docs/doctor.md).
PEAK_FRACTION = {"matmul_bf16": 0.6, "matmul_tf32": 0.6, "mem_bandwidth": 0.8}
UNITS = {"matmul_bf16": "TFLOP/s", "matmul_tf32": "TFLOP/s", "mem_bandwidth": "GB/s"}
METRICS = tuple(UNITS)

# PCIe payload rate per lane, GB/s, after line encoding (8b/10b to Gen2, 128b/130b Gen3-5,
# FLIT 242/256 at Gen6).
PCIE_LANE_GBPS = {1: 0.25, 2: 0.5, 3: 0.985, 4: 1.969, 5: 3.938, 6: 7.563}
# Share of the link's payload rate a pinned host-to-device copy reaches (packet headers, flow
# control): about 0.8 on healthy Gen4/Gen5 x16 links.
H2D_FRACTION = 0.75


@dataclass(frozen=True)
class Expectation:
    value: float
    basis: str  # "measured" or "peak"
    source: str  # the row's source key
    peak: float | None = None


@dataclass(frozen=True)
class PerfTable:
    rows: dict[tuple[str, str], dict[str, tuple[float, str]]]  # (pci id, metric) -> kind -> row
    sources: dict[str, str]

    def expect(self, pci_device_id: str | None, metric: str) -> Expectation | None:
        if pci_device_id is None:
            return None
        kinds = self.rows.get((pci_device_id.upper().replace("0X", "0x"), metric))
        if not kinds:
            return None
        peak = kinds.get("peak")
        if "measured" in kinds:
            value, source = kinds["measured"]
            return Expectation(value, "measured", source, peak[0] if peak else None)
        assert peak is not None
        return Expectation(round(peak[0] * PEAK_FRACTION[metric], 1), "peak", peak[1], peak[0])


_ROW_KEYS: dict[str, tuple[type, ...]] = {
    "pci_device_id": (str,),
    "name": (str,),
    "metric": (str,),
    "kind": (str,),
    "value": (int, float),
    "source": (str,),
}
_FIX = "reinstall cudabox; if you edited data/gpu_perf.toml, correct the row it names"


def parse_perf(data: Mapping[str, Any] | str, where: str = "gpu_perf.toml") -> PerfTable:
    """The table of gpu_perf.toml (its text, or the parsed table); any flaw is a DataError."""
    data = parse_table(data, where, _FIX, {"schema", "sources", "row"})
    if type(data.get("schema")) is not int or data.get("schema") != 1:
        raise DataError(f"{where}: 'schema' must be 1, got {data.get('schema')!r}", _FIX)
    sources = sources_of(data, where, _FIX)
    table = rows_of(data, "row", where, _FIX, required=False)
    rows: dict[tuple[str, str], dict[str, tuple[float, str]]] = {}
    for n, row in enumerate(table, start=1):
        at = f"{where} row {n}"
        unknown = set(row) - set(_ROW_KEYS)
        if unknown:
            raise DataError(f"{at}: unknown key {sorted(unknown)[0]!r}", _FIX)
        for key, kinds in _ROW_KEYS.items():
            if key == "name" and key not in row:
                continue  # the model name is a comment for people; the PCI id is the key
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
        value = float(row["value"])
        if not math.isfinite(value) or value <= 0:
            raise DataError(f"{at}: value must be a number above 0, got {row['value']!r}", _FIX)
        if not pci.startswith("0x") or len(pci) != 10 or not pci.upper().endswith("10DE"):
            raise DataError(f"{at}: pci_device_id {pci!r} is not of the form 0x233010DE", _FIX)
        if metric not in METRICS or kind not in ("peak", "measured"):
            raise DataError(f"{at}: metric must be one of {METRICS}, kind peak or measured", _FIX)
        if source not in sources:  # one source per measured figure, named as it is
            raise DataError(f"{at}: source {source!r} is not in [sources]", _FIX)
        kinds_seen = rows.setdefault((pci.upper().replace("0X", "0x"), metric), {})
        if kind in kinds_seen:
            raise DataError(f"{at}: a second {kind} row for {pci} {metric}", _FIX)
        kinds_seen[kind] = (value, source)
    return PerfTable(rows, sources)


@cache
def load_perf() -> PerfTable:
    text, where = read_data("gpu_perf.toml", _FIX)
    return parse_perf(text, where)


def judge(
    measurement: Mapping[str, Any], gpu: GpuHealth | None, table: PerfTable | None = None
) -> Check:
    """One performance check from one measurement (as gpu_checks.py wrote it)."""
    cid = str(measurement["id"])
    metric = cid.split(".")[1]
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
    if metric == "h2d_bandwidth":
        return _judge_h2d(cid, value, unit, gpu)
    table = table or load_perf()
    model = gpu.name if gpu and gpu.name else "this GPU"
    pci = gpu.pci_device_id if gpu else None
    want = table.expect(pci, metric)
    if want is None:
        return check(
            cid,
            LAYER,
            "skip",
            f"measured {value:g} {unit}; no expected value for {model} ({pci or 'unknown PCI id'}) "
            "in data/gpu_perf.toml, so no verdict",
            value,
            None,
            unit=unit,
        )
    basis = (
        f"measured on a healthy {model} ({want.source})"
        if want.basis == "measured"
        else f"{PEAK_FRACTION[metric]:.0%} of the datasheet peak {want.peak:g} (no measured row yet)"
    )
    ratio = value / want.value
    text = f"{value:g} {unit} = {ratio:.0%} of the expected {want.value:g} ({basis})"
    if ratio < FAIL_BELOW:
        return check(cid, LAYER, "fail", text, value, want.value, unit=unit, fix=_slow_fix(metric))
    if ratio < WARN_BELOW:
        return check(cid, LAYER, "warn", text, value, want.value, unit=unit, fix=_slow_fix(metric))
    return check(cid, LAYER, "pass", text, value, want.value, unit=unit)


def _slow_fix(metric: str) -> str:
    common = "look at host.clocks (throttling) and host.ecc; check that no other process uses the GPU (`nvidia-smi`)"
    if metric == "mem_bandwidth":
        return f"{common}; check the memory clock (`nvidia-smi -q -d CLOCK`)"
    return f"{common}; check the power limit (`nvidia-smi -q -d POWER`) and the SM clock under load"


def link_expectation(gpu: GpuHealth | None) -> tuple[float, str] | None:
    """(expected GB/s, 'GenN xW') for a pinned H2D copy over the GPU's best possible link."""
    if gpu is None or gpu.pcie_gen_max is None or gpu.pcie_width_max is None:
        return None
    per_lane = PCIE_LANE_GBPS.get(gpu.pcie_gen_max)
    if per_lane is None:
        return None
    raw = per_lane * gpu.pcie_width_max
    return round(raw * H2D_FRACTION, 1), f"Gen{gpu.pcie_gen_max} x{gpu.pcie_width_max}"


def _judge_h2d(cid: str, value: float, unit: str, gpu: GpuHealth | None) -> Check:
    link = link_expectation(gpu)
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
    text = (
        f"{value:g} {unit} = {ratio:.0%} of the {expected:g} a healthy {name} link gives "
        f"({H2D_FRACTION:.0%} of its payload rate)"
    )
    fix = (
        "the link is slower than it trained for: see host.pcie_link; reseat the GPU or move it to "
        "another slot; on multi-socket hosts pin the process to the GPU's NUMA node "
        "(`nvidia-smi topo -m`)"
    )
    if ratio < FAIL_BELOW:
        return check(cid, LAYER, "fail", text, value, expected, unit=unit, fix=fix)
    if ratio < WARN_BELOW:
        return check(cid, LAYER, "warn", text, value, expected, unit=unit, fix=fix)
    return check(cid, LAYER, "pass", text, value, expected, unit=unit)


def perf_checks(
    measurements: Sequence[Mapping[str, Any]],
    gpus_by_uuid: Mapping[str, GpuHealth],
    gpus_by_index: Mapping[int, GpuHealth],
) -> list[Check]:
    """Judge every measurement; the GPU is found by UUID (as the framework saw it), else index."""
    out = []
    for m in measurements:
        uuid = m.get("gpu_uuid")
        gpu = gpus_by_uuid.get(str(uuid)) if uuid else None
        if gpu is None and m.get("gpu_index") is not None:
            gpu = gpus_by_index.get(int(m["gpu_index"]))
        judged = judge(m, gpu)
        duration = m.get("duration_s")
        out.append(judged.timed(float(duration)) if duration is not None else judged)
    return out
