"""Which Kubernetes nodes an image can run on, as a required node affinity over the labels that
NVIDIA GPU Feature Discovery (GFD) puts on every GPU node.

A pure translation of the resolver's decision, not a second opinion: the compute capabilities come
from `resolver.gpu_coverage` (SASS families, PTX JIT, the Tegra exclusion) applied to every real
capability in data/compute_capabilities.toml, and the driver terms restate the resolver's driver
rules (native support, minor-version compatibility, the PTX-JIT driver floor) over the GFD labels
of the driver version and of the CUDA version that driver supports. tests/jobs/test_affinity.py
checks that the affinity admits a node exactly when `resolver.judge` says the image fits it.

GFD labels (k8s-device-plugin, internal/lm/nvml.go and resource.go; the `-version` names were
added by PR #620 in April 2024): the driver version split at its dots, as written by NVML
(`cuda.driver-version.revision` is "" for a two-part version such as 570.144), the CUDA version of
the driver (`cuda.runtime-version.*`, from cuDriverGetVersion despite the name), and the compute
capability of the node's GPU model (`gpu.compute.*`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

from cudabox.compat import Compat, load_compat
from cudabox.errors import DataError, UsageError
from cudabox.host import HostProfile
from cudabox.images.catalog import ImageSpec
from cudabox.resolver import Coverage, gpu_coverage
from cudabox.sourced import check_cited, parse_table, read_data, rows_of, sources_of
from cudabox.versions import CudaVersion, DriverVersion, parse_cc

COMPUTE_MAJOR = "nvidia.com/gpu.compute.major"
COMPUTE_MINOR = "nvidia.com/gpu.compute.minor"
DRIVER_MAJOR = "nvidia.com/cuda.driver-version.major"
DRIVER_MINOR = "nvidia.com/cuda.driver-version.minor"
DRIVER_REVISION = "nvidia.com/cuda.driver-version.revision"
CUDA_MAJOR = "nvidia.com/cuda.runtime-version.major"
CUDA_MINOR = "nvidia.com/cuda.runtime-version.minor"

Operator = Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]

# Kubernetes reads a Gt/Lt label value with Go's strconv.ParseInt(value, 10, 64).
_INT64 = re.compile(r"^[+-]?[0-9]+$")
_INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class Requirement:
    """One NodeSelectorRequirement: a label key, an operator, its values."""

    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """The scheduler's reading (k8s.io/apimachinery labels.Requirement.Matches)."""
        value = labels.get(self.key)
        if self.operator == "In":
            return value is not None and value in self.values
        if self.operator == "NotIn":
            return value is None or value not in self.values
        if self.operator == "Exists":
            return value is not None
        if self.operator == "DoesNotExist":
            return value is None
        # Gt / Lt: the label must hold an integer; "" (a two-part driver's revision) never matches.
        if value is None or not _INT64.fullmatch(value) or abs(int(value)) > _INT64_MAX:
            return False
        bound = int(self.values[0])
        return int(value) > bound if self.operator == "Gt" else int(value) < bound

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "operator": self.operator, "values": list(self.values)}


@dataclass(frozen=True)
class Term:
    """One NodeSelectorTerm: every requirement holds."""

    requirements: tuple[Requirement, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        # An empty term matches no node, as in Kubernetes.
        return bool(self.requirements) and all(r.matches(labels) for r in self.requirements)

    def to_json(self) -> dict[str, Any]:
        return {"matchExpressions": [r.to_json() for r in self.requirements]}


@dataclass(frozen=True)
class CapabilityRule:
    """A compute capability the image has kernels for, and how it reaches them."""

    cc: tuple[int, int]
    coverage: Coverage  # "sass" or "ptx"


@dataclass(frozen=True)
class DriverRule:
    """The resolver's driver rules for one image, as numbers (see resolver._driver_reasons).

    A node's driver runs the image when the CUDA version it supports is at least `cuda`; or,
    through minor-version compatibility, when that CUDA version has the same major and the driver
    is at least `floor`, provided GPUs reached through PTX get a driver whose CUDA is at least
    `ptx_cuda` (older drivers cannot JIT newer PTX).
    """

    cuda: CudaVersion
    floor: DriverVersion | None
    ptx_cuda: CudaVersion

    def terms(self, coverage: Coverage) -> tuple[tuple[Requirement, ...], ...]:
        """Alternatives (any one suffices) over the GFD driver and CUDA labels."""
        native = _at_least_cuda(self.cuda)
        if self.floor is None:
            return native
        same_major: tuple[Requirement, ...] = (_equal(CUDA_MAJOR, self.cuda.major),)
        if coverage == "ptx":
            if self.ptx_cuda.major > self.cuda.major:
                return native  # PTX from a newer major never loads below the native floor
            if self.ptx_cuda.major == self.cuda.major:
                if self.ptx_cuda.minor >= self.cuda.minor:
                    return native  # the PTX floor already implies native support
                same_major += (_greater(CUDA_MINOR, self.ptx_cuda.minor - 1),)
        return native + tuple(same_major + t for t in _at_least_driver(self.floor))


@dataclass(frozen=True)
class NodeAffinity:
    """The required node affinity that keeps an image's pods on nodes where it runs."""

    image: str  # the catalog name, for messages
    capabilities: tuple[CapabilityRule, ...]
    driver: DriverRule
    terms: tuple[Term, ...]  # any term admits a node

    def admits(self, labels: Mapping[str, str]) -> bool:
        """Whether the scheduler may place the pod on a node with these labels."""
        return any(term.matches(labels) for term in self.terms)

    def to_json(self) -> dict[str, Any]:
        """The pod's `spec.affinity`."""
        return {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [t.to_json() for t in self.terms]
                }
            }
        }


def node_affinity(
    image: ImageSpec,
    compat: Compat | None = None,
    capabilities: Sequence[tuple[int, int]] | None = None,
) -> NodeAffinity | None:
    """The affinity for a CUDA image (None for a CPU image, which runs on any node).

    One term per (admitted compute capability, driver alternative): node affinity is an OR of
    ANDs, and the driver a node needs depends on whether its GPU runs SASS or JIT-compiled PTX.
    Forward compatibility is not used: GFD labels cannot tell the consumer GPUs it excludes.
    """
    if not image.is_cuda:
        return None
    if image.cuda is None:
        raise DataError(f"image {image.name} is a cuda image without a CUDA version")
    compat = compat or load_compat()
    known = known_capabilities() if capabilities is None else tuple(capabilities)
    rules = tuple(
        CapabilityRule(cc, coverage)
        for cc in sorted(set(known))
        if (coverage := gpu_coverage(cc, image, compat)) != "none"
    )
    if not rules:
        raise UsageError(
            f"image {image.name} has kernels for no GPU cudabox knows, so no node could run it",
            "choose another image, or add the GPU to data/compute_capabilities.toml",
        )
    driver = DriverRule(
        cuda=image.cuda,
        floor=compat.minor_version_floor(image.cuda.major),
        ptx_cuda=image.ptx_cuda or image.cuda,
    )
    terms = tuple(
        Term((_equal(COMPUTE_MAJOR, r.cc[0]), _equal(COMPUTE_MINOR, r.cc[1]), *alt))
        for r in rules
        for alt in driver.terms(r.coverage)
    )
    return NodeAffinity(image.name, rules, driver, terms)


def gfd_labels(host: HostProfile, compat: Compat | None = None) -> dict[str, str]:
    """The GFD labels (those the affinity reads) that a node like `host` carries.

    Empty where GFD labels nothing: no GPU, a GPU NVML cannot read, or a driver version that is
    not X.Y[.Z]. A node whose GPUs differ in compute capability is refused: GFD labels one of its
    models, chosen by map order, so no label-based affinity can vouch for the others.
    """
    gpus = host.gpus
    if not gpus or host.driver_version is None or any(g.cc is None for g in gpus):
        return {}
    # Models that share a compute capability (A100 40GB and 80GB) carry the same labels.
    if len({g.cc for g in gpus}) > 1:
        models = sorted({(g.name or "unknown", g.compute_capability or "?") for g in gpus})
        listed = ", ".join(f"{name} (CC {cc})" for name, cc in models)
        raise UsageError(
            f"{host.name} has GPUs of several models ({listed}); GPU Feature Discovery labels the "
            "node with one of them, so node affinity cannot keep pods off the others",
            "use nodes with one GPU model each (the usual cluster layout)",
        )
    parts = host.driver_version.strip().split(".")
    if not 2 <= len(parts) <= 3:
        return {}
    try:
        driver = DriverVersion.parse(host.driver_version)
    except ValueError:
        return {}
    supported = host.driver_cuda or (compat or load_compat()).cuda_for_driver(driver)
    cc = gpus[0].cc
    assert cc is not None
    labels = {
        COMPUTE_MAJOR: str(cc[0]),
        COMPUTE_MINOR: str(cc[1]),
        DRIVER_MAJOR: parts[0],
        DRIVER_MINOR: parts[1],
        DRIVER_REVISION: parts[2] if len(parts) > 2 else "",
    }
    if supported is not None:
        labels |= {CUDA_MAJOR: str(supported.major), CUDA_MINOR: str(supported.minor)}
    return labels


@cache
def known_capabilities() -> tuple[tuple[int, int], ...]:
    """Every real compute capability (data/compute_capabilities.toml), ascending."""
    text, where = read_data("compute_capabilities.toml", _CC_FIX)
    return parse_capabilities(text, where)


_CC_FIX = (
    "reinstall cudabox; if you edited data/compute_capabilities.toml, correct the row it names"
)
_CC_KEYS = ("cc", "gpus", "source")


def parse_capabilities(
    data: Mapping[str, Any] | str, where: str = "compute_capabilities.toml"
) -> tuple[tuple[int, int], ...]:
    """The capabilities of compute_capabilities.toml (its text, or the parsed table), ascending.

    As strict as compat.toml's loader: any flaw is a DataError naming the row.
    """
    data = parse_table(data, where, _CC_FIX, {"compute_capability", "sources"})
    sources = sources_of(data, where, _CC_FIX)
    rows = rows_of(data, "compute_capability", where, _CC_FIX)
    seen: list[tuple[int, int]] = []
    for n, row in enumerate(rows, start=1):
        at = f"{where} [[compute_capability]] row {n}"
        for key in row:
            if key not in _CC_KEYS:
                raise DataError(f"{at}: unknown key {key!r}", _CC_FIX)
        for key in _CC_KEYS:
            if key not in row:
                raise DataError(f"{at}: missing key {key!r}", _CC_FIX)
            if not isinstance(row[key], str):
                raise DataError(f"{at}: {key!r} must be a string, got {row[key]!r}", _CC_FIX)
        try:
            cc = parse_cc(row["cc"])
        except ValueError as exc:
            raise DataError(f"{at}: {exc}", _CC_FIX) from None
        check_cited(row, sources, at, _CC_FIX)
        if cc in seen:
            raise DataError(f"{at}: compute capability {row['cc']} appears twice", _CC_FIX)
        seen.append(cc)
    return tuple(sorted(seen))


def _at_least_cuda(version: CudaVersion) -> tuple[tuple[Requirement, ...], ...]:
    """The node's driver supports CUDA >= version."""
    return (
        (_greater(CUDA_MAJOR, version.major),),
        (_equal(CUDA_MAJOR, version.major), _greater(CUDA_MINOR, version.minor - 1)),
    )


def _at_least_driver(floor: DriverVersion) -> tuple[tuple[Requirement, ...], ...]:
    """The node's driver version >= floor, compared part by part like DriverVersion.

    A floor of one part (580) is one term; the minor and revision terms appear only where the
    floor is not a whole major (525.60.13).
    """
    parts = floor.parts
    if len(parts) > 3:
        raise DataError(f"driver floor {floor} has more parts than GFD labels (X.Y.Z)")
    keys = (DRIVER_MAJOR, DRIVER_MINOR, DRIVER_REVISION)
    alternatives: list[tuple[Requirement, ...]] = []
    for depth, part in enumerate(parts):
        prefix = tuple(_equal(keys[i], parts[i]) for i in range(depth))
        last = depth == len(parts) - 1
        # The last part may be equal (>=); an earlier one must be greater, else the next decides.
        alternatives.append((*prefix, _greater(keys[depth], part - 1 if last else part)))
    return tuple(alternatives)


def _greater(key: str, bound: int) -> Requirement:
    return Requirement(key, "Gt", (str(bound),))


def _equal(key: str, value: int) -> Requirement:
    # NVML pads only the revision ("580.95.05"), and GFD writes the CUDA version and the compute
    # capability with %d, so every label compared for equality is canonical text and In reads it.
    return Requirement(key, "In", (str(value),))
