"""Framework and performance checks that run where the framework is: in an image, or `--here`.

    python -m cudabox.doctor.gpu_checks --json [--framework torch|tensorflow] [--no-perf]

Standard library plus the framework only, so that the doctor can also ship this file's text into
any image and run it with `python -c`. Progress goes to stderr; the result is one stdout line
that starts with MARKER. Framework checks are judged here (the tolerances need only the dtype);
performance figures are only measured here and judged by the doctor against data/gpu_perf.toml.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import platform
import sys
import time
from collections.abc import Callable
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


def torch_checks(perf: bool, perf_seconds: float) -> dict[str, Any]:
    checks: list[dict[str, Any]] = []
    measurements: list[dict[str, Any]] = []
    start = time.perf_counter()
    try:
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
                for fn in (_perf_matmul_bf16, _perf_matmul_tf32, _perf_memory, _perf_h2d):
                    start = time.perf_counter()
                    try:
                        found = fn(torch, index, perf_seconds)
                    except Exception as exc:
                        found = {
                            "id": f"perf.{fn.__name__.removeprefix('_perf_')}.gpu{index}",
                            "error": f"{type(exc).__name__}: {exc}",
                        }
                    found.update(
                        gpu_index=index,
                        gpu_uuid=gpus[index]["uuid"],
                        duration_s=round(time.perf_counter() - start, 3),
                    )
                    measurements.append(found)
                    shown = found.get("error") or f"{found.get('value')} {found.get('unit')}"
                    _say(f"meas  {found['id']}: {shown}")
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


# --- tensorflow --------------------------------------------------------------------------------


def tensorflow_checks(perf: bool, perf_seconds: float) -> dict[str, Any]:
    checks: list[dict[str, Any]] = []
    start = time.perf_counter()
    try:
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
    args = parser.parse_args(argv)
    if args.nvml_uuids:
        result = nvml_uuids()
    elif args.framework == "torch":
        result = torch_checks(args.perf, args.perf_seconds)
    else:
        result = tensorflow_checks(args.perf, args.perf_seconds)
    sys.stdout.write(MARKER + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
