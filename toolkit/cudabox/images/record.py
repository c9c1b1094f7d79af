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
    data: dict[str, Any] = {"schema": RECORD_SCHEMA, "images": {}}
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} is not valid JSON: {exc}") from None
    data.setdefault("images", {}).update(entries)
    data["images"] = dict(sorted(data["images"].items()))
    path.write_text(json.dumps(data, indent=2) + "\n")


def read_record(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    images = json.loads(path.read_text()).get("images", {})
    return images if isinstance(images, dict) else {}
