"""`cudabox prune`: remove what cudabox leaves on the engine, and say how many bytes that freed.

A build leaves its build stage (the venv before it is split into layers, labelled
`cudabox.stage=build` and `cudabox.stage_of=NAME`): it is kept on purpose, as the cache that
makes a rebuild of cudabox's own layer take seconds. A rebuild leaves the image it replaced,
untagged; a cudabox killed mid-run may leave a stopped container (`cudabox.managed`). Prune
removes those three; the images cudabox built (catalog images) only with `--images`, and never
the base, a user's image built FROM a cudabox image, or an image a container still uses.

What removing an image frees is counted by its layers (the engine's chain ids): a layer goes
only when no image that stays holds it, and each layer counts once. The planned figure is what
`--dry-run` shows; after the removal, the figure counts the layers no image holds any more (the
engine read again). See docs/prune.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from cudabox.container import MANAGED_LABEL
from cudabox.errors import EngineError, UsageError
from cudabox.images.labels import PREFIX

if TYPE_CHECKING:
    from cudabox.engine import Engine, StoredContainer, StoredImage

STAGE_LABEL = f"{PREFIX}stage"  # "build" on a build stage (images/Dockerfile.template)
STAGE_OF_LABEL = f"{PREFIX}stage_of"  # the catalog image the stage was built for
IMAGE_LABEL = f"{PREFIX}image"  # on every image cudabox builds (cudabox.images.labels)
SCHEMA = 1
# A container in these states runs nothing: removing it loses only its writable layer.
STOPPED = frozenset({"created", "exited", "dead"})
# The last instruction of an image cudabox built: its labels (images/Dockerfile.template).
_OWN_LAST_STEP = re.compile(rf"\bLABEL\b.*\b{re.escape(IMAGE_LABEL)}=")

Kind = Literal["container", "build-stage", "old-image", "image"]
KINDS: tuple[Kind, ...] = ("container", "build-stage", "old-image", "image")


@dataclass(frozen=True)
class Leftover:
    """One thing prune removes (or, in a dry run, would remove)."""

    kind: Kind
    id: str
    name: str  # the container's name, the image's tags, or "<none>"
    serves: str  # the catalog image it belongs to, when its labels say
    bytes: int  # what removing it frees; a layer shared by several of them counts at the first


@dataclass(frozen=True)
class Kept:
    """Something prune looked at and left, with the reason."""

    kind: Kind
    id: str
    name: str
    serves: str
    reason: str


@dataclass(frozen=True)
class PrunePlan:
    remove: tuple[Leftover, ...]
    kept: tuple[Kept, ...]
    # Per image to remove: the layers (chain id -> bytes) that go with it.
    layers: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return sum(item.bytes for item in self.remove)


@dataclass(frozen=True)
class PruneReport:
    dry_run: bool
    images: bool
    removed: tuple[Leftover, ...]
    kept: tuple[Kept, ...]

    @property
    def freed_bytes(self) -> int:
        return sum(item.bytes for item in self.removed)

    def to_json(self) -> dict[str, Any]:
        """The `--json` document (docs/prune.md)."""
        return {
            "kind": "cudabox.prune",
            "schema": SCHEMA,
            "dry_run": self.dry_run,
            "images": self.images,
            "freed_bytes": self.freed_bytes,
            "removed": [asdict(item) for item in self.removed],
            "kept": [asdict(item) for item in self.kept],
        }


@dataclass(frozen=True)
class PruneOptions:
    images: bool = False  # also the images cudabox built
    dry_run: bool = False
    json: bool = False
    only: Mapping[str, str] = field(default_factory=dict)  # labels everything removed must carry


def parse_labels(items: Sequence[str]) -> dict[str, str]:
    labels = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(
                f"--label {item!r} is not KEY=VALUE", "write it as --label cudabox.stage_of=NAME"
            )
        labels[key] = value
    return labels


def built_by_cudabox(image: StoredImage) -> bool:
    """Built by `cudabox build`: its last step is cudabox's own labels. An image a user built
    FROM a cudabox image carries the same labels, but its last step is the user's."""
    return IMAGE_LABEL in image.labels and bool(_OWN_LAST_STEP.search(image.last_step))


def _carries(labels: Mapping[str, str], only: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in only.items())


def _name(image: StoredImage) -> str:
    return " ".join(image.tags or image.digests) or "<none>"


def _kind(image: StoredImage, include_images: bool) -> Kind | None:
    """What `image` is to prune, or None when it is none of prune's business."""
    untagged = not image.tags and not image.digests
    if untagged and image.labels.get(STAGE_LABEL) == "build":
        return "build-stage"
    if untagged and IMAGE_LABEL in image.labels:
        return "old-image"
    if include_images and not untagged and IMAGE_LABEL in image.labels:
        return "image"
    return None


def plan_prune(
    images: Sequence[StoredImage],
    containers: Sequence[StoredContainer],
    *,
    include_images: bool = False,
    only: Mapping[str, str] | None = None,
) -> PrunePlan:
    """What to remove, and what each frees: a pure function of what the engine holds.

    `containers` are all of the engine's (their size read where they carry MANAGED_LABEL).
    """
    only = only or {}
    remove: list[Leftover] = []
    kept: list[Kept] = []
    gone_containers = set()
    for container in containers:
        if MANAGED_LABEL not in container.labels or not _carries(container.labels, only):
            continue
        serves = container.labels.get(IMAGE_LABEL, "")
        if container.state in STOPPED:
            gone_containers.add(container.id)
            remove.append(
                Leftover("container", container.id, container.name, serves, container.size)
            )
    in_use: dict[str, str] = {}
    for container in containers:
        if container.id not in gone_containers:
            in_use.setdefault(container.image_id, container.name)

    chosen: list[tuple[StoredImage, Kind]] = []
    for image in images:
        kind = _kind(image, include_images)
        if kind is None or not _carries(image.labels, only):
            continue
        serves = image.labels.get(STAGE_OF_LABEL) or image.labels.get(IMAGE_LABEL, "")
        if kind == "image" and not built_by_cudabox(image):
            reason = "built FROM a cudabox image, not by cudabox (remove it with docker rmi)"
            kept.append(Kept(kind, image.id, _name(image), serves, reason))
        elif image.id in in_use:
            reason = f"container {in_use[image.id]} uses it"
            kept.append(Kept(kind, image.id, _name(image), serves, reason))
        else:
            chosen.append((image, kind))

    # A layer goes only when no image that stays holds it.
    going = {image.id for image, _ in chosen}
    staying: set[str] = set()
    for image in images:
        if image.id not in going:
            staying.update(chain for chain, _ in image.layers)
    counted: set[str] = set()
    layers: dict[str, dict[str, int]] = {}
    for image, kind in chosen:
        own = {c: size for c, size in image.layers if c not in staying and c not in counted}
        counted.update(own)
        layers[image.id] = own
        serves = image.labels.get(STAGE_OF_LABEL) or image.labels.get(IMAGE_LABEL, "")
        remove.append(Leftover(kind, image.id, _name(image), serves, sum(own.values())))
    remove.sort(key=lambda item: KINDS.index(item.kind))  # containers first: they hold images
    return PrunePlan(tuple(remove), tuple(kept), layers)


def prune(engine: Engine, options: PruneOptions) -> PruneReport:
    """Plan, then (unless a dry run) remove.

    The bytes of a real run are those of the removed images' layers that no image holds once
    they are gone, read again from the engine: what left the disk, even if something changed in
    between (Docker's answer to a removal names the layers it deleted; Podman's does not).
    """
    images = engine.stored_images()
    sized = {c.id: c for c in engine.stored_containers(MANAGED_LABEL)}
    containers = [sized.get(c.id, c) for c in engine.stored_containers()]
    plan = plan_prune(images, containers, include_images=options.images, only=options.only)
    if options.dry_run:
        return PruneReport(True, options.images, plan.remove, plan.kept)
    by_id = {image.id: image for image in images}
    gone: list[Leftover] = []
    kept = list(plan.kept)
    for item in plan.remove:
        try:
            if item.kind == "container":
                engine.remove_container(item.id)
            else:
                image = by_id[item.id]
                # An untagged image goes by its id; a tagged one with its last reference.
                for ref in (*image.tags, *image.digests) or (image.id,):
                    engine.delete_image(ref)
        except EngineError as exc:  # e.g. a container or a build started using it meanwhile
            kept.append(Kept(item.kind, item.id, item.name, item.serves, exc.message))
            continue
        gone.append(item)
    remaining = {chain for image in engine.stored_images() for chain, _ in image.layers}
    removed: list[Leftover] = []
    counted: set[str] = set()
    for item in gone:
        if item.kind != "container":
            freed = {
                chain: size
                for chain, size in by_id[item.id].layers
                if chain not in remaining and chain not in counted
            }
            counted.update(freed)
            item = replace(item, bytes=sum(freed.values()))
        removed.append(item)
    return PruneReport(False, options.images, tuple(removed), tuple(kept))
