"""Building a project image on a catalog image: layers, labels, the proof, the code (issue 16).

The Docker tests build on the real cudabox/torch-2.13-cpu image with real pins and hashes from
PyPI (uv pip compile against the image's own lock), and remove everything they make.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cliproc import cudabox
from cudabox.errors import BuildError, Unavailable
from cudabox.images.build import BUILD_READ_TIMEOUT_S
from cudabox.images.catalog import Extension, ImageSpec, load_catalog
from cudabox.images.context import BuildOptions, final_stage_layers
from cudabox.images.labels import (
    LAYERS,
    OCI,
    ProjectFacts,
    labels_for,
    project_labels,
    provenance_labels,
    source_url,
    spec_from_labels,
)
from cudabox.images.lock import lock_digest, parse_lock
from cudabox.images.stage import main as stage_main
from cudabox.options import PackageSources
from cudabox.project import proof
from cudabox.project.building import (
    CODE_TARGET,
    ProjectBuild,
    code_files,
    ensure_project_image,
    project_tag,
    proof_error,
    render_dockerfile,
)
from cudabox.project.declaration import load_project
from cudabox.project.lockfile import (
    LOCK_FILE,
    ImageLock,
    LockedPackage,
    ProjectLock,
    lock_inputs,
    write_lock,
)
from cudabox.versions import Arch

IMAGE = "torch-2.13-cpu"
UV = Path(sys.executable).with_name("uv")
REPO = Path(__file__).resolve().parents[2]


# ---- a real lock, made once per session from PyPI ----------------------------------------------


def _spec() -> ImageSpec:
    return load_catalog().get(IMAGE)


def locked_packages(requirements: list[str], work: Path) -> tuple[LockedPackage, ...]:
    """The project's distributions as `cudabox lock` records them: pins and hashes from uv
    (constrained by the image's lock), installed bytes and top-level modules from an install."""
    spec = _spec()
    work.mkdir(parents=True, exist_ok=True)
    (work / "req.in").write_text("\n".join(requirements) + "\n")
    platform = ["--python-version", "3.11", "--python-platform", "x86_64-manylinux_2_28"]
    compiled = subprocess.run(
        [str(UV), "pip", "compile", "--quiet", "--no-header", "--generate-hashes", *platform,
         "--find-links", "/opt/wheels", "-c", str(spec.lock), str(work / "req.in")],
        capture_output=True, text=True, check=True, timeout=300,
    ).stdout  # fmt: skip
    base = parse_lock(spec.lock.read_text())
    pins = {n: p for n, p in parse_lock(compiled).items() if n not in base}
    (work / "req.txt").write_text(
        "".join(f"{p.name}=={p.version} " + " ".join(f"--hash={h}" for h in p.hashes) + "\n"
                for p in pins.values())
    )  # fmt: skip
    target = work / "target"
    subprocess.run(
        [str(UV), "pip", "install", "--quiet", "--no-deps", "--target", str(target), *platform,
         "-r", str(work / "req.txt")],
        check=True, timeout=600,
    )  # fmt: skip
    packages = []
    for info in sorted(target.glob("*.dist-info")):
        meta = dict(
            line.split(": ", 1)
            for line in (info / "METADATA").read_text().splitlines()
            if ": " in line and line.split(": ", 1)[0] in ("Name", "Version")
        )
        name = meta["Name"].lower().replace("_", "-").replace(".", "-")
        rows = [line.split(",")[0] for line in (info / "RECORD").read_text().splitlines() if line]
        size = sum((target / r).stat().st_size for r in rows if (target / r).is_file())
        tops = {r.split("/")[0].removesuffix(".py") for r in rows if not r.startswith("..")}
        modules = sorted(
            t for t in tops
            if not t.endswith((".dist-info", ".data", ".libs")) and t not in ("bin", "__pycache__")
            and "." not in t and t.isidentifier()
        )  # fmt: skip
        pin = pins[name]
        packages.append(
            LockedPackage(name, meta["Version"], pin.hashes, size, tuple(modules), direct=True)
        )
    return tuple(sorted(packages, key=lambda p: p.name))


def make_project(
    root: Path, deps: list[str], packages: tuple[LockedPackage, ...], settings: str = ""
) -> ProjectLock:
    root.mkdir(parents=True, exist_ok=True)
    listed = ", ".join(json.dumps(d) for d in ["torch", *deps])
    (root / "pyproject.toml").write_text(
        f'[project]\nname = "Demo_Trainer"\nversion = "0.1.0"\ndependencies = [{listed}]\n\n'
        f'[tool.cudabox]\nframework = "torch"\nimages = ["{IMAGE}"]\n'
        'env = { DEMO_GREETING = "hello $USER" }\n' + settings
    )
    (root / "train.py").write_text("print('training')\n")
    (root / "data").mkdir(exist_ok=True)
    (root / "data" / "run.sh").write_text("#!/bin/sh\necho run\n")
    (root / "data" / "run.sh").chmod(0o700)
    (root / ".git").mkdir(exist_ok=True)
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / "__pycache__").mkdir(exist_ok=True)
    (root / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"\0")
    (root / ".venv").mkdir(exist_ok=True)
    (root / ".venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    project = load_project(root)
    spec = _spec()
    lock = ProjectLock(
        project=project.name,
        inputs_sha256=lock_inputs(project, [spec]),
        images=(ImageLock(IMAGE, lock_digest(spec.lock), packages),),
    )
    write_lock(root / LOCK_FILE, lock)
    return lock


@pytest.fixture(scope="session")
def pure_packages(tmp_path_factory: pytest.TempPathFactory) -> tuple[LockedPackage, ...]:
    return locked_packages(["tqdm", "rich"], tmp_path_factory.mktemp("lock-pure"))


@pytest.fixture
def engine(catalog_image: Any) -> Iterator[Any]:
    from cudabox.engine import Engine

    catalog_image(IMAGE)
    with Engine.connect(read_timeout=BUILD_READ_TIMEOUT_S) as connected:
        yield connected


def _options() -> BuildOptions:
    return BuildOptions(PackageSources.resolve(host_pip=True), quiet=True)


def _cleanup(engine: Any, *builds: ProjectBuild | None) -> None:
    for build in builds:
        if build is None:
            continue
        for ref in (build.tag, build.image_id, build.stage_id):
            if ref:
                try:
                    engine.remove_image(ref, force=True)
                except Exception as exc:  # already gone with the tag
                    print(f"cleanup {ref}: {exc}")


# In the image: the bytes of the named distributions' files, and of their compiled bytecode.
_SIZES = """
import importlib.metadata, importlib.util, sys
files = bytecode = 0
for name in sys.argv[1:]:
    for entry in importlib.metadata.distribution(name).files or ():
        path = entry.locate()
        if path.is_file() and path.parent.name != "__pycache__":
            files += path.stat().st_size
            if path.suffix == ".py":
                cache = importlib.util.cache_from_source(str(path))
                bytecode += __import__("os").path.getsize(cache)
print(files, bytecode)
"""


def _all_images(docker_engine: Any) -> set[str]:
    return {image.id for image in docker_engine.images.list(all=True)}


# ---- against the real engine -------------------------------------------------------------------


@pytest.mark.slow
def test_a_pure_python_project_keeps_the_images_torch_and_adds_only_its_packages(
    engine: Any, docker_engine: Any, pure_packages: tuple[LockedPackage, ...], tmp_path: Path
) -> None:
    lock = make_project(tmp_path / "proj", ["tqdm", "rich"], pure_packages)
    project = load_project(tmp_path / "proj")
    spec = _spec()
    base = engine.image(spec.tag)
    first = second = None
    try:
        first = ensure_project_image(engine, project, lock, spec, _options(), nocache=True)
        assert first.built and not first.baked
        assert first.tag == "cudabox-project/demo-trainer:torch-2.13-cpu"
        assert first.base_id == base.id
        installed = lock.get(IMAGE).installed_bytes  # type: ignore[union-attr]
        # The lock's installed bytes are the wheels' files; the image also holds their bytecode
        # (compiled at build time, as pip would at install, so that a run never compiles).
        measured = engine.run(
            first.tag, ["python", "-c", _SIZES, *(p.name for p in pure_packages)], timeout=120
        )
        assert measured.ok, measured.output
        files, bytecode = map(int, measured.output.split())
        print(
            f"\nbuild {first.seconds} s; added {first.added_bytes} bytes; the lock's installed "
            f"bytes {installed} ({first.added_bytes / installed:.3f}x); in the image: files "
            f"{files}, bytecode {bytecode} ({first.added_bytes / (files + bytecode):.3f}x of both)"
        )
        # pip adds INSTALLER and REQUESTED and rewrites RECORD: a few hundred bytes.
        assert abs(files - installed) <= 0.01 * installed
        assert 0 < first.added_bytes <= 1.25 * (installed + bytecode)

        info = engine.image(first.tag)
        # The catalog image's layers, then one layer for the 5 small distributions; no code.
        assert info.diff_ids[: len(base.diff_ids)] == base.diff_ids
        assert len(info.diff_ids) == len(base.diff_ids) + 1
        assert info.labels[LAYERS] == str(len(info.diff_ids))
        assert "cudabox.image=torch-2.13-cpu" in engine.history(first.tag)[0]  # prune: cudabox's
        assert info.labels["cudabox.project"] == "Demo_Trainer"
        assert info.labels["cudabox.project.image"] == IMAGE
        assert info.labels["cudabox.project.lock_sha256"] == lock.sha256
        assert info.labels["cudabox.base_digest"] == base.id
        assert info.labels["cudabox.project.baked"] == "false"
        assert json.loads(info.labels["cudabox.extensions"]) == []
        assert info.labels["cudabox.lock_sha256"] == lock_digest(spec.lock)  # the catalog's, kept
        assert info.labels[f"{OCI}title"] == "cudabox-project/demo-trainer"
        assert info.labels[f"{OCI}source"] == ""  # no URL known: the catalog's is not kept
        assert info.env["DEMO_GREETING"] == "hello $USER"
        assert info.user == base.user
        read = spec_from_labels(info.labels, first.tag)
        assert (read.project, read.base_name, read.name, read.extensions) == (
            "Demo_Trainer", IMAGE, IMAGE, ()
        )  # fmt: skip
        assert read.framework_version == "2.13.0" and read.flavor == "cpu"

        ran = engine.run(
            first.tag,
            [
                "python",
                "-c",
                "import torch, tqdm, rich; print(torch.__version__, tqdm.__version__)",
            ],
            timeout=120,
        )
        assert ran.ok, ran.output
        tqdm = next(p for p in pure_packages if p.name == "tqdm")
        assert ran.output.split() == ["2.13.0+cpu", tqdm.version]

        # Up to date: nothing is built again.
        again = ensure_project_image(engine, project, lock, spec, _options())
        assert not again.built and again.image_id == first.image_id

        # A second --no-cache build: the same layers, byte for byte.
        started = time.monotonic()
        second = ensure_project_image(engine, project, lock, spec, _options(), nocache=True)
        print(f"second --no-cache build {time.monotonic() - started:.1f} s")
        assert second.built
        assert engine.image(second.tag).diff_ids == info.diff_ids
        assert engine.image(first.image_id) is None  # the replaced image went
    finally:
        _cleanup(engine, second, first)
    assert engine.image(project_tag("Demo_Trainer", IMAGE)) is None
    del docker_engine


@pytest.mark.slow
def test_torchvision_from_pypi_fails_the_proof_with_exit_5_and_leaves_nothing(
    engine: Any, docker_engine: Any, tmp_path: Path
) -> None:
    packages = locked_packages(["torchvision==0.28.0"], tmp_path / "lock")
    assert {p.name for p in packages} == {"torchvision", "pillow"}
    lock = make_project(tmp_path / "proj", ["torchvision==0.28.0"], packages)
    project = load_project(tmp_path / "proj")
    before = _all_images(docker_engine)
    with pytest.raises(BuildError) as failed:
        ensure_project_image(engine, project, lock, _spec(), _options())
    error = failed.value
    print(f"\n{error.render()}")
    assert error.exit_code == 5
    assert "`import torchvision` (torchvision==0.28.0)" in error.message
    assert "RuntimeError: operator torchvision::nms does not exist" in error.message
    assert "torch 2.13.0+cpu" in (error.fix or "") and "index-urls" in (error.fix or "")
    assert _all_images(docker_engine) - before == set()
    assert engine.image(project_tag(project.name, IMAGE)) is None
    assert not docker_engine.containers.list(all=True, filters={"ancestor": _spec().tag})


@pytest.mark.slow
def test_build_bake_puts_the_code_at_workspace(
    engine: Any, pure_packages: tuple[LockedPackage, ...], tmp_path: Path
) -> None:
    root = tmp_path / "proj"
    make_project(root, ["tqdm", "rich"], pure_packages)
    env = {**os.environ, "CUDABOX_HOST_PIP": "1"}
    env.pop("GITHUB_REPOSITORY", None)
    done = subprocess.run(
        [sys.executable, "-m", "cudabox", "build", "--project", str(root), "--bake", "--json"],
        capture_output=True, text=True, env=env, timeout=1200, check=False,
    )  # fmt: skip
    rows = json.loads(done.stdout) if done.returncode == 0 else []
    built = ProjectBuild(**rows[0]) if rows else None
    try:
        assert done.returncode == 0, done.stderr[-3000:]
        assert built is not None and built.baked and built.tag.endswith(f":{IMAGE}")
        info = engine.image(built.tag)
        assert info.labels["cudabox.project.baked"] == "true"
        assert info.labels[LAYERS] == str(len(info.diff_ids))
        ran = engine.run(
            built.tag,
            ["sh", "-c", f"cd {CODE_TARGET} && find . -not -name . | sort && stat -c '%u %a %Y %n' "
             "train.py data/run.sh && python train.py"],
            timeout=120,
        )  # fmt: skip
        assert ran.ok, ran.output
        lines = ran.output.split("\n")
        assert "./train.py" in lines and "./cudabox.lock" in lines and "./data/run.sh" in lines
        assert not any(n in ran.output for n in (".git", "__pycache__", ".venv"))
        assert "1000 644 1767225600 train.py" in lines
        assert "1000 755 1767225600 data/run.sh" in lines
        assert lines[-2] == "training"
    finally:
        _cleanup(engine, built)


@pytest.mark.slow
def test_system_packages_come_from_apt_and_the_image_keeps_its_user(
    engine: Any, tmp_path: Path
) -> None:
    # No Python distributions at all: no build stage, one apt layer.
    lock = make_project(tmp_path / "proj", [], (), 'system-packages = ["jq"]\n')
    project = load_project(tmp_path / "proj")
    built = None
    try:
        built = ensure_project_image(engine, project, lock, _spec(), _options())
        info = engine.image(built.tag)
        base = engine.image(_spec().tag)
        assert info.user == base.user == "1000:1000"
        assert len(info.diff_ids) == len(base.diff_ids) + 1 == int(info.labels[LAYERS])
        ran = engine.run(built.tag, ["sh", "-c", "id -u; echo '{\"a\": 1}' | jq .a"], timeout=60)
        assert ran.ok and ran.output.split() == ["1000", "1"], ran.output
    finally:
        _cleanup(engine, built)


def test_a_missing_catalog_image_is_unavailable_when_not_built(tmp_path: Path) -> None:
    class NoImages:
        def image(self, ref: str) -> None:
            return None

    lock = make_project(tmp_path / "proj", [], ())
    with pytest.raises(Unavailable) as failed:
        ensure_project_image(
            NoImages(),  # type: ignore[arg-type]
            load_project(tmp_path / "proj"),
            lock,
            _spec(),
            _options(),
            build_missing=False,
        )
    assert failed.value.exit_code == 4 and "cudabox build" in (failed.value.fix or "")


# ---- the Dockerfile, the code, the labels (no engine) --------------------------------------------


def _info(diff_ids: int = 7) -> Any:
    from cudabox.container import ImageInfo

    return ImageInfo(
        id="sha256:" + "ab" * 32, tags=(), size=1, labels={}, env={}, user="1000:1000",
        created="", diff_ids=tuple(f"sha256:{n:064x}" for n in range(diff_ids)),
    )  # fmt: skip


def _pkg(name: str, size: int, **extra: Any) -> LockedPackage:
    return LockedPackage(
        name, "1.0", ("sha256:" + "0" * 64,), size, (name.replace("-", "_"),), **extra
    )


def test_the_dockerfile_builds_from_the_image_id_with_a_layer_per_heavy_distribution(
    tmp_path: Path,
) -> None:
    make_project(tmp_path / "proj", [], ())
    project = load_project(tmp_path / "proj")
    image_lock = ImageLock(IMAGE, "x", (_pkg("big-one", 40_000_000), _pkg("a", 10), _pkg("b", 20)))
    text = render_dockerfile(project, image_lock, _spec(), _info(), "t:x", False, 1767225600)
    froms = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert froms == [f"FROM {'sha256:' + 'ab' * 32} AS build", f"FROM {'sha256:' + 'ab' * 32}"]
    assert "--layer big-one" in text and "--only-new /tmp/build/before.txt" in text
    copies = [line for line in text.splitlines() if line.startswith("COPY --from=build")]
    assert copies == ["COPY --from=build /stage/big-one/ /", "COPY --from=build /stage/_rest/ /"]
    assert final_stage_layers(text) == 2
    assert 'DEMO_GREETING="hello \\$USER"' in text  # no variable expansion
    baked = render_dockerfile(project, image_lock, _spec(), _info(), "t:x", True, 1767225600)
    assert final_stage_layers(baked) == 3 and "COPY --chown=1000:1000 code/ /workspace/" in baked
    # Nothing to install: no build stage at all.
    empty = render_dockerfile(project, ImageLock(IMAGE, "x", ()), _spec(), _info(), "t", False, 0)
    assert empty.count("FROM ") == 1 and final_stage_layers(empty) == 0


def test_the_catalog_dockerfile_adds_six_layers() -> None:
    # base + system, venv, numpy, torch, deps, cudabox: what `cudabox.layers` counts.
    assert final_stage_layers(_spec().dockerfile.read_text()) == 6


def test_baked_code_leaves_out_git_virtualenvs_and_bytecode(tmp_path: Path) -> None:
    make_project(tmp_path / "proj", [], ())
    files = [p.as_posix() for p in code_files(tmp_path / "proj")]
    assert files == ["cudabox.lock", "data/run.sh", "pyproject.toml", "train.py"]


def test_project_labels_read_back_as_a_project_spec() -> None:
    spec = _spec()
    ext = Extension(
        "torch-scatter",
        "2.1.2",
        (Arch.parse("8.0"), Arch.parse("9.0")),
        (Arch.parse("9.0"),),
        (12,),
    )
    facts = ProjectFacts(
        project="demo", image=IMAGE, tag="cudabox-project/demo:" + IMAGE, lock_sha256="l" * 64,
        base_id="sha256:" + "ab" * 32, base_ref=spec.tag, base_repo_digest="", extensions=(ext,),
        baked=True, code_sha256="c" * 64, recipe_sha256="r" * 64, layers=9, description="d",
    )  # fmt: skip
    labels = {
        **labels_for(spec, "k" * 64),
        **project_labels(facts, None, env={}, now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC)),
    }
    assert json.loads(labels["cudabox.extensions"]) == [
        {"name": "torch-scatter", "version": "2.1.2", "sass": ["8.0", "9.0"], "ptx": ["9.0"],
         "cuda_runtime": [12]}
    ]  # fmt: skip
    assert labels[LAYERS] == "9" and labels["cudabox.project.baked"] == "true"
    assert labels[f"{OCI}base.digest"] == "sha256:" + "ab" * 32
    assert labels[f"{OCI}base.name"] == spec.tag
    read = spec_from_labels(labels, facts.tag)
    assert read.project == "demo" and read.base_name == IMAGE and read.extensions == (ext,)
    assert read.name == IMAGE and read.framework == "torch"
    catalog_only = spec_from_labels(labels_for(spec, "k" * 64))
    assert catalog_only.project is None and catalog_only.extensions == ()


@pytest.mark.parametrize(
    ("remote", "url"),
    [
        ("git@github.com:owner/repo.git", "https://github.com/owner/repo"),
        ("https://user:token@github.com/owner/repo.git", "https://github.com/owner/repo"),
        (
            "ssh://git@gitlab.example.com:2222/group/repo.git",
            "https://gitlab.example.com/group/repo",
        ),
        ("https://github.com/owner/repo", "https://github.com/owner/repo"),
        ("/srv/git/repo.git", None),
        ("file:///srv/git/repo.git", None),
        ("../repo", None),
        ("C:/src/repo", None),
    ],
)
def test_the_recorded_source_is_a_url_never_a_local_path(remote: str, url: str | None) -> None:
    assert source_url(remote) == url


def test_provenance_leaves_the_source_out_for_a_local_remote(tmp_path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    git("remote", "add", "origin", str(tmp_path / "elsewhere.git"))
    labels = provenance_labels("b", "sha256:x", tmp_path, env={})
    assert f"{OCI}source" not in labels
    git("remote", "set-url", "origin", "git@github.com:owner/trainer.git")
    labels = provenance_labels("b", "sha256:x", tmp_path, env={})
    assert labels[f"{OCI}source"] == "https://github.com/owner/trainer"
    ci = {"GITHUB_SERVER_URL": "https://github.example.com", "GITHUB_REPOSITORY": "o/r"}
    assert (
        provenance_labels("b", "x", tmp_path, env=ci)[f"{OCI}source"]
        == "https://github.example.com/o/r"
    )


# ---- stage.py's project mode and the proof's checks (no engine) -------------------------------


def test_stage_moves_only_the_distributions_installed_after_the_listing(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([str(UV), "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    install = [
        str(UV),
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--python",
        str(venv / "bin" / "python"),
    ]
    subprocess.run([*install, "mdurl==0.1.2"], check=True, timeout=300)  # "the image's"
    before = tmp_path / "before.txt"
    before.write_text("\n".join(sorted(p.name for p in site.iterdir())) + "\n")
    subprocess.run([*install, "tqdm==4.70.1"], check=True, timeout=300)  # the project's
    kept = sorted(p.name for p in site.iterdir() if p.name.endswith(".dist-info"))
    stage = tmp_path / "stage"
    code = stage_main(
        ["--venv", str(venv), "--stage", str(stage), "--epoch", "1767225600",
         "--only-new", str(before), "--rest", "_rest"]
    )  # fmt: skip
    assert code == 0
    moved = sorted(p.name for p in (stage / "_rest").rglob("*.dist-info"))
    assert moved == ["tqdm-4.70.1.dist-info"]
    assert (stage / "_rest" / site.relative_to("/") / "tqdm" / "__init__.py").is_file()
    assert (stage / "_rest" / venv.relative_to("/") / "bin" / "tqdm").is_file()
    # The image's own distribution stays whole; of the new one only empty folders are left.
    assert (site / "mdurl" / "__init__.py").is_file() and "mdurl-0.1.2.dist-info" in kept
    assert not [p for p in (site / "tqdm").rglob("*") if not p.is_dir()]
    assert not (stage / "venv").exists() and not (stage / "system").exists()
    times = {p.lstat().st_mtime for p in stage.rglob("*")}
    assert times == {1767225600}
    assert list((stage / "_rest").rglob("*.pyc"))  # compiled


def test_stage_refuses_both_modes_at_once(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        stage_main(["--venv", str(tmp_path), "--stage", str(tmp_path), "--epoch", "0",
                    "--rest", "r", "--user", "u:1", "--only-new", str(tmp_path)])  # fmt: skip


def test_the_proof_names_a_replaced_or_removed_base_distribution() -> None:
    problems = proof.check_distributions(
        {"torch": "2.13.0+cpu", "numpy": "2.4.6", "sympy": "1.14.0"},
        {"tqdm": "4.70.1"},
        {"torch": ["2.13.0+cpu", "2.14.0"], "sympy": ["1.14.0"], "tqdm": ["4.70.1"]},
    )
    assert [p["text"] for p in problems] == [
        "numpy==2.4.6 was removed",
        "torch==2.13.0+cpu was replaced: the image now has 2.13.0+cpu, 2.14.0",
    ]
    failed = proof.check_imports({"no_such_module_here": "ghost", "json": "std"})
    assert failed == [
        {"check": "import", "name": "ghost", "module": "no_such_module_here",
         "text": "ModuleNotFoundError: No module named 'no_such_module_here'"}
    ]  # fmt: skip


def test_a_failed_import_of_a_companion_names_the_images_framework() -> None:
    lock = ImageLock(IMAGE, "x", (_pkg("torchvision", 10), _pkg("opencv-python", 10)))
    base = {"torch": "2.13.0+cpu"}
    error = proof_error(
        [{"check": "import", "name": "torchvision", "module": "torchvision",
          "text": "RuntimeError: operator torchvision::nms does not exist"}],
        lock, _spec(), base,
    )  # fmt: skip
    assert error.exit_code == 5
    assert "torchvision==1.0 was built for another torch than the image's torch 2.13.0+cpu" in (
        error.fix or ""
    )
    other = proof_error(
        [{"check": "import", "name": "opencv-python", "module": "cv2",
          "text": "ImportError: libGL.so.1: cannot open shared object file"}],
        lock, _spec(), base,
    )  # fmt: skip
    assert "system-packages" in (other.fix or "") and "libGL.so.1" in other.message


@pytest.mark.slow
def test_a_catalog_build_labels_the_layers_it_has_and_its_package_layers_are_unchanged(
    engine: Any,
) -> None:
    from cudabox.images.build import build_image, remove_built

    spec = _spec()
    catalog = engine.image(spec.tag)
    tag = "cudabox-test/layers-label:latest"
    built = None
    try:
        built = build_image(engine, spec, _options(), load_catalog().root, tag=tag)
        info = engine.image(tag)
        assert info.labels[LAYERS] == str(len(info.diff_ids)) == "7"
        # stage.py's project mode left the catalog's layers as they were, byte for byte: base,
        # system, venv, numpy, torch, deps (only cudabox's own source layer may differ).
        assert info.diff_ids[:6] == catalog.diff_ids[:6]
    finally:
        remove_built(engine, tag, built)


def test_build_refuses_a_target_with_project_options_and_an_image_the_lock_lacks(
    tmp_path: Path,
) -> None:
    root = tmp_path / "proj"
    make_project(root, [], ())
    mixed = cudabox("build", IMAGE, "--image", IMAGE)
    assert mixed.returncode == 2 and "drop the TARGET" in mixed.stderr
    other = cudabox("build", "--project", str(root), "--image", "torch-2.15-cu132")
    assert other.returncode == 2, other.stderr
    assert "not one of the project's locked images" in other.stderr


def test_build_in_a_project_folder_refuses_a_stale_lock(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    make_project(root, [], ())
    text = (root / "pyproject.toml").read_text()
    (root / "pyproject.toml").write_text(text.replace('["torch"]', '["torch", "tqdm"]'))
    stale = cudabox("build", "--json", cwd=root)
    assert stale.returncode == 6, stale.stderr
    assert "cudabox.lock is stale" in stale.stderr and "cudabox lock" in stale.stderr
