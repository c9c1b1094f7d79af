"""The one target grammar of lock, render, build, verify, publish and pull.

A target is a catalog image name, FRAMEWORK:FLAVOR (the newest image of that kind: torch:cuda,
tf:cpu; pytorch/tensorflow and gpu are accepted spellings) or `all`.
"""

from __future__ import annotations

from collections.abc import Sequence

from cudabox.errors import UsageError
from cudabox.images.catalog import Catalog, ImageSpec

FRAMEWORK_ALIASES = {
    "torch": "torch",
    "pytorch": "torch",
    "tensorflow": "tensorflow",
    "tf": "tensorflow",
}
FLAVOR_ALIASES = {"cpu": "cpu", "cuda": "cuda", "gpu": "cuda"}


def resolve_targets(
    catalog: Catalog, targets: Sequence[str], empty_means_all: bool = False
) -> list[ImageSpec]:
    """The catalog images the targets name, each once, in the order named."""
    if not targets:
        if empty_means_all:
            return list(catalog.images)
        raise UsageError(
            "name at least one image", "e.g. torch-2.13-cpu, torch:cuda, tf:cpu or all"
        )
    chosen: list[ImageSpec] = []
    for target in targets:
        if target == "all":
            specs = list(catalog.images)
        elif ":" in target:
            framework, _, flavor = target.partition(":")
            if framework not in FRAMEWORK_ALIASES or flavor not in FLAVOR_ALIASES:
                raise UsageError(
                    f"target {target!r} is not FRAMEWORK:FLAVOR",
                    "use torch:cuda, torch:cpu, tensorflow:cuda or tensorflow:cpu (tf and gpu work too)",
                )
            specs = [catalog.newest(FRAMEWORK_ALIASES[framework], FLAVOR_ALIASES[flavor])]
        else:
            specs = [catalog.get(target)]
        chosen += [s for s in specs if s not in chosen]
    return chosen
