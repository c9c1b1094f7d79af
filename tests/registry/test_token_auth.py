"""The token flow (401 + `WWW-Authenticate: Bearer` -> realm -> retry) against a fake registry.

No token service runs on this machine, so the fake answers as Distribution and Docker Hub do
(tests/registry/fakeregistry.py); the real registry's basic auth is in test_registry.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cudabox.errors import AuthError, IntegrityError
from cudabox.images.catalog import load_catalog
from cudabox.images.remote import remote_candidates
from cudabox.registry import BlobCache, Credentials, RegistryClient, RepositoryDenied
from registry.fakeregistry import FakeRegistry, fake_registry

LABELS = {"cudabox.image": "tf-2.21-cpu"}


@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    with fake_registry(FakeRegistry()) as state:
        yield state


def client_for(tmp_path: Path, login: Credentials | None = None) -> RegistryClient:
    return RegistryClient(lambda registry: login, cache=BlobCache(tmp_path / "cache"))


def test_anonymous_tokens_are_fetched_per_repository_and_reused(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    digest, config, layer = fake.add_image("org/a", "1", LABELS)
    fake.add_image("org/b", "1", LABELS)
    with client_for(tmp_path) as client:
        image = client.image(f"{fake.host}/org/a:1")
        client.image(f"{fake.host}/org/a:1")  # the token is reused: no new challenge
        client.image(f"{fake.host}/org/b:1")  # another repository needs its own token
    assert image.digest == digest and image.labels == LABELS
    tokens = [p for p in fake.paths(200) if p.startswith("/token")]
    assert len(tokens) == 2
    assert "scope=repository%3Aorg%2Fa%3Apull" in tokens[0]
    assert "service=fake-registry.test" in tokens[0]
    challenged = fake.paths(401)
    assert challenged == ["/v2/org/a/manifests/1", "/v2/org/b/manifests/1"]
    assert not any(layer in p for p in fake.paths())  # the layer is never read
    assert sum(config in p for p in fake.paths()) == 1  # the config once: then the cache


def test_a_login_is_sent_to_the_token_service_for_a_private_repository(
    tmp_path: Path,
) -> None:
    state = FakeRegistry(login=("alice", "pw"), private={"org/private"})
    with fake_registry(state) as fake:
        fake.add_image("org/private", "1", LABELS)
        with client_for(tmp_path, Credentials("alice", "pw")) as client:
            assert client.image(f"{fake.host}/org/private:1").labels == LABELS


def test_a_wrong_password_at_the_token_service_is_an_auth_error(tmp_path: Path) -> None:
    state = FakeRegistry(login=("alice", "pw"), private={"org/private"})
    with fake_registry(state) as fake:
        fake.add_image("org/private", "1", LABELS)
        with (
            client_for(tmp_path, Credentials("alice", "nope")) as client,
            pytest.raises(AuthError) as caught,
        ):
            client.image(f"{fake.host}/org/private:1")
    assert caught.value.exit_code == 8
    assert "refused the credentials of user 'alice'" in caught.value.message
    assert not isinstance(caught.value, RepositoryDenied)


def test_a_private_repository_without_a_login_asks_for_docker_login(tmp_path: Path) -> None:
    state = FakeRegistry(login=("alice", "pw"), private={"org/private"})
    with fake_registry(state) as fake:
        fake.add_image("org/private", "1", LABELS)
        with client_for(tmp_path) as client, pytest.raises(AuthError) as caught:
            client.image(f"{fake.host}/org/private:1")
    assert f"docker login {fake.host}" in (caught.value.fix or "")


def test_a_refresh_token_uses_dockers_oauth2_grant(tmp_path: Path) -> None:
    state = FakeRegistry(login=("alice", "pw"), refresh_token="rt-123", private={"org/p"})
    with fake_registry(state) as fake:
        fake.add_image("org/p", "1", LABELS)
        with client_for(tmp_path, Credentials("<token>", "rt-123")) as client:
            assert client.image(f"{fake.host}/org/p:1").labels == LABELS
        assert ("POST", "/token", 200) in fake.seen
        with (
            client_for(tmp_path, Credentials("<token>", "stale")) as client,
            pytest.raises(AuthError, match="identity token"),
        ):
            client.image(f"{fake.host}/org/p:1")


def test_a_token_that_does_not_cover_the_repository_is_repository_denied(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    """Docker Hub grants a token for a repository that does not exist, then answers 401."""
    fake.add_image("org/a", "1", LABELS)
    fake.grant_instead = "some/other"
    with client_for(tmp_path) as client, pytest.raises(RepositoryDenied) as caught:
        client.image(f"{fake.host}/org/a:1")
    assert caught.value.exit_code == 8 and "does not exist" in caught.value.message


def test_tampered_content_behind_tokens_is_an_integrity_error(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    digest, config, _ = fake.add_image("org/a", "1", LABELS)
    fake.tampered[config] = fake.blobs[config].replace(b"tf-2.21-cpu", b"tf-2.99-cpu")
    with client_for(tmp_path) as client, pytest.raises(IntegrityError, match=config):
        client.image(f"{fake.host}/org/a:1")
    del fake.tampered[config]
    fake.tampered[digest] = fake.manifests[("org/a", "1")][0] + b" "
    with client_for(tmp_path) as client, pytest.raises(IntegrityError, match="announces"):
        client.image(f"{fake.host}/org/a:1")


def test_a_registry_that_lets_you_pull_nothing_asks_for_a_login(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    fake.grant_instead = "some/other"  # every token misses the repository asked for
    catalog = load_catalog()
    with client_for(tmp_path) as client:
        found = remote_candidates(f"{fake.host}/org", catalog, "tensorflow", client=client)
    assert {s.kind for s in found.skipped} == {"denied"}
    with pytest.raises(AuthError) as caught:
        found.require_any()
    assert f"docker login {fake.host}" in (caught.value.fix or "")
