"""Slurm, through its commands: the only module that runs sbatch, scontrol, scancel, sinfo and
srun.

The rest of cudabox sees typed values: what the cluster offers (`detect`, `partition`), a job id
(`submit`), the job's final state (`follow`), and errors with a fix (`require_success`). Job states
come from `scontrol show job`, which knows a job until MinJobAge (default 300 s) after it ends; no
accounting database (sacct) is needed. A job pending on a reason that never clears
(`jobs.pending` decides) is cancelled rather than waited on, unless the caller asks to wait.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import BinaryIO

from cudabox.errors import CudaboxError, Interrupted, Unavailable, UsageError
from cudabox.jobs.pending import JobRequest, PartitionOffer, judge, load_pending_rules
from cudabox.jobs.sbatch import ClusterFeatures
from cudabox.output import progress

QUERY_TIMEOUT_S = 30  # one scontrol/scancel call; the controller answers in milliseconds
SUBMIT_TIMEOUT_S = 120  # sbatch waits for the controller's answer, which can be slow when busy
POLL_S = 1.0  # how often follow() asks for the job's state
UNREACHABLE_S = 120.0  # how long follow() rides out a controller it cannot reach
LOG_TAIL_LINES = 20

INSTALL_FIX = (
    "run cudabox on a login (submit) node of the cluster, or install the Slurm client with the "
    "cluster's slurm.conf (Debian/Ubuntu: apt-get install slurm-client); "
    "--dry-run prints the script without Slurm"
)
_UNLIMITED = ("UNLIMITED", "INFINITE", "NONE", "N/A")  # how Slurm prints "no limit"
# Messages from Slurm's commands that mean "no cluster reachable here", not "your job is wrong".
_UNREACHABLE = (
    "Unable to contact slurm controller",
    "Could not establish a configuration source",
    "Socket timed out",
    "Connection refused",
    "Zero Bytes were transmitted",
    "Unable to establish control machine address",
)


class JobState(StrEnum):
    """Slurm's job states (squeue(1), JOB STATE CODES)."""

    PENDING = "PENDING"
    CONFIGURING = "CONFIGURING"
    RUNNING = "RUNNING"
    COMPLETING = "COMPLETING"
    SUSPENDED = "SUSPENDED"
    STOPPED = "STOPPED"
    REQUEUED = "REQUEUED"
    REQUEUE_HOLD = "REQUEUE_HOLD"
    REQUEUE_FED = "REQUEUE_FED"
    RESIZING = "RESIZING"
    RESV_DEL_HOLD = "RESV_DEL_HOLD"
    SIGNALING = "SIGNALING"
    STAGE_OUT = "STAGE_OUT"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    NODE_FAIL = "NODE_FAIL"
    BOOT_FAIL = "BOOT_FAIL"
    DEADLINE = "DEADLINE"
    PREEMPTED = "PREEMPTED"
    REVOKED = "REVOKED"
    SPECIAL_EXIT = "SPECIAL_EXIT"
    UNKNOWN = "UNKNOWN"  # a state this module does not know (a newer Slurm): keep waiting

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL

    @classmethod
    def parse(cls, text: str) -> JobState:
        try:
            return cls(text)
        except ValueError:
            return cls.UNKNOWN


_TERMINAL = frozenset(
    {
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.TIMEOUT,
        JobState.OUT_OF_MEMORY,
        JobState.NODE_FAIL,
        JobState.BOOT_FAIL,
        JobState.DEADLINE,
        JobState.PREEMPTED,
        JobState.REVOKED,
        JobState.SPECIAL_EXIT,
    }
)


@dataclass(frozen=True)
class JobStatus:
    """One look at a job, from `scontrol show job`."""

    job_id: str
    state: JobState
    reason: str | None  # why it is pending or ended ("Resources", "NonZeroExitCode", ...)
    exit_code: int  # the batch script's exit status
    signal: int  # the signal that ended it, 0 if none
    node_list: str | None  # Slurm's compressed form, "n[1-2]"; None while pending
    elapsed_s: int
    time_limit: str | None
    log_path: Path | None  # StdOut, with %j and friends filled in by Slurm
    partition: str | None = None
    nodes: int | None = None  # nodes asked for (the minimum of NumNodes, "2-4" -> 2)

    @property
    def request(self) -> JobRequest:
        """What the job asks for, for judging why it is pending."""
        limit = self.time_limit
        unlimited = limit is None or limit.upper() in _UNLIMITED
        return JobRequest(
            job_id=self.job_id,
            partition=self.partition,
            nodes=self.nodes,
            time_limit=limit,
            time_limit_s=None if unlimited else parse_duration(limit or "") or None,
        )


@dataclass(frozen=True)
class JobResult:
    """How a followed job ended."""

    job_id: str
    state: JobState
    exit_code: int
    signal: int
    nodes: tuple[str, ...]
    elapsed_s: int
    reason: str | None
    time_limit: str | None
    log_path: Path | None
    cancelled_on: str | None = None  # "SIGINT" when cudabox cancelled it on that signal
    log_tail: tuple[str, ...] = field(default=(), compare=False)

    @property
    def ok(self) -> bool:
        return self.state is JobState.COMPLETED and self.exit_code == 0


# ---- what the cluster offers ------------------------------------------------------------------


def detect() -> ClusterFeatures:
    """The submit host's Slurm: refuses a host without one; finds pyxis and Apptainer."""
    conf = os.environ.get("SLURM_CONF")
    if conf and not Path(conf).is_file():
        # Slurm's commands retry a missing SLURM_CONF for a minute before they give up.
        raise Unavailable(
            f"SLURM_CONF names {conf}, which does not exist",
            "point SLURM_CONF at the cluster's slurm.conf, or unset it",
        )
    version = _run([_require("sbatch"), "--version"], QUERY_TIMEOUT_S)
    if version.returncode != 0:
        raise Unavailable(
            f"the Slurm client here cannot find its cluster: {_message(version)}",
            "set SLURM_CONF to the cluster's slurm.conf, or " + INSTALL_FIX,
        )
    words = version.stdout.split()
    srun = _run([_require("srun"), "--help"], QUERY_TIMEOUT_S)
    return ClusterFeatures(
        # pyxis adds its options to srun's own help (a SPANK plugin).
        pyxis=srun.returncode == 0 and "--container-image" in srun.stdout,
        apptainer=shutil.which("apptainer") is not None,
        slurm_version=words[-1] if words else None,
    )


def partition(name: str) -> PartitionOffer:
    """What a partition offers: its size and limits (`scontrol show partition`) and its nodes'
    states (sinfo)."""
    result = _run([_require("scontrol"), "show", "partition", "--oneliner", name], QUERY_TIMEOUT_S)
    if result.returncode != 0:
        raise Unavailable(
            f"scontrol could not show partition {name}: {_message(result)}",
            "`sinfo -s` lists the partitions",
        )
    offer = parse_partition(result.stdout, name)
    states = _run(
        [_require("sinfo"), f"--partition={name}", "--noheader", "--format=%D %T"],
        QUERY_TIMEOUT_S,
    )
    if states.returncode != 0:
        return offer  # the limits alone still say what the partition offers
    return dataclasses.replace(offer, node_states=parse_node_states(states.stdout))


# ---- submitting, looking, cancelling ----------------------------------------------------------


def submit(script: str, workdir: Path | None = None) -> str:
    """Submit an sbatch script (given as text); the job id. `workdir`: the job's working
    directory (sbatch --chdir; default: this process's)."""
    argv = [_require("sbatch"), "--parsable"]
    if workdir is not None:
        argv.append(f"--chdir={workdir}")
    result = _run(argv, SUBMIT_TIMEOUT_S, stdin=script)
    if result.returncode != 0:
        message = _message(result)
        if _unreachable(message):
            raise Unavailable(f"sbatch could not reach the cluster: {message}", INSTALL_FIX)
        raise UsageError(
            f"Slurm refused the job: {message}",
            "change what sbatch names above (partition, account, time, nodes, GPUs); "
            "`sinfo` lists the partitions and their limits",
        )
    for line in result.stderr.splitlines():  # sbatch's warnings, e.g. about a default partition
        if line.strip():
            progress(line)
    # --parsable prints "JOBID" or "JOBID;CLUSTER".
    job_id = result.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise Unavailable(
            f"sbatch answered {result.stdout.strip()!r}, not a job id", "check `sbatch --version`"
        )
    return job_id


def status(job_id: str) -> JobStatus | None:
    """The job as the controller knows it; None once it has forgotten it (MinJobAge)."""
    result = _run([_require("scontrol"), "show", "job", "--oneliner", job_id], QUERY_TIMEOUT_S)
    if result.returncode != 0:
        message = _message(result)
        if "Invalid job id" in message:
            return None
        raise Unavailable(f"scontrol could not show job {job_id}: {message}", INSTALL_FIX)
    return parse_job(result.stdout, job_id)


def cancel(job_id: str) -> None:
    """scancel; a job that has already ended is not an error."""
    result = _run([_require("scancel"), job_id], QUERY_TIMEOUT_S)
    if result.returncode == 0:
        return
    message = _message(result)
    if "already completing or completed" in message or "Invalid job id" in message:
        return
    raise Unavailable(f"scancel {job_id} failed: {message}", f"run `scancel {job_id}` again")


def hostnames(node_list: str) -> tuple[str, ...]:
    """Slurm's compressed node list ("n[1-2]") as names."""
    result = _run([_require("scontrol"), "show", "hostnames", node_list], QUERY_TIMEOUT_S)
    if result.returncode != 0:
        return (node_list,)  # only for display: the compressed form is still readable
    return tuple(result.stdout.split())


# ---- following a job --------------------------------------------------------------------------


def follow(
    job_id: str,
    log_path: Path | None = None,
    out: BinaryIO | None = None,
    poll_s: float = POLL_S,
    wait_pending: bool = False,
) -> JobResult:
    """Stream the job's log to `out` while it grows, until the job ends; its final state.

    `log_path` defaults to the job's StdOut as Slurm reports it. Ctrl-C, SIGTERM and SIGHUP
    cancel the job (a second one stops following at once). A job pending on a reason that never
    clears (PartitionNodeLimit, ...) is cancelled and raised as Unavailable, with what its
    partition offers; `wait_pending` keeps waiting instead.
    """
    sink = out if out is not None else sys.stdout.buffer
    log = _LogFollower(log_path, sink)
    shown: tuple[JobState, str | None] | None = None
    seen: JobStatus | None = None
    with _signals_cancel() as received:
        cancelled = False
        unreachable_since: float | None = None
        while True:
            if received and not cancelled:
                progress(f"cudabox: {received[0]}: cancelling Slurm job {job_id} (scancel)")
                _cancel_quietly(job_id)
                cancelled = True
            if len(received) > 1 and seen is not None:
                break
            try:
                now = status(job_id)
                unreachable_since = None
            except Unavailable as exc:
                # A controller restart or failover: ride it out for a while.
                if unreachable_since is None:
                    unreachable_since = time.monotonic()
                    progress(f"cudabox: {exc.message}; trying again for {UNREACHABLE_S:.0f} s")
                if time.monotonic() - unreachable_since > UNREACHABLE_S or len(received) > 1:
                    raise
                _pump_for(log, poll_s)
                continue
            if now is None:
                raise _forgotten(job_id, seen)
            seen = now
            if (now.state, now.reason) != shown:
                progress(_describe(now))
                shown = (now.state, now.reason)
                if now.state is JobState.PENDING and not received:
                    _give_up_if_stuck(now, wait_pending)
            log.find(now.log_path)
            log.pump()
            if now.state.terminal:
                break
            _pump_for(log, poll_s)
    assert seen is not None  # the loop leaves only with a status in hand
    log.pump()
    log.warn_if_unseen()
    return JobResult(
        job_id=job_id,
        state=seen.state,
        exit_code=seen.exit_code,
        signal=seen.signal,
        nodes=hostnames(seen.node_list) if seen.node_list else (),
        elapsed_s=seen.elapsed_s,
        reason=seen.reason,
        time_limit=seen.time_limit,
        log_path=log.path,
        cancelled_on=received[0] if received else None,
        log_tail=log.tail(LOG_TAIL_LINES),
    )


def require_success(result: JobResult) -> None:
    """Raise the error that explains a job that did not complete."""
    if result.ok:
        return
    where = f" on {','.join(result.nodes)}" if result.nodes else ""
    head = f"Slurm job {result.job_id} {result.state.value}{where} after {result.elapsed_s} s"
    log_hint = f"the full log is {result.log_path}" if result.log_path else "see the job's log"
    if result.cancelled_on:
        raise Interrupted(
            f"{head}: cudabox cancelled it on {result.cancelled_on}",
            f"submit again to rerun it; {log_hint}",
        )
    tail = "".join(f"\n    {line}" for line in result.log_tail)
    if tail:
        tail = "\n  last lines of the log:" + tail
    if result.state is JobState.FAILED:
        raise CudaboxError(
            f"{head}: exit code {result.exit_code}"
            + (f" (signal {result.signal})" if result.signal else "")
            + tail,
            f"fix what the log shows; {log_hint}",
        )
    if result.state is JobState.TIMEOUT:
        limit = f" (it had {result.time_limit})" if result.time_limit else ""
        raise CudaboxError(
            f"{head}: it ran out of time{limit}{tail}",
            f"ask for more time (--time) or train fewer steps; {log_hint}",
        )
    if result.state is JobState.OUT_OF_MEMORY:
        raise CudaboxError(
            f"{head}: a node ran out of memory{tail}",
            f"ask for more memory (sbatch --mem) or use a smaller batch; {log_hint}",
        )
    if result.state in (JobState.NODE_FAIL, JobState.BOOT_FAIL):
        raise Unavailable(
            f"{head}: a node failed{tail}",
            "submit again; tell the cluster's admins if the same node fails again",
        )
    if result.state is JobState.CANCELLED:
        raise CudaboxError(
            f"{head}: cancelled outside cudabox (reason: {result.reason or 'none given'}){tail}",
            f"ask whoever cancelled it (an admin, a limit, a preemption), then submit again; "
            f"{log_hint}",
        )
    code = f", exit code {result.exit_code}" if result.exit_code else ""
    raise CudaboxError(
        f"{head}{code} (reason: {result.reason or 'none given'}){tail}",
        f"`scontrol show job {result.job_id}` says more while Slurm still knows it; {log_hint}",
    )


# ---- parsing scontrol -------------------------------------------------------------------------


def parse_job(text: str, job_id: str) -> JobStatus:
    """`scontrol show job --oneliner` output as a JobStatus."""

    def field_(name: str) -> str | None:
        # Values are single words except a few free-text ones this module does not read.
        match = re.search(rf"(?:^|\s){re.escape(name)}=(\S*)", text)
        value = match.group(1) if match else None
        return None if value in (None, "", "(null)", "None") else value

    state_text = field_("JobState")
    if state_text is None:
        raise Unavailable(
            f"scontrol's answer for job {job_id} has no JobState: {text.strip()[:200]!r}",
            "check that `scontrol show job` works here",
        )
    exit_code, _, sig = (field_("ExitCode") or "0:0").partition(":")
    stdout = field_("StdOut")
    return JobStatus(
        job_id=field_("JobId") or job_id,
        state=JobState.parse(state_text),
        reason=field_("Reason"),
        exit_code=int(exit_code) if exit_code.isdigit() else 0,
        signal=int(sig) if sig.isdigit() else 0,
        node_list=field_("NodeList"),
        elapsed_s=parse_duration(field_("RunTime") or "0"),
        time_limit=field_("TimeLimit"),
        log_path=Path(stdout) if stdout else None,
        partition=field_("Partition"),
        nodes=_first_number(field_("NumNodes")),
    )


def parse_partition(text: str, name: str) -> PartitionOffer:
    """`scontrol show partition --oneliner` output as a PartitionOffer (without node states)."""

    def field_(key: str) -> str | None:
        match = re.search(rf"(?:^|\s){re.escape(key)}=(\S*)", text)
        return match.group(1) if match else None

    total = _first_number(field_("TotalNodes"))
    if total is None:
        raise Unavailable(
            f"scontrol's answer for partition {name} has no TotalNodes: {text.strip()[:200]!r}",
            "check that `scontrol show partition` works here",
        )
    max_time = field_("MaxTime")
    if max_time is not None and max_time.upper() in _UNLIMITED:
        max_time = None
    state = field_("State")
    return PartitionOffer(
        name=field_("PartitionName") or name,
        total_nodes=total,
        max_nodes=_first_number(field_("MaxNodes")),  # None for UNLIMITED
        max_time=max_time,
        max_time_s=parse_duration(max_time) if max_time else None,
        state=state,
    )


def parse_node_states(text: str) -> tuple[tuple[str, int], ...]:
    """sinfo's `%D %T` lines ("2 idle") as (state, count), one per state, in sinfo's order."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) == 2 and words[0].isdigit():
            counts[words[1]] = counts.get(words[1], 0) + int(words[0])
    return tuple(counts.items())


def _first_number(text: str | None) -> int | None:
    """The leading whole number of "3-3", "2", "UNLIMITED" (None)."""
    match = re.match(r"\d+", text or "")
    return int(match.group()) if match else None


def parse_duration(text: str) -> int:
    """Slurm's [D-]HH:MM:SS (or MM:SS) in seconds; 0 for what is not a duration."""
    days, _, rest = text.rpartition("-")
    parts = rest.split(":")
    if not all(p.isdigit() for p in parts) or not 1 <= len(parts) <= 3:
        return 0
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + int(part)
    return seconds + (int(days) * 86400 if days.isdigit() else 0)


# ---- helpers ----------------------------------------------------------------------------------


def _require(command: str) -> str:
    path = shutil.which(command)
    if path is None:
        raise Unavailable(
            f"{command} is not on PATH: this host is not a Slurm submit host", INSTALL_FIX
        )
    return path


def _run(
    argv: Sequence[str], timeout: float, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(argv),
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise Unavailable(f"{argv[0]} is not on PATH", INSTALL_FIX) from None
    except subprocess.TimeoutExpired:
        raise Unavailable(
            f"`{' '.join(argv[:3])}` did not answer within {timeout:.0f} s",
            "the Slurm controller may be down or overloaded: try `sinfo`, or ask the admins",
        ) from None


def _message(result: subprocess.CompletedProcess[str]) -> str:
    text = (result.stderr or result.stdout or "").strip()
    return " / ".join(line.strip() for line in text.splitlines() if line.strip()) or (
        f"exit status {result.returncode}, no message"
    )


def _unreachable(message: str) -> bool:
    return any(marker in message for marker in _UNREACHABLE)


def _cancel_quietly(job_id: str) -> bool:
    try:
        cancel(job_id)
    except CudaboxError as exc:
        progress(f"cudabox: could not cancel job {job_id}: {exc.message}; run `scancel {job_id}`")
        return False
    return True


def _forgotten(job_id: str, seen: JobStatus | None) -> CudaboxError:
    if seen is None:
        return Unavailable(
            f"Slurm does not know job {job_id}",
            "check the job id; `squeue --me` lists your jobs",
        )
    return CudaboxError(
        f"Slurm forgot job {job_id} (last seen {seen.state.value}) before cudabox read how it "
        "ended: the cluster keeps ended jobs for MinJobAge seconds only",
        f"`sacct -j {job_id}` tells the end where accounting is enabled; ask the admins to raise "
        "MinJobAge above a few seconds",
    )


def _give_up_if_stuck(now: JobStatus, wait_pending: bool) -> None:
    """Cancel a job pending on a reason that never clears, and raise why (with what its
    partition offers); with `wait_pending`, only say so."""
    rules = load_pending_rules()
    if not rules.may_be_hopeless(now.reason):
        return  # the common case (Resources, Priority, ...): no partition query
    offer = None
    if now.partition:
        try:
            offer = partition(now.partition)
        except CudaboxError as exc:  # the verdict and the message do without the figures
            progress(f"cudabox: {exc.message}")
    stuck = judge(now.reason, now.request, offer, rules)
    if stuck is None:
        return
    if wait_pending:
        progress(f"cudabox: {stuck.message}; waiting anyway (--wait-pending)")
        return
    progress(f"cudabox: Slurm job {now.job_id} can never start: cancelling it (scancel)")
    if _cancel_quietly(now.job_id):
        outcome = "; cudabox cancelled it"
    else:
        outcome = f"; cudabox could not cancel it: run `scancel {now.job_id}`"
    raise Unavailable(stuck.message + outcome, stuck.fix)


def _describe(now: JobStatus) -> str:
    text = f"cudabox: Slurm job {now.job_id} {now.state.value}"
    if now.state is JobState.PENDING and now.reason:
        text += f" ({now.reason})"
    elif now.node_list and now.state in (JobState.RUNNING, JobState.CONFIGURING):
        text += f" on {now.node_list}"
    return text


def _pump_for(log: _LogFollower, seconds: float) -> None:
    """Wait `seconds`, passing on new log lines every few tenths."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(0.2, left))
        log.pump()


@contextmanager
def _signals_cancel() -> Iterator[list[str]]:
    """While following: Ctrl-C, SIGTERM and SIGHUP are recorded (by name) instead of killing
    cudabox, so that the job is cancelled rather than left running unwatched."""
    received: list[str] = []

    def record(signum: int, _frame: FrameType | None) -> None:
        received.append(signal.Signals(signum).name)
        if len(received) > 1:
            progress("cudabox: stopping at once; the job was already cancelled")

    previous = {}
    try:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            previous[signum] = signal.signal(signum, record)
    except ValueError:  # not the main thread: signals stay with whoever handles them
        pass
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class _LogFollower:
    """Passes on what the job's log gains, in whole chunks, as the file grows."""

    def __init__(self, path: Path | None, sink: BinaryIO) -> None:
        self.path = path
        self._sink: BinaryIO | None = sink
        self._offset = 0
        self._seen = False

    def find(self, reported: Path | None) -> None:
        if self.path is None and reported is not None:
            self.path = reported

    def pump(self) -> None:
        if self.path is None:
            return
        try:
            with self.path.open("rb") as stream:
                stream.seek(self._offset)
                data = stream.read()
        except OSError:  # not written yet (the job is pending), or not visible from here
            return
        self._seen = True
        if not data:
            return
        self._offset += len(data)
        if self._sink is None:
            return
        try:
            self._sink.write(data)
            self._sink.flush()
        except OSError:  # the terminal went away (SIGHUP): keep following, stop printing
            self._sink = None

    def warn_if_unseen(self) -> None:
        if not self._seen and self.path is not None:
            progress(
                f"cudabox: the job's log {self.path} is not visible from this host; it is on the "
                "job's first node (use a folder every node shares for --output)"
            )

    def tail(self, lines: int) -> tuple[str, ...]:
        if self.path is None:
            return ()
        try:
            with self.path.open("rb") as stream:
                stream.seek(max(0, self.path.stat().st_size - 64 * 1024))
                text = stream.read().decode("utf-8", "replace")
        except OSError:
            return ()
        return tuple(text.splitlines()[-lines:])
