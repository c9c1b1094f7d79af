"""Catalog images as a registry holds them: judged from their labels, without pulling a layer.

For a repository prefix REPO (`127.0.0.1:5000/cudabox`, `ghcr.io/org/cudabox`) each catalog image
NAME is looked up as `REPO/NAME:TAG`; its config labels become an ImageSpec whose tag is the pinned
`REPO/NAME@sha256:...`, so `cudabox.resolver.select` judges what the registry really holds and the
choice names exactly the bytes to pull. An image that is missing, for another platform or without
cudabox labels is skipped with the reason; a registry that cannot be reached or refuses the login
stops the whole look-up (no answer would be right then), and so does altered content.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Literal

from cudabox.errors import (
    AuthError,
    DataError,
    NotFound,
    PlatformMissing,
    Unlabelled,
    UsageError,
)
from cudabox.images.catalog import Catalog, ImageSpec
from cudabox.images.labels import PREFIX, spec_from_labels
from cudabox.registry import Reference, RegistryClient, RemoteImage, RepositoryDenied

SkipKind = Literal["missing", "denied", "platform", "unlabelled", "mismatch"]
DEFAULT_TAG = "latest"
WORKERS = 8  # parallel look-ups: enough to hide round trips, few enough for any registry


@dataclass(frozen=True)
class RemoteCandidate:
    """A catalog image found in the registry, as its labels describe it."""

    spec: ImageSpec  # from the labels; tag = REPO/NAME@sha256:<manifest digest>
    image: RemoteImage

    @property
    def pinned(self) -> str:
        return str(self.image.pinned)

    @property
    def lock_sha256(self) -> str:
        """The lock the image was built from (compare with the catalog's to spot stale images)."""
        return self.image.labels.get(f"{PREFIX}lock_sha256", "")


@dataclass(frozen=True)
class Skipped:
    """A catalog image the registry cannot offer, and why."""

    name: str
    reference: str
    kind: SkipKind
    reason: str
    fix: str | None = None


@dataclass(frozen=True)
class RemoteCandidates:
    repo: str
    tag: str
    found: tuple[RemoteCandidate, ...]
    skipped: tuple[Skipped, ...]

    def catalog(self, like: Catalog) -> Catalog:
        """The found images as a Catalog for `cudabox.resolver.select` (root taken from `like`)."""
        return Catalog(images=tuple(c.spec for c in self.found), root=like.root)

    def by_pinned(self, reference: str) -> RemoteCandidate:
        for candidate in self.found:
            if candidate.pinned == reference:
                return candidate
        raise KeyError(reference)

    def require_any(self) -> None:
        """Raise the error that explains an empty result (nothing to judge), if it is empty."""
        if self.found:
            return
        kinds = {s.kind for s in self.skipped}
        detail = "; ".join(f"{s.name}: {s.reason}" for s in self.skipped) or "no catalog image"
        if "denied" in kinds and kinds <= {"denied", "missing"}:
            registry = image_reference(self.repo, "x").registry
            raise AuthError(
                f"{self.repo} lets you pull none of the catalog's images ({detail})",
                f"log in with an account that may pull them: `docker login {registry}`",
            )
        if kinds == {"missing"} or not self.skipped:
            raise NotFound(
                f"{self.repo} holds none of the catalog's images under tag {self.tag!r} ({detail})",
                f"publish them first: `cudabox publish TARGET --registry {self.repo}`, "
                "or check the registry prefix",
            )
        if "unlabelled" in kinds or "mismatch" in kinds:
            raise Unlabelled(
                f"no image in {self.repo} can be judged ({detail})",
                f"publish images built by cudabox: `cudabox publish TARGET --registry {self.repo}`",
            )
        raise PlatformMissing(
            f"no image in {self.repo} is for linux/amd64 ({detail})",
            "publish linux/amd64 builds: `cudabox publish` on an amd64 host",
        )


def image_reference(repo: str, name: str, tag: str = DEFAULT_TAG) -> Reference:
    """REPO/NAME:TAG as a Reference; UsageError when REPO is not a repository prefix."""
    prefix = repo.rstrip("/")
    if "@" in prefix or ("/" in prefix and ":" in prefix.rsplit("/", 1)[1]):
        raise UsageError(
            f"--registry {repo!r} must be a repository prefix without a tag or digest",
            "write it like 127.0.0.1:5000/cudabox or ghcr.io/ORG/cudabox",
        )
    return Reference.parse(f"{prefix}/{name}:{tag}")


def spec_of(image: RemoteImage, pinned: str | None = None) -> ImageSpec:
    """The ImageSpec an image's labels describe; Unlabelled when it has none (or broken ones)."""
    where = pinned or str(image.pinned)
    labels = dict(image.labels)
    if not any(key.startswith(PREFIX) for key in labels):
        raise Unlabelled(
            f"{where} carries no cudabox labels, so nothing says which CUDA, cuDNN or GPUs it has",
            "publish images built by cudabox (`cudabox publish`), or build this one with cudabox",
        )
    try:
        return spec_from_labels(labels, tag=where)
    except DataError as exc:
        raise Unlabelled(
            f"{where}: {exc.message}",
            "re-publish the image from a current `cudabox build`",
        ) from None


def remote_candidates(
    repo: str,
    catalog: Catalog,
    framework: str,
    *,
    tag: str = DEFAULT_TAG,
    client: RegistryClient | None = None,
) -> RemoteCandidates:
    """Read `REPO/NAME:TAG` for every catalog image of `framework`, in parallel, without layers."""
    images = catalog.for_framework(framework)
    references = [image_reference(repo, spec.name, tag) for spec in images]
    own = client is None
    client = client or RegistryClient()
    try:
        if references:  # one cheap request first: an unreachable registry fails once, clearly
            client.ping(references[0].registry)
        with ThreadPoolExecutor(max_workers=min(WORKERS, max(1, len(images)))) as pool:
            outcomes = list(pool.map(lambda r: _look(client, r), references))
    finally:
        if own:
            client.close()
    found: list[RemoteCandidate] = []
    skipped: list[Skipped] = []
    for spec, ref, outcome in zip(images, references, outcomes, strict=True):
        if isinstance(outcome, Skipped):
            skipped.append(replace(outcome, name=spec.name))
            continue
        try:
            candidate = _candidate(spec, outcome)
        except Unlabelled as exc:
            skipped.append(Skipped(spec.name, str(ref), "unlabelled", exc.message, exc.fix))
            continue
        if isinstance(candidate, Skipped):
            skipped.append(candidate)
        else:
            found.append(candidate)
    return RemoteCandidates(repo, tag, tuple(found), tuple(skipped))


def _look(client: RegistryClient, ref: Reference) -> RemoteImage | Skipped:
    """One image, or why it is not there. Registry-wide failures propagate."""
    try:
        return client.image(ref)
    except NotFound as exc:
        return Skipped("", str(ref), "missing", exc.message, exc.fix)
    except RepositoryDenied as exc:
        # Docker Hub and others refuse a repository that does not exist the same way.
        return Skipped("", str(ref), "denied", exc.message, exc.fix)
    except PlatformMissing as exc:
        return Skipped("", str(ref), "platform", exc.message, exc.fix)


def _candidate(spec: ImageSpec, image: RemoteImage) -> RemoteCandidate | Skipped:
    pinned = str(image.pinned)
    remote = spec_of(image, pinned)
    if remote.name != spec.name or remote.framework != spec.framework:
        return Skipped(
            spec.name,
            str(image.reference),
            "mismatch",
            f"its labels describe {remote.framework} image {remote.name!r}, not {spec.name!r}",
            f"re-publish {spec.name} under its own name",
        )
    return RemoteCandidate(spec=remote, image=image)
