"""The image catalog (images/catalog.toml): every image cudabox ships, as checked data."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cudabox.errors import DataError, UsageError
from cudabox.versions import Arch, CudaVersion, DriverVersion

FRAMEWORKS = ("torch", "tensorflow")
FLAVORS = ("cpu", "cuda")

_REQUIRED = {
    "name": str,
    "framework": str,
    "framework_version": str,
    "flavor": str,
    "python": str,
    "base_image": str,
    "dockerfile": str,
    "requirements": str,
    "lock": str,
    "source": str,
}
_CUDA_REQUIRED = {
    "cuda": str,
    "cudnn": str,
    "sass_archs": list,
    "ptx_archs": list,
    "min_driver": str,
}
_OPTIONAL = {"index_url": str, "ptx_cuda": str, "forward_compat": bool}
_KNOWN = {**_REQUIRED, **_CUDA_REQUIRED, **_OPTIONAL}


@dataclass(frozen=True)
class ImageSpec:
    name: str
    framework: str
    framework_version: str
    flavor: str
    python: str
    base_image: str
    dockerfile: Path
    requirements: Path
    lock: Path
    source: str
    cuda: CudaVersion | None = None
    cudnn: str | None = None
    sass_archs: tuple[Arch, ...] = ()
    ptx_archs: tuple[Arch, ...] = ()
    min_driver: DriverVersion | None = None
    # The toolkit that produced the PTX (the driver must be at least as new to JIT it).
    ptx_cuda: CudaVersion | None = None
    # Whether the image ships NVIDIA's cuda-compat libraries (forward compatibility).
    forward_compat: bool = False
    index_url: str | None = None
    tag: str = field(default="", compare=False)

    @property
    def is_cuda(self) -> bool:
        return self.flavor == "cuda"

    @property
    def release(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.framework_version.split(".") if p.isdigit())

    @property
    def require_cuda(self) -> str | None:
        """NVIDIA_REQUIRE_CUDA: the oldest driver CUDA that can run the image (its major's .0)."""
        return f"cuda>={self.cuda.major}.0" if self.cuda else None


@dataclass(frozen=True)
class Catalog:
    images: tuple[ImageSpec, ...]
    root: Path  # the images/ folder

    def get(self, name: str) -> ImageSpec:
        for image in self.images:
            if image.name == name:
                return image
        names = ", ".join(i.name for i in self.images)
        raise UsageError(f"no image named {name!r} in the catalog", f"use one of: {names}")

    def for_framework(self, framework: str) -> tuple[ImageSpec, ...]:
        return tuple(i for i in self.images if i.framework == framework)

    def newest(self, framework: str, flavor: str) -> ImageSpec:
        """The newest image of a kind: newest release, then newest CUDA."""
        options = [i for i in self.for_framework(framework) if i.flavor == flavor]
        if not options:
            raise DataError(f"the catalog has no {framework} {flavor} image")
        return max(options, key=rank_key)


def rank_key(image: ImageSpec) -> tuple[tuple[int, ...], CudaVersion]:
    return image.release, image.cuda or CudaVersion(0, 0)


def find_images_dir(start: Path | None = None) -> Path:
    """Locate images/ : $CUDABOX_IMAGES, else upwards from the working directory, else the checkout."""
    env = os.environ.get("CUDABOX_IMAGES")
    if env:
        return Path(env)
    candidates = [start or Path.cwd(), Path(__file__).resolve().parent]
    for base in candidates:
        for folder in (base, *base.parents):
            if (folder / "images" / "catalog.toml").is_file():
                return folder / "images"
    raise UsageError(
        "cannot find images/catalog.toml",
        "run cudabox from a cudabox checkout, or set CUDABOX_IMAGES to its images/ folder",
    )


def load_catalog(path: Path | None = None) -> Catalog:
    path = path or find_images_dir() / "catalog.toml"
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"catalog {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise DataError(f"catalog {path} is not valid TOML: {exc}") from None
    return parse_catalog(data, path.parent, where=str(path))


def parse_catalog(data: dict[str, Any], root: Path, where: str = "catalog") -> Catalog:
    unknown_top = set(data) - {"schema", "image"}
    if unknown_top:
        raise DataError(f"{where}: unknown top-level key {sorted(unknown_top)[0]!r}")
    if data.get("schema") != 1:
        raise DataError(f"{where}: 'schema' must be 1, got {data.get('schema')!r}")
    images = tuple(
        _parse_image(raw, root, f"{where} image #{n + 1}")
        for n, raw in enumerate(data.get("image", []))
    )
    if not images:
        raise DataError(f"{where}: no [[image]] entries")
    names = [i.name for i in images]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise DataError(f"{where}: image name {sorted(duplicates)[0]!r} appears twice")
    return Catalog(images=images, root=root)


def _parse_image(raw: dict[str, Any], root: Path, where: str) -> ImageSpec:
    if "name" in raw:
        where = f"{where} ({raw['name']})"
    for key in raw:
        if key not in _KNOWN:
            raise DataError(
                f"{where}: unknown key {key!r}", f"known keys: {', '.join(sorted(_KNOWN))}"
            )
    flavor = raw.get("flavor")
    required: dict[str, type] = {**_REQUIRED, **(_CUDA_REQUIRED if flavor == "cuda" else {})}
    for key in required:
        if key not in raw:
            raise DataError(f"{where}: missing key {key!r}")
    for key, value in raw.items():
        if not isinstance(value, _KNOWN[key]):
            raise DataError(f"{where}: {key!r} must be a {_KNOWN[key].__name__}, got {value!r}")
    if raw["framework"] not in FRAMEWORKS:
        raise DataError(f"{where}: framework must be one of {FRAMEWORKS}, got {raw['framework']!r}")
    if flavor not in FLAVORS:
        raise DataError(f"{where}: flavor must be one of {FLAVORS}, got {flavor!r}")
    if flavor == "cpu":
        stray = set(raw) & set(_CUDA_REQUIRED)
        if stray:
            raise DataError(f"{where}: a cpu image takes no {sorted(stray)[0]!r}")
    try:
        spec = ImageSpec(
            name=raw["name"],
            framework=raw["framework"],
            framework_version=raw["framework_version"],
            flavor=flavor,
            python=raw["python"],
            base_image=raw["base_image"],
            dockerfile=root / raw["dockerfile"],
            requirements=root / raw["requirements"],
            lock=root / raw["lock"],
            source=raw["source"],
            cuda=CudaVersion.parse(raw["cuda"]) if "cuda" in raw else None,
            cudnn=raw.get("cudnn"),
            sass_archs=tuple(Arch.parse(a) for a in raw.get("sass_archs", [])),
            ptx_archs=tuple(Arch.parse(a) for a in raw.get("ptx_archs", [])),
            min_driver=DriverVersion.parse(raw["min_driver"]) if "min_driver" in raw else None,
            ptx_cuda=CudaVersion.parse(raw["ptx_cuda"]) if "ptx_cuda" in raw else None,
            forward_compat=raw.get("forward_compat", False),
            index_url=raw.get("index_url"),
            tag=f"cudabox/{raw['name']}:latest",
        )
    except ValueError as exc:
        raise DataError(f"{where}: {exc}") from None
    if spec.is_cuda and not (spec.sass_archs or spec.ptx_archs):
        raise DataError(f"{where}: a cuda image needs at least one SASS or PTX architecture")
    return spec
