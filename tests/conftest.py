"""Shared fixtures. Docker tests run against a real engine; CI forbids skipping them."""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from realtools import unavailable

TEST_LABEL = "cudabox.test"
# Tests that use these fixtures get the marker, so `-m "not slurm"` and the like select by system.
_MARKER_OF_FIXTURE = {
    "docker_engine": "docker",
    "base_image": "docker",
    "catalog_image": "docker",
    "registry": "registry",
    "token_registry": "registry",
    "tls_registry": "registry",
    "slurm_cluster": "slurm",
    "podman": "podman",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for name in getattr(item, "fixturenames", ()):
            marker = _MARKER_OF_FIXTURE.get(name)
            if marker is not None:
                item.add_marker(marker)


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Any]:
    """A Docker SDK client for the real engine; skips loudly without one (fails under CI).

    At the end, a test container that is still there is a leftover: the session fails. Only
    containers created during this session count (another session may be running its own).
    """
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:
        unavailable(
            "docker",
            f"no Docker engine answers ({exc}); Docker tests need one (`bash scripts/bootstrap` "
            "starts one; CI starts its own, .ci/engine.sh)",
        )
    started = time.time()
    yield client

    def ours() -> list[Any]:
        found = client.containers.list(all=True, filters={"label": TEST_LABEL})
        return [c for c in found if _created(c) >= started]

    deadline = time.monotonic() + 30
    while ours() and time.monotonic() < deadline:  # auto-removal may be a moment behind
        time.sleep(1)
    leftovers = ours()
    for container in leftovers:
        container.remove(force=True)
    client.close()
    if leftovers:
        names = ", ".join(c.name for c in leftovers)
        pytest.fail(f"tests left containers behind: {names}")


def _created(container: Any) -> float:
    """When the engine created a container (seconds since the epoch)."""
    import datetime as dt

    created = container.attrs.get("Created", "")
    if isinstance(created, int | float):  # the list answer gives seconds; inspect gives ISO text
        return float(created)
    text = str(created)
    stamp = text.split(".")[0].rstrip("Z")
    try:
        return dt.datetime.fromisoformat(stamp).replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        return time.time()


@pytest.fixture(scope="session")
def base_image(docker_engine: Any) -> str:
    """The images' base on this engine: the official one if there, else the local bootstrap
    (`cudabox base` makes one of them, as CI's engine can pull nothing)."""
    import subprocess
    import sys

    from cudabox.images.base import bootstrap_name
    from cudabox.images.catalog import load_catalog

    official = load_catalog().images[0].base_image
    candidates = (official, bootstrap_name(official))
    if not any(docker_engine.images.list(name=ref) for ref in candidates):
        subprocess.run([sys.executable, "-m", "cudabox", "base"], check=True, timeout=900)
    return next(ref for ref in candidates if docker_engine.images.list(name=ref))


@pytest.fixture(scope="session")
def catalog_image(docker_engine: Any) -> Iterator[Any]:
    """Factory: the real catalog image NAME, built once if the engine lacks it.

    Images this fixture built are removed at the end of the session; images that were there
    before (a user's, or a nox session's) are left alone.
    """
    import subprocess
    import sys

    from cudabox.images.catalog import load_catalog

    catalog = load_catalog()
    made: list[str] = []  # tags and build-stage ids, to remove afterwards

    def get(name: str) -> str:
        spec = catalog.get(name)
        if not docker_engine.images.list(name=spec.tag):
            # The host's pip settings (CA bundle, find-links) reach the build, as in the nox sessions.
            env = {**os.environ, "CUDABOX_HOST_PIP": "1"}
            subprocess.run(
                [sys.executable, "-m", "cudabox", "base"], check=True, env=env, timeout=900
            )
            result = subprocess.run(
                [sys.executable, "-m", "cudabox", "build", name, "--json"],
                check=True,
                env=env,
                timeout=2400,
                stdout=subprocess.PIPE,
                text=True,
            )
            (entry,) = json.loads(result.stdout)
            made.append(spec.tag)
            if entry.get("build_stage_id"):
                made.append(entry["build_stage_id"])
        return str(spec.tag)

    yield get
    for ref in made:  # the image first: its build stage is only removable once unreferenced
        try:
            docker_engine.images.remove(ref, force=True)
        except Exception as exc:  # a stage still shared with a user's image stays
            warnings.warn(f"could not remove {ref}: {exc}", stacklevel=1)
