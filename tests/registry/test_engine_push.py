"""Images pushed by the real Docker engine are judged in the registry without being pulled.

The image is tiny (`docker import` of one file) but carries the labels `cudabox build` gives a
catalog image. skopeo, an independent client, confirms what the registry holds.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cudabox.host import HostProfile
from cudabox.images.catalog import Catalog, load_catalog
from cudabox.images.labels import labels_for
from cudabox.images.remote import remote_candidates
from cudabox.registry import DOCKER_MANIFEST, BlobCache, RegistryClient
from cudabox.resolver import select
from registry_server import RegistryServer

pytestmark = pytest.mark.docker

HOSTS = Path(__file__).resolve().parents[1] / "fixtures" / "hosts"
LOCK = "1" * 64


def tiny_tar(text: str) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        data = text.encode()
        info = tarfile.TarInfo("etc/cudabox-test")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def push(engine: Any, repository: str, tag: str) -> str:
    """`docker push`; the pushed manifest digest, from the engine's own progress stream."""
    digest = ""
    for line in engine.images.push(repository, tag=tag, stream=True, decode=True):
        assert "error" not in line, line
        digest = line.get("aux", {}).get("Digest", digest)
    assert digest.startswith("sha256:")
    return digest


@pytest.fixture
def pushed_torch_cpu(
    docker_engine: Any, registry: RegistryServer
) -> Iterator[tuple[str, str, Catalog]]:
    """torch-2.13-cpu's labels on a tiny image, pushed to REPO and removed from the engine."""
    catalog = load_catalog()
    spec = catalog.get("torch-2.13-cpu")
    labels = {**labels_for(spec, LOCK), "cudabox.test": "1"}
    # A repository of this test's own: the session's registry (and the engine) may hold others.
    prefix = f"{registry.host}/engine-{uuid.uuid4().hex[:12]}"
    repository = f"{prefix}/{spec.name}"
    changes = [f"LABEL {json.dumps(k)}={json.dumps(v)}" for k, v in labels.items()]
    docker_engine.api.import_image_from_data(
        tiny_tar("torch-2.13-cpu stand-in"), repository=repository, tag="latest", changes=changes
    )
    try:
        digest = push(docker_engine, repository, "latest")
    finally:
        docker_engine.images.remove(f"{repository}:latest")
    assert not docker_engine.images.list(name=repository)  # nothing of it left on the engine
    yield prefix, digest, catalog


def test_a_pushed_image_is_chosen_in_the_registry_without_a_pull(
    pushed_torch_cpu: tuple[str, str, Catalog],
    registry: RegistryServer,
    docker_engine: Any,
    tmp_path: Path,
) -> None:
    repo, digest, catalog = pushed_torch_cpu
    mark = registry.mark()
    with RegistryClient(lambda r: None, cache=BlobCache(tmp_path)) as client:
        found = remote_candidates(repo, catalog, "torch", client=client)
    (candidate,) = found.found
    assert candidate.image.media_type == DOCKER_MANIFEST  # what Docker 20.10 pushes
    assert candidate.pinned == f"{repo}/torch-2.13-cpu@{digest}"
    assert candidate.lock_sha256 == LOCK
    host = HostProfile.load(HOSTS / "cpu-only.json")
    choice = select(found.catalog(catalog), [host], "torch")
    assert choice.selected is not None and choice.selected.tag == candidate.pinned
    # No layer was read: the only blob request is the config, and the engine has no copy.
    layer_digests = {layer.digest for layer in candidate.image.layers}
    blobs = [r.uri.rsplit("/", 1)[1] for r in registry.requests_since(mark) if "/blobs/" in r.uri]
    assert blobs == [candidate.image.config.digest] and not layer_digests & set(blobs)
    assert not docker_engine.images.list(name=f"{repo}/torch-2.13-cpu")


def test_skopeo_reads_the_same_labels_and_digest(
    pushed_torch_cpu: tuple[str, str, Catalog], tmp_path: Path
) -> None:
    if shutil.which("skopeo") is None:
        pytest.fail("skopeo is not installed (`apt-get install skopeo`)")
    repo, digest, _ = pushed_torch_cpu
    ref = f"docker://{repo}/torch-2.13-cpu:latest"

    def skopeo(*args: str) -> Any:
        result = subprocess.run(
            ["skopeo", "inspect", "--tls-verify=false", *args, ref],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return json.loads(result.stdout)

    config = skopeo("--config")
    labels = config["config"]["Labels"]
    assert labels["cudabox.image"] == "torch-2.13-cpu"
    assert labels["cudabox.framework_version"] == "2.13.0"
    assert labels["cudabox.lock_sha256"] == LOCK
    assert skopeo()["Digest"] == digest
    with RegistryClient(lambda r: None, cache=BlobCache(tmp_path)) as client:
        ours = client.image(f"{repo}/torch-2.13-cpu:latest")
    assert dict(ours.labels) == labels
    assert list(ours.config.diff_ids) == config["rootfs"]["diff_ids"]
