"""`cudabox base`: which Debian suite a base name means, and what gets recorded where."""

from __future__ import annotations

from pathlib import Path

import pytest

from cudabox.errors import UsageError
from cudabox.images.base import PACKAGES, mmdebstrap_command, package_list_path, suite_of


@pytest.mark.parametrize(
    ("image", "suite"),
    [
        ("python:3.11-slim-bookworm", "bookworm"),
        ("python:3.12-trixie", "trixie"),
        ("x/base:bookworm", "bookworm"),
    ],
)
def test_suite_of(image: str, suite: str) -> None:
    assert suite_of(image) == suite


@pytest.mark.parametrize("image", ["python:3.11-slim", "ubuntu:24.04", "python:3.11-notbookworm"])
def test_a_base_without_a_debian_suite_is_a_usage_error(image: str) -> None:
    with pytest.raises(UsageError) as caught:
        suite_of(image)
    assert caught.value.fix is not None and "pull" in caught.value.fix


def test_the_command_matches_what_the_dockerfiles_need(tmp_path: Path) -> None:
    command = mmdebstrap_command("bookworm", tmp_path / "base.tar")
    assert command[:2] == ["mmdebstrap", "--variant=apt"]
    assert {"python3", "python3-venv", "ca-certificates"} <= set(PACKAGES)
    assert command[-2:] == ["bookworm", str(tmp_path / "base.tar")]


def test_package_list_path_is_a_plain_file_name(tmp_path: Path) -> None:
    assert (
        package_list_path(tmp_path, "python:3.11-slim-bookworm")
        == tmp_path / "base" / "python-3.11-slim-bookworm.txt"
    )
