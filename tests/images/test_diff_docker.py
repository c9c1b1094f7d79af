"""`cudabox diff` against the real engine: small images built FROM the local base.

Two images differ in one distribution's version (a tiny fake wheel installed in a site-packages
folder) and in one file; a third is a rebuild of the first. Every image made here is tagged
cudabox-test/diff-*:<run id> and removed at the end (with its untagged parent layers).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cudabox.commands.diff import cmd_diff
from cudabox.engine import Engine
from cudabox.errors import UsageError

pytestmark = [pytest.mark.docker]

RUN_ID = uuid.uuid4().hex[:10]
SITE = "/opt/venv/lib/python3.11/site-packages"
MARKER = "/etc/cudabox-diff-test.txt"
LABELS = {"cudabox.test": "1"}


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def _context(folder: Path, version: str, marker: str, base: str) -> Path:
    """A build context installing fakedist==VERSION as pip would, plus one marker file."""
    site = folder / "site-packages"
    package = site / "fakedist"
    info = site / f"fakedist-{version}.dist-info"
    package.mkdir(parents=True)
    info.mkdir()
    files = {
        "fakedist/__init__.py": f'__version__ = "{version}"\n'.encode(),
        f"fakedist-{version}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: fakedist\nVersion: {version}\n\nA fake.\n".encode()
        ),
        f"fakedist-{version}.dist-info/INSTALLER": b"pip\n",
    }
    for name, data in files.items():
        (site / name).write_bytes(data)
    rows = [f"{name},{_record_hash(data)},{len(data)}" for name, data in files.items()]
    (info / "RECORD").write_text(
        "\n".join([*rows, f"fakedist-{version}.dist-info/RECORD,,"]) + "\n"
    )
    (folder / "marker.txt").write_text(marker)
    (folder / "Dockerfile").write_text(
        f"FROM {base}\nCOPY site-packages/ {SITE}/\nCOPY marker.txt {MARKER}\n"
    )
    return folder


@pytest.fixture(scope="module")
def images(
    docker_engine: Any, base_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """Tags of: a (fakedist 1.0, marker a), b (fakedist 1.1, marker b), a2 (a rebuilt)."""
    engine = Engine.connect()
    made: list[str] = []
    try:
        contexts = {
            "a": _context(tmp_path_factory.mktemp("diff-a"), "1.0", "a\n", base_image),
            "b": _context(tmp_path_factory.mktemp("diff-b"), "1.1", "b\n", base_image),
        }
        contexts["a2"] = contexts["a"]  # the rebuild: the same sources, built again from nothing
        tags = {}
        for key, context in contexts.items():
            tags[key] = f"cudabox-test/diff-{key}:{RUN_ID}"
            engine.build(context, tags[key], labels=LABELS, nocache=True)
            made.append(tags[key])
        yield tags
    finally:
        for tag in made:
            engine.remove_image(tag, force=True)
        engine.close()


def run_diff(a: str, b: str, capsys: pytest.CaptureFixture[str], as_json: bool) -> tuple[int, str]:
    code = cmd_diff(argparse.Namespace(a=a, b=b, json=as_json))
    return code, capsys.readouterr().out


def test_one_distribution_and_one_file_differ(
    images: dict[str, str], base_image: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run_diff(images["a"], images["b"], capsys, as_json=True)
    report = json.loads(out)
    assert code == 1 and report["verdict"] == "different"
    (dist,) = report["distributions"]
    assert (dist["change"], dist["name"], dist["location"]) == ("changed", "fakedist", SITE)
    assert (dist["old_version"], dist["new_version"]) == ("1.0", "1.1")
    assert dist["files"] == {"added": 0, "removed": 0, "changed": 3}  # __init__, METADATA, RECORD
    assert report["files"]["entries"] == [
        {
            "path": MARKER,
            "change": "changed",
            "kind": "file",
            "old_size": 2,
            "new_size": 2,
            "what": ["content"],
        }
    ]
    with Engine.connect() as engine:
        base, info_a, info_b = (engine.image(r) for r in (base_image, images["a"], images["b"]))
    assert base is not None and info_a is not None and info_b is not None
    layers = report["layers"]
    # The base's layers are the shared chain; the two COPY layers of B are what a host fetches.
    assert layers["chain_shared"]["count"] == layers["shared"]["count"] == len(base.diff_ids)
    top = report["b"]["layers"][len(base.diff_ids) :]
    assert [r["shared"] for r in top] == [False, False]
    assert layers["b_fetch"]["chain"] == layers["b_fetch"]["set"] == sum(r["size"] for r in top)
    assert report["layers_read"] == len(base.diff_ids) + 4  # the shared base is read once
    # Layer sizes add up to what the engine reports for the image (a few bytes apart at most:
    # the engine measures its own copy of the files).
    for side, info in ((report["a"], info_a), (report["b"], info_b)):
        assert side["id"] == info.id and side["size"] == info.size
        assert abs(sum(r["size"] for r in side["layers"]) - info.size) <= 64


def test_human_output_names_the_changes(
    images: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run_diff(images["a"], images["b"], capsys, as_json=False)
    assert code == 1
    dist_line = next(line for line in out.splitlines() if line.startswith("changed  fakedist"))
    assert "1.0" in dist_line and "1.1" in dist_line and SITE in dist_line
    assert f"  changed  {MARKER}  (content)" in out
    assert out.rstrip().splitlines()[-1] == "different: 1 distribution(s) and 1 other path(s)"


def test_an_image_against_itself_is_identical_without_reading_it(
    images: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    code, out = run_diff(images["a"], images["a"], capsys, as_json=True)
    report = json.loads(out)
    assert code == 0 and report["verdict"] == "identical"
    assert report["layers_read"] == 0 and report["distributions"] == []
    assert report["layers"]["b_fetch"] == {"chain": 0, "set": 0}
    assert time.monotonic() - started < 10


def test_a_rebuild_from_the_same_sources_is_identical(
    images: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run_diff(images["a"], images["a2"], capsys, as_json=False)
    assert code == 0, out
    # "identical" when the rebuild made the same layers; "identical files" when only file
    # times differ (then its layers are downloaded again, which the output says).
    assert out.rstrip().splitlines()[-1].startswith("identical")


def test_an_unknown_image_is_a_usage_error(images: dict[str, str]) -> None:
    with pytest.raises(UsageError, match=f"cudabox-test/diff-none:{RUN_ID} is not on this engine"):
        cmd_diff(
            argparse.Namespace(a=images["a"], b=f"cudabox-test/diff-none:{RUN_ID}", json=False)
        )
