"""The registry path as a user types it: publish, choose without pulling, pull by digest, run.

Everything goes through the `cudabox` command line against a real `docker-registry` on 127.0.0.1
(its own, so its storage can be measured) and the real Docker engine, with the real CPU torch
image; skopeo, an independent client, checks what was pushed.

No test depends on what the engine held before it: the CPU torch image is shared (with other
tests, sessions and users), so it is never removed; the host that lacks an image is made with an
image of the test's own, the catalog image plus a layer holding a fresh uuid, which no other image
can hold. The base is whichever one the image was built on (its labels say which), never a name
the engine may not have.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from cudabox.container import TransferEvent
from cudabox.engine import Engine
from cudabox.images.base import bootstrap_name
from cudabox.images.catalog import load_catalog
from cudabox.images.labels import labels_for, provenance_labels
from cudabox.images.lock import lock_digest
from cudabox.progress import TransferProgress
from registry_server import (
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    PASSWORD,
    USERNAME,
    RegistryServer,
    free_port,
    running_registry,
    sha256,
)

NAME = "torch-2.13-cpu"
PREFIX = "cudabox"  # the repository prefix inside the test registry: REPO = HOST/cudabox
TEST_LABEL = "cudabox.test=1"
CUDABOX = Path(sys.executable).with_name("cudabox")
OCI = "org.opencontainers.image."
ACCEPT = f"{DOCKER_MANIFEST}, {OCI_MANIFEST}, {OCI_INDEX}"
PINNED_RE = re.compile(r"@sha256:[0-9a-f]{64}$")


# ---- running the command line ------------------------------------------------------------------


@dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def assert_error(self, code: int, *fragments: str) -> None:
        """A cudabox error as users see it: the exit code, a message and a fix, no traceback."""
        assert self.code == code, f"exit {self.code}, expected {code}\n{self.err}"
        assert "Traceback" not in self.err, self.err
        assert self.err.startswith("cudabox: error: ") or "\ncudabox: error: " in self.err
        assert "\n  fix: " in self.err, self.err
        for fragment in fragments:
            assert fragment in self.err, f"{fragment!r} not in:\n{self.err}"


def cudabox(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 1800) -> Ran:
    """`cudabox ARGS` in a fresh process, as typed in a shell (stdout and stderr apart)."""
    command = [str(CUDABOX)] if CUDABOX.exists() else [sys.executable, "-m", "cudabox"]
    full_env = {
        **os.environ,
        "XDG_CACHE_HOME": str(cwd / "cache"),  # the config cache starts empty for each test
        "CUDABOX_HOST_PIP": "1",  # a stale image is rebuilt with the host's pip settings
        **(env or {}),
    }
    full_env.pop("CUDABOX_REGISTRY", None)
    done = subprocess.run(
        [*command, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Ran(done.returncode, done.stdout, done.stderr)


def skopeo(*args: str) -> Any:
    """`skopeo inspect` (an independent client) against the plain-HTTP test registry."""
    if shutil.which("skopeo") is None:
        pytest.fail("skopeo is not installed (`apt-get install skopeo`)")
    done = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout)


# ---- the registry, and what is in it -------------------------------------------------------------


@pytest.fixture(scope="module")
def own_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A registry of this module's own: its storage holds only what these tests push."""
    with running_registry(tmp_path_factory.mktemp("publish-registry")) as server:
        yield server


def manifest_digest(server: RegistryServer, repo: str, tag: str) -> str | None:
    head = requests.head(
        server.url(f"/v2/{repo}/manifests/{tag}"), headers={"Accept": ACCEPT}, timeout=10
    )
    return head.headers["Docker-Content-Digest"] if head.status_code == 200 else None


def delete_tags(server: RegistryServer, repo: str, tags: list[str]) -> None:
    """Delete the manifests these tags name (Distribution deletes by digest; tags go with them)."""
    digests = {d for d in (manifest_digest(server, repo, t) for t in tags) if d}
    for digest in digests:
        gone = requests.delete(server.url(f"/v2/{repo}/manifests/{digest}"), timeout=10)
        assert gone.status_code == 202, gone.text
    assert all(manifest_digest(server, repo, t) is None for t in tags)


@dataclass(frozen=True)
class Published:
    repo: str  # HOST/cudabox
    entry: dict[str, Any]  # what `cudabox publish --json` printed for the image
    image_id: str
    labels: dict[str, str]  # the engine's image's labels (the base it was built on among them)
    diff_ids: tuple[str, ...]
    layer_digests: tuple[str, ...]  # compressed, as the manifest lists them
    storage_bytes: int  # the registry's storage folder after the publish


@pytest.fixture(scope="module")
def published(
    own_registry: RegistryServer,
    catalog_image: Any,
    docker_engine: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Published]:
    """`cudabox publish torch-2.13-cpu --registry HOST/cudabox --json`, once for the module."""
    catalog_image(NAME)
    repo = f"{own_registry.host}/{PREFIX}"
    ran = cudabox("publish", NAME, "--registry", repo, "--json", cwd=tmp_path_factory.mktemp("pub"))
    assert ran.code == 0, ran.err
    (entry,) = ran.json()
    # publish may have rebuilt a stale image: read what the engine holds now.
    image = docker_engine.images.get(load_catalog().get(NAME).tag)
    # The push left a digest reference into this registry on the shared image: not ours to keep.
    drop_references(docker_engine, image.id, repo)
    manifest = skopeo("--raw", f"docker://{repo}/{NAME}:latest")
    try:
        yield Published(
            repo=repo,
            entry=entry,
            image_id=image.id,
            labels=dict(image.labels),
            diff_ids=tuple(image.attrs["RootFS"]["Layers"]),
            layer_digests=tuple(layer["digest"] for layer in manifest["layers"]),
            storage_bytes=own_registry.storage_bytes(),
        )
    finally:
        immutable = entry["immutable"].rpartition(":")[2]
        delete_tags(own_registry, f"{PREFIX}/{NAME}", ["latest", immutable])


def drop_references(docker_engine: Any, image_id: str, repo: str) -> None:
    """Remove the image's digest references into `repo` (REPO/NAME@sha256:...), only those."""
    attrs = docker_engine.api.inspect_image(image_id)
    for ref in attrs.get("RepoDigests") or ():
        if ref.startswith(f"{repo}/"):
            docker_engine.images.remove(ref)


# ---- publish ---------------------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.slow
def test_publish_prints_the_pushed_references_and_digests(
    published: Published, docker_engine: Any
) -> None:
    entry, repo = published.entry, published.repo
    spec = load_catalog().get(NAME)
    digest = entry["digest"]
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest)
    assert entry["name"] == NAME
    assert entry["reference"] == f"{repo}/{NAME}:latest"
    assert entry["pinned"] == f"{repo}/{NAME}@{digest}"
    # The immutable tag names the lock and the layers: VERSION-lockLOCK12-fsFS12.
    lock12 = lock_digest(spec.lock)[:12]
    assert re.fullmatch(
        rf"{repo}/{NAME}:2\.13\.0-lock{lock12}-fs[0-9a-f]{{12}}", entry["immutable"]
    )
    assert entry["layers"] == len(published.diff_ids) == len(published.layer_digests)
    assert entry["layers_uploaded"] == entry["layers"]  # a fresh registry: every layer is new
    assert entry["immutable_existed"] is False
    # The base it was built on, as the image's labels say (never the catalog's name as such).
    assert (entry["base_image"], entry["base_digest"]) == (
        published.labels[f"{OCI}base.name"],
        published.labels[f"{OCI}base.digest"],
    )
    # Both tags name the same manifest: the digest publish printed.
    assert skopeo(f"docker://{entry['reference']}")["Digest"] == digest
    assert skopeo(f"docker://{entry['immutable']}")["Digest"] == digest
    # The push tags were only for the push: the engine keeps the image under its catalog name.
    leftovers = [t for i in docker_engine.images.list() for t in i.tags if t.startswith(repo)]
    assert leftovers == []


@pytest.mark.docker
@pytest.mark.slow
def test_skopeo_reads_the_labels_and_environment_that_were_published(
    published: Published,
) -> None:
    config = skopeo("--config", f"docker://{published.repo}/{NAME}:latest")
    labels, env = config["config"]["Labels"], config["config"]["Env"]
    spec = load_catalog().get(NAME)
    for key, value in labels_for(spec, lock_digest(spec.lock)).items():
        if key not in ("cudabox.version", f"{OCI}base.name"):
            assert labels[key] == value, key
    # The base it was really built on (the official image or this machine's bootstrap), as the
    # image on the engine says, name and digest.
    for key in (f"{OCI}base.name", f"{OCI}base.digest"):
        assert labels[key] == published.labels[key], key
    assert labels[f"{OCI}base.name"] in (spec.base_image, bootstrap_name(spec.base_image))
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", labels[f"{OCI}base.digest"])
    # Provenance: when and from what it was built. Source and revision are there whenever the
    # checkout knows them (CI: GitHub's variables; here: git), and revision always is in git.
    wanted = {f"{OCI}created", f"{OCI}base.name", f"{OCI}base.digest", f"{OCI}revision"}
    wanted |= set(provenance_labels("", "", load_catalog().root.parent))
    assert wanted <= set(labels), sorted(wanted - set(labels))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", labels[f"{OCI}created"])
    assert re.fullmatch(r"[0-9a-f]{40}", labels[f"{OCI}revision"])
    assert labels[f"{OCI}base.name"]
    assert "PYTORCH_VERSION=2.13.0" in env  # what NGC sets and enroot's hooks read
    assert config["rootfs"]["diff_ids"] == list(published.diff_ids)


# ---- a GPU host's view: choose in the registry, pull the digest, run ---------------------------


def images_holding(docker_engine: Any, diff_ids: Sequence[str]) -> list[str]:
    """Every image on the engine (tagged or not) whose layers start with the stack `diff_ids`.

    A stack, not one layer: layers are reproducible, so another image (the TensorFlow CPU one)
    may hold the very same top layer (cudabox's own files) over different layers below it.
    """
    import docker.errors

    holders = []
    for summary in docker_engine.api.images(all=True):
        try:
            attrs = docker_engine.api.inspect_image(summary["Id"])
        except docker.errors.ImageNotFound:  # removed meanwhile (by another test)
            continue
        layers = (attrs.get("RootFS") or {}).get("Layers") or []
        if layers[: len(diff_ids)] == list(diff_ids):
            holders.append(f"{summary['Id'][:19]} {summary.get('RepoTags') or ''}")
    return holders


def wait_unused(docker_engine: Any, image_id: str, timeout_s: float = 600) -> None:
    """Wait until no container uses the image: other tests (or sessions) may be running it."""
    deadline = time.monotonic() + timeout_s
    while users := [
        c.name
        for c in docker_engine.containers.list(all=True, ignore_removed=True)
        if c.attrs["Image"] == image_id
    ]:
        if time.monotonic() > deadline:
            pytest.fail(f"containers {', '.join(users)} keep using {image_id}; cannot remove it")
        time.sleep(2)


@dataclass(frozen=True)
class Unique:
    """An image only this test has: the catalog image plus a layer with a fresh uuid in it."""

    repo: str  # HOST/unique-UUID: a repository prefix of its own, so `select` sees only it
    image_id: str
    diff_ids: tuple[str, ...]
    layer_digests: tuple[str, ...]
    pinned: str  # REPO/NAME@sha256:...


@pytest.fixture
def unique_published(
    published: Published, docker_engine: Any, own_registry: RegistryServer, tmp_path: Path
) -> Iterator[Unique]:
    """Publish an image no other image can share layers with, then remove it from the engine.

    The shared catalog image stays: the test needs "no image holds these layers" and makes it
    true for its own layers, whatever the engine held before (the layers below are the catalog
    image's, which the engine keeps).
    """
    marker = uuid.uuid4().hex
    repo = f"{own_registry.host}/unique-{marker[:12]}"
    ref = f"{repo}/{NAME}:latest"
    context = tmp_path / "context"
    context.mkdir()
    (context / "marker").write_text(marker + "\n")
    (context / "Dockerfile").write_text(
        f"FROM {load_catalog().get(NAME).tag}\nCOPY marker /opt/cudabox-test-marker\n"
    )
    engine = Engine(docker_engine)
    image_id = engine.build(context, ref, labels={"cudabox.test": "1"}).image_id
    try:
        digest = engine.push(ref)
        assert digest is not None
        attrs = docker_engine.api.inspect_image(image_id)
        manifest = skopeo("--raw", f"docker://{ref}")
        unique = Unique(
            repo=repo,
            image_id=attrs["Id"],
            diff_ids=tuple(attrs["RootFS"]["Layers"]),
            layer_digests=tuple(layer["digest"] for layer in manifest["layers"]),
            pinned=f"{repo}/{NAME}@{digest}",
        )
        assert unique.diff_ids[:-1] == published.diff_ids  # the catalog image, one layer more
        wait_unused(docker_engine, image_id)
        docker_engine.images.remove(image_id, force=True)  # every tag and digest reference
        yield unique
    finally:
        for leftover in docker_engine.images.list(all=True):
            if leftover.id == image_id:  # pulled back by the test
                wait_unused(docker_engine, image_id)
                docker_engine.images.remove(image_id, force=True)
        delete_tags(own_registry, f"unique-{marker[:12]}/{NAME}", ["latest"])


@pytest.mark.docker
@pytest.mark.slow
def test_a_host_without_the_image_chooses_in_the_registry_then_pulls_and_runs_that_digest(
    unique_published: Unique,
    docker_engine: Any,
    own_registry: RegistryServer,
    tmp_path: Path,
) -> None:
    repo, pinned = unique_published.repo, unique_published.pinned
    stack = unique_published.diff_ids
    assert images_holding(docker_engine, stack) == [], "the image's layers are still on the engine"
    assert not docker_engine.images.list(name=f"{repo}/{NAME}")

    # select: judged from the labels, answered with the digest, nothing pulled.
    mark = own_registry.mark()
    ran = cudabox(
        "select",
        "--framework",
        "torch",
        "--flavor",
        "cpu",
        "--registry",
        repo,
        "--json",
        cwd=tmp_path,
    )
    assert ran.code == 0, ran.err
    assert ran.json()["selected"]["tag"] == pinned
    read = own_registry.requests_since(mark)
    blobs = {r.uri.rsplit("/", 1)[1] for r in read if "/blobs/" in r.uri}
    assert blobs and not blobs & set(unique_published.layer_digests), blobs  # the config only
    assert images_holding(docker_engine, stack) == []

    # run: pulls exactly that digest (progress as plain lines: stderr is not a terminal).
    mark = own_registry.mark()
    ran = cudabox(
        "run",
        "--cpu",
        "--registry",
        repo,
        "--label",
        TEST_LABEL,
        "--",
        "python",
        "-c",
        "import torch; print(torch.__version__)",
        cwd=tmp_path,
    )
    assert ran.code == 0, ran.err
    assert ran.out.strip() == "2.13.0+cpu"
    assert "\r" not in ran.err
    lines = ran.err.splitlines()
    layer_line = re.compile(
        rf"pull {re.escape(pinned)}: [0-9a-f]{{12}}: (Pull complete|Already exists)"
    )
    done = [line for line in lines if layer_line.fullmatch(line)]
    assert len(done) == len(stack), ran.err
    count = len(stack)
    summary = re.compile(rf"pull {re.escape(pinned)}: {count} layers in \S+ s \(\S+ MB moved\)")
    assert any(summary.fullmatch(line) for line in lines), ran.err
    assert f"cudabox: image {NAME}: newest torch cpu image in the registry" in ran.err
    fetched = {
        r.uri.rsplit("/", 1)[1] for r in own_registry.requests_since(mark) if "/blobs/" in r.uri
    }
    # The uuid layer came from the registry; the engine already had every layer below it.
    assert fetched & set(unique_published.layer_digests) == {unique_published.layer_digests[-1]}
    assert docker_engine.images.get(pinned).id == unique_published.image_id  # the same image


@pytest.mark.docker
@pytest.mark.slow
def test_pull_on_a_host_that_has_the_image_is_a_no_op(
    published: Published, own_registry: RegistryServer, docker_engine: Any, tmp_path: Path
) -> None:
    pinned = published.entry["pinned"]

    def pull() -> tuple[Ran, list[Any]]:
        mark = own_registry.mark()
        ran = cudabox("pull", NAME, "--registry", published.repo, "--json", cwd=tmp_path)
        assert ran.code == 0, ran.err
        assert ran.json() == [{"name": NAME, "pinned": pinned}]
        return ran, own_registry.requests_since(mark)

    try:
        # The image is here under its catalog name, without the registry's digest reference
        # (the publish fixture drops it): the engine then reads the manifest, and no layer.
        _, read = pull()
        assert not [r for r in read if r.uri.rsplit("/", 1)[1] in published.layer_digests]
        assert docker_engine.images.get(pinned).id == published.image_id
        # Now it has the reference too: nothing at all moves.
        again, read = pull()
        assert "pull " not in again.err, again.err  # no progress lines
        assert not [r for r in read if "/manifests/sha256:" in r.uri], read
        assert not [r for r in read if r.uri.rsplit("/", 1)[1] in published.layer_digests]
    finally:
        docker_engine.images.remove(pinned)  # the digest reference only


# ---- what users get wrong, through the command line -----------------------------------------


def test_an_unreachable_registry_exits_4(tmp_path: Path) -> None:
    repo = f"127.0.0.1:{free_port()}/{PREFIX}"  # nothing listens there
    ran = cudabox("select", "--framework", "torch", "--registry", repo, cwd=tmp_path)
    ran.assert_error(4, "cannot reach")


@pytest.mark.docker
@pytest.mark.slow
def test_a_missing_tag_exits_9(published: Published, tmp_path: Path) -> None:
    ran = cudabox("pull", NAME, "--registry", published.repo, "--tag", "no-such-tag", cwd=tmp_path)
    ran.assert_error(9, "no-such-tag", "it has: ")


def strip_labels(server: RegistryServer, repo: str, tag: str, new_tag: str) -> str:
    """Re-publish REPO:TAG as REPO:NEW_TAG with the labels removed from its config (same layers)."""
    manifest = requests.get(
        server.url(f"/v2/{repo}/manifests/{tag}"), headers={"Accept": ACCEPT}, timeout=10
    ).json()
    config = requests.get(
        server.url(f"/v2/{repo}/blobs/{manifest['config']['digest']}"), timeout=10
    ).json()
    config["config"].pop("Labels", None)
    raw = json.dumps(config).encode()
    server.push_blob(repo, raw)
    manifest["config"] = {**manifest["config"], "digest": sha256(raw), "size": len(raw)}
    return server.put_manifest(repo, new_tag, json.dumps(manifest).encode(), manifest["mediaType"])


@pytest.mark.docker
@pytest.mark.slow
def test_a_published_image_without_labels_exits_12(
    published: Published, own_registry: RegistryServer, docker_engine: Any, tmp_path: Path
) -> None:
    repo = f"{PREFIX}/{NAME}"
    stripped = strip_labels(own_registry, repo, "latest", "stripped")
    try:
        ref = f"{published.repo}/{NAME}:stripped"
        ran = cudabox("run", "--image", ref, "--label", TEST_LABEL, "--", "true", cwd=tmp_path)
        ran.assert_error(12, "carries no cudabox labels")
        # Nothing pulled: no image is that tag or that manifest (whatever else the engine holds).
        for image in docker_engine.images.list(all=True):
            assert ref not in image.tags, image.tags
            assert not any(d.endswith(stripped) for d in image.attrs.get("RepoDigests") or ())
    finally:
        delete_tags(own_registry, repo, ["stripped"])


@pytest.mark.docker
def test_wrong_credentials_for_a_tls_registry_exit_8(
    tls_registry: RegistryServer, tmp_path: Path
) -> None:
    assert tls_registry.ca is not None
    repo_path = f"publish-test/{NAME}"
    spec = load_catalog().get(NAME)
    labels = {**labels_for(spec, "2" * 64), "cudabox.test": "1"}
    pushed = tls_registry.push_image(repo_path, "latest", labels)
    repo = f"{tls_registry.host}/publish-test"

    def select_as(password: str) -> Ran:
        config = tmp_path / password
        config.mkdir()
        login = base64.b64encode(f"{USERNAME}:{password}".encode()).decode()
        (config / "config.json").write_text(
            json.dumps({"auths": {tls_registry.host: {"auth": login}}})
        )
        return cudabox(
            "select",
            "--framework",
            "torch",
            "--flavor",
            "cpu",
            "--registry",
            repo,
            "--registry-ca",
            str(tls_registry.ca),
            "--json",
            cwd=tmp_path,
            env={"DOCKER_CONFIG": str(config)},
        )

    try:
        select_as("not-the-password").assert_error(8, f"user {USERNAME!r}", "docker login")
        right = select_as(PASSWORD)  # the same command with the right login answers
        assert right.code == 0, right.err
        assert right.json()["selected"]["tag"] == f"{repo}/{NAME}@{pushed.digest}"
    finally:
        tls_registry.delete_tagged(repo_path, "latest")


# ---- re-publishing -----------------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.slow
def test_publishing_the_same_image_again_uploads_no_layer(
    published: Published, own_registry: RegistryServer, tmp_path: Path
) -> None:
    before = own_registry.storage_bytes()
    ran = cudabox("publish", NAME, "--registry", published.repo, "--json", cwd=tmp_path)
    assert ran.code == 0, ran.err
    (entry,) = ran.json()
    grown = own_registry.storage_bytes() - before
    assert entry["layers_uploaded"] == 0, ran.err
    assert entry["immutable_existed"] is True  # the immutable tag was not pushed (nor moved)
    assert entry["immutable"] == published.entry["immutable"]
    assert entry["digest"] == published.entry["digest"]  # the same image, the same manifest
    assert grown < 100_000, f"the registry's storage grew by {grown} bytes"


# ---- the progress display, without an engine --------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _push_events(bar: TransferProgress, final: str) -> None:
    for layer in ("aaaaaaaaaaaa", "bbbbbbbbbbbb"):
        bar(TransferEvent(layer, "Preparing"))
        bar(TransferEvent(layer, "Pushing", current=5_000_000, total=10_000_000))
        bar(TransferEvent(layer, final))
    bar(TransferEvent(None, "latest: digest: sha256:" + "0" * 64 + " size: 1234"))


def test_a_second_push_of_the_same_layers_does_not_hide_the_first_upload() -> None:
    out = io.StringIO()
    bar = TransferProgress("push r/x:latest", stream=out)
    _push_events(bar, "Pushed")
    _push_events(bar, "Layer already exists")  # the immutable tag, pushed right after
    bar.finish()
    assert bar.count("Pushed") == 2 and bar.count("Layer already exists") == 0
    lines = out.getvalue().splitlines()
    assert lines[:2] == [
        "push r/x:latest: aaaaaaaaaaaa: Pushed",
        "push r/x:latest: bbbbbbbbbbbb: Pushed",
    ]
    assert re.fullmatch(r"push r/x:latest: 2 layers in \d+\.\d s \(20 MB moved\)", lines[2])
    assert len(lines) == 3 and "\r" not in out.getvalue()


def test_the_pull_header_is_not_counted_as_a_layer() -> None:
    out = io.StringIO()
    bar = TransferProgress("pull r/x@sha256:" + "1" * 64, stream=out)
    bar(TransferEvent("sha256:" + "1" * 64, "Pulling from r/x"))  # what Docker sends first
    bar(TransferEvent("aaaaaaaaaaaa", "Pulling fs layer"))
    bar(TransferEvent("aaaaaaaaaaaa", "Downloading", current=1_000_000, total=2_000_000))
    bar(TransferEvent("aaaaaaaaaaaa", "Pull complete"))
    bar.finish()
    assert len(bar.layers) == 1 and bar.done_layers == 1
    assert out.getvalue().splitlines()[-1].startswith(f"{bar.what}: 1 layers in ")


def test_a_terminal_gets_one_redrawn_bar_line() -> None:
    out = _Terminal()
    bar = TransferProgress("pull r/x@sha256:" + "1" * 64, stream=out)
    bar(TransferEvent("aaaaaaaaaaaa", "Downloading", current=3_000_000, total=10_000_000))
    bar.abort()
    text = out.getvalue()
    assert text.startswith("\r") and text.endswith("\n") and "3/10 MB, 0/1 layers" in text
