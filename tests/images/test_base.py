"""`cudabox base`: which Debian suite a base name means, and what gets recorded where."""

from __future__ import annotations

from pathlib import Path

import pytest

from cudabox.errors import (
    CudaboxError,
    DiskFull,
    EngineError,
    Interrupted,
    NotFound,
    Unavailable,
    UsageError,
)
from cudabox.images import base
from cudabox.images.base import (
    PACKAGES,
    BaseOptions,
    BaseResult,
    bootstrap_name,
    ensure_base,
    mmdebstrap_command,
    package_list_path,
    suite_of,
)


@pytest.mark.parametrize(
    ("image", "suite"),
    [
        ("python:3.11-slim-bookworm", "bookworm"),
        ("python:3.12-trixie", "trixie"),
        ("x/base:bookworm", "bookworm"),
    ],
)
def test_suite_of(image: str, suite: str) -> None:
    assert suite_of(image) == suite


@pytest.mark.parametrize("image", ["python:3.11-slim", "ubuntu:24.04", "python:3.11-notbookworm"])
def test_a_base_without_a_debian_suite_is_a_usage_error(image: str) -> None:
    with pytest.raises(UsageError) as caught:
        suite_of(image)
    assert caught.value.fix is not None and "pull" in caught.value.fix


def test_the_command_matches_what_the_dockerfiles_need(tmp_path: Path) -> None:
    command = mmdebstrap_command("bookworm", tmp_path / "base.tar")
    assert command[:2] == ["mmdebstrap", "--variant=apt"]
    assert {"python3", "python3-venv", "ca-certificates"} <= set(PACKAGES)
    assert command[-2:] == ["bookworm", str(tmp_path / "base.tar")]


def test_package_list_path_is_a_plain_file_name(tmp_path: Path) -> None:
    assert (
        package_list_path(tmp_path, "python:3.11-slim-bookworm")
        == tmp_path / "base" / "python-3.11-slim-bookworm.txt"
    )


# ---- the fallback: any pull failure but a usage error bootstraps, and says why in one line ------

OFFICIAL = "python:3.11-slim-bookworm"
# The engine's own words on a machine without a registry (cudabox.engine translates them).
NO_REGISTRY = Unavailable(
    f"could not pull {OFFICIAL}: registry-1.docker.io does not resolve (Get "
    '"https://registry-1.docker.io/v2/": dial tcp: lookup registry-1.docker.io on '
    "10.255.255.53:53: no such host)",
    "check the registry's name",
)


class PullFails:
    """An engine with no base image, whose pull raises `error` (None: the pull leaves nothing)."""

    def __init__(self, error: CudaboxError | None) -> None:
        self.error = error
        self.pulled: list[str] = []

    def image(self, ref: str) -> None:
        return None

    def has_image(self, ref: str) -> bool:
        return False

    def pull(self, ref: str, progress: object = None) -> None:
        self.pulled.append(ref)
        if self.error is not None:
            raise self.error


@pytest.fixture
def bootstraps(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The bootstraps ensure_base asked for (mmdebstrap is not run)."""
    made: list[str] = []

    def fake(
        engine: object, official: str, images_dir: Path, image: str | None = None
    ) -> BaseResult:
        made.append(official)
        return BaseResult(image=bootstrap_name(official), action="built")

    monkeypatch.setattr(base, "bootstrap", fake)
    return made


OPTIONS = BaseOptions(force=False, no_pull=False, json=False)


@pytest.mark.parametrize(
    ("error", "why"),
    [
        (NO_REGISTRY, "registry-1.docker.io does not resolve"),
        (
            EngineError(f"could not pull {OFFICIAL}: toomanyrequests: rate limit", "wait"),
            "toomanyrequests: rate limit",
        ),
        (
            NotFound(f"the registry has no {OFFICIAL} (manifest unknown)", "check"),
            "the registry has no",
        ),
        (
            Unavailable(f"could not pull {OFFICIAL}: the engine stopped answering (reset)"),
            "the engine stopped answering",
        ),
        (
            DiskFull(f"could not pull {OFFICIAL}: the engine ran out of disk space (no space)"),
            "the engine ran out of disk space",
        ),
        (None, "the pull left no image"),
    ],
    ids=["no-registry", "refused", "not-in-registry", "engine-gone", "disk-full", "no-image"],
)
def test_any_pull_failure_bootstraps_and_says_why_in_one_line(
    bootstraps: list[str],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    error: CudaboxError | None,
    why: str,
) -> None:
    engine = PullFails(error)
    result = ensure_base(engine, OFFICIAL, tmp_path, OPTIONS)  # type: ignore[arg-type]
    assert engine.pulled == [OFFICIAL]
    assert bootstraps == [OFFICIAL] and result.image == "cudabox/debian-python:bookworm"
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("base: ")]
    assert line.startswith(f"base: {OFFICIAL} could not be pulled ({why}")
    assert line.endswith("); bootstrapping cudabox/debian-python:bookworm from Debian packages")


def test_the_issue_15_line_names_the_host_that_does_not_resolve(
    bootstraps: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ensure_base(PullFails(NO_REGISTRY), OFFICIAL, tmp_path, OPTIONS)  # type: ignore[arg-type]
    assert (
        "base: python:3.11-slim-bookworm could not be pulled (registry-1.docker.io does not "
        "resolve); bootstrapping cudabox/debian-python:bookworm from Debian packages"
    ) in capsys.readouterr().err.splitlines()


@pytest.mark.parametrize(
    "error",
    [UsageError("could not pull X: not a valid image reference", "fix it"), Interrupted("stopped")],
    ids=["usage", "interrupted"],
)
def test_a_usage_error_or_an_interruption_is_no_reason_to_bootstrap(
    bootstraps: list[str], tmp_path: Path, error: CudaboxError
) -> None:
    with pytest.raises(type(error)):
        ensure_base(PullFails(error), OFFICIAL, tmp_path, OPTIONS)  # type: ignore[arg-type]
    assert bootstraps == []


def test_no_pull_bootstraps_without_asking_the_registry(
    bootstraps: list[str], tmp_path: Path
) -> None:
    engine = PullFails(NO_REGISTRY)
    ensure_base(engine, OFFICIAL, tmp_path, BaseOptions(force=False, no_pull=True, json=False))  # type: ignore[arg-type]
    assert engine.pulled == [] and bootstraps == [OFFICIAL]


@pytest.mark.docker
def test_the_real_engine_without_a_registry_falls_back(
    docker_engine: object, capsys: pytest.CaptureFixture[str]
) -> None:
    # The request-time 500 of issue 15, from the real engine: the pull says no, no traceback.
    from cudabox.engine import Engine

    image = "registry.cudabox.invalid/python:3.11-slim-bookworm"
    with Engine.connect() as engine:
        assert base._pulled(engine, image) is False
    assert (
        f"base: {image} could not be pulled (registry.cudabox.invalid does not resolve); "
        "bootstrapping cudabox/debian-python:bookworm from Debian packages"
    ) in capsys.readouterr().err.splitlines()
