"""Small value types for the version numbers this domain is full of."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import total_ordering

_CC_RE = re.compile(r"^(\d+)\.(\d+)$")
_ARCH_RE = re.compile(r"^(\d+)\.(\d+)([af]?)$")
_COMPACT_ARCH_RE = re.compile(r"^(\d+)(\d)([af]?)$")


def parse_cc(text: str) -> tuple[int, int]:
    """'8.6' -> (8, 6). Raises ValueError with the offending text."""
    match = _CC_RE.match(text.strip())
    if not match:
        raise ValueError(f"compute capability {text!r} is not of the form MAJOR.MINOR")
    return int(match[1]), int(match[2])


@total_ordering
@dataclass(frozen=True)
class CudaVersion:
    major: int
    minor: int

    @classmethod
    def parse(cls, text: str) -> CudaVersion:
        parts = text.strip().split(".")
        if len(parts) < 2 or not all(p.isdigit() for p in parts[:2]):
            raise ValueError(f"CUDA version {text!r} is not of the form MAJOR.MINOR")
        return cls(int(parts[0]), int(parts[1]))

    @classmethod
    def from_int(cls, value: int) -> CudaVersion:
        """NVML and cudaDriverGetVersion encode 12.4 as 12040."""
        return cls(value // 1000, (value % 1000) // 10)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, CudaVersion):
            return NotImplemented
        return (self.major, self.minor) < (other.major, other.minor)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"


@total_ordering
@dataclass(frozen=True)
class DriverVersion:
    """An NVIDIA driver version such as 580.95.05, compared numerically part by part."""

    parts: tuple[int, ...]
    text: str = field(default="", compare=False)  # as written, zero padding and all

    @classmethod
    def parse(cls, text: str) -> DriverVersion:
        pieces = text.strip().split(".")
        if not pieces or not all(p.isdigit() for p in pieces):
            raise ValueError(f"driver version {text!r} is not of the form 580.95.05")
        return cls(tuple(int(p) for p in pieces), text.strip())

    @property
    def branch(self) -> int:
        return self.parts[0]

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, DriverVersion):
            return NotImplemented
        return self.parts < other.parts

    def __str__(self) -> str:
        return self.text or ".".join(str(p) for p in self.parts)


@dataclass(frozen=True)
class Arch:
    """A compiled GPU target: SASS or PTX for a compute capability, maybe arch-specific ('9.0a')."""

    major: int
    minor: int
    suffix: str = ""  # "a" (arch-specific) or "f" (family-specific) targets

    @classmethod
    def parse(cls, text: str) -> Arch:
        cleaned = text.strip().removeprefix("sm_").removeprefix("compute_")
        if "." not in cleaned:
            # torch spells them 'sm_90a' / 'compute_120': the last digit is the minor.
            compact = _COMPACT_ARCH_RE.match(cleaned)
            if compact:
                cleaned = f"{compact[1]}.{compact[2]}{compact[3]}"
        match = _ARCH_RE.match(cleaned)
        if not match:
            raise ValueError(f"architecture {text!r} is not of the form 8.6, 9.0a or sm_86")
        return cls(int(match[1]), int(match[2]), match[3])

    @property
    def cc(self) -> tuple[int, int]:
        return self.major, self.minor

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}{self.suffix}"
