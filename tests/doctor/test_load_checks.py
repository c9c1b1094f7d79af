"""The load checks' verdicts on constructed readings: copies, P2P, NCCL, memory, burn, ECC.

Each fault gives its check id, `fail` and a fix; the healthy readings pass. The judges are the
pure functions the live run and `--replay` both call (perf.py); the GPU side cannot run here.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from cudabox.doctor import perf
from cudabox.doctor.host_layer import HW_POWER_BRAKE, HW_SLOWDOWN, SW_POWER_CAP, SW_THERMAL
from cudabox.doctor.model import Check, Sample
from cudabox.health import GpuHealth, HostHealth

H100 = GpuHealth(
    0, "GPU-0", "NVIDIA H100 80GB HBM3", "0x233010DE", pcie_gen_max=5, pcie_width_max=16
)
NODE = {i: replace(H100, index=i, uuid=f"GPU-{i}") for i in range(8)}
BY_UUID = {g.uuid or "": g for g in NODE.values()}


def judged(*measurements: dict[str, Any], node: dict[int, GpuHealth] = NODE) -> dict[str, Check]:
    by_uuid = {g.uuid or "": g for g in node.values()}
    return {c.id: c for c in perf.perf_checks(measurements, by_uuid, node)}


def failed(found: Check, cid: str, words: str) -> None:
    assert (found.id, found.status) == (cid, "fail"), found.message
    assert found.fix is not None and words in found.fix


# --- P2P and NCCL -----------------------------------------------------------------------------


def p2p(a: int, b: int, value: float) -> dict[str, Any]:
    return {"id": f"perf.p2p.gpu{a}-gpu{b}", "value": value, "unit": "GB/s", "gpu_index": a}


def test_a_slow_p2p_pair_fails_below_the_floor() -> None:
    checks = judged(p2p(0, 1, 372.0), p2p(1, 0, 330.0), p2p(2, 3, 301.5))
    assert checks["perf.p2p.gpu0-gpu1"].status == "pass"
    assert checks["perf.p2p.gpu1-gpu0"].status == "warn"  # 0.89 x 370, above the floor 316
    slow = checks["perf.p2p.gpu2-gpu3"]
    failed(slow, "perf.p2p.gpu2-gpu3", "host.nvlink")
    assert (slow.value, slow.expected) == (301.5, 370.0) and "below the floor 316" in slow.message


def test_no_peer_access_is_a_skip_saying_why() -> None:
    found = judged({"id": "perf.p2p.gpu0-gpu1", "error": "no peer access", "unsupported": True})
    assert found["perf.p2p.gpu0-gpu1"].status == "skip"


def nccl(value: float, gpus: int = 8) -> dict[str, Any]:
    return {"id": "perf.nccl_busbw", "value": value, "unit": "GB/s", "gpus": gpus}


@pytest.mark.parametrize(("value", "status"), [(478.0, "pass"), (420.0, "warn"), (350.0, "fail")])
def test_nccl_bus_bandwidth_against_the_topology(value: float, status: str) -> None:
    found = judged(nccl(value))["perf.nccl_busbw"]
    assert (found.status, found.expected) == (status, 480.0)
    assert "8 x NVIDIA H100 80GB HBM3" in found.message
    if status == "fail":
        failed(found, "perf.nccl_busbw", "NCCL_DEBUG=INFO")


def test_nccl_on_one_gpu_or_an_unknown_topology_skips_saying_why() -> None:
    one = judged(
        {
            "id": "perf.nccl_busbw",
            "error": "1 GPU: an all-reduce bus bandwidth needs two or more",
            "unsupported": True,
        }
    )["perf.nccl_busbw"]
    assert one.status == "skip" and "needs two or more" in one.message
    four = judged(nccl(200.0, gpus=4), node={i: NODE[i] for i in range(4)})["perf.nccl_busbw"]
    assert four.status == "skip" and "no expected value for 4 x NVIDIA H100" in four.message


# --- memory -----------------------------------------------------------------------------------


def pattern(bad: int) -> dict[str, Any]:
    patterns = {"0x00": 0, "0xAA": bad, "0x55": 0, "0xFF": 0, "address": 0}
    return {
        "id": "mem.pattern.gpu3",
        "value": bad,
        "unit": "bytes",
        "tested_bytes": 70 << 30,
        "patterns": patterns,
        "gpu_index": 3,
    }


def test_a_pattern_mismatch_fails_and_a_clean_pass_passes() -> None:
    assert judged(pattern(0))["mem.pattern.gpu3"].status == "pass"
    found = judged(pattern(4))["mem.pattern.gpu3"]
    failed(found, "mem.pattern.gpu3", "dcgmi diag -r 3")
    assert "0xAA: 4" in found.message and "70.0 GiB" in found.message


def health(**gpu: Any) -> HostHealth:
    return HostHealth(status="ok", device_count=1, gpus=(replace(H100, **gpu),))


def test_an_uncorrectable_ecc_error_appearing_during_the_load_fails() -> None:
    before = health(ecc_enabled=True, ecc_uncorrected_volatile=0, remap_pending=False)
    (same,) = perf.ecc_delta_checks(before, before)
    assert same.status == "pass"
    (new,) = perf.ecc_delta_checks(
        before, replace(before, gpus=(replace(before.gpus[0], ecc_uncorrected_volatile=2),))
    )
    failed(new, "mem.ecc.gpu0", "nvidia-smi -r -i 0")
    assert new.value == 2
    pending = replace(before, gpus=(replace(before.gpus[0], remap_pending=True),))
    (remap,) = perf.ecc_delta_checks(before, pending)
    assert remap.status == "fail" and "row remap became pending" in remap.message
    (off,) = perf.ecc_delta_checks(health(), health())
    assert off.status == "skip"


def test_pcie_replays_during_the_copies_use_dcgm_s_limit() -> None:
    before = health(pcie_replay_count=10)
    (quiet,) = perf.replay_delta_checks(before, before, 30.0)
    assert (quiet.id, quiet.status) == ("perf.pcie_replay.gpu0", "pass")
    storm = replace(before, gpus=(replace(before.gpus[0], pcie_replay_count=10_000),))
    (found,) = perf.replay_delta_checks(before, storm, 30.0)
    failed(found, "perf.pcie_replay.gpu0", "reseat")
    assert perf.replay_delta_checks(before, None, 30.0) == []


# --- the burn ---------------------------------------------------------------------------------


def burn(index: int, tflops: float, *sums: str) -> dict[str, Any]:
    return {
        "id": f"burn.gpu{index}",
        "value": tflops,
        "unit": "TFLOP/s",
        "seconds": 60.0,
        "checksums": list(sums or ["aa"]),
        "gpu_index": index,
        "gpu_uuid": f"GPU-{index}",
    }


def test_burn_throughput_against_the_model_and_the_node_s_best() -> None:
    checks = judged(burn(0, 790.0), burn(1, 780.0), burn(2, 690.0), burn(3, 580.0))
    assert checks["burn.tflops.gpu0"].status == "pass"
    assert checks["burn.tflops.gpu1"].status == "pass"
    slow = checks["burn.tflops.gpu2"]  # 0.87 x the node's best, above 0.75 x the expected 798
    assert slow.status == "warn" and slow.expected == 790.0 and "node's best" in slow.message
    failed(checks["burn.tflops.gpu3"], "burn.tflops.gpu3", "burn.throttle")
    assert checks["burn.checksum"].status == "pass"


def test_results_that_differ_between_gpus_or_runs_fail_the_checksum() -> None:
    between = judged(burn(0, 790.0, "aa"), burn(1, 790.0, "aa"), burn(2, 790.0, "bb"))
    found = between["burn.checksum"]
    failed(found, "burn.checksum", "drain the node")
    assert "GPU 2 computed other bits" in found.message
    during = judged(burn(0, 790.0, "aa", "cc"))["burn.checksum"]
    assert during.status == "fail" and "GPU 0 gave different results" in during.message


def test_a_burn_that_crashes_fails() -> None:
    found = judged(
        {
            "id": "burn.gpu0",
            "error": "RuntimeError: CUDA error: an illegal memory access",
            "gpu_index": 0,
        }
    )
    failed(found["burn.tflops.gpu0"], "burn.tflops.gpu0", "host.xid")
    assert found["burn.checksum"].status == "skip"


def samples(index: int, reasons: int, start: int = 20) -> list[Sample]:
    return [
        Sample(
            index,
            float(t),
            40 + t,
            1980 if t < start else 1400,
            650.0,
            reasons if t >= start else 0,
        )
        for t in range(30)
    ]


@pytest.mark.parametrize(
    ("bit", "name"),
    [
        (HW_SLOWDOWN, "HW slowdown"),
        (SW_THERMAL, "SW thermal slowdown"),
        (HW_POWER_BRAKE, "HW power brake"),
    ],
)
def test_throttling_during_the_burn_fails_with_the_curve(bit: int, name: str) -> None:
    found, calm = perf.throttle_checks(samples(0, bit) + samples(1, SW_POWER_CAP), [0, 1])
    failed(found, "burn.throttle.gpu0", "cooling")
    assert name in found.message and "first at 20 s" in found.message
    assert "temperature 40-69 C" in found.message and "SM clock 1980->1400 MHz" in found.message
    assert calm.status == "pass"  # the SW power cap is the normal state of a GPU at full load


def test_no_samples_is_a_skip_saying_why() -> None:
    (found,) = perf.throttle_checks([], [0], "NVML gave no samples (no driver)")
    assert found.status == "skip" and "no driver" in found.message
