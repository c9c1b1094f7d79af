"""`cudabox render`: one Dockerfile per image, from one template and the image's lock.

The layer plan is a pure function of the lock: every distribution of at least LAYER_MIN_BYTES
installed (the sizes `cudabox lock` records in the lock, read from each wheel's file list) gets a
layer of its own; the rest share one. Layers are ordered so that what changes least comes first
(the CUDA libraries, then other heavy distributions, then the framework, then the small ones,
then cudabox), so images that lock the same distribution at the same version share its layer and,
as far as their lower layers agree, a pull skips it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cudabox.errors import DataError
from cudabox.images.catalog import ImageSpec
from cudabox.images.lock import Pin, parse_lock
from cudabox.output import read_text

TEMPLATE = "Dockerfile.template"
LAYER_MIN_BYTES = 30_000_000
REST_LAYER = "deps"
# The default SOURCE_DATE_EPOCH (2026-01-01T00:00:00Z): every file in the image carries this
# time unless the build is given another.
DEFAULT_EPOCH = 1767225600
# Distributions that carry the CUDA libraries: they change least (per CUDA release).
_CUDA_LIBRARIES = re.compile(r"^(nvidia-|cuda-)")
_FRAMEWORKS = {"torch": ("torch",), "tensorflow": ("tensorflow", "tensorflow-cpu")}
_SIZE_LINE = re.compile(r"^# cudabox:installed-bytes (\S+)==(\S+) (\d+)$")
# Docker's overlay storage stacks at most 128 layers; stay far below.
MAX_LAYERS = 100


@dataclass(frozen=True)
class Layer:
    name: str  # the stage folder, /stage/<name>
    pins: tuple[Pin, ...]
    installed_bytes: int


def installed_sizes(lock_text: str) -> dict[tuple[str, str], int]:
    """The `# cudabox:installed-bytes NAME==VERSION BYTES` lines `cudabox lock` writes."""
    sizes = {}
    for line in lock_text.splitlines():
        match = _SIZE_LINE.match(line.strip())
        if match:
            sizes[(match[1], match[2])] = int(match[3])
    return sizes


def plan_layers(
    framework: str,
    pins: Mapping[str, Pin],
    sizes: Mapping[tuple[str, str], int],
    where: str = "lock",
) -> list[Layer]:
    """The image's package layers, bottom first: heavy distributions one each, then the rest."""
    missing = [f"{p.name}=={p.version}" for p in pins.values() if (p.name, p.version) not in sizes]
    if missing:
        raise DataError(
            f"{where} records no installed size for {', '.join(missing[:5])}"
            + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""),
            "regenerate it with `cudabox lock NAME` (it reads each wheel's size)",
        )
    frameworks = _FRAMEWORKS.get(framework, ())
    heavy = [p for p in pins.values() if sizes[(p.name, p.version)] >= LAYER_MIN_BYTES]
    small = [p for p in pins.values() if p not in heavy]

    def order(pin: Pin) -> tuple[int, str]:
        if _CUDA_LIBRARIES.match(pin.name):
            return 0, pin.name
        return (2 if pin.name in frameworks else 1), pin.name

    layers = [Layer(p.name, (p,), sizes[(p.name, p.version)]) for p in sorted(heavy, key=order)]
    if small:
        small.sort(key=lambda p: p.name)
        total = sum(sizes[(p.name, p.version)] for p in small)
        layers.append(Layer(REST_LAYER, tuple(small), total))
    if len(layers) > MAX_LAYERS:
        raise DataError(f"{where}: {len(layers)} package layers, more than {MAX_LAYERS}")
    return layers


def _mb(size: int) -> str:
    # Not output.human_bytes: this is the committed Dockerfiles' text, which `render --check`
    # compares byte for byte; another unit would re-render every Dockerfile for nothing.
    return f"{size / 1e6:,.0f} MB"


def render(spec: ImageSpec, template: str, lock_text: str, lock_name: str) -> str:
    """The Dockerfile of one image."""
    layers = plan_layers(
        spec.framework, parse_lock(lock_text, lock_name), installed_sizes(lock_text), lock_name
    )
    heavy = [layer for layer in layers if layer.name != REST_LAYER]
    copies = []
    for layer in layers:
        if layer.name == REST_LAYER:
            names = ", ".join(f"{p.name}=={p.version}" for p in layer.pins)
            copies.append(
                f"# {len(layer.pins)} smaller distributions ({_mb(layer.installed_bytes)}):\n"
                + _wrap_comment(names)
            )
        else:
            (pin,) = layer.pins
            copies.append(f"# {pin.name}=={pin.version} ({_mb(layer.installed_bytes)})")
        copies.append(f"COPY --from=build /stage/{layer.name}/ /")
    env = [
        f"{'PYTORCH' if spec.framework == 'torch' else 'TENSORFLOW'}_VERSION={spec.framework_version}"
    ]
    if spec.is_cuda:
        # The NVIDIA Container Toolkit refuses a driver older than this; NGC images set the
        # versions too, and enroot's hooks read PYTORCH_VERSION.
        env += [f"CUDA_VERSION={spec.cuda}", f"CUDNN_VERSION={spec.cudnn}"]
        env.append(f"NVIDIA_REQUIRE_CUDA={_env_quote(spec.require_cuda or '')}")
    return template.format(
        name=spec.name,
        lock=lock_name,
        base_image=spec.base_image,
        epoch=DEFAULT_EPOCH,
        rest_layer=REST_LAYER,
        layer_args="".join(f" \\\n        --layer {layer.name}" for layer in heavy),
        layer_copies="\n".join(copies),
        extra_env="".join(f" \\\n    {item}" for item in env),
    )


def _env_quote(value: str) -> str:
    return f'"{value}"' if re.search(r"[\s>=<]", value) else value


def _wrap_comment(text: str, width: int = 96) -> str:
    lines, line = [], "#"
    for word in text.split(" "):
        if len(line) + 1 + len(word) > width and line != "#":
            lines.append(line)
            line = "#"
        line += " " + word
    lines.append(line)
    return "\n".join(lines)


def rendered(spec: ImageSpec, images_dir: Path) -> str:
    template = (images_dir / TEMPLATE).read_text()
    if not spec.lock.is_file():
        raise DataError(
            f"{spec.name}: lock {spec.lock} does not exist", f"run `cudabox lock {spec.name}`"
        )
    lock_name = spec.lock.relative_to(images_dir.parent).as_posix()
    fix = f"regenerate it with `cudabox lock {spec.name}`"
    return render(spec, template, read_text(spec.lock, "lock", fix, error=DataError), lock_name)


@dataclass(frozen=True)
class RenderOptions:
    targets: tuple[str, ...]
    check: bool


def render_all(specs: Sequence[ImageSpec], images_dir: Path, check: bool) -> list[Path]:
    """Write (or with check, compare) each image's Dockerfile; returns the stale/changed ones."""
    changed = []
    for spec in specs:
        text = rendered(spec, images_dir)
        current = spec.dockerfile.read_text() if spec.dockerfile.is_file() else None
        if current == text:
            continue
        changed.append(spec.dockerfile)
        if not check:
            spec.dockerfile.parent.mkdir(parents=True, exist_ok=True)
            spec.dockerfile.write_text(text)
    return changed
