"""The sbatch renderer: golden scripts, what bash makes of them, and the choices behind them.

Regenerate the goldens after an intended change with CUDABOX_UPDATE_GOLDENS=1, and read the diff.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from cudabox.errors import UsageError
from cudabox.images.catalog import load_catalog
from cudabox.jobs.sbatch import (
    ClusterFeatures,
    Launcher,
    SbatchOptions,
    choose_launcher,
    enroot_image,
    registry_of,
    render,
)
from cudabox.jobs.spec import JobSpec

GOLDENS = Path(__file__).parents[1] / "fixtures" / "slurm"
UPDATE = os.environ.get("CUDABOX_UPDATE_GOLDENS") == "1"
CATALOG = load_catalog(Path(__file__).parents[2] / "images" / "catalog.toml")
DIGEST = "sha256:" + "0123456789abcdef" * 4
GPU_REF = f"registry.example.com:5000/cudabox/torch-2.15-cu132@{DIGEST}"

CPU_TRAIN = JobSpec(
    name="cudabox-torch",
    image=CATALOG.get("torch-2.13-cpu"),
    image_ref="cudabox/torch-2.13-cpu:latest",
    program=("python", "-m", "cudabox.workloads.torch_smoke", "--out", "/shared/runs/torch"),
    nodes=2,
    out_dir="/shared/runs/torch",
)
GPU_TRAIN = JobSpec(
    name="cudabox-torch",
    image=CATALOG.get("torch-2.15-cu132"),
    image_ref=GPU_REF,
    program=("python", "-m", "cudabox.workloads.torch_smoke", "--out", "/shared/runs/torch"),
    nodes=2,
    nproc_per_node=8,
    gpus_per_node=8,
    env={"NCCL_DEBUG": "WARN"},
    out_dir="/shared/runs/torch",
)
BARE = ClusterFeatures(pyxis=False, apptainer=False)
CPU_OPTIONS = SbatchOptions(
    launcher=Launcher.CUDABOX,
    partition="debug",
    time_limit="00:30:00",
    output="/shared/runs/torch/slurm-%j.log",
)
GPU_OPTIONS = SbatchOptions(
    launcher=Launcher.PYXIS,
    partition="gpu",
    time_limit="02:00:00",
    account="ml-team",
    output="/shared/runs/torch/slurm-%j.log",
    cpus_per_task=64,
    sbatch_args=("--exclusive",),
)

# name -> (spec, options, what the submit host offered: None for an explicit --launcher)
CASES: dict[str, tuple[JobSpec, SbatchOptions, ClusterFeatures | None]] = {
    "cpu-2node-cudabox": (CPU_TRAIN, CPU_OPTIONS, BARE),
    "gpu-2node-pyxis": (GPU_TRAIN, GPU_OPTIONS, ClusterFeatures(pyxis=True, apptainer=True)),
    "gpu-2node-apptainer": (
        GPU_TRAIN,
        replace(GPU_OPTIONS, launcher=Launcher.APPTAINER, rdzv_port=29500),
        ClusterFeatures(pyxis=False, apptainer=True),
    ),
    "gpu-2node-cudabox": (
        replace(GPU_TRAIN, image_ref="cudabox/torch-2.15-cu132:latest"),
        replace(GPU_OPTIONS, launcher=Launcher.CUDABOX, cudabox="/opt/cudabox/bin/cudabox"),
        None,
    ),
    "cpu-1node-apptainer": (
        replace(
            CPU_TRAIN,
            nodes=1,
            nproc_per_node=2,
            image_ref=f"registry.example.com/cudabox/torch-2.13-cpu@{DIGEST}",
            out_dir=None,
            program=("python", "train.py", "--epochs", "3"),
        ),
        SbatchOptions(launcher=Launcher.APPTAINER),
        None,
    ),
}


def _render(name: str) -> str:
    spec, options, features = CASES[name]
    if features is None:
        launcher, why = choose_launcher(options.launcher.value, BARE)
    else:
        launcher, why = choose_launcher("auto", features)
    assert launcher is options.launcher, f"{name}: auto chose {launcher}"
    return render(spec, options, why)


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name: str) -> None:
    text = _render(name)
    golden = GOLDENS / f"{name}.sh"
    if UPDATE:
        golden.write_text(text)
    assert golden.read_text() == text, f"{golden} differs; CUDABOX_UPDATE_GOLDENS=1 rewrites it"


@pytest.mark.parametrize("name", sorted(CASES))
def test_bash_parses_every_golden(name: str) -> None:
    result = subprocess.run(
        ["bash", "-n", str(GOLDENS / f"{name}.sh")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def _directives(script: str) -> list[str]:
    return [line.split(maxsplit=1)[1] for line in script.splitlines() if line.startswith("#SBATCH")]


@pytest.mark.parametrize("name", sorted(CASES))
def test_one_task_per_node_and_the_gpus_the_spec_asks_for(name: str) -> None:
    spec, _, _ = CASES[name]
    directives = _directives(_render(name))
    assert f"--nodes={spec.nodes}" in directives
    assert "--ntasks-per-node=1" in directives
    gpus = [d for d in directives if d.startswith("--gpus")]
    assert gpus == ([f"--gpus-per-node={spec.gpus_per_node}"] if spec.uses_gpus else [])


# ---- what bash does with the script: fake srun and scontrol, real shell ----------------------

FAKES = {
    # The allocation's nodes, as `scontrol show hostnames` expands them.
    "scontrol": 'test "$1 $2" = "show hostnames" && printf "gpu07\\ngpu08\\n"',
    # srun's argv, one word per line, as the shell passed it.
    "srun": 'printf "%s\\n" "$@" > "$SRUN_ARGV"',
}


def _run_script(script: str, tmp_path: Path) -> list[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in FAKES.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    argv_file = tmp_path / "srun.argv"
    work = tmp_path / "job dir"  # a space in the job's folder must survive
    work.mkdir()
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "SLURM_JOB_ID": "4321",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
        "SRUN_ARGV": str(argv_file),
    }
    result = subprocess.run(
        ["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "cudabox: job 4321 on gpu[07-08]" in result.stdout
    return argv_file.read_text().splitlines()


def test_bash_meets_on_the_first_node_at_a_port_from_the_job_id(tmp_path: Path) -> None:
    argv = _run_script(_render("gpu-2node-pyxis"), tmp_path)
    assert "--rdzv-endpoint=gpu07:24321" in argv  # 20000 + 4321 % 10000
    assert "--rdzv-id=4321" in argv
    assert (
        f"--container-mounts={tmp_path / 'job dir'}:/workspace,/shared/runs/torch:/shared/runs/torch"
        in argv
    )
    assert f"--container-image=registry.example.com:5000#cudabox/torch-2.15-cu132@{DIGEST}" in argv
    assert argv[argv.index("torchrun") :] == [
        "torchrun",
        "--nproc-per-node=8",
        "--nnodes=2",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=gpu07:24321",
        "--rdzv-id=4321",
        "-m",
        "cudabox.workloads.torch_smoke",
        "--out",
        "/shared/runs/torch",
    ]


def test_a_fixed_port_is_used_as_given(tmp_path: Path) -> None:
    argv = _run_script(_render("gpu-2node-apptainer"), tmp_path)
    assert "--rdzv-endpoint=gpu07:29500" in argv
    assert "--nv" in argv


def test_the_fallback_passes_cudabox_run_the_rendezvous_and_literal_env(tmp_path: Path) -> None:
    tricky = 'it\'s a "test" of $HOME and `date`'
    spec = replace(CPU_TRAIN, env={"RUN_NOTE": tricky})
    argv = _run_script(render(spec, CPU_OPTIONS), tmp_path)
    assert argv[:3] == ["--ntasks-per-node=1", "--kill-on-bad-exit=1", "cudabox"]
    run = argv[argv.index("cudabox") :]
    assert run[run.index("--rdzv-endpoint") + 1] == "gpu07:24321"
    assert run[run.index("--rdzv-id") + 1] == "4321"
    assert run[run.index("--nnodes") + 1] == "2"
    assert "--cpu" in run
    assert f"RUN_NOTE={tricky}" in run  # not expanded, not split
    assert run[run.index("--") :] == ["--", *CPU_TRAIN.program]


def test_a_gpu_job_through_the_fallback_is_not_told_cpu() -> None:
    assert "--cpu" not in _render("gpu-2node-cudabox").split()


def test_a_cpu_job_under_pyxis_gets_no_gpus_from_the_image_default() -> None:
    spec = replace(CPU_TRAIN, image_ref=f"registry.example.com/cudabox/torch-2.13-cpu@{DIGEST}")
    text = render(spec, replace(CPU_OPTIONS, launcher=Launcher.PYXIS))
    assert "export NVIDIA_VISIBLE_DEVICES=void" in text
    assert "NVIDIA_VISIBLE_DEVICES" not in _render("gpu-2node-pyxis")


def test_one_node_runs_torchrun_standalone_with_no_rendezvous() -> None:
    text = _render("cpu-1node-apptainer")
    assert "--standalone" in text
    assert "MASTER_ADDR" not in text and "--nnodes" not in text
    assert "--nv" not in text  # a CPU job


# ---- choosing the launcher --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pyxis", "apptainer", "expected"),
    [
        (True, True, Launcher.PYXIS),
        (True, False, Launcher.PYXIS),
        (False, True, Launcher.APPTAINER),
        (False, False, Launcher.CUDABOX),
    ],
)
def test_auto_prefers_pyxis_then_apptainer_then_cudabox(
    pyxis: bool, apptainer: bool, expected: Launcher
) -> None:
    launcher, why = choose_launcher("auto", ClusterFeatures(pyxis=pyxis, apptainer=apptainer))
    assert launcher is expected
    assert "compute nodes are assumed to match" in why


def test_an_explicit_launcher_is_taken_even_if_the_submit_host_lacks_it() -> None:
    assert choose_launcher("apptainer", BARE) == (Launcher.APPTAINER, "asked for with --launcher")


def test_an_unknown_launcher_is_a_usage_error_listing_the_choices() -> None:
    with pytest.raises(UsageError) as caught:
        choose_launcher("docker", BARE)
    assert "auto, pyxis, apptainer, cudabox" in (caught.value.fix or "")


# ---- image references -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "registry", "enroot"),
    [
        ("nvcr.io/nvidia/pytorch:24.01-py3", "nvcr.io", "nvcr.io#nvidia/pytorch:24.01-py3"),
        (
            f"localhost:5000/cudabox/torch@{DIGEST}",
            "localhost:5000",
            f"localhost:5000#cudabox/torch@{DIGEST}",
        ),
        ("localhost/cudabox/torch:1", "localhost", "localhost#cudabox/torch:1"),
        ("docker.io/library/python:3.11", "docker.io", "docker.io#library/python:3.11"),
        ("cudabox/torch-2.13-cpu:latest", None, None),
        ("python:3.11", None, None),
    ],
)
def test_image_references(ref: str, registry: str | None, enroot: str | None) -> None:
    assert registry_of(ref) == registry
    if enroot is None:
        with pytest.raises(UsageError, match="names no registry"):
            enroot_image(ref)
    else:
        assert enroot_image(ref) == enroot


@pytest.mark.parametrize("launcher", [Launcher.PYXIS, Launcher.APPTAINER])
def test_a_local_only_image_cannot_go_through_a_container_plugin(launcher: Launcher) -> None:
    with pytest.raises(UsageError) as caught:
        render(CPU_TRAIN, replace(CPU_OPTIONS, launcher=launcher))
    assert "--launcher cudabox" in (caught.value.fix or "")


# ---- refused inputs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "options", "phrase"),
    [
        (CPU_TRAIN, replace(CPU_OPTIONS, partition="gpu a100"), "--partition"),
        (CPU_TRAIN, replace(CPU_OPTIONS, output="my log.txt"), "--output"),
        (CPU_TRAIN, replace(CPU_OPTIONS, sbatch_args=("--mem 0",)), "one --flag[=value] word"),
        (CPU_TRAIN, replace(CPU_OPTIONS, env={"1BAD": "x"}), "not a shell name"),
        (CPU_TRAIN, replace(CPU_OPTIONS, cpus_per_task=0), "--cpus-per-task"),
        (CPU_TRAIN, replace(CPU_OPTIONS, rdzv_port=70000), "not a TCP port"),
        (replace(CPU_TRAIN, out_dir="runs/torch"), CPU_OPTIONS, "not an absolute path"),
        (
            replace(CPU_TRAIN, image_ref=GPU_REF),
            replace(CPU_OPTIONS, launcher=Launcher.PYXIS, run_args=("--no-build",)),
            "but the launcher is pyxis",
        ),
    ],
)
def test_refused(spec: JobSpec, options: SbatchOptions, phrase: str) -> None:
    with pytest.raises(UsageError) as caught:
        render(spec, options)
    assert phrase in caught.value.message


def test_the_golden_of_a_two_node_cpu_job_reads_as_documented() -> None:
    """The script in the report and the docs, word for word."""
    expected = textwrap.dedent(
        """\
        srun --ntasks-per-node=1 --kill-on-bad-exit=1 \\
            cudabox run --image cudabox/torch-2.13-cpu:latest --nnodes 2 --nproc-per-node 1 \
--rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv-id "$SLURM_JOB_ID" --cpu --shm-size 4g \
--mount /shared/runs/torch:/shared/runs/torch -- python -m cudabox.workloads.torch_smoke \
--out /shared/runs/torch
        """
    )
    assert (GOLDENS / "cpu-2node-cudabox.sh").read_text().endswith(expected)
