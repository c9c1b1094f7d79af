"""data/framework_packages.toml: strict, sourced, and in agreement with the catalog images' locks."""

from __future__ import annotations

import re

import pytest

from cudabox.errors import DataError
from cudabox.images.catalog import load_catalog
from cudabox.images.lock import parse_lock
from cudabox.project.framework_packages import load_framework_packages, parse_framework_packages
from cudabox.sourced import read_data

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", re.MULTILINE)


def test_lookups() -> None:
    packages = load_framework_packages()
    assert packages.from_image("Torch") and packages.from_image("tensorflow_cpu")
    assert packages.from_image("nvidia-cudnn-cu13") and packages.from_image("triton")
    # An exact or longer prefix row wins: DALI is the user's, not the image's.
    assert not packages.from_image("nvidia-dali-cuda120")
    assert packages.implies("torchvision") == "torch" and packages.implies("keras") == "tensorflow"
    assert packages.implies("nvidia-cublas-cu12") is None  # both frameworks' images carry them
    assert packages.implies("transformers") is None and packages.match("transformers") is None


def test_every_row_cites_a_source_that_says_where_it_comes_from() -> None:
    packages = load_framework_packages()
    assert all(packages.sources[key] for row in packages.rows for key in row.source.split(","))
    assert all("http" in text or "lock.txt" in text for text in packages.sources.values())


def test_the_catalog_locks_agree() -> None:
    """Each image's framework and CUDA wheels are recognised as the image's; nothing else is."""
    packages = load_framework_packages()
    catalog = load_catalog()
    for image in catalog.images:
        pins = _PIN.findall(image.lock.read_text())
        assert pins, image.lock
        ours = {p for p in pins if packages.from_image(p)}
        framework = {"torch": "torch", "tensorflow": "tensorflow"}[image.framework]
        assert any(packages.implies(p) == framework for p in ours), (image.name, ours)
        assert {p for p in pins if p.startswith("nvidia-")} <= ours
        # numpy, keras, sympy ... are pinned by the image but the project may depend on them.
        assert not ours & {"numpy", "keras", "sympy", "protobuf", "filelock", "h5py"}


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (('role = "image"', 'role = "base"', 1), "role must be one of"),
        (('source = "TORCH-LOCK"', 'source = "NOPE"', 1), "cites unknown source 'NOPE'"),
        (('name = "triton"', 'name = "torch"', 1), "a second row for 'torch'"),
        (('name = "triton"', 'name = "Triton_X"', 1), "not a normalised distribution name"),
        (('framework = "torch"', 'framework = "jax"', 1), "framework must be one of"),
        (("schema = 1", "schema = 2", 1), "'schema' must be 1"),
        (('role = "image"', 'role = "image"\nextra = 1', 1), "unknown key 'extra'"),
        (('same-as = "tensorflow"', 'same-as = "TensorFlow"', 1), "'same-as' must be"),
    ],
)
def test_a_broken_table_is_a_data_error(change: tuple[str, str, int], fragment: str) -> None:
    text, _ = read_data("framework_packages.toml", "")
    old, new, count = change
    assert old in text
    with pytest.raises(DataError, match=re.escape(fragment)):
        parse_framework_packages(text.replace(old, new, count))


def test_tensorflow_cpu_is_another_build_of_tensorflow() -> None:
    # A project's `tensorflow>=2.21` is judged against the CPU image's tensorflow-cpu pin.
    packages = load_framework_packages()
    assert set(packages.variants("tensorflow")) >= {"tensorflow", "tensorflow-cpu"}
    assert "tensorflow" in packages.variants("TensorFlow_CPU")
    assert packages.variants("torch") == ("torch",)
    assert packages.variants("tqdm") == ("tqdm",)


def test_a_tensorflow_pin_is_judged_against_the_cpu_images_tensorflow_cpu() -> None:
    from cudabox.project.locking import _framework_findings

    spec = load_catalog().get("tf-2.21-cpu")
    pins = parse_lock(spec.lock.read_text())
    assert "tensorflow" not in pins and "tensorflow-cpu" in pins
    assert _framework_findings(["tensorflow>=2.21"], pins, spec) == []
    (finding,) = _framework_findings(["tensorflow>=2.22"], pins, spec)
    assert finding.fatal and "the image has tensorflow-cpu 2.21.0" in finding.message
