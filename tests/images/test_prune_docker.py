"""`cudabox prune` against the real engine: a tiny labelled image pair, as `cudabox build` makes.

Each test builds, FROM the local base, a build stage that writes BLOB random bytes (labelled as
images/Dockerfile.template labels it) and an image that copies them, labelled as cudabox labels
its images; every image and container made here also carries cudabox.test=<token>, and prune runs
with --label cudabox.test=<token>, so it never touches what others have on the shared engine.
The byte figures are exact: random bytes do not compress or dedupe, and the layers the base
holds stay.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import TEST_LABEL
from cudabox.container import MANAGED_LABEL
from cudabox.engine import Engine
from realtools import podman_service

pytestmark = [pytest.mark.docker]

BLOB = 3_000_000  # bytes the build stage writes, and the image copies
STAGE = BLOB + len("stage\n")  # the stage's layer: the blob and a file of its own
CONTAINER_WRITES = 1_000_000  # bytes the stopped container leaves in its writable layer


@dataclass(frozen=True)
class Pair:
    token: str
    tag: str
    image_id: str
    stage_id: str
    context: Path


@pytest.fixture(scope="module")
def engine(docker_engine: Any) -> Iterator[Engine]:
    with Engine.connect() as connected:
        yield connected


def _dockerfile(token: str) -> str:
    # The shape of images/Dockerfile.template: a labelled build stage, then the image.
    return (
        "ARG BASE_IMAGE\n"
        "FROM ${BASE_IMAGE} AS build\n"
        # The stage's layer is more than the blob, so it is not the layer the COPY makes (the
        # engine would store one layer for both, and removing the stage would free nothing).
        f"RUN head -c {BLOB} /dev/urandom >/blob && echo stage >/stage-only\n"
        f'LABEL cudabox.stage="build" cudabox.stage_of="prune-test" {TEST_LABEL}="{token}"\n'
        "FROM ${BASE_IMAGE}\n"
        "COPY --from=build /blob /blob\n"
        "ARG MARK=1\n"
        f'LABEL cudabox.image="prune-test" cudabox.mark="${{MARK}}" {TEST_LABEL}="{token}"\n'
    )


def build_pair(engine: Engine, base: str, folder: Path, token: str, mark: str = "1") -> Pair:
    folder.mkdir(exist_ok=True)
    (folder / "Dockerfile").write_text(_dockerfile(token))
    tag = f"cudabox-test/prune:{token}"
    outcome = engine.build(folder, tag, buildargs={"BASE_IMAGE": base, "MARK": mark})
    froms = [n for n, (step, _) in enumerate(outcome.layers) if step.startswith("FROM ")]
    stage_id = outcome.layers[froms[1] - 1][1]
    info = engine.image(tag)
    assert info is not None
    return Pair(token, tag, info.id, stage_id, folder)


@pytest.fixture
def token(docker_engine: Any) -> Iterator[str]:
    """This test's label value; whatever carries it is removed at the end, whatever happens."""
    value = uuid.uuid4().hex[:12]
    yield value
    selector = {"label": f"{TEST_LABEL}={value}"}
    for container in docker_engine.containers.list(all=True, filters=selector):
        container.remove(force=True)
    for _ in range(3):  # children before parents
        for image in docker_engine.images.list(all=True, filters=selector):
            try:
                docker_engine.images.remove(image.id, force=True)
            except Exception:
                continue


def stopped_container(docker_engine: Any, image: str, token: str) -> str:
    """A cudabox container that ran and stopped (as a cudabox killed mid-run leaves one)."""
    container = docker_engine.containers.run(
        image,
        ["sh", "-c", f"head -c {CONTAINER_WRITES} /dev/urandom >/tmp/left"],
        labels={MANAGED_LABEL: "1", TEST_LABEL: token},
        detach=True,
    )
    assert container.wait(timeout=60)["StatusCode"] == 0
    return str(container.id)


def cudabox_prune(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "cudabox", "prune", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result


def by_kind(document: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for item in document["removed"]:
        found.setdefault(item["kind"], []).append(item)
    return found


def test_prune_removes_the_leftovers_and_keeps_the_image(
    engine: Engine, docker_engine: Any, base_image: str, tmp_path: Path, token: str
) -> None:
    old = build_pair(engine, base_image, tmp_path / "ctx", token, mark="1")
    new = build_pair(engine, base_image, tmp_path / "ctx", token, mark="2")
    assert new.stage_id == old.stage_id  # the rebuild took the stage from the cache
    assert new.image_id != old.image_id and engine.image(old.image_id) is not None
    container = stopped_container(docker_engine, new.tag, token)
    scope = f"--label={TEST_LABEL}={token}"

    planned = json.loads(cudabox_prune("--dry-run", "--json", scope).stdout)
    assert planned["kind"] == "cudabox.prune" and planned["schema"] == 1
    assert planned["dry_run"] is True and planned["images"] is False
    assert engine.image(new.stage_id) is not None and engine.image(old.image_id) is not None

    done = json.loads(cudabox_prune("--json", scope).stdout)
    kinds = by_kind(done)
    assert sorted(kinds) == ["build-stage", "container", "old-image"]
    assert [i["id"] for i in kinds["container"]] == [container]
    assert [i["id"] for i in kinds["old-image"]] == [old.image_id]
    (stage,) = kinds["build-stage"]
    assert stage["serves"] == "prune-test" and stage["name"] == "<none>"
    # The stage alone holds its layer; the old image's layers are the new one's.
    assert stage["bytes"] == STAGE
    assert kinds["old-image"][0]["bytes"] == 0
    assert CONTAINER_WRITES <= kinds["container"][0]["bytes"] < CONTAINER_WRITES + 100_000
    assert done["freed_bytes"] == sum(i["bytes"] for i in done["removed"])
    # The dry run said the same, to the byte.
    assert [(i["kind"], i["id"], i["bytes"]) for i in planned["removed"]] == [
        (i["kind"], i["id"], i["bytes"]) for i in done["removed"]
    ]

    assert engine.image(new.stage_id) is None
    assert engine.image(old.image_id) is None
    assert docker_engine.containers.list(all=True, filters={"id": container}) == []
    kept = engine.image(new.tag)
    assert kept is not None and kept.id == new.image_id  # the image itself stays

    again = json.loads(cudabox_prune("--json", scope).stdout)
    assert again["removed"] == [] and again["freed_bytes"] == 0


def test_prune_images_removes_what_cudabox_built_and_frees_its_layers(
    engine: Engine, base_image: str, tmp_path: Path, token: str
) -> None:
    pair = build_pair(engine, base_image, tmp_path / "ctx", token)
    scope = f"--label={TEST_LABEL}={token}"
    table = cudabox_prune("--dry-run", "--images", scope)
    assert "would remove" in table.stdout and pair.tag in table.stdout
    assert f"would free {(STAGE + BLOB) / 1e6:,.1f} MB ({STAGE + BLOB} bytes)" in table.stdout

    done = json.loads(cudabox_prune("--images", "--json", scope).stdout)
    kinds = by_kind(done)
    assert sorted(kinds) == ["build-stage", "image"]
    assert kinds["image"][0]["name"] == pair.tag and kinds["image"][0]["bytes"] == BLOB
    assert done["freed_bytes"] == STAGE + BLOB  # the stage's layer and the image's copy
    assert engine.image(pair.tag) is None and engine.image(pair.stage_id) is None
    assert engine.image(base_image) is not None  # the base is never cudabox's to prune


def test_an_image_built_from_a_cudabox_image_is_kept_and_so_are_its_layers(
    engine: Engine, base_image: str, tmp_path: Path, token: str
) -> None:
    pair = build_pair(engine, base_image, tmp_path / "ctx", token)
    user = tmp_path / "user"
    user.mkdir()
    (user / "Dockerfile").write_text(f"FROM {pair.tag}\nRUN echo mine >/mine\n")
    user_tag = f"cudabox-test/prune-user:{token}"
    engine.build(user, user_tag)
    scope = f"--label={TEST_LABEL}={token}"

    done = json.loads(cudabox_prune("--images", "--json", scope).stdout)
    (kept,) = done["kept"]
    assert kept["name"] == user_tag and "built FROM a cudabox image" in kept["reason"]
    kinds = by_kind(done)
    # The user's image still needs the image's layers: untagging it frees nothing.
    assert kinds["image"][0]["bytes"] == 0
    assert engine.image(user_tag) is not None
    mine = engine.history(user_tag)
    assert any("echo mine" in line for line in mine)


# ---- Podman: its answer to a removal names no layers; the bytes must still be right ------------


@pytest.fixture
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """DOCKER_HOST of a Podman API service of this test's own."""
    with podman_service(tmp_path_factory.mktemp("podman")) as host:
        yield host


def test_prune_on_podman_counts_the_layers_that_left(
    podman: str, tmp_path: Path, token: str
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "blob").write_bytes(os.urandom(BLOB))
    tarball = tmp_path / "root.tar"
    subprocess.run(["tar", "-C", str(root), "-cf", str(tarball), "blob"], check=True)
    # An untagged, labelled image: what a build stage is to prune.
    imported = subprocess.run(
        ["podman", "import", "--quiet"]
        + [
            arg
            for label in (
                "cudabox.stage=build",
                "cudabox.stage_of=prune-test",
                f"{TEST_LABEL}={token}",
            )
            for arg in ("--change", f"LABEL {label}")
        ]
        + [str(tarball)],
        capture_output=True,
        text=True,
        check=True,
    )
    image_id = imported.stdout.strip().splitlines()[-1].removeprefix("sha256:")
    try:
        env = {"DOCKER_HOST": podman}
        scope = f"--label={TEST_LABEL}={token}"
        planned = json.loads(cudabox_prune("--dry-run", "--json", scope, env=env).stdout)
        done = json.loads(cudabox_prune("--json", scope, env=env).stdout)
        (stage,) = done["removed"]
        assert stage["kind"] == "build-stage" and stage["id"].endswith(image_id)
        # Podman weighs a layer as its tar: the blob and the tar's headers.
        assert BLOB < stage["bytes"] < BLOB + 64_000
        assert done["freed_bytes"] == planned["freed_bytes"] == stage["bytes"]
        listed = subprocess.run(
            ["podman", "images", "-a", "-q", "--no-trunc"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert image_id not in listed.stdout
    finally:
        subprocess.run(["podman", "rmi", "--force", image_id], capture_output=True, check=False)
