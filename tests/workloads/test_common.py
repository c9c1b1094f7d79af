"""The framework-free parts of the workloads: options, atomic files, throughput, the verdict."""

from __future__ import annotations

import json
import signal
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


# --- sizing ----------------------------------------------------------------------------------

SMALL, LARGE = common.SIZINGS["small"], common.SIZINGS["large"]


def test_large_sizing_only_where_there_are_tensor_cores() -> None:
    assert common.sizing_for("cpu", (0, 0)) == SMALL
    assert common.sizing_for("cuda", (6, 1)) == SMALL  # GTX 1080: fp16 at 1/64 rate
    assert common.sizing_for("cuda", (7, 5)) == LARGE  # T4
    assert common.sizing_for("cuda", (9, 0)) == LARGE  # H100


def test_small_sizing_is_todays_run() -> None:
    config = common.sized(common.parse_config("torch", []), SMALL, replicas=1)
    assert (config.width, config.depth, config.batch_size, config.lr) == (256, 4, 256, 3e-3)
    assert config.train_size == common.TRAIN_SIZE and config.sizing == "small"
    # On CPU the global batch stays put at any world size: the same data for 1 or 2 ranks.
    assert common.sized(common.parse_config("torch", []), SMALL, replicas=2).batch_size == 256


def test_large_sizing_gives_each_gpu_a_large_batch() -> None:
    config = common.sized(common.parse_config("torch", []), LARGE, replicas=1)
    assert (config.width, config.depth, config.batch_size) == (2048, 4, 16384)
    assert config.sizing == "large" and config.train_size == 64 * 16384 and config.lr == 4e-4
    eight = common.sized(common.parse_config("torch", []), LARGE, replicas=8)
    assert eight.batch_size == 8 * 16384
    assert eight.train_size == common.MAX_TRAIN_SIZE  # capped: 1 GiB of features per process


def test_explicit_options_win_over_any_sizing() -> None:
    parsed = common.parse_config("torch", ["--width", "64", "--batch-size", "512", "--lr", "1e-2"])
    assert parsed.explicit == {"width", "batch_size", "lr"}
    config = common.sized(parsed, LARGE, replicas=2)
    assert (config.width, config.depth, config.batch_size, config.lr) == (64, 4, 512, 1e-2)
    assert config.to_json()["explicit"] == ["batch_size", "lr", "width"]


def test_a_batch_that_does_not_split_over_the_ranks_is_refused() -> None:
    with pytest.raises(UsageError, match="does not split evenly over 3 ranks"):
        common.sized(common.parse_config("torch", []), SMALL, replicas=3)
    with pytest.raises(UsageError, match="at most"):
        common.sized(
            common.parse_config("torch", ["--batch-size", str(2 * common.MAX_TRAIN_SIZE)]),
            SMALL,
            replicas=1,
        )


def test_gpu_step_is_matmul_work_not_launches() -> None:
    # Per GPU step: 6 * batch * (Linear weights) FLOPs. 6.6 TFLOP is ~10 ms on an H100 at
    # 700 TFLOP/s, against ~0.2k kernels (~1-2 ms of launches): not launch-bound. The CPU size
    # (1.6 GFLOP a step) would be ~2 us of H100 matmul under the same launches.
    gpu, cpu = LARGE, SMALL
    per_step = common.train_flops_per_sample(gpu.width, gpu.depth) * gpu.batch_size
    assert 6e12 < per_step < 7e12
    assert 1e9 < common.train_flops_per_sample(cpu.width, cpu.depth) * cpu.batch_size < 2e9


def test_train_flops_count_every_linear_weight_of_the_model() -> None:
    torch_smoke = pytest.importorskip("cudabox.workloads.torch_smoke")
    model = torch_smoke.ResidualMLP(48, 3)
    weights = sum(m.weight.numel() for m in model.modules() if type(m).__name__ == "Linear")
    assert common.train_flops_per_sample(48, 3) == 6 * weights


# --- ranks -----------------------------------------------------------------------------------


def test_world_without_torchrun_is_one_process() -> None:
    assert common.World.from_env({}) == common.World(rank=0, local_rank=0, size=1, launched=False)


def test_world_from_torchrun_variables() -> None:
    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    world = common.World.from_env(env)
    assert (world.rank, world.local_rank, world.size, world.launched) == (3, 1, 4, True)
    assert not world.is_main


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORLD_SIZE": "2", "RANK": "0"}, "LOCAL_RANK=None is not a rank"),
        ({"WORLD_SIZE": "two", "RANK": "0", "LOCAL_RANK": "0"}, "WORLD_SIZE='two' is not a rank"),
        ({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"}, "RANK=2 does not fit WORLD_SIZE=2"),
    ],
)
def test_broken_torchrun_variables_are_usage_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        common.World.from_env(env)


def test_ranks_read_disjoint_halves_of_the_same_jitter() -> None:
    world = [common.World(rank=r, size=2, launched=True) for r in range(2)]
    assert [common.shard(256, w) for w in world] == [(0, 128), (128, 256)]
    # A batch up to one chunk is one stream, whoever draws it: ranks slice the same rows.
    chunks = [list(common.jitter_chunks(0, 7, 256, *common.shard(256, w))) for w in world]
    assert chunks[0] == chunks[1] == [(common.stream_seed(0, common.JITTER, 7), 0, 256)]
    # A big batch: each rank draws only the chunks of its own half.
    big = 4 * common.JITTER_CHUNK
    second = list(common.jitter_chunks(0, 7, big, *common.shard(big, world[1])))
    assert [first for _, first, _ in second] == [2 * common.JITTER_CHUNK, 3 * common.JITTER_CHUNK]
    assert len({seed for seed, _, _ in second}) == 2


def test_precision_choice() -> None:
    assert common.choose_precision("auto", "cpu", True, "cpu") == "fp32"
    assert common.choose_precision("auto", "cuda", True, "H100") == "bf16"
    assert common.choose_precision("auto", "cuda", False, "GTX 1080") == "fp16"
    with pytest.raises(UsageError, match="GTX 1080 has no bf16"):
        common.choose_precision("bf16", "cuda", False, "GTX 1080")
    with pytest.raises(UsageError, match="fp16 needs a GPU"):
        common.choose_precision("fp16", "cpu", True, "cpu")


# --- the loop's bookkeeping ------------------------------------------------------------------


class OtherRankGotSigterm(common.Solo):
    """The vote of a rank that saw no signal itself, while another rank got SIGTERM."""

    def __init__(self, from_step: int) -> None:
        super().__init__()
        self.votes = 0
        self.from_step = from_step

    def agree_stop(self, signum: int) -> int:
        self.votes += 1
        return int(signal.SIGTERM) if self.votes >= self.from_step else signum


def make_steps(comms: common.Collectives, saved: list[int]) -> common.Steps:
    config = common.parse_config("torch", ["--steps", "10", "--checkpoint-every", "4", "--quiet"])
    return common.Steps(
        config,
        common.World(),
        common.Log(quiet=True),
        common.StopRequest(),
        comms,
        start_step=0,
        loss_curve=[],
        wait=lambda _loss: None,
        value=float,
        save=saved.append,
    )


def test_steps_checkpoint_when_due_and_run_to_the_end() -> None:
    saved: list[int] = []
    steps = make_steps(common.Solo(), saved)
    stopped = [steps.after_step(1.0) for _ in range(10)]
    assert not any(stopped) and saved == [4, 8] and steps.done == 10
    assert not steps.interrupted


def test_a_stop_agreed_with_another_rank_checkpoints_and_leaves() -> None:
    saved: list[int] = []
    steps = make_steps(OtherRankGotSigterm(from_step=3), saved)
    stopped = [steps.after_step(1.0) for _ in range(3)]
    assert stopped == [False, False, True]
    assert saved == [3]  # the checkpoint of the stop, on this rank 0
    assert steps.interrupted and steps.stop.exit_code == 143


def test_throughput_leaves_checkpoint_time_out() -> None:
    meter = common.Throughput(first_step=0, last_step=100, batch_size=10)
    meter.begin(now=5.0)
    meter.exclude(2.0)  # a checkpoint took 2 s
    meter.finish(steps_done=100, now=16.0)  # 90 steps in 11 s, 9 of them training
    assert meter.samples_per_s == pytest.approx(100.0)


def test_tensorflow_refuses_a_multi_worker_tf_config() -> None:
    tf_smoke = pytest.importorskip("cudabox.workloads.tf_smoke")
    two = {"cluster": {"chief": ["a:2222"], "worker": ["b:2222"]}, "task": {"type": "chief"}}
    with pytest.raises(UsageError, match="one of 2 processes"):
        tf_smoke.refuse_several_processes(common.World(), {"TF_CONFIG": json.dumps(two)})
    one = {"cluster": {"worker": ["a:2222"]}, "task": {"type": "worker", "index": 0}}
    tf_smoke.refuse_several_processes(common.World(), {"TF_CONFIG": json.dumps(one)})
    for broken in ("{", "[1, 2]"):
        with pytest.raises(UsageError, match="not the JSON TensorFlow expects"):
            tf_smoke.refuse_several_processes(common.World(), {"TF_CONFIG": broken})
