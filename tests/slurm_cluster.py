"""A real Slurm on this machine for the tests: one slurmctld and one slurmd per "node".

Debian's slurmd runs several times on one host (one `-N NAME` each, each on its own port), so a
2-node job gets two real nodes, with one task on each, as on a cluster. The nodes are named
127.0.0.1 and this host's name, which both reach this machine. No munge (auth/none), no
accounting database: job states come from slurmctld, which keeps ended jobs for MinJobAge.

Use it from a test module:

    from slurm_cluster import slurm, slurm_cluster  # noqa: F401

    def test_x(slurm: SlurmCluster) -> None:   # SLURM_CONF is set for the test
        ...

The session fixture `slurm_cluster` starts the daemons once; `slurm` (per test) exports
SLURM_CONF and, after the test, cancels and reports any job the test left in the queue. At the
end of the session both daemons stop and nothing they started may still run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from realtools import unavailable

DAEMONS = ("slurmctld", "slurmd", "sinfo", "sbatch", "scontrol", "scancel", "squeue", "srun")
PARTITION = "debug"
START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 20
MIN_JOB_AGE_S = 300  # slurmctld's default: the adapter reads a job's end from it meanwhile


@dataclass(frozen=True)
class SlurmCluster:
    conf: Path  # the slurm.conf: what SLURM_CONF must name for Slurm's commands
    root: Path  # state, spool, pid and log files
    nodes: tuple[str, ...]  # node names, in Slurm's order (the first hosts a job's rendezvous)
    partition: str = PARTITION
    daemon_pids: tuple[int, ...] = ()  # slurmctld and the slurmd's

    @property
    def env(self) -> dict[str, str]:
        """The environment for Slurm's commands: this process's, with SLURM_CONF."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def require_nodes(self, count: int) -> None:
        """Fail (not skip) a test that needs more nodes than this machine could offer."""
        if len(self.nodes) < count:
            pytest.fail(
                f"the test needs {count} Slurm nodes, this machine gives {len(self.nodes)}: its "
                f"host name {socket.gethostname()!r} does not resolve to a local address "
                "(add it to /etc/hosts)"
            )

    @contextlib.contextmanager
    def extra_partition(self, name: str, *settings: str) -> Iterator[str]:
        """A partition over the same nodes with its own limits ("MaxNodes=1", "MaxTime=1") for
        the test, deleted afterwards with whatever job is still in it."""
        _slurm_command(
            self,
            "scontrol",
            "create",
            f"PartitionName={name}",
            f"Nodes={','.join(self.nodes)}",
            *settings,
        )
        try:
            yield name
        finally:
            queued = _slurm_command(
                self, "squeue", "--noheader", "--format=%i", f"--partition={name}"
            )
            for job_id in queued.split():
                _slurm_command(self, "scancel", job_id)
            _slurm_command(self, "scontrol", "delete", f"PartitionName={name}")

    def logs(self, lines: int = 30) -> str:
        """The end of every daemon log, for failure messages."""
        parts = []
        for path in sorted((self.root / "log").glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(parts)


def _slurm_command(cluster: SlurmCluster, *argv: str) -> str:
    """Run one of Slurm's commands against the cluster; its output (a failure fails the test)."""
    result = subprocess.run(
        argv, env=cluster.env, capture_output=True, text=True, timeout=30, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"`{' '.join(argv)}` failed: {result.stderr.strip()}")
    return result.stdout


def node_names() -> tuple[str, ...]:
    """Two names that reach this machine, when it has them. Job scripts use node names as
    addresses (MASTER_ADDR), so made-up names would not do; and Slurm reads NodeName=localhost as
    this host's name, so "localhost" cannot sit beside it."""
    names = ["127.0.0.1"]
    host = socket.gethostname()
    if host and host != "localhost" and _is_local(host):
        names.append(host)
    return tuple(names)


def _is_local(name: str) -> bool:
    try:
        address = socket.gethostbyname(name)
        with socket.socket() as probe:
            probe.bind((address, 0))  # only an address of this machine can be bound
    except OSError:
        return False
    return True


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def write_conf(root: Path, nodes: tuple[str, ...]) -> Path:
    """A minimal slurm.conf under `root`, for one controller and len(nodes) slurmd's."""
    for sub in ("state", "log", *(f"spool-{node}" for node in nodes)):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ctld_port, *node_ports = _free_ports(1 + len(nodes))
    cpus = os.cpu_count() or 1
    lines = [
        "ClusterName=cudabox-test",
        "SlurmctldHost=localhost(127.0.0.1)",
        f"SlurmctldPort={ctld_port}",
        f"SlurmdPort={node_ports[0]}",
        # No munge: nothing to start, nothing to share between nodes.
        "AuthType=auth/none",
        "CredType=cred/none",
        "SlurmUser=root",
        "SlurmdUser=root",
        "ProctrackType=proctrack/linuxproc",  # no cgroups needed
        "TaskPlugin=task/none",
        "SwitchType=switch/none",
        "MpiDefault=none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "AccountingStorageType=accounting_storage/none",
        "JobAcctGatherType=jobacct_gather/none",
        "JobCompType=jobcomp/none",
        "ReturnToService=2",
        f"MinJobAge={MIN_JOB_AGE_S}",
        # Job ids (and the rendezvous ports rendered scripts derive from them) differ between
        # test sessions that run at the same time on this machine.
        f"FirstJobId={random.randrange(1000, 60000)}",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root}/spool-%n",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root}/slurmd-%n.pid",
        f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={root}/log/slurmd-%n.log",
    ]
    for node, port in zip(nodes, node_ports, strict=True):
        lines.append(
            f"NodeName={node} NodeHostname={node} NodeAddr=127.0.0.1 Port={port} "
            f"CPUs={cpus} RealMemory=2000 State=UNKNOWN"
        )
    lines.append(
        f"PartitionName={PARTITION} Nodes={','.join(nodes)} Default=YES OverSubscribe=YES "
        "MaxTime=INFINITE State=UP"
    )
    conf = root / "slurm.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


class _Daemons:
    """slurmctld and the slurmd's, in the foreground (-D) as our children, so that we stop them."""

    def __init__(self, cluster: SlurmCluster) -> None:
        self.cluster = cluster
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> SlurmCluster:
        """Start and wait until every node is idle; the cluster with its node names in Slurm's
        order and the daemons' pids."""
        conf = str(self.cluster.conf)
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", conf])
        for node in self.cluster.nodes:
            self._spawn(f"slurmd-{node}", ["slurmd", "-D", "-f", conf, "-N", node])
        self.cluster = dataclasses.replace(
            self.cluster,
            nodes=self._wait_idle(),
            daemon_pids=tuple(process.pid for process in self.processes.values()),
        )
        return self.cluster

    def _spawn(self, name: str, argv: list[str]) -> None:
        out = (self.cluster.root / "log" / f"{name}.out").open("wb")
        # Own session: a Ctrl-C to pytest reaches the tests, and teardown stops the daemons.
        self.processes[name] = subprocess.Popen(
            argv, env=self.cluster.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        out.close()

    def _wait_idle(self) -> tuple[str, ...]:
        deadline = time.monotonic() + START_TIMEOUT_S
        states = ""
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with {process.returncode} while starting\n"
                        + self.cluster.logs()
                    )
            result = subprocess.run(
                ["sinfo", "--noheader", "--Node", "--format=%N %T"],
                env=self.cluster.env,
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
            states = result.stdout.strip()
            idle = [line.split()[0] for line in states.splitlines() if line.endswith(" idle")]
            if set(idle) >= set(self.cluster.nodes):
                return tuple(idle)  # sinfo sorts as Slurm sorts a job's node list
            time.sleep(0.5)
        raise RuntimeError(
            f"Slurm's nodes were not idle after {START_TIMEOUT_S} s (sinfo: {states!r})\n"
            + self.cluster.logs()
        )

    def cancel_all(self) -> list[str]:
        """Cancel every job still known to the controller and wait until none runs; their ids."""
        queue = self._squeue()
        for job_id in queue:
            subprocess.run(
                ["scancel", job_id], env=self.cluster.env, capture_output=True, timeout=10
            )
        deadline = time.monotonic() + 60
        while self._squeue() and time.monotonic() < deadline:
            time.sleep(0.5)
        return queue

    def wait_for_jobs_to_exit(self, timeout: float = 60) -> None:
        """A cancelled job's processes end after its state does (slurmstepd cleans up)."""
        deadline = time.monotonic() + timeout
        while cluster_processes(self.cluster) and time.monotonic() < deadline:
            time.sleep(0.2)

    def _squeue(self) -> list[str]:
        # Only jobs that have not ended: squeue shows ended jobs too, until MinJobAge.
        result = subprocess.run(
            [
                "squeue",
                "--noheader",
                "--format=%i",
                "--states=PENDING,RUNNING,COMPLETING,SUSPENDED",
            ],
            env=self.cluster.env,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return result.stdout.split()

    def stop(self) -> list[str]:
        """Stop the daemons; what was still running afterwards (and has been killed)."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        problems = []
        for name, process in self.processes.items():
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                problems.append(f"{name} (pid {process.pid}) ignored SIGTERM")
        problems += _kill_leftovers(self.cluster)
        return problems


def cluster_processes(cluster: SlurmCluster) -> dict[int, str]:
    """Processes of this cluster besides its daemons and their children (slurmctld's
    slurmscriptd): slurmstepd's, job scripts, what jobs started. Found by SLURM_CONF naming this
    cluster's conf in their environment, or its folder in their command line."""
    daemons = set(cluster.daemon_pids)
    marker = f"SLURM_CONF={cluster.conf}".encode()
    root = str(cluster.root).encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in {os.getpid(), *daemons}:
            continue
        try:
            environ = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes()
            parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):  # gone, or not ours to read
            continue
        if parent in daemons:
            continue
        if marker in environ.split(b"\0") or root in cmdline:
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


def _kill_leftovers(cluster: SlurmCluster) -> list[str]:
    """Kill what still runs of this cluster (call it once the daemons are stopped)."""
    found = cluster_processes(cluster)
    for pid in found:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return [f"pid {pid}: {command}" for pid, command in found.items()]


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A running one-machine Slurm; skips loudly without Slurm (fails where CUDABOX_REQUIRE names it)."""
    missing = [name for name in DAEMONS if shutil.which(name) is None]
    if missing:
        unavailable(
            "slurm",
            f"Slurm is not installed here ({', '.join(missing)} missing); "
            "apt-get install slurmctld slurmd slurm-client",
        )
    # A short path: slurmd puts Unix sockets in its spool folder (108 bytes at most).
    root = tmp_path_factory.mktemp("slurm")
    nodes = node_names()
    cluster = SlurmCluster(conf=write_conf(root, nodes), root=root, nodes=nodes)
    daemons = _Daemons(cluster)
    try:
        cluster = daemons.start()
    except RuntimeError as exc:
        daemons.stop()
        pytest.fail(f"could not start Slurm: {exc}")
    yield cluster
    left = daemons.cancel_all()
    daemons.wait_for_jobs_to_exit()
    problems = daemons.stop()
    if left or problems:
        pytest.fail(
            "Slurm tests left work behind: "
            + "; ".join([*(f"job {job} still queued" for job in left), *problems])
        )


@pytest.fixture
def slurm(slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[SlurmCluster]:
    """The running cluster, with SLURM_CONF exported for this test; no job may outlive it."""
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    yield slurm_cluster
    daemons = _Daemons(slurm_cluster)
    left = daemons.cancel_all()
    if left:
        pytest.fail(f"the test left Slurm jobs running: {', '.join(left)} (now cancelled)")
