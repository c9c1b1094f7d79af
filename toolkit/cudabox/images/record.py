"""images/verified.json: what each image reported about itself when it was last verified."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cudabox.errors import DataError
from cudabox.images.catalog import ImageSpec
from cudabox.images.lock import lock_digest
from cudabox.images.verify import VerifyResult
from cudabox.output import read_json, write_atomic

if TYPE_CHECKING:
    from cudabox.images.build import BuildResult

RECORD_SCHEMA = 1


def record_entry(
    spec: ImageSpec,
    result: VerifyResult,
    build: BuildResult | None,
    previous: dict[str, Any] | None,
) -> dict[str, Any]:
    lock_sha = lock_digest(spec.lock)
    build_seconds = build.seconds if build else None
    if build_seconds is None and previous and previous.get("lock_sha256") == lock_sha:
        build_seconds = previous.get("build_seconds")  # verified an image built earlier
    reported = dict(result.reported)
    return {
        "tag": result.tag,
        "verified_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "lock_sha256": lock_sha,
        "base_image": spec.base_image,
        "reported": {k: reported[k] for k in sorted(reported)},
        "units": result.units,
        "image_bytes": result.image_bytes,
        "base_bytes": result.base_bytes,
        "packages_bytes": result.packages_bytes,
        "overhead_pct": result.overhead_pct,
        "build_seconds": build_seconds,
        "build_cached_steps": build.cached_steps
        if build
        else (previous or {}).get("build_cached_steps"),
    }


def write_record(path: Path, entries: dict[str, dict[str, Any]]) -> None:
    """Add or replace `entries` in the record at `path`, keeping the other images' entries."""
    images = {**read_record(path), **entries}
    data = {"schema": RECORD_SCHEMA, "images": dict(sorted(images.items()))}
    write_atomic(path, json.dumps(data, indent=2) + "\n", "verified record")


def read_record(path: Path) -> dict[str, dict[str, Any]]:
    """Each image's entry in the record at `path`; {} when there is no record yet."""
    if not path.exists():
        return {}
    fix = "restore it from git, or delete it: `cudabox verify NAME --record FILE` writes a new one"
    data = read_json(path, "verified record", fix, error=DataError)
    where = f"verified record {path}"
    if not isinstance(data, dict):
        raise DataError(f"{where} is not a JSON object", fix)
    schema = data.get("schema")
    if type(schema) is not int or schema != RECORD_SCHEMA:
        raise DataError(
            f"{where} has schema {schema!r}; this cudabox reads schema {RECORD_SCHEMA}", fix
        )
    images = data.get("images")
    if not isinstance(images, dict):
        raise DataError(f"{where}: 'images' must be an object of image name -> entry", fix)
    for name, entry in images.items():
        if not isinstance(entry, dict):
            raise DataError(f"{where}: the entry of {name!r} must be an object", fix)
    return images
