"""cudabox.registry against a real `docker-registry`: reading, platforms, errors, digests, TLS."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from cudabox.errors import AuthError, IntegrityError, NotFound, PlatformMissing, Unavailable
from cudabox.registry import (
    DOCKER_MANIFEST,
    OCI_MANIFEST,
    BlobCache,
    Credentials,
    RegistryClient,
)
from registry_server import PASSWORD, USERNAME, RegistryServer, running_registry

LABELS = {"cudabox.image": "torch-2.13-cpu", "cudabox.test": "1", "org.example.note": "a, b"}
ARM64 = {"platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}
AMD64 = {"platform": {"os": "linux", "architecture": "amd64"}}


def attestation_of(digest: str) -> dict[str, Any]:
    return {
        "platform": {"os": "unknown", "architecture": "unknown"},
        "annotations": {
            "vnd.docker.reference.type": "attestation-manifest",
            "vnd.docker.reference.digest": digest,
        },
    }


def no_login(registry: str) -> Credentials | None:
    raise AssertionError(f"credentials asked for {registry}, which needs none")


@pytest.fixture
def client(tmp_path: Path) -> Iterator[RegistryClient]:
    with RegistryClient(no_login, cache=BlobCache(tmp_path / "cache")) as made:
        yield made


def blob_reads(server: RegistryServer, mark: int) -> list[str]:
    return [r.uri for r in server.requests_since(mark) if "/blobs/" in r.uri]


def test_an_oci_image_is_read_and_verified_without_its_layer(
    registry: RegistryServer, client: RegistryClient
) -> None:
    pushed = registry.push_image("t/oci", "1", LABELS)
    mark = registry.mark()
    image = client.image(f"{registry.host}/t/oci:1")
    assert image.digest == pushed.digest
    assert image.media_type == OCI_MANIFEST
    assert image.config.digest == pushed.config_digest
    assert dict(image.labels) == LABELS
    assert image.config.env == ("PATH=/usr/bin", "CUDABOX_TEST=1")
    assert image.config.created == "2026-01-01T00:00:00Z"
    assert image.config.diff_ids == (pushed.diff_id,)
    assert [(layer.digest, layer.size) for layer in image.layers] == [
        (pushed.layer_digest, len(pushed.layer))
    ]
    assert image.download_bytes == len(pushed.layer)
    assert str(image.pinned) == f"{registry.host}/t/oci@{pushed.digest}"
    assert image.index_digest is None
    # The registry's own log: the manifest and the config blob, never the layer.
    assert blob_reads(registry, mark) == [f"/v2/t/oci/blobs/{pushed.config_digest}"]


def test_a_docker_v2_image_and_a_pinned_reference_read_the_same(
    registry: RegistryServer, client: RegistryClient
) -> None:
    pushed = registry.push_image("t/docker", "1", LABELS, oci=False)
    by_tag = client.image(f"{registry.host}/t/docker:1")
    by_digest = client.image(f"{registry.host}/t/docker@{pushed.digest}")
    assert by_tag.media_type == DOCKER_MANIFEST
    assert by_tag.digest == by_digest.digest == pushed.digest
    assert by_tag.config == by_digest.config


def test_the_config_cache_needs_no_request_on_a_second_look(
    registry: RegistryServer, tmp_path: Path
) -> None:
    pushed = registry.push_image("t/cached", "1", LABELS, payload=b"cached\n")
    cache = BlobCache(tmp_path / "cache")
    with RegistryClient(no_login, cache=cache) as first:
        first.image(f"{registry.host}/t/cached:1")
    mark = registry.mark()
    with RegistryClient(no_login, cache=cache) as second:
        image = second.image(f"{registry.host}/t/cached:1")
    assert image.config.digest == pushed.config_digest
    assert blob_reads(registry, mark) == []
    assert [r.uri for r in registry.requests_since(mark)] == ["/v2/t/cached/manifests/1"]


def test_a_multi_platform_index_resolves_to_linux_amd64_past_attestations(
    registry: RegistryServer, client: RegistryClient
) -> None:
    amd64 = registry.push_image("t/multi", None, LABELS, payload=b"amd64\n")
    arm64 = registry.push_image("t/multi", None, LABELS, architecture="arm64", payload=b"arm\n")
    # An attestation manifest is a manifest of in-toto blobs; any manifest shows the skip.
    proof = registry.push_image("t/multi", None, {}, architecture="unknown", payload=b"intoto\n")
    index = registry.push_index(
        "t/multi",
        "1",
        [(proof, attestation_of(amd64.digest)), (arm64, ARM64), (amd64, AMD64)],
    )
    mark = registry.mark()
    image = client.image(f"{registry.host}/t/multi:1")
    assert image.index_digest == index
    assert image.digest == amd64.digest
    assert image.config.digest == amd64.config_digest
    assert [str(p) for p in image.platforms] == ["linux/arm64/v8", "linux/amd64"]
    assert str(image.pinned) == f"{registry.host}/t/multi@{amd64.digest}"
    uris = [r.uri for r in registry.requests_since(mark)]
    assert uris == [
        "/v2/t/multi/manifests/1",
        f"/v2/t/multi/manifests/{amd64.digest}",
        f"/v2/t/multi/blobs/{amd64.config_digest}",
    ]


def test_an_index_with_only_arm64_is_platform_missing(
    registry: RegistryServer, client: RegistryClient
) -> None:
    arm64 = registry.push_image("t/armonly", None, LABELS, architecture="arm64")
    registry.push_index("t/armonly", "1", [(arm64, ARM64)])
    with pytest.raises(PlatformMissing) as caught:
        client.image(f"{registry.host}/t/armonly:1")
    assert caught.value.exit_code == 10
    assert "linux/arm64/v8" in caught.value.message and "linux/amd64" in caught.value.message
    assert caught.value.fix


def test_a_single_arm64_image_is_platform_missing(
    registry: RegistryServer, client: RegistryClient
) -> None:
    registry.push_image("t/armsingle", "1", LABELS, architecture="arm64")
    with pytest.raises(PlatformMissing, match="linux/arm64"):
        client.image(f"{registry.host}/t/armsingle:1")


def test_a_missing_tag_names_the_tags_there_are(
    registry: RegistryServer, client: RegistryClient
) -> None:
    registry.push_image("t/tags", "v1", LABELS)
    registry.push_image("t/tags", "v2", LABELS)
    with pytest.raises(NotFound) as caught:
        client.image(f"{registry.host}/t/tags:v3")
    assert caught.value.exit_code == 9
    assert "no tag 'v3'" in caught.value.message and "v1, v2" in caught.value.message


def test_a_missing_repository_and_a_missing_digest_are_not_found(
    registry: RegistryServer, client: RegistryClient
) -> None:
    with pytest.raises(NotFound, match="no image t/never"):
        client.image(f"{registry.host}/t/never:1")
    registry.push_image("t/digest", "1", LABELS)
    with pytest.raises(NotFound, match="sha256:00"):
        client.image(f"{registry.host}/t/digest@sha256:{'00' * 32}")


def test_a_deleted_image_is_not_found(registry: RegistryServer, client: RegistryClient) -> None:
    pushed = registry.push_image("t/deleted", "1", LABELS, payload=b"deleted\n")
    registry.delete_tagged("t/deleted", "1")
    with pytest.raises(NotFound):
        client.image(f"{registry.host}/t/deleted@{pushed.digest}")


def test_a_config_blob_the_registry_lost_is_not_found(
    registry: RegistryServer, client: RegistryClient
) -> None:
    pushed = registry.push_image("t/lost", "1", LABELS, payload=b"lost\n")
    registry.delete_blob("t/lost", pushed.config_digest)
    with pytest.raises(NotFound, match=f"lost blob {pushed.config_digest}") as caught:
        client.image(f"{registry.host}/t/lost:1")
    assert "re-publish" in (caught.value.fix or "")


def _storage_file(server: RegistryServer, digest: str) -> Path:
    hexdigest = digest.split(":")[1]
    return server.storage / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"


def _flip(path: Path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    assert old in data and len(old) == len(new)
    path.write_bytes(data.replace(old, new, 1))


def test_a_tampered_config_blob_in_storage_is_an_integrity_error(
    tmp_path: Path, client: RegistryClient
) -> None:
    with running_registry(tmp_path / "tamper") as server:
        pushed = server.push_image("t/tamper", "1", {"cudabox.min_driver": "570.00"})
        # Change a label in the stored bytes (same length): the registry serves it as is.
        _flip(_storage_file(server, pushed.config_digest), b"570.00", b"390.00")
        with pytest.raises(IntegrityError) as caught:
            client.image(f"{server.host}/t/tamper:1")
    assert caught.value.exit_code == 11
    assert pushed.config_digest in caught.value.message


def test_a_tampered_manifest_in_storage_is_an_integrity_error(
    tmp_path: Path, client: RegistryClient
) -> None:
    with running_registry(tmp_path / "tamper-manifest") as server:
        pushed = server.push_image("t/tamper", "1", LABELS)
        _flip(_storage_file(server, pushed.digest), b'"schemaVersion": 2,', b'"schemaVersion":2 ,')
        with pytest.raises(IntegrityError, match="announces"):
            client.image(f"{server.host}/t/tamper:1")  # by tag: against the announced digest
        with pytest.raises(IntegrityError, match="does not match its digest"):
            client.image(f"{server.host}/t/tamper@{pushed.digest}")  # by digest


def test_an_unreachable_registry_is_unavailable_quickly(client: RegistryClient) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connection refused
        started = time.monotonic()
        with pytest.raises(Unavailable) as caught:
            client.image(f"127.0.0.1:{port}/t/x:1")
    assert caught.value.exit_code == 4
    assert f"127.0.0.1:{port}" in caught.value.message and "curl" in (caught.value.fix or "")
    assert time.monotonic() - started < 2


def test_a_registry_that_never_answers_times_out(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)  # accepts the connection, never says a word
        port = sock.getsockname()[1]
        started = time.monotonic()
        with (
            RegistryClient(no_login, timeout=0.5, cache=BlobCache(tmp_path)) as quick,
            pytest.raises(Unavailable, match="timed out"),
        ):
            quick.image(f"127.0.0.1:{port}/t/x:1")
    assert time.monotonic() - started < 5


class _NotARegistry(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<html>hello</html>"
        self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_web_server_that_is_no_registry_is_said_so(client: RegistryClient) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotARegistry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        host = f"127.0.0.1:{server.server_address[1]}"
        with pytest.raises(Unavailable, match="not a registry"):
            client.ping(host)
        with pytest.raises(NotFound):
            client.image(f"{host}/t/x:1")
    finally:
        server.shutdown()
        server.server_close()


# -- htpasswd over TLS, with the test CA --------------------------------------------------------


def test_basic_auth_over_tls_with_the_test_ca(tls_registry: RegistryServer, tmp_path: Path) -> None:
    pushed = tls_registry.push_image("t/private", "1", LABELS)
    asked: list[str] = []

    def login(registry: str) -> Credentials | None:
        asked.append(registry)
        return Credentials(USERNAME, PASSWORD)

    with RegistryClient(login, ca_bundle=tls_registry.ca, cache=BlobCache(tmp_path)) as client:
        image = client.image(f"{tls_registry.host}/t/private:1")
        again = client.image(f"{tls_registry.host}/t/private@{pushed.digest}")
    assert image.digest == again.digest == pushed.digest
    assert dict(image.labels) == LABELS
    assert asked == [tls_registry.host]  # asked once, cached for the client's lifetime


def test_a_wrong_password_is_an_auth_error(tls_registry: RegistryServer, tmp_path: Path) -> None:
    def login(registry: str) -> Credentials:
        return Credentials(USERNAME, "wrong")

    with (
        RegistryClient(login, ca_bundle=tls_registry.ca, cache=BlobCache(tmp_path)) as client,
        pytest.raises(AuthError) as caught,
    ):
        client.image(f"{tls_registry.host}/t/private:1")
    assert caught.value.exit_code == 8
    assert "refused the credentials of user 'cudabox'" in caught.value.message
    assert f"docker login {tls_registry.host}" in (caught.value.fix or "")
    assert "wrong" not in caught.value.render()  # the password is never shown


def test_no_login_for_a_registry_that_wants_one_is_an_auth_error(
    tls_registry: RegistryServer, tmp_path: Path
) -> None:
    with (
        RegistryClient(
            lambda registry: None, ca_bundle=tls_registry.ca, cache=BlobCache(tmp_path)
        ) as client,
        pytest.raises(AuthError, match="needs a login"),
    ):
        client.image(f"{tls_registry.host}/t/private:1")


def test_an_untrusted_certificate_is_unavailable_with_the_ca_fix(
    tls_registry: RegistryServer, tmp_path: Path
) -> None:
    with (
        RegistryClient(no_login, cache=BlobCache(tmp_path)) as client,
        pytest.raises(Unavailable) as caught,
    ):
        client.image(f"{tls_registry.host}/t/private:1")
    assert "TLS" in caught.value.message and "CERTIFICATE_VERIFY_FAILED" in caught.value.message
    assert "CA" in (caught.value.fix or "")


def test_docker_config_credentials_reach_the_registry(
    tls_registry: RegistryServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default lookup: the user's Docker config, read by the engine adapter's Docker SDK."""
    import base64

    tls_registry.push_image("t/dockerconfig", "1", LABELS)
    auth = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
    (tmp_path / "config.json").write_text(
        json.dumps({"auths": {tls_registry.host: {"auth": auth}}})
    )
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    with RegistryClient(ca_bundle=tls_registry.ca, cache=BlobCache(tmp_path / "c")) as client:
        image = client.image(f"{tls_registry.host}/t/dockerconfig:1")
    assert image.labels["cudabox.image"] == "torch-2.13-cpu"
