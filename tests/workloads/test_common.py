"""The framework-free parts of the workloads: options, atomic files, throughput, the verdict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import IO

import pytest
from workload_harness import subprocess_env

from cudabox.errors import UsageError
from cudabox.workloads import common, main, module_for


def test_importing_the_package_imports_no_framework() -> None:
    code = "import sys, cudabox.workloads, cudabox.workloads.common; print(sorted({'torch', 'tensorflow', 'numpy'} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        check=True,
    )
    assert out.stdout.strip() == "[]"


def test_defaults() -> None:
    config = common.parse_config("torch", [])
    assert (config.steps, config.batch_size, config.workers, config.device) == (300, 256, 2, "auto")
    assert config.out == Path("runs/torch") and config.metrics == Path("runs/torch/metrics.json")
    assert common.parse_config("tensorflow", []).out == Path("runs/tensorflow")
    assert common.parse_config("torch", ["--out", "runs/x"]).metrics == Path("runs/x/metrics.json")


@pytest.mark.parametrize(
    "argv",
    [
        ["--steps", "0"],
        ["--batch-size", "0"],
        ["--lr", "-1"],
        ["--workers", "-1"],
        ["--threads", "-1"],
        ["--checkpoint-every", "0"],
    ],
)
def test_out_of_range_options_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(UsageError):
        common.parse_config("torch", argv)


def test_main_returns_exit_codes_instead_of_raising(capsys: pytest.CaptureFixture[str]) -> None:
    assert common.run("torch", lambda *_: 0, ["--steps", "0"]) == 2
    assert "--steps must be at least 1" in capsys.readouterr().err
    assert common.run("torch", lambda *_: 0, ["--no-such-option"]) == 2
    assert common.run("torch", lambda *_: 7, []) == 7


def test_unknown_framework() -> None:
    with pytest.raises(UsageError, match="no smoke workload for framework 'jax'") as caught:
        module_for("jax")
    assert caught.value.fix == "pick one of: torch, tensorflow"
    with pytest.raises(UsageError):
        main("jax", [])


def test_check_resume_names_each_difference(tmp_path: Path) -> None:
    config = common.parse_config("torch", ["--seed", "3"])
    common.check_resume(config, config.trajectory(), tmp_path)  # same options: fine
    saved = {**config.trajectory(), "seed": 1, "steps": 50}
    with pytest.raises(UsageError, match=r"steps=50 \(now 300\), seed=1 \(now 3\)"):
        common.check_resume(config, saved, tmp_path)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "ckpt"
    common.atomic_write(target, lambda f: f.write(b"old"))

    def broken(handle: IO[bytes]) -> None:
        handle.write(b"half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        common.atomic_write(target, broken)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temp file left behind


def test_throughput_excludes_warmup_steps() -> None:
    meter = common.Throughput(first_step=0, last_step=100, batch_size=10)
    assert meter.from_step == 10
    meter.begin(now=5.0)  # the first 10 steps took 5 s (compilation, say)
    meter.finish(steps_done=100, now=14.0)  # then 90 steps in 9 s
    assert meter.samples_per_s == pytest.approx(100.0)


def test_throughput_is_none_when_too_few_steps() -> None:
    meter = common.Throughput(first_step=0, last_step=1, batch_size=10)
    meter.finish(steps_done=1, now=1.0)
    assert meter.samples_per_s is None


def test_verdict_needs_both_loss_and_accuracy() -> None:
    config = common.parse_config("torch", [])
    assert common.verdict(config, 0.1, 0.95)[0]
    assert not common.verdict(config, 0.5, 0.95)[0]
    assert not common.verdict(config, 0.1, 0.5)[0]


def test_batches_cover_each_epoch_once() -> None:
    per_epoch = common.TRAIN_SIZE // 256
    positions = [common.batch_position(step, 256) for step in range(2 * per_epoch)]
    assert positions[0] == (0, 0) and positions[per_epoch] == (1, 0)
    assert {offset for epoch, offset in positions if epoch == 0} == set(
        range(0, per_epoch * 256, 256)
    )
