"""Every engine operation that fails, against the real engine: a cudabox error, never the SDK's.

The failures are real ones: a registry name that does not resolve (what a fresh machine without
a registry meets on its first `cudabox base`), a registry port nobody listens on, a base image
that is not there, images and tags that do not exist, an image a container still uses. Most of
them fail when the request is sent (the SDK raises before a stream is read), which is where the
pull in issue 15 escaped as a traceback.
"""

from __future__ import annotations

import io
import socket
import tarfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import TEST_LABEL
from cudabox.container import ContainerSpec
from cudabox.engine import Engine
from cudabox.errors import (
    BuildError,
    CudaboxError,
    EngineError,
    ExitCode,
    Unavailable,
    UsageError,
)

pytestmark = [pytest.mark.docker]

# RFC 2606: a .invalid name never resolves, here or on CI.
UNRESOLVABLE = "registry.cudabox.invalid"


@pytest.fixture(scope="module")
def engine(docker_engine: Any) -> Iterator[Engine]:
    with Engine.connect() as connected:
        yield connected


@pytest.fixture(scope="module")
def tiny_image(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A one-file image of this module's own (a few hundred bytes), removed at the end."""
    folder = tmp_path_factory.mktemp("tiny")
    tarball = folder / "root.tar"
    with tarfile.open(tarball, "w") as tar:
        data = b"cudabox request faults\n"
        info = tarfile.TarInfo("marker")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    ref = f"cudabox-test/request-faults:{uuid.uuid4().hex[:8]}"
    engine.import_tarball(tarball, ref)
    yield ref
    engine.remove_image(ref, force=True)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def failure(call: Callable[[], object]) -> CudaboxError:
    """The cudabox error `call` raises; any other exception fails the test as itself."""
    with pytest.raises(CudaboxError) as caught:
        result = call()
        if isinstance(result, Iterator):
            list(result)  # a stream fails when it is read
    error = caught.value
    assert "\n" not in error.message, error.message  # one line
    assert error.fix, error.message
    return error


def assert_error(
    error: CudaboxError, kind: type[CudaboxError], code: ExitCode, *words: str
) -> None:
    assert type(error) is kind, (type(error).__name__, error.message)
    assert error.exit_code == code
    for word in words:
        assert word in error.message, (word, error.message)


# ---- registries: pull and push ---------------------------------------------------------------


def test_a_pull_from_a_registry_that_does_not_resolve_is_unavailable(engine: Engine) -> None:
    # Issue 15: this was docker.errors.APIError (500, raised when the request was sent).
    error = failure(lambda: engine.pull(f"{UNRESOLVABLE}/python:3.11-slim-bookworm"))
    assert_error(error, Unavailable, ExitCode.UNAVAILABLE, f"{UNRESOLVABLE} does not resolve")
    assert error.message.startswith(f"could not pull {UNRESOLVABLE}/python:3.11-slim-bookworm: ")
    assert error.fix is not None and "cudabox base" in error.fix


def test_a_pull_from_a_closed_port_is_unavailable(engine: Engine) -> None:
    port = closed_port()
    error = failure(lambda: engine.pull(f"127.0.0.1:{port}/cudabox/nothing:1"))
    assert_error(
        error, Unavailable, ExitCode.UNAVAILABLE, f"127.0.0.1:{port} refused the connection"
    )


def test_a_push_to_a_closed_port_is_unavailable(engine: Engine, tiny_image: str) -> None:
    target = f"127.0.0.1:{closed_port()}/cudabox-test/request-faults:push"
    engine.tag(tiny_image, target)
    try:
        error = failure(lambda: engine.push(target))
    finally:
        engine.remove_image(target)
    assert_error(error, Unavailable, ExitCode.UNAVAILABLE, "refused the connection")


def test_a_push_of_a_tag_the_engine_lacks_is_an_engine_error(engine: Engine) -> None:
    error = failure(lambda: engine.push(f"127.0.0.1:{closed_port()}/cudabox-test/absent:1"))
    assert_error(error, EngineError, ExitCode.ENGINE, "does not exist locally")


def test_a_pull_of_an_invalid_reference_is_a_usage_error(engine: Engine) -> None:
    error = failure(lambda: engine.pull("Upper/Case:1"))
    assert_error(error, UsageError, ExitCode.USAGE, "not a valid image reference")


# ---- builds and imports --------------------------------------------------------------------------


def test_a_build_whose_base_is_missing_says_to_make_the_base(
    engine: Engine, tmp_path: Path
) -> None:
    (tmp_path / "Dockerfile").write_text(f"FROM {UNRESOLVABLE}/base:1\nRUN true\n")
    tag = f"cudabox-test/request-faults:{uuid.uuid4().hex[:8]}"
    with pytest.raises(BuildError) as caught:
        engine.build(tmp_path, tag)
    error = caught.value
    assert error.exit_code == ExitCode.BUILD
    assert f"FROM {UNRESOLVABLE}/base:1" in error.message and "no such host" in error.message
    assert "\n" not in error.message  # no step ran, so no step output follows
    assert error.fix is not None and "cudabox base" in error.fix
    assert engine.image(tag) is None


def test_a_build_of_a_missing_folder_is_a_build_error(engine: Engine, tmp_path: Path) -> None:
    # The SDK raised a bare TypeError ("You must specify a directory to build in path").
    with pytest.raises(BuildError) as caught:
        engine.build(tmp_path / "gone", "cudabox-test/request-faults:gone")
    assert "is not a folder" in caught.value.message


def test_an_import_of_a_file_that_is_no_tarball_is_an_engine_error(
    engine: Engine, tmp_path: Path
) -> None:
    garbage = tmp_path / "root.tar"
    garbage.write_bytes(b"not a tar archive\n" * 64)
    tag = f"cudabox-test/request-faults:{uuid.uuid4().hex[:8]}"
    error = failure(lambda: engine.import_tarball(garbage, tag))
    assert_error(error, EngineError, ExitCode.ENGINE, f"could not import {garbage}", "tar")
    assert engine.image(tag) is None


def test_an_import_of_a_missing_tarball_is_a_build_error(engine: Engine, tmp_path: Path) -> None:
    # The SDK opened the file itself: a bare FileNotFoundError.
    with pytest.raises(BuildError) as caught:
        engine.import_tarball(tmp_path / "absent.tar", "cudabox-test/request-faults:absent")
    assert "is not a file" in caught.value.message


# ---- images: inspect, history, tag, save, remove ---------------------------------------------


MISSING = "cudabox-test/never-built:1"


@pytest.mark.parametrize(
    ("operation", "call", "words"),
    [
        ("history", lambda e: e.history(MISSING), ("could not read the history", "No such image")),
        ("tag", lambda e: e.tag(MISSING, "cudabox-test/x:1"), ("could not tag", "No such image")),
        ("save", lambda e: e.image_tarball(MISSING), ("could not save", MISSING.split(":")[0])),
        ("delete", lambda e: e.delete_image(MISSING), ("could not remove image", "No such image")),
    ],
)
def test_an_operation_on_a_missing_image_is_an_engine_error(
    engine: Engine, operation: str, call: Callable[[Engine], object], words: tuple[str, ...]
) -> None:
    error = failure(lambda: call(engine))
    assert_error(error, EngineError, ExitCode.ENGINE, *words)


def test_inspect_and_remove_of_a_missing_image_answer_none_and_false(engine: Engine) -> None:
    assert engine.image(MISSING) is None
    assert engine.has_image(MISSING) is False
    assert engine.remove_image(MISSING) is False


def test_an_invalid_reference_is_a_usage_error(engine: Engine) -> None:
    error = failure(lambda: engine.image("Upper/Case"))
    assert_error(error, UsageError, ExitCode.USAGE, "not a valid image reference")


def test_removing_an_image_a_container_uses_is_an_engine_error(
    engine: Engine, docker_engine: Any, tiny_image: str
) -> None:
    ref = f"cudabox-test/request-faults:in-use-{uuid.uuid4().hex[:8]}"
    engine.tag(tiny_image, ref)
    image_id = engine.image(ref)
    assert image_id is not None
    container = docker_engine.containers.create(ref, command=["/marker"], labels={TEST_LABEL: "1"})
    try:
        error = failure(lambda: engine.delete_image(image_id.id))
        assert_error(
            error, EngineError, ExitCode.ENGINE, "could not remove image", "must be forced"
        )
    finally:
        container.remove(force=True)
        engine.remove_image(ref)


# ---- containers: run and started -------------------------------------------------------------


def test_a_run_of_a_missing_image_is_unavailable(engine: Engine) -> None:
    error = failure(lambda: engine.run(MISSING, ["true"], timeout=30))
    assert_error(error, Unavailable, ExitCode.UNAVAILABLE, f"image {MISSING} is not in the engine")


def test_a_run_the_engine_cannot_start_is_an_engine_error_and_leaves_no_container(
    engine: Engine, base_image: str
) -> None:
    label = {TEST_LABEL: uuid.uuid4().hex}
    error = failure(
        lambda: engine.run(base_image, ["true"], timeout=60, user="nosuchuser", labels=label)
    )
    assert_error(error, EngineError, ExitCode.ENGINE, "could not run true", "nosuchuser")
    assert engine.containers_with_label(f"{TEST_LABEL}={label[TEST_LABEL]}") == []


def test_starting_a_container_of_a_missing_image_is_unavailable(engine: Engine) -> None:
    spec = ContainerSpec(
        image=MISSING,
        command=("true",),
        name=f"cudabox-test-{uuid.uuid4().hex[:8]}",
        labels={TEST_LABEL: "1"},
    )

    def start() -> None:
        with engine.started(spec):
            pass

    error = failure(start)
    assert_error(error, Unavailable, ExitCode.UNAVAILABLE, f"image {MISSING} is not in the engine")
