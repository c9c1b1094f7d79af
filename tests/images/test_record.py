"""The verified record (images/verified.json): what is written, that updates keep the rest, that
the loader refuses what it does not know, and the layer-by-layer comparison of a build with it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cudabox.container import ImageInfo
from cudabox.errors import DataError, UsageError
from cudabox.images.build import BuildResult
from cudabox.images.catalog import load_catalog
from cudabox.images.context import BuildOptions
from cudabox.images.labels import OCI, BuiltOn
from cudabox.images.lock import lock_digest
from cudabox.images.record import (
    RECORD_SCHEMA,
    Layers,
    compare_layers,
    read_record,
    record_entry,
    write_record,
)
from cudabox.images.verify import VerifyResult, find_base
from cudabox.images.verifying import VerifyOptions, previous_record

IMAGES = Path(__file__).resolve().parents[2] / "images"
CATALOG = load_catalog(IMAGES / "catalog.toml")
BOOTSTRAP = "cudabox/debian-python:bookworm"


def digest(n: int | str) -> str:
    return f"sha256:{str(n) * (64 // len(str(n)))}"


BASE_ID = digest("b")
BASE_LAYER = digest(1)
IMAGE_LAYERS = (BASE_LAYER, digest(2), digest(3), digest(4))


def _result(name: str, **changes: Any) -> VerifyResult:
    result = VerifyResult(
        name=name,
        tag=f"cudabox/{name}:latest",
        ok=True,
        reported={"framework_version": "2.13.0+cpu", "cuda": None},
        units={"unit_import.py": "ok (1.0 s): fine"},
        image_bytes=1_100,
        base_bytes=200,
        packages_bytes=880,
        base=BuiltOn(BOOTSTRAP, BASE_ID),
        base_layers=1,
        diff_ids=IMAGE_LAYERS,
    )
    return replace(result, **changes)


def test_overhead_is_relative_to_base_plus_packages() -> None:
    assert _result("x").overhead_pct == 1.9  # (1100 - 1080) / 1080
    assert VerifyResult("x", "t", ok=True).overhead_pct is None


def test_no_overhead_figure_without_the_base_it_was_built_on() -> None:
    # The base was not on the engine: sizing it as 0 gave a false overhead of (1100-880)/880.
    assert _result("x", base_bytes=None, base_layers=None).overhead_pct is None


def test_record_entry_and_update(tmp_path: Path) -> None:
    spec = CATALOG.get("torch-2.13-cpu")
    build = BuildResult(spec.name, spec.tag, "sha256:1", 93.5, 1_100, 2, "abc")
    entry = record_entry(spec, _result(spec.name), build, None)
    assert entry["build_seconds"] == 93.5 and entry["lock_sha256"] == lock_digest(spec.lock)
    assert entry["reported"]["framework_version"] == "2.13.0+cpu"
    # A later verify of the same image (no build in that run) keeps the build time of that lock.
    again = record_entry(spec, _result(spec.name), None, entry)
    assert again["build_seconds"] == 93.5
    other = record_entry(spec, _result(spec.name), None, {**entry, "lock_sha256": "other"})
    assert other["build_seconds"] is None

    path = tmp_path / "verified.json"
    write_record(path, {"b-image": entry})
    write_record(path, {"a-image": again})
    data = json.loads(path.read_text())
    assert data["schema"] == RECORD_SCHEMA == 2
    assert list(data["images"]) == ["a-image", "b-image"]
    assert read_record(path) == {"a-image": again, "b-image": entry}


def test_the_entry_names_the_base_the_image_was_built_on_not_the_catalogs() -> None:
    spec = CATALOG.get("torch-2.13-cpu")
    assert spec.base_image != BOOTSTRAP
    entry = record_entry(spec, _result(spec.name), None, None)
    assert (entry["base_image"], entry["base_digest"], entry["base_layers"]) == (
        BOOTSTRAP,
        BASE_ID,
        1,
    )
    assert entry["diff_ids"] == list(IMAGE_LAYERS)
    # An image without a base label: unknown, not the catalog's name.
    bare = record_entry(spec, _result(spec.name, base=None, base_layers=None), None, None)
    assert (bare["base_image"], bare["base_digest"], bare["base_layers"]) == ("", None, None)


# ---- the loader ---------------------------------------------------------------------------


def _write(path: Path, schema: Any, entry: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"schema": schema, "images": {"x": entry}}))
    return path


@pytest.mark.parametrize(
    ("schema", "entry", "message"),
    [
        (3, {"tag": "t"}, "has schema 3; this cudabox reads schema 1 or 2"),
        (2, {}, "the entry of 'x' has no 'tag'"),
        (2, {"tag": "t", "layers": []}, "unknown key 'layers'"),
        (2, {"tag": "t", "diff_ids": ["sha256:12"]}, "x.diff_ids must be a list of sha256"),
        (2, {"tag": "t", "diff_ids": "sha256:" + "0" * 64}, "x.diff_ids must be a list"),
        (
            2,
            {"tag": "t", "base_digest": "latest"},
            'x.base_digest must be a sha256:... digest or null, not "latest"',
        ),
        (2, {"tag": "t", "base_layers": -1}, "x.base_layers must be a count or null"),
        (2, {"tag": "t", "base_layers": True}, "x.base_layers must be a count or null, not true"),
        (2, {"tag": "t", "image_bytes": "1 GB"}, "x.image_bytes must be a count"),
        (2, {"tag": "t", "units": {"u.py": 1}}, "x.units must be an object of texts"),
    ],
    ids=[
        "future-schema",
        "no-tag",
        "unknown-key",
        "short-digest",
        "diff-ids-text",
        "base-digest",
        "negative-layers",
        "bool-layers",
        "bytes-text",
        "units",
    ],
)
def test_the_loader_refuses_what_it_does_not_know(
    tmp_path: Path, schema: Any, entry: dict[str, Any], message: str
) -> None:
    path = _write(tmp_path / "verified.json", schema, entry)
    with pytest.raises(DataError) as raised:
        read_record(path)
    assert message in raised.value.message and str(path) in raised.value.message
    assert raised.value.fix


def test_a_schema_1_record_is_read(tmp_path: Path) -> None:
    entry = {"tag": "t", "base_image": "python:3.11-slim-bookworm", "base_bytes": 1, "units": {}}
    assert read_record(_write(tmp_path / "old.json", 1, entry)) == {"x": entry}


def test_the_checked_in_record_reads_and_says_plainly_what_is_not_yet_recorded() -> None:
    record = read_record(IMAGES / "verified.json")
    assert {"torch-2.13-cpu", "tf-2.21-cpu", "torch-2.15-cu132"} <= set(record)
    for name, entry in record.items():
        if "diff_ids" in entry:
            assert entry["diff_ids"] and entry["base_digest"], name
            continue
        # The CUDA images were last verified before layers were recorded.
        built = Layers.of({**entry, "diff_ids": list(IMAGE_LAYERS)})
        comparison = compare_layers(name, built, Layers.of(entry))
        assert comparison.verdict == "not-recorded"
        assert comparison.lines() == [
            f"{name}: layers: not yet recorded (the record predates layer records): "
            "nothing to compare"
        ]


# ---- a build against the record, layer by layer -----------------------------------------------

LOCK = "a" * 64
RECORDED = Layers(LOCK, BOOTSTRAP, BASE_ID, 1, IMAGE_LAYERS)


def test_the_same_layers_match_one_by_one() -> None:
    comparison = compare_layers("torch-2.13-cpu", RECORDED, RECORDED)
    assert (comparison.verdict, comparison.reason, comparison.matching) == ("same", "same", 4)
    assert [layer.part for layer in comparison.layers] == ["base", "image", "image", "image"]
    lines = comparison.lines()
    assert lines[0] == "torch-2.13-cpu: layers: 4 of 4 match the record"
    assert lines[1] == f"   1 base  {BASE_LAYER[:19]}  same"
    assert comparison.to_json()["matching"] == 4


def test_another_base_digest_is_named_as_the_reason() -> None:
    official = Layers(
        LOCK, "python:3.11-slim-bookworm", digest("c"), 3, (digest(7), digest(8), digest(9))
    )
    comparison = compare_layers("torch-2.13-cpu", RECORDED, official)
    assert (comparison.verdict, comparison.reason) == ("differs", "another-base")
    assert comparison.why == (
        f"built on another base ({BOOTSTRAP}@{BASE_ID[:19]}; "
        f"the record: python:3.11-slim-bookworm@{digest('c')[:19]})"
    )
    # The build's own base boundary labels its layers; the record's is used when it has none.
    assert [layer.part for layer in comparison.layers] == ["base", "image", "image", "image"]
    assert comparison.matching == 0
    assert comparison.layers[3].recorded is None  # the record has three layers, the build four
    assert comparison.lines()[-1].endswith("differs (recorded (none))")


def test_a_base_made_again_with_the_same_layers_is_not_another_base() -> None:
    # `cudabox base` on another machine: the same layer, another image id (import time).
    remade = replace(RECORDED, base_digest=digest("c"), diff_ids=(*IMAGE_LAYERS[:3], digest(5)))
    assert compare_layers("x", remade, RECORDED).reason == "not-reproducible"
    other_layer = replace(remade, diff_ids=(digest(6), *IMAGE_LAYERS[1:3], digest(5)))
    assert compare_layers("x", other_layer, RECORDED).reason == "another-base"
    # Without a base boundary on both sides, the digest alone decides.
    assert compare_layers("x", replace(remade, base_layers=None), RECORDED).reason == (
        "another-base"
    )


def test_another_lock_is_named_when_the_base_is_the_same() -> None:
    built = replace(RECORDED, lock_sha256="b" * 64, diff_ids=(*IMAGE_LAYERS[:3], digest(5)))
    comparison = compare_layers("torch-2.13-cpu", built, RECORDED)
    assert (comparison.reason, comparison.matching) == ("another-lock", 3)
    assert comparison.why == f"another lock ({'b' * 12}; the record: {'a' * 12})"
    assert [layer.same for layer in comparison.layers] == [True, True, True, False]
    assert comparison.lines()[0] == (
        f"torch-2.13-cpu: layers: 3 of 4 match the record; {comparison.why}"
    )
    assert comparison.lines()[4] == (
        f"   4 image {digest(5)[:19]}  differs (recorded {IMAGE_LAYERS[3][:19]})"
    )


def test_same_inputs_other_bytes_is_not_reproducible() -> None:
    built = replace(RECORDED, diff_ids=(*IMAGE_LAYERS[:2], digest(6), IMAGE_LAYERS[3]))
    comparison = compare_layers("torch-2.13-cpu", built, RECORDED)
    assert comparison.reason == "not-reproducible"
    assert comparison.why == "a layer differs from the record: the build is not reproducible here"
    assert [layer.index for layer in comparison.layers if not layer.same] == [3]
    as_json = comparison.to_json()
    assert as_json["layers"][2] == {
        "index": 3,
        "part": "image",
        "built": digest(6),
        "recorded": IMAGE_LAYERS[2],
        "same": False,
    }


def test_without_base_boundaries_or_record_the_comparison_still_answers() -> None:
    unknown = replace(RECORDED, base_layers=None)
    assert {layer.part for layer in compare_layers("x", unknown, unknown).layers} == {"unknown"}
    assert compare_layers("x", RECORDED, None).reason == "not-recorded"
    # A record without a base digest: the bases are told apart by name.
    no_digest = replace(RECORDED, base_digest=None, base_name="python:3.11-slim-bookworm")
    differs = replace(RECORDED, diff_ids=(digest(9),))
    assert compare_layers("x", differs, no_digest).reason == "another-base"
    assert compare_layers("x", differs, replace(no_digest, base_name=BOOTSTRAP)).reason == (
        "not-reproducible"
    )


# ---- finding the base an image was built on -----------------------------------------------


class _Images:
    """The engine's images by reference (only what find_base asks: `image(ref)`)."""

    def __init__(self, *infos: tuple[tuple[str, ...], ImageInfo]) -> None:
        self.by_ref = {ref: info for refs, info in infos for ref in refs}

    def image(self, ref: str) -> ImageInfo | None:
        return self.by_ref.get(ref)


def _info(image_id: str, diff_ids: tuple[str, ...], **labels: str) -> ImageInfo:
    return ImageInfo(image_id, (), 100, labels, {}, "", "", diff_ids)


def _labelled(name: str, base_digest: str) -> ImageInfo:
    labels = {f"{OCI}base.name": name, f"{OCI}base.digest": base_digest}
    return ImageInfo(digest("f"), (), 1_000, labels, {}, "", "", IMAGE_LAYERS)


def test_the_base_is_the_labelled_one_not_whatever_has_its_name_now() -> None:
    base = _info(BASE_ID, (BASE_LAYER,))
    image = _labelled(BOOTSTRAP, BASE_ID)
    assert find_base(_Images(((BOOTSTRAP, BASE_ID), base)), image) == (
        BuiltOn(BOOTSTRAP, BASE_ID),
        base,
    )
    # The bootstrap was made again since: its name names another image, the old one is gone.
    remade = _info(digest("d"), (digest("e"),))
    assert find_base(_Images(((BOOTSTRAP,), remade)), image) == (BuiltOn(BOOTSTRAP, BASE_ID), None)
    # ... or the old one is still there, untagged: found by its id.
    both = _Images(((BOOTSTRAP,), remade), ((BASE_ID,), base))
    assert find_base(both, image)[1] == base
    # An official base is pinned by its repo digest.
    pulled = ImageInfo(
        digest("9"), (), 50, {}, {}, "", "", (BASE_LAYER,), (f"python@{digest('8')}",)
    )
    official = _labelled("python:3.11-slim-bookworm", digest("8"))
    assert find_base(_Images((("python:3.11-slim-bookworm",), pulled)), official)[1] == pulled
    # Labels that say nothing of a base: no base, no guess.
    assert find_base(_Images(((BOOTSTRAP,), base)), _info(digest("f"), IMAGE_LAYERS)) == (
        None,
        None,
    )


def test_a_base_whose_layers_are_not_the_bottom_of_the_image_is_not_its_base() -> None:
    impostor = _info(BASE_ID, (digest(5),))  # same id claimed, other layers: never the base
    assert find_base(_Images(((BOOTSTRAP,), impostor)), _labelled(BOOTSTRAP, BASE_ID))[1] is None


def test_verify_reads_the_record_it_replaces_and_refuses_an_unwritable_one_first(
    tmp_path: Path,
) -> None:
    options = VerifyOptions(BuildOptions(), record=tmp_path / "record.json")
    spec = CATALOG.get("torch-2.13-cpu")
    write_record(tmp_path / "record.json", {"x": record_entry(spec, _result("x"), None, None)})
    assert list(previous_record(IMAGES, options)) == ["x"]
    # No --record: the catalog's own record is the reference.
    assert previous_record(IMAGES, VerifyOptions(BuildOptions())) == read_record(
        IMAGES / "verified.json"
    )
    with pytest.raises(UsageError, match="does not exist"):
        previous_record(IMAGES, VerifyOptions(BuildOptions(), record=tmp_path / "no" / "r.json"))
