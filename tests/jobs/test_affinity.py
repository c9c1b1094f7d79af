"""The node affinity admits a node exactly when the resolver says the image fits it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cudabox.compat import load_compat
from cudabox.errors import DataError, UsageError
from cudabox.host import Gpu, HostProfile
from cudabox.images.catalog import ImageSpec, load_catalog
from cudabox.jobs.affinity import (
    COMPUTE_MAJOR,
    COMPUTE_MINOR,
    CUDA_MAJOR,
    CUDA_MINOR,
    DRIVER_MAJOR,
    DRIVER_MINOR,
    DRIVER_REVISION,
    Requirement,
    Term,
    gfd_labels,
    known_capabilities,
    node_affinity,
    parse_capabilities,
)
from cudabox.resolver import gpu_coverage, judge
from cudabox.versions import Arch, CudaVersion

ROOT = Path(__file__).resolve().parents[2]
CATALOG = load_catalog(ROOT / "images" / "catalog.toml")
CUDA_IMAGES = [i for i in CATALOG.images if i.is_cuda]
HOSTS = {
    p.stem: HostProfile.load(p) for p in sorted((ROOT / "tests/fixtures/hosts").glob("*.json"))
}
COMPAT = load_compat()


def fits(image: ImageSpec, host: HostProfile) -> bool:
    return not any(r.blocking for r in judge(image, host, COMPAT))


def admitted_ccs(image: ImageSpec) -> set[tuple[int, int]]:
    affinity = node_affinity(image)
    assert affinity is not None
    ccs = set()
    for term in affinity.terms:
        values = {r.key: r.values for r in term.requirements if r.operator == "In"}
        ccs.add((int(values[COMPUTE_MAJOR][0]), int(values[COMPUTE_MINOR][0])))
    return ccs


# The key property, on every recorded host profile and every CUDA image of the catalog.
SINGLE_MODEL = [
    name for name, h in HOSTS.items() if len({g.compute_capability for g in h.gpus}) <= 1
]


@pytest.mark.parametrize("image", CUDA_IMAGES, ids=lambda i: i.name)
@pytest.mark.parametrize("host", SINGLE_MODEL)
def test_affinity_admits_a_recorded_host_exactly_when_the_resolver_fits_it(
    image: ImageSpec, host: str
) -> None:
    profile = HOSTS[host]
    affinity = node_affinity(image)
    assert affinity is not None
    assert affinity.admits(gfd_labels(profile)) == fits(image, profile)


def test_the_recorded_profiles_cover_both_answers() -> None:
    # The parametrized property above is only worth something if it sees admits and refusals.
    answers = {fits(i, HOSTS[h]) for i in CUDA_IMAGES for h in SINGLE_MODEL}
    assert answers == {True, False}
    assert len(SINGLE_MODEL) >= 14  # every profile but the mixed A100+V100 one


def test_h100_and_gtx1080_explicitly() -> None:
    h100, gtx = gfd_labels(HOSTS["h100"]), gfd_labels(HOSTS["gtx1080"])
    newest, cu128, pascal = (
        CATALOG.get(n) for n in ("torch-2.15-cu132", "torch-2.10-cu128", "torch-2.7-cu126")
    )
    tf = CATALOG.get("tf-2.21-cu125")
    # torch 2.15 cu132: SASS from sm_75 up, driver 580.95 supports CUDA 13.0 (minor-version compat).
    assert node_affinity(newest).admits(h100)  # type: ignore[union-attr]
    assert not node_affinity(newest).admits(gtx)  # type: ignore[union-attr]  # no sm_6x kernels
    # torch 2.10 cu128 dropped Pascal too; torch 2.7 cu126 still has sm_60, which runs on 6.1.
    assert not node_affinity(cu128).admits(gtx)  # type: ignore[union-attr]
    assert node_affinity(pascal).admits(gtx)  # type: ignore[union-attr]
    assert node_affinity(pascal).admits(h100)  # type: ignore[union-attr]
    # TF reaches Hopper only through compute_90 PTX; the H100's 580 driver JITs CUDA 12.5 PTX.
    assert node_affinity(tf).admits(h100)  # type: ignore[union-attr]
    assert node_affinity(tf).admits(gtx)  # type: ignore[union-attr]  # sm_60 SASS
    assert [fits(i, HOSTS["h100"]) for i in (newest, cu128, pascal, tf)] == [True] * 4
    assert [fits(i, HOSTS["gtx1080"]) for i in (newest, cu128, pascal, tf)] == [
        False,
        False,
        True,
        True,
    ]


def test_the_admitted_capabilities_are_those_with_sass_or_ptx() -> None:
    assert admitted_ccs(CATALOG.get("torch-2.15-cu132")) == {
        (7, 5),
        (8, 0),
        (8, 6),
        (8, 9),
        (9, 0),
        (10, 0),
        (10, 3),
        (12, 0),
        (12, 1),
    }
    # PTX (compute_90) reaches every later capability, Tegra Thor included; SASS skips Orin (8.7).
    tf = admitted_ccs(CATALOG.get("tf-2.21-cu125"))
    assert {(9, 0), (10, 0), (11, 0), (12, 1)} <= tf
    assert (8, 7) not in tf and (5, 0) not in tf
    for image in CUDA_IMAGES:
        expected = {cc for cc in known_capabilities() if gpu_coverage(cc, image, COMPAT) != "none"}
        assert admitted_ccs(image) == expected


def test_driver_terms_name_minor_and_revision_only_where_the_floor_needs_them() -> None:
    def driver_keys(image: str) -> set[str]:
        affinity = node_affinity(CATALOG.get(image))
        assert affinity is not None
        return {r.key for t in affinity.terms for r in t.requirements if "driver-version" in r.key}

    # CUDA 12's minor-version floor is 525.60.13; CUDA 13's is the whole 580 branch.
    assert driver_keys("torch-2.10-cu128") == {DRIVER_MAJOR, DRIVER_MINOR, DRIVER_REVISION}
    assert driver_keys("torch-2.15-cu132") == {DRIVER_MAJOR}
    affinity = node_affinity(CATALOG.get("torch-2.15-cu132"))
    assert affinity is not None
    assert Requirement(DRIVER_MAJOR, "Gt", ("579",)) in affinity.terms[2].requirements


def test_driver_floor_edges_on_one_gpu_model() -> None:
    image = CATALOG.get("torch-2.10-cu128")  # CUDA 12.8, floor 525.60.13
    affinity = node_affinity(image)
    assert affinity is not None
    cases = {
        ("525.60.13", "12.0"): True,
        ("525.60.12", "12.0"): False,
        ("525.60", "12.0"): False,  # no revision label: below 525.60.13, as DriverVersion says
        ("525.61", "12.0"): True,
        ("526.1.1", "12.0"): True,
        ("520.61.05", "11.8"): False,
        ("580.95.05", "13.0"): True,
    }
    for (driver, cuda), expected in cases.items():
        host = _host(driver, cuda, "8.0")
        assert fits(image, host) is expected, (driver, cuda)
        assert affinity.admits(gfd_labels(host)) is expected, (driver, cuda)


@pytest.mark.parametrize(
    ("ptx_cuda", "driver", "cuda", "expected"),
    [
        # PTX built by CUDA 12.4 inside a CUDA 12.8 image: minor-version compatibility runs the
        # image on a 12.x driver, but the PTX only JITs on a driver of CUDA >= 12.4.
        ("12.4", "550.54.15", "12.4", True),
        ("12.4", "535.183.01", "12.2", False),
        ("12.4", "570.133.20", "12.8", True),
        # PTX from a newer major never loads on a driver of the image's major.
        ("13.0", "550.54.15", "12.4", False),
        ("13.0", "580.95.05", "13.0", True),
        # PTX from an older major adds nothing to the 12.x floor.
        ("11.8", "535.183.01", "12.2", True),
    ],
)
def test_gpus_reached_through_ptx_need_a_driver_that_jits_it(
    ptx_cuda: str, driver: str, cuda: str, expected: bool
) -> None:
    image = replace(
        CATALOG.get("torch-2.10-cu128"),
        sass_archs=(Arch(8, 0),),
        ptx_archs=(Arch(9, 0),),
        ptx_cuda=CudaVersion.parse(ptx_cuda),
    )
    affinity = node_affinity(image)
    assert affinity is not None
    hopper = _host(driver, cuda, "9.0")  # PTX only
    ampere = _host(driver, cuda, "8.0")  # SASS: the PTX floor does not apply
    assert fits(image, hopper) is expected
    assert affinity.admits(gfd_labels(hopper)) is expected
    assert fits(image, ampere) is True
    assert affinity.admits(gfd_labels(ampere)) is True


def test_a_cpu_image_has_no_affinity() -> None:
    assert node_affinity(CATALOG.get("torch-2.13-cpu")) is None


def test_a_node_with_two_gpu_models_is_refused() -> None:
    with pytest.raises(UsageError, match="several models"):
        gfd_labels(HOSTS["a100-v100-mixed"])
    # Two models of one compute capability carry the same labels: nothing to refuse.
    a100s = replace(
        HOSTS["a100"],
        gpus=(
            replace(HOSTS["a100"].gpus[0], name="NVIDIA A100-SXM4-40GB"),
            replace(HOSTS["a100"].gpus[1], name="NVIDIA A100-SXM4-80GB"),
        ),
    )
    assert gfd_labels(a100s)[COMPUTE_MAJOR] == "8"


def test_gfd_labels_of_a_recorded_h100() -> None:
    assert gfd_labels(HOSTS["h100"]) == {
        COMPUTE_MAJOR: "9",
        COMPUTE_MINOR: "0",
        DRIVER_MAJOR: "580",
        DRIVER_MINOR: "95",
        DRIVER_REVISION: "05",
        CUDA_MAJOR: "13",
        CUDA_MINOR: "0",
    }
    assert gfd_labels(HOSTS["cpu-only"]) == {}
    assert gfd_labels(HOSTS["rtx5090"])[DRIVER_REVISION] == ""  # 570.144 has two parts


def test_requirement_reads_labels_as_kubernetes_does() -> None:
    gt4 = Requirement("k", "Gt", ("4",))
    assert gt4.matches({"k": "05"})  # strconv.ParseInt reads the driver's zero-padded revision
    assert not gt4.matches({"k": "4"})
    assert not gt4.matches({"k": ""})  # a two-part driver's empty revision is not an integer
    assert not gt4.matches({})
    assert not gt4.matches({"k": "5a"})
    assert not gt4.matches({"k": "5\n"})  # Go's ParseInt takes no white space
    assert Requirement("k", "Lt", ("4",)).matches({"k": "-1"})
    assert Requirement("k", "In", ("9",)).matches({"k": "9"})
    assert not Requirement("k", "In", ("9",)).matches({})
    assert Requirement("k", "NotIn", ("9",)).matches({})
    assert Requirement("k", "Exists").matches({"k": ""})
    assert Requirement("k", "DoesNotExist").matches({})
    assert not Term(()).matches({"k": "9"})  # an empty term matches no node


def test_an_image_with_kernels_for_no_known_gpu_is_refused() -> None:
    odd = replace(CATALOG.get("torch-2.15-cu132"), sass_archs=(Arch(99, 0),), ptx_archs=())
    with pytest.raises(UsageError, match="no GPU cudabox knows"):
        node_affinity(odd)


def test_compute_capability_data_is_checked() -> None:
    assert (9, 0) in known_capabilities() and (12, 1) in known_capabilities()
    good: dict[str, Any] = {
        "compute_capability": [{"cc": "9.0", "gpus": "H100", "source": "S1"}],
        "sources": {"S1": "x"},
    }
    assert parse_capabilities(good) == ((9, 0),)
    bad_rows = [
        {"cc": "9.0", "gpus": "H100", "source": "S2"},  # unknown source
        {"cc": "9.0", "gpus": "H100", "source": "S1", "tegra": True},  # unknown key
        {"cc": "nine", "gpus": "H100", "source": "S1"},
    ]
    for row in bad_rows:
        with pytest.raises(DataError):
            parse_capabilities({"compute_capability": [row], "sources": {"S1": "x"}})
    with pytest.raises(DataError, match="twice"):
        parse_capabilities(
            {"compute_capability": [good["compute_capability"][0]] * 2, "sources": {"S1": "x"}}
        )


# The same property over generated nodes and images: real-looking driver versions of two or three
# parts (what GFD labels), any CUDA version the driver may report, one GPU model per node.
def _host(
    driver: str, cuda: str | None, cc: str, brand: str = "NVIDIA", count: int = 1
) -> HostProfile:
    gpus = tuple(
        Gpu(index=i, name=f"GPU cc{cc}", compute_capability=cc, brand=brand) for i in range(count)
    )
    return HostProfile(driver_version=driver, cuda_driver_version=cuda, gpus=gpus, hostname="node")


drivers = st.builds(
    lambda major, minor, rev: ".".join(
        [str(major), str(minor)] + ([rev] if rev is not None else [])
    ),
    st.sampled_from([450, 470, 520, 525, 530, 535, 550, 560, 570, 575, 579, 580, 590, 595, 610]),
    st.sampled_from([0, 4, 26, 54, 59, 60, 61, 95, 144]),
    st.one_of(st.none(), st.sampled_from(["0", "05", "12", "13", "14", "99"])),
)
cudas = st.one_of(
    st.none(),
    st.builds(lambda a, b: f"{a}.{b}", st.sampled_from([11, 12, 13, 14]), st.integers(0, 9)),
)
ccs = st.sampled_from([f"{a}.{b}" for a, b in known_capabilities()])
archs = st.builds(
    Arch,
    st.sampled_from([5, 6, 7, 8, 9, 10, 11, 12]),
    st.integers(0, 9),
    st.sampled_from(["", "", "a"]),
)
images = st.one_of(
    st.sampled_from(CUDA_IMAGES),
    st.builds(
        lambda base, cuda, sass, ptx, ptx_cuda: replace(
            base, cuda=cuda, sass_archs=tuple(sass), ptx_archs=tuple(ptx), ptx_cuda=ptx_cuda
        ),
        st.sampled_from(CUDA_IMAGES),
        st.builds(CudaVersion, st.sampled_from([11, 12, 13]), st.integers(0, 9)),
        st.lists(archs, max_size=5),
        st.lists(archs, max_size=2),
        st.one_of(
            st.none(), st.builds(CudaVersion, st.sampled_from([11, 12, 13]), st.integers(0, 9))
        ),
    ),
)


@settings(max_examples=400, deadline=None)
@given(
    images, drivers, cudas, ccs, st.sampled_from(["NVIDIA", "GeForce", "Tesla"]), st.integers(1, 4)
)
def test_affinity_matches_the_resolver_on_generated_nodes(
    image: ImageSpec, driver: str, cuda: str | None, cc: str, brand: str, count: int
) -> None:
    host = _host(driver, cuda, cc, brand, count)
    try:
        affinity = node_affinity(image)
    except UsageError:
        # No known GPU has kernels in this image: the resolver fits it on none of them either.
        assert not fits(image, host)
        return
    assert affinity is not None
    assert affinity.admits(gfd_labels(host)) == fits(image, host)
