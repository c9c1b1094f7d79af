"""Runs the doctor's layers in order and gathers one DoctorReport.

quick: host + engine. standard: + container, framework, performance. full: + training.
--here: host, framework, performance and training in this Python, without an engine.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cudabox import __version__
from cudabox.container import ContainerEngine
from cudabox.doctor import container_layer, engine_layer, host_layer, perf, training_layer
from cudabox.doctor.model import Check, DoctorReport, Level, check
from cudabox.errors import CudaboxError
from cudabox.host import HostProfile
from cudabox.images.catalog import ImageSpec, load_catalog
from cudabox.nvml import GpuHealth, HostHealth, read_host
from cudabox.output import progress
from cudabox.resolver import select

SCRIPT_TIMEOUT = 600.0
TRAIN_TIMEOUT = 900.0
ENGINE_TIMEOUT = 60.0  # an engine call that takes longer has stopped answering
PERF_IDS = ("perf.matmul_bf16", "perf.matmul_tf32", "perf.mem_bandwidth", "perf.h2d_bandwidth")


@dataclass(frozen=True)
class Options:
    framework: str = "torch"
    image: str = "auto"
    level: Level = "standard"
    here: bool = False
    perf_seconds: float = 0.5


@dataclass
class Environment:
    """Where the doctor reads from; tests replace the pieces."""

    nvml_lib: Any = None  # None: the real pynvml
    connect: Callable[[], ContainerEngine] | None = None  # None: cudabox.engine.Engine
    pci_root: Path = Path("/sys/bus/pci/devices")
    proc_version: Path = Path("/proc/driver/nvidia/version")
    say: Callable[[str], None] = progress


@dataclass
class Doctor:
    options: Options
    env: Environment = field(default_factory=Environment)
    checks: list[Check] = field(default_factory=list)
    versions: dict[str, str | None] = field(default_factory=dict)
    unavailable: str | None = None  # why a layer the level needs could not run at all

    # -- bookkeeping --

    def add(self, found: Check | Sequence[Check], started: float | None = None) -> None:
        items = [found] if isinstance(found, Check) else list(found)
        for item in items:
            if started is not None and item.duration_s is None and len(items) == 1:
                item = item.timed(time.perf_counter() - started)
            self.checks.append(item)
            self.env.say(f"  {item.status:4}  {item.id:34} {item.message}")

    def layer(self, name: str) -> None:
        self.env.say(f"[{name}]")

    # -- the run --

    def run(self) -> DoctorReport:
        o = self.options
        self.layer("host")
        started = time.perf_counter()
        reading = read_host(self.env.nvml_lib, with_health=True)
        profile = reading.profile
        assert reading.health is not None  # asked for with_health
        readings = host_layer.HostReadings(
            health=reading.health,
            profile=profile,
            pci_gpus=host_layer.read_pci_gpus(self.env.pci_root),
            kernel_module=host_layer.read_kernel_module(self.env.proc_version),
        )
        self.add(host_layer.host_checks(readings), started)
        self.versions.update(driver=profile.driver_version, cuda_driver=profile.cuda_driver_version)
        image: ImageSpec | None = None
        engine: ContainerEngine | None = None
        try:
            if not o.here:
                engine = self._engine_layer(profile)
            if o.level != "quick":
                result: dict[str, Any] | None = None
                why = "the framework checks did not run"
                if o.here:
                    result = self._here_script()
                elif engine is None:
                    why = "no container engine to run the image in"
                else:
                    image = self._pick_image(profile)
                    if image is not None:
                        result, why = self._container_layer(engine, image, profile)
                    else:
                        why = "no image fits this host"
                self._framework_and_perf(result, readings.health, why)
            if o.level == "full":
                self._training(engine, image, profile)
        finally:
            if engine is not None:
                engine.close()
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
        )

    def _engine_layer(self, profile: HostProfile) -> ContainerEngine | None:
        self.layer("engine")
        started = time.perf_counter()
        engine: ContainerEngine | None = None
        try:
            if self.env.connect is not None:
                engine = self.env.connect()
            else:
                from cudabox.engine import Engine

                engine = Engine.connect(read_timeout=ENGINE_TIMEOUT)
            view = engine.description
        except CudaboxError as exc:
            if engine is not None:
                engine.close()
            self.add(engine_layer.unreachable(exc.message, exc.fix), started)
            self.unavailable = exc.message
            return None
        self.versions["engine"] = f"{view.name} {view.version}"
        self.add(engine_layer.engine_checks(view, profile), started)
        return engine

    def _pick_image(self, profile: HostProfile) -> ImageSpec | None:
        catalog = load_catalog()
        if self.options.image != "auto":
            return catalog.get(self.options.image)  # UsageError (exit 2) names the choices
        selection = select(catalog, [profile], self.options.framework, "auto")
        if selection.selected is None:
            self.layer("container")
            self.add(
                check(
                    "container.image",
                    "container",
                    "fail",
                    f"no {self.options.framework} image fits this host: {selection.message}",
                    fix=selection.fix,
                )
            )
        return selection.selected

    def _container_layer(
        self, engine: ContainerEngine, image: ImageSpec, profile: HostProfile
    ) -> tuple[dict[str, Any] | None, str]:
        self.layer("container")
        self.versions["image"] = image.tag
        started = time.perf_counter()
        facts = engine.image(image.tag)
        self.add(container_layer.image_check(image, facts), started)
        if facts is None:
            return None, f"image {image.tag} is not built"
        self.add(container_layer.require_cuda_check(image, facts, profile))
        started = time.perf_counter()
        gpus = container_layer.gpus_check(engine, image, profile, timeout=120)
        self.add(gpus, started)
        self.layer("framework")
        args = [
            "--json",
            "--framework",
            image.framework,
            "--perf-seconds",
            str(self.options.perf_seconds),
        ]
        with_gpus = bool(profile.gpus) and gpus.status == "pass"
        result, why = container_layer.run_script(engine, image, args, with_gpus, SCRIPT_TIMEOUT)
        if result is None:
            self.add(
                check(
                    "framework.run",
                    "framework",
                    "fail",
                    why,
                    fix=f"run `cudabox run --image {image.name} -- python -c 'import {image.framework}'` to see the error",
                )
            )
        return result, why

    def _here_script(self) -> dict[str, Any] | None:
        self.layer("framework")
        command = [
            sys.executable,
            "-m",
            "cudabox.doctor.gpu_checks",
            "--json",
            "--framework",
            self.options.framework,
            "--perf-seconds",
            str(self.options.perf_seconds),
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
            self.add(
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

    def _framework_and_perf(
        self, result: dict[str, Any] | None, host: HostHealth, why: str
    ) -> None:
        if result is None:
            if not any(c.layer == "framework" for c in self.checks):
                self.layer("framework")
                self.add(check("framework.run", "framework", "skip", why))
            self.layer("performance")
            for cid in PERF_IDS:
                self.add(check(cid, "performance", "skip", why))
            return
        for key, value in dict(result.get("versions") or {}).items():
            self.versions[str(key)] = None if value is None else str(value)
        for item in result.get("checks") or []:
            try:
                self.add(Check.from_json(item))
            except CudaboxError as exc:
                # The in-image script is ours: a malformed answer is its failure, not the user's.
                self.add(
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
        self.layer("performance")
        measurements = list(result.get("measurements") or [])
        if not measurements:
            cuda = next((c for c in self.checks if c.id == "framework.cuda_init"), None)
            if cuda is not None and cuda.status == "pass":
                why = f"performance figures are measured with torch only, not {self.options.framework}"
            else:
                why = cuda.message if cuda is not None else "no GPU"
            for cid in PERF_IDS:
                self.add(check(cid, "performance", "skip", why))
            return
        by_uuid = {g.uuid: g for g in host.gpus if g.uuid}
        by_index: dict[int, GpuHealth] = {g.index: g for g in host.gpus}
        self.add(perf.perf_checks(measurements, by_uuid, by_index))

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
        self.add(found, started)
