"""CUDABOX_REQUIRE: which real systems a run may not skip."""

from __future__ import annotations

import pytest

from realtools import SYSTEMS, required, unavailable


def test_all_names_every_system_and_a_list_names_only_its_own() -> None:
    assert all(required(s, {"CUDABOX_REQUIRE": "all"}) for s in SYSTEMS)
    picked = {"CUDABOX_REQUIRE": " slurm, podman "}
    assert [s for s in SYSTEMS if required(s, picked)] == ["slurm", "podman"]
    assert not any(required(s, {}) for s in SYSTEMS)


def test_a_missing_required_system_fails_and_an_optional_one_skips(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CUDABOX_REQUIRE", "slurm")
    with pytest.raises(pytest.fail.Exception, match="forbids skipping"):
        unavailable("slurm", "no Slurm here")
    with pytest.warns(UserWarning, match="no Podman"), pytest.raises(pytest.skip.Exception):
        unavailable("podman", "no Podman here")
