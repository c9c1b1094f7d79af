"""A real registry for tests: Debian's `docker-registry` (Distribution 2.8) on 127.0.0.1.

`registry` is a plain-HTTP registry (as Docker allows on loopback); `tls_registry` wants an
htpasswd login over TLS, with a CA this module makes. Each runs on a free port with a temporary
storage folder and deletes enabled, writes its request log as JSON lines (so tests can count what
was read: `server.requests_since(mark)`), and is stopped at the end of the session.

`RegistryServer.push_image/push_index` upload small images through the registry API itself (blob
uploads + manifest PUT), for the cases the Docker engine cannot push (OCI indexes, other
platforms, attestation entries).
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from realtools import unavailable

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
USERNAME = "cudabox"
PASSWORD = "s3cret-pa55"


def require_tools(*tools: str) -> None:
    """Skip loudly when a tool is missing; fail instead where CUDABOX_REQUIRE names registry."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        unavailable(
            "registry",
            f"{', '.join(missing)} not installed; registry tests need "
            "`apt-get install docker-registry skopeo apache2-utils openssl`",
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    uri: str
    status: int


@dataclass(frozen=True)
class Pushed:
    """What push_image uploaded: digests and sizes, to compare with what the client reads."""

    digest: str  # of the manifest
    manifest: bytes
    config_digest: str
    config: bytes
    layer_digest: str
    layer: bytes
    diff_id: str


@dataclass
class RegistryServer:
    host: str  # 127.0.0.1:PORT
    storage: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    scheme: str = "http"
    ca: Path | None = None  # the CA that signed the server's certificate (TLS only)
    username: str | None = None
    password: str | None = None
    token_auth: TokenService | None = None  # when the registry wants bearer tokens
    _session: requests.Session = field(default_factory=requests.Session)

    def url(self, path: str) -> str:
        return f"{self.scheme}://{self.host}{path}"

    # -- the registry's own log -----------------------------------------------------------------

    def mark(self) -> int:
        return len(self.log_path.read_text().splitlines())

    def requests_since(self, mark: int) -> list[LoggedRequest]:
        found = []
        for line in self.log_path.read_text().splitlines()[mark:]:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if "http.request.uri" not in entry:
                continue
            if "http.response.status" in entry:
                status = int(entry["http.response.status"])
            elif str(entry.get("msg", "")).startswith("error authorizing context"):
                status = 401  # the registry logs its challenges without a status
            else:
                continue
            found.append(
                LoggedRequest(entry["http.request.method"], entry["http.request.uri"], status)
            )
        return found

    def storage_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.storage.rglob("*") if p.is_file())

    # -- writing through the API --------------------------------------------------------------

    def _auth(self, repo: str, actions: str = "pull,push") -> dict[str, str]:
        if self.token_auth is not None:
            token = self.token_auth.issue(repo, actions.split(","))
            return {"Authorization": f"Bearer {token}"}
        if self.username and self.password:
            raw = f"{self.username}:{self.password}".encode()
            return {"Authorization": "Basic " + base64.b64encode(raw).decode()}
        return {}

    def _verify(self) -> str | bool:
        return str(self.ca) if self.ca else True

    def push_blob(self, repo: str, data: bytes) -> str:
        digest = sha256(data)
        start = self._session.post(
            self.url(f"/v2/{repo}/blobs/uploads/"),
            headers=self._auth(repo),
            verify=self._verify(),
            timeout=10,
        )
        assert start.status_code == 202, start.text
        location = start.headers["Location"]
        if location.startswith("/"):
            location = self.url(location)
        joiner = "&" if "?" in location else "?"
        done = self._session.put(
            f"{location}{joiner}digest={digest}",
            data=data,
            headers={**self._auth(repo), "Content-Type": "application/octet-stream"},
            verify=self._verify(),
            timeout=10,
        )
        assert done.status_code == 201, done.text
        return digest

    def put_manifest(self, repo: str, reference: str, body: bytes, media_type: str) -> str:
        response = self._session.put(
            self.url(f"/v2/{repo}/manifests/{reference}"),
            data=body,
            headers={**self._auth(repo), "Content-Type": media_type},
            verify=self._verify(),
            timeout=10,
        )
        assert response.status_code == 201, response.text
        assert response.headers["Docker-Content-Digest"] == sha256(body)
        return sha256(body)

    def push_image(
        self,
        repo: str,
        tag: str | None,
        labels: Mapping[str, str],
        *,
        architecture: str = "amd64",
        oci: bool = True,
        payload: bytes = b"hello from a cudabox test image\n",
    ) -> Pushed:
        """A one-layer image with `labels`, uploaded blob by blob; tagged `tag` when given."""
        layer_tar = io.BytesIO()
        with tarfile.open(fileobj=layer_tar, mode="w", format=tarfile.PAX_FORMAT) as tar:
            info = tarfile.TarInfo("hello.txt")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        diff_id = sha256(layer_tar.getvalue())
        layer = gzip.compress(layer_tar.getvalue(), mtime=0)
        config = json.dumps(
            {
                "architecture": architecture,
                "os": "linux",
                "created": "2026-01-01T00:00:00Z",
                "config": {"Labels": dict(labels), "Env": ["PATH=/usr/bin", "CUDABOX_TEST=1"]},
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            },
            sort_keys=True,
        ).encode()
        self.push_blob(repo, layer)
        self.push_blob(repo, config)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST if oci else DOCKER_MANIFEST,
                "config": {
                    "mediaType": OCI_CONFIG if oci else DOCKER_CONFIG,
                    "digest": sha256(config),
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": OCI_LAYER if oci else DOCKER_LAYER,
                        "digest": sha256(layer),
                        "size": len(layer),
                    }
                ],
            }
        ).encode()
        media_type = OCI_MANIFEST if oci else DOCKER_MANIFEST
        digest = self.put_manifest(repo, tag or sha256(manifest), manifest, media_type)
        return Pushed(digest, manifest, sha256(config), config, sha256(layer), layer, diff_id)

    def push_index(
        self, repo: str, tag: str, entries: Sequence[tuple[Pushed, dict[str, Any]]]
    ) -> str:
        """An OCI index of already pushed manifests, each with extra descriptor fields."""
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [
                    {
                        "mediaType": OCI_MANIFEST,
                        "digest": pushed.digest,
                        "size": len(pushed.manifest),
                        **extra,
                    }
                    for pushed, extra in entries
                ],
            }
        ).encode()
        return self.put_manifest(repo, tag, body, OCI_INDEX)

    def delete_blob(self, repo: str, digest: str) -> None:
        gone = self._session.delete(
            self.url(f"/v2/{repo}/blobs/{digest}"),
            headers=self._auth(repo, "pull,delete"),
            verify=self._verify(),
            timeout=10,
        )
        assert gone.status_code == 202, gone.text

    def delete_tagged(self, repo: str, tag: str) -> None:
        """Delete the manifest a tag names (Distribution deletes by digest only)."""
        accept = f"{OCI_MANIFEST}, {DOCKER_MANIFEST}, {OCI_INDEX}"
        head = self._session.head(
            self.url(f"/v2/{repo}/manifests/{tag}"),
            headers={**self._auth(repo, "pull,delete"), "Accept": accept},
            verify=self._verify(),
            timeout=10,
        )
        digest = head.headers["Docker-Content-Digest"]
        gone = self._session.delete(
            self.url(f"/v2/{repo}/manifests/{digest}"),
            headers=self._auth(repo, "pull,delete"),
            verify=self._verify(),
            timeout=10,
        )
        assert gone.status_code == 202, gone.text


# -- a CA, certificates and logins --------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(folder: Path) -> tuple[Path, Path, Path]:
    """(ca.crt, server.crt, server.key): a throwaway CA and a certificate for 127.0.0.1."""
    folder.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/CN=cudabox test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
        cwd=folder,
    )
    (folder / "ext.cnf").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        "server.crt",
        "-extfile",
        "ext.cnf",
        cwd=folder,
    )
    return folder / "ca.crt", folder / "server.crt", folder / "server.key"


def make_htpasswd(path: Path, username: str, password: str) -> Path:
    # The registry accepts bcrypt entries only (htpasswd -B).
    result = subprocess.run(
        ["htpasswd", "-Bbn", username, password],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    path.write_text(result.stdout)
    return path


# -- a token service, so that the real registry runs the Bearer token flow ----------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenService:
    """What docker_auth or Harbor's token service does, in a few lines: signed JWTs per scope.

    The registry trusts the certificate in `x5c` because it is in its `rootcertbundle`; tokens
    are signed RS256 with `openssl dgst` (no crypto library needed). Every token grants what the
    scope asks, unless `logins` is set: then a basic login from it is needed. `issued` records
    (scope, user) for the tests.
    """

    service = "cudabox-test-registry"
    issuer = "cudabox-test-token-issuer"

    def __init__(self, folder: Path, logins: Mapping[str, str] | None = None) -> None:
        require_tools("openssl")
        self.ca, _, _ = make_ca(folder)
        self.key = folder / "ca.key"
        der = subprocess.run(
            ["openssl", "x509", "-in", str(self.ca), "-outform", "DER"],
            check=True,
            capture_output=True,
            timeout=60,
        ).stdout
        self.x5c = base64.b64encode(der).decode()
        self.logins = dict(logins) if logins is not None else None
        self.issued: list[tuple[str, str]] = []
        self.port = 0
        self._server: Any = None

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def registry_config(self) -> dict[str, str]:
        return {
            "realm": self.realm,
            "service": self.service,
            "issuer": self.issuer,
            "rootcertbundle": str(self.ca),
        }

    def issue(self, repository: str, actions: Sequence[str]) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        claims = {
            "iss": self.issuer,
            "sub": "cudabox-test",
            "aud": self.service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": os.urandom(8).hex(),
            "access": [{"type": "repository", "name": repository, "actions": list(actions)}],
        }
        signing_input = (
            _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        )
        signature = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.key)],
            input=signing_input.encode(),
            check=True,
            capture_output=True,
            timeout=60,
        ).stdout
        return signing_input + "." + _b64url(signature)

    def _answer(self, query: Mapping[str, list[str]], authorization: str) -> tuple[int, bytes]:
        scope = (query.get("scope") or [""])[0]
        user = ""
        if self.logins is not None:
            if not authorization.startswith("Basic "):
                return 401, b'{"details": "login required"}'
            user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
            if self.logins.get(user) != password:
                return 401, b'{"details": "bad login"}'
        if query.get("service") != [self.service] or scope.count(":") != 2:
            return 400, b'{"details": "bad request"}'
        _, repository, actions = scope.split(":")
        self.issued.append((scope, user))
        token = self.issue(repository, [a for a in actions.split(",") if a == "pull"])
        return 200, json.dumps({"token": token, "expires_in": 300}).encode()

    @contextlib.contextmanager
    def running(self) -> Iterator[TokenService]:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import parse_qs, urlsplit

        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                status, body = service._answer(
                    parse_qs(url.query), self.headers.get("Authorization", "")
                )
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(server.server_address[1])
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


# -- starting and stopping ----------------------------------------------------------------------


def _wait_ready(server: RegistryServer, deadline_s: float = 20.0) -> None:
    end = time.monotonic() + deadline_s
    last: Exception | None = None
    while time.monotonic() < end:
        if server.process.poll() is not None:
            break
        try:
            answer = requests.get(server.url("/v2/"), verify=server._verify(), timeout=1)
            if "Docker-Distribution-Api-Version" in answer.headers:
                return
        except requests.RequestException as exc:
            last = exc
        time.sleep(0.05)
    log = server.log_path.read_text()[-2000:]
    raise RuntimeError(f"docker-registry did not start ({last}); its log:\n{log}")


@contextlib.contextmanager
def running_registry(
    folder: Path,
    *,
    tls: bool = False,
    login: tuple[str, str] | None = None,
    token_auth: TokenService | None = None,
) -> Iterator[RegistryServer]:
    """A docker-registry on 127.0.0.1:<free port> storing under `folder`; stopped on exit."""
    require_tools(
        "docker-registry",
        *(("openssl",) if tls or token_auth else ()),
        *(("htpasswd",) if login else ()),
    )
    folder.mkdir(parents=True, exist_ok=True)
    storage = folder / "storage"
    port = free_port()
    config: dict[str, Any] = {
        "version": "0.1",
        "log": {"level": "info", "formatter": "json", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            "delete": {"enabled": True},
        },
        "http": {"addr": f"127.0.0.1:{port}", "secret": "cudabox-test-secret"},
    }
    ca = None
    if tls:
        ca, cert, key = make_ca(folder / "tls")
        config["http"]["tls"] = {"certificate": str(cert), "key": str(key)}
    if login:
        config["auth"] = {
            "htpasswd": {
                "realm": "cudabox-test",
                "path": str(make_htpasswd(folder / "htpasswd", *login)),
            }
        }
    if token_auth is not None:
        config["auth"] = {"token": token_auth.registry_config()}
    # JSON is YAML: no YAML library needed to write the config.
    (folder / "config.yml").write_text(json.dumps(config, indent=2))
    log_path = folder / "registry.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["docker-registry", "serve", str(folder / "config.yml")],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = RegistryServer(
        host=f"127.0.0.1:{port}",
        storage=storage,
        log_path=log_path,
        process=process,
        scheme="https" if tls else "http",
        ca=ca,
        username=login[0] if login else None,
        password=login[1] if login else None,
        token_auth=token_auth,
    )
    try:
        _wait_ready(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        server._session.close()


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A plain-HTTP registry on loopback, for the whole session."""
    with running_registry(tmp_path_factory.mktemp("registry")) as server:
        yield server


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A registry that wants bearer tokens from a TokenService (anonymous pulls allowed)."""
    folder = tmp_path_factory.mktemp("token-registry")
    with (
        TokenService(folder / "keys").running() as tokens,
        running_registry(folder, token_auth=tokens) as server,
    ):
        yield server


@pytest.fixture(scope="session")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A registry that wants USERNAME/PASSWORD (htpasswd, bcrypt) over TLS from a test CA."""
    folder = tmp_path_factory.mktemp("tls-registry")
    with running_registry(folder, tls=True, login=(USERNAME, PASSWORD)) as server:
        yield server
