"""Where a job runs: each target takes its own options, and refuses the others (exit 2) naming the
target that would take them, before any engine, NVML or cluster is touched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cudabox.cli import parse
from cudabox.commands._launch import given_options
from cudabox.errors import ExitCode, UsageError
from cudabox.targets import TAKEN_BY, TARGETS, refuse_foreign, takes, target_for

ROOT = Path(__file__).resolve().parents[2]


def cudabox(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # No engine, no Slurm and no kubectl anywhere: a refusal must come before any of them.
    env = {
        **os.environ,
        "DOCKER_HOST": f"unix://{cwd}/no-engine.sock",
        "SLURM_CONF": "/nonexistent",
        "PATH": str(Path(sys.executable).parent),
    }
    return subprocess.run(
        [sys.executable, "-m", "cudabox", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("words", "named"),
    [
        (["run", "--cpu", "--nodes", "4", "--", "true"], ["--nodes", "local", "slurm and k8s"]),
        (["run", "--cpu", "--partition", "gpu", "--", "true"], ["--partition", "local", "slurm"]),
        (["run", "--cpu", "--k8s-kind", "jobset", "--", "true"], ["--k8s-kind", "local", "k8s"]),
        (
            ["run", "--scheduler", "slurm", "--k8s-kind", "jobset", "--", "true"],
            ["--k8s-kind", "the slurm target", "the k8s target"],
        ),
        (["train", "torch", "--here", "--scheduler", "slurm"], ["--here", "--scheduler slurm"]),
        (
            # The example: no --scheduler, so the local target, which takes none of them
            # (it used to print a local `docker run` for this host, the host file unread).
            [
                "run",
                "--nodes",
                "4",
                "--partition",
                "gpu",
                "--k8s-kind",
                "jobset",
                "--host",
                "h100.json",
                "--dry-run",
                "--",
                "python3",
                "-c",
                "print(1)",
            ],
            ["--nodes", "--partition", "--k8s-kind", "--host", "the local target"],
        ),
        (["train", "torch", "--here", "--image", "torch-2.13-cpu"], ["--image", "here"]),
        (["train", "torch", "--scheduler", "k8s", "--mount", "/:/x"], ["--mount", "local"]),
        (["run", "--scheduler", "k8s", "--gpus", "all", "--", "true"], ["--gpus", "k8s"]),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else None,
)
def test_an_option_the_target_does_not_take_is_refused(
    tmp_path: Path, words: list[str], named: list[str]
) -> None:
    result = cudabox(*words, cwd=tmp_path)
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert "cudabox: error:" in result.stderr and "\n  fix: " in result.stderr
    assert "Traceback" not in result.stderr
    for name in named:
        assert name in result.stderr, (name, result.stderr)
    assert result.stdout == ""  # nothing ran, nothing was printed as if it had


def test_the_fix_names_the_target_that_takes_every_option() -> None:
    with pytest.raises(UsageError) as caught:
        refuse_foreign("local", ["--nodes", "--partition"])
    assert caught.value.fix == (
        "drop --nodes --partition, or choose the slurm target (--scheduler slurm)"
    )
    with pytest.raises(UsageError) as caught:
        refuse_foreign("here", ["--image"])
    assert caught.value.fix == (
        "drop --image, or choose the local target (without --here or --scheduler) or the slurm "
        "target (--scheduler slurm) or the k8s target (--scheduler k8s)"
    )
    refuse_foreign("slurm", ["--partition", "--nodes", "--image"])  # all taken: no error


def test_each_target_takes_its_own_options() -> None:
    assert {"--partition", "--launcher", "--wait-pending"} <= takes("slurm")
    assert {"--k8s-kind", "--namespace"} <= takes("k8s")
    assert not takes("here") & {"--image", "--mount", "--nodes", "--gpus"}
    assert {"--gpus", "--mount", "--ulimit", "--nnodes"} <= takes("local")
    # Every option belongs to some target, and none to every target (it would not be listed).
    assert all(0 < len(set(names)) < len(TARGETS) for names in TAKEN_BY.values())


@pytest.mark.parametrize(
    ("scheduler", "here", "target"),
    [
        ("none", False, "local"),
        ("none", True, "here"),
        ("slurm", False, "slurm"),
        ("k8s", False, "k8s"),
    ],
)
def test_the_target_the_command_line_chooses(scheduler: str, here: bool, target: str) -> None:
    assert target_for(scheduler, here) == target  # type: ignore[arg-type]


@pytest.mark.parametrize("words", [["run"], ["train", "torch"]])
def test_defaults_are_not_options_given(words: list[str]) -> None:
    """Guards the defaults that `given_options` knows against the parser's own."""
    assert given_options(parse(words)) == []


def test_every_option_given_is_seen(tmp_path: Path) -> None:
    values = {"--nodes": "2", "--nnodes": "2", "--shm-size": "8g", "--image": "x", "--tag": "v1"}
    words = ["run"]
    for flag in TAKEN_BY:
        if flag in ("--wait-pending", "--no-build"):
            words.append(flag)
        else:
            words += [flag, values.get(flag, "auto" if flag == "--launcher" else "1")]
    words = [w if w != "auto" else "pyxis" for w in words]
    words[words.index("--k8s-kind") + 1] = "jobset"
    assert sorted(given_options(parse(words))) == sorted(TAKEN_BY)


def test_the_workload_runs_only_in_an_image_of_its_framework(tmp_path: Path) -> None:
    # A named catalog image needs no engine to be judged: the dry run refuses before printing.
    result = cudabox(
        "train", "torch", "--image", "tf-2.21-cpu", "--dry-run", "--out", "o", cwd=tmp_path
    )
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert "--image tf-2.21-cpu is a tensorflow image" in result.stderr
    assert result.stdout == ""


def test_an_option_a_target_takes_reaches_it(tmp_path: Path) -> None:
    """The same options, on the target that takes them, run (as dry runs, without an engine)."""
    local = cudabox("run", "--cpu", "--gpus-per-node", "0", "--dry-run", "--", "true", cwd=tmp_path)
    assert local.returncode == ExitCode.USAGE  # a cluster option, on the local target
    slurm = cudabox(
        "run",
        "--cpu",
        "--scheduler",
        "slurm",
        "--nodes",
        "2",
        "--partition",
        "gpu",
        "--launcher",
        "cudabox",
        "--dry-run",
        "--",
        "true",
        cwd=tmp_path,
    )
    assert slurm.returncode == 0, slurm.stderr
    assert "#SBATCH --partition=gpu" in slurm.stdout and "#SBATCH --nodes=2" in slurm.stdout
