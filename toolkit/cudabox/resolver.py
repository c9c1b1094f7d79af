"""Which catalog image fits a host (or every host of a fleet), and why the others do not.

A pure function of data: host profiles + catalog + compatibility facts -> verdicts. Nothing here
touches NVML, Docker or the file system.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from cudabox.compat import Compat, load_compat
from cudabox.host import Gpu, HostProfile
from cudabox.images.catalog import Catalog, Extension, ImageSpec, rank_key
from cudabox.versions import Arch, DriverVersion

Flavor = Literal["auto", "cuda", "cpu"]
Coverage = Literal["sass", "ptx", "none"]


@dataclass(frozen=True)
class Reason:
    """One fact about an image on a host. Blocking reasons rule the image out; others inform."""

    # "flavor", "no-gpu", "gpu-error", "arch", "extension", "extension-cuda", "driver",
    # "ptx-driver", "note"
    kind: str
    text: str
    host: str | None = None
    fix: str | None = None
    blocking: bool = True
    needs_driver: DriverVersion | None = None  # for driver blockers: the upgrade that lifts it

    def render(self, with_host: bool) -> str:
        return f"{self.host}: {self.text}" if with_host and self.host else self.text


@dataclass(frozen=True)
class Verdict:
    image: ImageSpec
    reasons: tuple[Reason, ...]

    @property
    def fits(self) -> bool:
        return not any(r.blocking for r in self.reasons)

    @property
    def blockers(self) -> tuple[Reason, ...]:
        return tuple(r for r in self.reasons if r.blocking)


@dataclass(frozen=True)
class Selection:
    framework: str
    flavor: Flavor
    hosts: tuple[HostProfile, ...]
    verdicts: tuple[Verdict, ...]  # every image of the framework, best first
    selected: ImageSpec | None
    message: str | None = None  # why nothing was selected
    fix: str | None = None
    notes: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        fleet = len(self.hosts) > 1
        chosen = self.selected
        return {
            "framework": self.framework,
            "flavor": self.flavor,
            "hosts": [h.name for h in self.hosts],
            "selected": None
            if chosen is None
            else {
                "name": chosen.name,
                "framework_version": chosen.framework_version,
                "flavor": chosen.flavor,
                "cuda": str(chosen.cuda) if chosen.cuda else None,
                "cudnn": chosen.cudnn,
                "tag": chosen.tag,
                "project": chosen.project,
            },
            "message": self.message,
            "fix": self.fix,
            "candidates": [
                {
                    "name": v.image.name,
                    "framework_version": v.image.framework_version,
                    "flavor": v.image.flavor,
                    "cuda": str(v.image.cuda) if v.image.cuda else None,
                    "tag": v.image.tag,
                    "project": v.image.project,  # a project's image: its name, else None
                    "extensions": [
                        {
                            "name": e.name,
                            "version": e.version,
                            "sass": [str(a) for a in e.sass_archs],
                            "ptx": [str(a) for a in e.ptx_archs],
                        }
                        for e in v.image.extensions
                    ],
                    "fits": v.fits,
                    "reasons": [r.render(fleet) for r in v.reasons],
                    "blockers": [
                        {"kind": r.kind, "host": r.host, "text": r.text, "fix": r.fix}
                        for r in v.blockers
                    ],
                }
                for v in self.verdicts
            ],
        }


def gpu_coverage(gpu_cc: tuple[int, int], image: ImageSpec, compat: Compat) -> Coverage:
    """How an image's kernels reach a GPU: its own SASS, PTX to JIT, or not at all."""
    return arch_coverage(gpu_cc, image.sass_archs, image.ptx_archs, compat)


def arch_coverage(
    gpu_cc: tuple[int, int],
    sass_archs: Sequence[Arch],
    ptx_archs: Sequence[Arch],
    compat: Compat,
) -> Coverage:
    """How compiled GPU code (a framework's, an extension's) reaches a GPU."""
    tegra = compat.is_tegra(gpu_cc)
    for arch in sass_archs:
        if sass_runs_on(arch, gpu_cc, tegra):
            return "sass"
    for arch in ptx_archs:
        if ptx_runs_on(arch, gpu_cc):
            return "ptx"
    return "none"


def sass_runs_on(arch: Arch, gpu_cc: tuple[int, int], gpu_is_tegra: bool) -> bool:
    """A cubin for X.y runs on X.z (z >= y); never across majors, Tegra or arch-specific targets."""
    if arch.suffix == "a":
        return arch.cc == gpu_cc
    if gpu_is_tegra:
        # Desktop and Tegra cubins are not binary compatible; only an exact Tegra build runs.
        return arch.cc == gpu_cc
    return arch.major == gpu_cc[0] and arch.minor <= gpu_cc[1]


def ptx_runs_on(arch: Arch, gpu_cc: tuple[int, int]) -> bool:
    """PTX for X.y JIT-compiles for any GPU of capability >= X.y (arch-specific PTX excepted)."""
    if arch.suffix == "a":
        return arch.cc == gpu_cc
    return arch.cc <= gpu_cc


def judge(image: ImageSpec, host: HostProfile, compat: Compat) -> list[Reason]:
    """Every fact that decides whether `image` runs on `host`."""
    name = host.name
    if not image.is_cuda:
        if host.visible_gpus:
            return [
                Reason("note", "runs on the CPU; the host's GPUs stay unused", name, blocking=False)
            ]
        return []

    gpus = host.visible_gpus
    if not gpus:
        why = host.message or "no NVIDIA GPU is visible"
        return [
            Reason("no-gpu", f"no usable NVIDIA GPU ({why})", name, host.fix or "use --flavor cpu")
        ]

    reasons: list[Reason] = []
    ptx_gpus: list[Gpu] = []
    for gpu in gpus:
        if gpu.cc is None:
            reasons.append(
                Reason(
                    "gpu-error",
                    f"{gpu.label} could not be read: {gpu.error or 'unknown error'}",
                    name,
                    gpu.fix,
                )
            )
            continue
        coverage = gpu_coverage(gpu.cc, image, compat)
        if coverage == "none":
            reasons.append(Reason("arch", _arch_text(gpu, image), name, _arch_fix(gpu, image)))
        elif coverage == "ptx":
            ptx_gpus.append(gpu)
            reasons.append(
                Reason(
                    "note",
                    f"{gpu.label} runs JIT-compiled PTX (no SASS for it): the first start compiles kernels",
                    name,
                    blocking=False,
                )
            )
    reasons.extend(_extension_reasons(gpus, image, name, compat))
    reasons.extend(_driver_reasons(image, host, gpus, ptx_gpus, compat))
    return reasons


def image_reasons(image: ImageSpec) -> list[Reason]:
    """What rules an image out on any host: an extension linking another CUDA runtime major."""
    if image.cuda is None:
        return []
    reasons = []
    for ext in image.extensions:
        if ext.cuda_runtime and image.cuda.major not in ext.cuda_runtime:
            linked = " and ".join(f"libcudart.so.{m}" for m in ext.cuda_runtime)
            reasons.append(
                Reason(
                    "extension-cuda",
                    f"{ext.name} {ext.version} links {linked}; the image has CUDA {image.cuda}",
                    fix=f"lock a build of {ext.name} for CUDA {image.cuda.major}, or use an image "
                    f"of CUDA {ext.cuda_runtime[0]}",
                )
            )
    return reasons


def _extension_reasons(
    gpus: Sequence[Gpu], image: ImageSpec, host: str | None, compat: Compat
) -> list[Reason]:
    """Each compiled extension's GPU code must reach every GPU, as the framework's must: one
    reason per extension and kind of GPU it misses (a GPU that could not be read is said above)."""
    reasons = []
    kinds = {(g.name, g.cc): g for g in gpus if g.cc is not None}  # the first GPU of each kind
    for ext in image.extensions:
        for gpu in kinds.values():
            assert gpu.cc is not None
            coverage = arch_coverage(gpu.cc, ext.sass_archs, ext.ptx_archs, compat)
            sm = f"sm_{gpu.cc[0]}{gpu.cc[1]}"
            if coverage == "none":
                reasons.append(
                    Reason(
                        "extension",
                        f"{ext.name} {ext.version} has {_ext_archs(ext)} only; {gpu.label} is {sm}",
                        host,
                        f"lock a build of {ext.name} with {sm} (or PTX for an older compute "
                        "capability), or use another image",
                    )
                )
            elif coverage == "ptx":
                reasons.append(
                    Reason(
                        "note",
                        f"{ext.name} {ext.version} runs JIT-compiled PTX on {gpu.label} (no {sm})",
                        host,
                        blocking=False,
                    )
                )
    return reasons


def _ext_archs(ext: Extension) -> str:
    sass = [f"sm_{a.major}{a.minor}{a.suffix}" for a in ext.sass_archs]
    ptx = [f"compute_{a.major}{a.minor}{a.suffix}" for a in ext.ptx_archs]
    return " ".join(sass + ptx) or "no GPU code"


def _arch_text(gpu: Gpu, image: ImageSpec) -> str:
    sass = " ".join(f"sm_{a.major}{a.minor}{a.suffix}" for a in image.sass_archs) or "none"
    ptx = " ".join(f"compute_{a.major}{a.minor}{a.suffix}" for a in image.ptx_archs) or "none"
    return f"{gpu.label} has no kernels in this image (SASS: {sass}; PTX: {ptx})"


def _arch_fix(gpu: Gpu, image: ImageSpec) -> str:
    return f"use an image whose {image.framework} build includes CC {gpu.compute_capability}, or hide the GPU with CUDA_VISIBLE_DEVICES"


def _driver_reasons(
    image: ImageSpec,
    host: HostProfile,
    gpus: Sequence[Gpu],
    ptx_gpus: Sequence[Gpu],
    compat: Compat,
) -> list[Reason]:
    assert image.cuda is not None
    name = host.name
    if host.driver_version is None:
        return [
            Reason("driver", "no NVIDIA driver version is known", name, "install the NVIDIA driver")
        ]
    try:
        driver = DriverVersion.parse(host.driver_version)
    except ValueError as exc:
        return [
            Reason(
                "driver", str(exc), name, "regenerate the host profile with `cudabox probe --json`"
            )
        ]
    supported = host.driver_cuda or compat.cuda_for_driver(driver)
    if supported is None:
        return [
            Reason(
                "driver",
                f"driver {driver} predates every CUDA release cudabox knows",
                name,
                _upgrade(image, compat),
            )
        ]

    wanted = image.cuda
    if supported >= wanted:
        return []

    floor = compat.minor_version_floor(wanted.major)
    if supported.major == wanted.major and floor is not None and driver >= floor:
        ptx_from = image.ptx_cuda or wanted
        if ptx_gpus and supported < ptx_from:
            labels = ", ".join(g.label for g in ptx_gpus)
            needed = compat.toolkit_driver(ptx_from)
            return [
                Reason(
                    "ptx-driver",
                    f"driver {driver} supports CUDA {supported}; {labels} relies on PTX JIT of PTX from "
                    f"CUDA {ptx_from}, which does not load on an older driver",
                    name,
                    f"upgrade the NVIDIA driver to >= {needed}"
                    if needed
                    else "upgrade the NVIDIA driver",
                    needs_driver=needed,
                )
            ]
        return [
            Reason(
                "note",
                f"driver {driver} supports CUDA {supported}; runs CUDA {wanted} through minor-version compatibility",
                name,
                blocking=False,
            )
        ]

    consumer = [g for g in gpus if g.is_consumer]
    if image.forward_compat and not consumer:
        return [
            Reason(
                "note",
                f"driver {driver} supports CUDA {supported}; runs CUDA {wanted} through the image's forward-compatibility libraries",
                name,
                blocking=False,
            )
        ]
    text = f"driver {driver} supports CUDA {supported}; the image needs CUDA >= {wanted.major}.0"
    if floor is not None:
        text += f", which needs a driver >= {floor}"
    if image.forward_compat and consumer:
        text += f"; forward compatibility is not available on {consumer[0].name}"
    return [
        Reason(
            "driver",
            text,
            name,
            _upgrade(image, compat),
            needs_driver=floor or compat.toolkit_driver(wanted),
        )
    ]


def _upgrade(image: ImageSpec, compat: Compat) -> str:
    assert image.cuda is not None
    floor = compat.minor_version_floor(image.cuda.major)
    full = compat.toolkit_driver(image.cuda)
    if floor is not None and full is not None and full != floor:
        return f"upgrade the NVIDIA driver to >= {floor} (>= {full} for every CUDA {image.cuda} feature)"
    target = floor or full
    return f"upgrade the NVIDIA driver to >= {target}" if target else "upgrade the NVIDIA driver"


def select(
    catalog: Catalog,
    hosts: Sequence[HostProfile],
    framework: str,
    flavor: Flavor = "auto",
    compat: Compat | None = None,
) -> Selection:
    """Judge every image of `framework` on every host; pick the newest release, then newest CUDA."""
    compat = compat or load_compat()
    if not hosts:
        raise ValueError("select() needs at least one host profile")
    images = sorted(catalog.for_framework(framework), key=rank_key, reverse=True)
    wanted = _effective_flavor(flavor, hosts)
    verdicts: list[Verdict] = []
    for image in images:
        reasons: list[Reason] = []
        if image.flavor != wanted:
            why = f"--flavor {flavor}" if flavor != "auto" else _auto_why(wanted)
            reasons.append(Reason("flavor", f"not considered: {why}"))
        reasons.extend(image_reasons(image))
        for host in hosts:
            reasons.extend(judge(image, host, compat))
        verdicts.append(Verdict(image, tuple(reasons)))
    chosen = next((v.image for v in verdicts if v.fits), None)
    if chosen is not None:
        return Selection(framework, flavor, tuple(hosts), tuple(verdicts), chosen)
    message, fix = _explain_no_fit(framework, wanted, verdicts, compat, fleet=len(hosts) > 1)
    return Selection(framework, flavor, tuple(hosts), tuple(verdicts), None, message, fix)


def _effective_flavor(flavor: Flavor, hosts: Sequence[HostProfile]) -> str:
    if flavor != "auto":
        return flavor
    return "cuda" if any(h.visible_gpus for h in hosts) else "cpu"


def _auto_why(wanted: str) -> str:
    return (
        "a GPU is visible, so --flavor auto means cuda"
        if wanted == "cuda"
        else "no GPU is visible, so --flavor auto means cpu"
    )


def _explain_no_fit(
    framework: str, wanted: str, verdicts: Sequence[Verdict], compat: Compat, fleet: bool
) -> tuple[str, str]:
    considered = [v for v in verdicts if v.image.flavor == wanted]
    if not considered:
        return f"the catalog has no {framework} {wanted} image", "add one to images/catalog.toml"
    cpu_hint = "; or use --flavor cpu" if wanted == "cuda" else ""
    driver_only = [
        v
        for v in considered
        if all(r.kind in ("driver", "ptx-driver") and r.needs_driver for r in v.blockers)
    ]
    if driver_only:
        # Some image is held back by the driver alone: name the smallest upgrade that makes one fit.
        def upgrade(v: Verdict) -> DriverVersion:
            return max(r.needs_driver for r in v.blockers if r.needs_driver is not None)

        best = min(driver_only, key=lambda v: (upgrade(v), v.image.name))
        first = best.blockers[0]
        host = f"{first.host}: " if fleet and first.host else ""
        detail = first.text.split(";")[0]
        needed = upgrade(best)
        if first.kind == "driver" and best.image.cuda is not None:
            message = f"{host}{detail}; the {framework} images need CUDA >= {best.image.cuda.major}.0, which needs a driver >= {needed}"
        else:
            message = f"{host}{first.text}"
        return (
            message,
            f"upgrade the NVIDIA driver to >= {needed} ({best.image.name} then fits){cpu_hint}",
        )
    top = considered[0]
    first = top.blockers[0]
    lines = [f"no {framework} {wanted} image fits"]
    for verdict in considered:
        lines.extend(f"  {verdict.image.name}: {r.render(fleet)}" for r in verdict.blockers)
    fix = (first.fix or "see the reasons above") + cpu_hint
    return "\n".join(lines), fix
