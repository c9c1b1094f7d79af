"""Bad input files and data, as a new user makes them: each a clear error, its exit code, no crash.

One test per class of mistake: JSON that is not strict JSON, files that are not files, host
profiles that are not host profiles, a broken catalog, broken compatibility or performance data,
a doctor report that cannot be written, and facts that cite files outside the repository.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cudabox import output
from cudabox.cli import main
from cudabox.compat import parse_compat
from cudabox.doctor import perf
from cudabox.errors import DataError, DiskFull, ExitCode, UsageError
from cudabox.host import HostProfile

ROOT = Path(__file__).parents[1]
HOSTS = ROOT / "tests" / "fixtures" / "hosts"
REPORTS = ROOT / "tests" / "fixtures" / "doctor" / "reports"
CATALOG = (ROOT / "images" / "catalog.toml").read_text()
DATA = ROOT / "toolkit" / "cudabox" / "data"
H100 = json.loads((HOSTS / "h100.json").read_text())


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """`cudabox ARGS` in this process: its exit code and stderr."""
    code = main(list(args))
    return code, capsys.readouterr().err


def assert_error(code: int, err: str, expected: ExitCode, *names: str) -> None:
    """One error line naming what is wrong, a fix line, and no traceback."""
    assert code == expected, err
    assert "cudabox: error:" in err and "\n  fix: " in err, err
    assert "Traceback" not in err
    for name in names:
        assert name in err, (name, err)


def select(capsys: pytest.CaptureFixture[str], host: Path) -> tuple[int, str]:
    return run(capsys, "select", "--framework", "torch", "--host", str(host))


# ---- JSON that is not strict JSON --------------------------------------------------------


def _with_memory(literal: str) -> str:
    return json.dumps(H100).replace(
        '"memory_total_mib": 81559', f'"memory_total_mib": {literal}', 1
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (_with_memory("1e400"), "the number 1e400 is too large"),
        (_with_memory("NaN"), "NaN is not a JSON number"),
        (_with_memory("Infinity"), "Infinity is not a JSON number"),
        (_with_memory("-Infinity"), "-Infinity is not a JSON number"),
        (_with_memory("9" * 5000), "more than 30 digits"),
        ("[" * 200_000 + "]" * 200_000, "nested deeper"),
        ('{"a":' * 100 + "1" + "}" * 100, "nested deeper than 64 levels"),
        (json.dumps(H100)[:-1] + ', "hostname": "other"}', "the key 'hostname' appears twice"),
        (json.dumps(H100).replace('"hgx-h100"', '"\\udc80"'), "unpaired surrogate"),
        (json.dumps(H100).encode().replace(b"hgx-h100", b"hgx-h\xe9100"), "is not UTF-8 text"),
        (b"\xff\xfe{\x00}\x00", "is not UTF-8 text (byte 0xff on line 1)"),  # UTF-16 from an editor
        ("", "is not JSON (Expecting value, line 1 column 1)"),
    ],
    ids=[
        "1e400",
        "nan",
        "infinity",
        "minus-infinity",
        "5000-digits",
        "200000-deep",
        "100-deep",
        "duplicate-key",
        "lone-surrogate",
        "latin-1",
        "utf-16",
        "empty",
    ],
)
def test_json_that_is_not_strict_json_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | bytes, message: str
) -> None:
    host = tmp_path / "node.json"
    if isinstance(content, bytes):
        host.write_bytes(content)
    else:
        host.write_text(content, errors="surrogatepass")
    code, err = select(capsys, host)
    assert_error(code, err, ExitCode.USAGE, str(host), message)


def test_a_byte_order_mark_is_allowed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    host = tmp_path / "node.json"
    host.write_bytes(b"\xef\xbb\xbf" + (HOSTS / "h100.json").read_bytes())
    assert main(["select", "--framework", "torch", "--host", str(host)]) == ExitCode.OK
    assert "selected: torch-2.15-cu132" in capsys.readouterr().out


def test_the_same_json_mistakes_in_a_doctor_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (REPORTS / "gpu-a.json").read_text()
    report = tmp_path / "node.json"
    report.write_text(text.replace('"duration_s": null', '"duration_s": Infinity', 1))
    code, err = run(capsys, "report", str(report))
    assert_error(code, err, ExitCode.USAGE, str(report), "Infinity is not a JSON number")
    report.write_text("[" * 200_000 + "]" * 200_000)
    code, err = run(capsys, "report", str(report))
    assert_error(code, err, ExitCode.USAGE, str(report), "nested deeper")


# ---- paths that are not files ------------------------------------------------------------


def test_paths_that_are_not_json_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases: list[tuple[Path, str]] = [
        (tmp_path, "is a directory, not a file"),
        (tmp_path / "absent.json", "does not exist"),
        (HOSTS / "h100.json" / "x.json", "does not exist"),  # a file used as a folder
        (Path("/dev/zero"), "is a device or a socket, not a file"),  # would never end
        (Path("/proc/self/status"), "is not JSON"),
    ]
    for path, message in cases:
        code, err = select(capsys, path)
        assert_error(code, err, ExitCode.USAGE, str(path), message)
        code, err = run(capsys, "report", str(path))
        assert_error(code, err, ExitCode.USAGE, str(path), message)


@pytest.mark.skipif(os.geteuid() != 0, reason="/proc/kmsg is readable by root only")
def test_a_proc_file_that_waits_is_refused_not_waited_on(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, err = select(capsys, Path("/proc/kmsg"))
    assert_error(code, err, ExitCode.USAGE, "/proc/kmsg", "cannot be read without waiting")


def test_a_pipe_is_read(capsys: pytest.CaptureFixture[str]) -> None:
    # `cudabox select --host <(ssh node cudabox probe --json)` hands cudabox a pipe.
    read_end, write_end = os.pipe()
    os.write(write_end, (HOSTS / "h100.json").read_bytes())
    os.close(write_end)
    try:
        code = main(["select", "--framework", "torch", "--host", f"/proc/self/fd/{read_end}"])
    finally:
        os.close(read_end)
    assert code == ExitCode.OK
    assert "selected: torch-2.15-cu132" in capsys.readouterr().out


def test_a_huge_file_is_refused_without_reading_it_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(output, "MAX_INPUT_BYTES", 1000)
    big = tmp_path / "big.json"
    big.write_text(" " * 5000 + "{}")
    with pytest.raises(UsageError, match="is larger than"):
        output.read_json(big, "host file", "fix")


# ---- host profiles that are not host profiles --------------------------------------------


def _host(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    data = copy.deepcopy(H100)
    change(data)
    return data


def _gpu0(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: d["gpus"][0].__setitem__(key, value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "it has no 'schema' key"),
        ({"name": "my-app", "version": "1.0.0", "dependencies": {}}, "it has no 'schema' key"),
        (_host(lambda d: d.update(schema=2)), "has host profile schema 2"),
        (_host(lambda d: d.update(schema="1")), 'has host profile schema "1"'),
        (_host(lambda d: d.update(schema=True)), "has host profile schema true"),
        (_host(lambda d: d.pop("gpus")), "it has no 'gpus' key"),
        (_host(lambda d: d.pop("status")), "it has no 'status' key"),
        (_host(lambda d: d.update(status="great")), "status must be one of"),
        (_host(lambda d: d.update(cuda_driver_version="13.x")), "cuda_driver_version: CUDA"),
        (_host(lambda d: d.update(cuda_driver_version=13)), "cuda_driver_version must be text"),
        (_host(lambda d: d.update(driver_version="latest")), "driver_version: driver version"),
        (_host(lambda d: d.update(hostname=["a"])), "hostname must be text or null"),
        (_host(lambda d: d.update(gpus={"0": {}})), "gpus must be a list"),
        (_host(lambda d: d.update(gpus=[1])), "gpus[0] must be an object"),
        (_host(_gpu0("visible", "false")), 'gpus[0].visible must be true or false, got "false"'),
        (_host(_gpu0("mig_enabled", 0)), "gpus[0].mig_enabled must be true or false"),
        (_host(_gpu0("compute_capability", "9")), "gpus[0].compute_capability: compute"),
        (_host(_gpu0("compute_capability", 9.0)), "gpus[0].compute_capability must be text"),
        (_host(_gpu0("memory_total_mib", -5)), "gpus[0].memory_total_mib must be a whole number"),
        (_host(_gpu0("memory_total_mib", "80GB")), "gpus[0].memory_total_mib must be a whole"),
        (_host(_gpu0("memory_total_mib", 81559.5)), "gpus[0].memory_total_mib must be a whole"),
        (_host(_gpu0("index", True)), "gpus[0].index must be a whole number"),
        (_host(_gpu0("index", "0")), "gpus[0].index must be a whole number"),
        (_host(_gpu0("index", 1)), "two GPUs have index 1"),
        (_host(lambda d: d["gpus"][0].pop("index")), "gpus[0] has no 'index' key"),
        (_host(_gpu0("pci_device_id", "H100")), "gpus[0].pci_device_id must be of the form"),
        (
            _host(_gpu0("mig_devices", [{"index": 0, "uuid": "MIG-1", "visible": "no"}])),
            "gpus[0].mig_devices[0].visible must be true or false",
        ),
        (_host(_gpu0("mig_devices", [{"index": 0}])), "gpus[0].mig_devices[0].uuid must be text"),
    ],
    ids=lambda v: None if isinstance(v, dict) else v[:40],
)
def test_a_host_file_must_be_a_host_profile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data: dict[str, Any], message: str
) -> None:
    host = tmp_path / "node.json"
    host.write_text(json.dumps(data))
    code, err = select(capsys, host)
    assert_error(code, err, ExitCode.USAGE, str(host), message)
    assert "cudabox probe --json" in err  # the fix: regenerate it


def test_every_recorded_host_profile_still_loads() -> None:
    for path in HOSTS.glob("*.json"):
        round_trip = json.loads(HostProfile.load(path).dumps())
        assert round_trip == json.loads(path.read_text()), path


def test_a_profile_may_leave_out_the_optional_keys() -> None:
    minimal = {
        "schema": 1,
        "driver_version": "580.95.05",
        "cuda_driver_version": "13.0",
        "status": "ok",
        "gpus": [{"index": 0, "compute_capability": "9.0"}],
    }
    profile = HostProfile.from_json(minimal)
    assert profile.gpus[0].visible and profile.hostname is None


def test_a_doctor_report_with_a_broken_host_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = json.loads((REPORTS / "gpu-a.json").read_text())
    data["host"]["cuda_driver_version"] = "13.x"
    report = tmp_path / "node.json"
    report.write_text(json.dumps(data))
    code, err = run(capsys, "report", str(report))
    assert_error(code, err, ExitCode.USAGE, str(report), "cuda_driver_version: CUDA version '13.x'")
    # The same file given to select, which takes a doctor report as a host file.
    code, err = select(capsys, report)
    assert_error(code, err, ExitCode.USAGE, str(report), "cuda_driver_version")
    del data["host"]["schema"]
    report.write_text(json.dumps(data))
    code, err = run(capsys, "report", str(report))
    assert_error(code, err, ExitCode.USAGE, str(report), "it has no 'schema' key")


# ---- the catalog -------------------------------------------------------------------------


def _catalog_case(name: str) -> str | bytes:
    head, *images = CATALOG.split("\n[[image]]\n")
    return {
        "image-of-ints": head + "\nimage = [1, 2]\n",
        "image-table": head + "\n[image]\n" + images[0],
        "int-arch": CATALOG.replace('sass_archs = ["7.5", "8.0"', 'sass_archs = [75, "8.0"', 1),
        "latin-1": CATALOG.replace("Maxwell", "Maxw\xe9ll").encode("latin-1"),
        "syntax": CATALOG + "\n[[image]\n",
        "float-cuda": CATALOG.replace('cuda = "13.2"', "cuda = 13.2"),
        "bad-name": CATALOG.replace('name = "tf-2.21-cpu"', 'name = "TF 2.21"'),
        "no-schema": CATALOG.replace("\nschema = 1\n", "\n"),
    }[name]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("image-of-ints", "'image' must be a list of [[image]] tables"),
        ("image-table", "'image' is one [image] table"),
        ("int-arch", "'sass_archs' must be a list of strings"),
        ("latin-1", "is not UTF-8 text (byte 0xe9 on line"),
        ("syntax", "is not valid TOML"),
        ("float-cuda", "'cuda' must be a str, got 13.2"),
        ("bad-name", "name 'TF 2.21' cannot be part of an image tag"),
        ("no-schema", "'schema' must be 1, got None"),
    ],
)
def test_a_broken_catalog_is_a_data_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    case: str,
    message: str,
) -> None:
    content = _catalog_case(case)
    catalog = tmp_path / "catalog.toml"
    catalog.write_bytes(content if isinstance(content, bytes) else content.encode())
    monkeypatch.setenv("CUDABOX_IMAGES", str(tmp_path))
    code, err = run(capsys, "images")
    assert_error(code, err, ExitCode.DATA, str(catalog), message)
    code, err = select(capsys, HOSTS / "h100.json")
    assert_error(code, err, ExitCode.DATA, str(catalog), message)


def test_a_catalog_that_is_not_there_is_a_data_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "catalog.toml").mkdir()
    (tmp_path / "empty").mkdir()
    cases = [
        (tmp_path, "catalog.toml is a directory, not a file"),
        (tmp_path / "empty", "empty/catalog.toml does not exist"),
        (tmp_path / "absent", "CUDABOX_IMAGES=" + str(tmp_path / "absent") + ": no such folder"),
        (ROOT / "images" / "catalog.toml", "is a file; it must name the folder"),
    ]
    for folder, message in cases:
        monkeypatch.setenv("CUDABOX_IMAGES", str(folder))
        code, err = run(capsys, "images")
        assert_error(code, err, ExitCode.DATA, message)
        assert "CUDABOX_IMAGES" in err


# ---- compatibility and performance data --------------------------------------------------

COMPAT = (DATA / "compat.toml").read_text()
PERF = (DATA / "gpu_perf.toml").read_text()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (COMPAT + "\n[[tegra]\n", "compat.toml is not valid TOML"),
        (
            COMPAT.replace('cuda = "11.8"', "cuda = 11.8"),
            r"\[\[toolkit_driver\]\] row 1: 'cuda' must be a string, got 11.8",
        ),
        (
            COMPAT.replace("cuda_major = 13", 'cuda_major = "13"'),
            r"\[\[minor_version_floor\]\] row 3: 'cuda_major' must be a whole number",
        ),
        (
            COMPAT.replace('cuda = "11.8"', 'cuda = "11.8"\nnote = "x"'),
            r"row 1: unknown key 'note'",
        ),
        (COMPAT.replace('source = "S1"', 'source = "S99"', 1), r"row 1 .* unknown source 'S99'"),
        (COMPAT.replace('source = "S1"', 'source = "COMPAT.md"', 1), "unknown source"),
        (COMPAT.replace("[[tegra]]", "[[tegras]]"), "unknown top-level key 'tegras'"),
        (
            '[toolkit_driver]\ncuda = "11.8"\ndriver = "520.61.05"\nsource = "S1"\n'
            + COMPAT[COMPAT.index("[[minor_version_floor]]") :],
            "'toolkit_driver' must be a list of",
        ),
        (COMPAT.replace('cuda = "12.0"', 'cuda = "11.8"'), "two .* rows for CUDA 11.8"),
        (COMPAT.replace('driver = "610.43.02"', 'driver = "500"'), "CUDA 13.3 needs driver 500"),
        (COMPAT.replace('compute_capability = "8.7"', 'compute_capability = "8"'), "'8'"),
    ],
    ids=[
        "syntax",
        "float-cuda",
        "text-major",
        "unknown-key",
        "unknown-source",
        "source-outside-repo",
        "unknown-table",
        "table-not-array",
        "duplicate-cuda",
        "driver-goes-back",
        "bad-cc",
    ],
)
def test_broken_compat_data_is_a_data_error_naming_the_row(text: str, message: str) -> None:
    with pytest.raises(DataError, match=message) as raised:
        parse_compat(text)
    assert raised.value.fix and raised.value.exit_code == ExitCode.DATA


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (PERF + "\n[[row]\n", "gpu_perf.toml is not valid TOML"),
        (PERF.replace("value = 798.0", 'value = "798"'), r"row 1: 'value' has the wrong type"),
        (PERF.replace("value = 798.0", "value = true"), r"row 1: 'value' has the wrong type"),
        (PERF.replace("value = 798.0", "value = nan"), "row 1: value must be a number above 0"),
        (PERF.replace("value = 798.0", "value = -1.0"), "row 1: value must be a number above 0"),
        (
            PERF.split("\n[[row]]\n")[0].replace("schema = 1", "schema = 1\nrow = [1, 2]"),
            r"'row' must be a list of \[\[row\]\]",
        ),
        (PERF.replace("schema = 1", "schema = 1\nrows = []"), "unknown top-level key 'rows'"),
        (PERF.replace('source = "NV-H100"', 'source = "KINDS.md"', 1), "is not in \\[sources\\]"),
    ],
    ids=["syntax", "text", "bool", "nan", "negative", "not-tables", "unknown-top", "source"],
)
def test_broken_performance_data_is_a_data_error(text: str, message: str) -> None:
    with pytest.raises(DataError, match=message) as raised:
        perf.parse_perf(text)
    assert raised.value.fix


def test_the_shipped_data_loads_from_text() -> None:
    assert parse_compat(COMPAT).minor_version_floor(13) is not None
    assert perf.parse_perf(PERF).expect("0x233010DE", "matmul_bf16") is not None


# ---- facts cite sources that exist -------------------------------------------------------


def _source_texts() -> list[tuple[str, str]]:
    texts = []
    for name in ("compat.toml", "gpu_perf.toml"):
        data = tomllib.loads((DATA / name).read_text())
        texts += [(f"{name} [sources] {key}", text) for key, text in data["sources"].items()]
    texts += [
        (f"catalog.toml {image['name']}", image["source"])
        for image in tomllib.loads(CATALOG)["image"]
    ]
    return texts


def test_facts_cite_public_sources_or_the_pages_in_this_repository() -> None:
    for where, text in _source_texts():
        for page in re.findall(r"[\w./-]+\.md\b", text):
            assert (ROOT / page).is_file(), f"{where} cites {page}, which is not in the repository"
    for where, text in _source_texts():
        if not where.startswith("catalog.toml"):
            assert "https://" in text or "docs/facts.md" in text, f"{where}: no public source"
    facts = (ROOT / "docs" / "facts.md").read_text()
    for section in range(1, 7):
        assert f"\n## {section}. " in facts  # the sections the data files cite


# ---- where the doctor writes its report --------------------------------------------------


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("/proc/x.json", "cannot write the doctor report to /proc/x.json"),
        ("{tmp}", "it is a directory"),
        ("{tmp}/absent/r.json", "the folder {tmp}/absent does not exist"),
        ("{tmp}/file.txt/r.json", "the folder {tmp}/file.txt does not exist"),
    ],
    ids=["proc", "directory", "missing-folder", "file-as-folder"],
)
def test_doctor_checks_the_report_path_before_running(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    target: str,
    message: str,
) -> None:
    from cudabox.doctor import run as doctor_run

    ran: list[bool] = []
    monkeypatch.setattr(doctor_run.Doctor, "run", lambda self: ran.append(True))
    (tmp_path / "file.txt").write_text("")
    path = target.format(tmp=tmp_path)
    code, err = run(capsys, "doctor", "--level", "quick", "--here", "--json", path)
    assert_error(code, err, ExitCode.USAGE, message.format(tmp=tmp_path))
    assert ran == []  # refused before any layer ran


def test_a_read_only_place_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def read_only(*args: object, **kwargs: object) -> tuple[int, str]:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("tempfile.mkstemp", read_only)
    with pytest.raises(UsageError, match="the file system is read-only"):
        output.check_writable(tmp_path / "r.json", "doctor report")


def test_the_report_is_written_whole_or_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "r.json"
    target.write_text("the previous report\n")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DiskFull, match="no space left to write the doctor report"):
        output.write_atomic(target, "{}\n", "doctor report")
    assert target.read_text() == "the previous report\n"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left
    monkeypatch.undo()
    output.write_atomic(target, '{"new": 1}\n', "doctor report")
    assert target.read_text() == '{"new": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_a_new_report_gets_the_usual_file_mode(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        output.write_atomic(tmp_path / "r.json", "{}\n", "doctor report")
    finally:
        os.umask(umask)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644


def test_a_full_device_is_exit_13() -> None:
    with pytest.raises(DiskFull) as raised:
        output.write_atomic(Path("/dev/full"), "{}\n", "doctor report")
    assert raised.value.exit_code == ExitCode.DISK_FULL


def test_a_deleted_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    # The catalog is still found from the checkout cudabox runs from.
    assert main(["select", "--framework", "torch", "--host", str(HOSTS / "h100.json")]) == 0
    assert "selected: torch-2.15-cu132" in capsys.readouterr().out
    code, err = run(capsys, "doctor", "--level", "quick", "--here", "--json", "r.json")
    assert_error(code, err, ExitCode.USAGE, "the working directory no longer exists")
