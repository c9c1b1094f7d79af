"""The catalog and compatibility data: schema checks, and agreement between the two."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from cudabox.compat import load_compat, parse_compat
from cudabox.errors import DataError
from cudabox.images.catalog import load_catalog, parse_catalog
from cudabox.versions import CudaVersion, DriverVersion

IMAGES = Path(__file__).parents[1] / "images"
RAW = tomllib.loads((IMAGES / "catalog.toml").read_text())


def mutated(**changes: Any) -> dict[str, Any]:
    first = {**RAW["image"][0], **changes}
    first = {k: v for k, v in first.items() if v is not None}
    return {**RAW, "image": [first]}


def test_the_shipped_catalog_loads() -> None:
    catalog = load_catalog(IMAGES / "catalog.toml")
    kinds = {(i.framework, i.flavor) for i in catalog.images}
    assert kinds == {
        ("torch", "cuda"),
        ("torch", "cpu"),
        ("tensorflow", "cuda"),
        ("tensorflow", "cpu"),
    }
    assert catalog.newest("torch", "cuda").name == "torch-2.15-cu132"
    assert catalog.newest("tensorflow", "cpu").name == "tf-2.21-cpu"


def test_the_catalog_covers_the_gpus_people_have() -> None:
    catalog = load_catalog(IMAGES / "catalog.toml")
    torch_cudas = {str(i.cuda) for i in catalog.for_framework("torch") if i.cuda}
    assert {"12.6", "12.8"} <= torch_cudas  # Maxwell..Volta, and Blackwell on 570 drivers
    assert catalog.newest("torch", "cuda").cuda == CudaVersion(13, 2)


def test_every_file_the_catalog_names_exists() -> None:
    for image in load_catalog(IMAGES / "catalog.toml").images:
        for path in (image.dockerfile, image.requirements, image.lock):
            assert path.is_file(), f"{image.name}: {path} is missing"


def test_min_driver_agrees_with_the_minor_version_floor() -> None:
    compat = load_compat()
    for image in load_catalog(IMAGES / "catalog.toml").images:
        if image.cuda is None:
            assert image.min_driver is None
            continue
        assert image.min_driver == compat.minor_version_floor(image.cuda.major), image.name
        assert image.require_cuda == f"cuda>={image.cuda.major}.0"


def test_unknown_keys_are_named() -> None:
    with pytest.raises(DataError, match="unknown key 'cuda_version'"):
        parse_catalog(mutated(cuda_version="13.2"), IMAGES)
    with pytest.raises(DataError, match="unknown top-level key 'images'"):
        parse_catalog({**RAW, "images": []}, IMAGES)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"cuda": None}, "missing key 'cuda'"),
        ({"framework": "jax"}, "framework must be one of"),
        ({"flavor": "rocm"}, "flavor must be one of"),
        ({"sass_archs": "9.0"}, "'sass_archs' must be a list"),
        ({"sass_archs": ["nine"]}, "architecture 'nine'"),
        ({"sass_archs": [], "ptx_archs": []}, "at least one SASS or PTX"),
        ({"min_driver": "r580"}, "driver version 'r580'"),
        ({"flavor": "cpu"}, "a cpu image takes no"),
    ],
)
def test_schema_errors_say_what_is_wrong(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(DataError, match=message):
        parse_catalog(mutated(**changes), IMAGES)


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(DataError, match="appears twice"):
        parse_catalog({**RAW, "image": [RAW["image"][0], RAW["image"][0]]}, IMAGES)


def test_every_compat_row_has_a_known_source() -> None:
    raw = tomllib.loads(
        (Path(__file__).parents[1] / "toolkit/cudabox/data/compat.toml").read_text()
    )
    parse_compat(raw)  # raises on an unknown source
    broken = {**raw, "tegra": [{"compute_capability": "8.7", "source": "S99"}]}
    with pytest.raises(DataError, match="unknown source 'S99'"):
        parse_compat(broken)


def test_compat_lookups() -> None:
    compat = load_compat()
    assert compat.toolkit_driver(CudaVersion(12, 5)) == DriverVersion.parse("555.42.02")
    assert compat.toolkit_driver(CudaVersion(12, 7)) == DriverVersion.parse("570.26")  # no 12.7 row
    assert compat.minor_version_floor(12) == DriverVersion.parse("525.60.13")
    assert compat.cuda_for_driver(DriverVersion.parse("550.90.07")) == CudaVersion(12, 4)
    assert compat.is_tegra((8, 7)) and not compat.is_tegra((8, 6))
