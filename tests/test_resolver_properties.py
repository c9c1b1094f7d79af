"""Invariants of the resolver, over generated hosts (hypothesis)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cudabox.host import Gpu, HostProfile
from cudabox.images.catalog import load_catalog, rank_key
from cudabox.resolver import Flavor, select

CATALOG = load_catalog(Path(__file__).parents[1] / "images" / "catalog.toml")

# Real drivers with the CUDA version each supports, oldest first.
DRIVERS = [
    ("450.80.02", "11.0"),
    ("470.182.03", "11.4"),
    ("525.60.13", "12.0"),
    ("535.183.01", "12.2"),
    ("550.90.07", "12.4"),
    ("555.42.06", "12.5"),
    ("560.35.03", "12.6"),
    ("570.133.20", "12.8"),
    ("575.57.08", "12.9"),
    ("580.95.05", "13.0"),
    ("590.44.01", "13.1"),
    ("595.58.03", "13.2"),
]
CCS = [
    "3.7",
    "5.0",
    "5.2",
    "5.3",
    "6.0",
    "6.1",
    "7.0",
    "7.2",
    "7.5",
    "8.0",
    "8.6",
    "8.7",
    "8.9",
    "9.0",
    "10.0",
    "10.3",
    "11.0",
    "12.0",
    "12.1",
]
TEGRA = {"5.3", "6.2", "7.2", "8.7", "11.0", "10.1"}
BRANDS = ["NVIDIA", "Tesla", "GeForce", "Quadro"]

gpus = st.builds(
    lambda cc, brand, visible: Gpu(
        index=0, name=f"GPU cc{cc}", compute_capability=cc, brand=brand, visible=visible
    ),
    st.sampled_from(CCS),
    st.sampled_from(BRANDS),
    st.booleans(),
)


def make_host(driver_index: int, gpu_list: list[Gpu]) -> HostProfile:
    driver, cuda = DRIVERS[driver_index]
    numbered = tuple(replace(g, index=i) for i, g in enumerate(gpu_list))
    return HostProfile(driver_version=driver, cuda_driver_version=cuda, gpus=numbered, hostname="h")


hosts = st.builds(
    make_host, st.integers(0, len(DRIVERS) - 1), st.lists(gpus, min_size=1, max_size=4)
)


def covered(cc_text: str, image_sass: list[str], image_ptx: list[str]) -> bool:
    """Independent oracle of the CUDA binary-compatibility rules."""
    major, minor = (int(p) for p in cc_text.split("."))
    for arch in image_sass:
        a_major, a_minor = (int(p) for p in arch.rstrip("af").split("."))
        if cc_text in TEGRA:
            if (a_major, a_minor) == (major, minor):
                return True
        elif a_major == major and a_minor <= minor:
            return True
    return any(tuple(int(p) for p in arch.split(".")) <= (major, minor) for arch in image_ptx)


def fitting(host: HostProfile, framework: str, flavor: Flavor = "cuda") -> set[str]:
    selection = select(CATALOG, [host], framework, flavor)
    return {v.image.name for v in selection.verdicts if v.fits}


@settings(max_examples=300, deadline=None)
@given(hosts, st.sampled_from(["torch", "tensorflow"]))
def test_never_selects_an_image_that_misses_a_visible_gpu(
    host: HostProfile, framework: str
) -> None:
    selection = select(CATALOG, [host], framework, "cuda")
    if selection.selected is None:
        return
    image = selection.selected
    for gpu in host.visible_gpus:
        assert gpu.compute_capability is not None
        assert covered(
            gpu.compute_capability,
            [str(a) for a in image.sass_archs],
            [str(a) for a in image.ptx_archs],
        ), (gpu, image.name)


@settings(max_examples=300, deadline=None)
@given(hosts, st.integers(0, len(DRIVERS) - 1), st.sampled_from(["torch", "tensorflow"]))
def test_a_newer_driver_never_loses_an_image(host: HostProfile, newer: int, framework: str) -> None:
    current = next(i for i, (d, _) in enumerate(DRIVERS) if d == host.driver_version)
    upgraded = make_host(max(current, newer), list(host.gpus))
    assert fitting(host, framework) <= fitting(upgraded, framework)


@settings(max_examples=300, deadline=None)
@given(hosts, gpus, st.sampled_from(["torch", "tensorflow"]))
def test_adding_a_gpu_never_adds_a_fitting_image(
    host: HostProfile, extra: Gpu, framework: str
) -> None:
    # (A host with no visible GPU fits no CUDA image at all; the first GPU is the exception.)
    assume(host.visible_gpus)
    bigger = replace(host, gpus=(*host.gpus, replace(extra, index=len(host.gpus))))
    assert fitting(bigger, framework) <= fitting(host, framework)


@settings(max_examples=150, deadline=None)
@given(st.lists(hosts, min_size=1, max_size=3), st.sampled_from(["torch", "tensorflow"]))
def test_a_fleet_fits_exactly_what_fits_every_host(
    fleet: list[HostProfile], framework: str
) -> None:
    together = select(CATALOG, fleet, framework, "cuda")
    alone = set.intersection(*(fitting(h, framework) for h in fleet))
    assert {v.image.name for v in together.verdicts if v.fits} == alone
    # ...and it picks the newest release, then the newest CUDA, of those.
    if alone:
        best = max((CATALOG.get(n) for n in alone), key=rank_key)
        assert together.selected == best
    else:
        assert together.selected is None and together.message and together.fix


@settings(max_examples=100, deadline=None)
@given(hosts, st.sampled_from(["torch", "tensorflow"]))
def test_cpu_images_always_fit_with_flavor_cpu(host: HostProfile, framework: str) -> None:
    selection = select(CATALOG, [host], framework, "cpu")
    assert selection.selected is not None and selection.selected.flavor == "cpu"
