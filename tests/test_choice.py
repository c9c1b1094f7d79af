"""The one image choice: its candidate sources, a named image, and the choice with its reasons."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from cudabox.choice import (
    Request,
    catalog_candidates,
    choose,
    engine_candidates,
    is_reference,
    named_image,
    registry_candidates,
)
from cudabox.container import ImageInfo
from cudabox.errors import NoImageFits, NotFound, Unavailable, Unlabelled, UsageError
from cudabox.host import HostProfile
from cudabox.images.catalog import Catalog, load_catalog
from cudabox.images.labels import labels_for
from cudabox.registry import BlobCache, Credentials, RegistryClient

pytest_plugins = ["registry_server"]  # the `registry` fixture: a real registry on loopback

if TYPE_CHECKING:  # imported by pytest as a plugin, so that its asserts are rewritten
    from registry_server import RegistryServer

HOSTS = Path(__file__).parent / "fixtures" / "hosts"
LOCK = "0" * 64


def host(name: str) -> HostProfile:
    return HostProfile.load(HOSTS / f"{name}.json")


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


@dataclass
class Images:
    """An engine's image store as the choice reads it: tagged images and their labels."""

    infos: list[ImageInfo] = field(default_factory=list)

    def image(self, ref: str) -> ImageInfo | None:
        return next((i for i in self.infos if ref in i.tags), None)

    def images_with_label(self, label: str) -> list[ImageInfo]:
        return [i for i in self.infos if label in i.labels]


def info(tag: str, labels: dict[str, str]) -> ImageInfo:
    return ImageInfo("sha256:" + "1" * 64, (tag,), 1, labels, {}, "", "")


def test_the_newest_image_that_fits_and_why(catalog: Catalog) -> None:
    chosen = choose(Request("torch"), [host("h100")], catalog_candidates(catalog))
    assert chosen.image.name == "torch-2.15-cu132"
    assert chosen.why.startswith("newest torch cuda image that fits this host")
    assert chosen.selection is not None and chosen.selection.selected == chosen.image
    assert chosen.profile == host("h100")


def test_no_gpu_says_so_and_takes_the_cpu_image(catalog: Catalog) -> None:
    chosen = choose(Request("torch"), [host("cpu-only")], catalog_candidates(catalog))
    assert chosen.image.flavor == "cpu"
    assert "; no usable GPU (" in chosen.why


def test_a_fleet_gets_the_image_every_node_runs(catalog: Catalog) -> None:
    hosts = [host("h100"), host("v100")]
    chosen = choose(
        Request("torch", flavor="cuda"), hosts, catalog_candidates(catalog), hosts_text="2 nodes"
    )
    assert chosen.why == "newest torch cuda image that fits 2 nodes"
    alone = choose(Request("torch", flavor="cuda"), [host("h100")], catalog_candidates(catalog))
    assert chosen.image != alone.image  # the V100 holds the fleet back


def test_nothing_fits_is_exit_3_with_the_resolvers_fix(catalog: Catalog) -> None:
    with pytest.raises(NoImageFits) as caught:
        choose(
            Request("torch", flavor="cuda"), [host("v100-old-driver")], catalog_candidates(catalog)
        )
    assert caught.value.fix and "driver" in caught.value.fix


def test_a_gpu_run_never_falls_back_to_the_cpu(catalog: Catalog) -> None:
    with pytest.raises(Unavailable, match="never falls back") as caught:
        choose(
            Request("tensorflow", require_gpu=True, here=True),
            [host("cpu-only")],
            catalog_candidates(catalog),
        )
    assert "cudabox train tensorflow --here --cpu" in (caught.value.fix or "")


def test_a_named_catalog_image_is_taken_as_named(catalog: Catalog) -> None:
    chosen = choose(
        Request("torch", image="torch-2.13-cpu"), [host("h100")], catalog_candidates(catalog)
    )
    assert (chosen.image.name, chosen.why, chosen.selection) == (
        "torch-2.13-cpu",
        "named with --image",
        None,
    )
    with pytest.raises(UsageError):
        named_image("torch-0.1-cpu", catalog)


@pytest.mark.parametrize(
    ("text", "reference"),
    [
        ("torch-2.13-cpu", False),
        ("cudabox/torch-2.13-cpu:latest", True),
        ("r/x@sha256:ab", True),
        ("x:1", True),
    ],
)
def test_reference_or_name(text: str, reference: bool) -> None:
    assert is_reference(text) is reference


def test_a_reference_is_judged_from_the_engines_labels(catalog: Catalog) -> None:
    spec = catalog.get("torch-2.13-cpu")
    engine = Images(
        [info("team/torch:1", labels_for(spec, LOCK)), info("team/plain:1", {"a": "b"})]
    )
    judged = named_image("team/torch:1", catalog, engine)
    assert (judged.name, judged.tag, judged.framework_version) == (
        spec.name,
        "team/torch:1",
        spec.framework_version,
    )
    with pytest.raises(Unlabelled):
        named_image("team/plain:1", catalog, engine)
    with pytest.raises(Unavailable, match="no registry"):
        named_image("team/absent:1", catalog, engine)


def test_the_engines_labelled_images_join_the_catalog(catalog: Catalog) -> None:
    spec = catalog.get("torch-2.13-cpu")
    engine = Images(
        [
            info(spec.tag, labels_for(spec, LOCK)),  # the catalog's own: not twice
            info("team/torch:1", labels_for(spec, LOCK)),
            info("team/broken:1", {"cudabox.image": "x"}),
        ]
    )
    found = engine_candidates(catalog, engine)
    extra = [i.name for i in found.catalog.images if i not in catalog.images]
    assert extra == ["torch-2.13-cpu@team/torch:1"]
    assert len(found.notes) == 1 and found.notes[0].startswith("skipping team/broken:1:")


def no_login(host: str) -> Credentials | None:
    raise AssertionError("a loopback test registry needs no login")


@pytest.fixture
def client(tmp_path: Path) -> Iterator[RegistryClient]:
    with RegistryClient(no_login, cache=BlobCache(tmp_path / "cache")) as made:
        yield made


def test_a_registry_pins_the_choice_by_digest(
    registry: RegistryServer,
    catalog: Catalog,
    client: RegistryClient,
) -> None:
    labels = {**labels_for(catalog.get("torch-2.13-cpu"), LOCK), "cudabox.test": "1"}
    pushed = registry.push_image("choice/torch-2.13-cpu", "latest", labels)
    repo = f"{registry.host}/choice"
    found = registry_candidates(catalog, client, repo, "latest", "torch")
    assert [i.tag for i in found.catalog.images] == [f"{repo}/torch-2.13-cpu@{pushed.digest}"]
    assert any("skipped" in note for note in found.notes)  # the catalog's other torch images
    chosen = choose(Request("torch"), [host("cpu-only")], found)
    assert chosen.why.startswith("newest torch cpu image in the registry that fits this host")
    named = named_image(f"{repo}/torch-2.13-cpu:latest", catalog, Images(), client)
    assert named.tag == f"{repo}/torch-2.13-cpu@{pushed.digest}"
    with pytest.raises(NotFound):
        registry_candidates(catalog, client, f"{registry.host}/empty", "latest", "torch")
