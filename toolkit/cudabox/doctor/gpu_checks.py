"""Framework and performance checks that run where the framework is: in an image, or `--here`.

    python -m cudabox.doctor.gpu_checks --json [--framework torch|tensorflow] [--no-perf]
        [--level standard|full] [--burn-seconds S] [--mem-fraction F] [--nccl-mib N]

Standard library plus the framework only, so that the doctor can also ship this file's text into
any image and run it with `python -c`. Progress goes to stderr; the result is one stdout line
that starts with MARKER. Framework checks are judged here (the tolerances need only the dtype);
performance figures (matmuls, memory, copies, P2P, NCCL; at level full the memory pattern test
and the burn) are only measured here and judged by the doctor (perf.py, data/gpu_perf.toml), so
that `cudabox doctor --replay` can judge them again. The GPU branches stay small; the pieces
that can (pattern test, burn, the all-reduce over gloo) take a device and run on the CPU in tests.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import importlib
import json
import math
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MARKER = "CUDABOX_DOCTOR_RESULT "
LAYER = "framework"

# Normwise relative error allowed against a float64 reference, in unit roundoffs of the dtype
# that rounds the inputs: 8 for fp32 (times sqrt(K) for the accumulation over K terms) and bf16,
# 4 for tf32 so that a product silently done in bf16 cannot pass as tf32.
MATMUL_K = 1024
TOLERANCE = {"fp32": 8 * 2**-24 * math.sqrt(MATMUL_K), "tf32": 4 * 2**-11, "bf16": 8 * 2**-8}
CONV_TOLERANCE = 1e-3


def _check(
    id: str,
    status: str,
    message: str,
    value: Any = None,
    expected: Any = None,
    unit: str | None = None,
    fix: str | None = None,
    layer: str = LAYER,
) -> dict[str, Any]:
    return {
        "id": id,
        "layer": layer,
        "status": status,
        "value": value,
        "expected": expected,
        "unit": unit,
        "message": message,
        "fix": fix if status != "pass" else None,
    }


def _say(text: str) -> None:
    print(f"  {text}", file=sys.stderr, flush=True)


def _timed(checks: list[dict[str, Any]], fn: Callable[[], list[dict[str, Any]]]) -> None:
    start = time.perf_counter()
    try:
        found = fn()
    except Exception as exc:  # a check that crashes is a failing check, not a crashed doctor
        name = getattr(fn, "__name__", "check").strip("_")
        found = [
            _check(
                f"framework.{name}",
                "fail",
                f"{type(exc).__name__}: {exc}",
                fix="read the error; it came from the framework itself",
            )
        ]
    seconds = round(time.perf_counter() - start, 3)
    for item in found:
        item["duration_s"] = seconds if len(found) == 1 else None
        _say(f"{item['status']:4}  {item['id']}: {item['message']}")
    checks.extend(found)


def rel_error(result: Any, reference: Any) -> float:
    """Normwise relative error ||result - reference|| / ||reference|| (both float64 tensors)."""
    return float((result - reference).norm() / reference.norm())


# --- torch -------------------------------------------------------------------------------------


def torch_checks(
    perf: bool, perf_seconds: float, load: dict[str, Any] | None = None
) -> dict[str, Any]:
    """`load`: level ("standard" or "full"), burn_seconds, mem_fraction, nccl_bytes."""
    load = load or {}
    checks: list[dict[str, Any]] = []
    measurements: list[dict[str, Any]] = []
    start = time.perf_counter()
    try:
        # The image holds one framework: import the one asked for, when asked.
        import torch as torch_module
    except Exception as exc:
        checks.append(
            _check(
                "framework.import",
                "fail",
                f"import torch failed: {exc}",
                fix="install torch in this environment, or use a cudabox image",
            )
        )
        return {"checks": checks, "measurements": measurements, "versions": {}, "gpus": []}
    torch: Any = torch_module  # used untyped, like every framework call in this file
    checks.append(
        _check("framework.import", "pass", f"torch {torch.__version__} imports", torch.__version__)
    )
    checks[-1]["duration_s"] = round(time.perf_counter() - start, 3)
    _say(f"pass  framework.import: torch {torch.__version__}")
    versions = {
        "framework": f"torch {torch.__version__}",
        "framework_cuda": torch.version.cuda,
        "cudnn": str(torch.backends.cudnn.version())
        if torch.backends.cudnn.is_available()
        else None,
        "python": platform.python_version(),
    }
    gpus: list[dict[str, Any]] = []
    _timed(checks, lambda: [_torch_cpu_matmul(torch)])
    built_for_cuda = torch.version.cuda is not None
    count = 0
    cuda_check = _torch_cuda_init(torch, built_for_cuda)
    checks.append(cuda_check)
    # The doctor judges a skip against NVML's GPU count, which it reads outside this script.
    cuda = {"built": torch.version.cuda, "error": cuda_check.pop("cuda_error", None)}
    _say(f"{cuda_check['status']:4}  {cuda_check['id']}: {cuda_check['message']}")
    if cuda_check["status"] == "pass":
        count = torch.cuda.device_count()
        versions["nccl"] = ".".join(str(p) for p in torch.cuda.nccl.version()) if count else None
        for index in range(count):
            props = torch.cuda.get_device_properties(index)
            uuid = str(getattr(props, "uuid", "") or "")
            gpus.append(
                {
                    "index": index,
                    "name": props.name,
                    "uuid": f"GPU-{uuid}" if uuid and not uuid.startswith("GPU-") else uuid or None,
                    "compute_capability": f"{props.major}.{props.minor}",
                }
            )
        for index in range(count):
            _timed(checks, lambda i=index: _torch_gpu_matmuls(torch, i))  # type: ignore[misc]
            _timed(checks, lambda i=index: [_torch_conv(torch, i)])  # type: ignore[misc]
        _timed(checks, lambda: [_torch_nccl(torch, count)])
        if perf:
            for index in range(count):
                uuid = gpus[index]["uuid"]
                with _numa_pinned(_pci_bus_id(torch, index)):
                    for fn in (
                        _perf_matmul_bf16,
                        _perf_matmul_tf32,
                        _perf_memory,
                        _perf_h2d,
                        _perf_d2h,
                        _perf_bidir,
                    ):
                        name = fn.__name__.removeprefix("_perf_")
                        _measure(
                            measurements,
                            f"perf.{name}.gpu{index}",
                            lambda f=fn, i=index: f(torch, i, perf_seconds),  # type: ignore[misc]
                            index,
                            uuid,
                        )
            for a in range(count):
                for b in range(count):
                    if a != b:
                        _measure(
                            measurements,
                            f"perf.p2p.gpu{a}-gpu{b}",
                            lambda a=a, b=b: _perf_p2p(torch, a, b, perf_seconds),  # type: ignore[misc]
                            a,
                            gpus[a]["uuid"],
                        )
            _measure(
                measurements,
                "perf.nccl_busbw",
                lambda: nccl_busbw(torch, count, load.get("nccl_bytes", NCCL_BYTES), "nccl"),
            )
        if load.get("level") == "full":
            for index in range(count):
                _measure(
                    measurements,
                    f"mem.pattern.gpu{index}",
                    lambda i=index: _gpu_pattern(torch, i, load.get("mem_fraction", MEM_FRACTION)),  # type: ignore[misc]
                    index,
                    gpus[index]["uuid"],
                )
            for found in burn_gpus(torch, count, load.get("burn_seconds", BURN_SECONDS)):
                found["gpu_uuid"] = gpus[found["gpu_index"]]["uuid"]
                measurements.append(found)
                _say(f"meas  {found['id']}: {found.get('error') or found.get('value')}")
    else:
        reason = cuda_check["message"]
        for name in ("matmul", "cudnn_conv", "nccl_allreduce"):
            checks.append(_check(f"framework.{name}", "skip", f"skipped: {reason}"))
    return {
        "checks": checks,
        "measurements": measurements,
        "versions": versions,
        "gpus": gpus,
        "cuda": cuda,
    }


def _torch_cpu_matmul(torch: Any) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(256, MATMUL_K, generator=gen)
    b = torch.randn(MATMUL_K, 256, generator=gen)
    err = rel_error((a @ b).double(), a.double() @ b.double())
    tol = TOLERANCE["fp32"]
    ok = err <= tol
    return _check(
        "framework.matmul.cpu",
        "pass" if ok else "fail",
        f"fp32 matmul on the CPU is off by {err:.2e} from float64 (tolerance {tol:.1e})",
        float(f"{err:.3e}"),
        float(f"{tol:.3e}"),
        fix="the CPU math library gives wrong results: reinstall the framework",
    )


def _torch_cuda_init(torch: Any, built_for_cuda: bool) -> dict[str, Any]:
    cid = "framework.cuda_init"
    if not built_for_cuda:
        return _check(cid, "skip", "no GPU: this torch is a CPU build")
    try:
        available = torch.cuda.is_available()
        count = torch.cuda.device_count()
    except Exception as exc:
        found = _check(
            cid,
            "fail",
            f"CUDA failed to initialise: {exc}",
            fix="see host.* and container.* checks; the driver must support CUDA "
            f"{torch.version.cuda}",
        )
        return {**found, "cuda_error": " ".join(str(exc).split()) or type(exc).__name__}
    if not available or count == 0:
        # is_available() hides the reason; asking for a device raises the driver's own words.
        try:
            torch.zeros(1, device="cuda")
            why = "no CUDA device"
        except Exception as exc:
            why = " ".join(str(exc).split()) or type(exc).__name__
        return {**_check(cid, "skip", f"no GPU: {why}"), "cuda_error": why}
    torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    return _check(
        cid,
        "pass",
        f"CUDA {torch.version.cuda} initialised with {count} GPU(s)",
        count,
        None,
        "GPUs",
    )


def _torch_gpu_matmuls(torch: Any, index: int) -> list[dict[str, Any]]:
    device = torch.device("cuda", index)
    major, _ = torch.cuda.get_device_capability(index)
    gen = torch.Generator().manual_seed(index)
    a = torch.randn(512, MATMUL_K, generator=gen)
    b = torch.randn(MATMUL_K, 512, generator=gen)
    reference = a.double() @ b.double()
    results = []
    saved = torch.backends.cuda.matmul.allow_tf32
    try:
        for dtype in ("fp32", "tf32", "bf16"):
            cid = f"framework.matmul.{dtype}.gpu{index}"
            if dtype != "fp32" and major < 8:
                results.append(
                    _check(cid, "skip", f"{dtype} needs compute capability 8.0 or newer")
                )
                continue
            torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
            if dtype == "bf16":
                out = a.to(device, torch.bfloat16) @ b.to(device, torch.bfloat16)
            else:
                out = a.to(device) @ b.to(device)
            err = rel_error(out.double().cpu(), reference)
            tol = TOLERANCE[dtype]
            ok = math.isfinite(err) and err <= tol
            results.append(
                _check(
                    cid,
                    "pass" if ok else "fail",
                    f"{dtype} matmul is off by {err:.2e} from the float64 reference (tolerance {tol:.1e})",
                    float(f"{err:.3e}"),
                    float(f"{tol:.3e}"),
                    fix="wrong GPU arithmetic: check host.ecc and host.clocks, run `dcgmi diag -r 3`, "
                    "and make sure the image's framework build supports this GPU",
                )
            )
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    return results


def _torch_conv(torch: Any, index: int) -> dict[str, Any]:
    cid = f"framework.cudnn_conv.gpu{index}"
    if not torch.backends.cudnn.is_available():
        return _check(
            cid,
            "fail",
            "cuDNN is not available to torch",
            fix="use an image whose torch ships cuDNN (every cudabox CUDA image does)",
        )
    import torch.nn.functional as F  # noqa: N812

    gen = torch.Generator().manual_seed(index)
    x = torch.randn(8, 16, 32, 32, generator=gen)
    w = torch.randn(32, 16, 3, 3, generator=gen)
    reference = F.conv2d(x.double(), w.double(), padding=1)
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        out = F.conv2d(x.to(f"cuda:{index}"), w.to(f"cuda:{index}"), padding=1)
        torch.cuda.synchronize(index)
    finally:
        torch.backends.cudnn.allow_tf32 = saved
    err = rel_error(out.double().cpu(), reference)
    ok = math.isfinite(err) and err <= CONV_TOLERANCE
    return _check(
        cid,
        "pass" if ok else "fail",
        f"cuDNN {torch.backends.cudnn.version()} convolution is off by {err:.2e} (tolerance {CONV_TOLERANCE:.0e})",
        float(f"{err:.3e}"),
        CONV_TOLERANCE,
        fix="cuDNN gives wrong results: check that the image's cuDNN matches its CUDA",
    )


def _torch_nccl(torch: Any, count: int) -> dict[str, Any]:
    cid = "framework.nccl_allreduce"
    if count < 2:
        return _check(cid, "skip", f"{count} GPU: an all-reduce needs two or more")
    tensors = [torch.full((1 << 20,), float(i + 1), device=f"cuda:{i}") for i in range(count)]
    if not torch.cuda.nccl.is_available(tensors):
        return _check(
            cid, "fail", "NCCL is not available to torch", fix="use a torch build with NCCL"
        )
    torch.cuda.nccl.all_reduce(tensors)
    for i in range(count):
        torch.cuda.synchronize(i)
    want = count * (count + 1) / 2
    got = [float(t[0].item()) for t in tensors]
    exact = all(float(t.min()) == want == float(t.max()) for t in tensors)
    return _check(
        cid,
        "pass" if exact else "fail",
        f"NCCL all-reduce over {count} GPUs: {'every GPU holds' if exact else 'got'} {got[0] if exact else got}",
        got[0],
        want,
        fix="check the GPU interconnect: `nvidia-smi topo -m`, NVLink/NVSwitch health "
        "(`nvidia-smi nvlink -s`), and NCCL_DEBUG=INFO output",
    )


def _bench(torch: Any, index: int, fn: Callable[[], Any], seconds: float) -> float:
    """Seconds per call of fn on GPU `index`, timed with CUDA events after a warm-up."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize(index)
    calls = 0
    begin = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    begin.record()
    wall = time.perf_counter()
    while calls < 5 or time.perf_counter() - wall < seconds:
        fn()
        calls += 1
        if calls % 5 == 0:
            torch.cuda.synchronize(index)
    end.record()
    torch.cuda.synchronize(index)
    return float(begin.elapsed_time(end)) / 1000 / calls


def _perf_matmul(
    torch: Any, index: int, seconds: float, dtype: Any, tf32: bool, name: str
) -> dict[str, Any]:
    n = 8192
    device = torch.device("cuda", index)
    with torch.cuda.device(index):
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        saved = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            per_call = _bench(torch, index, lambda: a @ b, seconds)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = saved
    return {
        "id": f"perf.{name}.gpu{index}",
        "value": round(2 * n**3 / per_call / 1e12, 1),
        "unit": "TFLOP/s",
        "detail": f"{n}x{n}x{n} on random data",
    }


def _perf_matmul_bf16(torch: Any, index: int, seconds: float) -> dict[str, Any]:
    if torch.cuda.get_device_capability(index)[0] < 8:
        return {
            "id": f"perf.matmul_bf16.gpu{index}",
            "error": "bf16 needs compute capability 8.0 or newer",
            "unsupported": True,
        }
    return _perf_matmul(torch, index, seconds, torch.bfloat16, False, "matmul_bf16")


def _perf_matmul_tf32(torch: Any, index: int, seconds: float) -> dict[str, Any]:
    if torch.cuda.get_device_capability(index)[0] < 8:
        return {
            "id": f"perf.matmul_tf32.gpu{index}",
            "error": "tf32 needs compute capability 8.0 or newer",
            "unsupported": True,
        }
    return _perf_matmul(torch, index, seconds, torch.float32, True, "matmul_tf32")


def _perf_memory(torch: Any, index: int, seconds: float) -> dict[str, Any]:
    size = 1 << 30  # 1 GiB each way, far beyond any L2
    with torch.cuda.device(index):
        src = torch.empty(size, dtype=torch.uint8, device=f"cuda:{index}")
        dst = torch.empty_like(src)
        per_call = _bench(torch, index, lambda: dst.copy_(src), seconds)
    return {
        "id": f"perf.mem_bandwidth.gpu{index}",
        "value": round(2 * size / per_call / 1e9, 1),
        "unit": "GB/s",
        "detail": "device-to-device copy of 1 GiB, bytes read plus written",
    }


def _perf_h2d(torch: Any, index: int, seconds: float) -> dict[str, Any]:
    size = 256 << 20
    with torch.cuda.device(index):
        host = torch.empty(size, dtype=torch.uint8).pin_memory()
        dev = torch.empty(size, dtype=torch.uint8, device=f"cuda:{index}")
        per_call = _bench(torch, index, lambda: dev.copy_(host, non_blocking=True), seconds)
    return {
        "id": f"perf.h2d_bandwidth.gpu{index}",
        "value": round(size / per_call / 1e9, 1),
        "unit": "GB/s",
        "detail": "pinned host-to-device copy of 256 MiB",
    }


def _measure(
    measurements: list[dict[str, Any]],
    cid: str,
    fn: Callable[[], dict[str, Any]],
    gpu_index: int | None = None,
    gpu_uuid: str | None = None,
) -> None:
    """Run one measurement; an exception is its error, never the end of the script."""
    start = time.perf_counter()
    try:
        found = {"id": cid, **fn()}
    except Exception as exc:
        found = {"id": cid, "error": f"{type(exc).__name__}: {exc}"}
    if gpu_index is not None:
        found.update(gpu_index=gpu_index, gpu_uuid=gpu_uuid)
    found["duration_s"] = round(time.perf_counter() - start, 3)
    measurements.append(found)
    shown = found.get("error") or f"{found.get('value')} {found.get('unit') or ''}"
    _say(f"meas  {cid}: {shown}")


# --- copies: pinned host memory, the process on the GPU's NUMA node ----------------------------


def _pci_bus_id(torch: Any, index: int) -> str | None:
    props = torch.cuda.get_device_properties(index)
    bus = getattr(props, "pci_bus_id", None)
    if bus is None:
        return None
    domain = getattr(props, "pci_domain_id", 0)
    device = getattr(props, "pci_device_id", 0)
    return f"{domain:04x}:{bus:02x}:{device:02x}.0"


def numa_cpus(bus_id: str | None, sys_root: str = "/sys") -> set[int] | None:
    """The CPUs of the NUMA node a PCI device sits on, when /sys tells it; else None."""
    if bus_id is None:
        return None
    try:
        root = Path(sys_root)
        node = int((root / "bus/pci/devices" / bus_id.lower() / "numa_node").read_text().strip())
        if node < 0:  # -1: a single-node machine, or firmware that does not say
            return None
        return parse_cpulist((root / f"devices/system/node/node{node}/cpulist").read_text())
    except (OSError, ValueError):
        return None


def parse_cpulist(text: str) -> set[int]:
    """'0-3,8-11' -> {0, 1, 2, 3, 8, 9, 10, 11} (the kernel's cpulist format)."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if "-" in part:
            low, high = part.split("-")
            cpus.update(range(int(low), int(high) + 1))
        elif part:
            cpus.add(int(part))
    return cpus


class _numa_pinned:  # noqa: N801 - used as a context manager, like contextlib's
    """Pin this process to the GPU's NUMA node for the copies: a copy across sockets measures
    the inter-socket link, not the GPU's (nvbandwidth and DCGM pin the same way)."""

    def __init__(self, bus_id: str | None) -> None:
        self.cpus = numa_cpus(bus_id)
        self.saved: set[int] | None = None

    def __enter__(self) -> None:
        if self.cpus and hasattr(os, "sched_setaffinity"):
            try:
                self.saved = os.sched_getaffinity(0)
                os.sched_setaffinity(0, self.cpus & self.saved or self.saved)
            except OSError:
                self.saved = None

    def __exit__(self, *exc: object) -> None:
        if self.saved is not None:
            os.sched_setaffinity(0, self.saved)


def _perf_d2h(torch: Any, index: int, seconds: float) -> dict[str, Any]:
    size = 256 << 20
    with torch.cuda.device(index):
        host = torch.empty(size, dtype=torch.uint8).pin_memory()
        dev = torch.empty(size, dtype=torch.uint8, device=f"cuda:{index}")
        per_call = _bench(torch, index, lambda: host.copy_(dev, non_blocking=True), seconds)
    return {
        "value": round(size / per_call / 1e9, 1),
        "unit": "GB/s",
        "detail": "device-to-host copy of 256 MiB into pinned memory",
    }


def _perf_bidir(torch: Any, index: int, seconds: float) -> dict[str, Any]:
    size = 256 << 20
    with torch.cuda.device(index):
        up = torch.empty(size, dtype=torch.uint8).pin_memory()
        down = torch.empty(size, dtype=torch.uint8).pin_memory()
        dev_in = torch.empty(size, dtype=torch.uint8, device=f"cuda:{index}")
        dev_out = torch.empty(size, dtype=torch.uint8, device=f"cuda:{index}")
        streams = (torch.cuda.Stream(index), torch.cuda.Stream(index))

        def both() -> None:
            with torch.cuda.stream(streams[0]):
                dev_in.copy_(up, non_blocking=True)
            with torch.cuda.stream(streams[1]):
                down.copy_(dev_out, non_blocking=True)

        per_call = _wall_bench(torch, [index], both, seconds)
    return {
        "value": round(2 * size / per_call / 1e9, 1),
        "unit": "GB/s",
        "detail": "host-to-device and device-to-host copies of 256 MiB at once, both counted",
    }


def _wall_bench(torch: Any, devices: list[int], fn: Callable[[], Any], seconds: float) -> float:
    """Seconds per call of fn, wall clock, with every device in `devices` synchronised."""
    fn()
    for d in devices:
        torch.cuda.synchronize(d)
    calls = 0
    start = time.perf_counter()
    while calls < 5 or time.perf_counter() - start < seconds:
        fn()
        calls += 1
        for d in devices:
            torch.cuda.synchronize(d)
    return (time.perf_counter() - start) / calls


def _perf_p2p(torch: Any, a: int, b: int, seconds: float) -> dict[str, Any]:
    if not torch.cuda.can_device_access_peer(a, b):
        return {
            "error": f"GPU {a} cannot reach GPU {b} directly (no peer access)",
            "unsupported": True,
        }
    size = 256 << 20
    src = torch.empty(size, dtype=torch.uint8, device=f"cuda:{a}")
    dst = torch.empty(size, dtype=torch.uint8, device=f"cuda:{b}")
    per_call = _wall_bench(torch, [a, b], lambda: dst.copy_(src, non_blocking=True), seconds)
    return {
        "value": round(size / per_call / 1e9, 1),
        "unit": "GB/s",
        "peer": b,
        "detail": f"GPU {a} to GPU {b}, 256 MiB, one direction",
    }


# --- NCCL all-reduce bus bandwidth: one process per GPU, as nccl-tests runs it ----------------

NCCL_BYTES = 4 << 30
NCCL_ITERS = 5


def nccl_busbw(torch: Any, count: int, size: int, backend: str) -> dict[str, Any]:
    """All-reduce of `size` bytes (float32) in `count` processes; nccl-tests' bus bandwidth."""
    if count < 2:
        return {
            "error": f"{count} GPU: an all-reduce bus bandwidth needs two or more",
            "unsupported": True,
        }
    mp: Any = importlib.import_module("torch.multiprocessing")
    with tempfile.TemporaryDirectory(prefix="cudabox-nccl-") as tmp:
        out = Path(tmp) / "rank0.json"
        mp.spawn(_allreduce_rank, args=(count, size, backend, tmp, out), nprocs=count, join=True)
        seconds = float(json.loads(out.read_text())["seconds"])
    algbw = size / seconds / 1e9
    return {
        "value": round(algbw * 2 * (count - 1) / count, 1),
        "unit": "GB/s",
        "gpus": count,
        "algbw": round(algbw, 1),
        "detail": f"all-reduce of {size >> 20} MiB float32 over {count} processes ({backend}), "
        "bus bandwidth = algbw x 2(n-1)/n",
    }


def _allreduce_rank(rank: int, world: int, size: int, backend: str, tmp: str, out: Path) -> None:
    # A fresh process per rank: it imports torch itself (the framework is imported when asked).
    import torch
    import torch.distributed as dist

    if backend == "nccl":
        torch.cuda.set_device(rank)  # before the group: NCCL binds each rank to its device
    dist.init_process_group(backend, init_method=f"file://{tmp}/store", world_size=world, rank=rank)
    try:
        device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
        data = torch.ones(size // 4, dtype=torch.float32, device=device)
        dist.all_reduce(data)  # warm-up: NCCL builds its rings and channels on the first call
        dist.barrier()
        if backend == "nccl":
            torch.cuda.synchronize(rank)
        start = time.perf_counter()
        for _ in range(NCCL_ITERS):
            dist.all_reduce(data)
        if backend == "nccl":
            torch.cuda.synchronize(rank)
        dist.barrier()
        seconds = (time.perf_counter() - start) / NCCL_ITERS
        if rank == 0:
            out.write_text(json.dumps({"seconds": seconds}))
    finally:
        dist.destroy_process_group()


# --- memory pattern test (level full) ----------------------------------------------------------

MEM_FRACTION = 0.9  # of the free memory; the rest is left for the driver and the comparisons
MEM_CHUNK = 256 << 20
PATTERNS = (0x00, 0xAA, 0x55, 0xFF)


def pattern_test(
    torch: Any,
    device: Any,
    size: int,
    chunk: int = MEM_CHUNK,
    after_fill: Callable[[list[Any]], None] | None = None,
) -> dict[str, Any]:
    """Write each pattern (0x00, 0xAA, 0x55, 0xFF, then each 8-byte word's own address) over
    `size` bytes in chunks, all of it before reading any back, and count the bytes that differ.

    `after_fill` sees the chunks after each fill (tests flip a bit there, as a failing cell would).
    """
    chunks = [
        torch.empty(min(chunk, size - start), dtype=torch.uint8, device=device)
        for start in range(0, size, chunk)
    ]
    mismatches: dict[str, int] = {}
    for pattern in PATTERNS:
        for c in chunks:
            c.fill_(pattern)
        if after_fill is not None:
            after_fill(chunks)
        mismatches[f"0x{pattern:02X}"] = sum(int(torch.count_nonzero(c != pattern)) for c in chunks)
    offset = 0
    for c in chunks:  # address in address: catches address-line faults that fixed bytes miss
        words = c[: c.numel() // 8 * 8].view(torch.int64)
        torch.arange(offset, offset + words.numel(), dtype=torch.int64, device=device, out=words)
        offset += words.numel()
    if after_fill is not None:
        after_fill(chunks)
    bad, offset = 0, 0
    for c in chunks:
        words = c[: c.numel() // 8 * 8].view(torch.int64)
        want = torch.arange(offset, offset + words.numel(), dtype=torch.int64, device=device)
        bad += int(torch.count_nonzero(words != want)) * 8  # a wrong word: up to 8 bytes wrong
        offset += words.numel()
        del want
    mismatches["address"] = bad
    total = sum(mismatches.values())
    del chunks
    return {
        "value": total,
        "unit": "bytes",
        "tested_bytes": size,
        "patterns": mismatches,
        "detail": f"{size / 2**30:.1f} GiB, patterns 0x00 0xAA 0x55 0xFF and address-in-address",
    }


def _gpu_pattern(torch: Any, index: int, fraction: float) -> dict[str, Any]:
    free, _total = torch.cuda.mem_get_info(index)
    # Room for one chunk's comparison mask and one arange beside the tested memory.
    size = max(0, int(free * fraction) - 3 * MEM_CHUNK) // MEM_CHUNK * MEM_CHUNK
    result = pattern_test(torch, torch.device("cuda", index), size)
    torch.cuda.synchronize(index)
    torch.cuda.empty_cache()
    return {**result, "free_bytes": free}


# --- burn (level full): bf16 matmuls on every GPU at once ---------------------------------------

BURN_SECONDS = 60.0
BURN_N = 8192


def burn(
    torch: Any, device: Any, seconds: float, n: int = BURN_N, dtype: Any = None
) -> dict[str, Any]:
    """Matmuls of fixed random inputs for `seconds`; TFLOP/s, and checksums of the product taken
    at the start and then every few seconds: the same inputs must give the same bits each time.

    cuBLAS gives bit-identical results run after run on GPUs of one architecture and SM count
    (cuBLAS documentation, "Results reproducibility"), one stream each as here: so a digest
    that changes, or differs from a sibling of the same model, is a wrong result."""
    dtype = dtype or torch.bfloat16
    gen = torch.Generator().manual_seed(17)  # the same inputs on every GPU of the node
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    is_cuda = getattr(device, "type", str(device)).startswith("cuda")

    def sync() -> None:
        if is_cuda:
            torch.cuda.synchronize(device)

    checksums = [_checksum(a @ b)]
    calls, last_sum = 0, time.perf_counter()
    sync()
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or calls == 0:
        out = a @ b
        calls += 1
        if calls % 20 == 0:
            sync()
            if time.perf_counter() - last_sum >= 5:
                checksums.append(_checksum(out))
                last_sum = time.perf_counter()
    sync()
    elapsed = time.perf_counter() - start
    checksums.append(_checksum(a @ b))
    return {
        # Significant figures, not decimals: a slow device's figure must not round to 0.
        "value": float(f"{2 * n**3 * calls / elapsed / 1e12:.4g}"),
        "unit": "TFLOP/s",
        "seconds": round(elapsed, 1),
        "checksums": sorted(set(checksums)),
        "detail": f"{calls} {n}x{n}x{n} matmuls in {elapsed:.1f} s",
    }


def _checksum(t: Any) -> str:
    """A digest of the tensor's bits (two results equal bit for bit digest alike)."""
    data = t.detach().contiguous().view(-1).view(dtype=_int_view(t))
    try:
        return hashlib.sha256(data.cpu().numpy().tobytes()).hexdigest()[:16]
    except (ImportError, RuntimeError):  # torch without numpy: two sums of the bits instead
        words = data.long()
        return f"{int(words.sum())}:{int((words * words).sum())}"


def _int_view(t: Any) -> Any:
    import torch  # only called where torch runs (the framework is imported when asked)

    return {2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]


def burn_gpus(torch: Any, count: int, seconds: float) -> list[dict[str, Any]]:
    """The burn on every GPU at once (a real job heats the whole node), one thread per GPU."""
    found: list[dict[str, Any]] = [{} for _ in range(count)]

    def one(index: int) -> None:
        started = time.perf_counter()
        try:
            with torch.cuda.device(index):
                result = burn(torch, torch.device("cuda", index), seconds)
        except Exception as exc:
            result = {"error": f"{type(exc).__name__}: {exc}"}
        found[index] = {
            "id": f"burn.gpu{index}",
            **result,
            "gpu_index": index,
            "duration_s": round(time.perf_counter() - started, 3),
        }

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return found


# --- tensorflow --------------------------------------------------------------------------------


def tensorflow_checks(perf: bool, perf_seconds: float) -> dict[str, Any]:
    checks: list[dict[str, Any]] = []
    start = time.perf_counter()
    try:
        # The image holds one framework: import the one asked for, when asked.
        import numpy as np
        import tensorflow as tf
    except Exception as exc:
        checks.append(
            _check(
                "framework.import",
                "fail",
                f"import tensorflow failed: {exc}",
                fix="install tensorflow in this environment, or use a cudabox image",
            )
        )
        return {"checks": checks, "measurements": [], "versions": {}, "gpus": []}
    checks.append(
        _check("framework.import", "pass", f"tensorflow {tf.__version__} imports", tf.__version__)
    )
    checks[-1]["duration_s"] = round(time.perf_counter() - start, 3)
    build = dict(tf.sysconfig.get_build_info())
    versions = {
        "framework": f"tensorflow {tf.__version__}",
        "framework_cuda": build.get("cuda_version"),
        "cudnn": build.get("cudnn_version"),
        "python": platform.python_version(),
    }
    rng = np.random.default_rng(0)
    a = rng.standard_normal((256, MATMUL_K)).astype(np.float32)
    b = rng.standard_normal((MATMUL_K, 256)).astype(np.float32)
    reference = a.astype(np.float64) @ b.astype(np.float64)

    def err_of(out: Any) -> float:
        diff = np.asarray(out, dtype=np.float64) - reference
        return float(np.linalg.norm(diff) / np.linalg.norm(reference))

    tf.config.experimental.enable_tensor_float_32_execution(False)
    with tf.device("/CPU:0"):
        err = err_of(tf.matmul(a, b))
    tol = TOLERANCE["fp32"]
    checks.append(
        _check(
            "framework.matmul.cpu",
            "pass" if err <= tol else "fail",
            f"fp32 matmul on the CPU is off by {err:.2e} (tolerance {tol:.1e})",
            float(f"{err:.3e}"),
            float(f"{tol:.3e}"),
            fix="reinstall tensorflow",
        )
    )
    devices = tf.config.list_physical_devices("GPU")
    gpus = [{"index": i, "name": d.name, "uuid": None} for i, d in enumerate(devices)]
    if not build.get("is_cuda_build"):
        checks.append(
            _check("framework.cuda_init", "skip", "no GPU: this tensorflow is a CPU build")
        )
    elif not devices:
        checks.append(_check("framework.cuda_init", "skip", "no GPU: tensorflow sees no GPU"))
    else:
        checks.append(
            _check("framework.cuda_init", "pass", f"{len(devices)} GPU(s) visible", len(devices))
        )
        for i in range(len(devices)):
            with tf.device(f"/GPU:{i}"):
                err = err_of(tf.matmul(a, b))
            checks.append(
                _check(
                    f"framework.matmul.fp32.gpu{i}",
                    "pass" if err <= tol else "fail",
                    f"fp32 matmul is off by {err:.2e} (tolerance {tol:.1e})",
                    float(f"{err:.3e}"),
                    float(f"{tol:.3e}"),
                    fix="wrong GPU arithmetic: check host.ecc and host.clocks",
                )
            )
    for item in checks:
        _say(f"{item['status']:4}  {item['id']}: {item['message']}")
    # The doctor judges a skip against NVML's GPU count, which it reads outside this script.
    cuda = {
        "built": build.get("cuda_version") if build.get("is_cuda_build") else None,
        "error": None if devices else "tensorflow sees no GPU (its log above says why)",
    }
    return {"checks": checks, "measurements": [], "versions": versions, "gpus": gpus, "cuda": cuda}


# --- NVML through ctypes, for the container layer (the image may lack nvidia-ml-py) ------------


def nvml_uuids() -> dict[str, Any]:
    """The GPUs NVML shows in this environment: {"uuids": [...]} or {"error": "..."}."""
    try:
        lib = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError as exc:
        return {"error": f"libnvidia-ml.so.1 is not here ({exc}): the container got no GPU driver"}
    init = getattr(lib, "nvmlInit_v2", None) or lib.nvmlInit
    if init() != 0:
        return {"error": "nvmlInit failed inside the container"}
    count = ctypes.c_uint(0)
    if lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
        return {"error": "nvmlDeviceGetCount failed inside the container"}
    uuids: list[str | None] = []
    for index in range(count.value):
        handle = ctypes.c_void_p()
        buffer = ctypes.create_string_buffer(96)
        if lib.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle)) != 0:
            uuids.append(None)
            continue
        lib.nvmlDeviceGetUUID(handle, buffer, 96)
        uuids.append(buffer.value.decode())
    driver = ctypes.create_string_buffer(96)
    lib.nvmlSystemGetDriverVersion(driver, 96)
    lib.nvmlShutdown()
    return {"uuids": uuids, "driver_version": driver.value.decode()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cudabox.doctor.gpu_checks", description=__doc__
    )
    parser.add_argument("--json", action="store_true", help="print the result line (always on)")
    parser.add_argument("--framework", choices=("torch", "tensorflow"), default="torch")
    parser.add_argument(
        "--no-perf", dest="perf", action="store_false", help="skip the performance figures"
    )
    parser.add_argument("--perf-seconds", type=float, default=0.5, help="timed seconds per figure")
    parser.add_argument("--nvml-uuids", action="store_true", help="only list NVML's GPU UUIDs")
    parser.add_argument(
        "--level", choices=("standard", "full"), default="standard", help="full: burn, memory"
    )
    parser.add_argument("--burn-seconds", type=float, default=BURN_SECONDS)
    parser.add_argument("--mem-fraction", type=float, default=MEM_FRACTION)
    parser.add_argument("--nccl-mib", type=int, default=NCCL_BYTES >> 20)
    args = parser.parse_args(argv)
    if args.nvml_uuids:
        result = nvml_uuids()
    elif args.framework == "torch":
        load = {
            "level": args.level,
            "burn_seconds": args.burn_seconds,
            "mem_fraction": args.mem_fraction,
            "nccl_bytes": args.nccl_mib << 20,
        }
        result = torch_checks(args.perf, args.perf_seconds, load)
    else:
        result = tensorflow_checks(args.perf, args.perf_seconds)
    sys.stdout.write(MARKER + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
