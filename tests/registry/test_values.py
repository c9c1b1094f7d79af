"""The registry adapter's pure parts: references, challenges, platforms, digests, the cache."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import pytest

from cudabox.errors import IntegrityError, PlatformMissing, UsageError
from cudabox.registry import (
    LINUX_AMD64,
    BlobCache,
    Descriptor,
    Platform,
    Reference,
    choose_platform,
    digest_of,
    is_loopback,
    parse_challenge,
    parse_config,
    split_host,
    verify,
)

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("python", "docker.io", "library/python", "latest", None),
        ("python:3.11-slim-bookworm", "docker.io", "library/python", "3.11-slim-bookworm", None),
        ("nvidia/cuda:12.8.0-base", "docker.io", "nvidia/cuda", "12.8.0-base", None),
        ("index.docker.io/nvidia/cuda", "docker.io", "nvidia/cuda", "latest", None),
        ("ghcr.io/org/cudabox/torch", "ghcr.io", "org/cudabox/torch", "latest", None),
        ("127.0.0.1:5000/cudabox/tf:v1", "127.0.0.1:5000", "cudabox/tf", "v1", None),
        ("localhost/x", "localhost", "x", "latest", None),
        ("localhost:5000/a/b@" + DIGEST, "localhost:5000", "a/b", None, DIGEST),
        ("reg.io/a:t@" + DIGEST, "reg.io", "a", "t", DIGEST),
        ("[::1]:5000/a", "[::1]:5000", "a", "latest", None),
    ],
)
def test_references_parse_as_docker_does(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry,
        repository,
        tag,
        digest,
    )
    assert Reference.parse(str(ref)) == ref  # the canonical text parses back to the same


def test_the_digest_wins_over_the_tag_and_pinning_drops_the_tag() -> None:
    ref = Reference.parse("reg.io/a:t@" + DIGEST)
    assert ref.reference == DIGEST
    pinned = Reference.parse("reg.io/a:t").pinned(DIGEST)
    assert str(pinned) == f"reg.io/a@{DIGEST}" and pinned.tag is None


@pytest.mark.parametrize(
    "text",
    [
        "Reg.io/UPPER/case",
        "reg.io/a:bad tag",
        "reg.io/a@sha256:123",
        "reg.io/a@md5:" + "0" * 32,
        "https://reg.io/a",
        "reg.io/a//b",
        "reg.io/-a",
    ],
)
def test_bad_references_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError) as caught:
        Reference.parse(text)
    assert caught.value.exit_code == 2


def test_challenges_are_parsed_with_quoted_commas() -> None:
    header = (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/python:pull,push",error="insufficient_scope"'
    )
    challenge = parse_challenge(header)
    assert challenge is not None and challenge.scheme == "bearer"
    assert challenge.params["realm"] == "https://auth.docker.io/token"
    assert challenge.params["scope"] == "repository:library/python:pull,push"
    assert challenge.params["service"] == "registry.docker.io"
    basic = parse_challenge('Basic realm="cudabox-test"')
    assert basic is not None and basic.scheme == "basic"
    assert parse_challenge("Negotiate abc") is None


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1:5000", True),
        ("127.1.2.3", True),
        ("localhost:5000", True),
        ("[::1]:5000", True),
        ("10.0.0.1:5000", False),
        ("ghcr.io", False),
        ("localhost.example.com", False),
    ],
)
def test_plain_http_only_on_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_split_host() -> None:
    assert split_host("127.0.0.1:5000") == ("127.0.0.1", 5000)
    assert split_host("[::1]:5000") == ("::1", 5000)
    assert split_host("ghcr.io") == ("ghcr.io", None)


def _entry(os: str, arch: str, variant: str = "", attestation: bool = False) -> Descriptor:
    annotations = {"vnd.docker.reference.type": "attestation-manifest"} if attestation else {}
    return Descriptor(
        media_type="application/vnd.oci.image.manifest.v1+json",
        digest=digest_of(f"{os}{arch}{variant}{attestation}".encode()),
        size=1,
        platform=Platform(os, arch, variant),
        annotations=MappingProxyType(annotations),
    )


def test_the_index_entry_for_linux_amd64_is_chosen_past_attestations() -> None:
    entries = (
        _entry("unknown", "unknown", attestation=True),
        _entry("linux", "arm64", "v8"),
        _entry("linux", "amd64", "v3"),
        _entry("linux", "amd64"),
    )
    chosen, platforms = choose_platform(entries, LINUX_AMD64, "x")
    assert chosen == entries[3]  # the baseline variant before amd64/v3
    assert [str(p) for p in platforms] == ["linux/arm64/v8", "linux/amd64/v3", "linux/amd64"]


def test_an_index_without_linux_amd64_names_what_it_has() -> None:
    entries = (_entry("linux", "arm64", "v8"), _entry("unknown", "unknown", attestation=True))
    with pytest.raises(PlatformMissing) as caught:
        choose_platform(entries, LINUX_AMD64, "reg.io/a:1")
    assert caught.value.exit_code == 10
    assert "linux/arm64/v8" in caught.value.message and "unknown" not in caught.value.message


def test_verify_refuses_content_that_is_not_its_digest() -> None:
    verify(b"abc", digest_of(b"abc"), "blob")
    verify(b"abc", digest_of(b"abc", "sha512"), "blob")
    with pytest.raises(IntegrityError) as caught:
        verify(b"abd", digest_of(b"abc"), "config blob")
    assert caught.value.exit_code == 11 and "config blob" in caught.value.message


@pytest.mark.parametrize(
    "data",
    [b"not json", b"[]", b'{"config": {"Labels": []}, "rootfs": {"diff_ids": []}}', b'{"a": 1}'],
)
def test_a_config_that_is_not_an_image_config_is_an_integrity_error(data: bytes) -> None:
    with pytest.raises(IntegrityError):
        parse_config(data, digest_of(data))


def test_the_cache_returns_verified_content_and_drops_damaged_entries(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path)
    data = b'{"config": {}}'
    digest = digest_of(data)
    assert cache.get(digest) is None
    cache.put(digest, data)
    assert cache.get(digest) == data
    stored = next(tmp_path.rglob(digest.split(":")[1]))
    stored.write_bytes(b'{"config": {"evil": 1}}')
    assert cache.get(digest) is None  # damaged: not used, and removed
    assert not stored.exists()


def test_an_unwritable_cache_is_no_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cache = BlobCache(blocker / "cache")
    cache.put(digest_of(b"x"), b"x")  # no exception: the cache is only a speed-up
    assert cache.get(digest_of(b"x")) is None
