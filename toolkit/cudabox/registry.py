"""The registry adapter: the only module that talks HTTP to container registries.

It speaks the Distribution API v2 (the OCI distribution spec) far enough to judge an image
without pulling it: the manifest (an OCI index or Docker manifest list resolved to linux/amd64,
attestation entries skipped), then the config blob with the labels. Every byte it reads is checked
against its digest. Configs are cached on disk by digest, so a second look needs no request.

Authentication as Docker does it: anonymous, HTTP basic, or the token flow (401 with
`WWW-Authenticate: Bearer realm=...` -> a token from the realm -> retry). Credentials are asked for
only when a registry wants them, through a lookup function (by default the user's Docker config,
read by `cudabox.engine.registry_credentials`). Loopback registries may speak plain HTTP, as Docker
allows; every other registry is HTTPS, optionally trusting an extra CA bundle.

Failures become cudabox errors with a fix: Unavailable (unreachable, TLS, 5xx), AuthError,
NotFound, PlatformMissing, IntegrityError. Callers see typed values, never raw JSON.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import json
import os
import re
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import requests
import requests.adapters

from cudabox import __version__
from cudabox.errors import (
    AuthError,
    CudaboxError,
    IntegrityError,
    NotFound,
    PlatformMissing,
    Unavailable,
    UsageError,
)

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
# Registry 2.8 answers 404 for an OCI manifest unless the OCI types are listed here.
ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
# Docker's marker for an identity (refresh) token in place of a username.
TOKEN_USERNAME = "<token>"
DEFAULT_TIMEOUT_S = 5.0
# The spec's own limit for manifests; configs are small JSON too (a few KB, history included).
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_CONFIG_BYTES = 32 * 1024 * 1024
_HASHES = {"sha256": 64, "sha512": 128}

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST_RE = re.compile(r"^(sha256|sha512):([0-9a-f]+)$")
_HOST_RE = re.compile(
    r"^(?:\[[0-9a-fA-F:.]+\]|[a-zA-Z0-9](?:[a-zA-Z0-9.-]*[a-zA-Z0-9])?)(?::\d+)?$"
)
_CHALLENGE_RE = re.compile(r'(\w+)=(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')


# ----------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True)
class Reference:
    """`HOST[:PORT]/path/name[:tag][@digest]`, with Docker's defaults filled in."""

    registry: str  # host[:port] as written; "docker.io" for Docker Hub
    repository: str  # "cudabox/torch-2.13-cpu", "library/python"
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str, default_tag: str = "latest") -> Reference:
        """Parse a reference as `docker pull` does; UsageError (exit 2) naming what is wrong."""
        original = text
        text = text.strip()
        for scheme in ("https://", "http://"):
            if text.startswith(scheme):
                raise UsageError(
                    f"image reference {original!r} has a URL scheme",
                    f"write it without {scheme!r}, as for `docker pull`",
                )
        digest = None
        if "@" in text:
            text, digest = text.split("@", 1)
            check_digest(digest, f"image reference {original!r}", UsageError)
        registry, _, rest = text.partition("/")
        if not rest or not ("." in registry or ":" in registry or registry == "localhost"):
            registry, rest = DOCKER_HUB, text  # the first part is a path component, not a host
        elif registry == "index.docker.io":
            registry = DOCKER_HUB
        tag = None
        name, colon, maybe_tag = rest.rpartition(":")
        if colon and "/" not in maybe_tag:
            rest, tag = name, maybe_tag
        if registry == DOCKER_HUB and "/" not in rest:
            rest = f"library/{rest}"
        if not _HOST_RE.match(registry):
            raise UsageError(f"image reference {original!r}: {registry!r} is not a host[:port]")
        if not _PATH_RE.match(rest):
            raise UsageError(
                f"image reference {original!r}: repository {rest!r} is not a valid name",
                "use lowercase letters, digits and the separators . _ - between /-separated parts",
            )
        if tag is not None and not _TAG_RE.match(tag):
            raise UsageError(f"image reference {original!r}: {tag!r} is not a valid tag")
        if tag is None and digest is None:
            tag = default_tag
        return cls(registry, rest, tag, digest)

    @property
    def name(self) -> str:
        """registry/repository, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def reference(self) -> str:
        """What the manifest endpoint takes: the digest when there is one, else the tag."""
        return self.digest or self.tag or "latest"

    def pinned(self, digest: str) -> Reference:
        """The same repository, fixed to `digest` (the tag dropped: it may move)."""
        return Reference(self.registry, self.repository, None, digest)

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


@dataclass(frozen=True)
class Credentials:
    """A login for one registry; username TOKEN_USERNAME means `secret` is an identity token."""

    username: str
    secret: str = field(repr=False)

    @property
    def is_identity_token(self) -> bool:
        return self.username == TOKEN_USERNAME


CredentialLookup = Callable[[str], "Credentials | None"]


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")


LINUX_AMD64 = Platform("linux", "amd64")


@dataclass(frozen=True)
class Descriptor:
    """A pointer to content: its media type, digest and size (and platform, in an index)."""

    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def is_attestation(self) -> bool:
        # BuildKit's provenance/SBOM entries: a manifest of in-toto blobs, not a runnable image.
        kind = self.annotations.get("vnd.docker.reference.type", "")
        unknown = self.platform is not None and self.platform.os == "unknown"
        return kind == "attestation-manifest" or unknown


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an image's config blob that cudabox reads."""

    digest: str
    platform: Platform
    created: str | None
    labels: Mapping[str, str]
    env: tuple[str, ...]
    user: str
    diff_ids: tuple[str, ...]


@dataclass(frozen=True)
class RemoteImage:
    """One linux image in a registry, read and verified without its layers."""

    reference: Reference  # as asked
    digest: str  # of the platform's image manifest: pull this to get exactly what was judged
    media_type: str
    config: ImageConfig
    layers: tuple[Descriptor, ...]
    index_digest: str | None = None  # when the reference named an index / manifest list
    platforms: tuple[Platform, ...] = ()  # every runnable platform of that index

    @property
    def pinned(self) -> Reference:
        return self.reference.pinned(self.digest)

    @property
    def download_bytes(self) -> int:
        """What a pull transfers at most: the compressed layers."""
        return sum(layer.size for layer in self.layers)

    @property
    def labels(self) -> Mapping[str, str]:
        return self.config.labels


# ----------------------------------------------------------------------------------------------
# Digests


def check_digest(
    digest: str, where: str, error: type[CudaboxError] = IntegrityError
) -> tuple[str, str]:
    """(algorithm, hex) of a digest cudabox can verify; `error` otherwise."""
    match = _DIGEST_RE.match(digest)
    if not match or len(match.group(2)) != _HASHES[match.group(1)]:
        raise error(
            f"{where}: {digest!r} is not a sha256 or sha512 digest",
            "digests look like sha256: followed by 64 lowercase hex digits",
        )
    return match.group(1), match.group(2)


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def verify(data: bytes, digest: str, what: str) -> None:
    """IntegrityError unless `data` hashes to `digest`."""
    algorithm, _ = check_digest(digest, what)
    actual = digest_of(data, algorithm)
    if actual != digest:
        raise IntegrityError(
            f"{what} does not match its digest: expected {digest}, got {actual}",
            "the registry (or something between it and you) serves altered content: "
            "re-publish the image and check the registry's storage",
        )


# ----------------------------------------------------------------------------------------------
# The config cache: content-addressed, so an entry never goes stale


class BlobCache:
    """Config blobs on disk by digest ($XDG_CACHE_HOME/cudabox/registry/blobs/ALG/HEX).

    A hit is re-hashed before use; a damaged entry is dropped and fetched again. The cache is a
    speed-up only: a folder that cannot be written just means no caching.
    """

    def __init__(self, root: Path | None = None) -> None:
        if root is None:
            base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
            root = Path(base) / "cudabox" / "registry"
        self.root = root

    def _path(self, digest: str) -> Path:
        algorithm, hexdigest = check_digest(digest, "cached blob")
        return self.root / "blobs" / algorithm / hexdigest

    def get(self, digest: str) -> bytes | None:
        path = self._path(digest)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        algorithm, _ = check_digest(digest, "cached blob")
        if digest_of(data, algorithm) != digest:
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        return data

    def put(self, digest: str, data: bytes) -> None:
        path = self._path(digest)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                Path(temp).replace(path)  # atomic: a reader never sees half a blob
            except BaseException:
                with contextlib.suppress(OSError):
                    Path(temp).unlink()
                raise
        except OSError:
            pass  # read-only or full cache folder: carry on without caching


# ----------------------------------------------------------------------------------------------
# Parsing registry answers into values


def _load_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise IntegrityError(
            f"{what} is not a JSON object",
            "the registry serves something that is not an image: re-publish it",
        )
    return value


def _str(obj: Mapping[str, Any], key: str, what: str, default: str | None = None) -> str:
    value = obj.get(key, default)
    if not isinstance(value, str):
        raise IntegrityError(f"{what}: {key!r} is missing or not a string", "re-publish the image")
    return value


def _platform(raw: Any) -> Platform | None:
    if not isinstance(raw, dict):
        return None
    return Platform(
        str(raw.get("os", "")), str(raw.get("architecture", "")), str(raw.get("variant", "") or "")
    )


def _descriptor(raw: Any, what: str) -> Descriptor:
    if not isinstance(raw, dict):
        raise IntegrityError(f"{what}: a descriptor is not an object", "re-publish the image")
    digest = _str(raw, "digest", what)
    check_digest(digest, what)
    size = raw.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise IntegrityError(f"{what}: descriptor {digest} has no valid size", "re-publish it")
    annotations = raw.get("annotations") or {}
    if not isinstance(annotations, dict):
        annotations = {}
    return Descriptor(
        media_type=_str(raw, "mediaType", what, ""),
        digest=digest,
        size=size,
        platform=_platform(raw.get("platform")),
        annotations=MappingProxyType({str(k): str(v) for k, v in annotations.items()}),
    )


def _media_type(body: dict[str, Any], header: str) -> str:
    """The manifest's own mediaType, else the Content-Type, else what its shape says."""
    declared = body.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    header = header.split(";")[0].strip()
    if header in INDEX_TYPES | MANIFEST_TYPES:
        return header
    # OCI makes mediaType optional: tell an index from a manifest by its keys.
    return OCI_INDEX if "manifests" in body else OCI_MANIFEST


def parse_config(data: bytes, digest: str) -> ImageConfig:
    what = f"config blob {digest}"
    body = _load_json(data, what)
    inner = body.get("config") or {}
    if not isinstance(inner, dict):
        inner = {}
    # null is how Docker writes "none"; any other non-object is a broken config.
    labels = {} if inner.get("Labels") is None else inner["Labels"]
    env = [] if inner.get("Env") is None else inner["Env"]
    rootfs = body.get("rootfs") or {}
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if (
        not isinstance(labels, dict)
        or not isinstance(env, list)
        or not isinstance(diff_ids, list)
        or not all(isinstance(d, str) for d in diff_ids)
    ):
        raise IntegrityError(
            f"{what} is not an image config (labels, env or rootfs.diff_ids malformed)",
            "re-publish the image",
        )
    created = body.get("created")
    return ImageConfig(
        digest=digest,
        platform=Platform(
            str(body.get("os", "")),
            str(body.get("architecture", "")),
            str(body.get("variant", "") or ""),
        ),
        created=created if isinstance(created, str) else None,
        labels=MappingProxyType({str(k): str(v) for k, v in labels.items()}),
        env=tuple(str(e) for e in env),
        user=str(inner.get("User") or ""),
        diff_ids=tuple(diff_ids),
    )


def choose_platform(
    entries: tuple[Descriptor, ...], want: Platform, where: str
) -> tuple[Descriptor, tuple[Platform, ...]]:
    """The index entry for `want`, skipping attestations; PlatformMissing when there is none."""
    runnable = [e for e in entries if not e.is_attestation and e.platform is not None]
    platforms = tuple(e.platform for e in runnable if e.platform is not None)
    matches = [
        e
        for e in runnable
        if e.platform is not None
        and (e.platform.os, e.platform.architecture) == (want.os, want.architecture)
        and (not want.variant or e.platform.variant == want.variant)
    ]
    if not matches:
        have = ", ".join(sorted({str(p) for p in platforms})) or "no runnable platform"
        raise PlatformMissing(
            f"{where} has images for {have}, not for {want}",
            f"publish a {want} build of it (build on a {want} host, or with --platform {want})",
        )
    # Prefer the baseline variant (amd64 without v2/v3): it runs on every host of that kind.
    matches.sort(key=lambda e: (e.platform.variant if e.platform else "") not in ("", "v1"))
    return matches[0], platforms


# ----------------------------------------------------------------------------------------------
# The client


@dataclass(frozen=True)
class _Manifest:
    """One manifest as fetched: its bytes (verified), parsed body, media type and digest."""

    data: bytes
    body: dict[str, Any]
    media_type: str
    digest: str


@dataclass(frozen=True)
class _Challenge:
    scheme: str  # "basic" or "bearer"
    params: Mapping[str, str]


def parse_challenge(header: str) -> _Challenge | None:
    """`Bearer realm="...",service="...",scope="..."` (or Basic) -> its scheme and parameters."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() not in ("basic", "bearer"):
        return None
    params = {
        m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3)).replace(
            '\\"', '"'
        )
        for m in _CHALLENGE_RE.finditer(rest)
    }
    return _Challenge(scheme.lower(), MappingProxyType(params))


def split_host(host: str) -> tuple[str, int | None]:
    """'127.0.0.1:5000' -> ('127.0.0.1', 5000); '[::1]:5000' -> ('::1', 5000); no port -> None."""
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port = host.partition(":")
    return name, int(port) if port.isdigit() else None


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost: where Docker allows plain HTTP without being told."""
    name, _ = split_host(host)
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _docker_credentials(registry: str) -> Credentials | None:
    # Imported only when a registry asks for credentials: the Docker SDK is slow to import.
    from cudabox.engine import registry_credentials

    found = registry_credentials(registry)
    return Credentials(*found) if found else None


class RegistryClient:
    """Reads manifests and config blobs from registries. Thread-safe; close() or use `with`."""

    def __init__(
        self,
        credentials: CredentialLookup | None = None,
        *,
        ca_bundle: Path | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        cache: BlobCache | None = None,
        use_cache: bool = True,
        plain_http: frozenset[str] = frozenset(),
    ) -> None:
        """`credentials(registry)` is asked once per registry, and only when it wants a login.

        `plain_http` names further registries (host[:port]) that may speak plain HTTP, like
        Docker's insecure-registries; loopback ones always may.
        """
        self._lookup = credentials if credentials is not None else _docker_credentials
        self._ca_bundle = ca_bundle
        self._timeout = timeout
        self._cache = (cache or BlobCache()) if use_cache else None
        self._plain_http = plain_http
        self._session = requests.Session()
        self._session.headers["User-Agent"] = f"cudabox/{__version__}"
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=32)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._lock = threading.Lock()
        self._schemes: dict[str, str] = {}
        self._logins: dict[str, Credentials | None] = {}
        self._basic: set[str] = set()  # registries that asked for HTTP basic
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}  # (registry, scope) -> token
        self.requests = 0  # HTTP requests sent (for tests and benchmarks)

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    # -- what callers use --------------------------------------------------------------------

    def image(self, ref: Reference | str, platform: Platform = LINUX_AMD64) -> RemoteImage:
        """The image `ref` names for `platform`: manifest (through an index), config; verified."""
        ref = Reference.parse(ref) if isinstance(ref, str) else ref
        manifest = self._manifest(ref, ref.reference, ref.digest)
        index_digest = None
        platforms: tuple[Platform, ...] = ()
        for _ in range(3):  # an index may point at another index (rare; bounded)
            if manifest.media_type not in INDEX_TYPES:
                break
            entries = manifest.body.get("manifests")
            if not isinstance(entries, list):
                raise IntegrityError(f"index {ref} has no manifests list", "re-publish the image")
            descriptors = tuple(_descriptor(e, f"index {ref}") for e in entries)
            chosen, platforms = choose_platform(descriptors, platform, str(ref))
            index_digest = index_digest or manifest.digest
            manifest = self._manifest(ref, chosen.digest, chosen.digest)
            if len(manifest.data) != chosen.size:
                raise IntegrityError(
                    f"manifest {chosen.digest} of {ref} is {len(manifest.data)} bytes, "
                    f"its index says {chosen.size}",
                    "re-publish the image",
                )
        body, media_type, digest = manifest.body, manifest.media_type, manifest.digest
        if media_type not in MANIFEST_TYPES:
            raise IntegrityError(
                f"{ref} is a {media_type or 'manifest of no known type'}, not an image manifest",
                "cudabox reads OCI and Docker v2 images; re-push it with a current Docker",
            )
        what = f"manifest {digest} of {ref}"
        config_descriptor = _descriptor(body.get("config"), what)
        raw_layers = body.get("layers")
        if not isinstance(raw_layers, list):
            raise IntegrityError(f"{what} has no layers list", "re-publish the image")
        layers = tuple(_descriptor(layer, what) for layer in raw_layers)
        config = self.config(ref, config_descriptor)
        if (config.platform.os, config.platform.architecture) != (
            platform.os,
            platform.architecture,
        ):
            raise PlatformMissing(
                f"{ref} is an image for {config.platform}, not for {platform}",
                f"publish a {platform} build of it",
            )
        if len(config.diff_ids) != len(layers):
            raise IntegrityError(
                f"{what} lists {len(layers)} layers but its config {len(config.diff_ids)}",
                "re-publish the image",
            )
        return RemoteImage(
            reference=ref,
            digest=digest,
            media_type=media_type,
            config=config,
            layers=layers,
            index_digest=index_digest,
            platforms=platforms,
        )

    def ping(self, registry: str) -> None:
        """Check that `registry` answers the API v2 (`GET /v2/`); 401 counts as an answer."""
        url = f"{self._scheme(registry)}://{self._api_host(registry)}/v2/"
        response = self._send(url, {}, registry)
        response.close()
        speaks_v2 = "Docker-Distribution-Api-Version" in response.headers
        if response.status_code in (200, 401) and (speaks_v2 or response.status_code == 200):
            return
        raise Unavailable(
            f"{registry} answered {response.status_code} to {url}: not a registry (API v2)",
            "check the registry address (host[:port]/path, as for `docker pull`)",
        )

    def config(self, ref: Reference, descriptor: Descriptor) -> ImageConfig:
        """The config blob `descriptor` points to, from the cache or the registry; verified."""
        what = f"config blob {descriptor.digest} of {ref}"
        data = self._cache.get(descriptor.digest) if self._cache else None
        if data is None:
            data = self._get_blob(ref, descriptor.digest, MAX_CONFIG_BYTES)
            verify(data, descriptor.digest, what)
            if self._cache:
                self._cache.put(descriptor.digest, data)
        if len(data) != descriptor.size:
            raise IntegrityError(
                f"{what} is {len(data)} bytes, its manifest says {descriptor.size}",
                "re-publish the image",
            )
        return parse_config(data, descriptor.digest)

    def tags(self, repository: Reference | str, limit: int = 1000) -> tuple[str, ...]:
        """The repository's tags (first `limit`); NotFound when it does not exist."""
        ref = Reference.parse(repository) if isinstance(repository, str) else repository
        response = self._request(ref, f"tags/list?n={limit}", {}, f"tags of {ref.name}")
        data = _load_json(self._read(response, MAX_MANIFEST_BYTES, ref), f"tag list of {ref.name}")
        tags = data.get("tags") or []
        return tuple(str(t) for t in tags) if isinstance(tags, list) else ()

    # -- manifests and blobs -----------------------------------------------------------------

    def _manifest(self, ref: Reference, reference: str, expect: str | None) -> _Manifest:
        """One manifest by tag or digest; checked against `expect` or the announced digest."""
        where = f"{ref.name}@{reference}" if expect else f"{ref.name}:{reference}"
        response = self._request(ref, f"manifests/{reference}", {"Accept": ACCEPT}, where)
        data = self._read(response, MAX_MANIFEST_BYTES, ref)
        announced = response.headers.get("Docker-Content-Digest")
        algorithm = (expect or announced or "sha256").split(":")[0]
        digest = digest_of(data, algorithm if algorithm in _HASHES else "sha256")
        if expect:
            verify(data, expect, f"manifest of {where}")
        elif announced and announced.startswith(f"{algorithm}:") and announced != digest:
            raise IntegrityError(
                f"manifest of {where} does not match the digest the registry announces: "
                f"announced {announced}, got {digest}",
                "the registry (or a proxy) serves altered content: re-publish the image",
            )
        body = _load_json(data, f"manifest of {where}")
        media_type = _media_type(body, response.headers.get("Content-Type", ""))
        return _Manifest(data, body, media_type, digest)

    def _get_blob(self, ref: Reference, digest: str, limit: int) -> bytes:
        response = self._request(ref, f"blobs/{digest}", {}, f"blob {digest} of {ref.name}")
        return self._read(response, limit, ref)

    def _read(self, response: requests.Response, limit: int, ref: Reference) -> bytes:
        chunks: list[bytes] = []
        size = 0
        try:
            with response:
                for chunk in response.iter_content(65536):
                    size += len(chunk)
                    if size > limit:
                        raise IntegrityError(
                            f"{response.url} is larger than {limit} bytes: not a manifest/config",
                            "check that --registry names a container registry",
                        )
                    chunks.append(chunk)
        except requests.RequestException as exc:
            raise self._unreachable(ref.registry, exc) from None
        return b"".join(chunks)

    # -- HTTP, schemes and authentication -----------------------------------------------------

    def _api_host(self, registry: str) -> str:
        return DOCKER_HUB_API if registry == DOCKER_HUB else registry

    def _scheme(self, registry: str) -> str:
        with self._lock:
            known = self._schemes.get(registry)
        if known:
            return known
        host = self._api_host(registry)
        scheme = "https"
        if is_loopback(host) or registry in self._plain_http:
            scheme = "https" if self._speaks_tls(registry, host) else "http"
        with self._lock:
            self._schemes[registry] = scheme
        return scheme

    def _speaks_tls(self, registry: str, host: str) -> bool:
        """Whether host:port answers a TLS handshake (Docker also tries HTTPS before HTTP)."""
        name, port = split_host(host)
        address = (name, port or 443)
        # Only asks "TLS or not" (real requests verify), so no CA store: loading one costs 0.2 s.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        try:
            with socket.create_connection(address, timeout=self._timeout) as sock:
                try:
                    with context.wrap_socket(sock, server_hostname=name):
                        return True
                except (ssl.SSLError, ConnectionResetError):
                    return False
        except OSError as exc:
            if not port:  # no port given: plain HTTP on 80 may still answer
                return False
            raise self._unreachable(registry, exc) from None

    def _url(self, ref: Reference, path: str) -> str:
        base = f"{self._scheme(ref.registry)}://{self._api_host(ref.registry)}"
        return f"{base}/v2/{ref.repository}/{path}"

    def _login(self, registry: str) -> Credentials | None:
        with self._lock:
            if registry in self._logins:
                return self._logins[registry]
        found = self._lookup(registry)
        with self._lock:
            self._logins[registry] = found
        return found

    def _auth_header(self, ref: Reference) -> str | None:
        """What to send before being asked: a cached token for the repository, or basic."""
        now = time.monotonic()
        with self._lock:
            for (registry, scope), (token, expires) in self._tokens.items():
                if registry == ref.registry and f":{ref.repository}:" in scope and expires > now:
                    return f"Bearer {token}"
            wants_basic = ref.registry in self._basic
        if wants_basic:
            login = self._login(ref.registry)
            if login is not None:
                return _basic_header(login)
        return None

    def _count(self) -> None:
        with self._lock:
            self.requests += 1

    def _send(self, url: str, headers: Mapping[str, str], registry: str) -> requests.Response:
        self._count()
        try:
            return self._session.get(
                url,
                headers=dict(headers),
                timeout=(self._timeout, self._timeout),
                verify=str(self._ca_bundle) if self._ca_bundle else True,
                stream=True,
                allow_redirects=True,  # blobs are often served from a storage redirect
            )
        except requests.exceptions.SSLError as exc:
            raise self._tls_error(registry, exc) from None
        except requests.RequestException as exc:
            raise self._unreachable(registry, exc) from None

    def _request(
        self, ref: Reference, path: str, headers: Mapping[str, str], what: str
    ) -> requests.Response:
        url = self._url(ref, path)
        sent = dict(headers)
        auth = self._auth_header(ref)
        if auth:
            sent["Authorization"] = auth
        response = self._send(url, sent, ref.registry)
        if response.status_code == 401:
            challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
            response.close()
            auth = self._answer(ref, challenge, had=auth)
            sent["Authorization"] = auth
            response = self._send(url, sent, ref.registry)
            if response.status_code == 401 and auth.startswith("Basic"):
                response.close()
                login = self._login(ref.registry)
                assert login is not None  # _answer gave Basic, so there is a login
                raise _refused(ref.registry, login)
        if response.status_code < 300:
            return response
        raise self._failure(ref, response, path, what)

    def _answer(self, ref: Reference, challenge: _Challenge | None, had: str | None) -> str:
        """The Authorization header that answers a 401's challenge."""
        registry = ref.registry
        login = self._login(registry)
        if challenge is None:
            raise AuthError(
                f"registry {registry} refused the request (401) without saying how to log in",
                f"check the registry address; log in with `docker login {registry}`",
            )
        if challenge.scheme == "basic":
            if login is None:
                raise AuthError(
                    f"registry {registry} needs a login and your Docker config has none for it",
                    f"log in: `docker login {registry}`",
                )
            if had is not None and had.startswith("Basic"):
                raise _refused(registry, login)
            with self._lock:
                self._basic.add(registry)
            return _basic_header(login)
        scope = challenge.params.get("scope") or f"repository:{ref.repository}:pull"
        if had is not None and had.startswith("Bearer"):
            # A token we already held no longer works (expired): fetch a fresh one once.
            with self._lock:
                self._tokens.pop((registry, scope), None)
        token, lifetime = self._token(registry, challenge, scope, login)
        with self._lock:
            # Renew a little early; the spec's default lifetime is 60 s.
            self._tokens[(registry, scope)] = (token, time.monotonic() + max(lifetime - 10, 5))
        return f"Bearer {token}"

    def _token(
        self, registry: str, challenge: _Challenge, scope: str, login: Credentials | None
    ) -> tuple[str, float]:
        realm = challenge.params.get("realm", "")
        if not realm.startswith(("https://", "http://")):
            raise AuthError(
                f"registry {registry} names no usable token service (realm {realm!r})",
                "check the registry address, or ask its operator",
            )
        service = challenge.params.get("service", "")
        params = {"scope": scope, **({"service": service} if service else {})}
        self._count()
        try:
            if login is not None and login.is_identity_token:
                # Docker's OAuth2 refresh-token grant for identity tokens (e.g. cloud logins).
                response = self._session.post(
                    realm,
                    data={
                        **params,
                        "grant_type": "refresh_token",
                        "refresh_token": login.secret,
                        "client_id": "cudabox",
                    },
                    timeout=(self._timeout, self._timeout),
                    verify=str(self._ca_bundle) if self._ca_bundle else True,
                )
            else:
                headers = {"Authorization": _basic_header(login)} if login else {}
                response = self._session.get(
                    realm,
                    params=params,
                    headers=headers,
                    timeout=(self._timeout, self._timeout),
                    verify=str(self._ca_bundle) if self._ca_bundle else True,
                )
        except requests.exceptions.SSLError as exc:
            raise self._tls_error(registry, exc, f"token service {realm}") from None
        except requests.RequestException as exc:
            raise self._unreachable(registry, exc, f"token service {realm}") from None
        with response:
            if response.status_code in (401, 403):
                if login is None:
                    raise AuthError(
                        f"the token service of {registry} wants a login for {scope}",
                        f"log in: `docker login {registry}`",
                    )
                raise _refused(registry, login)
            if response.status_code != 200:
                raise Unavailable(
                    f"the token service of {registry} ({realm}) answered {response.status_code}",
                    "try again later; if it persists, ask the registry's operator",
                )
            try:
                body = response.json()
            except ValueError:
                body = None
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise AuthError(
                f"the token service of {registry} answered without a token",
                "check the registry address, or ask its operator",
            )
        lifetime = body.get("expires_in") if isinstance(body, dict) else None
        return token, float(lifetime) if isinstance(lifetime, int | float) else 60.0

    # -- failures ------------------------------------------------------------------------------

    def _failure(
        self, ref: Reference, response: requests.Response, path: str, what: str
    ) -> CudaboxError:
        status = response.status_code
        codes = _error_codes(response)
        response.close()
        registry = ref.registry
        if status in (401, 403):
            # A token was granted (or no login needed), yet this repository is refused.
            return RepositoryDenied(
                f"registry {registry} denies access to {ref.repository}: "
                "it does not exist, or your login may not pull it",
                f"check the name, or log in as someone who may pull it: `docker login {registry}`",
            )
        if status == 404:
            return self._not_found(ref, path, codes)
        if status == 429:
            return Unavailable(
                f"registry {registry} limits requests (429 Too Many Requests)",
                f"wait and try again; a login (`docker login {registry}`) raises the limit",
            )
        if status >= 500:
            return Unavailable(
                f"registry {registry} failed on {what} ({status})",
                "try again later; if it persists, ask the registry's operator",
            )
        return Unavailable(
            f"registry {registry} answered {status} {', '.join(codes)} for {what}".rstrip(),
            "check that --registry names a container registry (Distribution API v2)",
        )

    def _not_found(self, ref: Reference, path: str, codes: tuple[str, ...]) -> NotFound:
        kind, _, reference = path.partition("/")
        if kind == "tags" or "NAME_UNKNOWN" in codes:
            return NotFound(
                f"registry {ref.registry} has no repository {ref.repository}",
                "check the name and the registry prefix, or publish the image there first",
            )
        if kind == "blobs":
            return NotFound(
                f"registry {ref.registry} lost blob {reference} of {ref}",
                "re-publish the image (its manifest names content the registry no longer has)",
            )
        if reference.startswith(("sha256:", "sha512:")):
            return NotFound(
                f"{ref.name} has no manifest {reference}",
                "it was deleted, or the digest is a typo: choose again to get a current one",
            )
        tags: tuple[str, ...] = ()
        with contextlib.suppress(CudaboxError):
            tags = self.tags(ref)
        if not tags:
            return NotFound(
                f"registry {ref.registry} has no image {ref.repository} (no tags)",
                "check the name and the registry prefix, or publish the image there first",
            )
        shown = ", ".join(sorted(tags)[:8]) + (", ..." if len(tags) > 8 else "")
        return NotFound(
            f"{ref.name} has no tag {ref.tag!r} (it has: {shown})",
            "use one of those tags, or publish the image under that tag",
        )

    def _unreachable(self, registry: str, exc: BaseException, what: str = "") -> Unavailable:
        reason = _short(exc)
        return Unavailable(
            f"cannot reach {what or 'registry ' + registry}: {reason}",
            f"check the address and that the registry runs (`curl {self._probe_url(registry)}`)",
        )

    def _tls_error(self, registry: str, exc: BaseException, what: str = "") -> Unavailable:
        return Unavailable(
            f"TLS with {what or 'registry ' + registry} failed: {_short(exc)}",
            "if it uses a private CA, give cudabox that CA's certificate (the registry CA bundle "
            "option); check the system clock and the registry's certificate",
        )

    def _probe_url(self, registry: str) -> str:
        scheme = self._schemes.get(registry, "https")
        return f"{scheme}://{self._api_host(registry)}/v2/"


class RepositoryDenied(AuthError):
    """The registry accepted the login (or none was needed) but refuses this repository.

    Docker Hub and others answer so for a repository that does not exist, to hide what exists;
    callers that read many repositories may treat it as a missing one.
    """


def _basic_header(login: Credentials) -> str:
    raw = f"{login.username}:{login.secret}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def _refused(registry: str, login: Credentials) -> AuthError:
    who = "the identity token" if login.is_identity_token else f"user {login.username!r}"
    return AuthError(
        f"registry {registry} refused the credentials of {who}",
        f"log in again with the right password or token: `docker login {registry}`",
    )


def _error_codes(response: requests.Response) -> tuple[str, ...]:
    """The registry's error codes (MANIFEST_UNKNOWN, NAME_UNKNOWN, DENIED, ...) from its body."""
    try:
        body = json.loads(response.raw.read(65536, decode_content=True) or b"{}")
    except (ValueError, OSError, AttributeError):
        return ()
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list):
        return ()
    return tuple(str(e.get("code", "")) for e in errors if isinstance(e, dict))


def _short(exc: BaseException) -> str:
    """The innermost reason of a requests/urllib3 error, without the stack of wrappers."""
    text = str(exc)
    for pattern in (r"\[Errno -?\d+\] [^'\")]+", r"\[SSL[^\]]*\][^'\")]+", r"timed out"):
        match = re.search(pattern, text)
        if match:
            return match.group(0).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
