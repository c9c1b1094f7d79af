"""Engines that misbehave, through the command line as a user meets them: no hang, no traceback.

An engine that accepts the connection and never answers, a DOCKER_HOST the SDK cannot use, TLS
settings without their files, and an engine that answers but refuses (or breaks off) an
operation. Each is a unix socket served by a thread of this process; cudabox runs in a
subprocess, exactly as typed.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from cudabox.container import rlimit_refusal
from cudabox.errors import EngineError, ExitCode

# The engine's first answer gets 5 s (cudabox.engine.CONNECT_TIMEOUT_S); the rest is start-up.
GIVE_UP_WITHIN_S = 20


def cudabox(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 120
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "cudabox", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=cwd,
        timeout=timeout,
        check=False,
    )
    return result, time.monotonic() - started


def assert_error(result: subprocess.CompletedProcess[str], code: ExitCode, *names: str) -> None:
    assert result.returncode == code, result.stderr
    assert "cudabox: error:" in result.stderr and "\n  fix: " in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for name in names:
        assert name in result.stderr, (name, result.stderr)


def _short_socket(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A unix socket path has a limit of 108 bytes; pytest's folders can be long.
    return tmp_path_factory.mktemp("sock") / "e.sock"


# ---- an engine that accepts and never answers -------------------------------------------------


@pytest.fixture
def silent_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """DOCKER_HOST of a socket that accepts every connection and never says a word."""
    path = _short_socket(tmp_path_factory)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])  # kept open, never read or answered
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"unix://{path}"
    stop.set()
    thread.join(timeout=5)
    for connection in accepted:
        connection.close()
    server.close()


@pytest.mark.parametrize(
    "args",
    [
        ("run", "--cpu", "--", "true"),
        ("select", "--framework", "torch", "--local"),
        ("doctor", "--level", "quick"),
    ],
    ids=["run", "select-local", "doctor-quick"],
)
def test_an_engine_that_never_answers_is_given_up_within_seconds(
    silent_engine: str, tmp_path: Path, args: tuple[str, ...]
) -> None:
    result, seconds = cudabox(*args, env={"DOCKER_HOST": silent_engine}, cwd=tmp_path)
    assert seconds < GIVE_UP_WITHIN_S, (seconds, result.stderr)
    assert_error(result, ExitCode.UNAVAILABLE, f"DOCKER_HOST={silent_engine}", "timed out")


# ---- a DOCKER_HOST or TLS setting the SDK cannot use -------------------------------------------


@pytest.mark.parametrize(
    ("host", "named"),
    [
        ("garbage", "port is required"),
        # The SDK raised a bare ValueError here: a traceback, exit 1.
        ("tcp://engine:notaport", "Port could not be cast"),
        ("tcp://engine:99999", "Port out of range"),
        ("npipe:////./pipe/docker_engine", "Windows named pipe"),
    ],
)
def test_a_docker_host_that_is_no_address_is_named_as_such(
    tmp_path: Path, host: str, named: str
) -> None:
    result, _ = cudabox("run", "--cpu", "--", "true", env={"DOCKER_HOST": host}, cwd=tmp_path)
    assert_error(result, ExitCode.UNAVAILABLE, f"DOCKER_HOST={host} ", named)
    assert "unset it to use the local engine" in result.stderr  # not "start a Docker engine"
    # A dry run needs no engine, so it still prints the command.
    dry, _ = cudabox(
        "run", "--cpu", "--dry-run", "--", "true", env={"DOCKER_HOST": host}, cwd=tmp_path
    )
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("docker run ")


def test_tls_without_its_files_says_which_files(tmp_path: Path) -> None:
    env = {
        "DOCKER_HOST": "tcp://127.0.0.1:2376",
        "DOCKER_TLS_VERIFY": "1",
        "DOCKER_CERT_PATH": str(tmp_path / "no-certs"),
    }
    result, _ = cudabox("select", "--framework", "torch", "--local", env=env, cwd=tmp_path)
    assert_error(result, ExitCode.UNAVAILABLE, "TLS settings are incomplete", "cert.pem")


# ---- an engine that answers, then refuses or breaks off ----------------------------------------

Answer = Callable[[BaseHTTPRequestHandler, str], None]


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def _engine_handler(refuse: Answer) -> type[BaseHTTPRequestHandler]:
    """Answers like Docker 20.10 to ping, version and info; `refuse` answers everything else."""
    version = {
        "Version": "20.10.24",
        "ApiVersion": "1.41",
        "MinAPIVersion": "1.12",
        "Os": "linux",
        "Arch": "amd64",
        "Components": [{"Name": "Engine", "Version": "20.10.24"}],
    }
    info = {"OSType": "linux", "Architecture": "x86_64", "Runtimes": {"runc": {}}}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _json(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _answer(self) -> None:
            path = urlparse(self.path).path
            if path.endswith("/_ping"):
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")
            elif path.endswith("/version"):
                self._json(200, version)
            elif path.endswith("/info"):
                self._json(200, info)
            else:
                refuse(self, path)

        def do_GET(self) -> None:
            self._answer()

        def do_POST(self) -> None:
            self._answer()

        def do_DELETE(self) -> None:
            self._answer()

        def address_string(self) -> str:
            return "unix"  # a unix socket has no client address

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def answering_engine(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[Answer], str]]:
    """Factory: DOCKER_HOST of a fake engine whose other answers `refuse` writes."""
    servers: list[_UnixHTTPServer] = []

    def start(refuse: Answer) -> str:
        path = _short_socket(tmp_path_factory)
        server = _UnixHTTPServer(str(path), _engine_handler(refuse))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"unix://{path}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _refuse_with_500(handler: BaseHTTPRequestHandler, path: str) -> None:
    data = json.dumps({"message": f"layer store is locked ({path})"}).encode()
    handler.send_response(500)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
    # A body it did not read (a build context, a tarball) must not be parsed as the next request.
    handler.close_connection = True


def _break_off(handler: BaseHTTPRequestHandler, path: str) -> None:
    # The answer starts, then the engine dies: a chunked body cut in the middle of a chunk.
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    handler.wfile.write(b'400\r\n{"Id": ')
    handler.wfile.flush()
    handler.close_connection = True
    handler.connection.shutdown(socket.SHUT_RDWR)


@pytest.mark.parametrize(
    "args",
    [("run", "--cpu", "--", "true"), ("select", "--framework", "torch", "--local")],
    ids=["run", "select-local"],
)
def test_an_engine_that_refuses_an_inspect_is_an_engine_error_not_a_build_error(
    answering_engine: Callable[[Answer], str], tmp_path: Path, args: tuple[str, ...]
) -> None:
    host = answering_engine(_refuse_with_500)
    result, _ = cudabox(*args, env={"DOCKER_HOST": host}, cwd=tmp_path)
    assert_error(result, ExitCode.ENGINE, "layer store is locked", "its log")


def test_an_engine_that_breaks_off_an_answer_is_unavailable(
    answering_engine: Callable[[Answer], str], tmp_path: Path
) -> None:
    # requests raises ChunkedEncodingError here, which is not a ConnectionError: it escaped
    # as a traceback.
    host = answering_engine(_break_off)
    result, seconds = cudabox("run", "--cpu", "--", "true", env={"DOCKER_HOST": host}, cwd=tmp_path)
    assert seconds < GIVE_UP_WITHIN_S
    assert_error(result, ExitCode.UNAVAILABLE, "the engine stopped answering")


# ---- what the engine says about limits it may not set -------------------------------------------


def test_runc_refusing_an_rlimit_names_the_limit_and_the_flag() -> None:
    # runc's words when the engine may not raise a limit (dockerd without CAP_SYS_RESOURCE).
    text = (
        "failed to create shim task: OCI runtime create failed: runc create failed: unable to "
        "start container process: error during container init: error setting rlimits for ready "
        "process: error setting rlimit type 8: operation not permitted: unknown"
    )
    refusal = rlimit_refusal(text)
    assert isinstance(refusal, EngineError) and refusal.exit_code == ExitCode.ENGINE
    assert "memlock limit" in refusal.message and "type 8" in refusal.message
    assert refusal.fix is not None and "--ulimit memlock=N:N" in refusal.fix
    assert rlimit_refusal("error setting rlimit type 7: operation not permitted") is not None
    assert rlimit_refusal("could not select device driver") is None


# ---- settings a build reads from the environment: checked before the engine is asked ------------


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("CUDABOX_WHEELHOUSE", "/nonexistent", "wheelhouse /nonexistent is not a folder"),
        ("CUDABOX_CA_CERT", "/nonexistent", "CA bundle /nonexistent does not exist"),
        ("CUDABOX_CA_CERT", "/", "CA bundle / is a folder, not a file"),
        ("CUDABOX_INDEX_URL", "ftp://mirror", "index 'ftp://mirror' is neither"),
        # Read as "no" before: the host's pip settings were silently left out.
        ("CUDABOX_HOST_PIP", "maybe", "CUDABOX_HOST_PIP='maybe' is neither yes nor no"),
    ],
)
def test_a_build_setting_in_the_environment_that_cannot_work_is_a_usage_error(
    tmp_path: Path, variable: str, value: str, named: str
) -> None:
    # No engine answers, so a setting that slipped through would end in exit 4 instead.
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock", variable: value}
    result, _ = cudabox("build", "torch-2.13-cpu", env=env, cwd=tmp_path)
    assert_error(result, ExitCode.USAGE, named, variable)


# ---- every Engine method, in this process: a refusal or a broken answer is a cudabox error -----

# What each public operation of the Engine does with a harmless argument. A new public method
# that is missing here fails test_every_engine_operation_is_audited.
OPERATIONS: dict[str, Callable[[Any, Path], object]] = {
    "image": lambda e, _: e.image("cudabox/x:1"),
    "has_image": lambda e, _: e.has_image("cudabox/x:1"),
    "images_with_label": lambda e, _: e.images_with_label("cudabox.image"),
    "history": lambda e, _: e.history("cudabox/x:1"),
    "remove_image": lambda e, _: e.remove_image("cudabox/x:1"),
    "delete_image": lambda e, _: e.delete_image("cudabox/x:1"),
    "tag": lambda e, _: e.tag("cudabox/x:1", "cudabox/y:1"),
    "image_tarball": lambda e, _: list(e.image_tarball("cudabox/x:1")),
    "pull": lambda e, _: e.pull("127.0.0.1:5000/cudabox/x:1"),
    "push": lambda e, _: e.push("127.0.0.1:5000/cudabox/x:1"),
    "import_tarball": lambda e, tmp: e.import_tarball(_tarball(tmp), "cudabox/x:1"),
    "build": lambda e, tmp: e.build(_context(tmp), "cudabox/x:1"),
    "run": lambda e, _: e.run("cudabox/x:1", ["true"], timeout=10),
    "started": lambda e, _: _start_and_stop(e),
    "containers_with_label": lambda e, _: e.containers_with_label("cudabox.managed"),
    "stored_images": lambda e, _: e.stored_images(),
    "stored_containers": lambda e, _: e.stored_containers("cudabox.managed"),
    "remove_container": lambda e, _: e.remove_container("0123456789ab"),
}
# Not operations on the engine's objects: the connection itself, and the description (the
# fake answers version and info).
NOT_OPERATIONS = {"connect", "close", "description"}
# A 200 answer that breaks off is read only by what reads a body: tag and remove_container
# look at the status alone, and the images a list names are read next.
READ_NO_BODY = {"tag", "remove_container"}


def _tarball(tmp: Path) -> Path:
    path = tmp / "root.tar"
    path.write_bytes(b"\0" * 1024)
    return path


def _context(tmp: Path) -> Path:
    folder = tmp / "context"
    folder.mkdir(exist_ok=True)
    (folder / "Dockerfile").write_text("FROM scratch\n")
    return folder


def _start_and_stop(engine: Any) -> None:
    from cudabox.container import ContainerSpec

    with engine.started(ContainerSpec("cudabox/x:1", ("true",), "cudabox-fault-test")):
        pass


def test_every_engine_operation_is_audited() -> None:
    from cudabox.engine import Engine

    public = {name for name in vars(Engine) if not name.startswith("_")}
    assert public - NOT_OPERATIONS == set(OPERATIONS)


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_an_engine_that_refuses_any_operation_raises_a_cudabox_error(
    answering_engine: Callable[[Answer], str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    operation: str,
) -> None:
    from cudabox.engine import Engine
    from cudabox.errors import BuildError, CudaboxError

    monkeypatch.setenv("DOCKER_HOST", answering_engine(_refuse_with_500))
    with Engine.connect(read_timeout=10) as engine, pytest.raises(CudaboxError) as caught:
        OPERATIONS[operation](engine, tmp_path)
    expected = BuildError if operation == "build" else EngineError
    assert type(caught.value) is expected, caught.value.message
    assert "layer store is locked" in caught.value.message
    assert "\n" not in caught.value.message


@pytest.mark.parametrize("operation", sorted(set(OPERATIONS) - READ_NO_BODY))
def test_an_engine_that_breaks_off_any_answer_is_unavailable(
    answering_engine: Callable[[Answer], str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    operation: str,
) -> None:
    from cudabox.engine import Engine
    from cudabox.errors import CudaboxError

    monkeypatch.setenv("DOCKER_HOST", answering_engine(_break_off))
    with Engine.connect(read_timeout=10) as engine, pytest.raises(CudaboxError) as caught:
        OPERATIONS[operation](engine, tmp_path)
    assert caught.value.exit_code == ExitCode.UNAVAILABLE, caught.value.message
    assert "\n" not in caught.value.message
