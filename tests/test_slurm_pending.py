"""A Slurm job that can never start is cancelled with exit 4, not waited on forever.

The verdict (`jobs.pending.judge`) is checked on every reason of data/slurm_pending.toml and on
reasons it must leave alone; the whole path runs against the real one-machine Slurm of
tests/slurm_cluster.py (more nodes than the partition has, more time than its MaxTime); fakes of
scontrol only stand in for what that cluster cannot show on demand (nodes an admin took away).
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from cudabox import slurm as adapter
from cudabox.errors import DataError, ExitCode, Unavailable
from cudabox.jobs.pending import (
    JobRequest,
    PartitionOffer,
    judge,
    load_pending_rules,
    parse_pending_rules,
    split_reason,
)

if TYPE_CHECKING:
    from slurm_cluster import SlurmCluster

pytest_plugins = ["slurm_cluster"]
ROOT = Path(__file__).resolve().parents[1]
RULES = load_pending_rules()

ASKS_3 = JobRequest("77", "debug", 3, "UNLIMITED", None)
DEBUG = PartitionOffer("debug", 2, None, None, None, "UP", (("idle", 2),))
SHORT = PartitionOffer("short", 2, 1, "00:01:00", 60, "UP", (("idle", 2),))


# ---- the verdict, on every reason ---------------------------------------------------------------

# Decided here, independently of the data file, so that a row flipped by mistake fails.
HOPELESS = {
    "PartitionNodeLimit",
    "PartitionTimeLimit",
    "NodeDown",
    "BadConstraints",
    "InvalidAccount",
    "InvalidQOS",
    "AssocMaxNodePerJobLimit",
    "QOSMaxNodePerJobLimit",
    "QOSMaxWallDurationPerJobLimit",
    "AssocMaxWallDurationPerJobLimit",
    "DependencyNeverSatisfied",
}
WAITS = {
    "Resources",
    "Priority",
    "Dependency",
    "BeginTime",
    "Reservation",
    "JobHeldAdmin",
    "JobHeldUser",
    "PartitionDown",
    "AssocGrpNodeLimit",
    "QOSGrpNodeLimit",
    "QOSMaxNodePerUserLimit",
    "WaitingForScheduling",  # not in the table: Slurm has not decided yet
    "SomeReasonOfANewerSlurm",  # unknown reasons wait
}


@pytest.mark.parametrize("reason", sorted(RULES.by_reason), ids=str)
def test_every_reason_in_the_table_gets_its_verdict(reason: str) -> None:
    rule = RULES.by_reason[reason]
    # The strongest case for each condition: the job asks for more than the partition has, and
    # Slurm names the nodes it lacks.
    text = reason + (",_UnavailableNodes:vm" if rule.when == "unavailable_nodes" else "")
    stuck = judge(text, ASKS_3, DEBUG)
    if rule.verdict == "wait":
        assert stuck is None
        assert reason not in HOPELESS
        return
    assert stuck is not None
    assert reason not in WAITS
    assert stuck.rule is rule
    assert f"PENDING ({reason}" in stuck.message and "job 77 can never start" in stuck.message
    assert stuck.fix.endswith("--wait-pending keeps waiting (if an admin will change the limit)")
    if rule.limit in ("nodes", "time", "nodes_down"):
        assert "partition debug has 2 nodes (2 idle)" in stuck.message


@pytest.mark.parametrize("reason", sorted(HOPELESS), ids=str)
def test_reasons_that_never_clear_are_hopeless(reason: str) -> None:
    assert judge(reason, ASKS_3, DEBUG) is not None


@pytest.mark.parametrize("reason", sorted(WAITS), ids=str)
def test_reasons_that_clear_by_themselves_keep_waiting(reason: str) -> None:
    assert judge(reason, ASKS_3, DEBUG) is None


def test_no_reason_keeps_waiting() -> None:
    assert judge(None, ASKS_3, DEBUG) is None
    assert judge("", ASKS_3, DEBUG) is None


def test_a_job_sent_to_several_partitions_keeps_waiting() -> None:
    """Slurm shows one partition's reason; another partition of the list may still run it."""
    several = JobRequest("77", "debug,big", 3, None, None)
    assert judge("PartitionNodeLimit", several, None) is None
    assert judge("PartitionNodeLimit", ASKS_3, None) is not None  # without the figures, too


def test_nodes_not_available_are_hopeless_only_when_slurm_names_them() -> None:
    assert judge("ReqNodeNotAvail,_UnavailableNodes:", ASKS_3, DEBUG) is None  # in use, reserved
    assert judge("ReqNodeNotAvail,_Reserved_for_maintenance", ASKS_3, DEBUG) is None
    stuck = judge("ReqNodeNotAvail,_UnavailableNodes:gpu[01-02]", ASKS_3, DEBUG)
    assert stuck is not None
    assert "(ReqNodeNotAvail, UnavailableNodes:gpu[01-02])" in stuck.message
    assert "admins" in stuck.fix and "sinfo -R" in stuck.fix
    assert split_reason("ReqNodeNotAvail,_UnavailableNodes:n1") == (
        "ReqNodeNotAvail",
        "UnavailableNodes:n1",
    )


def test_partition_config_is_hopeless_only_beyond_the_partitions_size() -> None:
    # Slurm 22.05 says PartitionConfig for --nodes=3 on a partition of 2 nodes.
    stuck = judge("PartitionConfig", ASKS_3, DEBUG)
    assert stuck is not None and "ask for at most 2 nodes (--nodes 2)" in stuck.fix
    fits = JobRequest("77", "debug", 2, "00:10:00", 600)
    assert judge("PartitionConfig", fits, DEBUG) is None  # "not available now": it may clear
    assert judge("PartitionConfig", ASKS_3, None) is None  # not confirmed without the figures
    too_long = JobRequest("77", "short", 1, "00:05:00", 300)
    stuck = judge("PartitionConfig", too_long, SHORT)
    assert stuck is not None and "--time 00:01:00" in stuck.fix
    assert judge("PartitionConfig", JobRequest("77", "short", 1, "UNLIMITED", None), SHORT) is None


def test_the_fix_names_the_partitions_figures() -> None:
    nodes = judge("PartitionNodeLimit", JobRequest("5", "short", 2, "00:01:00", 60), SHORT)
    assert nodes is not None
    assert "MaxNodes 1, MaxTime 00:01:00" in nodes.message
    assert "ask for at most 1 node (--nodes 1)" in nodes.fix and "sinfo -s" in nodes.fix
    time_ = judge("PartitionTimeLimit", JobRequest("5", "short", 1, "00:05:00", 300), SHORT)
    assert time_ is not None
    assert "time limit 00:05:00 in partition short" in time_.message
    assert "ask for at most 00:01:00 (--time 00:01:00)" in time_.fix
    # Enough nodes in the partition, but some are down: say how many can take a job.
    half_down = PartitionOffer("debug", 2, None, None, None, "UP", (("idle", 1), ("down*", 1)))
    down = judge("PartitionNodeLimit", JobRequest("5", "debug", 2, None, None), half_down)
    assert down is not None
    assert "only 1 node of debug can take a job now" in down.fix and "--nodes 1" in down.fix
    # A QOS's node limit is not the partition's: no partition figure in the fix.
    qos = judge("QOSMaxNodePerJobLimit", ASKS_3, DEBUG)
    assert qos is not None and "sacctmgr show qos" in qos.fix and "--nodes 2" not in qos.fix


# ---- the data file ------------------------------------------------------------------------------

GOOD_ROW = """
[[reason]]
reason = "PartitionNodeLimit"
verdict = "hopeless"
when = "always"
limit = "nodes"
meaning = "m"
source = "s"
"""


@pytest.mark.parametrize(
    ("edit", "complaint"),
    [
        (('limit = "nodes"', 'limit = "nodes"\ncolour = "red"'), "unknown key 'colour'"),
        (('when = "always"', 'when = "-"'), "a hopeless row needs a when and a limit"),
        (('verdict = "hopeless"', 'verdict = "maybe"'), "verdict must be one of"),
        (('source = "s"', 'source = "nowhere"'), "cites unknown source 'nowhere'"),
        (("schema = 1", "schema = 2"), "schema must be 1"),
        (("[[reason]]", "[[reasons]]"), "unknown top-level key 'reasons'"),
        ((GOOD_ROW, GOOD_ROW + GOOD_ROW), "PartitionNodeLimit has a row already"),
    ],
)
def test_the_table_refuses_what_it_does_not_know(edit: tuple[str, str], complaint: str) -> None:
    text = 'schema = 1\n[sources]\ns = "a source"\n' + GOOD_ROW
    assert parse_pending_rules(text).get("PartitionNodeLimit") is not None
    with pytest.raises(DataError, match=re.escape(complaint)):
        parse_pending_rules(text.replace(*edit))


def _libslurm() -> Path | None:
    for pattern in ("/usr/lib/*/slurm-wlm/libslurmfull.so", "/usr/lib*/slurm/libslurmfull.so"):
        found = sorted(Path("/").glob(pattern.lstrip("/")))
        if found:
            return found[0]
    return None


def test_every_reason_is_spelled_as_the_installed_slurm_prints_it() -> None:
    """The codes are compared with the strings compiled into Slurm's own library, so that a
    misspelt row (which would never match) fails here."""
    library = _libslurm()
    if library is None:
        pytest.skip("Slurm's libslurmfull.so is not installed here")
    strings = set(re.findall(rb"[A-Za-z]{4,}", library.read_bytes()))
    unknown = [
        rule.reason
        for rule in RULES.by_reason.values()
        if rule.source != "limits"  # a spelling only the Resource Limits page uses
        and rule.reason.encode() not in strings
    ]
    assert unknown == []


# ---- the adapter's reading ------------------------------------------------------------------------

# Recorded from the test cluster (Slurm 22.05.8): a 3-node job on the 2-node partition.
SHOW_JOB = (
    "JobId=54178 JobName=sbatch UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901759 "
    "Nice=0 Account=(null) QOS=(null) JobState=PENDING Reason=PartitionConfig Dependency=(null) "
    "Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:00:00 TimeLimit=UNLIMITED "
    "TimeMin=N/A Partition=debug AllocNode:Sid=vm:4470 ReqNodeList=(null) ExcNodeList=(null) "
    "NodeList= NumNodes=3-3 NumCPUs=3 NumTasks=3 CPUs/Task=1 StdOut=/tmp/x.log Power="
)
SHOW_PARTITION = (
    "PartitionName=short AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=NO "
    "QoS=N/A DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=0 Hidden=NO "
    "MaxNodes=1 MaxTime=00:01:00 MinNodes=1 LLN=NO MaxCPUsPerNode=UNLIMITED Nodes=127.0.0.1,vm "
    "State=UP TotalCPUs=4 TotalNodes=2 SelectTypeParameters=NONE"
)


def test_the_adapter_reads_what_the_job_asks_and_the_partition_offers() -> None:
    job = adapter.parse_job(SHOW_JOB, "54178")
    assert (job.partition, job.nodes, job.reason) == ("debug", 3, "PartitionConfig")
    assert job.request == JobRequest("54178", "debug", 3, "UNLIMITED", None)
    timed = adapter.parse_job(SHOW_JOB.replace("UNLIMITED", "1-00:00:00"), "54178")
    assert timed.request.time_limit_s == 86400
    offer = adapter.parse_partition(SHOW_PARTITION, "short")
    assert offer == PartitionOffer("short", 2, 1, "00:01:00", 60, "UP")
    unlimited = SHOW_PARTITION.replace("MaxNodes=1", "MaxNodes=UNLIMITED").replace(
        "MaxTime=00:01:00", "MaxTime=UNLIMITED"
    )
    assert adapter.parse_partition(unlimited, "short").max_nodes is None
    assert adapter.parse_partition(unlimited, "short").max_time is None
    assert adapter.parse_node_states("1 idle\n1 down*\n1 idle\n") == (("idle", 2), ("down*", 1))
    with pytest.raises(Unavailable):
        adapter.parse_partition("PartitionName=short", "short")


# ---- fakes: nodes an admin took away, a cancel that does not take ----------------------------------


def _fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reason: str, scancel: str) -> Path:
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    job = SHOW_JOB.replace("Reason=PartitionConfig", f"Reason={reason}").replace(
        "NumNodes=3-3", "NumNodes=2-2"
    )
    scripts = {
        "scontrol": f"""\
            if [ "$2" = partition ]; then
              echo "{SHOW_PARTITION.replace("short", "debug").replace("MaxNodes=1", "MaxNodes=UNLIMITED")}"
            else
              echo "{job}"
            fi
            """,
        "sinfo": 'echo "1 idle"; echo "1 drained"',
        "scancel": f'echo "$1" >> {tmp_path}/cancelled\n{scancel}',
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text("#!/bin/bash\n" + "\n".join(line.strip() for line in body.splitlines()))
        path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return tmp_path / "cancelled"


def test_a_job_on_drained_nodes_is_cancelled_and_says_which(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cancelled = _fake_slurm(tmp_path, monkeypatch, "ReqNodeNotAvail,_UnavailableNodes:vm", "")
    with pytest.raises(Unavailable) as caught:
        adapter.follow("54178", tmp_path / "x.log", poll_s=0.1)
    assert cancelled.read_text() == "54178\n"
    message = caught.value.message
    assert "(ReqNodeNotAvail, UnavailableNodes:vm)" in message
    assert "partition debug has 2 nodes (1 idle, 1 drained)" in message
    assert message.endswith("cudabox cancelled it")
    assert caught.value.exit_code is ExitCode.UNAVAILABLE


def test_a_cancel_that_does_not_take_is_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_slurm(
        tmp_path,
        monkeypatch,
        "PartitionNodeLimit",
        'echo "scancel: error: Access denied" >&2; exit 1',
    )
    with pytest.raises(Unavailable) as caught:
        adapter.follow("54178", tmp_path / "x.log", poll_s=0.1)
    assert "cudabox could not cancel it: run `scancel 54178`" in caught.value.message
    assert "only 1 node of debug can take a job now" in (caught.value.fix or "")


# ---- the real Slurm --------------------------------------------------------------------------------


def cudabox(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent.sock"}  # SLURM_CONF: the fixture's
    return subprocess.Popen(
        [sys.executable, "-m", "cudabox", "run", "--cpu", "--scheduler", "slurm", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def _finish(process: subprocess.Popen[str], timeout: float = 60) -> str:
    """Its stderr once it ends; a cudabox still waiting after `timeout` is killed, and fails."""
    try:
        return process.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        process.kill()
        err = process.communicate()[1]
        pytest.fail(f"cudabox was still waiting after {timeout:.0f} s:\n{err}")


def _queued(slurm: SlurmCluster) -> list[str]:
    result = subprocess.run(
        ["squeue", "--noheader", "--format=%i %T", "--states=PENDING,RUNNING,COMPLETING"],
        env=slurm.env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout.split("\n")[:-1]


def _job_id(stderr: str) -> str:
    match = re.search(r"submitted Slurm job (\d+)", stderr)
    assert match, stderr
    return match.group(1)


def test_more_nodes_than_the_partition_has_is_cancelled_with_exit_4(
    slurm: SlurmCluster, tmp_path: Path
) -> None:
    nodes = len(slurm.nodes)
    started = time.monotonic()
    process = cudabox("--nodes", str(nodes + 1), "--workspace", str(tmp_path), "--", "true")
    err = _finish(process)
    took = time.monotonic() - started

    assert process.returncode == ExitCode.UNAVAILABLE, err
    assert took < 20, f"took {took:.0f} s"
    assert "Traceback" not in err
    # Slurm 22.05 says PartitionConfig when the partition has fewer nodes than asked for.
    assert "can never start: it is PENDING (PartitionConfig)" in err
    assert f"The job asks for {nodes + 1} nodes in partition debug" in err
    assert f"partition debug has {nodes} node" in err
    assert f"(--nodes {nodes})" in err and "--wait-pending" in err
    assert _queued(slurm) == []
    job = adapter.status(_job_id(err))
    assert job is not None and job.state is adapter.JobState.CANCELLED


@pytest.mark.parametrize(
    ("words", "reason", "fix"),
    [
        (("--nodes", "2", "--time", "1"), "PartitionNodeLimit", "(--nodes 1)"),
        (("--nodes", "1", "--time", "00:05:00"), "PartitionTimeLimit", "(--time 00:01:00)"),
    ],
    ids=["nodes", "time"],
)
def test_a_request_beyond_the_partitions_limits_is_cancelled(
    slurm: SlurmCluster, tmp_path: Path, words: tuple[str, ...], reason: str, fix: str
) -> None:
    slurm.require_nodes(2)
    with slurm.extra_partition("short", "MaxNodes=1", "MaxTime=1") as name:
        process = cudabox("--partition", name, *words, "--workspace", str(tmp_path), "--", "true")
        err = _finish(process)
        assert process.returncode == ExitCode.UNAVAILABLE, err
        # At submission Slurm 22.05 says PartitionConfig; its next scheduling pass, the limit's
        # own reason. Either is hopeless here.
        assert re.search(rf"it is PENDING \((PartitionConfig|{reason})\)", err), err
        assert "partition short has 2 nodes (2 idle); MaxNodes 1, MaxTime 00:01:00" in err
        assert fix in err
        assert _queued(slurm) == []

        # The limit's own reason, once Slurm has settled on it, through the adapter.
        directives = [f"--partition={name}", f"--nodes={words[1]}", f"--time={words[3]}"]
        script = "#!/bin/bash\n" + "".join(f"#SBATCH {d}\n" for d in directives) + "true\n"
        job_id = adapter.submit(script, workdir=tmp_path)
        deadline = time.monotonic() + 30
        while (job := adapter.status(job_id)) and job.reason == "PartitionConfig":
            assert time.monotonic() < deadline, "Slurm kept saying PartitionConfig"
            time.sleep(0.5)
        assert job is not None and job.reason == reason
        with pytest.raises(Unavailable) as caught:
            adapter.follow(job_id, tmp_path / "none.log", poll_s=0.2)
        assert f"it is PENDING ({reason})" in caught.value.message
        assert fix in (caught.value.fix or "")
        assert _queued(slurm) == []


def test_wait_pending_keeps_waiting_until_interrupted(slurm: SlurmCluster, tmp_path: Path) -> None:
    nodes = len(slurm.nodes)
    process = cudabox(
        "--nodes", str(nodes + 1), "--wait-pending", "--workspace", str(tmp_path), "--", "true"
    )
    assert process.stderr is not None
    seen = ""
    deadline = time.monotonic() + 60
    try:
        while "waiting anyway (--wait-pending)" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([process.stderr], [], [], 1.0)
            if ready:
                line = process.stderr.readline()
                if not line:
                    break
                seen += line
        assert "waiting anyway (--wait-pending)" in seen, seen
        time.sleep(2)  # a few more polls: still following, nothing cancelled
        assert process.poll() is None
        job_id = _job_id(seen)
        assert _queued(slurm) == [f"{job_id} PENDING"]
    finally:
        process.send_signal(signal.SIGINT)
        _, rest = process.communicate(timeout=60)
    assert process.returncode == ExitCode.INTERRUPTED, seen + rest
    assert _queued(slurm) == []


def test_a_job_waiting_for_busy_nodes_is_followed_not_cancelled(
    slurm: SlurmCluster, tmp_path: Path
) -> None:
    """Resources (every node taken by another job) clears by itself: cudabox keeps following
    until it is told to stop."""
    blocker = adapter.submit(
        "#!/bin/bash\n#SBATCH --nodes=1-9\n#SBATCH --exclusive\nsleep 120\n", workdir=tmp_path
    )
    try:
        deadline = time.monotonic() + 30
        while (job := adapter.status(blocker)) and job.state is not adapter.JobState.RUNNING:
            assert time.monotonic() < deadline, f"the blocking job did not start: {job}"
            time.sleep(0.3)
        waiting = adapter.submit("#!/bin/bash\n#SBATCH --exclusive\ntrue\n", workdir=tmp_path)
        timer = threading.Timer(4.0, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        try:
            result = adapter.follow(waiting, tmp_path / "none.log", poll_s=0.3)
        finally:
            timer.cancel()
        assert result.cancelled_on == "SIGINT"  # not cancelled for its reason
        assert result.reason in ("Resources", "Priority"), result
    finally:
        adapter.cancel(blocker)
    deadline = time.monotonic() + 30  # the blocker's sleep is killed: COMPLETING for a moment
    while _queued(slurm) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert _queued(slurm) == []
