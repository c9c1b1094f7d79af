"""The Bearer token flow against the real registry, in its token mode, with a test token service.

Distribution checks the JWTs itself (issuer, audience, expiry, signature against its
rootcertbundle, and the granted actions), so this shows the client follows a real registry's
challenges; tests/registry/test_token_auth.py covers the cases a fake shows better.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cudabox.errors import AuthError
from cudabox.registry import BlobCache, Credentials, RegistryClient
from registry_server import RegistryServer, TokenService, running_registry

LABELS = {"cudabox.image": "tf-2.21-cpu", "cudabox.test": "1"}


def test_anonymous_pull_tokens_from_the_realm_the_registry_names(
    token_registry: RegistryServer, tmp_path: Path
) -> None:
    pushed = token_registry.push_image("t/tokened", "1", LABELS)
    assert token_registry.token_auth is not None
    mark = token_registry.mark()
    with RegistryClient(lambda r: None, cache=BlobCache(tmp_path)) as client:
        image = client.image(f"{token_registry.host}/t/tokened:1")
        client.image(f"{token_registry.host}/t/tokened@{pushed.digest}")
    assert image.digest == pushed.digest and dict(image.labels) == LABELS
    assert token_registry.token_auth.issued == [("repository:t/tokened:pull", "")]
    statuses = [(r.uri, r.status) for r in token_registry.requests_since(mark)]
    assert statuses == [
        ("/v2/t/tokened/manifests/1", 401),  # the challenge
        ("/v2/t/tokened/manifests/1", 200),  # retried with the token
        (f"/v2/t/tokened/blobs/{pushed.config_digest}", 200),
        (f"/v2/t/tokened/manifests/{pushed.digest}", 200),  # the token is reused
    ]


def test_a_wrong_password_at_a_real_token_flow_is_an_auth_error(tmp_path: Path) -> None:
    with (
        TokenService(tmp_path / "keys", logins={"bob": "right"}).running() as tokens,
        running_registry(tmp_path / "r", token_auth=tokens) as server,
    ):
        server.push_image("t/bob", "1", LABELS)
        right = RegistryClient(lambda r: Credentials("bob", "right"), cache=BlobCache(tmp_path))
        with right:
            assert right.image(f"{server.host}/t/bob:1").labels == LABELS
        assert tokens.issued == [("repository:t/bob:pull", "bob")]
        wrong = RegistryClient(lambda r: Credentials("bob", "wrong"), cache=BlobCache(tmp_path))
        with wrong, pytest.raises(AuthError, match="refused the credentials of user 'bob'"):
            wrong.image(f"{server.host}/t/bob:1")
