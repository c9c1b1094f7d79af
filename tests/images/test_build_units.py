"""Build targets, context assembly and the error paths, without an engine."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cudabox.engine import BuildLog, Engine
from cudabox.errors import BuildError, DataError, Unavailable, UsageError
from cudabox.images.base import choose_base
from cudabox.images.catalog import load_catalog
from cudabox.images.context import (
    LABELS_MARKER,
    BuildOptions,
    assemble_context,
    build_args,
    dockerfile_with_labels,
    source_date_epoch,
    wheel_pin,
)
from cudabox.images.targets import resolve_targets as parse_targets
from cudabox.options import PackageSources

IMAGES = Path(__file__).resolve().parents[2] / "images"
CATALOG = load_catalog(IMAGES / "catalog.toml")
TORCH_CPU_WHEEL = "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("torch-2.7-cu126", ["torch-2.7-cu126"]),
        ("torch:cuda", ["torch-2.15-cu132"]),
        ("torch:gpu", ["torch-2.15-cu132"]),
        ("torch:cpu", ["torch-2.13-cpu"]),
        ("tf:cpu", ["tf-2.21-cpu"]),
        ("tensorflow:cuda", ["tf-2.21-cu125"]),
    ],
)
def test_targets(target: str, expected: list[str]) -> None:
    assert [s.name for s in parse_targets(CATALOG, [target])] == expected


def test_all_and_duplicates() -> None:
    assert [s.name for s in parse_targets(CATALOG, ["all"])] == [s.name for s in CATALOG.images]
    assert [s.name for s in parse_targets(CATALOG, ["torch:cpu", "torch-2.13-cpu"])] == [
        "torch-2.13-cpu"
    ]


@pytest.mark.parametrize("target", ["jax:cuda", "torch:rocm", "torch-9.9-cu999", ""])
def test_bad_targets_are_usage_errors(target: str) -> None:
    with pytest.raises(UsageError):
        parse_targets(CATALOG, [target] if target else [])


def test_wheel_pin() -> None:
    assert wheel_pin(TORCH_CPU_WHEEL) == ("torch", "2.13.0+cpu")
    assert wheel_pin("Typing_Extensions-4.16.0-py3-none-any.whl") == ("typing-extensions", "4.16.0")
    assert wheel_pin("notes.txt") is None
    # As pip reads wheel names (packaging): a build tag is not the version, a bad name no pin.
    assert wheel_pin("triton-3.6.0-1-cp311-cp311-manylinux_2_28_x86_64.whl") == ("triton", "3.6.0")
    assert wheel_pin("torch-cp311-cp311-linux_x86_64.whl") is None
    assert wheel_pin("torch-not.a.version-cp311-cp311-linux_x86_64.whl") is None


def _fake_wheelhouse(tmp_path: Path) -> Path:
    house = tmp_path / "wheelhouse"
    house.mkdir()
    for name in (
        TORCH_CPU_WHEEL,
        "torch-2.12.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
        "other-1.0-py3-none-any.whl",
    ):
        (house / name).write_bytes(b"not really a wheel")
    return house


def test_context_holds_exactly_what_the_build_needs(tmp_path: Path) -> None:
    spec = CATALOG.get("torch-2.13-cpu")
    ca = tmp_path / "proxy-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----\n")
    context = tmp_path / "context"
    context.mkdir()
    options = BuildOptions(PackageSources(ca_cert=ca, wheelhouses=(_fake_wheelhouse(tmp_path),)))
    assemble_context(spec, context, options, CATALOG.root)
    files = sorted(p.relative_to(context).as_posix() for p in context.rglob("*") if p.is_file())
    catalog = "root/opt/cudabox/images/catalog.toml"
    assert "build/ca.pem" in files and "build/requirements.txt" in files and catalog in files
    assert "build/stage.py" in files
    # Only the wheel the lock pins, not the rest of the wheelhouse.
    assert [f for f in files if f.startswith("build/wheels/")] == [
        f"build/wheels/{TORCH_CPU_WHEEL}"
    ]
    assert "root/opt/cudabox/cudabox/cli.py" in files and not any("__pycache__" in f for f in files)
    assert not any(f.startswith(("images/", "tests/", ".git")) for f in files), "not the whole repo"
    # What reaches the image has fixed times and modes, not the checkout's.
    shipped = [p for p in (context / "root").rglob("*")]
    assert {p.stat().st_mtime for p in shipped} == {float(source_date_epoch())}
    assert {oct(p.stat().st_mode & 0o777) for p in shipped if p.is_file()} == {"0o644"}
    dockerfile = (context / "Dockerfile").read_text()
    assert LABELS_MARKER not in dockerfile.splitlines()
    assert '"cudabox.image"="torch-2.13-cpu"' in dockerfile
    assert (context / "build/requirements.txt").read_bytes() == spec.lock.read_bytes()


def test_context_without_ca_has_none(tmp_path: Path) -> None:
    assemble_context(CATALOG.get("tf-2.21-cpu"), tmp_path, BuildOptions(), CATALOG.root)
    assert not (tmp_path / "build" / "ca.pem").exists()
    assert list((tmp_path / "build" / "wheels").iterdir()) == []


def test_a_wheelhouse_lacking_the_local_wheel_is_named(tmp_path: Path) -> None:
    house = tmp_path / "empty"
    house.mkdir()
    with pytest.raises(UsageError, match=r"torch==2\.13\.0\+cpu"):
        assemble_context(
            CATALOG.get("torch-2.13-cpu"),
            tmp_path,
            BuildOptions(PackageSources(wheelhouses=(house,))),
            CATALOG.root,
        )


def test_a_missing_lock_says_how_to_make_it(tmp_path: Path) -> None:
    spec = replace(CATALOG.get("tf-2.21-cpu"), lock=tmp_path / "nope.txt")
    with pytest.raises(DataError) as caught:
        assemble_context(spec, tmp_path, BuildOptions(), CATALOG.root)
    assert caught.value.fix is not None and "cudabox lock" in caught.value.fix


def test_labels_are_quoted_for_the_dockerfile() -> None:
    spec = CATALOG.get("tf-2.21-cpu")
    text = dockerfile_with_labels(
        f"FROM x\n{LABELS_MARKER}\n", {"a.b": 'say "$HOME" \\ here'}, spec
    )
    assert text == 'FROM x\nLABEL "a.b"="say \\"\\$HOME\\" \\\\ here"\n'
    with pytest.raises(DataError, match="cudabox:labels"):
        dockerfile_with_labels("FROM x\n", {}, spec)


def test_build_args() -> None:
    cpu = CATALOG.get("torch-2.13-cpu")
    base = cpu.base_image
    assert build_args(cpu, BuildOptions(), base)["PIP_EXTRA_INDEX_URL"] == cpu.index_url
    local = BuildOptions(PackageSources(wheelhouses=(Path("/w"),)))
    assert build_args(cpu, local, base)["PIP_EXTRA_INDEX_URL"] == ""
    # NVIDIA_REQUIRE_CUDA is in the rendered Dockerfile of CUDA images only.
    assert "NVIDIA_REQUIRE_CUDA" not in cpu.dockerfile.read_text()
    cuda = CATALOG.get("torch-2.15-cu132")
    mirror = BuildOptions(PackageSources(index_url="https://mirror.example/simple"))
    args = build_args(cuda, mirror, "cudabox/debian-python:bookworm")
    assert 'NVIDIA_REQUIRE_CUDA="cuda>=13.0"' in cuda.dockerfile.read_text()
    assert args["PIP_INDEX_URL"] == "https://mirror.example/simple"
    assert args["BASE_IMAGE"] == "cudabox/debian-python:bookworm"
    assert args["SOURCE_DATE_EPOCH"].isdigit()


def test_no_engine_is_unavailable_and_names_docker_host(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    with pytest.raises(Unavailable) as caught:
        Engine.connect(read_timeout=5)
    assert "DOCKER_HOST=unix://" in caught.value.message
    assert caught.value.fix is not None and "dockerd" in caught.value.fix


class _NoBaseEngine:
    """An engine that lacks the base image and cannot pull it (no registry)."""

    def image(self, ref: str) -> None:
        return None

    def pull(self, ref: str, progress: Any = None) -> None:
        raise BuildError(f"could not pull {ref}: no such host")


def test_a_missing_base_says_pull_it_or_cudabox_base() -> None:
    spec = CATALOG.get("torch-2.13-cpu")
    with pytest.raises(Unavailable) as caught:
        choose_base(_NoBaseEngine(), spec)  # type: ignore[arg-type]
    assert spec.base_image in caught.value.message
    assert (
        caught.value.fix is not None
        and "docker pull" in caught.value.fix
        and "cudabox base" in caught.value.fix
    )


def test_a_failed_step_names_the_step_and_its_output() -> None:
    log = BuildLog()
    events: list[dict[str, Any]] = [
        {"stream": "Step 4/9 : RUN pip install -r /tmp/build/requirements.txt\n"},
        {"stream": " ---> Running in abc\n"},
        {"stream": "ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE.\n"},
        {
            "errorDetail": {
                "message": "The command '/bin/sh -c pip install' returned a non-zero code: 1"
            }
        },
    ]
    with pytest.raises(BuildError) as caught:
        for event in events:
            Engine._on_build_event(event, log, None)
    assert "4/9 (RUN pip install" in caught.value.message
    assert "DO NOT MATCH THE HASHES" in caught.value.message


def test_build_log_keeps_each_steps_resulting_layer() -> None:
    log = BuildLog()
    for line in [
        "Step 1/3 : FROM base AS build",
        " ---> 111111111111",
        "Step 2/3 : RUN x",
        " ---> Running in 999999999999",
        " ---> 222222222222",
        "Step 3/3 : FROM base AS runtime",
        " ---> Using cache",
        " ---> 333333333333",
    ]:
        Engine._on_build_event({"stream": line + "\n"}, log, None)
    assert log.layers == [
        ("FROM base AS build", "111111111111"),
        ("RUN x", "222222222222"),
        ("FROM base AS runtime", "333333333333"),
    ]
    assert log.cached == 1
