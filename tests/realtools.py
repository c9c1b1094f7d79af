"""The real systems the tests run against, and what happens when one is missing.

Each is named: docker, registry, slurm, podman, chromium, pypi (the package index). Where one is missing a test skips
loudly (a warning), unless CUDABOX_REQUIRE names it (a comma-separated list, or `all`, which is
what .ci/run sets): then the test fails, so CI can never pass by skipping what it must test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, NoReturn

import pytest

System = Literal["docker", "registry", "slurm", "podman", "chromium", "pypi"]
SYSTEMS: tuple[System, ...] = ("docker", "registry", "slurm", "podman", "chromium", "pypi")


def required(system: System, env: dict[str, str] | None = None) -> bool:
    """True where CUDABOX_REQUIRE names `system` (or says `all`)."""
    text = (os.environ if env is None else env).get("CUDABOX_REQUIRE", "")
    names = {name.strip() for name in text.split(",") if name.strip()}
    return "all" in names or system in names


def unavailable(system: System, message: str) -> NoReturn:
    """Skip loudly, or fail where CUDABOX_REQUIRE names the system."""
    if required(system):
        pytest.fail(
            f"{message}; CUDABOX_REQUIRE={os.environ.get('CUDABOX_REQUIRE')} forbids skipping"
        )
    warnings.warn(message, stacklevel=2)
    pytest.skip(message)


@contextmanager
def podman_service(folder: Path) -> Iterator[str]:
    """DOCKER_HOST of a Podman API service of its own, stopped afterwards."""
    if shutil.which("podman") is None:
        unavailable("podman", "podman is not installed (bash scripts/bootstrap --test installs it)")
    socket = folder / "podman.sock"
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{socket}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not socket.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert socket.exists(), "podman system service did not create its socket"
        yield f"unix://{socket}"
    finally:
        service.terminate()
        service.wait(timeout=30)
