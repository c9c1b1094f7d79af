"""`cudabox run` / `cudabox train` given what a new user types wrong, and faults while running.

Everything goes through the command line in a subprocess, as typed. Values the engine would
refuse are refused up front (exit 2) without any engine; the working directory, the output
folder and stdout can each be unusable; and, with the real engine, the command's streams, a
closed terminal (SIGHUP) and several processes per container behave as `docker run` does.
"""

from __future__ import annotations

import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cliproc import cudabox
from cudabox.errors import ExitCode

# The engine is shared with other test sessions: each run of these tests counts only its own.
RUN_ID = uuid.uuid4().hex[:12]
LABEL = ["--label", "cudabox.test=1", "--label", f"cudabox.fault-test={RUN_ID}"]


def assert_error(result: subprocess.CompletedProcess[str], code: ExitCode, *names: str) -> None:
    assert result.returncode == code, result.stderr
    assert "cudabox: error:" in result.stderr and "\n  fix: " in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for name in names:
        assert name in result.stderr, (name, result.stderr)


@pytest.fixture
def no_engine(tmp_path: Path) -> dict[str, str]:
    """An environment whose DOCKER_HOST points nowhere: anything that needs an engine fails."""
    return {"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}


# ---- values the engine would refuse: refused up front, without an engine -----------------------


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--cpu", "--shm-size", "lots"], "--shm-size 'lots' is not a size"),
        (["--cpu", "--shm-size", "0"], "--shm-size '0' is not a size"),
        (["--cpu", "--ulimit", "nofile=4096:1024"], "the soft limit is above the hard limit"),
        (["--cpu", "--ulimit", "bogus=1"], "--ulimit 'bogus=1' is not NAME=SOFT[:HARD]"),
        # The engine reads rlimits as int64; it would refuse with a JSON decoding error.
        (["--cpu", "--ulimit", f"nofile={2**63}"], "is not NAME=SOFT[:HARD]"),
        (["--gpus", "0,,1"], "--gpus '0,,1' is not all, a count"),
        (["--gpus", "0,0"], "--gpus '0,0' is not all, a count"),
        (["--cpu", "--gpus", "all"], "--cpu and --gpus contradict each other"),
        (["--cpu", "--env", "NOEQUALS"], "--env 'NOEQUALS' is not KEY=VALUE"),
        (["--cpu", "--label", "=x"], "--label '=x' is not KEY=VALUE"),
        (["--cpu", "--nproc-per-node", "0"], "--nproc-per-node and --nnodes must be at least 1"),
        (["--cpu", "--nnodes", "2"], "--nnodes 2 needs --rdzv-endpoint HOST:PORT"),
        (
            ["--cpu", "--nnodes", "2", "--rdzv-endpoint", "nohostport"],
            "--rdzv-endpoint 'nohostport' is not HOST:PORT",
        ),
        (["--cpu", "--workspace", "/nonexistent"], "--workspace /nonexistent is not a folder"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else None,
)
def test_values_the_engine_would_refuse_are_usage_errors(
    tmp_path: Path, no_engine: dict[str, str], flags: list[str], named: str
) -> None:
    result = cudabox("run", *flags, "--", "true", cwd=tmp_path, env=no_engine)
    assert_error(result, ExitCode.USAGE, named)
    assert "start a Docker engine" not in result.stderr  # never misread as an engine problem


def multiprocess_memlock() -> int:
    """The memlock limit cudabox asks for several processes: unlimited (-1), capped at this
    host's hard limit, which runc cannot exceed."""
    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    return -1 if hard == resource.RLIM_INFINITY else hard


def _dry_run(tmp_path: Path, env: dict[str, str], *flags: str) -> list[str]:
    result = cudabox(
        "run", "--cpu", "--dry-run", *flags, "--", "python", "train.py", cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stdout.splitlines()
    return shlex.split(line)


def test_a_dry_run_needs_no_engine_and_shows_the_multiprocess_settings(
    tmp_path: Path, no_engine: dict[str, str]
) -> None:
    argv = _dry_run(tmp_path, no_engine, "--nproc-per-node", "2")
    line = shlex.join(argv)
    assert argv[:2] == ["docker", "run"]
    memlock = multiprocess_memlock()
    limits = f"--ulimit memlock={memlock}:{memlock} --ulimit stack=67108864:67108864"
    assert limits in line
    assert "torchrun --nproc-per-node=2 --standalone train.py" in line
    assert "--network" not in argv  # one node: the container's own network
    assert f"{tmp_path}:/workspace" in argv

    several = shlex.join(
        _dry_run(tmp_path, no_engine, "--nnodes", "2", "--rdzv-endpoint", "h:29500")
    )
    assert "--network host" in several
    assert "--rdzv-endpoint=h:29500" in several
    assert limits in several

    # One process: no torchrun, no extra limits.
    single = _dry_run(tmp_path, no_engine)
    assert "torchrun" not in single and "--ulimit" not in single


def test_a_size_the_sdk_cannot_read_is_passed_in_bytes(
    tmp_path: Path, no_engine: dict[str, str]
) -> None:
    # The docker CLI reads 64MiB; the Docker SDK refused it on the client side, which came back
    # as "start a Docker engine" (exit 4).
    argv = _dry_run(tmp_path, no_engine, "--shm-size", "64MiB")
    assert argv[argv.index("--shm-size") + 1] == str(64 * 1024**2)
    argv = _dry_run(tmp_path, no_engine, "--shm-size", "512m")
    assert argv[argv.index("--shm-size") + 1] == "512m"  # as typed where both read it


# ---- the working directory ------------------------------------------------------------------------


def test_the_filesystem_root_is_mounted_only_when_named(no_engine: dict[str, str]) -> None:
    refused = cudabox("run", "--cpu", "--dry-run", "--", "true", cwd=Path("/"), env=no_engine)
    assert_error(refused, ExitCode.USAGE, "the current directory is /", "--workspace /")
    assert refused.stdout == ""
    named = cudabox(
        "run", "--cpu", "--dry-run", "--workspace", "/", "--", "true", cwd=Path("/"), env=no_engine
    )
    assert named.returncode == 0, named.stderr
    assert "/:/workspace" in shlex.split(named.stdout)


@pytest.mark.parametrize(
    "args",
    [
        ("run", "--cpu", "--dry-run", "--", "true"),
        ("train", "torch", "--here", "--cpu", "--out", "x"),
        ("run", "--cpu", "--dry-run", "--workspace", "x", "--", "true"),
        ("train", "torch", "--cpu", "--dry-run", "--workspace", "/tmp", "--out", "x"),
    ],
    ids=["run", "train-here", "run-relative-workspace", "train-relative-out"],
)
def test_a_deleted_working_directory_is_a_usage_error(
    tmp_path: Path, no_engine: dict[str, str], args: tuple[str, ...]
) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    # The shell enters the folder, removes it, and cudabox starts inside what is left.
    command = f'cd {shlex.quote(str(gone))} && rmdir "$PWD" && exec "$0" -m cudabox "$@"'
    result = subprocess.run(
        ["sh", "-c", command, sys.executable, *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, **no_engine},
        timeout=120,
        check=False,
    )
    assert_error(result, ExitCode.USAGE, "the current directory no longer exists", "cd into")


def test_training_here_from_the_root_mounts_nothing_so_is_not_refused(tmp_path: Path) -> None:
    # The workload's --help: it starts and stops at once, no training.
    out = tmp_path / "run"
    result = cudabox(
        "train", "torch", "--here", "--cpu", "--out", str(out), "--", "--help", cwd=Path("/")
    )
    assert result.returncode == 0, result.stderr
    assert "usage: python -m cudabox.workloads.torch_smoke" in result.stdout


def test_a_dry_run_here_prints_the_command_and_runs_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = cudabox(
        "train",
        "torch",
        "--here",
        "--cpu",
        "--dry-run",
        "--out",
        str(out),
        "--",
        "--help",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "-m cudabox.workloads.torch_smoke" in result.stdout
    assert "usage:" not in result.stdout  # the workload did not start
    assert not out.exists()


# ---- the output folder of a training run ---------------------------------------------------------


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody can write to, root included (this runs as root in CI).

    Mode 0555 stops everyone but root; for root, a read-only bind mount, else the immutable
    attribute; the test skips where neither can be had.
    """
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    undo: list[list[str]] = []

    def writable() -> bool:
        probe = folder / "probe"
        try:
            probe.touch()
        except OSError:
            return False
        probe.unlink()
        return True

    attempts = [
        (["mount", "--bind", str(folder), str(folder)], ["umount", str(folder)]),
        (["mount", "-o", "remount,bind,ro", str(folder)], None),
        (["chattr", "+i", str(folder)], ["chattr", "-i", str(folder)]),
    ]
    for command, reverse in attempts:
        if not writable():
            break
        if shutil.which(command[0]) is None:
            continue
        done = subprocess.run(command, capture_output=True, check=False)
        if done.returncode == 0 and reverse is not None:
            undo.insert(0, reverse)
    try:
        if writable():
            pytest.skip("no way to make a folder read-only for this user here")
        yield folder
    finally:
        for command in undo:
            subprocess.run(command, capture_output=True, check=False)
        folder.chmod(0o755)


def _refused_before_training(result: subprocess.CompletedProcess[str], named: str) -> None:
    assert_error(result, ExitCode.USAGE, named)
    assert "training here" not in result.stderr  # the workload never started
    assert "summary" not in result.stdout


def test_an_out_that_is_a_file_is_refused_before_training(tmp_path: Path) -> None:
    result = cudabox("train", "torch", "--here", "--cpu", "--out", "/etc/passwd", cwd=tmp_path)
    _refused_before_training(result, "--out /etc/passwd is a file, not a folder")


def test_an_out_in_a_read_only_folder_is_refused_before_training(
    tmp_path: Path, read_only_folder: Path
) -> None:
    out = read_only_folder / "run"
    result = cudabox("train", "torch", "--here", "--cpu", "--out", str(out), cwd=tmp_path)
    _refused_before_training(result, f"--out {out} cannot be written")


def test_an_out_where_nothing_can_be_created_is_refused_before_training(tmp_path: Path) -> None:
    # /proc takes no new folders, whoever asks.
    result = cudabox(
        "train", "torch", "--here", "--cpu", "--out", "/proc/cudabox-run", cwd=tmp_path
    )
    _refused_before_training(result, "--out /proc/cudabox-run cannot be written")


def test_a_read_only_working_directory_is_refused_before_training(read_only_folder: Path) -> None:
    # The default --out is runs/FRAMEWORK under the working directory.
    result = cudabox("train", "torch", "--here", "--cpu", cwd=read_only_folder)
    _refused_before_training(result, f"--out {read_only_folder}/runs/torch cannot be written")


# ---- stdout on a full disk -------------------------------------------------------------------------


def test_stdout_on_a_full_disk_is_exit_13(tmp_path: Path) -> None:
    with Path("/dev/full").open("w") as full:
        result = subprocess.run(
            [sys.executable, "-m", "cudabox", "images", "--json"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            timeout=120,
            check=False,
        )
    assert_error(result, ExitCode.DISK_FULL, "no space left on the device")
    assert "Exception ignored" not in result.stderr  # nothing left to fail at exit


# ---- with the real engine ---------------------------------------------------------------------------


def managed(engine: Any) -> list[str]:
    """This session's containers (the cudabox.test label alone would count other sessions')."""
    mine = {"label": f"cudabox.fault-test={RUN_ID}"}
    return [c.name for c in engine.containers.list(all=True, filters=mine)]


@pytest.fixture(scope="module")
def torch_cpu(catalog_image: Any) -> str:
    return str(catalog_image("torch-2.13-cpu"))


@pytest.mark.docker
def test_the_commands_stdout_and_stderr_stay_apart(torch_cpu: str, tmp_path: Path) -> None:
    script = "import sys; print('out'); print('err', file=sys.stderr)"
    result = cudabox("run", "--cpu", *LABEL, "--", "python", "-c", script, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "out\n"
    assert "err\n" in result.stderr and "out" not in result.stderr


@pytest.mark.docker
def test_an_image_reference_the_engine_cannot_read_is_a_usage_error(
    torch_cpu: str, tmp_path: Path
) -> None:
    result = cudabox("run", "--cpu", "--image", ":::", *LABEL, "--", "true", cwd=tmp_path)
    assert_error(result, ExitCode.USAGE, "not a valid image reference", "NAME[:TAG]")


@pytest.mark.docker
def test_a_limit_the_engine_may_not_set_names_the_limit(
    torch_cpu: str, tmp_path: Path, docker_engine: Any
) -> None:
    # Above fs.nr_open, no process may have that many files open, root included.
    limit = int(Path("/proc/sys/fs/nr_open").read_text()) + 1
    flags = ["--ulimit", f"nofile={limit}:{limit}"]
    result = cudabox("run", "--cpu", *flags, *LABEL, "--", "true", cwd=tmp_path)
    assert_error(result, ExitCode.ENGINE, "nofile limit", "--ulimit nofile=N:N")
    assert managed(docker_engine) == []


@pytest.mark.docker
def test_sighup_reaches_the_command_as_sigterm_and_the_container_is_removed(
    torch_cpu: str, tmp_path: Path, docker_engine: Any
) -> None:
    # A closed SSH session sends SIGHUP: the command is stopped as by `docker stop`, and the
    # container does not outlive the launcher.
    script = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: (print('got TERM', flush=True), sys.exit(43)))\n"
        "signal.signal(signal.SIGHUP, lambda *a: (print('got HUP', flush=True), sys.exit(44)))\n"
        "print('ready', flush=True)\n"
        "time.sleep(120)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "cudabox", "run", "--cpu", *LABEL, "--", "python", "-c", script],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        assert process.stdout.readline().strip() == "ready"
        assert len(managed(docker_engine)) == 1
        process.send_signal(signal.SIGHUP)
        code = process.wait(timeout=60)
        output, errors = process.stdout.read(), process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert (code, "got TERM" in output, "got HUP" in output) == (43, True, False), errors
    assert "passing SIGTERM" in errors
    assert managed(docker_engine) == []


RANKS = (
    "import os, resource; s = os.statvfs('/dev/shm'); "
    "v = (os.environ['WORLD_SIZE'], os.environ['RANK'], "
    "*resource.getrlimit(resource.RLIMIT_MEMLOCK), *resource.getrlimit(resource.RLIMIT_STACK), "
    "s.f_blocks * s.f_frsize); "
    "os.write(1, (' '.join(map(str, v)) + '\\n').encode())"  # one write: the ranks share stdout
)


@pytest.mark.docker
def test_several_processes_per_container_run_under_torchrun(
    torch_cpu: str, tmp_path: Path, docker_engine: Any
) -> None:
    result = cudabox(
        "run", "--cpu", "--nproc-per-node", "2", *LABEL, "--", "python", "-c", RANKS, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = sorted(line.split() for line in result.stdout.splitlines())
    # Inside, Python shows unlimited as RLIM_INFINITY (-1), as cudabox writes it.
    memlock = str(multiprocess_memlock())
    shm = str(4 * 1024**3)
    assert rows == [
        ["2", rank, memlock, memlock, "67108864", "67108864", shm] for rank in ("0", "1")
    ]
    assert managed(docker_engine) == []
