"""The command line as people use it: exit codes, JSON, and no tracebacks for mistakes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HOSTS = Path(__file__).parent / "fixtures" / "hosts"


def cudabox(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cudabox", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_probe_json_on_this_host() -> None:
    result = cudabox("probe", "--json")
    assert result.returncode in (0, 4), result.stderr
    profile = json.loads(result.stdout)
    assert {"driver_version", "cuda_driver_version", "gpus", "status"} <= profile.keys()
    if profile["status"] == "no-driver":
        assert profile["gpus"] == [] and result.returncode == 0


def test_select_json_for_a_recorded_host() -> None:
    result = cudabox("select", "--framework", "torch", "--host", str(HOSTS / "h100.json"), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["selected"]["name"] == "torch-2.15-cu132"
    assert data["selected"]["cuda"] == "13.2"
    assert all({"name", "fits", "reasons"} <= c.keys() for c in data["candidates"])


def test_select_without_a_fit_exits_3_with_the_fix() -> None:
    result = cudabox(
        "select", "--framework", "torch", "--host", str(HOSTS / "v100-old-driver.json")
    )
    assert result.returncode == 3
    assert "driver 470.182.03 supports CUDA 11.4" in result.stderr
    assert "fix: upgrade the NVIDIA driver to >= 525.60.13" in result.stderr
    json_result = cudabox(
        "select", "--framework", "torch", "--host", str(HOSTS / "v100-old-driver.json"), "--json"
    )
    assert json_result.returncode == 3 and json.loads(json_result.stdout)["selected"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["select", "--framework", "torch", "--host", "/nonexistent.json"], "does not exist"),
        (["select", "--framework", "jax"], "invalid choice"),
        (["select"], "--framework"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2_without_traceback(args: list[str], message: str) -> None:
    result = cudabox(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_host_file_that_is_not_json(tmp_path: Path) -> None:
    bad = tmp_path / "node.json"
    bad.write_text("driver: 580\n")
    result = cudabox("select", "--framework", "torch", "--host", str(bad))
    assert result.returncode == 2
    assert "is not JSON" in result.stderr and "Traceback" not in result.stderr


def test_a_json_file_that_is_not_a_host_profile(tmp_path: Path) -> None:
    # It used to pick an image for a host with no GPU and exit 0 (tests/test_bad_input.py has
    # every other kind of wrong file; this one goes through the real entry point).
    package = tmp_path / "package.json"
    package.write_text('{"name": "my-app", "version": "1.0.0", "dependencies": {}}\n')
    result = cudabox("select", "--framework", "torch", "--host", str(package))
    assert result.returncode == 2 and result.stdout == ""
    assert f"host file {package} is not a host profile: it has no 'schema' key" in result.stderr
    assert "fix: write one with `cudabox probe --json > FILE`" in result.stderr


def test_images_lists_the_catalog() -> None:
    result = cudabox("images", "--json")
    assert result.returncode == 0
    names = {i["name"] for i in json.loads(result.stdout)}
    assert "torch-2.15-cu132" in names and "tf-2.21-cpu" in names


def test_every_command_has_a_handler_that_imports() -> None:
    # Handlers are imported only when their command runs: a typo would surface only then.
    from cudabox.cli import COMMANDS, handler

    for command in COMMANDS:
        assert callable(handler(command.handler)), command.name


def test_the_cli_loads_without_the_docker_sdk() -> None:
    # Inside the images cudabox runs without the Docker SDK; only engine.py may import it.
    code = (
        "import sys; sys.modules['docker'] = None; sys.modules['requests'] = None\n"
        "from cudabox.cli import main; raise SystemExit(main(['images']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
