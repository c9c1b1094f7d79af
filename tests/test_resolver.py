"""The resolver on recorded host profiles of real GPUs, and on the rules one at a time."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from cudabox.host import Gpu, HostProfile
from cudabox.images.catalog import Catalog, load_catalog
from cudabox.resolver import select

HOSTS = Path(__file__).parent / "fixtures" / "hosts"
CATALOG = load_catalog(Path(__file__).parents[1] / "images" / "catalog.toml")


def host(name: str) -> HostProfile:
    return HostProfile.load(HOSTS / f"{name}.json")


def reasons(selection_json: dict[str, object], image: str) -> str:
    for candidate in selection_json["candidates"]:  # type: ignore[attr-defined]
        if candidate["name"] == image:
            return " | ".join(candidate["reasons"])
    raise AssertionError(image)


# (fixture, framework, expected image or None, a phrase the deciding reason must contain)
EXPECTED = [
    ("t4", "torch", "torch-2.10-cu128", "minor-version compatibility"),
    ("v100", "torch", "torch-2.10-cu128", "minor-version compatibility"),
    ("a100", "torch", "torch-2.10-cu128", "driver 550.90.07 supports CUDA 12.4"),
    ("a10", "torch", "torch-2.10-cu128", ""),
    ("l4", "torch", "torch-2.15-cu132", "runs CUDA 13.2 through minor-version compatibility"),
    ("rtx4090", "torch", "torch-2.10-cu128", "minor-version compatibility"),
    ("rtx5090", "torch", "torch-2.10-cu128", ""),
    ("gtx1080", "torch", "torch-2.7-cu126", "minor-version compatibility"),
    ("h100", "torch", "torch-2.15-cu132", "minor-version compatibility"),
    ("h200", "torch", "torch-2.15-cu132", "driver 590.44.01 supports CUDA 13.1"),
    ("a100-v100-mixed", "torch", "torch-2.10-cu128", ""),
    ("h100-mig", "torch", "torch-2.15-cu132", ""),
    ("cpu-only", "torch", "torch-2.13-cpu", ""),
    ("v100-old-driver", "torch", None, ""),
    ("jetson-orin", "torch", None, ""),
    ("h100", "tensorflow", "tf-2.21-cu125", "JIT-compiled PTX"),
    ("gtx1080", "tensorflow", "tf-2.21-cu125", ""),
    ("rtx5090", "tensorflow", "tf-2.21-cu125", "JIT-compiled PTX"),
    ("h100-old-driver", "tensorflow", None, ""),
    ("cpu-only", "tensorflow", "tf-2.21-cpu", ""),
]


@pytest.mark.parametrize(("fixture", "framework", "expected", "phrase"), EXPECTED)
def test_real_gpu_hosts_get_the_right_image(
    fixture: str, framework: str, expected: str | None, phrase: str
) -> None:
    selection = select(CATALOG, [host(fixture)], framework)
    chosen = selection.selected.name if selection.selected else None
    assert chosen == expected
    if expected:
        assert phrase in reasons(selection.to_json(), expected)


def test_why_newer_images_lose_on_an_a100_with_a_550_driver() -> None:
    data = select(CATALOG, [host("a100")], "torch").to_json()
    assert "the image needs CUDA >= 13.0, which needs a driver >= 580" in reasons(
        data, "torch-2.15-cu132"
    )
    assert "not considered" in reasons(data, "torch-2.13-cpu")


def test_sm120_is_missing_from_the_cu126_build() -> None:
    data = select(CATALOG, [host("rtx5090")], "torch").to_json()
    assert "CC 12.0) has no kernels in this image" in reasons(data, "torch-2.7-cu126")


def test_pascal_is_missing_from_cuda13_builds() -> None:
    data = select(CATALOG, [host("gtx1080")], "torch").to_json()
    assert "CC 6.1) has no kernels" in reasons(data, "torch-2.15-cu132")
    assert "CC 6.1) has no kernels" in reasons(data, "torch-2.10-cu128")


def test_old_driver_message_names_the_fact_and_the_fix() -> None:
    selection = select(CATALOG, [host("v100-old-driver")], "torch")
    assert selection.selected is None
    assert selection.message == (
        "driver 470.182.03 supports CUDA 11.4; the torch images need CUDA >= 12.0, "
        "which needs a driver >= 525.60.13"
    )
    assert (
        selection.fix
        == "upgrade the NVIDIA driver to >= 525.60.13 (torch-2.10-cu128 then fits); or use --flavor cpu"
    )


def test_tegra_is_not_covered_by_desktop_sass() -> None:
    selection = select(CATALOG, [host("jetson-orin")], "torch")
    assert selection.selected is None
    assert "CC 8.7" in (selection.message or "")


def test_ptx_from_a_newer_toolkit_needs_a_newer_driver() -> None:
    # H100 runs TF only through compute_90 PTX made by CUDA 12.5; a 12.2 driver cannot JIT it...
    selection = select(CATALOG, [host("h100-old-driver")], "tensorflow")
    assert selection.selected is None
    assert "relies on PTX JIT of PTX from CUDA 12.5" in (selection.message or "")
    assert "555.42.02" in (selection.fix or "")
    # ...while an A100 on the same driver runs its sm_80 SASS under minor-version compatibility.
    a100 = replace(host("a100"), driver_version="535.183.06", cuda_driver_version="12.2")
    assert select(CATALOG, [a100], "tensorflow").selected is not None


def test_fleet_picks_what_fits_every_host_and_names_the_host_that_rules_out() -> None:
    selection = select(CATALOG, [host("h100"), host("gtx1080")], "torch")
    assert selection.selected is not None and selection.selected.name == "torch-2.7-cu126"
    data = selection.to_json()
    assert "ws-1080: GPU 0 (NVIDIA GeForce GTX 1080, CC 6.1) has no kernels" in reasons(
        data, "torch-2.15-cu132"
    )
    assert data["hosts"] == ["hgx-h100", "ws-1080"]


def test_fleet_with_a_cpu_only_node_and_auto_fails_and_suggests_cpu() -> None:
    selection = select(CATALOG, [host("h100"), host("cpu-only")], "torch")
    assert selection.selected is None
    assert (selection.fix or "").endswith("or use --flavor cpu")
    cpu = select(CATALOG, [host("h100"), host("cpu-only")], "torch", flavor="cpu")
    assert cpu.selected is not None and cpu.selected.name == "torch-2.13-cpu"


def test_flavor_cuda_on_a_host_without_gpu_says_why() -> None:
    selection = select(CATALOG, [host("cpu-only")], "torch", flavor="cuda")
    assert selection.selected is None
    assert "no usable NVIDIA GPU" in (selection.message or "")


def test_hidden_gpus_do_not_count() -> None:
    # The V100 is hidden with CUDA_VISIBLE_DEVICES=0: only the A100 must be covered.
    mixed = host("a100-v100-mixed")
    gpus = (mixed.gpus[0], replace(mixed.gpus[1], visible=False))
    only_a100 = replace(mixed, gpus=gpus, driver_version="580.95.05", cuda_driver_version="13.0")
    assert select(CATALOG, [only_a100], "torch").selected.name == "torch-2.15-cu132"  # type: ignore[union-attr]
    both = replace(only_a100, gpus=mixed.gpus)
    assert select(CATALOG, [both], "torch").selected.name == "torch-2.10-cu128"  # type: ignore[union-attr]


def test_an_unreadable_gpu_blocks_cuda_images() -> None:
    broken = replace(host("h100"), gpus=(Gpu(index=0, error="the GPU is lost", fix="reset it"),))
    selection = select(CATALOG, [broken], "torch")
    assert selection.selected is None
    assert "could not be read: the GPU is lost" in (selection.message or "")


def _with_forward_compat(catalog: Catalog) -> Catalog:
    images = tuple(
        replace(i, forward_compat=True) if i.name == "torch-2.15-cu132" else i
        for i in catalog.images
    )
    return replace(catalog, images=images)


def test_forward_compat_counts_on_datacenter_cards_only() -> None:
    catalog = _with_forward_compat(CATALOG)
    a100 = host("a100")  # 550 driver, datacenter
    assert select(catalog, [a100], "torch").selected.name == "torch-2.15-cu132"  # type: ignore[union-attr]
    rtx = host("rtx4090")  # GeForce: never count on it
    selection = select(catalog, [rtx], "torch")
    assert selection.selected is not None and selection.selected.name == "torch-2.10-cu128"
    assert "forward compatibility is not available on NVIDIA GeForce RTX 4090" in reasons(
        selection.to_json(), "torch-2.15-cu132"
    )


def test_arch_specific_sass_covers_only_its_own_capability() -> None:
    from cudabox.resolver import sass_runs_on
    from cudabox.versions import Arch

    assert sass_runs_on(Arch.parse("9.0a"), (9, 0), False)
    assert not sass_runs_on(Arch.parse("10.0a"), (10, 3), False)
    assert sass_runs_on(Arch.parse("10.0"), (10, 3), False)
    assert not sass_runs_on(Arch.parse("8.6"), (8, 0), False)
    assert not sass_runs_on(Arch.parse("8.0"), (8, 7), True)
