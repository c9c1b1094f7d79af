"""Fixtures for the workload tests: one per framework, skipped where it is not installed."""

from __future__ import annotations

import pytest
from workload_harness import FAST, Run, Workload


@pytest.fixture(scope="session", params=["torch", "tensorflow"])
def workload(request: pytest.FixtureRequest) -> Workload:
    framework: str = request.param
    # Skip cleanly where the framework is not installed (the toolkit's own test venv has none).
    pytest.importorskip(framework)
    return Workload(framework)


@pytest.fixture(scope="session")
def reference(workload: Workload, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One uninterrupted FAST run per framework, shared by the resume tests (do not write to it)."""
    out = tmp_path_factory.mktemp(f"reference-{workload.framework}")
    run = workload.run(out, *FAST, "--quiet")
    assert run.returncode == 0, run.stdout + run.stderr
    return run
