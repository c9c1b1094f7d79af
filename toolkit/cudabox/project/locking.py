"""`cudabox lock` for a project: its dependencies resolved once per candidate catalog image.

Per image: the project's framework pins (`torch>=2.14`) are checked against the image's own lock;
the project's other requirements are compiled by uv for the image's Python and platform, with
the image's pins as constraints; what the image already holds (its pins, the framework's image
packages) is dropped; each remaining wheel's installed size and top-level modules are read from
its file list (no download), and the compiled extensions' GPU code from the whole wheel. What
stops an image from serving the project is a fatal finding that leaves the image out; the lock
fails (exit 6) only when no image remains.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from cudabox.errors import CudaboxError, DataError, Unavailable
from cudabox.images.catalog import Catalog, ImageSpec
from cudabox.images.lock import PLATFORM, Pin, lock_digest, parse_lock
from cudabox.images.locking import find_uv
from cudabox.images.wheelsizes import (
    Sources,
    WheelSize,
    default_ca_bundle,
    fetch_wheel,
    parse_wheel_filename,
    sources_for,
    target_for,
    wheel_cache,
    wheel_sizes_each,
)
from cudabox.options import PackageSources
from cudabox.project.declaration import Project, candidate_images
from cudabox.project.fatbin import read_wheel
from cudabox.project.framework_packages import FrameworkPackages, load_framework_packages
from cudabox.project.lockfile import (
    LOCK_FILE,
    ImageLock,
    LockedPackage,
    ProjectLock,
    lock_inputs,
    read_lock,
    require_current,
)
from cudabox.versions import Arch

Kind = Literal[
    "framework-pin", "no-image-lock", "conflict", "unresolvable", "held-back", "no-wheel",
    "cuda-major", "archs",
]  # fmt: skip

_RELAX_FIX = "allow those images in [tool.cudabox] images, or relax the pin"
# The fatbin reader's facts about a wheel, cached beside it by digest (a wheel never changes).
_CODE_CACHE = "gpu-code.json"


@dataclass(frozen=True)
class Finding:
    """One named fact the lock found about the project on an image."""

    kind: Kind
    message: str
    fatal: bool = False  # leaves the image out of the lock

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


@dataclass(frozen=True)
class ImageOutcome:
    """What locking the project against one image gave: its entry, or why it has none."""

    spec: ImageSpec
    lock: ImageLock | None  # None: the image was left out (see the fatal findings)
    findings: tuple[Finding, ...]
    seconds: float
    # The image pins the project's resolution would change: always 0 (the pins are constraints),
    # counted so that the claim is checked, not assumed.
    base_pins_changed: int = 0

    @property
    def excluded(self) -> bool:
        return self.lock is None


@dataclass(frozen=True)
class LockOutcome:
    lock: ProjectLock
    images: tuple[ImageOutcome, ...]


@dataclass(frozen=True)
class _Resolution:
    """The pins uv chose; an error line when it could not."""

    pins: dict[str, Pin] = field(default_factory=dict)
    error: str | None = None


# ---- the whole project --------------------------------------------------------------------------


def lock_project(
    project: Project,
    catalog: Catalog,
    sources: PackageSources,
    *,
    previous: ProjectLock | None = None,
    upgrade: bool = False,
    upgrade_packages: Sequence[str] = (),
    cache: Path | None = None,
    packages: FrameworkPackages | None = None,
    report: Callable[[str], None] = lambda _: None,
) -> LockOutcome:
    """Lock the project against each of its candidate images (network: the indexes)."""
    packages = packages or load_framework_packages()
    candidates = candidate_images(project, catalog)
    if not candidates:
        raise DataError(
            f"{project.source}: no catalog image of framework {project.framework} is a candidate",
            "name catalog images in [tool.cudabox] images",
        )
    locker = _Locker(
        project, sources, packages, upgrade, tuple(upgrade_packages), cache or wheel_cache()
    )
    outcomes = []
    for spec in candidates:
        report(f"lock {project.name} against {spec.name}")
        entry = previous.get(spec.name) if previous is not None else None
        outcome = locker.lock_image(spec, entry)
        for finding in outcome.findings:
            if finding.kind != "archs":
                report(f"  {spec.name}: {finding}")
        report(
            f"  {spec.name}: "
            + (
                "left out"
                if outcome.lock is None
                else f"{len(outcome.lock.packages)} packages, {outcome.seconds:.1f} s"
            )
        )
        outcomes.append(outcome)
    kept = tuple(o.lock for o in outcomes if o.lock is not None)
    if not kept:
        raise _nothing_left(project, catalog, outcomes)
    lock = ProjectLock(project.name, lock_inputs(project, candidates), kept)
    return LockOutcome(lock, tuple(outcomes))


def check_lock(project: Project, catalog: Catalog, path: Path) -> ProjectLock:
    """The lock at `path` when it is current for the project and its images (no network);
    a missing or stale one is a DataError (exit 6) naming what changed."""
    lock = read_lock(path)
    require_current(project, lock, candidate_images(project, catalog), path)
    return lock


def previous_lock(path: Path) -> ProjectLock | None:
    """The lock to keep versions from; an unreadable one is started afresh."""
    try:
        return read_lock(path)
    except DataError:
        return None


def _nothing_left(
    project: Project, catalog: Catalog, outcomes: Sequence[ImageOutcome]
) -> DataError:
    fatal = [(o.spec.name, f) for o in outcomes for f in o.findings if f.fatal]
    if fatal and all(f.kind == "framework-pin" for _, f in fatal):
        pins = project.split().image
        have = "; ".join(f"{name}: {f.message}" for name, f in fatal)
        would = [
            spec.name for spec in catalog.for_framework(project.framework) if _pins_fit(pins, spec)
        ]
        fix = (
            f"{_RELAX_FIX}: {', '.join(would)} would satisfy it"
            if would
            else "relax the pin: no catalog image of the framework satisfies it"
        )
        return DataError(
            f"the project's {', '.join(pins)} fits none of its images ({have})",
            fix,
        )
    lines = "; ".join(f"{name}: {f}" for name, f in fatal)
    return DataError(
        f"no candidate image can serve the project {project.name} ({lines})",
        "fix what each finding names; then run `cudabox lock` again",
    )


def _pins_fit(requirements: Sequence[str], spec: ImageSpec) -> bool:
    if not spec.lock.is_file():
        return False
    pins = parse_lock(spec.lock.read_text(), str(spec.lock))
    return not _framework_findings(requirements, pins, spec)


def _framework_findings(
    requirements: Sequence[str], pins: dict[str, Pin], spec: ImageSpec
) -> list[Finding]:
    """A framework pin (`torch>=2.14`) the image's own version does not satisfy."""
    found = []
    for text in requirements:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        # tensorflow>=2.21 is met by the CPU image's tensorflow-cpu 2.21.0 (same-as).
        variants = load_framework_packages().variants(name)
        pin = next((pins[v] for v in variants if v in pins), None)
        if pin is None:
            found.append(
                Finding(
                    "framework-pin",
                    f"the project asks for {text}; the image {spec.name} has no {name}",
                    fatal=True,
                )
            )
        elif not requirement.specifier.contains(Version(pin.version), prereleases=True):
            found.append(
                Finding(
                    "framework-pin",
                    f"the project asks for {text}; the image has {pin.name} {pin.version}",
                    fatal=True,
                )
            )
    return found


# ---- one image --------------------------------------------------------------------------------


class _Locker:
    def __init__(
        self,
        project: Project,
        sources: PackageSources,
        packages: FrameworkPackages,
        upgrade: bool,
        upgrade_packages: tuple[str, ...],
        cache: Path,
    ) -> None:
        self.project = project
        self.sources = sources
        self.packages = packages
        self.upgrade = upgrade
        self.upgrade_packages = upgrade_packages
        self.cache = cache
        self.ca_bundle = sources.ca_cert or default_ca_bundle()
        self.split = project.split(packages)
        self.direct = {canonicalize_name(Requirement(r).name) for r in self.split.project}
        self._unconstrained: dict[tuple[str, str | None], _Resolution] = {}

    def lock_image(self, spec: ImageSpec, previous: ImageLock | None) -> ImageOutcome:
        start = time.monotonic()

        def out(
            lock: ImageLock | None, findings: Sequence[Finding], changed: int = 0
        ) -> ImageOutcome:
            return ImageOutcome(spec, lock, tuple(findings), time.monotonic() - start, changed)

        if not spec.lock.is_file():
            return out(
                None,
                [Finding("no-image-lock", f"{spec.lock} does not exist", fatal=True)],
            )
        pins = parse_lock(spec.lock.read_text(), str(spec.lock))
        findings = _framework_findings(self.split.image, pins, spec)
        if findings:
            return out(None, findings)
        if not self.split.project:
            return out(ImageLock(spec.name, lock_digest(spec.lock), ()), [])
        resolved = self._compile(spec, pins, previous)
        if resolved.error is not None:
            return out(None, [self._resolution_failed(resolved.error, pins)])
        changed = sum(
            1
            for name, pin in resolved.pins.items()
            if name in pins and pins[name].version != pin.version
        )
        held = self._held_back(spec, resolved.pins, pins)
        own = [
            pin
            for name, pin in resolved.pins.items()
            if name not in pins and not self.packages.from_image(name)
        ]
        sizes = wheel_sizes_each(
            own, self._sources(spec), target=target_for(spec), ca_bundle=self.ca_bundle
        )
        no_wheel = []
        for pin, size in zip(own, sizes, strict=True):
            if isinstance(size, DataError):
                no_wheel.append(_no_wheel(pin, spec, size))
            elif isinstance(size, CudaboxError):
                raise size
        if no_wheel:
            return out(None, [*no_wheel, *held], changed)
        wheels = [s for s in sizes if isinstance(s, WheelSize)]
        codes = self._gpu_code(wheels)
        locked = []
        code_findings: list[Finding] = []
        image_major = spec.cuda.major if spec.cuda is not None else None
        for pin, size in zip(own, wheels, strict=True):
            sass, ptx, runtime = codes.get(size.filename, ((), (), ()))
            locked.append(
                LockedPackage(
                    name=pin.name,
                    version=pin.version,
                    hashes=pin.hashes,
                    installed_bytes=size.installed_bytes,
                    modules=size.modules,
                    direct=pin.name in self.direct,
                    sass=sass,
                    ptx=ptx,
                    cuda_runtime=runtime,
                )
            )
            other = [m for m in runtime if m != image_major]
            if other:
                has = f"CUDA {spec.cuda}" if spec.cuda is not None else "no CUDA (a CPU image)"
                code_findings.append(
                    Finding(
                        "cuda-major",
                        f"{pin.name}=={pin.version} ({size.filename}) has extensions linking libcudart.so."
                        f"{', '.join(str(m) for m in other)}, but the image {spec.name} has {has}: "
                        "it fails at import (torchvision: `operator torchvision::nms does not "
                        "exist`) or at its first GPU call; lock the build of it for the image "
                        f"({_build_index(spec)} in [tool.cudabox] index-urls), or leave the image "
                        "out ([tool.cudabox] images)",
                        fatal=True,
                    )
                )
            if sass or ptx:
                code_findings.append(
                    Finding(
                        "archs",
                        f"{pin.name}=={pin.version}: SASS {_archs(sass)}, PTX {_archs(ptx)}",
                    )
                )
        if any(f.fatal for f in code_findings):
            return out(None, [*code_findings, *held], changed)
        warnings = tuple(str(f) for f in held)
        lock = ImageLock(spec.name, lock_digest(spec.lock), tuple(locked), warnings)
        return out(lock, [*held, *code_findings], changed)

    # -- uv ---------------------------------------------------------------------------------------

    def _index_args(self, spec: ImageSpec) -> list[str]:
        args: list[str] = []
        if self.sources.index_url:
            args += ["--index-url", self.sources.index_url]
        for folder in self.sources.wheelhouses:
            args += ["--find-links", str(folder)]
        for url in self.project.settings.index_urls:
            args += ["--extra-index-url", url]
        if spec.index_url and not self.sources.wheelhouses:
            # The framework's own index (torch +cpu) on top: pick the best match across both.
            args += ["--extra-index-url", spec.index_url]
        if spec.index_url or self.project.settings.index_urls:
            args += ["--index-strategy", "unsafe-best-match"]
        return args

    def _sources(self, spec: ImageSpec) -> Sources:
        base = sources_for(
            spec, mirror=self.sources.index_url, wheelhouses=self.sources.wheelhouses
        )
        extra = tuple(u for u in self.project.settings.index_urls if u not in base.index_urls)
        return Sources(base.index_urls + extra, base.wheelhouses)

    def _uv(
        self,
        spec: ImageSpec,
        requirements: Sequence[str],
        *,
        constraints: dict[str, Pin] | None,
        seed: str | None,
        hashes: bool,
    ) -> _Resolution:
        with tempfile.TemporaryDirectory(prefix="cudabox-project-lock-") as tmp:
            folder = Path(tmp)
            (folder / "project.in").write_text("\n".join(requirements) + "\n")
            output = folder / "project.txt"
            if seed is not None:
                output.write_text(seed)
            command = [
                find_uv(),
                "pip",
                "compile",
                "--python-version",
                spec.python,
                "--python-platform",
                PLATFORM,
                "--no-header",
                "--quiet",
                *(["--generate-hashes"] if hashes else []),
                *self._index_args(spec),
            ]
            if constraints is not None:
                (folder / "image.txt").write_text(
                    "".join(f"{p.name}=={p.version}\n" for p in constraints.values())
                )
                command += ["--constraint", "image.txt"]
                if self.upgrade:
                    command.append("--upgrade")
                for name in self.upgrade_packages:
                    command += ["--upgrade-package", name]
            command += ["-o", output.name, "project.in"]
            env = {k: v for k, v in os.environ.items() if not k.startswith("UV_")}
            if self.ca_bundle is not None:
                env["SSL_CERT_FILE"] = str(self.ca_bundle)
            proc = subprocess.run(
                command, cwd=folder, capture_output=True, text=True, env=env, check=False
            )
            if proc.returncode != 0:
                return _Resolution(error=_uv_error(proc.stderr, spec))
            text = output.read_text()
        if not hashes:
            return _Resolution(pins=_plain_pins(text))
        return _Resolution(pins=parse_lock(text, f"uv's lock of {self.project.name}"))

    def _compile(
        self, spec: ImageSpec, pins: dict[str, Pin], previous: ImageLock | None
    ) -> _Resolution:
        # uv prefers the versions already in its output file: relocking changes nothing the
        # project does not ask to change (--upgrade drops them).
        seed = previous.requirements_text() if previous is not None and not self.upgrade else None
        return self._uv(spec, self.split.project, constraints=pins, seed=seed, hashes=True)

    def _resolution_failed(self, error: str, pins: dict[str, Pin]) -> Finding:
        named = [
            p
            for p in pins.values()
            if re.search(rf"(?<![\w.-]){re.escape(p.name)}(?![\w-])", error)
        ]
        asks = [
            r
            for r in self.split.project
            if re.search(
                rf"(?<![\w.-]){re.escape(canonicalize_name(Requirement(r).name))}(?![\w-])",
                error.lower().replace("_", "-"),
            )
        ]
        if named:
            theirs = ", ".join(f"{p.name}=={p.version}" for p in named)
            what = (
                f"the project's {', '.join(asks) or 'requirements'} and the image's "
                f"pin{'s' if len(named) > 1 else ''} {theirs} cannot both hold"
            )
            return Finding("conflict", f"{what} (uv: {error})", fatal=True)
        return Finding("unresolvable", f"uv cannot resolve the project: {error}", fatal=True)

    def _held_back(
        self, spec: ImageSpec, got: dict[str, Pin], pins: dict[str, Pin]
    ) -> list[Finding]:
        """Direct dependencies the image's pins hold back (older major.minor than unconstrained)."""
        key = (spec.python, spec.index_url)
        if key not in self._unconstrained:
            self._unconstrained[key] = self._uv(
                spec, self.split.project, constraints=None, seed=None, hashes=False
            )
        free = self._unconstrained[key]
        if free.error is not None:
            return []  # nothing to compare with; the constrained lock stands
        # What the unconstrained resolution would change in the image: why the hold. A newer
        # pin is only what an unconstrained resolution picks anyway; an older one, or another
        # framework version, is what the held-back dependency's newer release asks for.
        changed = [
            (name, pins[name].version, pin.version)
            for name, pin in free.pins.items()
            if name in pins and _release(pins[name].version) != _release(pin.version)
        ]
        if not changed:
            return []  # held by the previous lock's versions, not by the image
        blocking = [
            c for c in changed if self.packages.from_image(c[0]) or _older(c[2], c[1])
        ] or changed
        # The framework itself first (torch), then the rest; a CUDA stack can be a dozen pins.
        blocking.sort(key=lambda c: (c[0] != self.project.framework, c[0]))
        replaced = [f"{name} {old} with {new}" for name, old, new in blocking[:4]]
        if len(blocking) > 4:
            replaced.append(f"and {len(blocking) - 4} more of its pins")
        found = []
        for name in sorted(self.direct):
            mine, theirs = got.get(name), free.pins.get(name)
            if mine is None or theirs is None:
                continue
            if _minor(mine.version) < _minor(theirs.version):
                found.append(
                    Finding(
                        "held-back",
                        f"{name} is locked at {mine.version} on {spec.name}, but unconstrained it "
                        f"resolves to {theirs.version}: the image's pins hold it back (the newer "
                        f"one would replace {', '.join(replaced)}); pin {name} to what you need, "
                        "or use an image whose pins allow it",
                    )
                )
        return found

    # -- the GPU code of compiled extensions ---------------------------------------------------

    def _gpu_code(
        self, wheels: Sequence[WheelSize]
    ) -> dict[str, tuple[tuple[Arch, ...], tuple[Arch, ...], tuple[int, ...]]]:
        compiled = [w for w in wheels if not _pure(w.filename)]
        if not compiled:
            return {}
        with ThreadPoolExecutor(max_workers=min(4, len(compiled))) as pool:
            results = list(pool.map(self._code_of, compiled))
        return {w.filename: code for w, code in zip(compiled, results, strict=True)}

    def _code_of(
        self, wheel: WheelSize
    ) -> tuple[tuple[Arch, ...], tuple[Arch, ...], tuple[int, ...]]:
        memo = (
            self.cache / wheel.sha256[:2] / wheel.sha256 / _CODE_CACHE
            if wheel.sha256 and not wheel.local
            else None
        )
        if memo is not None and memo.is_file():
            try:
                data = json.loads(memo.read_text())
                return (
                    tuple(Arch.parse(a) for a in data["sass"]),
                    tuple(Arch.parse(a) for a in data["ptx"]),
                    tuple(int(m) for m in data["cuda_runtime"]),
                )
            except (ValueError, KeyError, TypeError):
                pass  # read the wheel again
        code = read_wheel(fetch_wheel(wheel, self.cache, ca_bundle=self.ca_bundle))
        result = (code.code.sass, code.code.ptx, code.cuda_runtime_majors)
        if memo is not None:
            memo.parent.mkdir(parents=True, exist_ok=True)
            memo.write_text(
                json.dumps(
                    {
                        "sass": [str(a) for a in result[0]],
                        "ptx": [str(a) for a in result[1]],
                        "cuda_runtime": list(result[2]),
                    }
                )
            )
        return result


# ---- helpers --------------------------------------------------------------------------------------


def _build_index(spec: ImageSpec) -> str:
    if spec.index_url:
        return f"its index, {spec.index_url},"
    return "the index of the build for its CUDA"


def _no_wheel(pin: Pin, spec: ImageSpec, error: DataError) -> Finding:
    target = target_for(spec)
    listed = re.search(r"\(its hashes match ([^)]*)\)", error.message)
    files = f" ({listed[1]})" if listed else ""
    where = f"cp{target.python[0]}{target.python[1]} manylinux_{target.glibc[0]}_{target.glibc[1]}_{target.arch}"
    return Finding(
        "no-wheel",
        f"{pin.name}=={pin.version} has no wheel for the image's platform ({where}), only an "
        f"sdist or other platforms' wheels{files}, and the image installs wheels only; put a "
        "wheel of it in a wheelhouse (--wheelhouse DIR), or pin a version that has wheels",
        fatal=True,
    )


def _uv_error(stderr: str, spec: ImageSpec) -> str:
    """uv's key line: the 'Because ...' of a failed resolution, else its first error line."""
    # uv draws its error as a tree (x, corner, dash, arrow, bar) on a terminal; strip that.
    lines = [line.strip(" \u00d7\u2570\u2500\u25b6\u2502") for line in stderr.splitlines()]
    lines = [re.sub(r"^(?:cause|error):\s*", "", line).strip() for line in lines if line.strip()]
    if any("Failed to fetch" in line or "error sending request" in line for line in lines):
        raise Unavailable(
            f"{spec.name}: uv could not reach an index: {' '.join(lines)[:500]}",
            "check the network or proxy, or pass --index-url (a mirror) or --wheelhouse DIR",
        )
    because = [line for line in lines if line.startswith("Because") or " because " in line]
    return (because or lines or ["uv pip compile failed"])[0]


def _plain_pins(text: str) -> dict[str, Pin]:
    pins: dict[str, Pin] = {}
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line.strip())
        if match:
            name = canonicalize_name(match[1])
            pins[name] = Pin(name, match[2], ())
    return pins


def _pure(filename: str) -> bool:
    wheel = parse_wheel_filename(filename)
    return wheel is not None and all(tag.platform == "any" for tag in wheel.tags)


def _minor(version: str) -> tuple[int, ...]:
    try:
        release = Version(version).release
    except InvalidVersion:
        return ()
    return (*release, 0, 0)[:2]


def _older(version: str, than: str) -> bool:
    try:
        return Version(version) < Version(than)
    except InvalidVersion:
        return False


def _release(version: str) -> str:
    try:
        return Version(version).base_version
    except InvalidVersion:
        return version


def _archs(archs: Sequence[Arch]) -> str:
    return " ".join(str(a) for a in archs) or "-"


__all__ = [
    "LOCK_FILE",
    "Finding",
    "ImageOutcome",
    "LockOutcome",
    "check_lock",
    "lock_project",
    "previous_lock",
]
