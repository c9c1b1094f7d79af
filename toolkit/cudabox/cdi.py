"""Just enough of a CDI spec (Container Device Interface) to judge NVIDIA's: no YAML dependency.

`nvidia-ctk cdi generate` writes a small, regular YAML file (or JSON). The doctor needs its
`kind`, the device names, and the driver version the spec was generated for, which shows in the
versioned library names it mounts (libcuda.so.580.95.05). A spec generated for another driver
mounts files that no longer exist: the classic failure after a driver upgrade.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

NVIDIA_KIND = "nvidia.com/gpu"
DEFAULT_DIRS = (Path("/etc/cdi"), Path("/var/run/cdi"))

_KIND = re.compile(r"""^kind:\s*["']?([^"'\s#]+)""", re.MULTILINE)
_VERSION = re.compile(r"""^cdiVersion:\s*["']?([^"'\s#]+)""", re.MULTILINE)
_NAME = re.compile(r"""^\s*(?:-\s+)?name:\s*["']?([^"'\s#]+)""")
_DRIVER_LIB = re.compile(r"lib(?:cuda|nvidia-ml|nvidia-ptxjitcompiler)\.so\.(\d+\.\d+(?:\.\d+)?)")


@dataclass(frozen=True)
class CdiSpec:
    path: Path
    kind: str | None
    cdi_version: str | None
    devices: tuple[str, ...]
    driver_versions: tuple[str, ...]  # from the versioned driver libraries it mounts

    @property
    def is_nvidia_gpu(self) -> bool:
        return self.kind == NVIDIA_KIND


def parse_spec(text: str, path: Path) -> CdiSpec:
    if path.suffix == ".json":
        data = json.loads(text)
        devices = tuple(
            str(d.get("name")) for d in data.get("devices") or [] if isinstance(d, dict)
        )
        return CdiSpec(path, data.get("kind"), data.get("cdiVersion"), devices, _drivers(text))
    kind = _KIND.search(text)
    version = _VERSION.search(text)
    return CdiSpec(
        path,
        kind[1] if kind else None,
        version[1] if version else None,
        tuple(_device_names(text)),
        _drivers(text),
    )


def _device_names(text: str) -> list[str]:
    """Names of the entries of the top-level `devices:` list (their own `name:` keys)."""
    names = []
    inside = False
    entry_indent: int | None = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip(" "))
        if indent == 0 and not line.startswith("-"):
            inside = line.startswith("devices:")
            entry_indent = None
            continue
        if not inside:
            continue
        stripped = line.lstrip(" ")
        if stripped.startswith("- "):
            if entry_indent is None:
                entry_indent = indent
            if indent == entry_indent:
                match = _NAME.match(line)
                if match:
                    names.append(match[1])
            continue
        # A `name:` key of the entry itself sits two columns right of its dash.
        if entry_indent is not None and indent == entry_indent + 2:
            match = _NAME.match(line)
            if match:
                names.append(match[1])
    return names


def _drivers(text: str) -> tuple[str, ...]:
    return tuple(sorted(set(_DRIVER_LIB.findall(text))))


def find_specs(dirs: Iterable[Path] = DEFAULT_DIRS) -> list[CdiSpec]:
    """Every readable spec file in `dirs` (.yaml, .yml, .json); unreadable ones are skipped."""
    specs = []
    for folder in dirs:
        try:
            files = sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml", ".json"))
        except OSError:
            continue
        for path in files:
            try:
                specs.append(parse_spec(path.read_text(), path))
            except (OSError, ValueError):
                continue
    return specs
