"""A project's declaration: pyproject.toml, cudabox.toml and requirements.txt folders, read
strictly; framework packages split off; `cudabox init`'s table rendered and inserted."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from cudabox.errors import DataError, ExitCode, UsageError
from cudabox.images.catalog import load_catalog
from cudabox.project.declaration import (
    KNOWN_KEYS,
    Project,
    candidate_images,
    init_files,
    insert_init,
    load_project,
    render_init,
)


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


FULL = """\
[build-system]
requires = ["setuptools>=68"]

[project]
name = "My_Trainer"
version = "0.3.0"
dependencies = [
  "torch>=2.10",
  "transformers>=4.40",
  "datasets",
  "nvidia-nccl-cu12 ; sys_platform == 'linux'",
]

[project.optional-dependencies]
wandb = ["wandb>=0.17"]

[dependency-groups]
data = ["pyarrow>=15"]
train = ["accelerate", {include-group = "data"}]
dev = ["pytest", {include-group = "train"}]

[tool.cudabox]
framework = "torch"
images = ["torch:cuda", "torch-2.13-cpu"]
groups = ["train"]
extras = ["wandb"]
env = { HF_HOME = "/workspace/.cache/hf", TOKENIZERS_PARALLELISM = "false" }
bake = true
command = ["python", "train.py", "--config", "base.yaml"]
system-packages = ["libgl1", "ffmpeg=7:5.1.6-0+deb12u1"]
index-urls = ["https://download.pytorch.org/whl/cu128"]

[tool.ruff]
line-length = 100
"""


def test_a_full_pyproject_declaration(tmp_path: Path) -> None:
    project = load_project(write(tmp_path, {"pyproject.toml": FULL}))
    assert project.name == "My_Trainer" and project.image_name == "my-trainer"
    assert project.source == tmp_path / "pyproject.toml"
    assert project.dependencies[:2] == ("torch>=2.10", "transformers>=4.40")
    assert dict(project.dependency_groups) == {
        "data": ("pyarrow>=15",),
        "train": ("accelerate", "pyarrow>=15"),
        "dev": ("pytest", "accelerate", "pyarrow>=15"),
    }
    s = project.settings
    assert (s.framework, s.framework_inferred, s.bake) == ("torch", False, True)
    assert s.images == ("torch:cuda", "torch-2.13-cpu")
    assert s.groups == ("train",) and s.extras == ("wandb",)
    assert s.env_dict == {"HF_HOME": "/workspace/.cache/hf", "TOKENIZERS_PARALLELISM": "false"}
    assert s.command == ("python", "train.py", "--config", "base.yaml")
    assert s.system_packages == ("libgl1", "ffmpeg=7:5.1.6-0+deb12u1")
    assert s.index_urls == ("https://download.pytorch.org/whl/cu128",)
    # The image gets dependencies, the chosen extra and the chosen group (not dev).
    assert project.requirements() == (
        "torch>=2.10",
        "transformers>=4.40",
        "datasets",
        "nvidia-nccl-cu12 ; sys_platform == 'linux'",
        "wandb>=0.17",
        "accelerate",
        "pyarrow>=15",
    )
    split = project.split()
    assert split.image == ("torch>=2.10", "nvidia-nccl-cu12 ; sys_platform == 'linux'")
    assert "torch>=2.10" not in split.project and "wandb>=0.17" in split.project


def test_defaults_and_an_inferred_framework(tmp_path: Path) -> None:
    text = '[project]\nname = "p"\ndependencies = ["torchvision", "numpy"]\n'
    project = load_project(write(tmp_path, {"pyproject.toml": text}))
    s = project.settings
    assert (s.framework, s.framework_inferred) == ("torch", True)
    assert (s.images, s.groups, s.extras, s.env, s.bake, s.command) == ((), (), (), (), False, ())
    # torchvision is the project's to lock (against the image's pins); only torch is the image's.
    assert project.split().image == () and project.split().project == ("torchvision", "numpy")


def expect_data_error(root: Path, *fragments: str) -> DataError:
    with pytest.raises(DataError) as caught:
        load_project(root)
    for fragment in fragments:
        assert fragment in caught.value.message, caught.value.message
    assert caught.value.fix and caught.value.exit_code == ExitCode.DATA
    return caught.value


def test_an_unknown_key_names_the_key_the_file_and_the_known_keys(tmp_path: Path) -> None:
    write(
        tmp_path, {"pyproject.toml": '[project]\nname = "p"\n[tool.cudabox]\nframwork = "torch"\n'}
    )
    error = expect_data_error(
        tmp_path, str(tmp_path / "pyproject.toml"), "'framwork'", "[tool.cudabox]"
    )
    assert error.fix is not None and "framework" in error.fix


@pytest.mark.parametrize(
    ("line", "fragments"),
    [
        ('bake = "yes"', ("[tool.cudabox] bake must be true or false", "'yes'")),
        ('images = "torch:cuda"', ("images must be a list of strings", "'torch:cuda'")),
        ("env = { N = 1 }", ("env must be a table of text values", "{'N': 1}")),
        ('command = "python train.py"', ("command must be a list of strings",)),
        ('framework = "jax"', ("framework must be one of torch, tensorflow", "'jax'")),
        ('images = ["tensorflow:cuda"]', ("'tensorflow:cuda' is not torch:FLAVOR",)),
        ('images = ["Torch 2.15"]', ("'Torch 2.15' is not a catalog image name",)),
        ('groups = ["gpu"]', ("groups names 'gpu'", "does not define")),
        ('extras = ["gpu"]', ("extras names 'gpu'",)),
        ('env = { CUDA_VISIBLE_DEVICES = "0" }', ("sets CUDA_VISIBLE_DEVICES",)),
        ('env = { "2FAST" = "1" }', ("'2FAST' is not a variable name",)),
        ('system-packages = ["libGL1 !"]', ("'libGL1 !' is not a Debian package name",)),
        ('index-urls = ["pypi.example.org/simple"]', ("is not an index URL",)),
        ('command = ["python", ""]', ("empty argument",)),
    ],
)
def test_wrong_values_name_key_value_and_expectation(
    tmp_path: Path, line: str, fragments: tuple[str, ...]
) -> None:
    text = '[project]\nname = "p"\ndependencies = ["torch"]\n[tool.cudabox]\nframework = "torch"\n'
    if line.startswith("framework"):
        text = text.replace('framework = "torch"\n', "")
    write(tmp_path, {"pyproject.toml": text + line + "\n"})
    expect_data_error(tmp_path, *fragments)


def test_images_entries_are_spelled_as_the_target_grammar_spells_them(tmp_path: Path) -> None:
    text = '[tool.cudabox]\nframework = "tensorflow"\nimages = ["tf:gpu", "tensorflow:cuda", "tf-2.21-cpu"]\n'
    project = load_project(write(tmp_path, {"pyproject.toml": text}))
    assert project.settings.images == ("tensorflow:cuda", "tf-2.21-cpu")


def test_a_framework_that_contradicts_the_dependencies(tmp_path: Path) -> None:
    text = (
        '[project]\nname = "p"\ndependencies = ["keras>=3"]\n[tool.cudabox]\nframework = "torch"\n'
    )
    write(tmp_path, {"pyproject.toml": text})
    expect_data_error(tmp_path, "framework is torch", "keras, which needs tensorflow")


@pytest.mark.parametrize(
    ("requirements", "fragment"),
    [
        ("torch\ntensorflow\n", "two frameworks: tensorflow (from tensorflow); torch (from torch)"),
        ("transformers\n", "no dependency names torch or tensorflow"),
    ],
)
def test_a_requirements_folder_without_a_clear_framework(
    tmp_path: Path, requirements: str, fragment: str
) -> None:
    write(tmp_path, {"requirements.txt": requirements})
    error = expect_data_error(tmp_path, "cannot tell the project's framework", fragment)
    assert error.fix is not None and "framework" in error.fix


def test_a_requirements_folder(tmp_path: Path) -> None:
    root = tmp_path / "My Repo"
    root.mkdir()
    write(
        root,
        {
            "requirements.txt": (
                "# training\n"
                "--extra-index-url https://example.org/simple\n"
                "tensorflow-datasets>=4.9  # data\n"
                "-r more/extra.txt\n"
                "pillow==10.4.0 \\\n"
                "    --hash=sha256:abc\n"
            ),
            "more/extra.txt": "keras-cv\ntensorflow-cpu==2.21.0\n",
        },
    )
    project = load_project(root)
    assert project.name == "My-Repo" and project.image_name == "my-repo"
    assert project.source == root / "requirements.txt"
    assert project.dependencies == (
        "tensorflow-datasets>=4.9",
        "keras-cv",
        "tensorflow-cpu==2.21.0",
        "pillow==10.4.0",
    )
    assert project.settings.framework == "tensorflow" and project.settings.framework_inferred
    assert project.settings.index_urls == ("https://example.org/simple",)
    assert project.split().image == ("tensorflow-cpu==2.21.0",)


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("torch\n-e .\n", ("line 2: pip option -e is not supported",)),
        ("torch\n-c constraints.txt\n", ("line 2: pip option -c",)),
        ("torch\n./wheels/x.whl\n", ("line 2", "'./wheels/x.whl' is not a PEP 508 requirement")),
        ("torch\n-r requirements.txt\n", ("includes itself",)),
    ],
)
def test_requirements_lines_cudabox_cannot_honour(
    tmp_path: Path, text: str, fragments: tuple[str, ...]
) -> None:
    write(tmp_path, {"requirements.txt": text})
    expect_data_error(tmp_path, *fragments)


def test_dependency_groups_errors(tmp_path: Path) -> None:
    base = '[project]\nname = "p"\ndependencies = ["torch"]\n[dependency-groups]\n'
    write(
        tmp_path,
        {"pyproject.toml": base + 'a = [{include-group = "b"}]\nb = [{include-group = "a"}]\n'},
    )
    expect_data_error(tmp_path, "include each other: a -> b -> a")
    write(tmp_path, {"pyproject.toml": base + 'a = [{include-group = "zz"}]\n'})
    expect_data_error(tmp_path, "includes 'zz', which is not defined")
    write(tmp_path, {"pyproject.toml": base + 'a = ["not a requirement!"]\n'})
    expect_data_error(tmp_path, "dependency group 'a'", "is not a PEP 508 requirement")


def test_cudabox_toml_for_a_repo_that_is_not_a_package(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "pyproject.toml": "[tool.ruff]\nline-length = 88\n",  # tooling only: not a declaration
            "cudabox.toml": (
                'name = "detector"\nframework = "torch"\ndependencies = ["torchmetrics"]\n'
                'groups = ["eval"]\n[dependency-groups]\neval = ["pycocotools"]\n'
            ),
        },
    )
    project = load_project(tmp_path)
    assert project.name == "detector" and project.source == tmp_path / "cudabox.toml"
    assert project.requirements() == ("torchmetrics", "pycocotools")
    (tmp_path / "cudabox.toml").write_text('framework = "torch"\nbake = false\nshm = "8g"\n')
    expect_data_error(tmp_path, "cudabox.toml: unknown key 'shm'")


def test_two_declarations_are_refused(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "pyproject.toml": '[tool.cudabox]\nframework = "torch"\n',
            "cudabox.toml": 'framework = "torch"\n',
        },
    )
    expect_data_error(tmp_path, "declares the project twice")


def test_tool_cudabox_alone_takes_requirements_txt(tmp_path: Path) -> None:
    write(
        tmp_path,
        {"pyproject.toml": "[tool.cudabox]\nbake = true\n", "requirements.txt": "torchaudio\n"},
    )
    project = load_project(tmp_path)
    assert project.dependencies == ("torchaudio",) and project.settings.framework == "torch"
    assert project.settings.bake and project.source == tmp_path / "pyproject.toml"


def test_setuptools_dynamic_dependencies_from_a_file(tmp_path: Path) -> None:
    text = (
        '[project]\nname = "p"\ndynamic = ["dependencies"]\n'
        '[tool.setuptools.dynamic]\ndependencies = {file = ["requirements.txt"]}\n'
    )
    write(tmp_path, {"pyproject.toml": text, "requirements.txt": "torch==2.13.0\nnumpy\n"})
    assert load_project(tmp_path).dependencies == ("torch==2.13.0", "numpy")
    write(tmp_path, {"pyproject.toml": '[project]\nname = "p"\ndynamic = ["dependencies"]\n'})
    expect_data_error(tmp_path, "dependencies are dynamic")


def test_no_declaration_or_no_folder_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="has no project declaration") as caught:
        load_project(tmp_path)
    assert caught.value.fix is not None and "cudabox init" in caught.value.fix
    with pytest.raises(UsageError, match="does not exist"):
        load_project(tmp_path / "missing")
    write(tmp_path, {"pyproject.toml": "[project\n"})
    expect_data_error(tmp_path, "is not valid TOML")


def test_candidate_images_against_the_real_catalog(tmp_path: Path) -> None:
    catalog = load_catalog()
    torch = tuple(i.name for i in catalog.for_framework("torch"))

    def candidates(images: str) -> tuple[str, ...]:
        text = f'[tool.cudabox]\nframework = "torch"\nimages = {images}\n'
        write(tmp_path, {"pyproject.toml": text})
        return tuple(i.name for i in candidate_images(load_project(tmp_path), catalog))

    assert candidates("[]") == torch and len(torch) >= 2
    cpu = tuple(i.name for i in catalog.for_framework("torch") if i.flavor == "cpu")
    assert candidates('["torch:cpu"]') == cpu
    assert candidates('["pytorch:cpu", "torch:cpu"]') == cpu  # the target grammar's spellings
    cuda = tuple(i.name for i in catalog.for_framework("torch") if i.flavor == "cuda")
    assert (
        len(cuda) >= 2 and candidates('["torch:gpu"]') == cuda
    )  # every CUDA image, not the newest
    assert candidates(f'["{torch[-1]}", "{torch[0]}"]') == (torch[0], torch[-1])  # catalog order
    with pytest.raises(
        DataError, match=re.escape("'torch-9.9-cu999', which the catalog does not have")
    ):
        candidates('["torch-9.9-cu999"]')
    tf = catalog.for_framework("tensorflow")[0].name
    with pytest.raises(DataError, match=re.escape(f"'{tf}', a tensorflow image")):
        candidates(f'["{tf}"]')


# ---- cudabox init ---------------------------------------------------------------------------


def test_init_proposes_a_table_that_loads(tmp_path: Path) -> None:
    pyproject = (
        '[project]\nname = "p"\ndependencies = ["torchvision", "timm"]\n\n'
        '[dependency-groups]\ntrain = ["wandb"]\ndev = ["pytest"]\n'
    )
    write(tmp_path, {"pyproject.toml": pyproject, "train.py": "print('hi')\n", "README.md": "x"})
    table = render_init(init_files(tmp_path))
    assert 'framework = "torch"  # from the dependencies: torchvision' in table
    assert 'groups = ["train"]  # of: train, dev' in table
    assert 'command = ["python", "train.py"]' in table
    (tmp_path / "pyproject.toml").write_text(insert_init(pyproject, table))
    project: Project = load_project(tmp_path)
    assert project.settings.groups == ("train",) and project.settings.command == (
        "python",
        "train.py",
    )
    assert not project.settings.framework_inferred and not project.settings.bake


def test_init_for_a_requirements_folder_writes_a_cudabox_toml_that_loads(tmp_path: Path) -> None:
    write(tmp_path, {"requirements.txt": "torchmetrics==1.5.0\n", "main.py": ""})
    text = render_init(init_files(tmp_path), standalone=True)
    assert "[tool.cudabox]" not in text
    (tmp_path / "cudabox.toml").write_text(text)
    project = load_project(tmp_path)
    # The settings come from cudabox.toml, the dependencies still from requirements.txt.
    assert project.source == tmp_path / "cudabox.toml"
    assert project.dependencies == ("torchmetrics==1.5.0",)
    assert project.settings.command == ("python", "main.py")
    assert project.settings.framework == "torch" and not project.settings.framework_inferred


def test_init_needs_a_framework_it_cannot_infer() -> None:
    files = {"requirements.txt": "transformers\n"}
    with pytest.raises(DataError, match="cannot choose") as caught:
        render_init(files)
    assert caught.value.fix is not None and "--framework" in caught.value.fix
    table = render_init(files, framework="tensorflow")
    assert tomllib.loads(table)["tool"]["cudabox"] == {"framework": "tensorflow", "bake": False}


@pytest.mark.parametrize(
    "original",
    [
        '[project]\nname = "p"\n',
        '[project]\nname = "p"  # no newline at the end',
        '[project]\r\nname = "p"\r\n\r\n[tool.ruff]\r\nline-length = 100\r\n',
        "",
        '# only a comment\n[tool]\nblack = {line-length = 99}\n[tool.ruff.lint]\nselect = ["E"]\n',
    ],
)
def test_insert_keeps_every_other_byte_and_parses(original: str) -> None:
    table = render_init({}, framework="torch")
    result = insert_init(original, table)
    assert result.startswith(original)
    parsed = tomllib.loads(result)
    assert parsed["tool"]["cudabox"]["framework"] == "torch"
    before = tomllib.loads(original)
    del parsed["tool"]["cudabox"]
    if not parsed["tool"] and "tool" not in before:
        del parsed["tool"]
    assert parsed == before
    if "\r\n" in original:
        assert "\n" not in result[len(original) :].replace("\r\n", "")


def test_insert_refuses_an_existing_table_and_an_inline_tool() -> None:
    table = render_init({}, framework="torch")
    with pytest.raises(UsageError, match=re.escape("already has a [tool.cudabox]")):
        insert_init('[tool.cudabox]\nframework = "torch"\n', table)
    with pytest.raises(DataError, match="would change the meaning"):
        insert_init("tool = { ruff = { line-length = 1 } }\n", table)


def test_the_docs_describe_every_key() -> None:
    docs = (Path(__file__).parents[2] / "docs" / "project.md").read_text()
    for key in KNOWN_KEYS:
        assert f"| `{key}` |" in docs, key
