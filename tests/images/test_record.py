"""The verified record (images/verified.json): what is written, and that updates keep the rest."""

from __future__ import annotations

import json
from pathlib import Path

from cudabox.images.build import BuildResult
from cudabox.images.catalog import load_catalog
from cudabox.images.lock import lock_digest
from cudabox.images.record import read_record, record_entry, write_record
from cudabox.images.verify import VerifyResult

IMAGES = Path(__file__).resolve().parents[2] / "images"
CATALOG = load_catalog(IMAGES / "catalog.toml")


def _result(name: str) -> VerifyResult:
    return VerifyResult(
        name=name,
        tag=f"cudabox/{name}:latest",
        ok=True,
        reported={"framework_version": "2.13.0+cpu", "cuda": None},
        units={"unit_import.py": "ok (1.0 s): fine"},
        image_bytes=1_100,
        base_bytes=200,
        packages_bytes=880,
    )


def test_overhead_is_relative_to_base_plus_packages() -> None:
    assert _result("x").overhead_pct == 1.9  # (1100 - 1080) / 1080
    assert VerifyResult("x", "t", ok=True).overhead_pct is None


def test_record_entry_and_update(tmp_path: Path) -> None:
    spec = CATALOG.get("torch-2.13-cpu")
    build = BuildResult(spec.name, spec.tag, "sha256:1", 93.5, 1_100, 2, "abc")
    entry = record_entry(spec, _result(spec.name), build, None)
    assert entry["build_seconds"] == 93.5 and entry["lock_sha256"] == lock_digest(spec.lock)
    assert entry["reported"]["framework_version"] == "2.13.0+cpu"
    # A later verify of the same image (no build in that run) keeps the build time of that lock.
    again = record_entry(spec, _result(spec.name), None, entry)
    assert again["build_seconds"] == 93.5
    assert (
        record_entry(spec, _result(spec.name), None, {**entry, "lock_sha256": "other"})[
            "build_seconds"
        ]
        is None
    )

    path = tmp_path / "verified.json"
    write_record(path, {"b-image": entry})
    write_record(path, {"a-image": again})
    data = json.loads(path.read_text())
    assert data["schema"] == 1 and list(data["images"]) == ["a-image", "b-image"]
    assert set(read_record(path)) == {"a-image", "b-image"}
