"""`cudabox init` as people run it: the real command line over real folders; what it writes
loads as the project, and what it refuses leaves the folder byte for byte as it was."""

from __future__ import annotations

import re
import shutil
import tomllib
import uuid
from pathlib import Path
from typing import Any

import pytest

from cliproc import cudabox
from cudabox.errors import ExitCode
from cudabox.project.building import project_tag
from cudabox.project.declaration import load_project

TORCH_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]

[project]
name = "My_Trainer"
version = "0.1.0"
dependencies = ["torch>=2.10", "torchmetrics>=1.4", "tqdm"]

[dependency-groups]
train = ["rich"]
dev = ["pytest"]

[tool.ruff]
line-length = 100
"""


def write(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode())
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_pyproject_gets_its_table_appended_and_loads(tmp_path: Path) -> None:
    root = write(tmp_path / "trainer", {"pyproject.toml": TORCH_PYPROJECT, "train.py": ""})
    result = cudabox("init", "--project", str(root))
    assert result.returncode == 0, result.stderr
    text = (root / "pyproject.toml").read_text()
    assert text.startswith(TORCH_PYPROJECT)  # every byte of the user's file kept
    assert tomllib.loads(text)["tool"]["ruff"] == {"line-length": 100}
    project = load_project(root)
    assert project.framework == "torch" and project.source == root / "pyproject.toml"
    assert project.settings.command == ("python", "train.py")
    assert project.settings.groups == ("train",)  # dev is tooling: proposed out
    assert project.split().image == ("torch>=2.10",)
    assert f"wrote [tool.cudabox] to {root / 'pyproject.toml'}" in result.stdout
    assert "inferred from the dependencies" in result.stdout
    assert "torchmetrics>=1.4, tqdm, rich" in result.stdout  # what the project lock will hold
    assert "torch-2.13-cpu" in result.stdout  # the candidate images
    assert f"`cudabox lock --project {root}`" in result.stdout
    assert sorted(p.name for p in root.iterdir()) == ["pyproject.toml", "train.py"]  # no temp left


def test_a_requirements_only_folder_gets_a_cudabox_toml(tmp_path: Path) -> None:
    requirements = "tensorflow-cpu==2.21.*\nkeras-tuner  # tuning\n"
    root = write(tmp_path / "tf-job", {"requirements.txt": requirements, "main.py": ""})
    result = cudabox("init", cwd=root)  # the current folder, no --project
    assert result.returncode == 0, result.stderr
    assert (root / "requirements.txt").read_text() == requirements
    own = tomllib.loads((root / "cudabox.toml").read_text())
    assert own["framework"] == "tensorflow" and own["command"] == ["python", "main.py"]
    assert "dependencies" not in own  # they stay in requirements.txt, where the repo keeps them
    project = load_project(root)
    assert project.framework == "tensorflow" and project.name == "tf-job"
    assert project.split().project == ("keras-tuner",)
    assert f"wrote a new {root / 'cudabox.toml'}" in result.stdout
    assert "next: `cudabox lock` " in result.stdout  # here: no --project to repeat


def test_an_ambiguous_folder_asks_for_the_framework_and_writes_nothing(tmp_path: Path) -> None:
    root = write(tmp_path / "p", {"requirements.txt": "numpy\npandas\n"})
    result = cudabox("init", "--project", str(root))
    assert result.returncode == ExitCode.DATA, result.stderr
    assert "--framework torch or --framework tensorflow" in result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(root) == {"requirements.txt": b"numpy\npandas\n"}
    # The fix it names works.
    fixed = cudabox("init", "--project", str(root), "--framework", "torch")
    assert fixed.returncode == 0, fixed.stderr
    assert load_project(root).framework == "torch"
    assert "(as given)" in fixed.stdout


def test_an_existing_table_is_refused_and_kept(tmp_path: Path) -> None:
    text = TORCH_PYPROJECT + '\n[tool.cudabox]\nframework = "torch"\n'
    root = write(tmp_path / "p", {"pyproject.toml": text})
    before = snapshot(root)
    # --framework tensorflow would not load either; the refusal comes first all the same.
    for extra in ((), ("--print",), ("--framework", "tensorflow")):
        result = cudabox("init", "--project", str(root), *extra)
        assert result.returncode == ExitCode.USAGE, (extra, result.stderr)
        assert "already has a [tool.cudabox] table" in result.stderr
        assert "fix: edit it" in result.stderr
    assert snapshot(root) == before


def test_an_existing_cudabox_toml_is_refused(tmp_path: Path) -> None:
    root = write(tmp_path / "p", {"cudabox.toml": 'framework = "torch"\n', "train.py": ""})
    before = snapshot(root)
    result = cudabox("init", "--project", str(root), "--framework", "torch")
    assert result.returncode == ExitCode.USAGE
    assert f"{root / 'cudabox.toml'} already declares the project" in result.stderr
    assert snapshot(root) == before


def test_print_writes_nothing_and_prints_what_init_would_add(tmp_path: Path) -> None:
    root = write(tmp_path / "p", {"pyproject.toml": TORCH_PYPROJECT, "train.py": ""})
    before = snapshot(root)
    result = cudabox("init", "--project", str(root), "--print")
    assert result.returncode == 0, result.stderr
    assert snapshot(root) == before
    assert result.stdout.startswith("[tool.cudabox]\n")
    assert 'framework = "torch"' in result.stdout and "wrote" not in result.stdout
    # What it prints is the table init writes: appended by hand, the same project loads.
    written = write(tmp_path / "q", {"pyproject.toml": TORCH_PYPROJECT, "train.py": ""})
    assert cudabox("init", "--project", str(written)).returncode == 0
    by_hand = root / "pyproject.toml"
    by_hand.write_text(TORCH_PYPROJECT + "\n" + result.stdout)
    assert by_hand.read_text() == (written / "pyproject.toml").read_text()


def test_a_proposal_that_would_not_load_is_refused_before_writing(tmp_path: Path) -> None:
    # torch dependencies with --framework tensorflow: load_project refuses the result, so init
    # writes nothing, and the message names the user's file, not init's scratch copy.
    root = write(tmp_path / "p", {"pyproject.toml": TORCH_PYPROJECT})
    before = snapshot(root)
    result = cudabox("init", "--project", str(root), "--framework", "tensorflow")
    assert result.returncode == ExitCode.DATA, result.stderr
    assert "torch" in result.stderr and "Traceback" not in result.stderr
    assert f"{root / 'pyproject.toml'} (as init would write it)" in result.stderr
    assert "cudabox-init-" not in result.stderr
    assert snapshot(root) == before


def test_files_the_declaration_names_are_read_where_they_are(tmp_path: Path) -> None:
    # Dynamic dependencies in a sub-folder, CRLF line endings, and no [project] name: the
    # check before writing sees the folder's files, and the file keeps its line endings.
    pyproject = (
        '[project]\r\nname = "dyn"\r\nversion = "1"\r\ndynamic = ["dependencies"]\r\n\r\n'
        '[tool.setuptools.dynamic]\r\ndependencies = {file = ["requirements/base.txt"]}\r\n'
    )
    root = write(
        tmp_path / "dyn",
        {"pyproject.toml": pyproject, "requirements/base.txt": "torch\nlightning\n"},
    )
    result = cudabox("init", "--project", str(root), "--framework", "torch")
    assert result.returncode == 0, result.stderr
    raw = (root / "pyproject.toml").read_bytes()
    assert raw.startswith(pyproject.encode()) and b"\n" not in raw.replace(b"\r\n", b"")
    project = load_project(root)
    assert project.dependencies == ("torch", "lightning")
    assert project.split().project == ("lightning",)


@pytest.mark.parametrize("folder", ["missing", "a-file"])
def test_a_folder_that_is_not_there_is_a_usage_error(tmp_path: Path, folder: str) -> None:
    (tmp_path / "a-file").write_text("")
    result = cudabox("init", "--project", str(tmp_path / folder))
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert "does not exist" in result.stderr


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize(
    ("folder", "framework", "own"),
    [
        ("torch-project", "torch", {"torchmetrics", "tqdm"}),
        ("tf-project", "tensorflow", {"keras-tuner", "tensorboard"}),
    ],
)
def test_the_example_projects_declare_and_lock_what_their_readmes_say(
    folder: str, framework: str, own: set[str], tmp_path: Path
) -> None:
    # An edit of an example's dependencies without `cudabox lock` fails here (no network).
    root = EXAMPLES / folder
    project = load_project(root)
    assert project.framework == framework and project.settings.command == ("python", "train.py")
    assert {r.split(">")[0].split("=")[0] for r in project.split().project} == own
    checked = cudabox("lock", "--check", "--project", str(root))
    assert checked.returncode == 0, checked.stderr
    lock = tomllib.loads((root / "cudabox.lock").read_text())
    direct = {p["name"] for image in lock["images"] for p in image["packages"] if p["direct"]}
    assert direct == own
    # The lock holds only what the project adds: never the framework the image provides.
    names = {p["name"] for image in lock["images"] for p in image["packages"]}
    assert not names & {"torch", "tensorflow", "tensorflow-cpu", "keras", "numpy"}
    # What init proposes for the example without its table is what the example declares.
    text = (root / "pyproject.toml").read_text()
    bare = write(
        tmp_path / folder, {"pyproject.toml": text.partition("[tool.cudabox]")[0], "train.py": ""}
    )
    # The TF example names no TensorFlow package (keras-tuner runs on any Keras backend), so
    # init asks for the framework there, as it would in the user's own repository.
    named = () if framework == "torch" else ("--framework", framework)
    assert cudabox("init", "--project", str(bare), *named).returncode == 0
    again = load_project(bare)
    assert again.framework == framework and again.settings.command == project.settings.command


def test_the_torch_example_trains_in_its_project_image(
    tmp_path: Path, docker_engine: Any, catalog_image: Any
) -> None:
    # The README's quick start on the real engine: lock, build and run the example (a copy under
    # a name of its own, so its image is this test's alone), torch from the CPU image.
    catalog_image("torch-2.13-cpu")
    name = f"spiral-test-{uuid.uuid4().hex[:8]}"
    root = tmp_path / name
    shutil.copytree(EXAMPLES / "torch-project", root)
    pyproject = root / "pyproject.toml"
    text = pyproject.read_text().replace('name = "spiral-classifier"', f'name = "{name}"')
    pyproject.write_text(
        text.replace("[tool.cudabox]\n", '[tool.cudabox]\nimages = ["torch-2.13-cpu"]\n')
    )
    tag = project_tag(name, "torch-2.13-cpu")
    env = {"CUDABOX_HOST_PIP": "1"}  # the host's CA bundle and wheelhouse
    try:
        for step in (("lock",), ("build",)):
            done = cudabox(*step, cwd=root, env=env, timeout=900)
            assert done.returncode == 0, done.stdout + done.stderr
        trained = cudabox("run", "--no-build", cwd=root, env=env)
        assert trained.returncode == 0, trained.stdout + trained.stderr
        assert "torch 2.13.0+cpu, torchmetrics 1.9.0" in trained.stdout
        assert re.search(r"held-out accuracy 0\.9[0-9]+", trained.stdout), trained.stdout
        # The script's own verdict is the run's exit code.
        strict = (
            "run",
            "--no-build",
            "--",
            "python",
            "train.py",
            "--epochs",
            "1",
            "--min-accuracy",
            "1.01",
        )
        failed = cudabox(*strict, cwd=root, env=env)
        assert failed.returncode == 1 and "FAILED: accuracy" in failed.stderr
    finally:
        for image in docker_engine.images.list(filters={"label": f"cudabox.stage_of={tag}"}):
            docker_engine.images.remove(image.id, force=True)
        if docker_engine.images.list(name=tag):
            docker_engine.images.remove(tag, force=True)
