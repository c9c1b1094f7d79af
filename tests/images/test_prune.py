"""`cudabox prune`'s decisions, as a pure function of what an engine holds (no engine here).

The real engine is in test_prune_docker.py; here each rule gets its case: what goes, what stays
and why, and how the bytes of shared layers are counted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from cudabox.container import MANAGED_LABEL
from cudabox.engine import StoredContainer, StoredImage
from cudabox.errors import EngineError, UsageError
from cudabox.images.prune import (
    PruneOptions,
    built_by_cudabox,
    parse_labels,
    plan_prune,
    prune,
)
from cudabox.output import human_bytes

BASE = ("sha256:base", 200)
OWN_STEP = "/bin/sh -c #(nop)  LABEL cudabox.flavor=cpu cudabox.image=torch-2.13-cpu"
STAGE = {"cudabox.stage": "build", "cudabox.stage_of": "torch-2.13-cpu"}
BUILT = {"cudabox.image": "torch-2.13-cpu"}


def image(
    name: str,
    layers: Sequence[tuple[str, int]],
    labels: Mapping[str, str],
    tags: tuple[str, ...] = (),
    digests: tuple[str, ...] = (),
    last_step: str = OWN_STEP,
) -> StoredImage:
    return StoredImage(
        id=f"sha256:{name}",
        tags=tags,
        digests=digests,
        labels=dict(labels),
        created=0,
        layers=(BASE, *layers),
        last_step=last_step,
    )


def container(
    name: str, image_id: str, state: str = "exited", managed: bool = True, size: int = 7
) -> StoredContainer:
    labels = {MANAGED_LABEL: "1", **BUILT} if managed else {}
    return StoredContainer(
        id=f"id-{name}", name=name, image_id=image_id, state=state, labels=labels, size=size
    )


TAGGED = image("new", [("c-venv", 900), ("c-cudabox", 5)], BUILT, tags=("cudabox/torch:1",))
OLD = image("old", [("c-venv", 900), ("c-cudabox-old", 4)], BUILT)
STAGE_IMAGE = image("stage", [("c-stage", 1400)], STAGE, last_step="RUN pip install ...")
BOOTSTRAP = image(
    "bootstrap", [], {"cudabox.base": "mmdebstrap"}, tags=("cudabox/debian-python:bookworm",)
)


def kinds(plan: object) -> list[tuple[str, str, int]]:
    return [(i.kind, i.id, i.bytes) for i in plan.remove]  # type: ignore[attr-defined]


def test_leftovers_go_and_the_image_stays() -> None:
    plan = plan_prune([TAGGED, OLD, STAGE_IMAGE, BOOTSTRAP], [])
    assert kinds(plan) == [
        ("build-stage", STAGE_IMAGE.id, 1400),
        ("old-image", OLD.id, 4),  # its venv layer is the new image's too
    ]
    assert plan.bytes == 1404
    assert plan.kept == ()


def test_the_order_is_containers_then_stages_then_old_images() -> None:
    plan = plan_prune([OLD, STAGE_IMAGE], [container("left", TAGGED.id)])
    assert [i.kind for i in plan.remove] == ["container", "build-stage", "old-image"]


def test_images_removes_what_cudabox_built_but_never_the_base() -> None:
    plan = plan_prune([TAGGED, BOOTSTRAP], [], include_images=True)
    assert kinds(plan) == [("image", TAGGED.id, 905)]  # not the base's 200


def test_a_layer_shared_by_two_removed_images_counts_once() -> None:
    plan = plan_prune([TAGGED, OLD, BOOTSTRAP], [], include_images=True)
    # The venv layer counts at the first image that holds it (in the engine's order).
    assert kinds(plan) == [("old-image", OLD.id, 4), ("image", TAGGED.id, 905)]
    assert plan.bytes == 909


def test_an_image_pulled_by_digest_is_no_old_image() -> None:
    pulled = image("pulled", [("c-x", 10)], BUILT, digests=("ghcr.io/o/torch@sha256:ab",))
    assert plan_prune([pulled], []).remove == ()
    plan = plan_prune([pulled, BOOTSTRAP], [], include_images=True)
    assert kinds(plan) == [("image", pulled.id, 10)]


def test_the_base_layer_goes_when_no_image_that_stays_holds_it() -> None:
    assert kinds(plan_prune([STAGE_IMAGE], [])) == [("build-stage", STAGE_IMAGE.id, 1600)]


def test_a_tagged_build_stage_is_the_users() -> None:
    tagged_stage = image("ts", [("c-s", 10)], STAGE, tags=("mine:stage",))
    assert plan_prune([tagged_stage], [], include_images=True).remove == ()


def test_an_image_built_from_a_cudabox_image_is_kept_with_the_reason() -> None:
    derived = image(
        "derived",
        [("c-venv", 900), ("c-cudabox", 5), ("c-mine", 3)],
        BUILT,
        tags=("me/app:1",),
        last_step="/bin/sh -c pip install my-app",
    )
    assert not built_by_cudabox(derived) and built_by_cudabox(TAGGED)
    plan = plan_prune([TAGGED, derived], [], include_images=True)
    assert kinds(plan) == [("image", TAGGED.id, 0)]  # the derived image holds its layers
    (kept,) = plan.kept
    assert kept.id == derived.id and "built FROM a cudabox image" in kept.reason


def test_a_container_keeps_its_image_unless_prune_removes_the_container() -> None:
    running = container("busy", OLD.id, state="running")
    plan = plan_prune([OLD], [running])
    assert plan.remove == ()
    (kept,) = plan.kept
    assert kept.reason == "container busy uses it"
    stopped = container("done", OLD.id, state="exited", size=11)
    assert [i.kind for i in plan_prune([OLD], [stopped]).remove] == ["container", "old-image"]
    # A stopped container cudabox did not start is not prune's to remove: its image stays too.
    foreign = container("theirs", OLD.id, managed=False)
    plan = plan_prune([OLD], [foreign])
    assert plan.remove == () and plan.kept[0].reason == "container theirs uses it"


def test_label_narrows_what_goes() -> None:
    mine = image("mine", [("c-m", 10)], {**STAGE, "cudabox.test": "a"})
    theirs = image("theirs", [("c-t", 10)], {**STAGE, "cudabox.test": "b"})
    plan = plan_prune([mine, theirs], [], only={"cudabox.test": "a"})
    assert kinds(plan) == [("build-stage", mine.id, 10)]


@pytest.mark.parametrize("bad", ["novalue", "=x"])
def test_a_label_that_is_no_pair_is_a_usage_error(bad: str) -> None:
    with pytest.raises(UsageError):
        parse_labels([bad])
    assert parse_labels(["a=b", "c="]) == {"a": "b", "c": ""}


def test_human_bytes() -> None:
    # One helper for every size cudabox prints (output.human_bytes): nothing is "0.0 MB".
    assert human_bytes(0) == "0 B"
    assert human_bytes(3_000_006) == "3.0 MB"
    assert human_bytes(1_402_000_000) == "1.40 GB"


class Engine:
    """Enough of cudabox.engine.Engine for prune(): it deletes, or refuses one image."""

    def __init__(self, images: list[StoredImage], refuse: str = "") -> None:
        self.images = images
        self.refuse = refuse
        self.deleted: list[str] = []

    def stored_images(self) -> list[StoredImage]:
        return self.images

    def stored_containers(self, label: str | None = None) -> list[StoredContainer]:
        return []

    def delete_image(self, ref: str) -> frozenset[str]:
        if ref == self.refuse:
            raise EngineError(f"could not remove image {ref}: conflict: image has dependent child")
        self.deleted.append(ref)
        found = next(i for i in self.images if ref in (i.id, *i.tags))
        self.images = [i for i in self.images if i is not found]
        return frozenset({found.id})  # as Podman answers: the image, not its layers

    def remove_container(self, container_id: str) -> None:
        raise AssertionError("no container to remove")


def test_prune_counts_the_layers_that_left_and_keeps_what_the_engine_refused() -> None:
    engine = Engine([TAGGED, OLD, STAGE_IMAGE], refuse=OLD.id)
    report = prune(engine, PruneOptions())  # type: ignore[arg-type]
    assert engine.deleted == [STAGE_IMAGE.id]
    assert [(i.kind, i.bytes) for i in report.removed] == [("build-stage", 1400)]
    (kept,) = report.kept
    assert kept.id == OLD.id and "dependent child" in kept.reason
    assert report.freed_bytes == 1400
    document = report.to_json()
    assert document["kind"] == "cudabox.prune" and document["freed_bytes"] == 1400


def test_a_dry_run_deletes_nothing() -> None:
    engine = Engine([TAGGED, OLD, STAGE_IMAGE])
    report = prune(engine, PruneOptions(dry_run=True))  # type: ignore[arg-type]
    assert engine.deleted == [] and report.dry_run and report.freed_bytes == 1404
