"""Labels round-trip to an ImageSpec; the proof of contents catches every kind of disagreement."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from cudabox.errors import DataError
from cudabox.images.catalog import ImageSpec, load_catalog
from cudabox.images.labels import (
    BuiltOn,
    Reported,
    built_on,
    compare,
    compare_labels,
    cudnn_text,
    labels_for,
    provenance_labels,
    spec_from_labels,
)
from cudabox.versions import Arch

IMAGES = Path(__file__).resolve().parents[2] / "images"
CATALOG = load_catalog(IMAGES / "catalog.toml")
FACT_FIELDS = (
    "name",
    "framework",
    "framework_version",
    "flavor",
    "python",
    "base_image",
    "cuda",
    "cudnn",
    "sass_archs",
    "ptx_archs",
    "min_driver",
    "ptx_cuda",
    "forward_compat",
    "tag",
)


@pytest.mark.parametrize("spec", CATALOG.images, ids=lambda s: s.name)
def test_labels_round_trip_to_the_same_facts(spec: ImageSpec) -> None:
    labels = labels_for(spec, "f" * 64)
    assert all(isinstance(v, str) for v in labels.values())
    back = spec_from_labels(labels, spec.tag)
    for name in FACT_FIELDS:
        assert getattr(back, name) == getattr(spec, name), name
    assert back.require_cuda == spec.require_cuda


def test_labels_carry_oci_and_cudabox_keys() -> None:
    labels = labels_for(CATALOG.get("torch-2.15-cu132"), "0" * 64)
    for key in (
        "framework",
        "framework_version",
        "flavor",
        "cuda",
        "cudnn",
        "sass_archs",
        "ptx_archs",
        "min_driver",
        "lock_sha256",
        "image",
    ):
        assert f"cudabox.{key}" in labels
    assert labels["org.opencontainers.image.version"] == "2.15.0"
    assert labels["cudabox.sass_archs"] == "7.5 8.0 8.6 9.0 10.0 12.0"


def test_labels_of_a_foreign_image_are_a_data_error() -> None:
    with pytest.raises(DataError, match=r"cudabox\.image"):
        spec_from_labels({"maintainer": "someone"}, "python:3.11")
    bad = labels_for(CATALOG.get("torch-2.15-cu132"), "0" * 64) | {"cudabox.cuda": "thirteen"}
    with pytest.raises(DataError, match="malformed"):
        spec_from_labels(bad, "x")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (92600, "9.26"),
        (91002, "9.10"),
        (8902, "8.9"),
        ("9", "9"),
        ("9.3.0.75", "9.3"),
        (None, None),
    ],
)
def test_cudnn_text(value: object, expected: str | None) -> None:
    assert cudnn_text(value) == expected


TORCH_ARCHS = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]
TORCH_REPORT: dict[str, object] = {
    "framework_version": "2.15.0+cu132",
    "cuda": "13.2",
    "cudnn": 92600,
    "arch_list": TORCH_ARCHS,
    "uid": 1000,
}


def test_a_matching_report_has_no_problems() -> None:
    spec = CATALOG.get("torch-2.15-cu132")
    assert compare(spec, Reported.from_json(TORCH_REPORT)) == []


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"framework_version": "2.14.0+cu130"}, "version"),
        ({"cuda": "12.8"}, "CUDA"),
        ({"cudnn": 91002}, "cuDNN"),
        ({"arch_list": ["sm_80", "sm_90"]}, "SASS"),
        ({"arch_list": [*TORCH_ARCHS, "compute_120"]}, "PTX"),
        ({"uid": 0}, "root"),
    ],
)
def test_each_disagreement_is_named(change: dict[str, object], needle: str) -> None:
    spec = CATALOG.get("torch-2.15-cu132")
    problems = compare(spec, Reported.from_json({**TORCH_REPORT, **change}))
    assert len(problems) == 1 and needle in problems[0], problems


def test_a_cpu_image_holding_a_cuda_build_is_caught() -> None:
    spec = CATALOG.get("torch-2.13-cpu")
    ok: dict[str, object] = {
        "framework_version": "2.13.0+cpu",
        "cuda": None,
        "arch_list": [],
        "uid": 1000,
    }
    assert compare(spec, Reported.from_json(ok)) == []
    assert "flavour" in compare(spec, Reported.from_json({**ok, "cuda": "12.8"}))[0]


def test_tensorflow_cudnn_minor_comes_from_the_installed_library() -> None:
    reported = Reported.from_json(
        {
            "framework_version": "2.21.0",
            "cuda": "12.5.1",
            "cudnn": "9",
            "arch_list": ["sm_60", "compute_90"],
            "packages": {"nvidia-cudnn-cu12": "9.3.0.75"},
        }
    )
    assert reported.cudnn == "9.3" and reported.cuda is not None and str(reported.cuda) == "12.5"
    assert reported.ptx_archs == (Arch(9, 0),)


def test_labels_disagreeing_with_the_catalog_are_named() -> None:
    spec = CATALOG.get("torch-2.15-cu132")
    labels = labels_for(spec, "1" * 64)
    assert compare_labels(spec, labels, "1" * 64) == []
    stale = compare_labels(spec, labels, "2" * 64)
    assert len(stale) == 1 and "another lock" in stale[0]
    wrong = compare_labels(replace(spec, cudnn="9.10"), labels, "1" * 64)
    assert len(wrong) == 1 and "cudabox.cudnn" in wrong[0]


def test_the_base_is_the_one_the_build_used_not_the_catalogs() -> None:
    spec = CATALOG.get("torch-2.13-cpu")
    image_id = "sha256:" + "4" * 64
    # What a build on a host without a registry labels: the bootstrap it found, by image id.
    labels = {
        **labels_for(spec, "1" * 64),
        **provenance_labels("cudabox/debian-python:bookworm", image_id, None, env={}),
    }
    assert built_on(labels) == BuiltOn("cudabox/debian-python:bookworm", image_id)
    assert str(built_on(labels)) == f"cudabox/debian-python:bookworm@{image_id}"
    assert spec_from_labels(labels, spec.tag).base_image == "cudabox/debian-python:bookworm"
    assert compare_labels(spec, labels, "1" * 64) == []  # another base is not a wrong image
    assert built_on({"maintainer": "someone"}) is None
    assert str(built_on({"org.opencontainers.image.base.name": "python:3.11"})) == "python:3.11"
