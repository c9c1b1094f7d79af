"""Layers for real: reproducible across cold builds, one per heavy distribution, shared by digest.

- The CPU torch image built twice with --no-cache: every layer's diff_id is equal, `cudabox diff`
  says "identical", and the rebuilt image still holds what the catalog says.
- Two small images that lock the same distribution at the same version share its layer: the same
  diff_id on the engine and one blob in a real registry.
Every image made here is tagged cudabox-test/* and removed, with its build stage.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import io
import json
import shutil
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests

from cudabox.engine import Engine
from cudabox.errors import CudaboxError
from cudabox.images.base import bootstrap
from cudabox.images.build import BuildResult, build_image, remove_built
from cudabox.images.catalog import ImageSpec, load_catalog
from cudabox.images.context import BuildOptions
from cudabox.images.lock import parse_lock
from cudabox.images.render import TEMPLATE, installed_sizes, plan_layers, render
from cudabox.images.verify import find_base, require_verified, verify_image
from cudabox.options import PackageSources
from registry_server import DOCKER_MANIFEST, RegistryServer, registry

pytestmark = [pytest.mark.docker, pytest.mark.slow]
__all__ = ["registry"]  # the real docker-registry fixture

IMAGES = Path(__file__).resolve().parents[2] / "images"
CATALOG = load_catalog(IMAGES / "catalog.toml")
RUN_ID = uuid.uuid4().hex[:10]


@pytest.fixture(scope="module")
def engine(docker_engine: Any) -> Engine:
    """The real engine, with the base image there (pulled, or bootstrapped as `cudabox base` does)."""
    subprocess.run(
        [sys.executable, "-m", "cudabox", "base"], check=True, timeout=900, capture_output=True
    )
    return Engine(docker_engine)


def _cleanup(engine: Engine, built: list[BuildResult]) -> None:
    for result in built:
        with contextlib.suppress(CudaboxError):
            remove_built(engine, result.tag, result)


def _cudabox(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cudabox", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_two_cold_builds_give_identical_layers(engine: Engine) -> None:
    spec = CATALOG.get("torch-2.13-cpu")
    options = BuildOptions(PackageSources.resolve(host_pip=True), nocache=True, quiet=True)
    built: list[BuildResult] = []
    try:
        for n in ("a", "b"):
            tag = f"cudabox-test/repro-{n}:{RUN_ID}"
            built.append(build_image(engine, spec, options, CATALOG.root, tag=tag))
        first, second = (engine.image(b.tag) for b in built)
        assert first is not None and second is not None
        # The base the build used, as its labels say (the official image or the bootstrap).
        base = find_base(engine, first)[1]
        assert base is not None, first.labels
        lock_text = spec.lock.read_text()
        packages = plan_layers(spec.framework, parse_lock(lock_text), installed_sizes(lock_text))
        # base, then the user and the venv's links, a layer per package layer, cudabox last
        assert len(first.diff_ids) == len(base.diff_ids) + 2 + len(packages) + 1
        assert [p.name for p in packages] == ["numpy", "torch", "deps"]
        assert first.diff_ids == second.diff_ids, "a --no-cache rebuild changed a layer"
        compared = _cudabox("diff", built[0].tag, built[1].tag, "--json")
        assert compared.returncode == 0, compared.stderr
        assert json.loads(compared.stdout)["verdict"] == "identical"
        # The rebuilt image is a working one, not only an equal one.
        require_verified(verify_image(engine, spec, CATALOG.root, tag=built[1].tag))
    finally:
        _cleanup(engine, built)


# ---- two small images that lock the same distribution ------------------------------------------


def _wheel(folder: Path, name: str, version: str, payload: bytes) -> Path:
    """A minimal pure-Python wheel, made here (no index needed)."""
    dist = f"{name}-{version}"
    files = {
        f"{name}/__init__.py": b"VALUE = " + repr(hashlib.sha256(payload).hexdigest()).encode(),
        f"{name}/data.bin": payload,
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: cudabox-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        writer.writerow([path, f"sha256={digest}", len(data)])
    writer.writerow([f"{dist}.dist-info/RECORD", "", ""])
    files[f"{dist}.dist-info/RECORD"] = record.getvalue().encode()
    wheel = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            info = zipfile.ZipInfo(path, date_time=(2026, 1, 1, 0, 0, 0))
            archive.writestr(info, data)
    return wheel


def _lock(wheels: list[Path], shared_bytes: int) -> str:
    lines = []
    sizes = []
    for wheel in wheels:
        name, version = wheel.name.split("-")[:2]
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        lines.append(f"{name}=={version} \\\n    --hash=sha256:{digest}")
        # The shared distribution is declared heavy, so the plan gives it a layer of its own.
        size = shared_bytes if name == "fakeshared" else 1000
        sizes.append(f"# cudabox:installed-bytes {name}=={version} {size}")
    return "\n".join([*lines, *sizes]) + "\n"


@pytest.fixture
def two_images(tmp_path: Path) -> Iterator[tuple[Path, list[ImageSpec], PackageSources]]:
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    shutil.copyfile(IMAGES / TEMPLATE, images_dir / TEMPLATE)
    shutil.copyfile(IMAGES / "catalog.toml", images_dir / "catalog.toml")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    shared = _wheel(wheels, "fakeshared", "1.0", b"s" * 200_000)
    model = CATALOG.get("torch-2.13-cpu")
    specs = []
    for name, own in (("synthetic-x", b"x" * 1000), ("synthetic-y", b"y" * 1000)):
        folder = images_dir / "torch" / name
        folder.mkdir(parents=True)
        extra = _wheel(wheels, f"fake{name[-1]}", "1.0", own)
        (folder / "requirements.in").write_text("fakeshared\n")
        (folder / "lock.txt").write_text(_lock([shared, extra], 40_000_000))
        spec = replace(
            model,
            name=name,
            framework_version="0.0.1",
            dockerfile=folder / "Dockerfile",
            requirements=folder / "requirements.in",
            lock=folder / "lock.txt",
            index_url=None,
            tag=f"cudabox-test/{name}:{RUN_ID}",
        )
        template = (images_dir / TEMPLATE).read_text()
        spec.dockerfile.write_text(render(spec, template, spec.lock.read_text(), "lock.txt"))
        specs.append(spec)
    # pip looks only here: the index named is a folder without a simple index, so no network.
    sources = PackageSources(index_url=f"file://{wheels}", wheelhouses=(wheels,))
    yield images_dir, specs, sources


def test_images_that_lock_the_same_distribution_share_its_layer(
    engine: Engine,
    two_images: tuple[Path, list[ImageSpec], PackageSources],
    registry: RegistryServer,
) -> None:
    images_dir, specs, sources = two_images
    built: list[BuildResult] = []
    pushed: list[str] = []
    try:
        for spec in specs:
            built.append(build_image(engine, spec, BuildOptions(sources, quiet=True), images_dir))
        x, y = (engine.image(spec.tag) for spec in specs)
        assert x is not None and y is not None
        # base..., system, venv, fakeshared, deps, cudabox
        shared_at = len(x.diff_ids) - 3
        assert x.diff_ids[: shared_at + 1] == y.diff_ids[: shared_at + 1]
        assert x.diff_ids[shared_at + 1] != y.diff_ids[shared_at + 1], "the deps layers differ"
        layer = x.diff_ids[shared_at]
        # In a registry: both manifests name one blob for that layer, stored once.
        blobs = []
        for spec in specs:
            ref = f"{registry.host}/cudabox-test/{spec.name}:{RUN_ID}"
            engine.tag(spec.tag, ref)
            pushed.append(ref)
            engine.push(ref)
            answer = requests.get(
                registry.url(f"/v2/cudabox-test/{spec.name}/manifests/{RUN_ID}"),
                headers={"Accept": DOCKER_MANIFEST},
                timeout=30,
            )
            answer.raise_for_status()
            manifest = answer.json()
            info = engine.image(spec.tag)
            assert info is not None
            index = list(info.diff_ids).index(layer)
            blobs.append(manifest["layers"][index]["digest"])
        assert blobs[0] == blobs[1], "the shared layer became two blobs"
    finally:
        for ref in pushed:
            with contextlib.suppress(CudaboxError):
                engine.remove_image(ref)
        _cleanup(engine, built)


def test_two_bootstraps_of_the_base_give_the_same_layer(engine: Engine, tmp_path: Path) -> None:
    """mmdebstrap with SOURCE_DATE_EPOCH: the same package versions, the same layer."""
    official = CATALOG.get("torch-2.13-cpu").base_image
    made = []
    try:
        for n in ("a", "b"):
            image = f"cudabox-test/base-{n}:{RUN_ID}"
            result = bootstrap(engine, official, tmp_path, image=image)
            made.append(image)
            assert result.python and result.python.startswith("3.11")
        first, second = (engine.image(image) for image in made)
        assert first is not None and second is not None
        assert len(first.diff_ids) == 1
        assert first.diff_ids == second.diff_ids, "two bootstraps of the same packages differ"
        assert first.labels["cudabox.stands_in_for"] == official
        assert "org.opencontainers.image.base.name" not in first.labels
    finally:
        for image in made:
            with contextlib.suppress(CudaboxError):
                engine.remove_image(image, force=True)
