"""Images through a registry: `cudabox publish`, judging there without pulling, pulling by digest.

publish: build and verify when missing (an image whose proof of contents fails is never pushed),
then push `REPO/NAME:latest` and an immutable tag `VERSION-lockLOCK12-fsFS12`: FS12 hashes the
image's layers (diff_ids), so a rebuild with identical layers has the same immutable tag, which
publish never moves, while `latest` follows the newest push.

pull (pull_judged): the image chosen in the registry (cudabox.choice) is pulled by its manifest
digest, then the pulled image's labels are checked to be the ones that were judged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cudabox.errors import IntegrityError, NotFound
from cudabox.images.build import build_and_verify
from cudabox.images.catalog import ImageSpec
from cudabox.images.labels import PREFIX, built_on, provenance_labels, spec_from_labels
from cudabox.images.lock import lock_digest
from cudabox.images.remote import image_reference
from cudabox.images.verify import require_verified, verify_image
from cudabox.options import PackageSources
from cudabox.output import progress
from cudabox.progress import TransferProgress
from cudabox.registry import Reference, RegistryClient

if TYPE_CHECKING:
    from cudabox.container import ImageInfo
    from cudabox.engine import Engine


def content_id(diff_ids: Sequence[str]) -> str:
    """12 hex digits naming an image's filesystem: its layers, in order."""
    return hashlib.sha256("\n".join(diff_ids).encode()).hexdigest()[:12]


def immutable_tag(spec: ImageSpec, lock_sha256: str, diff_ids: Sequence[str]) -> str:
    return f"{spec.framework_version}-lock{lock_sha256[:12]}-fs{content_id(diff_ids)}"


# ---- pulling -----------------------------------------------------------------------------------


def pull_judged(engine: Engine, judged: ImageSpec) -> None:
    """Pull `judged.tag` (REPO/NAME@sha256:...) unless present; its labels must be the judged ones.

    A pulled image whose labels differ is removed again (nothing unexpected stays on the engine).
    """
    ref = judged.tag
    info = engine.image(ref)
    if info is None:
        bar = TransferProgress(f"pull {ref}")
        try:
            engine.pull(ref, events=bar)
        except BaseException:
            bar.abort()
            raise
        bar.finish()
        info = engine.image(ref)
        if info is None:
            raise IntegrityError(f"the pull of {ref} ended without the image", "pull it again")
        fresh = True
    else:
        fresh = False
    got = spec_from_labels(dict(info.labels), ref)
    if got != judged:
        if fresh:
            engine.remove_image(ref, force=True)
        raise IntegrityError(
            f"{ref} pulled, but its labels are not what was judged in the registry "
            f"({got.name} {got.framework_version}, CUDA {got.cuda} vs {judged.name} "
            f"{judged.framework_version}, CUDA {judged.cuda})",
            "someone changed the registry while cudabox read it: run the command again",
        )


# ---- publishing --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Published:
    name: str
    reference: str  # REPO/NAME:latest
    immutable: str  # REPO/NAME:VERSION-lock...-fs...
    digest: str  # the manifest digest the registry answered
    pinned: str  # REPO/NAME@sha256:...
    layers: int
    layers_uploaded: int  # "Pushed": blobs the registry did not have
    immutable_existed: bool
    base_image: str  # the base it was built on (its labels), "" for an image without one
    base_digest: str


def publish_image(
    engine: Engine,
    spec: ImageSpec,
    repo: str,
    images_dir: Path,
    sources: PackageSources,
    client: RegistryClient,
) -> Published:
    present = engine.image(spec.tag)
    why = "it is not built" if present is None else stale_reason(spec, present, images_dir)
    if why is not None:
        progress(f"publish {spec.name}: building {spec.tag} first: {why}")
        build_and_verify(engine, spec, sources)
    else:
        # The proof of contents runs on what is about to be published, not on a memory of it.
        require_verified(verify_image(engine, spec, images_dir))
    info = engine.image(spec.tag)
    assert info is not None
    lock_sha = info.labels.get("cudabox.lock_sha256", "")
    latest = image_reference(repo, spec.name, "latest")
    fixed = image_reference(repo, spec.name, immutable_tag(spec, lock_sha, info.diff_ids))
    existed = _has(client, fixed, info.diff_ids)
    bar = TransferProgress(f"push {latest}")
    engine.tag(spec.tag, str(latest))
    try:
        digest = engine.push(str(latest), events=bar)
        if not existed:
            engine.tag(spec.tag, str(fixed))
            engine.push(str(fixed), events=bar)
    finally:
        for ref in (latest, fixed):
            engine.remove_image(str(ref))  # only the tags: the image stays as spec.tag
    bar.finish()
    if digest is None:
        digest = client.image(latest).digest
    base = built_on(info.labels)
    return Published(
        name=spec.name,
        reference=str(latest),
        immutable=str(fixed),
        digest=digest,
        pinned=str(latest.pinned(digest)),
        layers=len(info.diff_ids),
        layers_uploaded=bar.count("Pushed"),
        immutable_existed=existed,
        base_image=base.name if base else "",
        base_digest=base.digest if base else "",
    )


def framework_env(spec: ImageSpec) -> str:
    """The variable naming the framework's version (NGC's convention; enroot's hooks read it)."""
    return "PYTORCH_VERSION" if spec.framework == "torch" else "TENSORFLOW_VERSION"


def stale_reason(spec: ImageSpec, info: ImageInfo, images_dir: Path) -> str | None:
    """Why the engine's copy of `spec` is not what this checkout would publish, or None.

    Another lock means other packages; missing provenance labels or version variable mean an
    older cudabox built it. Either way the registry would get an image the catalog does not
    describe, so publish rebuilds it first (what `cudabox build` would do).
    """
    built = info.labels.get(f"{PREFIX}lock_sha256", "")
    if spec.lock.is_file():
        current = lock_digest(spec.lock)
        if built != current:
            return (
                f"it was built from another lock ({built[:12] or 'none'}; "
                f"{spec.lock.name} is {current[:12]})"
            )
    # The keys this checkout would label it with (values differ per build: created, revision).
    wanted = provenance_labels("", "", images_dir.parent)
    missing = sorted(key for key in wanted if key not in info.labels)
    if missing:
        return f"it lacks the label {missing[0]} (built by an older cudabox)"
    variable = framework_env(spec)
    if info.env.get(variable) != spec.framework_version:
        return f"its environment lacks {variable}={spec.framework_version} (an older cudabox)"
    return None


def _has(client: RegistryClient, ref: Reference, diff_ids: Sequence[str]) -> bool:
    """Whether the immutable tag is already published; it must hold exactly these layers."""
    try:
        there = client.image(ref)
    except NotFound:
        return False
    if tuple(there.config.diff_ids) != tuple(diff_ids):
        raise IntegrityError(
            f"{ref} exists with other layers than the image being published",
            "the tag is content-addressed, so this means tampering or a hash collision: "
            "inspect the registry",
        )
    return True
