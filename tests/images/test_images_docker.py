"""Real builds against the real engine: labels, user, environment, CA absence, hashes, rebuilds.

One torch CPU image is built per module (with a CA bundle that carries a unique marker) and
shared by the tests. Every image these tests make is tagged cudabox-test/* and removed at the
end, with the build-stage layers that hold the marker.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from cudabox.engine import BuildLog, Engine
from cudabox.errors import BuildError
from cudabox.images.base import bootstrap, bootstrap_name
from cudabox.images.build import BuildResult, build_image
from cudabox.images.catalog import ImageSpec, load_catalog
from cudabox.images.context import BuildOptions, assemble_context
from cudabox.images.labels import OCI, spec_from_labels
from cudabox.images.lock import lock_digest
from cudabox.images.record import Layers, compare_layers, read_record, record_entry, write_record
from cudabox.images.render import TEMPLATE, render
from cudabox.images.verify import verify_image
from cudabox.options import PackageSources, read_pip_config

pytestmark = [pytest.mark.docker, pytest.mark.slow]

IMAGES = Path(__file__).resolve().parents[2] / "images"
CATALOG = load_catalog(IMAGES / "catalog.toml")
RUN_ID = uuid.uuid4().hex[:10]
MARKER = f"cudabox-test-ca-marker-{RUN_ID}"
TEST_LABELS = {"cudabox.test": "1"}


def host_ca_bundle() -> Path | None:
    """The CA bundle this host trusts (a TLS-intercepting proxy's CA is in it where there is one)."""
    for candidate in (
        os.environ.get("CUDABOX_CA_CERT"),
        ssl.get_default_verify_paths().cafile,
        ssl.get_default_verify_paths().openssl_cafile,
    ):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def host_wheelhouses() -> tuple[Path, ...]:
    """CUDABOX_WHEELHOUSE, else the find-links folders the host's pip is configured with."""
    if os.environ.get("CUDABOX_WHEELHOUSE"):
        return (Path(os.environ["CUDABOX_WHEELHOUSE"]),)
    return read_pip_config().find_links


@dataclass
class Built:
    spec: ImageSpec
    options: BuildOptions
    result: BuildResult


@pytest.fixture(scope="module")
def engine(docker_engine: Any, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    engine = Engine(docker_engine)
    base = CATALOG.get("torch-2.13-cpu").base_image
    if not engine.has_image(base) and not engine.has_image(bootstrap_name(base)):
        # No registry on CI: make the catalog's base the way `cudabox base` does (kept afterwards).
        bootstrap(engine, base, tmp_path_factory.mktemp("base-record"))
    return engine


def _remove(engine: Engine, *refs: str | None) -> None:
    for ref in refs:
        if ref:
            # A layer still shared with another image's layers is not ours alone to remove.
            with contextlib.suppress(BuildError):
                engine.remove_image(ref, force=True)


@pytest.fixture(scope="module")
def torch_cpu(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    folder = tmp_path_factory.mktemp("ca")
    ca = folder / "ca.pem"
    host = host_ca_bundle()
    # OpenSSL skips text outside PEM blocks, so the marker rides along without changing trust.
    ca.write_text((host.read_text() if host else "") + f"\n{MARKER}\n")
    spec = CATALOG.get("torch-2.13-cpu")
    options = BuildOptions(PackageSources(ca_cert=ca, wheelhouses=host_wheelhouses()), quiet=True)
    result = build_image(
        engine, spec, options, CATALOG.root, tag=f"cudabox-test/torch-cpu:{RUN_ID}"
    )
    yield Built(spec, options, result)
    _remove(engine, result.tag, result.build_stage_id)


def _tarball_contains(engine: Engine, ref: str, needle: bytes) -> bool:
    tail = b""
    for chunk in engine.image_tarball(ref):
        if needle in tail + chunk:
            return True
        tail = chunk[-len(needle) :]
    return False


def test_labels_turn_back_into_the_catalog_facts(engine: Engine, torch_cpu: Built) -> None:
    info = engine.image(torch_cpu.result.tag)
    assert info is not None
    back = spec_from_labels(info.labels, torch_cpu.result.tag)
    spec = torch_cpu.spec
    assert (back.name, back.framework, back.framework_version, back.flavor, back.cuda) == (
        spec.name,
        "torch",
        "2.13.0",
        "cpu",
        None,
    )
    assert info.labels["cudabox.lock_sha256"] == lock_digest(spec.lock)
    assert info.labels["org.opencontainers.image.version"] == "2.13.0"


def test_runs_as_non_root_with_the_nvidia_environment(engine: Engine, torch_cpu: Built) -> None:
    info = engine.image(torch_cpu.result.tag)
    assert info is not None
    assert info.user == "1000:1000"
    assert info.env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert info.env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    assert "NVIDIA_REQUIRE_CUDA" not in info.env, "a CPU image must not ask for a CUDA driver"
    result = engine.run(
        torch_cpu.result.tag,
        ["sh", "-c", "id -u; command -v cudabox; cudabox --version"],
        timeout=60,
        labels=TEST_LABELS,
    )
    assert result.ok, result.output
    uid, launcher, version = result.output.split("\n")[:3]
    assert (uid, launcher) == ("1000", "/opt/venv/bin/cudabox") and version.startswith("cudabox ")


def test_the_ca_is_in_the_build_stage_only(engine: Engine, torch_cpu: Built) -> None:
    tag, stage = torch_cpu.result.tag, torch_cpu.result.build_stage_id
    assert stage is not None
    # Positive controls: the build stage had the CA, and the scan finds a known string in a layer.
    had = engine.run(
        stage, ["grep", "-c", MARKER, "/tmp/build/ca.pem"], timeout=60, labels=TEST_LABELS
    )
    assert had.ok and had.output.strip() == "1", had.output
    info = engine.image(tag)
    assert info is not None  # the base it was built on: the official one, or the bootstrap
    base = info.labels["org.opencontainers.image.base.name"]
    assert _tarball_contains(engine, base, b"VERSION_CODENAME=bookworm")
    # The shipped image: not in any layer (deleted files included), its history or its config.
    assert not _tarball_contains(engine, tag, MARKER.encode())
    history = "\n".join(engine.history(tag))
    config = json.dumps(engine.client.api.inspect_image(tag))
    for text in (history, config):
        assert MARKER not in text and "ca.pem" not in text and "PIP_CERT" not in text


def test_the_image_proves_its_contents(engine: Engine, torch_cpu: Built) -> None:
    result = verify_image(engine, torch_cpu.spec, IMAGES, tag=torch_cpu.result.tag)
    assert result.ok, result.problems
    assert result.reported["framework_version"] == "2.13.0+cpu" and result.reported["cuda"] is None
    assert set(result.units) == {"unit_cpu_op.py", "unit_gpu.py", "unit_import.py"}
    assert result.overhead_pct is not None and result.overhead_pct < 10, result.overhead_pct


def _base_on_engine(docker_engine: Any, labels: dict[str, str]) -> dict[str, Any] | None:
    """The labelled base as the engine has it (inspect, read apart from cudabox), or None."""
    import docker.errors

    name, digest = labels[f"{OCI}base.name"], labels[f"{OCI}base.digest"]
    for ref in (digest, name):
        try:
            attrs: dict[str, Any] = docker_engine.api.inspect_image(ref)
        except docker.errors.ImageNotFound:
            continue
        if digest in (attrs["Id"], *(d.rpartition("@")[2] for d in attrs.get("RepoDigests") or ())):
            return attrs
    return None


def test_verify_records_the_real_layers_and_the_real_base_and_compares_them(
    engine: Engine, catalog_image: Any, docker_engine: Any, tmp_path: Path
) -> None:
    spec = CATALOG.get("torch-2.13-cpu")
    tag = catalog_image(spec.name)
    attrs = docker_engine.api.inspect_image(tag)
    labels = attrs["Config"]["Labels"]
    entry = record_entry(spec, verify_image(engine, spec, IMAGES, tag, run_units=False), None, None)
    assert entry["diff_ids"] == attrs["RootFS"]["Layers"] and len(entry["diff_ids"]) > 2
    assert (entry["base_image"], entry["base_digest"]) == (
        labels[f"{OCI}base.name"],
        labels[f"{OCI}base.digest"],
    )
    base = _base_on_engine(docker_engine, labels)
    if base is not None:  # the image's base is its bottom layers, and is what is sized
        count = len(base["RootFS"]["Layers"])
        assert entry["base_layers"] == count and entry["base_bytes"] == base["Size"]
        assert entry["diff_ids"][:count] == base["RootFS"]["Layers"]
        assert entry["overhead_pct"] is not None and entry["overhead_pct"] < 10
    else:  # the base was made again or removed since the build: no figure rather than a false one
        assert entry["base_layers"] is None and entry["overhead_pct"] is None

    # The command line against a record whose top layer is not this build's (same base, lock).
    record = tmp_path / "verified.json"
    doctored = {**entry, "diff_ids": [*entry["diff_ids"][:-1], "sha256:" + "0" * 64]}
    write_record(record, {spec.name: doctored})
    ran = subprocess.run(
        [sys.executable, "-m", "cudabox", "verify", spec.name, "--record", str(record)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    count = len(entry["diff_ids"])
    assert (
        f"{spec.name}: layers: {count - 1} of {count} match the record; a layer differs from the "
        "record: the build is not reproducible here" in ran.stdout
    ), ran.stdout
    assert "differs (recorded sha256:000000000000)" in ran.stdout
    rewritten = read_record(record)[spec.name]
    assert rewritten["diff_ids"] == entry["diff_ids"]  # the record now holds the real layers
    same = compare_layers(spec.name, Layers.of(entry), Layers.of(rewritten))
    assert same.verdict == "same" and same.matching == count
    # And the JSON answer says the same, layer by layer.
    ran = subprocess.run(
        [sys.executable, "-m", "cudabox", "verify", spec.name, "--record", str(record), "--json"],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    (row,) = json.loads(ran.stdout)
    assert row["layers"]["verdict"] == "same" and row["layers"]["matching"] == count
    assert [layer["built"] for layer in row["layers"]["layers"]] == entry["diff_ids"]


def test_a_wrong_catalog_row_fails_the_proof(engine: Engine, torch_cpu: Built) -> None:
    wrong = replace(torch_cpu.spec, framework_version="2.12.0")
    result = verify_image(engine, wrong, IMAGES, tag=torch_cpu.result.tag, run_units=False)
    assert not result.ok
    assert any("version: image reports 2.13.0" in p for p in result.problems)
    assert any("cudabox.framework_version" in p for p in result.problems)


def test_editing_cudabox_rebuilds_only_the_late_layers(
    engine: Engine, torch_cpu: Built, tmp_path: Path
) -> None:
    import cudabox

    source = tmp_path / "cudabox"
    shutil.copytree(
        Path(cudabox.__file__).parent, source, ignore=shutil.ignore_patterns("__pycache__")
    )
    (source / "_rebuild_probe.py").write_text(f"RUN_ID = {RUN_ID!r}\n")
    tag = f"cudabox-test/torch-cpu:{RUN_ID}-edit"
    started = time.monotonic()
    try:
        again = build_image(
            engine, torch_cpu.spec, torch_cpu.options, CATALOG.root, tag=tag, cudabox_src=source
        )
        seconds = time.monotonic() - started
        venv = [
            layer for layer in torch_cpu.result.layers if layer[0].startswith("COPY --from=build")
        ]
        assert venv and venv == [
            layer for layer in again.layers if layer[0].startswith("COPY --from=build")
        ]
        assert again.build_stage_id == torch_cpu.result.build_stage_id
        # The figure is reported by benchmarks/image_build.py; here only the layer reuse is checked.
        print(f"\nrebuild after a cudabox-only edit: {seconds:.1f} s")
        probe = engine.run(
            tag,
            ["python", "-c", "import cudabox._rebuild_probe as p; print(p.RUN_ID)"],
            timeout=60,
            labels=TEST_LABELS,
        )
        assert probe.ok and probe.output.strip() == RUN_ID, probe.output
    finally:
        _remove(engine, tag)


def _wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel, so the hash tests need no index."""

    def digest(data: bytes) -> str:
        return (
            "sha256="
            + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        )

    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": b"VALUE = 1\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: cudabox-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = (
        "".join(f"{path},{digest(data)},{len(data)}\n" for path, data in files.items())
        + f"{info}/RECORD,,\n"
    )
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name_in_zip, data in [*files.items(), (f"{info}/RECORD", record.encode())]:
            archive.writestr(zipfile.ZipInfo(name_in_zip, date_time=(2020, 1, 1, 0, 0, 0)), data)
    return path


@pytest.mark.parametrize("case", ["good", "tampered", "missing"])
def test_the_build_installs_only_what_the_hashes_allow(
    engine: Engine, tmp_path: Path, case: str
) -> None:
    house = tmp_path / "wheels"
    house.mkdir()
    wheel = _wheel(house, "cudabox_hash_probe", "1.0")
    good = hashlib.sha256(wheel.read_bytes()).hexdigest()
    line = {
        "good": f"--hash=sha256:{good}",
        "tampered": f"--hash=sha256:{good[::-1]}",
        "missing": "",
    }[case]
    lock = tmp_path / "lock.txt"
    # The size line: the render gives the probe no layer of its own (it is tiny).
    lock.write_text(
        (
            f"cudabox-hash-probe==1.0 {line}\n"
            if line
            else f"cudabox-hash-probe==1.0 --hash=sha256:{good}\n"
        )
        + "# cudabox:installed-bytes cudabox-hash-probe==1.0 100\n"
    )
    spec = replace(
        CATALOG.get("torch-2.13-cpu"),
        name="cudabox-hash-probe",
        lock=lock,
        dockerfile=tmp_path / "Dockerfile",
    )
    template = (IMAGES / TEMPLATE).read_text()
    spec.dockerfile.write_text(render(spec, template, lock.read_text(), "lock.txt"))
    context = tmp_path / "context"
    context.mkdir()
    assemble_context(spec, context, BuildOptions(PackageSources(wheelhouses=(house,))), IMAGES)
    if case == "missing":
        # cudabox itself refuses a hashless lock (parse_lock); prove pip does too.
        (context / "build" / "requirements.txt").write_text("cudabox-hash-probe==1.0\n")
    tag = f"cudabox-test/hash-probe:{RUN_ID}-{case}"
    log = BuildLog()
    # An index that does not exist: the wheel can come from the wheelhouse only, offline.
    base = spec.base_image if engine.has_image(spec.base_image) else bootstrap_name(spec.base_image)
    args = {"BASE_IMAGE": base, "PIP_INDEX_URL": "file:///nonexistent-index"}
    try:
        if case == "good":
            engine.build(context, tag, buildargs=args, target="build", log=log)
            assert engine.has_image(tag)
        else:
            with pytest.raises(BuildError) as caught:
                engine.build(context, tag, buildargs=args, target="build", log=log)
            expected = "DO NOT MATCH THE HASHES" if case == "tampered" else "Hashes are required"
            assert expected in caught.value.message, caught.value.message
            assert "requirements.txt" in caught.value.message, "the failing step is named"
    finally:
        _remove(engine, tag, *(layer for _, layer in reversed(log.layers[2:])))


def test_cudabox_base_bootstraps_a_tagged_python_image(engine: Engine, tmp_path: Path) -> None:
    if shutil.which("mmdebstrap") is None:
        pytest.skip("mmdebstrap is not installed (apt-get install mmdebstrap)")
    tag = f"cudabox-test/base-{RUN_ID}:bookworm"
    try:
        result = bootstrap(engine, CATALOG.get("torch-2.13-cpu").base_image, tmp_path, image=tag)
        assert result.python is not None and result.python.startswith("3.11.")
        listing = Path(str(result.package_list)).read_text().splitlines()
        assert any(line.startswith("python3=") for line in listing)
        assert any(line.startswith("ca-certificates=") for line in listing)
        info = engine.image(tag)
        assert info is not None and info.env["PATH"].startswith("/usr/local/sbin")
    finally:
        _remove(engine, tag)
