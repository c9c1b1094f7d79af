"""More bad input, as a new user (or a hand edit) makes it: each a clear error, its exit code.

Doctor reports that are not doctor reports, broken locks, a broken verified record, broken
compute-capability data, and an image whose facts script prints something else than its facts.
"""

from __future__ import annotations

import json
import re
import shutil
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cudabox.cli import main
from cudabox.container import ImageInfo, RunResult
from cudabox.doctor.model import SCHEMA_VERSION, Check, DoctorReport
from cudabox.errors import BuildError, DataError, ExitCode, UsageError
from cudabox.images.catalog import load_catalog
from cudabox.images.context import BuildOptions, assemble_context
from cudabox.images.lock import parse_lock
from cudabox.images.record import read_record, write_record
from cudabox.images.verify import parse_facts, verify_image
from cudabox.jobs.affinity import known_capabilities, parse_capabilities

ROOT = Path(__file__).parents[1]
IMAGES = ROOT / "images"
REPORT = json.loads((ROOT / "tests" / "fixtures" / "doctor" / "reports" / "gpu-a.json").read_text())
CC_DATA = (ROOT / "toolkit" / "cudabox" / "data" / "compute_capabilities.toml").read_text()
H1 = "sha256:" + "a" * 64
H2 = "sha256:" + "b" * 64


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


def assert_error(code: int, err: str, expected: ExitCode, *names: str) -> None:
    """One error line naming what is wrong, a fix line, and no traceback."""
    assert code == expected, err
    assert "cudabox: error:" in err and "\n  fix: " in err, err
    assert "Traceback" not in err
    for name in names:
        assert name in err, (name, err)


# ---- doctor reports that are not doctor reports ------------------------------------------


def _report(change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(json.dumps(REPORT))
    change(data)
    return data


def _check0(key: str, value: Any) -> Callable[[dict[str, Any]], object]:
    return lambda d: d["checks"][0].__setitem__(key, value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_report(lambda d: d.update(here="false")), 'here must be true or false, got "false"'),
        (_report(lambda d: d.update(checks={})), "checks must be a list, got {}"),
        (_report(lambda d: d.update(checks=[])), "checks must list the checks the doctor ran"),
        (
            _report(lambda d: d.update(level="extreme")),
            "level must be one of quick, standard, full",
        ),
        (
            _report(lambda d: d.update(framework="jax")),
            "framework must be one of torch, tensorflow",
        ),
        (_report(lambda d: d.update(timestamp="yesterday")), "timestamp must be an ISO 8601 time"),
        (_report(lambda d: d.update(cudabox_version=1)), "cudabox_version must be text"),
        (_report(lambda d: d.update(image=["a"])), "image must be text or null"),
        (_report(lambda d: d.update(versions=[])), "versions must be an object"),
        (_report(lambda d: d.update(versions={"driver": 580})), "versions.driver must be text"),
        (_report(lambda d: d.update(schema=True)), "has doctor schema true"),
        (_report(lambda d: d.update(schema=0)), "has doctor schema 0"),
        (_report(lambda d: d.pop("level")), "it has no 'level' key"),
        (_report(lambda d: d.pop("here")), "it has no 'here' key"),
        (_report(lambda d: d.update(host=[])), "host is not a JSON object"),
        (_report(lambda d: d["checks"].append("ok")), "checks[28] must be an object"),
        (_report(lambda d: d["checks"][0].pop("status")), "checks[0] has no 'status' key"),
        (_report(_check0("status", "ok")), "checks[0].status must be one of pass, warn"),
        (_report(_check0("layer", "gpu")), "checks[0].layer must be one of host, engine"),
        (_report(_check0("id", "")), "checks[0].id must be a check id"),
        (_report(_check0("message", None)), "checks[0].message must be text"),
        (_report(_check0("value", [1, 2])), "checks[0].value must be a number, text"),
        (_report(_check0("expected", {"min": 1})), "checks[0].expected must be a number, text"),
        (_report(_check0("unit", 5)), "checks[0].unit must be text or null"),
        (_report(_check0("duration_s", "1s")), "checks[0].duration_s must be a number of seconds"),
        (_report(_check0("duration_s", -1)), "checks[0].duration_s must be a number of seconds"),
    ],
    ids=lambda v: None if isinstance(v, dict) else v[:40],
)
def test_a_report_must_be_a_doctor_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data: dict[str, Any], message: str
) -> None:
    report = tmp_path / "node.json"
    report.write_text(json.dumps(data))
    code, err = run(capsys, "report", str(report))
    assert_error(code, err, ExitCode.USAGE, f"report {report}", message)
    assert "fix: regenerate it with `cudabox doctor --json FILE` on that node" in err


def test_the_host_part_of_a_report_is_fixed_by_the_doctor_not_the_probe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "node.json"
    report.write_text(json.dumps(_report(lambda d: d["host"]["gpus"][0].update(visible="no"))))
    code, err = run(capsys, "report", str(report))
    assert_error(code, err, ExitCode.USAGE, f"report {report}: host", "gpus[0].visible")
    assert "cudabox doctor --json FILE" in err and "cudabox probe" not in err


def test_a_newer_schema_still_says_upgrade() -> None:
    with pytest.raises(UsageError) as raised:
        DoctorReport.from_json(
            _report(lambda d: d.update(schema=SCHEMA_VERSION + 1)), where="report r.json"
        )
    assert raised.value.fix == "upgrade cudabox on this machine"


def test_what_a_report_may_leave_out_and_what_it_keeps() -> None:
    data = _report(lambda d: [d.pop("image"), d.pop("versions"), d.pop("summary")])
    for check in data["checks"]:
        for key in ("value", "expected", "unit", "fix", "duration_s"):
            check.pop(key)
    report = DoctorReport.from_json(data, source="gpu-a")
    assert report.image is None and report.versions == {}
    assert report.checks[0].value is None and report.checks[0].duration_s is None
    full = DoctorReport.from_json(REPORT)
    assert full.here is False and full.level == "full" and len(full.checks) == 28
    assert full.checks[0].to_json() == REPORT["checks"][0]


def test_a_check_from_the_in_image_script_is_read_the_same_way() -> None:
    # gpu_checks.py writes no duration_s; the doctor's own run reads its checks with from_json.
    item = {"id": "framework.import", "layer": "framework", "status": "pass", "message": "ok"}
    assert Check.from_json(item).status == "pass"
    with pytest.raises(UsageError, match=r"^check: status must be one of"):
        Check.from_json({**item, "status": "passed"})
    with pytest.raises(UsageError, match="a check must be an object"):
        Check.from_json(["framework.import"])


# ---- locks -------------------------------------------------------------------------------

LOCK = f"""# header
torch==2.13.0+cpu \\
    --hash={H1} \\
    --hash={H2}
    # via -r torch.in
Typing_Extensions==4.16.0 ; python_version >= "3.9" \\
    --hash={H1}
"""


def test_a_crlf_lock_reads_like_an_lf_lock() -> None:
    crlf = LOCK.replace("\n", "\r\n")
    assert "\r\n" in crlf and parse_lock(crlf, "lock.txt") == parse_lock(LOCK, "lock.txt")
    assert parse_lock(crlf)["torch"].hashes == (H1, H2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "images/x/lock.txt pins no distribution"),
        ("# a header and nothing else\n\n", "pins no distribution"),
        (LOCK + f"torch==2.14.0 --hash={H1}\n", "line 8: torch is pinned twice (also on line 2)"),
        (LOCK + f"typing-extensions==4.16.0 --hash={H1}\n", "typing-extensions is pinned twice"),
        (LOCK + "six==1.17.0 \\\n  # via x\n", "line 8: six==1.17.0 has no --hash"),
        (LOCK + f"six>=1 --hash={H1}\n", "line 8: 'six>=1 --hash=sha256:aaaa"),
        (LOCK + "--extra-index-url https://x\n", "line 8: options (--extra-index-url)"),
    ],
    ids=[
        "empty",
        "comments-only",
        "duplicate",
        "duplicate-normalised",
        "no-hash",
        "not-pinned",
        "option",
    ],
)
def test_a_broken_lock_names_its_file_line_and_fix(text: str, message: str) -> None:
    with pytest.raises(DataError) as raised:
        parse_lock(text, "images/x/lock.txt")
    assert message in raised.value.message
    assert raised.value.message.startswith("images/x/lock.txt")
    assert raised.value.fix == "regenerate it with `cudabox lock NAME`"


@pytest.fixture
def images_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of images/ that CUDABOX_IMAGES points at, to break."""
    copy = tmp_path / "images"
    shutil.copytree(IMAGES, copy)
    monkeypatch.setenv("CUDABOX_IMAGES", str(copy))
    return copy


def _break_lock(lock: Path, how: str) -> None:
    text = lock.read_text()
    first = text[text.index("\n", text.index("#    uv ")) + 1 :].split("    # via")[0]
    if how == "duplicate":
        lock.write_text(text + first)
    elif how == "empty":
        lock.write_text("")
    elif how == "latin-1":
        lock.write_bytes(text.replace("# which runs", "# which r\xfcns").encode("latin-1"))
    elif how == "crlf":
        lock.write_bytes(text.replace("\n", "\r\n").encode())


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("duplicate", "is pinned twice"),
        ("empty", "pins no distribution"),
        ("latin-1", "is not UTF-8 text (byte 0xfc on line 3)"),
    ],
)
def test_render_check_with_a_broken_lock_is_a_data_error(
    images_copy: Path, capsys: pytest.CaptureFixture[str], how: str, message: str
) -> None:
    lock = images_copy / "torch" / "torch-2.13-cpu" / "lock.txt"
    _break_lock(lock, how)
    code, err = run(capsys, "render", "--check", "torch-2.13-cpu")
    assert_error(code, err, ExitCode.DATA, "torch/torch-2.13-cpu/lock.txt", message)
    assert "cudabox lock" in err


def test_render_check_reads_a_crlf_lock(
    images_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # cudabox reads locks without newline translation (Path.read_text would hide the \r).
    _break_lock(images_copy / "torch" / "torch-2.13-cpu" / "lock.txt", "crlf")
    assert main(["render", "--check", "torch-2.13-cpu"]) == ExitCode.OK  # the same Dockerfile
    assert "1 Dockerfile(s) current" in capsys.readouterr().err


def test_a_build_context_with_a_broken_lock_is_a_data_error(
    images_copy: Path, tmp_path: Path
) -> None:
    spec = load_catalog(images_copy / "catalog.toml").get("torch-2.13-cpu")
    for how, message in [("latin-1", "is not UTF-8 text"), ("duplicate", "is pinned twice")]:
        _break_lock(spec.lock, how)
        dest = tmp_path / f"context-{how}"
        dest.mkdir()
        with pytest.raises(DataError, match=message) as raised:
            assemble_context(spec, dest, BuildOptions(), images_copy)
        assert str(spec.lock) in raised.value.message
        assert raised.value.fix and "cudabox lock" in raised.value.fix
        shutil.copyfile(IMAGES / "torch" / "torch-2.13-cpu" / "lock.txt", spec.lock)


# ---- the verified record (images/verified.json) ------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"schema": 1, "images": {', "is not JSON"),
        ("[]", "is not a JSON object"),
        ('{"images": {}}', "has schema None"),
        ('{"schema": true, "images": {}}', "has schema True"),
        ('{"schema": 1, "images": []}', "'images' must be an object"),
        ('{"schema": 1, "images": {"torch-2.13-cpu": "ok"}}', "'torch-2.13-cpu' must be an object"),
        (b'{"schema": 1, "images": {"\xe9": {}}}', "is not UTF-8 text"),
    ],
    ids=["truncated", "list", "no-schema", "bool-schema", "images-list", "entry", "latin-1"],
)
def test_a_broken_record_is_a_data_error(
    tmp_path: Path, content: str | bytes, message: str
) -> None:
    path = tmp_path / "verified.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError, match=re.escape(message)) as raised:
        read_record(path)
    assert str(path) in raised.value.message and raised.value.fix
    before = path.read_bytes()
    with pytest.raises(DataError):
        write_record(path, {"torch-2.13-cpu": {"tag": "t"}})
    assert path.read_bytes() == before  # a record cudabox cannot read is left as it was


def test_the_record_is_updated_whole(tmp_path: Path) -> None:
    path = tmp_path / "verified.json"
    assert read_record(path) == {}
    write_record(path, {"b": {"tag": "b"}})
    write_record(path, {"a": {"tag": "a"}, "b": {"tag": "b2"}})
    assert json.loads(path.read_text()) == {
        "schema": 2,  # RECORD_SCHEMA: diff_ids and the base digest came with 2
        "images": {"a": {"tag": "a"}, "b": {"tag": "b2"}},
    }
    assert [p.name for p in tmp_path.iterdir()] == ["verified.json"]  # no temporary file left
    assert set(read_record(IMAGES / "verified.json")) >= {"torch-2.13-cpu"}
    with pytest.raises(DataError, match="is a directory"):
        read_record(tmp_path)


# ---- compute-capability data -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (CC_DATA + "\n[[compute_capability]\n", "compute_capabilities.toml is not valid TOML"),
        (
            CC_DATA.replace('cc = "8.6"', "cc = 8.6"),
            r"\[\[compute_capability\]\] row 13: 'cc' must be a string, got 8.6",
        ),
        (CC_DATA.replace('cc = "8.6"', 'cc = "eight"'), r"row 13: compute capability 'eight'"),
        (CC_DATA.replace('cc = "8.6"', 'cc = "8.0"'), "row 13: compute capability 8.0 appears"),
        (
            CC_DATA.replace('gpus = "Tesla K80"\n', ""),
            r"\[\[compute_capability\]\] row 2: missing key 'gpus'",
        ),
        (CC_DATA.replace('gpus = "Tesla K80"', 'gpus = ["Tesla K80"]'), "row 2: 'gpus' must be"),
        (
            CC_DATA.replace('gpus = "Tesla K80"', 'gpus = "K80"\ntegra = true'),
            "unknown key 'tegra'",
        ),
        (CC_DATA.replace('source = "S25"', 'source = "COMPAT.md"', 1), "unknown source 'COMPAT"),
        (
            "compute_capability = [1, 2]\n",
            "must be a list of \\[\\[compute_capability\\]\\] tables",
        ),
        (
            '[compute_capability]\ncc = "9.0"\ngpus = "H100"\nsource = "S1"\n[sources]\nS1 = "x"\n',
            "must be a list of",
        ),
        ("[sources]\nS1 = 'x'\n", r"no \[\[compute_capability\]\] rows"),
        (CC_DATA.replace("[sources]", "[source]"), "unknown top-level key 'source'"),
        (CC_DATA + "S99 = 1\n", r"\[sources\] must map each source key to a text"),
    ],
    ids=[
        "syntax",
        "float-cc",
        "bad-cc",
        "duplicate",
        "missing-key",
        "list-gpus",
        "unknown-key",
        "unknown-source",
        "not-tables",
        "one-table",
        "no-rows",
        "unknown-top",
        "source-not-text",
    ],
)
def test_broken_compute_capability_data_is_a_data_error_naming_the_row(
    text: str, message: str
) -> None:
    with pytest.raises(DataError, match=message) as raised:
        parse_capabilities(text)
    assert raised.value.fix and "compute_capabilities.toml" in raised.value.fix
    assert raised.value.exit_code == ExitCode.DATA


def test_the_shipped_compute_capabilities_load_from_text_and_cite_public_sources() -> None:
    assert parse_capabilities(CC_DATA) == known_capabilities()
    sources = tomllib.loads(CC_DATA)["sources"]
    for key, text in sources.items():
        assert "https://" in text or "docs/facts.md" in text, f"{key}: no public source"
        for page in re.findall(r"[\w./-]+\.md\b", text):
            assert (ROOT / page).is_file(), f"{key} cites {page}, which is not in the repository"
    assert "COMPAT.md" not in CC_DATA
    assert "\n## 7. " in (ROOT / "docs" / "facts.md").read_text()  # the section S25b cites


# ---- an image whose facts script prints something else -----------------------------------

FACTS: dict[str, Any] = {
    "framework": "torch",
    "framework_version": "2.13.0+cpu",
    "cuda": None,
    "cudnn": None,
    "arch_list": [],
    "gpu_count": 0,
    "python": "3.11.2",
    "uid": 1000,
    "packages": {"torch": "2.13.0+cpu"},
    "packages_bytes": 880,
}


class _FactsEngine:
    """An engine whose image prints `output` from facts.py (the other scripts pass)."""

    def __init__(self, output: str) -> None:
        self.output = output

    def image(self, ref: str) -> ImageInfo:
        return ImageInfo("sha256:1", (ref,), 1_100, {}, {}, "cudabox", "")

    def run(self, tag: str, command: list[str], **kwargs: Any) -> RunResult:
        printed = self.output if command[-1].endswith("/facts.py") else "fine"
        return RunResult(exit_code=0, output=printed, seconds=0.1)


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("[1, 2]\n", "printed list [1, 2], not a JSON object"),
        ("Segmentation fault\n", "printed no JSON object (its last line is not JSON"),
        ("", "printed no JSON object"),
        (json.dumps(FACTS) + "\nW0000 a warning after the facts\n", "printed no JSON object"),
        (json.dumps({**FACTS, "packages_bytes": "880"}), "printed 'packages_bytes' as \"880\""),
        (json.dumps({**FACTS, "packages_bytes": -1}), "a negative 'packages_bytes'"),
        (json.dumps({**FACTS, "uid": True}), "printed 'uid' as true"),
        (json.dumps({**FACTS, "arch_list": "sm_80"}), "printed 'arch_list' as \"sm_80\""),
        (json.dumps({**FACTS, "arch_list": [80]}), "'arch_list' that is not a list of texts"),
        (json.dumps({**FACTS, "packages": {"torch": 2}}), "'packages' whose versions are not"),
        (json.dumps({**FACTS, "cuda": "thirteen"}), "cannot read (CUDA version 'thirteen'"),
        (json.dumps({**FACTS, "arch_list": ["sm_x"]}), "cannot read (architecture 'sm_x'"),
        (json.dumps({k: v for k, v in FACTS.items() if k != "uid"}), "printed no 'uid'"),
        (json.dumps(FACTS).replace("880", "NaN"), "NaN is not a JSON number"),
    ],
)
def test_facts_that_are_not_the_facts_are_a_build_error(output: str, message: str) -> None:
    spec = load_catalog(IMAGES / "catalog.toml").get("torch-2.13-cpu")
    with pytest.raises(BuildError) as raised:
        verify_image(_FactsEngine(output), spec, IMAGES, run_units=False)  # type: ignore[arg-type]
    assert raised.value.message.startswith(f"torch-2.13-cpu: the facts check in {spec.tag} ")
    assert message in raised.value.message
    assert output.strip() in raised.value.message  # what the script printed, to see why
    assert raised.value.fix and "facts.py" in raised.value.fix
    assert raised.value.exit_code == ExitCode.BUILD


def test_the_facts_of_a_good_image_are_read() -> None:
    spec = load_catalog(IMAGES / "catalog.toml").get("torch-2.13-cpu")
    engine = _FactsEngine("a line of noise\n" + json.dumps(FACTS) + "\n")
    result = verify_image(engine, spec, IMAGES)  # type: ignore[arg-type]
    assert result.packages_bytes == 880 and "packages_bytes" not in result.reported
    # The fake image has no labels; everything else the facts say matches the catalog.
    assert result.problems and all(p.startswith("labels: ") for p in result.problems)
    assert set(result.units) == {"unit_cpu_op.py", "unit_gpu.py", "unit_import.py"}
    data, reported = parse_facts(json.dumps(FACTS), "x", "fix")
    assert reported.local == "cpu" and data["uid"] == 1000
