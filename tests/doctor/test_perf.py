"""Performance verdicts: measured rows, peak-only rows, unknown cards, and the PCIe link."""

from __future__ import annotations

import pytest

from cudabox.doctor import perf
from cudabox.errors import DataError
from cudabox.health import GpuHealth

H100 = GpuHealth(
    0, "GPU-a", "NVIDIA H100 80GB HBM3", "0x233010DE", pcie_gen_max=5, pcie_width_max=16
)
L4 = GpuHealth(0, "GPU-b", "NVIDIA L4", "0x27B810DE", pcie_gen_max=4, pcie_width_max=16)
UNKNOWN = GpuHealth(0, "GPU-c", "NVIDIA Future", "0xFFFF10DE")


def m(metric: str, value: float) -> dict[str, object]:
    return {"id": f"perf.{metric}.gpu0", "value": value, "unit": perf.UNITS.get(metric, "GB/s")}


@pytest.mark.parametrize(("value", "status"), [(790.0, "pass"), (700.0, "warn"), (590.0, "fail")])
def test_measured_row_thresholds(value: float, status: str) -> None:
    found = perf.judge(m("matmul_bf16", value), H100)
    assert (found.status, found.expected) == (status, 798.0)
    assert "measured on a healthy NVIDIA H100 80GB HBM3" in found.message
    assert (found.fix is None) == (status == "pass")


def test_peak_only_row_uses_the_documented_fraction() -> None:
    found = perf.judge(m("matmul_tf32", 250.0), H100)
    assert found.expected == round(494.7 * perf.PEAK_FRACTION["matmul_tf32"], 1)
    assert "60% of the datasheet peak 494.7 (no measured row yet)" in found.message
    assert found.status == "warn"


def test_unknown_card_gets_the_measurement_and_a_skip() -> None:
    found = perf.judge(m("matmul_bf16", 1234.5), UNKNOWN)
    assert (found.status, found.value, found.expected) == ("skip", 1234.5, None)
    assert "no expected value for NVIDIA Future" in found.message


def test_h2d_against_the_link() -> None:
    expected = round(3.938 * 16 * perf.H2D_FRACTION, 1)
    ok = perf.judge(m("h2d_bandwidth", 53.0), H100)
    slow = perf.judge(m("h2d_bandwidth", 26.0), H100)  # what a Gen4 link gives
    assert (ok.status, ok.expected) == ("pass", expected)
    assert slow.status == "fail" and slow.fix is not None and "host.pcie_link" in slow.fix
    assert perf.judge(m("h2d_bandwidth", 25.0), L4).status == "pass"  # Gen4 x16: 26.1 expected
    assert perf.judge(m("h2d_bandwidth", 22.0), UNKNOWN).status == "skip"


def test_copies_in_each_direction_against_the_link() -> None:
    # Gen5 x16: 0.83 x 63.0 GB/s payload = 52.3 expected a direction; fail below 0.75 x = 39.2.
    assert perf.link_expectation(H100) == (52.3, "Gen5 x16")
    for metric in ("h2d_bandwidth", "d2h_bandwidth"):
        assert perf.judge(m(metric, 40.0), H100).status == "warn"
        slow = perf.judge(m(metric, 38.5), H100)
        assert (slow.id, slow.status) == (f"perf.{metric}.gpu0", "fail")
        assert slow.fix is not None and "NUMA" in slow.fix
    both = perf.judge(m("bidir_bandwidth", 90.0), H100)  # 1.6 x 52.3 = 83.7 expected
    assert (both.status, both.expected) == ("pass", 83.7)
    assert perf.judge(m("bidir_bandwidth", 60.0), H100).status == "fail"


def test_unsupported_and_crashed_measurements() -> None:
    unsupported = {
        "id": "perf.matmul_bf16.gpu0",
        "error": "bf16 needs compute capability 8.0 or newer",
        "unsupported": True,
    }
    crashed = {"id": "perf.mem_bandwidth.gpu0", "error": "RuntimeError: CUDA error: out of memory"}
    assert perf.judge(unsupported, H100).status == "skip"
    assert perf.judge(crashed, H100).status == "fail"


def test_measurements_find_their_gpu_by_uuid() -> None:
    checks = perf.perf_checks(
        [{**m("matmul_bf16", 120.0), "gpu_uuid": "GPU-b", "gpu_index": 0, "duration_s": 1.5}],
        {"GPU-a": H100, "GPU-b": L4},
        {0: H100},
    )
    assert (
        checks[0].status == "pass" and checks[0].duration_s == 1.5
    )  # judged as an L4, not an H100


def test_shipped_table_loads_and_every_row_has_a_source() -> None:
    table = perf.load_perf()
    assert table.expect("0x233010DE", "matmul_bf16") is not None
    assert table.expect("0x233510DE", "mem_bandwidth").basis == "measured"  # type: ignore[union-attr]
    assert table.expect("0x1EB810DE", "matmul_bf16") is None  # T4: no bf16


@pytest.mark.parametrize(
    ("row", "error"),
    [
        (
            {"metric": "matmul_bf16", "kind": "peak", "value": 1.0, "source": "missing"},
            "not in [sources]",
        ),
        ({"metric": "fp64", "kind": "peak", "value": 1.0, "source": "S"}, "metric must be one of"),
        (
            {"metric": "matmul_bf16", "kind": "peak", "value": 1.0, "source": "S", "note": "x"},
            "unknown key 'note'",
        ),
        ({"metric": "nccl_busbw", "kind": "reference", "value": 1.0, "source": "S"}, "'gpus'"),
        (
            {"metric": "p2p_bandwidth", "gpus": 8, "kind": "floor", "value": 1.0, "source": "S"},
            "'gpus'",
        ),
        (
            {"metric": "nccl_busbw", "gpus": 1, "kind": "reference", "value": 1.0, "source": "S"},
            "'gpus' \\(2 or more\\)",
        ),
        ({"metric": "p2p_bandwidth", "kind": "guess", "value": 1.0, "source": "S"}, "kind one of"),
    ],
)
def test_bad_rows_are_data_errors(row: dict[str, object], error: str) -> None:
    data = {
        "schema": 1,
        "sources": {"S": "a datasheet"},
        "row": [{"pci_device_id": "0x233010DE", **row}],
    }
    with pytest.raises(DataError, match=error.replace("[", r"\[").replace("]", r"\]")):
        perf.parse_perf(data)


def test_the_shipped_fabric_rows() -> None:
    table = perf.load_perf()
    p2p = table.expect("0x233510DE", "p2p_bandwidth")
    assert p2p is not None and (p2p.value, p2p.floor, p2p.basis) == (370.0, 316.0, "reference")
    nccl = table.expect("0x20B210DE", "nccl_busbw", 8)
    assert nccl is not None and nccl.value == 230.0 and nccl.floor is None
    assert table.expect("0x233010DE", "nccl_busbw", 4) is None  # no row for that node size
    assert table.expect("0x233010DE", "nccl_busbw") is None
