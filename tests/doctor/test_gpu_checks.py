"""The in-image script on this machine's Python (torch CPU build here; GPU branches on GPU hosts)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cudabox.doctor import gpu_checks
from cudabox.doctor.container_layer import parse_result


def to_tf32(torch: Any, x: Any) -> Any:
    """Round float64 to TF32 (fp32 with a 10-bit mantissa), as tensor cores do with their inputs."""
    bits = x.float().view(torch.int32)
    rounded = (bits + 0x1000) & ~0x1FFF  # round to nearest on the 13 dropped mantissa bits
    return rounded.view(torch.float32)


def test_tolerances_separate_each_dtype_from_the_next_coarser_one() -> None:
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(256, gpu_checks.MATMUL_K, generator=gen, dtype=torch.float64)
    b = torch.randn(gpu_checks.MATMUL_K, 256, generator=gen, dtype=torch.float64)
    reference = a @ b
    fp32 = gpu_checks.rel_error((a.float() @ b.float()).double(), reference)
    bf16 = gpu_checks.rel_error(
        (a.bfloat16().float() @ b.bfloat16().float()).bfloat16().double(), reference
    )
    tf32 = gpu_checks.rel_error((to_tf32(torch, a) @ to_tf32(torch, b)).double(), reference)
    assert fp32 <= gpu_checks.TOLERANCE["fp32"] < tf32
    assert tf32 <= gpu_checks.TOLERANCE["tf32"]
    assert bf16 <= gpu_checks.TOLERANCE["bf16"]
    # A bf16 result must not pass as fp32 or tf32: the tolerances do tell dtypes apart.
    assert bf16 > gpu_checks.TOLERANCE["tf32"]
    # Garbage (a flipped sign in one row) fails every tolerance.
    broken = reference.clone()
    broken[0] = -broken[0]
    assert gpu_checks.rel_error(broken, reference) > max(gpu_checks.TOLERANCE.values())
    assert math.isclose(gpu_checks.TOLERANCE["bf16"], 8 * 2**-8)


def test_script_runs_as_a_module_and_reports_gpu_checks_as_skipped() -> None:
    pytest.importorskip("torch")
    done = subprocess.run(
        [sys.executable, "-m", "cudabox.doctor.gpu_checks", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    result = parse_result(done.stdout)
    assert result is not None
    status = {c["id"]: c["status"] for c in result["checks"]}
    assert status["framework.import"] == "pass"
    assert status["framework.matmul.cpu"] == "pass"
    import torch

    if not torch.cuda.is_available():
        assert status["framework.cuda_init"] == "skip"
        assert result["measurements"] == []
        cuda = next(c for c in result["checks"] if c["id"] == "framework.cuda_init")
        assert cuda["message"].startswith("no GPU")
    assert "framework.import" in done.stderr  # progress goes to stderr


def test_script_is_standard_library_plus_framework_only() -> None:
    """It is shipped into images as a file: it must not import cudabox or third-party modules."""
    source = gpu_checks.__file__
    assert source is not None
    lines = Path(source).read_text().splitlines()
    imports = [line.split()[1] for line in lines if line.startswith(("import ", "from "))]
    assert not [
        m
        for m in imports
        if m.split(".")[0]
        not in {
            "__future__",
            "argparse",
            "ctypes",
            "hashlib",
            "importlib",
            "json",
            "math",
            "os",
            "pathlib",
            "platform",
            "sys",
            "tempfile",
            "threading",
            "time",
            "collections",
            "typing",
        }
    ]


def test_nvml_listing_without_a_driver_says_so() -> None:
    result = gpu_checks.nvml_uuids()
    if "error" in result:
        assert "libnvidia-ml.so.1" in result["error"]
    else:  # a GPU host
        assert isinstance(result["uuids"], list)
    json.dumps(result)


# --- the load's building blocks, run for real on the CPU (the GPU branches call the same code) --


def test_pattern_test_finds_a_flipped_bit_in_every_pattern() -> None:
    torch = pytest.importorskip("torch")
    cpu = torch.device("cpu")
    clean = gpu_checks.pattern_test(torch, cpu, 3 << 20, chunk=1 << 20)
    assert clean["value"] == 0 and clean["tested_bytes"] == 3 << 20
    assert set(clean["patterns"]) == {"0x00", "0xAA", "0x55", "0xFF", "address"}

    def stuck_bit(chunks: list[Any]) -> None:  # one cell of the second chunk holds bit 4 flipped
        chunks[1][4097] ^= 0x10

    found = gpu_checks.pattern_test(torch, cpu, 3 << 20, chunk=1 << 20, after_fill=stuck_bit)
    assert found["patterns"] == {"0x00": 1, "0xAA": 1, "0x55": 1, "0xFF": 1, "address": 8}
    assert found["value"] == 12


def test_burn_gives_throughput_and_one_checksum_for_steady_results() -> None:
    torch = pytest.importorskip("torch")
    # One CPU thread: a CPU BLAS may split a product differently as the machine's load changes
    # (another order of sums, other low bits); a GPU's cuBLAS does not, which is what burn relies on.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        first = gpu_checks.burn(torch, torch.device("cpu"), 0.3, n=128, dtype=torch.float32)
        again = gpu_checks.burn(torch, torch.device("cpu"), 0.3, n=128, dtype=torch.float32)
    finally:
        torch.set_num_threads(threads)
    assert first["value"] > 0 and first["unit"] == "TFLOP/s"
    assert len(first["checksums"]) == 1 and first["checksums"] == again["checksums"]


def test_nccl_busbw_runs_one_process_per_rank_for_real_with_gloo() -> None:
    torch = pytest.importorskip("torch")
    found = gpu_checks.nccl_busbw(torch, 2, 1 << 20, "gloo")
    assert found["gpus"] == 2 and found["value"] > 0
    assert found["value"] == pytest.approx(found["algbw"], rel=0.06)  # 2(n-1)/n = 1 for n = 2
    one = gpu_checks.nccl_busbw(torch, 1, 1 << 20, "gloo")
    assert one["unsupported"] and "needs two or more" in one["error"]


def test_numa_node_of_a_pci_device_from_sys(tmp_path: Path) -> None:
    device = tmp_path / "bus/pci/devices/0000:19:00.0"
    device.mkdir(parents=True)
    (device / "numa_node").write_text("1\n")
    node = tmp_path / "devices/system/node/node1"
    node.mkdir(parents=True)
    (node / "cpulist").write_text("24-26,72\n")
    assert gpu_checks.numa_cpus("0000:19:00.0", str(tmp_path)) == {24, 25, 26, 72}
    (device / "numa_node").write_text("-1\n")  # one node, or firmware that does not say
    assert gpu_checks.numa_cpus("0000:19:00.0", str(tmp_path)) is None
    assert gpu_checks.numa_cpus("0000:aa:00.0", str(tmp_path)) is None


def test_script_at_level_full_runs_on_this_cpu_host() -> None:
    pytest.importorskip("torch")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cudabox.doctor.gpu_checks",
            "--json",
            "--level",
            "full",
            "--burn-seconds",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    result = parse_result(done.stdout)
    assert result is not None and result["cuda"] == {"built": None, "error": None}
    import torch

    if not torch.cuda.is_available():
        assert result["measurements"] == []  # no GPU: the load has nothing to run on
