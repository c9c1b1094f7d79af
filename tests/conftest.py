"""Shared fixtures. Docker tests run against a real engine; CI forbids skipping them."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

REQUIRE_DOCKER = os.environ.get("CUDABOX_REQUIRE_DOCKER") == "1"
TEST_LABEL = "cudabox.test"


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Any]:
    """A Docker SDK client for the real engine; skips loudly without one (fails under CI)."""
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:
        message = f"no Docker engine answers ({exc}); Docker tests need one (see .ci/engine.sh)"
        if REQUIRE_DOCKER:
            pytest.fail(message + " and CUDABOX_REQUIRE_DOCKER=1 forbids skipping")
        warnings.warn(message, stacklevel=1)
        pytest.skip(message)
    yield client
    leftovers = client.containers.list(all=True, filters={"label": TEST_LABEL})
    for container in leftovers:
        container.remove(force=True)
    client.close()
    if leftovers:
        names = ", ".join(c.name for c in leftovers)
        pytest.fail(f"tests left containers behind: {names}")
