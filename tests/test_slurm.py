"""The Slurm adapter against a real one-machine Slurm, and fakes of Slurm's commands for the
failures a real cluster cannot be made to show on demand (no client, a controller away, a job
forgotten, a time limit hit)."""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from cudabox import slurm as adapter
from cudabox.errors import CudaboxError, ExitCode, Unavailable, UsageError
from cudabox.images.catalog import load_catalog
from cudabox.jobs.sbatch import Launcher, SbatchOptions, render
from cudabox.jobs.spec import JobSpec

if TYPE_CHECKING:
    from slurm_cluster import SlurmCluster

pytest_plugins = ["slurm_cluster"]  # the `slurm` and `slurm_cluster` fixtures
VENV_BIN = Path(sys.executable).parent  # the test environment: python, torchrun


def _job(body: str, *directives: str) -> str:
    lines = ["#!/bin/bash", *(f"#SBATCH {d}" for d in directives), textwrap.dedent(body)]
    return "\n".join(lines) + "\n"


def _follow(job_id: str, log: Path) -> tuple[adapter.JobResult, bytes]:
    out = io.BytesIO()
    result = adapter.follow(job_id, log, out=out, poll_s=0.3)
    return result, out.getvalue()


# ---- a real cluster ---------------------------------------------------------------------------


def test_detect_finds_the_local_slurm_without_container_plugins(slurm: SlurmCluster) -> None:
    features = adapter.detect()
    assert features.slurm_version and features.slurm_version[0].isdigit()
    assert features.pyxis is False  # Debian's Slurm has no pyxis
    assert features.apptainer is (shutil.which("apptainer") is not None)


def test_a_two_node_job_runs_one_task_per_node_and_streams_its_log(
    slurm: SlurmCluster, tmp_path: Path
) -> None:
    slurm.require_nodes(2)
    log = tmp_path / "job.log"
    script = _job(
        "srun bash -c 'echo \"task $SLURM_PROCID on $SLURMD_NODENAME\"'",
        "--job-name=two-tasks",
        "--nodes=2",
        "--ntasks-per-node=1",
        f"--output={log}",
    )
    job_id = adapter.submit(script, workdir=tmp_path)
    result, streamed = _follow(job_id, log)

    assert result.ok, result
    assert result.state is adapter.JobState.COMPLETED
    assert (result.exit_code, result.signal) == (0, 0)
    assert result.nodes == slurm.nodes[:2]
    assert result.log_path == log
    assert result.elapsed_s >= 0
    lines = sorted(streamed.decode().splitlines())
    assert lines == [f"task 0 on {slurm.nodes[0]}", f"task 1 on {slurm.nodes[1]}"]
    adapter.require_success(result)  # does not raise


ALL_REDUCE = """\
import json, os, socket
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
value = torch.tensor([float(rank + 1)])
dist.all_reduce(value)
with open(f"rank{rank}.json", "w") as out:
    json.dump({"rank": rank, "world_size": world, "sum": value.item(),
               "node": os.environ.get("SLURMD_NODENAME")}, out)
dist.destroy_process_group()
print(f"rank {rank}/{world}: all_reduce gives {value.item()}")
"""

# Stands in for Apptainer, which cannot be installed here: drops `exec`, the container options
# and the image, and runs the program on the node's own Python (the test environment).
FAKE_APPTAINER = """\
#!/bin/bash
[ "$1" = exec ] || { echo "fake apptainer: only exec" >&2; exit 2; }
shift
while [ $# -gt 0 ]; do
  case "$1" in
    --nv) shift ;;
    --bind|--pwd) shift 2 ;;
    docker://*) shift; break ;;
    *) echo "fake apptainer: unexpected $1" >&2; exit 2 ;;
  esac
done
echo "$*" > "apptainer-argv.$SLURM_PROCID"
exec "$@"
"""


def test_the_rendered_script_runs_torchrun_with_gloo_on_two_nodes(
    slurm: SlurmCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole rendered script for real: one task per node, MASTER_ADDR from the allocation,
    the c10d rendezvous on the first node, an all_reduce across both. Only the container
    runtime is a stand-in; the image is not used."""
    slurm.require_nodes(2)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "apptainer"
    fake.write_text(FAKE_APPTAINER)
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{VENV_BIN}:{os.environ['PATH']}")
    (tmp_path / "all_reduce.py").write_text(ALL_REDUCE)
    spec = JobSpec(
        name="cudabox-gloo",
        image=load_catalog().get("torch-2.13-cpu"),
        image_ref="localhost:5000/cudabox/torch-2.13-cpu:latest",
        program=("python", "all_reduce.py"),
        nodes=2,
        env={"GLOO_SOCKET_IFNAME": "lo"},  # the two "nodes" talk over loopback
    )
    log = tmp_path / "gloo.log"
    script = render(spec, SbatchOptions(launcher=Launcher.APPTAINER, output=str(log)))

    job_id = adapter.submit(script, workdir=tmp_path)
    result, streamed = _follow(job_id, log)

    assert result.ok, "\n".join(result.log_tail)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["sum"] for r in ranks] == [3.0, 3.0]  # 1 + 2: both ranks took part
    assert {r["node"] for r in ranks} == set(slurm.nodes[:2])  # one task on each node
    assert b"all_reduce gives 3.0" in streamed
    port = 20000 + int(job_id) % 10000  # derived from the job id
    assert f"rendezvous at {slurm.nodes[0]}:{port}".encode() in streamed
    for task in (0, 1):  # both nodes met at the first node of the allocation
        argv = (tmp_path / f"apptainer-argv.{task}").read_text().split()
        assert f"--rdzv-endpoint={slurm.nodes[0]}:{port}" in argv
        assert f"--rdzv-id={job_id}" in argv


@pytest.mark.docker
def test_the_cudabox_fallback_runs_gloo_in_the_cpu_image_on_two_nodes(
    slurm: SlurmCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    docker_engine: Any,
    catalog_image: Any,
) -> None:
    """Every node runs `cudabox run` with the rendezvous flags: two containers, host networking,
    an all_reduce across them; none is left afterwards (conftest's docker_engine checks the
    cudabox.test label)."""
    slurm.require_nodes(2)
    catalog_image("torch-2.13-cpu")
    monkeypatch.setenv("PATH", f"{VENV_BIN}:{os.environ['PATH']}")  # cudabox on the nodes
    (tmp_path / "all_reduce.py").write_text(ALL_REDUCE)
    spec = JobSpec(
        name="cudabox-fallback",
        image=load_catalog().get("torch-2.13-cpu"),
        image_ref="torch-2.13-cpu",
        program=("python", "all_reduce.py"),  # in /workspace: the job's folder
        nodes=2,
        env={"GLOO_SOCKET_IFNAME": "lo"},
    )
    log = tmp_path / "fallback.log"
    # cudabox run asks for memlock=-1 for multi-process runs; where the host's hard limit is
    # lower (this machine: 8 MiB), runc refuses it, so ask for what the host allows.
    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    memlock = -1 if hard == resource.RLIM_INFINITY else hard
    label = f"cudabox.test.slurm={tmp_path.name}"  # this test's containers, not a neighbour's
    options = SbatchOptions(
        launcher=Launcher.CUDABOX,
        output=str(log),
        run_args=(
            *("--no-build", "--label", "cudabox.test=1", "--label", label),
            *("--ulimit", f"memlock={memlock}"),
        ),
    )
    result, streamed = _follow(adapter.submit(render(spec, options), workdir=tmp_path), log)

    assert result.ok, "\n".join(result.log_tail)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["world_size"], r["sum"]) for r in ranks] == [(2, 3.0), (2, 3.0)]
    assert streamed.count(b"all_reduce gives 3.0") == 2
    assert not docker_engine.containers.list(all=True, filters={"label": label})


@pytest.mark.docker
def test_cancelling_a_fallback_job_leaves_no_container(
    slurm: SlurmCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    docker_engine: Any,
    catalog_image: Any,
) -> None:
    """Docker containers live outside the job's processes, so Slurm cannot kill them: Ctrl-C
    while following -> scancel -> SIGTERM to `cudabox run` on every node -> it stops and
    removes its container."""
    slurm.require_nodes(2)
    catalog_image("torch-2.13-cpu")
    monkeypatch.setenv("PATH", f"{VENV_BIN}:{os.environ['PATH']}")
    (tmp_path / "wait.py").write_text(
        "import time\nprint('waiting', flush=True)\ntime.sleep(600)\n"
    )
    spec = JobSpec(
        name="cudabox-cancel",
        image=load_catalog().get("torch-2.13-cpu"),
        image_ref="torch-2.13-cpu",
        program=("python", "wait.py"),
        nodes=2,
    )
    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    memlock = -1 if hard == resource.RLIM_INFINITY else hard
    label = f"cudabox.test.slurm={tmp_path.name}"
    options = SbatchOptions(
        launcher=Launcher.CUDABOX,
        output=str(tmp_path / "cancel.log"),
        run_args=(
            "--no-build",
            "--label",
            "cudabox.test=1",
            "--label",
            label,
            "--ulimit",
            f"memlock={memlock}",
        ),
    )

    def ours() -> list[Any]:
        return list(docker_engine.containers.list(all=True, filters={"label": label}))

    def interrupt_once_both_run() -> None:
        deadline = time.monotonic() + 180
        while len(ours()) < 2 and time.monotonic() < deadline:
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGINT)

    job_id = adapter.submit(render(spec, options), workdir=tmp_path)
    watcher = threading.Thread(target=interrupt_once_both_run, daemon=True)
    watcher.start()
    result, _ = _follow(job_id, tmp_path / "cancel.log")
    watcher.join()

    assert result.state is adapter.JobState.CANCELLED
    assert result.cancelled_on == "SIGINT"
    deadline = time.monotonic() + 60  # Slurm's KillWait is 30 s; cudabox run needs far less
    while ours() and time.monotonic() < deadline:
        time.sleep(1)
    assert ours() == []


def test_a_failing_job_is_an_error_with_its_exit_code_and_log_tail(
    slurm: SlurmCluster, tmp_path: Path
) -> None:
    log = tmp_path / "fail.log"
    script = _job('echo "loading data"\necho "boom: no such file" >&2\nexit 3', f"--output={log}")
    result, _ = _follow(adapter.submit(script, workdir=tmp_path), log)

    assert result.state is adapter.JobState.FAILED
    assert result.exit_code == 3
    assert result.log_tail[-1] == "boom: no such file"
    with pytest.raises(CudaboxError) as caught:
        adapter.require_success(result)
    assert caught.value.exit_code is ExitCode.FAILED
    assert "FAILED" in caught.value.message and "exit code 3" in caught.value.message
    assert "boom: no such file" in caught.value.message
    assert str(log) in (caught.value.fix or "")


@pytest.mark.parametrize(
    "signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name
)
def test_a_signal_while_following_cancels_the_job(
    slurm: SlurmCluster,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    signum: signal.Signals,
) -> None:
    log = tmp_path / "sleep.log"
    script = _job("echo started\nsleep 120", f"--output={log}")
    job_id = adapter.submit(script, workdir=tmp_path)
    before = signal.getsignal(signum)
    timer = threading.Timer(2.0, os.kill, (os.getpid(), signum))
    timer.start()
    try:
        result, _ = _follow(job_id, log)
    finally:
        timer.cancel()

    assert result.state is adapter.JobState.CANCELLED
    assert result.cancelled_on == signum.name
    assert f"{signum.name}: cancelling Slurm job {job_id}" in capsys.readouterr().err
    assert adapter.status(job_id).state is adapter.JobState.CANCELLED  # type: ignore[union-attr]
    assert signal.getsignal(signum) is before  # the handlers are put back
    with pytest.raises(adapter.Interrupted) as caught:
        adapter.require_success(result)
    assert caught.value.exit_code is ExitCode.INTERRUPTED


def test_sbatch_refusing_a_job_shows_its_own_message(slurm: SlurmCluster, tmp_path: Path) -> None:
    with pytest.raises(UsageError) as caught:
        adapter.submit(_job("true", "--partition=no-such-partition"), workdir=tmp_path)
    assert "Invalid partition name specified" in caught.value.message
    assert "sinfo" in (caught.value.fix or "")


def test_a_client_without_its_cluster_configuration_is_unavailable(
    slurm: SlurmCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "slurm.conf"
    broken.write_text("")
    monkeypatch.setenv("SLURM_CONF", str(broken))
    with pytest.raises(Unavailable) as caught:
        adapter.detect()
    assert "cannot find its cluster" in caught.value.message
    assert "ClusterName needs to be specified" in caught.value.message  # sbatch's own words
    assert "SLURM_CONF" in (caught.value.fix or "")


def test_a_missing_slurm_conf_is_refused_without_slurms_minute_of_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "missing" / "slurm.conf"))
    with pytest.raises(Unavailable, match="which does not exist"):
        adapter.detect()


# ---- fakes: what a real cluster cannot be made to do here -------------------------------------


def _fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **scripts: str) -> Path:
    """Put fake Slurm commands first on PATH; each is a bash body."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text("#!/bin/bash\n" + textwrap.dedent(body))
        path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return bin_dir


def test_a_host_without_sbatch_is_told_where_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on it
    for call in (adapter.detect, lambda: adapter.submit("#!/bin/bash\ntrue\n")):
        with pytest.raises(Unavailable) as caught:
            call()
        assert "sbatch is not on PATH" in caught.value.message
        fix = caught.value.fix or ""
        assert "login (submit) node" in fix and "apt-get install slurm-client" in fix
        assert caught.value.exit_code is ExitCode.UNAVAILABLE


def test_pyxis_is_found_in_sruns_help(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake(
        tmp_path,
        monkeypatch,
        sbatch='echo "slurm 23.11.4"',
        srun='echo "      --container-image=[USER@][REGISTRY#]IMAGE[:TAG]|PATH"',
    )
    features = adapter.detect()
    assert features.pyxis is True
    assert features.slurm_version == "23.11.4"


def test_an_unreachable_controller_is_unavailable_not_a_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake(
        tmp_path,
        monkeypatch,
        sbatch="""\
        cat > /dev/null
        echo "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)" >&2
        exit 1
        """,
    )
    with pytest.raises(Unavailable) as caught:
        adapter.submit("#!/bin/bash\ntrue\n")
    assert "Unable to contact slurm controller" in caught.value.message


def test_sbatch_warnings_are_passed_on_and_the_cluster_suffix_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake(
        tmp_path,
        monkeypatch,
        sbatch="""\
        cat > "$0.script"
        echo "sbatch: warning: can't honor --ntasks-per-node set to 1" >&2
        echo "4242;cluster-a"
        """,
    )
    assert adapter.submit("#!/bin/bash\necho hi\n") == "4242"
    assert "can't honor" in capsys.readouterr().err
    assert (tmp_path / "fakebin" / "sbatch.script").read_text() == "#!/bin/bash\necho hi\n"


SHOW_JOB = (
    "JobId=77 JobName=train UserId=u(1) JobState={state} Reason={reason} ExitCode={exit} "
    "RunTime=00:01:02 TimeLimit=00:01:00 NodeList=gpu[01-02] BatchHost=gpu01 "
    "Command=/home/u/my job.sh WorkDir=/home/u StdOut={log}"
)


def _fake_scontrol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *answers: str) -> None:
    """scontrol answering `show job` with `answers` in turn (the last one repeats);
    "INVALID" is Slurm's message for a job it does not know, "DOWN" a controller away."""
    for index, answer in enumerate(answers):
        (tmp_path / f"answer{index}").write_text(answer)
    _fake(
        tmp_path,
        monkeypatch,
        scontrol=f"""\
        if [ "$1 $2" = "show hostnames" ]; then echo gpu01; echo gpu02; exit 0; fi
        count=$(cat {tmp_path}/count 2>/dev/null || echo 0)
        echo $((count + 1)) > {tmp_path}/count
        file={tmp_path}/answer$count
        [ -f "$file" ] || file={tmp_path}/answer{len(answers) - 1}
        if [ "$(cat "$file")" = INVALID ]; then
          echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1
        fi
        if [ "$(cat "$file")" = DOWN ]; then
          echo "slurm_load_jobs error: Unable to contact slurm controller (connect failure)" >&2
          exit 1
        fi
        cat "$file"
        """,
    )


def test_a_job_that_ran_out_of_time_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "train.log"
    log.write_text("step 1\nstep 2\n")
    _fake_scontrol(
        tmp_path,
        monkeypatch,
        SHOW_JOB.format(state="RUNNING", reason="None", exit="0:0", log=log),
        SHOW_JOB.format(state="TIMEOUT", reason="TimeLimit", exit="0:15", log=log),
    )
    result, streamed = _follow("77", log)
    assert result.state is adapter.JobState.TIMEOUT
    assert (result.exit_code, result.signal, result.elapsed_s) == (0, 15, 62)
    assert result.nodes == ("gpu01", "gpu02")
    assert streamed == b"step 1\nstep 2\n"
    with pytest.raises(CudaboxError) as caught:
        adapter.require_success(result)
    assert "ran out of time (it had 00:01:00)" in caught.value.message
    assert "step 2" in caught.value.message
    assert "--time" in (caught.value.fix or "")


def test_following_rides_out_a_controller_that_is_briefly_away(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "train.log"
    _fake_scontrol(
        tmp_path,
        monkeypatch,
        SHOW_JOB.format(state="RUNNING", reason="None", exit="0:0", log=log),
        "DOWN",
        "DOWN",
        SHOW_JOB.format(state="COMPLETED", reason="None", exit="0:0", log=log),
    )
    result, _ = _follow("77", log)
    assert result.ok
    err = capsys.readouterr().err
    assert err.count("Unable to contact slurm controller") == 1  # said once, not per poll
    assert "trying again for 120 s" in err


def test_a_controller_away_for_too_long_is_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_scontrol(tmp_path, monkeypatch, "DOWN")
    monkeypatch.setattr(adapter, "UNREACHABLE_S", 0.5)
    with pytest.raises(Unavailable, match="Unable to contact slurm controller"):
        _follow("77", tmp_path / "train.log")


def test_a_job_forgotten_before_its_end_was_read_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "train.log"
    _fake_scontrol(
        tmp_path,
        monkeypatch,
        SHOW_JOB.format(state="RUNNING", reason="None", exit="0:0", log=log),
        "INVALID",
    )
    with pytest.raises(CudaboxError) as caught:
        _follow("77", log)
    assert "forgot job 77 (last seen RUNNING)" in caught.value.message
    assert "MinJobAge" in caught.value.message and "sacct -j 77" in (caught.value.fix or "")


def test_a_job_slurm_never_knew_is_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_scontrol(tmp_path, monkeypatch, "INVALID")
    with pytest.raises(Unavailable, match="does not know job 77"):
        _follow("77", tmp_path / "none.log")


def test_a_job_cancelled_by_someone_else_is_a_failure_not_an_interruption(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "train.log"
    _fake_scontrol(
        tmp_path,
        monkeypatch,
        SHOW_JOB.format(state="CANCELLED", reason="None", exit="0:15", log=log),
    )
    result, _ = _follow("77", log)
    assert result.cancelled_on is None
    with pytest.raises(CudaboxError) as caught:
        adapter.require_success(result)
    assert type(caught.value) is CudaboxError
    assert "cancelled outside cudabox" in caught.value.message


def test_scontrol_fields_are_read_from_its_one_line_form() -> None:
    line = SHOW_JOB.format(
        state="OUT_OF_MEMORY", reason="OutOfMemory", exit="0:125", log="/runs/slurm-77.log"
    )
    status = adapter.parse_job(line, "77")
    assert status == adapter.JobStatus(
        job_id="77",
        state=adapter.JobState.OUT_OF_MEMORY,
        reason="OutOfMemory",
        exit_code=0,
        signal=125,
        node_list="gpu[01-02]",
        elapsed_s=62,
        time_limit="00:01:00",
        log_path=Path("/runs/slurm-77.log"),
    )
    assert adapter.parse_job(line.replace("OUT_OF_MEMORY", "RESHAPING"), "77").state is (
        adapter.JobState.UNKNOWN
    )
    with pytest.raises(Unavailable):
        adapter.parse_job("JobId=77 JobName=x", "77")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("00:00:00", 0), ("00:01:02", 62), ("1-02:03:04", 93784), ("05:06", 306), ("INVALID", 0)],
)
def test_durations(text: str, seconds: int) -> None:
    assert adapter.parse_duration(text) == seconds


def test_a_second_signal_stops_following_when_the_cancel_did_not_take(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "train.log"
    _fake_scontrol(
        tmp_path, monkeypatch, SHOW_JOB.format(state="RUNNING", reason="None", exit="0:0", log=log)
    )
    _fake(
        tmp_path,
        monkeypatch,
        scancel='echo "scancel: error: Unable to contact slurm controller (connect failure)" >&2; exit 1',
    )
    timers = [threading.Timer(t, os.kill, (os.getpid(), signal.SIGINT)) for t in (0.5, 1.5)]
    for timer in timers:
        timer.start()
    try:
        result, _ = _follow("77", log)
    finally:
        for timer in timers:
            timer.cancel()
    assert result.state is adapter.JobState.RUNNING  # as last seen: nobody could cancel it
    assert result.cancelled_on == "SIGINT"
    err = capsys.readouterr().err
    assert "could not cancel job 77" in err and "run `scancel 77`" in err
    assert "stopping at once" in err


# ---- the fixture's own checks -----------------------------------------------------------------


def test_the_fixture_finds_jobs_and_processes_left_behind(
    slurm: SlurmCluster, tmp_path: Path
) -> None:
    from slurm_cluster import _Daemons, cluster_processes

    # A process that escaped its job: it still carries the cluster's SLURM_CONF.
    stray = subprocess.Popen(["sleep", "100"], env=slurm.env)
    try:
        assert cluster_processes(slurm) == {stray.pid: "sleep 100"}
    finally:
        stray.kill()
        stray.wait()
    job_id = adapter.submit(_job("sleep 100", f"--output={tmp_path / 'x.log'}"), workdir=tmp_path)
    assert _Daemons(slurm).cancel_all() == [job_id]
    assert _Daemons(slurm).cancel_all() == []
