"""The build context of an image: a small temporary folder, not the repository.

It holds the image's rendered Dockerfile (with its labels written in), and build/: the lock, the
wheelhouse files the lock needs, an optional CA bundle and stage.py, used in the build stage
only; and root/: cudabox's own source and the catalog, which the image's last layer copies.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import InvalidVersion

import cudabox
from cudabox.errors import DataError, UsageError
from cudabox.images.catalog import ImageSpec
from cudabox.images.labels import labels_for
from cudabox.images.lock import lock_digest, parse_lock
from cudabox.images.render import DEFAULT_EPOCH
from cudabox.options import PackageSources
from cudabox.output import read_text

LABELS_MARKER = "# cudabox:labels"


@dataclass(frozen=True)
class BuildOptions:
    sources: PackageSources = field(default_factory=PackageSources)
    nocache: bool = False
    quiet: bool = False  # build output off (step lines only)


def wheel_pin(filename: str) -> tuple[str, str] | None:
    """'torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl' -> ('torch', '2.13.0+cpu')."""
    try:
        name, version, _, _ = parse_wheel_filename(filename)
    except (InvalidWheelFilename, InvalidVersion):
        return None
    return name, str(version)


def needed_wheels(lock_text: str, wheelhouses: tuple[Path, ...]) -> list[Path]:
    """The wheelhouse files that match a pin of the lock (by name and version), first found wins."""
    pins = {(p.name, p.version) for p in parse_lock(lock_text).values()}
    found: dict[str, Path] = {}
    for folder in wheelhouses:
        for path in sorted(folder.glob("*.whl")):
            if wheel_pin(path.name) in pins:
                found.setdefault(path.name, path)
    return [found[name] for name in sorted(found)]


def assemble_context(
    spec: ImageSpec,
    dest: Path,
    options: BuildOptions,
    images_dir: Path,
    labels: Mapping[str, str] | None = None,
    cudabox_src: Path | None = None,
) -> list[str]:
    """Fill `dest` with what the Dockerfile needs; returns the files placed, for the log.

    What reaches the image (root/: cudabox's source and the catalog) gets fixed times and modes,
    so that its layer is the same on every build of the same commit.
    """
    if not spec.dockerfile.is_file():
        raise DataError(
            f"{spec.name}: Dockerfile {spec.dockerfile} does not exist",
            f"render it with `cudabox render {spec.name}`",
        )
    if not spec.lock.is_file():
        raise DataError(
            f"{spec.name}: lock {spec.lock} does not exist", f"run `cudabox lock {spec.name}`"
        )
    lock_text = read_text(
        spec.lock, "lock", f"regenerate it with `cudabox lock {spec.name}`", error=DataError
    )
    pins = parse_lock(lock_text, str(spec.lock))
    placed = ["Dockerfile", "build/requirements.txt", "build/stage.py", "root/opt/cudabox/"]
    all_labels = dict(labels) if labels is not None else labels_for(spec, lock_digest(spec.lock))
    (dest / "Dockerfile").write_text(
        dockerfile_with_labels(spec.dockerfile.read_text(), all_labels, spec)
    )
    wheels = dest / "build" / "wheels"
    wheels.mkdir(parents=True)
    shutil.copyfile(spec.lock, dest / "build" / "requirements.txt")
    shutil.copyfile(Path(__file__).with_name("stage.py"), dest / "build" / "stage.py")
    sources = options.sources
    if sources.ca_cert is not None:
        shutil.copyfile(sources.ca_cert, dest / "build" / "ca.pem")
        placed.append("build/ca.pem")
    if sources.wheelhouses:
        for wheel in needed_wheels(lock_text, sources.wheelhouses):
            _link_or_copy(wheel, wheels / wheel.name)
            placed.append(f"build/wheels/{wheel.name}")
        local = [p for p in pins.values() if "+" in p.version]
        found = {wheel_pin(Path(p).name) for p in placed if p.endswith(".whl")}
        for pin in local:
            if (pin.name, pin.version) not in found:
                raise UsageError(
                    f"{spec.name}: the lock needs {pin.name}=={pin.version}, which is not in the wheelhouse {', '.join(map(str, sources.wheelhouses))}",
                    f"add its wheel there, or build without --wheelhouse where {spec.index_url or 'its index'} answers",
                )
    root = dest / "root" / "opt" / "cudabox"
    source = cudabox_src or Path(cudabox.__file__).resolve().parent
    shutil.copytree(
        source,
        root / "cudabox",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"),
    )
    (root / "images").mkdir()
    shutil.copyfile(images_dir / "catalog.toml", root / "images" / "catalog.toml")
    fix_times_and_modes(dest / "root", source_date_epoch())
    return placed


def source_date_epoch(env: Mapping[str, str] | None = None) -> int:
    """SOURCE_DATE_EPOCH when set (the reproducible-builds convention), else the fixed default."""
    text = (os.environ if env is None else env).get("SOURCE_DATE_EPOCH", "").strip()
    if not text:
        return DEFAULT_EPOCH
    # ASCII digits only (isdigit() takes "²"), and no later than the year 9999.
    if not re.fullmatch(r"[0-9]+", text) or int(text) > 253402300799:
        raise UsageError(
            f"SOURCE_DATE_EPOCH={text!r} is not a number of seconds since 1970",
            "unset it, or give seconds, e.g. SOURCE_DATE_EPOCH=$(git log -1 --format=%ct)",
        )
    return int(text)


def fix_times_and_modes(folder: Path, epoch: int) -> None:
    """Files 0644 (0755 if executable), folders 0755, every time `epoch`: not the checkout's."""
    for root, dirs, files in os.walk(folder, topdown=False):
        for name in files:
            path = Path(root, name)
            path.chmod(0o755 if path.stat().st_mode & 0o100 else 0o644)
            os.utime(path, (epoch, epoch))
        for name in dirs:
            Path(root, name).chmod(0o755)
            os.utime(Path(root, name), (epoch, epoch))
    folder.chmod(0o755)
    os.utime(folder, (epoch, epoch))


def dockerfile_quote(text: str) -> str:
    """A Dockerfile double-quoted string (no variable expansion)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


_quote = dockerfile_quote


def dockerfile_with_labels(text: str, labels: dict[str, str], spec: ImageSpec) -> str:
    """Put the labels in the Dockerfile's `# cudabox:labels` line, as one LABEL instruction.

    One instruction instead of the engine's per-label steps: the classic builder commits a layer
    for each, which would cost seconds on every rebuild.
    """
    if LABELS_MARKER not in text.splitlines():
        raise DataError(f"{spec.dockerfile} has no {LABELS_MARKER!r} line where the labels go")
    instruction = "LABEL " + " \\\n      ".join(
        f"{_quote(k)}={_quote(v)}" for k, v in sorted(labels.items())
    )
    return (
        "\n".join(instruction if line == LABELS_MARKER else line for line in text.splitlines())
        + "\n"
    )


_LAYER_MAKERS = ("COPY", "ADD", "RUN")


def final_stage_layers(text: str) -> int:
    """How many layers a Dockerfile's last stage adds to its base: one per COPY, ADD and RUN.

    The other instructions (ENV, USER, LABEL, WORKDIR of a folder the layers made) change only
    the image's configuration. Counted for the `cudabox.layers` label, so that an image whose
    layers go past its label is known to be someone else's work on top.
    """
    count = 0
    continued = False
    for line in text.splitlines():
        stripped = line.strip()
        starts = not continued and bool(stripped) and not stripped.startswith("#")
        if stripped and not stripped.startswith("#"):
            continued = stripped.endswith("\\")
        if not starts:
            continue
        word = stripped.split(maxsplit=1)[0].upper()
        if word == "FROM":
            count = 0
        elif word in _LAYER_MAKERS:
            count += 1
    return count


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        target.hardlink_to(source)
    except OSError:
        shutil.copyfile(source, target)


def build_args(spec: ImageSpec, options: BuildOptions, base_image: str) -> dict[str, str]:
    extra = spec.index_url if spec.index_url and not options.sources.wheelhouses else ""
    return {
        "BASE_IMAGE": base_image,
        "PIP_INDEX_URL": options.sources.index_url or "",
        "PIP_EXTRA_INDEX_URL": extra,
        "SOURCE_DATE_EPOCH": str(source_date_epoch()),
    }


@contextmanager
def build_context(
    spec: ImageSpec,
    options: BuildOptions,
    images_dir: Path,
    labels: Mapping[str, str] | None = None,
    cudabox_src: Path | None = None,
) -> Iterator[Path]:
    """The assembled context in a temporary folder, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=f"cudabox-build-{spec.name}-") as tmp:
        assemble_context(spec, Path(tmp), options, images_dir, labels, cudabox_src)
        yield Path(tmp)
