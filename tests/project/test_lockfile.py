"""The project lock file: its TOML form read back exactly, strict reading, staleness."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from cudabox.errors import DataError
from cudabox.images.catalog import load_catalog
from cudabox.images.lock import lock_digest
from cudabox.project.declaration import candidate_images, load_project
from cudabox.project.lockfile import (
    ImageLock,
    LockedPackage,
    ProjectLock,
    lock_inputs,
    read_lock,
    render_lock,
    require_current,
    write_lock,
)
from cudabox.versions import Arch

H1 = "sha256:" + "1" * 64
H2 = "sha256:" + "2" * 64

LOCK = ProjectLock(
    project="demo",
    inputs_sha256="ab" * 32,
    images=(
        ImageLock(
            image="torch-2.10-cu128",
            base_lock_sha256="cd" * 32,
            packages=(
                LockedPackage("rich", "14.0.0", (H1, H2), 1234, ("rich",), direct=True),
                LockedPackage(
                    "fakeext",
                    "1.0",
                    (H1,),
                    99,
                    ("fakeext",),
                    sass=(Arch.parse("8.0"), Arch.parse("9.0")),
                    ptx=(Arch.parse("9.0"),),
                    cuda_runtime=(12,),
                ),
            ),
            findings=('held-back: a "quoted" note',),
        ),
        ImageLock(image="torch-2.13-cpu", base_lock_sha256="ef" * 32, packages=()),
    ),
)


def test_round_trip_gives_the_same_value_and_bytes(tmp_path: Path) -> None:
    path = tmp_path / "cudabox.lock"
    assert write_lock(path, LOCK) is True
    assert read_lock(path) == LOCK
    assert write_lock(path, LOCK) is False  # same text: not rewritten
    assert render_lock(read_lock(path)) == path.read_text()
    image = LOCK.images[0]
    assert image.installed_bytes == 1234 + 99
    assert [p.name for p in image.extensions] == ["fakeext"]
    assert image.requirements_text().splitlines()[1] == f"rich==14.0.0 --hash={H1} --hash={H2}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("version = 2\nproject = 'x'\ninputs = 'y'\n", "version 2 is not 1"),
        ("version = 1\ninputs = 'y'\n", "'project' is missing"),
        ("version = 1\nproject = 'x'\ninputs = 'y'\nimages = 3\n", "'images' is not a list"),
        ("version = 1\nproject = 'x'\ninputs = 'y'\n[[images]]\nname = 'i'\n", "'base_lock'"),
        (
            "version = 1\nproject = 'x'\ninputs = 'y'\n[[images]]\nname = 'i'\nbase_lock = 'b'\n"
            "[[images.packages]]\nname = 'p'\nversion = '1'\nhashes = []\nsass = ['sm_eighty']\n",
            "package p",
        ),
        ("version = 1\nproject = [\n", "not valid TOML"),
    ],
)
def test_a_flawed_lock_is_a_data_error_naming_the_problem(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "cudabox.lock"
    path.write_text(text)
    with pytest.raises(DataError) as caught:
        read_lock(path)
    assert expected in caught.value.message
    assert caught.value.exit_code == 6
    assert "cudabox lock" in (caught.value.fix or "")


def test_a_missing_lock_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_lock(tmp_path / "cudabox.lock")


def test_staleness_follows_the_requirements_and_the_images(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("torch\nrich\n")
    project = load_project(tmp_path)
    images = candidate_images(project, load_catalog())
    lock = ProjectLock(
        project.name,
        lock_inputs(project, images),
        tuple(ImageLock(i.name, lock_digest(i.lock), ()) for i in images),
    )
    require_current(project, lock, images, tmp_path / "cudabox.lock")  # no error
    (tmp_path / "requirements.txt").write_text("torch\nrich\ntqdm\n")
    edited = load_project(tmp_path)
    with pytest.raises(DataError, match="requirements or settings changed"):
        require_current(edited, lock, images, tmp_path / "cudabox.lock")
    fewer = replace(lock, images=lock.images[1:])
    with pytest.raises(DataError, match=f"no entry for {images[0].name}"):
        require_current(
            edited, replace(fewer, inputs_sha256="0" * 64), images, tmp_path / "cudabox.lock"
        )
