"""Choosing among catalog images in a real registry, from their labels, without a layer read."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cudabox.errors import NotFound, PlatformMissing, Unavailable, Unlabelled, UsageError
from cudabox.host import HostProfile
from cudabox.images.catalog import Catalog, load_catalog
from cudabox.images.labels import labels_for
from cudabox.images.remote import image_reference, remote_candidates, spec_of
from cudabox.registry import BlobCache, Credentials, RegistryClient
from cudabox.resolver import select
from registry_server import RegistryServer

HOSTS = Path(__file__).resolve().parents[1] / "fixtures" / "hosts"
LOCK = "0" * 64


def no_login(registry: str) -> Credentials | None:
    raise AssertionError("a loopback test registry needs no login")


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


@pytest.fixture
def client(tmp_path: Path) -> Iterator[RegistryClient]:
    with RegistryClient(no_login, cache=BlobCache(tmp_path / "cache")) as made:
        yield made


def publish_labels(server: RegistryServer, repo: str, catalog: Catalog, name: str) -> str:
    """A tiny image carrying exactly the labels `cudabox build` gives catalog image NAME."""
    labels = {**labels_for(catalog.get(name), LOCK), "cudabox.test": "1"}
    return server.push_image(f"{repo}/{name}", "latest", labels, payload=name.encode()).digest


def test_the_resolver_judges_registry_images_and_answers_a_pinned_digest(
    registry: RegistryServer, catalog: Catalog, client: RegistryClient
) -> None:
    repo = f"{registry.host}/pick"
    digests = {
        name: publish_labels(registry, "pick", catalog, name)
        for name in ("torch-2.15-cu132", "torch-2.10-cu128", "torch-2.13-cpu")
    }  # torch-2.7-cu126 is not published: a reason, not a crash
    mark = registry.mark()
    found = remote_candidates(repo, catalog, "torch", client=client)
    assert {c.spec.name: c.pinned for c in found.found} == {
        name: f"{repo}/{name}@{digest}" for name, digest in digests.items()
    }
    (missing,) = found.skipped
    assert (missing.name, missing.kind) == ("torch-2.7-cu126", "missing")
    assert "no image pick/torch-2.7-cu126" in missing.reason
    for candidate in found.found:  # the labels became the same facts the catalog has
        wanted = catalog.get(candidate.spec.name)
        assert (candidate.spec.cuda, candidate.spec.sass_archs, candidate.spec.min_driver) == (
            wanted.cuda,
            wanted.sass_archs,
            wanted.min_driver,
        )
        assert candidate.lock_sha256 == LOCK

    h100 = select(found.catalog(catalog), [HostProfile.load(HOSTS / "h100.json")], "torch")
    assert h100.selected is not None and h100.selected.name == "torch-2.15-cu132"
    assert h100.selected.tag == f"{repo}/torch-2.15-cu132@{digests['torch-2.15-cu132']}"
    chosen = found.by_pinned(h100.selected.tag)  # back to what was read: layers, sizes
    assert chosen.image.digest == digests["torch-2.15-cu132"] and chosen.image.download_bytes > 0
    cpu = select(found.catalog(catalog), [HostProfile.load(HOSTS / "cpu-only.json")], "torch")
    assert cpu.selected is not None and cpu.selected.tag.endswith(digests["torch-2.13-cpu"])

    # Only manifests and config blobs were read, each config once.
    blobs = [r.uri for r in registry.requests_since(mark) if "/blobs/" in r.uri]
    configs = {c.image.config.digest for c in found.found}
    assert sorted(b.rsplit("/", 1)[1] for b in blobs) == sorted(configs)


def test_unlabelled_foreign_and_arm64_images_are_skipped_with_reasons(
    registry: RegistryServer, catalog: Catalog, client: RegistryClient
) -> None:
    repo = f"{registry.host}/skip"
    registry.push_image("skip/tf-2.21-cpu", "latest", {"maintainer": "someone"})
    tf_gpu = {**labels_for(catalog.get("tf-2.21-cu125"), LOCK)}
    registry.push_image("skip/tf-2.21-cu125", "latest", tf_gpu, architecture="arm64")
    found = remote_candidates(repo, catalog, "tensorflow", client=client)
    assert found.found == ()
    reasons = {s.name: (s.kind, s.reason) for s in found.skipped}
    assert reasons["tf-2.21-cpu"][0] == "unlabelled"
    assert "carries no cudabox labels" in reasons["tf-2.21-cpu"][1]
    assert reasons["tf-2.21-cu125"][0] == "platform"
    with pytest.raises(Unlabelled) as caught:
        found.require_any()
    assert caught.value.exit_code == 12


def test_an_image_published_under_another_name_is_not_taken_for_it(
    registry: RegistryServer, catalog: Catalog, client: RegistryClient
) -> None:
    repo = f"{registry.host}/swap"
    labels = labels_for(catalog.get("torch-2.13-cpu"), LOCK)
    registry.push_image("swap/torch-2.15-cu132", "latest", labels)
    found = remote_candidates(repo, catalog, "torch", client=client)
    swapped = next(s for s in found.skipped if s.name == "torch-2.15-cu132")
    assert swapped.kind == "mismatch" and "'torch-2.13-cpu'" in swapped.reason


def test_nothing_published_is_not_found_with_the_publish_fix(
    registry: RegistryServer, catalog: Catalog, client: RegistryClient
) -> None:
    found = remote_candidates(f"{registry.host}/empty", catalog, "torch", tag="v9", client=client)
    assert len(found.skipped) == len(catalog.for_framework("torch"))
    with pytest.raises(NotFound) as caught:
        found.require_any()
    assert "cudabox publish" in (caught.value.fix or "")


def test_arm64_only_everywhere_is_platform_missing(
    registry: RegistryServer, catalog: Catalog, client: RegistryClient
) -> None:
    for name in ("tf-2.21-cpu", "tf-2.21-cu125"):
        labels = labels_for(catalog.get(name), LOCK)
        registry.push_image(f"arm/{name}", "latest", labels, architecture="arm64")
    found = remote_candidates(f"{registry.host}/arm", catalog, "tensorflow", client=client)
    with pytest.raises(PlatformMissing):
        found.require_any()


def test_an_unreachable_registry_stops_the_whole_look_up(
    catalog: Catalog, client: RegistryClient
) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with pytest.raises(Unavailable):
            remote_candidates(f"127.0.0.1:{port}/x", catalog, "torch", client=client)


@pytest.mark.parametrize("repo", ["reg.io/x:tag", "reg.io/x@sha256:" + "0" * 64, "Reg.io/UP"])
def test_a_registry_prefix_with_a_tag_or_bad_name_is_a_usage_error(repo: str) -> None:
    with pytest.raises(UsageError):
        image_reference(repo, "torch-2.13-cpu")


def test_a_host_only_prefix_is_fine() -> None:
    assert (
        str(image_reference("127.0.0.1:5000", "tf-2.21-cpu")) == "127.0.0.1:5000/tf-2.21-cpu:latest"
    )


def test_broken_cudabox_labels_are_unlabelled(
    registry: RegistryServer, catalog: Catalog, client: RegistryClient
) -> None:
    labels = {**labels_for(catalog.get("torch-2.13-cpu"), LOCK), "cudabox.framework": "caffe"}
    digest = registry.push_image("broken/torch-2.13-cpu", "latest", labels).digest
    image = client.image(f"{registry.host}/broken/torch-2.13-cpu@{digest}")
    with pytest.raises(Unlabelled, match="unknown framework"):
        spec_of(image)
