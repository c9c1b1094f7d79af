"""`cudabox train/run --scheduler slurm|k8s --dry-run`: what would be submitted, from the CLI.

The renderers have their own golden tests (tests/jobs); here the command line is checked end to
end: which image is chosen for the nodes, that the Slurm script is the golden one, and that the
Kubernetes manifests pass strict validation with an affinity that admits exactly the nodes the
image fits.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from cudabox.host import HostProfile
from cudabox.images.catalog import load_catalog
from cudabox.jobs.affinity import gfd_labels, node_affinity
from cudabox.resolver import select

ROOT = Path(__file__).resolve().parents[1]
HOSTS = ROOT / "tests" / "fixtures" / "hosts"
GOLDEN = ROOT / "tests" / "fixtures" / "slurm" / "cli-train-cpu-2node.sh"
K8S_VERSION = "1.31.0"


def cudabox(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent.sock", "SLURM_CONF": "/nonexistent"}
    return subprocess.run(
        [sys.executable, "-m", "cudabox", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
        check=False,
    )


def test_slurm_dry_run_is_the_golden_script(tmp_path: Path) -> None:
    out = tmp_path / "shared" / "runs"
    result = cudabox(
        "train",
        "torch",
        "--cpu",
        "--scheduler",
        "slurm",
        "--nodes",
        "2",
        "--launcher",
        "cudabox",
        "--name",
        "smoke",
        "--partition",
        "debug",
        "--time",
        "00:30:00",
        "--out",
        str(out),
        "--dry-run",
    )
    assert result.returncode == 0, result.stderr
    # Paths of this machine are placeholders in the golden file.
    script = result.stdout.replace(str(out), "/shared/runs").replace(
        str(Path(sys.executable).with_name("cudabox")), "cudabox"
    )
    if os.environ.get("CUDABOX_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(script)
    assert script == GOLDEN.read_text()
    assert "cudabox: image torch-2.13-cpu" in result.stderr


def test_slurm_needs_a_registry_for_pyxis() -> None:
    result = cudabox(
        "train",
        "torch",
        "--cpu",
        "--scheduler",
        "slurm",
        "--nodes",
        "2",
        "--launcher",
        "pyxis",
        "--dry-run",
    )
    assert result.returncode == 2, result.stderr
    assert "fix:" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("profiles", "expected"),
    [(["h100"], "torch-2.15-cu132"), (["h100", "gtx1080"], "torch-2.7-cu126")],
)
def test_k8s_dry_run_validates_and_admits_the_nodes_the_image_fits(
    profiles: list[str], expected: str
) -> None:
    hosts = [f"--host={HOSTS / f'{name}.json'}" for name in profiles]
    result = cudabox(
        "train",
        "torch",
        "--scheduler",
        "k8s",
        "--nodes",
        "2",
        "--gpus-per-node",
        "8",
        "--nproc-per-node",
        "8",
        "--name",
        "smoke",
        *hosts,
        "--dry-run",
    )
    assert result.returncode == 0, result.stderr
    assert f"cudabox: image {expected}" in result.stderr
    objects = [o for o in yaml.safe_load_all(result.stdout) if o]
    assert [o["kind"] for o in objects] == ["Service", "Job"]
    for manifest in objects:
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    pod = objects[1]["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    # The affinity admits exactly the recorded nodes the chosen image fits.
    spec = load_catalog().get(expected)
    affinity = node_affinity(spec)
    assert affinity is not None
    for path in sorted(HOSTS.glob("*.json")):
        host = HostProfile.load(path)
        if not host.visible_gpus or len({g.compute_capability for g in host.gpus}) > 1:
            continue  # GPU Feature Discovery labels one GPU model per node
        fits = select(load_catalog(), [host], "torch", "cuda")
        verdict = next(v for v in fits.verdicts if v.image.name == expected)
        assert affinity.admits(gfd_labels(host)) == verdict.fits, path.name


def test_k8s_without_a_registry_is_refused_outside_a_dry_run() -> None:
    result = cudabox(
        "train",
        "torch",
        "--cpu",
        "--scheduler",
        "k8s",
        "--nodes",
        "2",
        "--name",
        "smoke",
    )
    assert result.returncode == 2, result.stderr
    assert "--registry" in result.stderr and "Traceback" not in result.stderr


def test_scheduler_flags_that_contradict_are_usage_errors() -> None:
    for words in (
        ["--scheduler", "slurm", "--nodes", "0"],
        ["--scheduler", "slurm", "--nnodes", "2", "--rdzv-endpoint", "h:1"],
        ["--scheduler", "k8s", "--cpu", "--gpus-per-node", "2"],
        ["--scheduler", "k8s", "--wait-pending"],  # Slurm's pending reasons only
    ):
        result = cudabox("train", "torch", *words, "--dry-run")
        assert result.returncode == 2, (words, result.stderr)
        assert "fix:" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("head", "tail"), [(["train", "torch"], []), (["run"], ["--", "true"])], ids=["train", "run"]
)
def test_wait_pending_reaches_the_slurm_job(head: list[str], tail: list[str]) -> None:
    """--wait-pending is taken by train and run and handed on to the Slurm adapter's follow (the
    real waiting is in tests/test_slurm_pending.py); without it, a hopeless job is cancelled."""
    from cudabox.cli import parse
    from cudabox.commands._launch import cluster_options

    words = [*head, "--cpu", "--scheduler", "slurm", "--nodes", "3", "--launcher", "cudabox"]
    waiting = cluster_options(parse([*words, "--wait-pending", *tail]))
    assert waiting.wait_pending is True
    assert cluster_options(parse([*words, *tail])).wait_pending is False
    result = cudabox(*words, "--wait-pending", "--dry-run", *tail)
    assert result.returncode == 0, result.stderr
    assert "#SBATCH --nodes=3" in result.stdout
