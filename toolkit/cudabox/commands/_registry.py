"""The registry publish and pull need: --registry, else $CUDABOX_REGISTRY."""

from __future__ import annotations

import os

from cudabox.errors import UsageError
from cudabox.images.remote import image_reference
from cudabox.options import REGISTRY_ENV


def registry_from(value: str | None) -> str:
    """--registry, else $CUDABOX_REGISTRY; a command that needs one but has none: a usage error."""
    repo = value or os.environ.get(REGISTRY_ENV)
    if not repo:
        raise UsageError(
            "no registry named",
            "pass --registry REPO (e.g. ghcr.io/ORG/cudabox or 127.0.0.1:5000/cudabox) "
            f"or set {REGISTRY_ENV}",
        )
    image_reference(repo, "x")  # validates the prefix
    return repo.rstrip("/")
