"""A fake registry with a token service, for the token cases the real registry does not show.

The real registry runs the Bearer flow too (tests/registry/test_token_registry.py); this fake adds
what it cannot: the OAuth2 refresh-token grant, tokens that do not cover the repository (Docker
Hub's answer for a missing one), tampered content behind tokens. It answers as Distribution does:
401 with `WWW-Authenticate: Bearer realm="<this server>/token",service=...,scope=...` and an
UNAUTHORIZED body; `/token` grants a scope anonymously, for a basic login or for a refresh token;
a token is good only for the repository it was issued for.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class FakeRegistry:
    """State of the fake: content, logins, issued tokens and every request seen."""

    service: str = "fake-registry.test"
    login: tuple[str, str] | None = None  # None: anonymous tokens for every repository
    refresh_token: str | None = None  # accepted by the OAuth2 refresh-token grant
    private: set[str] = field(default_factory=set)  # repositories a login may pull, anonymous not
    # Grant tokens for this repository whatever the scope asked (a token that does not cover it).
    grant_instead: str | None = None
    manifests: dict[tuple[str, str], tuple[bytes, str]] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    tampered: dict[str, bytes] = field(default_factory=dict)  # digest -> served instead
    tokens: dict[str, str] = field(default_factory=dict)  # token -> repository
    seen: list[tuple[str, str, int]] = field(default_factory=list)  # method, path, status
    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add_image(self, repo: str, tag: str, labels: dict[str, str]) -> tuple[str, str, str]:
        """(manifest digest, config digest, layer digest) of a one-layer OCI image."""
        layer = b"\x1f\x8b fake layer for " + repo.encode()
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Labels": labels},
                "rootfs": {"type": "layers", "diff_ids": [sha256(b"diff " + layer)]},
            }
        ).encode()
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": sha256(layer),
                        "size": len(layer),
                    }
                ],
            }
        ).encode()
        self.blobs[sha256(config)] = config
        self.blobs[sha256(layer)] = layer
        self.manifests[(repo, tag)] = (manifest, OCI_MANIFEST)
        self.manifests[(repo, sha256(manifest))] = (manifest, OCI_MANIFEST)
        return sha256(manifest), sha256(config), sha256(layer)

    def paths(self, status: int | None = None) -> list[str]:
        return [p for _, p, s in self.seen if status is None or s == status]


def _handler(state: FakeRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: the test reads `state.seen` instead

        def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            with state.lock:
                state.seen.append((self.command, self.path, status))
            self.send_response(status)
            self.send_header("Docker-Distribution-Api-Version", "registry/2.0")
            self.send_header("Content-Length", str(len(body)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status: int, code: str, extra: dict[str, str] | None = None) -> None:
            body = json.dumps({"errors": [{"code": code, "message": code.lower()}]}).encode()
            self._send(status, body, {"Content-Type": "application/json", **(extra or {})})

        def _challenge(self, scope: str | None) -> None:
            header = f'Bearer realm="http://{state.host}/token",service="{state.service}"'
            if scope:
                header += f',scope="{scope}"'
            self._error(401, "UNAUTHORIZED", {"WWW-Authenticate": header})

        def _basic_ok(self) -> bool:
            if state.login is None:
                return False
            expected = base64.b64encode(f"{state.login[0]}:{state.login[1]}".encode()).decode()
            return self.headers.get("Authorization", "") == f"Basic {expected}"

        def _grant(self, scope: str, logged_in: bool) -> None:
            repo = scope.split(":")[1] if scope.count(":") >= 2 else ""
            if state.login is not None and not logged_in and repo in state.private:
                self._error(401, "UNAUTHORIZED")  # like auth.docker.io for a bad login
                return
            token = secrets.token_hex(16)
            with state.lock:
                state.tokens[token] = state.grant_instead or repo
            body = json.dumps({"token": token, "access_token": token, "expires_in": 300})
            self._send(200, body.encode(), {"Content-Type": "application/json"})

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            if url.path == "/token":
                if query.get("service") != [state.service] or not query.get("scope"):
                    self._error(400, "INVALID_REQUEST")
                    return
                given = self.headers.get("Authorization", "")
                if given.startswith("Basic") and not self._basic_ok():
                    self._error(401, "UNAUTHORIZED")
                    return
                self._grant(query["scope"][0], logged_in=self._basic_ok())
                return
            if url.path == "/v2/":
                self._challenge(None)
                return
            parts = url.path.split("/")
            # /v2/<repo...>/(manifests|blobs|tags)/<reference>
            if len(parts) < 5 or parts[1] != "v2":
                self._error(404, "NOT_FOUND")
                return
            kind, reference = parts[-2], parts[-1]
            repo = "/".join(parts[2:-2])
            auth = self.headers.get("Authorization", "")
            token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else ""
            if state.tokens.get(token) != repo:
                self._challenge(f"repository:{repo}:pull")
                return
            if kind == "manifests":
                found = state.manifests.get((repo, reference))
                if found is None:
                    self._error(404, "MANIFEST_UNKNOWN")
                    return
                body, media_type = found
                digest = sha256(body)
                body = state.tampered.get(digest, body)
                self._send(200, body, {"Content-Type": media_type, "Docker-Content-Digest": digest})
                return
            if kind == "blobs":
                blob = state.blobs.get(reference)
                if blob is None:
                    self._error(404, "BLOB_UNKNOWN")
                    return
                blob = state.tampered.get(reference, blob)
                self._send(200, blob, {"Content-Type": "application/octet-stream"})
                return
            if kind == "tags" and reference == "list":
                tags = sorted(t for (r, t) in state.manifests if r == repo and ":" not in t)
                body = json.dumps({"name": repo, "tags": tags}).encode()
                self._send(200, body, {"Content-Type": "application/json"})
                return
            self._error(404, "NOT_FOUND")

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length", "0"))
            form = parse_qs(self.rfile.read(length).decode())
            if url.path != "/token" or form.get("grant_type") != ["refresh_token"]:
                self._error(404, "NOT_FOUND")
                return
            if form.get("refresh_token") != [state.refresh_token] or not form.get("scope"):
                self._error(401, "UNAUTHORIZED")
                return
            self._grant(form["scope"][0], logged_in=True)

    return Handler


@contextmanager
def fake_registry(state: FakeRegistry) -> Iterator[FakeRegistry]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
