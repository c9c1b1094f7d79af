"""The project lock (`cudabox.lock`): the project's dependencies locked once per catalog image.

One committed file, one `[[images]]` entry per candidate catalog image. Each entry holds the
distributions the project adds on top of that image (never the image's own pins: the framework
and everything the image's lock holds come from the image), each with its hashes, installed size,
top-level modules (what the build proves imports) and the GPU code of its compiled extensions.
`inputs` is a digest of everything the lock was made from (the project's requirements and
settings that change a resolution, and each image's own lock digest), so that `cudabox lock
--check`, `build` and `run` can tell a stale lock without a network.

Written by hand as TOML (tomllib only reads), in a fixed order: the same lock gives the same
bytes, so it diffs well in review.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cudabox.errors import DataError
from cudabox.images.catalog import Extension, ImageSpec
from cudabox.images.lock import lock_digest
from cudabox.output import write_atomic
from cudabox.project.declaration import Project
from cudabox.versions import Arch

LOCK_FILE = "cudabox.lock"
SCHEMA = 1
_FIX = "regenerate it with `cudabox lock` in the project folder"


@dataclass(frozen=True)
class LockedPackage:
    """One distribution the project adds to an image."""

    name: str  # normalised (PEP 503)
    version: str
    hashes: tuple[str, ...]  # "sha256:..." of every file the index offers for this version
    installed_bytes: int
    modules: tuple[str, ...] = ()  # top-level import names, from the wheel's file list
    direct: bool = False  # named by the project itself (not only pulled in)
    sass: tuple[Arch, ...] = ()  # GPU code of its compiled extensions (empty: none)
    ptx: tuple[Arch, ...] = ()
    cuda_runtime: tuple[int, ...] = ()  # CUDA runtime majors its extensions link

    @property
    def has_gpu_code(self) -> bool:
        return bool(self.sass or self.ptx)

    @property
    def is_extension(self) -> bool:
        """Compiled GPU code, or a link to a CUDA runtime: what the resolver must judge."""
        return self.has_gpu_code or bool(self.cuda_runtime)

    def extension(self) -> Extension:
        return Extension(self.name, self.version, self.sass, self.ptx, self.cuda_runtime)

    @property
    def pin(self) -> str:
        return f"{self.name}=={self.version}"


@dataclass(frozen=True)
class ImageLock:
    """The project's lock against one catalog image."""

    image: str  # the catalog image's name
    base_lock_sha256: str  # the image's own lock, as its cudabox.lock_sha256 label says
    packages: tuple[LockedPackage, ...]
    findings: tuple[str, ...] = ()  # the lock's warnings, kept for build and review

    def requirements_text(self) -> str:
        """The hash-locked requirements file the image's build installs (`pip --require-hashes`)."""
        lines = [f"# {self.image}: the project's distributions, from {LOCK_FILE}"]
        for package in self.packages:
            lines.append(
                f"{package.pin} " + " ".join(f"--hash={digest}" for digest in package.hashes)
            )
        return "\n".join(lines) + "\n"

    @property
    def installed_bytes(self) -> int:
        return sum(p.installed_bytes for p in self.packages)

    @property
    def extensions(self) -> tuple[LockedPackage, ...]:
        return tuple(p for p in self.packages if p.is_extension)

    def get(self, name: str) -> LockedPackage | None:
        return next((p for p in self.packages if p.name == name), None)


@dataclass(frozen=True)
class ProjectLock:
    project: str
    inputs_sha256: str
    images: tuple[ImageLock, ...] = field(default=())

    def get(self, image: str) -> ImageLock | None:
        return next((i for i in self.images if i.image == image), None)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(render_lock(self).encode()).hexdigest()


# ---- what the lock is made from ------------------------------------------------------------


def lock_inputs(project: Project, images: Sequence[ImageSpec]) -> str:
    """The digest of everything a resolution depends on; another value means a stale lock.

    The code, `env`, `command` and `bake` are not in it: they change the image, never the lock.
    """
    settings = project.settings
    data = {
        "schema": SCHEMA,
        "framework": settings.framework,
        "requirements": sorted(project.requirements()),
        "index_urls": list(settings.index_urls),
        "images": [
            {"name": spec.name, "lock": lock_digest(spec.lock) if spec.lock.is_file() else ""}
            for spec in images
        ],
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def require_current(
    project: Project, lock: ProjectLock, images: Sequence[ImageSpec], path: Path
) -> None:
    """A lock made from other inputs than the project's and images' of now is an error (exit 6)."""
    if lock.inputs_sha256 != lock_inputs(project, images):
        changed = _what_changed(lock, images)
        raise DataError(
            f"{path} is stale: {changed}",
            "run `cudabox lock` in the project folder and commit the new lock",
        )


def _what_changed(lock: ProjectLock, images: Sequence[ImageSpec]) -> str:
    locked = {i.image: i.base_lock_sha256 for i in lock.images}
    names = [spec.name for spec in images]
    added = [n for n in names if n not in locked]
    if added:
        return f"it has no entry for {', '.join(added)}"
    moved = [
        spec.name
        for spec in images
        if spec.lock.is_file() and locked[spec.name] != lock_digest(spec.lock)
    ]
    if moved:
        return f"the image lock of {', '.join(moved)} changed since"
    return "the project's requirements or settings changed since it was made"


# ---- reading ---------------------------------------------------------------------------------


def read_lock(path: Path) -> ProjectLock:
    """The lock at `path`; a file cudabox cannot read is a DataError (exit 6) naming the problem."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(
            f"{path} does not exist", "run `cudabox lock` in the project folder"
        ) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid TOML: {exc}", _FIX) from None
    where = str(path)
    if data.get("version") != SCHEMA:
        raise DataError(
            f"{where}: version {data.get('version')!r} is not {SCHEMA}, the one cudabox reads",
            _FIX,
        )
    images = tuple(_image(entry, where) for entry in _list(data, "images", where))
    return ProjectLock(
        project=_text(data, "project", where),
        inputs_sha256=_text(data, "inputs", where),
        images=images,
    )


def _image(entry: Any, where: str) -> ImageLock:
    if not isinstance(entry, dict):
        raise DataError(f"{where}: an [[images]] entry is not a table", _FIX)
    name = _text(entry, "name", where)
    at = f"{where} [[images]] {name}"
    return ImageLock(
        image=name,
        base_lock_sha256=_text(entry, "base_lock", at),
        packages=tuple(_package(p, at) for p in _list(entry, "packages", at)),
        findings=tuple(str(f) for f in _list(entry, "findings", at)),
    )


def _package(entry: Any, where: str) -> LockedPackage:
    if not isinstance(entry, dict):
        raise DataError(f"{where}: a package entry is not a table", _FIX)
    name = _text(entry, "name", where)
    at = f"{where} package {name}"
    try:
        return LockedPackage(
            name=name,
            version=_text(entry, "version", at),
            hashes=tuple(str(h) for h in _list(entry, "hashes", at)),
            installed_bytes=int(entry.get("bytes", 0)),
            modules=tuple(str(m) for m in entry.get("modules", [])),
            direct=bool(entry.get("direct", False)),
            sass=tuple(Arch.parse(a) for a in entry.get("sass", [])),
            ptx=tuple(Arch.parse(a) for a in entry.get("ptx", [])),
            cuda_runtime=tuple(int(m) for m in entry.get("cuda_runtime", [])),
        )
    except (TypeError, ValueError) as exc:
        raise DataError(f"{at}: {exc}", _FIX) from None


def _text(data: dict[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise DataError(f"{where}: {key!r} is missing or not text", _FIX)
    return value


def _list(data: dict[str, Any], key: str, where: str) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise DataError(f"{where}: {key!r} is not a list", _FIX)
    return value


# ---- writing ---------------------------------------------------------------------------------


def render_lock(lock: ProjectLock) -> str:
    lines = [
        f"# {LOCK_FILE}: the project's dependencies, locked against each catalog image's own pins.",
        "# Do not edit: `cudabox lock` regenerates it; `cudabox lock --check` says whether it is",
        "# current. The framework and every pin of the image come from the image, never from here.",
        f"version = {SCHEMA}",
        f"project = {_q(lock.project)}",
        f"inputs = {_q(lock.inputs_sha256)}",
    ]
    for image in lock.images:
        lines += [
            "",
            "[[images]]",
            f"name = {_q(image.image)}",
            f"base_lock = {_q(image.base_lock_sha256)}",
            f"findings = {_array(image.findings)}",
        ]
        for package in image.packages:
            lines += [
                "",
                "[[images.packages]]",
                f"name = {_q(package.name)}",
                f"version = {_q(package.version)}",
                f"bytes = {package.installed_bytes}",
                f"direct = {'true' if package.direct else 'false'}",
                f"modules = {_array(package.modules)}",
            ]
            if package.is_extension:
                lines += [
                    f"sass = {_array(str(a) for a in package.sass)}",
                    f"ptx = {_array(str(a) for a in package.ptx)}",
                    f"cuda_runtime = [{', '.join(str(m) for m in package.cuda_runtime)}]",
                ]
            lines.append("hashes = [")
            lines += [f"    {_q(h)}," for h in package.hashes]
            lines.append("]")
    return "\n".join(lines) + "\n"


def write_lock(path: Path, lock: ProjectLock) -> bool:
    """Write the lock when its text changed (atomically); True when it did."""
    text = render_lock(lock)
    old = path.read_text() if path.is_file() else None
    if old == text:
        return False
    write_atomic(path, text, "project lock")
    return True


def _q(text: str) -> str:
    # json's string escapes are valid TOML basic-string escapes for what a lock holds.
    return json.dumps(text, ensure_ascii=False)


def _array(items: Iterable[str]) -> str:
    return "[" + ", ".join(_q(i) for i in items) + "]"
