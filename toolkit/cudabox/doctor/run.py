"""Runs the doctor's layers in order and gathers one DoctorReport.

quick: host + engine. standard: + container, framework, performance. full: + training.
--here: host, framework, performance and training in this Python, without an engine.
"""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cudabox import __version__
from cudabox.choice import Request, catalog_candidates, choose
from cudabox.container import ContainerEngine
from cudabox.doctor import container_layer, engine_layer, host_layer, perf, training_layer
from cudabox.doctor.model import Check, DoctorReport, Level, Readings, Sample, XidRecord, check
from cudabox.errors import CudaboxError, NoImageFits, UsageError
from cudabox.health import GpuHealth, HostHealth
from cudabox.host import HostProfile
from cudabox.images.catalog import ImageSpec, load_catalog
from cudabox.nvml import XidWatch, read_host, sample_gpus
from cudabox.output import progress

SCRIPT_TIMEOUT = 600.0
TRAIN_TIMEOUT = 900.0
ENGINE_TIMEOUT = 60.0  # an engine call that takes longer has stopped answering
PERF_IDS = (
    "perf.matmul_bf16",
    "perf.matmul_tf32",
    "perf.mem_bandwidth",
    "perf.h2d_bandwidth",
    "perf.d2h_bandwidth",
    "perf.bidir_bandwidth",
    "perf.nccl_busbw",
)
FULL_IDS = ("mem.pattern", "burn.tflops", "burn.checksum")  # level full only


@dataclass(frozen=True)
class Options:
    framework: str = "torch"
    image: str = "auto"
    level: Level = "standard"
    here: bool = False
    perf_seconds: float = 0.5
    burn_seconds: float = 60.0  # level full: the bf16 burn on every GPU


@dataclass
class Environment:
    """Where the doctor reads from; tests replace the pieces."""

    nvml_lib: Any = None  # None: the real pynvml
    connect: Callable[[], ContainerEngine] | None = None  # None: cudabox.engine.Engine
    pci_root: Path = Path("/sys/bus/pci/devices")
    proc_version: Path = Path("/proc/driver/nvidia/version")
    kernel_xids: Callable[[Sequence[GpuHealth]], tuple[tuple[XidRecord, ...], str | None]] = (
        host_layer.read_kernel_xids
    )
    say: Callable[[str], None] = progress


@dataclass
class Doctor:
    """Reads, then judges each part as soon as its readings are in (progress as it goes).

    Every verdict on the host, framework and performance layers is a pure function of the
    `Readings` (`judge_host`, `judge_framework`); `replay` calls the same functions on a report's
    recorded readings. Engine, container and training checks come from doing something and are
    kept in the readings as `observed`.
    """

    options: Options
    env: Environment = field(default_factory=Environment)
    checks: list[Check] = field(default_factory=list)
    versions: dict[str, str | None] = field(default_factory=dict)
    unavailable: str | None = None  # why a layer the level needs could not run at all
    observed: list[Check] = field(default_factory=list)
    shown_layer: str | None = None

    # -- bookkeeping --

    def add(self, found: Check | Sequence[Check], started: float | None = None) -> None:
        items = [found] if isinstance(found, Check) else list(found)
        for item in items:
            if started is not None and item.duration_s is None and len(items) == 1:
                item = item.timed(time.perf_counter() - started)
            self.checks.append(item)
            self.env.say(f"  {item.status:4}  {item.id:34} {item.message}")

    def observe(self, found: Check | Sequence[Check], started: float | None = None) -> None:
        """A check whose verdict came from doing something: kept as it is for a replay."""
        before = len(self.checks)
        self.add(found, started)
        self.observed.extend(self.checks[before:])

    def layer(self, name: str) -> None:
        if name != self.shown_layer:
            self.env.say(f"[{name}]")
        self.shown_layer = name

    # -- the run --

    def run(self) -> DoctorReport:
        o = self.options
        self.layer("host")
        started = time.perf_counter()
        reading = read_host(self.env.nvml_lib, with_health=True)
        profile = reading.profile
        assert reading.health is not None  # asked for with_health
        readings = Readings(
            host=reading.health,
            pci_gpus=host_layer.read_pci_gpus(self.env.pci_root),
            kernel_module=host_layer.read_kernel_module(self.env.proc_version),
        )
        self.add(judge_host(readings, profile), started)
        self.versions.update(driver=profile.driver_version, cuda_driver=profile.cuda_driver_version)
        image: ImageSpec | None = None
        engine: ContainerEngine | None = None
        watch = XidWatch(self.env.nvml_lib).__enter__()  # NVML's Xid events while the GPUs work
        try:
            if not o.here:
                engine = self._engine_layer(profile)
            if o.level != "quick":
                result: dict[str, Any] | None = None
                why = "the framework checks did not run"
                with_gpus = bool(profile.gpus)
                load = Load(self.env.nvml_lib, sample=o.level == "full" and bool(profile.gpus))
                with load:
                    if o.here:
                        result = self._here_script()
                    elif engine is None:
                        why = "no container engine to run the image in"
                    else:
                        image = self._pick_image(profile)
                        if image is not None:
                            result, why, with_gpus = self._container_layer(engine, image, profile)
                        else:
                            why = "no image fits this host"
                readings = replace(
                    readings,
                    framework=result,
                    framework_note=None if result is not None else why,
                    framework_gpus=with_gpus,
                    samples=load.samples,
                    sample_note=load.note,
                    host_after=load.after if result is not None and profile.gpus else None,
                    load_seconds=load.seconds,
                )
                self._framework_and_perf(readings, profile)
            if o.level == "full":
                self._training(engine, image, profile)
        finally:
            watch.__exit__(None, None, None)
            if engine is not None:
                engine.close()
        xids, notes = host_layer.gather_xids(watch, self.env.kernel_xids(reading.health.gpus))
        readings = replace(readings, xids=xids, xid_notes=notes)
        self.layer("host")
        self.add(host_layer.xid_check(readings.xids, readings.xid_notes))
        return DoctorReport(
            cudabox_version=__version__,
            timestamp=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            level=o.level,
            framework=o.framework,
            image=image.name if image else None,
            here=o.here,
            host=profile,
            checks=tuple(self.checks),
            versions=self.versions,
            readings=replace(readings, observed=tuple(self.observed)),
        )

    def _engine_layer(self, profile: HostProfile) -> ContainerEngine | None:
        self.layer("engine")
        started = time.perf_counter()
        engine: ContainerEngine | None = None
        try:
            if self.env.connect is not None:
                engine = self.env.connect()
            else:
                # The Docker SDK loads only for a level that needs an engine (never for --replay).
                from cudabox.engine import Engine

                engine = Engine.connect(read_timeout=ENGINE_TIMEOUT)
            view = engine.description
        except CudaboxError as exc:
            if engine is not None:
                engine.close()
            self.observe(engine_layer.unreachable(exc.message, exc.fix), started)
            self.unavailable = exc.message
            return None
        self.versions["engine"] = f"{view.name} {view.version}"
        self.observe(engine_layer.engine_checks(view, profile), started)
        return engine

    def _pick_image(self, profile: HostProfile) -> ImageSpec | None:
        # A catalog name that does not exist is a UsageError (exit 2) naming the choices.
        request = Request(self.options.framework, image=self.options.image)
        try:
            return choose(request, [profile], catalog_candidates(load_catalog())).image
        except NoImageFits as exc:
            self.layer("container")
            self.observe(
                check(
                    "container.image",
                    "container",
                    "fail",
                    f"no {self.options.framework} image fits this host: {exc.message}",
                    fix=exc.fix,
                )
            )
            return None

    def _container_layer(
        self, engine: ContainerEngine, image: ImageSpec, profile: HostProfile
    ) -> tuple[dict[str, Any] | None, str, bool]:
        """(the in-image result or None, why not, whether it ran with the GPUs)."""
        self.layer("container")
        self.versions["image"] = image.tag
        started = time.perf_counter()
        facts = engine.image(image.tag)
        self.observe(container_layer.image_check(image, facts), started)
        if facts is None:
            return None, f"image {image.tag} is not built", False
        self.observe(container_layer.require_cuda_check(image, facts, profile))
        started = time.perf_counter()
        gpus = container_layer.gpus_check(engine, image, profile, timeout=120)
        self.observe(gpus, started)
        self.layer("framework")
        with_gpus = bool(profile.gpus) and gpus.status == "pass"
        result, why = container_layer.run_script(
            engine, image, self._script_args(image.framework), with_gpus, SCRIPT_TIMEOUT
        )
        if result is None:
            self.observe(
                check(
                    "framework.run",
                    "framework",
                    "fail",
                    why,
                    fix=f"run `cudabox run --image {image.name} -- python -c 'import {image.framework}'` to see the error",
                )
            )
        return result, why, with_gpus

    def _script_args(self, framework: str) -> list[str]:
        o = self.options
        return [
            "--json",
            "--framework",
            framework,
            "--perf-seconds",
            str(o.perf_seconds),
            "--level",
            "full" if o.level == "full" else "standard",
            "--burn-seconds",
            str(o.burn_seconds),
        ]

    def _here_script(self) -> dict[str, Any] | None:
        self.layer("framework")
        command = [
            sys.executable,
            "-m",
            "cudabox.doctor.gpu_checks",
            *self._script_args(self.options.framework),
        ]
        started = time.perf_counter()
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT, check=False
            )
            result = container_layer.parse_result(done.stdout)
        except (subprocess.TimeoutExpired, ValueError) as exc:
            result, done = None, None
            reason = str(exc)
        if result is None:
            reason = (done.stderr.strip().splitlines() or ["no output"])[-1] if done else reason
            self.observe(
                check(
                    "framework.run",
                    "framework",
                    "fail",
                    f"the framework checks crashed: {reason}",
                    fix=f"run `{' '.join(command[:3])}` to see the error",
                ),
                started,
            )
        return result

    def _framework_and_perf(self, readings: Readings, profile: HostProfile) -> None:
        if readings.framework is not None:
            for key, value in dict(readings.framework.get("versions") or {}).items():
                self.versions[str(key)] = None if value is None else str(value)
        framework = judge_framework(
            readings, profile, self.options.framework, self.checks, self.options.level
        )
        self.layer("framework")
        self.add([c for c in framework if c.layer == "framework"])
        self.layer("performance")
        self.add([c for c in framework if c.layer != "framework"])

    def _training(
        self, engine: ContainerEngine | None, image: ImageSpec | None, profile: HostProfile
    ) -> None:
        self.layer("training")
        started = time.perf_counter()
        if self.options.here:
            found = training_layer.train_here(self.options.framework, TRAIN_TIMEOUT)
        elif engine is None or image is None:
            found = check(
                training_layer.CID, "training", "skip", "no engine or no image to train in"
            )
        else:
            passed = next((c for c in self.checks if c.id == "container.gpus"), None)
            gpus = bool(profile.gpus) and passed is not None and passed.status == "pass"
            found = training_layer.train_in_image(engine, image, gpus, TRAIN_TIMEOUT)
        self.observe(found, started)


class Load:
    """Around the framework script: NVML sampled each second while it runs (level full), and
    the GPUs read again after it (ECC and PCIe replay deltas). Never raises for a missing driver."""

    def __init__(self, lib: Any, sample: bool, interval: float = 1.0) -> None:
        self.lib, self.sample, self.interval = lib, sample, interval
        self.samples: tuple[Sample, ...] = ()
        self.note: str | None = None if sample else "NVML is sampled at level full only"
        self.after: HostHealth | None = None
        self.seconds: float | None = None
        self._stop = threading.Event()
        self._found: list[Any] = []
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Load:
        self._started = time.monotonic()
        if self.sample:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        self._found = sample_gpus(self.lib, SCRIPT_TIMEOUT + 60, self.interval, self._stop)

    def __exit__(self, *exc: object) -> None:
        self.seconds = round(time.monotonic() - self._started, 3)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self.samples = tuple(
                Sample(
                    index=s.index,
                    t=s.t,
                    temperature_c=s.temperature_c,
                    sm_clock_mhz=s.sm_clock_mhz,
                    power_w=s.power_w,
                    clock_event_reasons=s.clock_event_reasons,
                )
                for s in self._found
            )
            if not self.samples:
                self.note = "NVML gave no samples (no driver, or no GPU answered)"
        self.after = read_host(self.lib, with_health=True).health


# --- judging: pure functions of the readings, shared by the live run and --replay -------------


def judge_host(readings: Readings, profile: HostProfile) -> list[Check]:
    if readings.host is None:
        return []
    return host_layer.host_checks(
        host_layer.HostReadings(
            health=readings.host,
            profile=profile,
            pci_gpus=readings.pci_gpus,
            kernel_module=readings.kernel_module,
        )
    )


def judge_framework(
    readings: Readings,
    profile: HostProfile,
    framework: str,
    before: Sequence[Check] = (),
    level: str = "standard",
) -> list[Check]:
    """The framework and performance checks from the in-image result; `before` are the checks
    judged or observed earlier in the run (a container failure already explains a skip)."""
    out: list[Check] = []
    result = readings.framework
    if result is None:
        why = readings.framework_note or "the framework checks did not run"
        if not any(c.layer == "framework" for c in before):
            out.append(check("framework.run", "framework", "skip", why))
        skipped = PERF_IDS + (FULL_IDS if level == "full" else ())
        out.extend(check(cid, "performance", "skip", why) for cid in skipped)
        return out
    for item in result.get("checks") or []:
        try:
            found = Check.from_json(item)
        except CudaboxError as exc:
            # The in-image script is ours: a malformed answer is its failure, not the user's.
            out.append(
                check(
                    "framework.run",
                    "framework",
                    "fail",
                    f"the framework checks answered something malformed: {exc.message}",
                    fix="run the image's checks by hand to see what they print "
                    "(`cudabox run -- python -m cudabox.doctor.gpu_checks --json`)",
                )
            )
            break
        if found.id == "framework.cuda_init":
            found = cuda_init_check(found, result, readings, profile)
        out.append(found)
    measurements = list(result.get("measurements") or [])
    if not measurements:
        cuda = next((c for c in out if c.id == "framework.cuda_init"), None)
        if cuda is not None and cuda.status == "pass":
            why = f"performance figures are measured with torch only, not {framework}"
        elif cuda is not None and cuda.status == "fail":
            why = f"CUDA did not start (see framework.cuda_init): {cuda.value or cuda.message}"
        else:
            why = cuda.message if cuda is not None else "no GPU"
        skipped = PERF_IDS + (FULL_IDS if level == "full" else ())
        out.extend(check(cid, "performance", "skip", why) for cid in skipped)
        return out
    host = readings.host
    gpus = host.gpus if host is not None else ()
    by_uuid = {g.uuid: g for g in gpus if g.uuid}
    by_index: dict[int, GpuHealth] = {g.index: g for g in gpus}
    out.extend(perf.perf_checks(measurements, by_uuid, by_index))
    burned = sorted(
        int(m.get("gpu_index") or 0) for m in measurements if str(m["id"]).startswith("burn.")
    )
    if burned:
        out.extend(perf.throttle_checks(readings.samples, burned, readings.sample_note))
    out.extend(perf.ecc_delta_checks(host, readings.host_after))
    out.extend(perf.replay_delta_checks(host, readings.host_after, readings.load_seconds))
    return out


def cuda_init_check(
    found: Check, result: Mapping[str, Any], readings: Readings, profile: HostProfile
) -> Check:
    """A framework built for CUDA that sees no GPU where NVML lists some is a failure, not a skip.

    The script cannot tell "no GPU" from "CUDA cannot start": only NVML's count, read outside
    it, can. The common cause is CUDA error 802 on NVSwitch systems whose fabric manager is down
    or of another version than the driver (pytorch/pytorch#35710, NVIDIA/gpu-operator#1043).
    """
    cuda = result.get("cuda")
    if not isinstance(cuda, Mapping) or not cuda.get("built"):
        return found
    if found.status == "fail" and cuda.get("error"):
        return replace(found, fix=cuda_error_fix(str(cuda["error"])))
    if found.status != "skip":
        return found
    host = readings.host
    listed = len(profile.visible_gpus) if host is not None and host.status == "ok" else 0
    if listed == 0 or not readings.framework_gpus:
        return found  # no GPU to see, or the container was started without them
    error = str(cuda.get("error") or "the framework sees no GPU")
    return check(
        found.id,
        found.layer,
        "fail",
        f"NVML lists {listed} GPU(s) but CUDA {cuda.get('built')} cannot start: "
        f"{short_cuda_error(error)}",
        short_cuda_error(error),
        f"{listed} GPU(s)",
        fix=cuda_error_fix(error),
    )


def short_cuda_error(error: str) -> str:
    """'Error 802: system not yet initialized' out of the framework's longer text."""
    found = re.search(r"error (\d+): ([^.;()]+)", error, re.IGNORECASE)
    if found:
        return f"Error {found[1]}: {found[2].strip()}"
    return error if len(error) <= 120 else error[:117] + "..."


def cuda_error_fix(error: str) -> str:
    """The fix for a CUDA initialisation error, by the runtime's error number or words."""
    text = error.lower()
    for numbers, words, fix in CUDA_INIT_FIXES:
        if any(f"error {n}" in text or f"error: {n}" in text for n in numbers) or any(
            w in text for w in words
        ):
            return fix
    return (
        'see host.* and container.* checks; `python -c "import torch; torch.zeros(1, '
        "device='cuda')\"` shows the driver's own error, and `dmesg | grep -i nvrm` the kernel's"
    )


# cudaError_t numbers and texts from the CUDA Runtime API reference (docs/facts.md section 10 cites it).
CUDA_INIT_FIXES: tuple[tuple[tuple[int, ...], tuple[str, ...], str], ...] = (
    (
        (802,),
        ("system not yet initialized",),
        "on NVSwitch systems (HGX/DGX) CUDA waits for the fabric manager: start "
        "nvidia-fabricmanager of exactly the driver's version (`systemctl enable --now "
        "nvidia-fabricmanager`; `nvidia-smi -q | grep -A2 Fabric` must say Completed), or "
        "restart it after a driver upgrade",
    ),
    (
        (803,),
        ("system has unsupported display driver", "driver mismatch"),
        "the CUDA user-mode driver (libcuda) and the kernel module differ: reload the NVIDIA "
        "kernel modules or reboot; in a container, do not ship libcuda in the image",
    ),
    (
        (804,),
        ("forward compatibility was attempted on non supported hw",),
        "CUDA forward compatibility works only on datacenter GPUs: remove the cuda-compat "
        "libraries from LD_LIBRARY_PATH, or upgrade the driver",
    ),
    (
        (35,),
        ("driver version is insufficient",),
        "the driver is older than the CUDA this framework was built for: upgrade the driver "
        "(see container.require_cuda), or use an image built for an older CUDA",
    ),
    (
        (100,),
        ("no cuda-capable device",),
        "CUDA sees no device although NVML lists some: check CUDA_VISIBLE_DEVICES and "
        "NVIDIA_VISIBLE_DEVICES, and the permissions of /dev/nvidia*",
    ),
)


def replay(report: DoctorReport) -> DoctorReport:
    """Judge a report's recorded readings again with today's rules; the host is not touched."""
    readings = report.readings
    if readings is None:
        raise UsageError(
            f"{report.source or 'the report'} has no readings (doctor schema 1, or written "
            "without them): there is nothing to judge again",
            "run `cudabox doctor --json FILE` with this cudabox on that node, and replay that file",
        )
    observed = list(readings.observed)
    checks: list[Check] = judge_host(readings, report.host)
    checks += [c for c in observed if c.layer in ("engine", "container", "framework")]
    if report.level != "quick":
        checks += judge_framework(readings, report.host, report.framework, checks, report.level)
    checks += [c for c in observed if c.layer == "training"]
    checks.append(host_layer.xid_check(readings.xids, readings.xid_notes))
    return replace(report, checks=tuple(checks), source=report.source)
