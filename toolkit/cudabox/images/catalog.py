"""The image catalog (images/catalog.toml): every image cudabox ships, as checked data."""

from __future__ import annotations

import contextlib
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cudabox.errors import DataError, UsageError
from cudabox.output import read_text
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
# An image's name is the repository part of its tag (cudabox/NAME:latest).
_NAME_RE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")

IMAGES_ENV = "CUDABOX_IMAGES"
_ENV_FIX = f"set {IMAGES_ENV} to the images/ folder of a cudabox checkout, or unset it"
_CHECKOUT_FIX = "restore images/catalog.toml from the cudabox checkout (git checkout images/)"
_KEYS_FIX = "correct the catalog entry; the comments at the top of images/catalog.toml explain it"


@dataclass(frozen=True)
class Extension:
    """A compiled extension a project image adds (from cudabox.lock, or the image's labels):
    the resolver requires its GPU code to run on every GPU, as it does the framework's."""

    name: str  # its distribution, normalised
    version: str
    sass_archs: tuple[Arch, ...] = ()
    ptx_archs: tuple[Arch, ...] = ()
    cuda_runtime: tuple[int, ...] = ()  # the CUDA runtime majors it links


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
    # A project image: the project's name, its catalog image, and its compiled extensions.
    project: str | None = None
    base_name: str | None = None
    extensions: tuple[Extension, ...] = ()

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


def image_folder(root: Path, framework: str, name: str) -> Path:
    """images/FRAMEWORK/NAME/: requirements.in, lock.txt and the rendered Dockerfile."""
    return root / framework / name


def rank_key(image: ImageSpec) -> tuple[tuple[int, ...], CudaVersion]:
    return image.release, image.cuda or CudaVersion(0, 0)


def find_images_dir(start: Path | None = None) -> Path:
    """Locate images/ : $CUDABOX_IMAGES, else upwards from the working directory, else the checkout."""
    env = os.environ.get(IMAGES_ENV)
    if env:
        folder = Path(env)
        if folder.is_file():
            raise DataError(
                f"{IMAGES_ENV}={env} is a file; it must name the folder that holds catalog.toml",
                f"set {IMAGES_ENV}={folder.parent}",
            )
        if not folder.is_dir():
            raise DataError(f"{IMAGES_ENV}={env}: no such folder", _ENV_FIX)
        return folder
    candidates = [Path(__file__).resolve().parent]
    # A deleted working directory has no images/; the checkout cudabox runs from still counts.
    with contextlib.suppress(FileNotFoundError):
        candidates.insert(0, start or Path.cwd())
    for base in candidates:
        for folder in (base, *base.parents):
            if (folder / "images" / "catalog.toml").is_file():
                return folder / "images"
    raise UsageError(
        "cannot find images/catalog.toml",
        f"run cudabox from a cudabox checkout, or set {IMAGES_ENV} to its images/ folder",
    )


def load_catalog(path: Path | None = None) -> Catalog:
    path = path or find_images_dir() / "catalog.toml"
    # The catalog is the project's data: whatever is wrong with it is a DataError (exit 6).
    fix = _ENV_FIX if os.environ.get(IMAGES_ENV) else _CHECKOUT_FIX
    text = read_text(path, "catalog", fix, error=DataError)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DataError(f"catalog {path} is not valid TOML: {exc}", fix) from None
    return parse_catalog(data, path.parent, where=str(path))


def parse_catalog(data: dict[str, Any], root: Path, where: str = "catalog") -> Catalog:
    unknown_top = set(data) - {"schema", "image"}
    if unknown_top:
        raise DataError(f"{where}: unknown top-level key {sorted(unknown_top)[0]!r}", _KEYS_FIX)
    schema = data.get("schema")
    if type(schema) is not int or schema != 1:
        raise DataError(f"{where}: 'schema' must be 1, got {schema!r}", _KEYS_FIX)
    entries = data.get("image", [])
    if isinstance(entries, dict):
        raise DataError(
            f"{where}: 'image' is one [image] table; each image is an [[image]] table",
            "write [[image]] (two brackets) above each image",
        )
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise DataError(
            f"{where}: 'image' must be a list of [[image]] tables, got {entries!r:.60}",
            "write each image as an [[image]] table with its keys below it",
        )
    images = tuple(
        _parse_image(raw, root, f"{where} image #{n + 1}") for n, raw in enumerate(entries)
    )
    if not images:
        raise DataError(f"{where}: no [[image]] entries", _KEYS_FIX)
    names = [i.name for i in images]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise DataError(
            f"{where}: image name {sorted(duplicates)[0]!r} appears twice",
            "give every image its own name",
        )
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
            raise DataError(f"{where}: missing key {key!r}", _KEYS_FIX)
    for key, value in raw.items():
        if not isinstance(value, _KNOWN[key]):
            raise DataError(
                f"{where}: {key!r} must be a {_KNOWN[key].__name__}, got {value!r}", _KEYS_FIX
            )
        if isinstance(value, list) and not all(isinstance(item, str) for item in value):
            raise DataError(
                f'{where}: {key!r} must be a list of strings such as "8.6", got {value!r}',
                _KEYS_FIX,
            )
    if not _NAME_RE.match(raw["name"]):
        raise DataError(
            f"{where}: name {raw['name']!r} cannot be part of an image tag",
            "use lowercase letters, digits and '.', '_' or '-' between them",
        )
    if raw["framework"] not in FRAMEWORKS:
        raise DataError(
            f"{where}: framework must be one of {FRAMEWORKS}, got {raw['framework']!r}", _KEYS_FIX
        )
    if flavor not in FLAVORS:
        raise DataError(f"{where}: flavor must be one of {FLAVORS}, got {flavor!r}", _KEYS_FIX)
    if flavor == "cpu":
        stray = set(raw) & set(_CUDA_REQUIRED)
        if stray:
            raise DataError(f"{where}: a cpu image takes no {sorted(stray)[0]!r}", _KEYS_FIX)
    try:
        spec = ImageSpec(
            name=raw["name"],
            framework=raw["framework"],
            framework_version=raw["framework_version"],
            flavor=flavor,
            python=raw["python"],
            base_image=raw["base_image"],
            dockerfile=image_folder(root, raw["framework"], raw["name"]) / "Dockerfile",
            requirements=image_folder(root, raw["framework"], raw["name"]) / "requirements.in",
            lock=image_folder(root, raw["framework"], raw["name"]) / "lock.txt",
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
        raise DataError(f"{where}: {exc}", _KEYS_FIX) from None
    if spec.is_cuda and not (spec.sass_archs or spec.ptx_archs):
        raise DataError(
            f"{where}: a cuda image needs at least one SASS or PTX architecture", _KEYS_FIX
        )
    return spec
