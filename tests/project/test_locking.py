"""`cudabox lock` in a project folder, against real uv and PyPI (small packages only).

Each case goes through the command line (`cudabox.cli.main`) and checks its exit code and the
finding's message; the lock file written is read back with the strict reader.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import requests

from cudabox.cli import main
from cudabox.images.catalog import load_catalog
from cudabox.images.lock import parse_lock
from cudabox.images.wheelsizes import top_level_modules
from cudabox.project.lockfile import ProjectLock, read_lock
from cudabox.versions import Arch
from project.fakewheel import extension_wheel, make_wheel
from realtools import unavailable

CPU = "torch-2.13-cpu"
# The user's wheel cache, before the tests point XDG_CACHE_HOME at their own folders.
_USER_CACHE = os.environ.get("XDG_CACHE_HOME")


@pytest.fixture(scope="module", autouse=True)
def pypi() -> None:
    """These tests resolve against PyPI: skipped loudly without it (fails under CI)."""
    try:
        requests.get(
            "https://pypi.org/simple/rich/",
            timeout=10,
            verify="/etc/ssl/certs/ca-certificates.crt"
            if Path("/etc/ssl/certs/ca-certificates.crt").is_file()
            else True,
        ).raise_for_status()
    except requests.RequestException as exc:
        unavailable("pypi", f"PyPI does not answer ({exc}); the lock tests resolve against it")


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The host's pip settings (CA bundle, find-links holding torch +cpu), as the builds use them;
    # a wheel cache of the test's own.
    monkeypatch.setenv("CUDABOX_HOST_PIP", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name in ("CUDABOX_WHEELHOUSE", "CUDABOX_INDEX_URL"):
        monkeypatch.delenv(name, raising=False)


def project(folder: Path, dependencies: Sequence[str], images: Sequence[str] = (CPU,)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    deps = ", ".join(json.dumps(d) for d in dependencies)
    names = ", ".join(json.dumps(i) for i in images)
    (folder / "pyproject.toml").write_text(
        f'[project]\nname = "demo"\nversion = "0.1"\ndependencies = [{deps}]\n\n'
        f'[tool.cudabox]\nframework = "torch"\nimages = [{names}]\n'
    )
    return folder


def lock(
    capsys: pytest.CaptureFixture[str], folder: Path, *more: str
) -> tuple[int, dict[str, object] | None, str]:
    """`cudabox lock --project FOLDER --json MORE`: the exit code, the JSON, and stderr."""
    capsys.readouterr()
    code = main(["lock", "--project", str(folder), "--json", *more])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 and out.strip() else None), err


def image_row(data: dict[str, object] | None, name: str) -> dict[str, object]:
    assert data is not None
    rows = data["images"]
    assert isinstance(rows, list)
    return next(r for r in rows if r["image"] == name)


def test_a_pure_python_project_on_the_cpu_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = project(tmp_path / "demo", ["torch", "rich"])
    started = time.monotonic()
    code, data, err = lock(capsys, folder)
    seconds = time.monotonic() - started
    assert code == 0, err
    assert seconds < 30  # the issue's budget is 10 s per image; a loaded CI machine gets slack
    saved = read_lock(folder / "cudabox.lock")
    (entry,) = saved.images
    assert entry.image == CPU
    assert entry.base_lock_sha256 and not entry.findings
    names = {p.name for p in entry.packages}
    assert "rich" in names and "markdown-it-py" in names
    # The framework and every pin of the image stay the image's.
    image_pins = parse_lock(load_catalog().get(CPU).lock.read_text())
    assert not names & {"torch", "numpy", *image_pins}
    rich = entry.get("rich")
    assert rich is not None and rich.direct and rich.modules == ("rich",)
    assert rich.hashes and all(h.startswith("sha256:") for h in rich.hashes)
    assert rich.installed_bytes > 100_000
    markdown = entry.get("markdown-it-py")
    assert markdown is not None and not markdown.direct and markdown.modules == ("markdown_it",)
    row = image_row(data, CPU)
    assert row["packages"] == len(entry.packages) and row["base_pins_changed"] == 0
    assert row["installed_bytes"] == entry.installed_bytes
    assert "lock demo against torch-2.13-cpu" in err  # progress on stderr, JSON on stdout

    # Current: --check says so without a network; an edit of the requirements makes it stale.
    assert main(["lock", "--project", str(folder), "--check"]) == 0
    project(folder, ["torch", "rich", "tqdm"])
    capsys.readouterr()
    assert main(["lock", "--project", str(folder), "--check"]) == 6
    assert "is stale" in capsys.readouterr().err
    (folder / "cudabox.lock").unlink()
    assert main(["lock", "--project", str(folder), "--check"]) == 6
    assert "does not exist" in capsys.readouterr().err


def test_relocking_keeps_versions_until_upgraded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = project(tmp_path / "demo", ["torch", "tqdm==4.66.1"])
    assert lock(capsys, folder)[0] == 0
    project(folder, ["torch", "tqdm"])  # the pin relaxed: the locked version stays
    assert lock(capsys, folder)[0] == 0
    assert _version(folder, "tqdm") == "4.66.1"
    code, _, err = lock(capsys, folder, "--upgrade-package", "tqdm")
    assert code == 0, err
    assert _version(folder, "tqdm") != "4.66.1"


def _version(folder: Path, name: str) -> str:
    package = read_lock(folder / "cudabox.lock").images[0].get(name)
    assert package is not None
    return package.version


def test_a_requirement_against_an_image_pin_is_a_conflict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = project(tmp_path / "demo", ["torch", "numpy<2"])
    code, _, err = lock(capsys, folder)
    assert code == 6
    assert (
        "conflict: the project's numpy<2 and the image's pin numpy==2.4.6 cannot both hold" in err
    )
    assert "Because" in err  # uv's key line is shown
    assert not (folder / "cudabox.lock").exists()


def test_a_framework_pin_no_image_satisfies_names_the_images_that_would(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = project(tmp_path / "demo", ["torch>=2.14", "rich"])
    code, _, err = lock(capsys, folder)
    assert code == 6
    assert "the project's torch>=2.14 fits none of its images" in err
    assert "the image has torch 2.13.0+cpu" in err
    assert "torch-2.15-cu132 would satisfy it" in err
    assert "[tool.cudabox] images" in err


def test_an_image_the_pin_excludes_is_left_out_and_the_others_locked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = project(tmp_path / "demo", ["torch>=2.14", "rich"], [CPU, "torch-2.15-cu132"])
    code, data, err = lock(capsys, folder)
    assert code == 0, err
    cpu = image_row(data, CPU)
    assert cpu["excluded"] is True
    assert cpu["findings"] == [
        {
            "kind": "framework-pin",
            "fatal": True,
            "message": "the project asks for torch>=2.14; the image has torch 2.13.0+cpu",
        }
    ]
    assert [i.image for i in read_lock(folder / "cudabox.lock").images] == ["torch-2.15-cu132"]
    # The lock is current although one candidate has no entry: nothing it was made from changed.
    assert main(["lock", "--project", str(folder), "--check"]) == 0


def test_an_sdist_only_package_leaves_the_image_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = project(tmp_path / "demo", ["torch", "antlr4-python3-runtime==4.9.3"])
    code, _, err = lock(capsys, folder)
    assert code == 6
    assert "no-wheel: antlr4-python3-runtime==4.9.3 has no wheel for the image's platform" in err
    assert "--wheelhouse" in err
    assert not any((tmp_path / "cache").rglob("*.whl"))  # nothing was downloaded


def test_a_dependency_the_image_holds_back_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 2.0 needs an older sympy than the CPU image's 1.14.0; 1.0 needs nothing.
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "cudabox-test-heldback", "1.0")
    make_wheel(wheels, "cudabox-test-heldback", "2.0", requires=["sympy<1.10"])
    folder = project(tmp_path / "demo", ["torch", "cudabox-test-heldback"])
    code, data, err = lock(capsys, folder, "--wheelhouse", str(wheels))
    assert code == 0, err
    (finding,) = image_row(data, CPU)["findings"]  # type: ignore[misc]
    assert finding["kind"] == "held-back" and finding["fatal"] is False
    message = finding["message"]
    assert "cudabox-test-heldback is locked at 1.0 on torch-2.13-cpu" in message
    assert "unconstrained it resolves to 2.0" in message
    assert "would replace sympy 1.14.0 with 1.9" in message
    (entry,) = read_lock(folder / "cudabox.lock").images
    assert entry.findings == (f"held-back: {message}",)
    assert "held-back:" in err


def test_an_extension_for_another_cuda_major_leaves_the_image_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wheels = tmp_path / "wheels"
    wheel = extension_wheel(wheels)
    assert wheel.name == "fakeext-1.0-cp311-cp311-manylinux_2_28_x86_64.whl"
    folder = project(tmp_path / "demo", ["torch", "fakeext"], [CPU])
    code, _, err = lock(capsys, folder, "--wheelhouse", str(wheels))
    assert code == 6
    assert "cuda-major: fakeext==1.0" in err
    assert "libcudart.so.12, but the image torch-2.13-cpu has no CUDA (a CPU image)" in err


def test_an_extensions_architectures_reach_the_lock(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wheels = tmp_path / "wheels"
    extension_wheel(wheels, sass=(80, 90), ptx=(90,), needed=("libcudart.so.12",))
    folder = project(
        tmp_path / "demo", ["torch", "fakeext"], ["torch-2.10-cu128", "torch-2.15-cu132"]
    )
    code, data, err = lock(capsys, folder, "--wheelhouse", str(wheels))
    assert code == 0, err
    saved: ProjectLock = read_lock(folder / "cudabox.lock")
    (entry,) = saved.images  # CUDA 13.2 is left out: the extension links CUDA 12's runtime
    assert entry.image == "torch-2.10-cu128"
    fakeext = entry.get("fakeext")
    assert fakeext is not None
    assert fakeext.sass == (Arch.parse("8.0"), Arch.parse("9.0"))
    assert fakeext.ptx == (Arch.parse("9.0"),)
    assert fakeext.cuda_runtime == (12,)
    assert fakeext.modules == ("fakeext",)
    row = image_row(data, "torch-2.10-cu128")
    assert row["extensions"] == [
        {
            "name": "fakeext",
            "version": "1.0",
            "sass": ["8.0", "9.0"],
            "ptx": ["9.0"],
            "cuda_runtime": [12],
        }
    ]
    assert image_row(data, "torch-2.15-cu132")["excluded"] is True
    # The table form names the architectures too.
    capsys.readouterr()
    assert main(["lock", "--project", str(folder), "--wheelhouse", str(wheels)]) == 0
    table = capsys.readouterr().out
    assert "fakeext 8.0 9.0 / 9.0" in table and "LEFT OUT: cuda-major" in table


def test_a_requirements_txt_folder_locks_as_a_project_when_run_in_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "requirements.txt").write_text("torch\ntqdm\n")
    (tmp_path / "cudabox.toml").write_text(f'images = ["{CPU}"]\n')  # one image keeps it cheap
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["lock", "--json"]) == 0, capsys.readouterr().err
    assert read_lock(tmp_path / "cudabox.lock").images[0].get("tqdm") is not None


def test_the_issues_transformers_project_on_the_newest_cuda_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 16: `transformers datasets accelerate` against torch-2.15-cu132's lock gave 37 new
    distributions, 0 base pins changed, 328.5 MB installed (measured then: 2.5 s)."""
    # The shared wheel cache: its compiled wheels (pyarrow, tokenizers, ...) are read for GPU code.
    if _USER_CACHE is None:
        monkeypatch.delenv("XDG_CACHE_HOME")
    else:
        monkeypatch.setenv("XDG_CACHE_HOME", _USER_CACHE)
    image = "torch-2.15-cu132"
    folder = project(
        tmp_path / "demo", ["torch", "transformers", "datasets", "accelerate"], [image]
    )
    code, data, err = lock(capsys, folder)
    assert code == 0, err
    row = image_row(data, image)
    assert row["base_pins_changed"] == 0 and row["findings"] == [] and row["extensions"] == []
    (entry,) = read_lock(folder / "cudabox.lock").images
    names = {p.name for p in entry.packages}
    assert {"transformers", "datasets", "accelerate", "pyarrow", "tokenizers"} <= names
    assert not any(n == "torch" or n.startswith("nvidia-") for n in names)
    # A new release of a dependency may add or drop one; the issue's figures, with that slack.
    assert 33 <= len(entry.packages) <= 41, sorted(names)
    assert 250e6 < entry.installed_bytes < 450e6
    assert all(p.modules for p in entry.packages)  # every one installs something importable
    dateutil = entry.get("python-dateutil")
    assert dateutil is not None and dateutil.modules == ("dateutil",)  # not the dist's name
    transformers = entry.get("transformers")
    assert (
        transformers is not None
        and transformers.direct
        and transformers.modules == ("transformers",)
    )


def test_top_level_modules_from_a_file_list() -> None:
    names = [
        "pkg/__init__.py",
        "pkg/sub/x.py",
        "single.py",
        "_ext.cpython-311-x86_64-linux-gnu.so",
        "ns/inner/mod.py",
        "data_only/readme.txt",
        "pkg-1.0.dist-info/METADATA",
        "pkg-1.0.data/scripts/tool",
        "pkg.libs/libfoo.so.1",
        "fake.pth",
    ]
    assert top_level_modules(names) == ("_ext", "ns", "pkg", "single")


def test_the_wheel_cache_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from cudabox.images.wheelsizes import wheel_cache

    assert wheel_cache({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "cudabox" / "wheels"
    assert wheel_cache({}) == Path.home() / ".cache" / "cudabox" / "wheels"
    assert os.environ["XDG_CACHE_HOME"] == str(tmp_path / "cache")
