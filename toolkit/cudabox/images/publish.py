"""Images through a registry: `cudabox publish`, judging there without pulling, pulling by digest.

publish: build and verify when missing (an image whose proof of contents fails is never pushed),
then push `REPO/NAME:latest` and an immutable tag `VERSION-lockLOCK12-fsFS12`: FS12 hashes the
image's layers (diff_ids), so a rebuild with identical layers has the same immutable tag, which
publish never moves, while `latest` follows the newest push.

pull: choose in the registry from the labels (cudabox.images.remote), pull exactly the chosen
manifest digest, then check that the pulled image's labels are the ones that were judged.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cudabox.errors import ExitCode, IntegrityError, NoImageFits, NotFound, UsageError
from cudabox.host import HostProfile
from cudabox.images.catalog import Catalog, ImageSpec, load_catalog
from cudabox.images.labels import PREFIX, built_on, provenance_labels, spec_from_labels
from cudabox.images.lock import lock_digest
from cudabox.images.remote import RemoteCandidates, Skipped, image_reference, remote_candidates
from cudabox.images.targets import resolve_targets
from cudabox.options import REGISTRY_ENV, PackageSources, registry_settings
from cudabox.output import print_json, progress, table
from cudabox.progress import TransferProgress
from cudabox.registry import Reference, RegistryClient
from cudabox.resolver import Flavor, select

if TYPE_CHECKING:
    from cudabox.container import ImageInfo
    from cudabox.engine import Engine


def registry_from(value: str | None) -> str:
    """--registry, else $CUDABOX_REGISTRY; a command that needs one but has none: a usage error."""
    repo = value or os.environ.get(REGISTRY_ENV)
    if not repo:
        raise UsageError(
            "no registry named",
            "pass --registry REPO (e.g. ghcr.io/ORG/cudabox or 127.0.0.1:5000/cudabox) "
            f"or set {REGISTRY_ENV}",
        )
    image_reference(repo, "x")  # validates the prefix
    return repo.rstrip("/")


def content_id(diff_ids: Sequence[str]) -> str:
    """12 hex digits naming an image's filesystem: its layers, in order."""
    return hashlib.sha256("\n".join(diff_ids).encode()).hexdigest()[:12]


def immutable_tag(spec: ImageSpec, lock_sha256: str, diff_ids: Sequence[str]) -> str:
    return f"{spec.framework_version}-lock{lock_sha256[:12]}-fs{content_id(diff_ids)}"


# ---- choosing in the registry --------------------------------------------------------------------


def registry_catalog(
    catalog: Catalog,
    repo: str,
    tag: str,
    ca: Path | None,
    framework: str | None = None,
) -> Catalog:
    """The registry's images of `framework` (every framework when None), judged from labels."""
    frameworks = [framework] if framework else sorted({i.framework for i in catalog.images})
    found: list[ImageSpec] = []
    skipped_all: list[Skipped] = []
    with RegistryClient(ca_bundle=ca) as client:
        for name in frameworks:
            candidates = remote_candidates(repo, catalog, name, tag=tag, client=client)
            skipped_all += candidates.skipped
            found += [c.spec for c in candidates.found]
            stale = [
                c.spec.name
                for c in candidates.found
                if catalog.get(c.spec.name).lock.is_file()
                and c.lock_sha256 != lock_digest(catalog.get(c.spec.name).lock)
            ]
            for name_ in stale:
                progress(f"cudabox: warning: {repo}/{name_}:{tag} was built from another lock")
    if not found:
        # Says why: nothing published (9), no login (8), only unlabelled images (12), other
        # platforms only (10). The skip lines would repeat it.
        RemoteCandidates(repo, tag, (), tuple(skipped_all)).require_any()
    for skipped in skipped_all:
        progress(f"cudabox: {skipped.reference}: skipped: {skipped.reason}")
    return Catalog(images=tuple(found), root=catalog.root)


def choose_remote(
    catalog: Catalog,
    repo: str,
    tag: str,
    ca: Path | None,
    hosts: Sequence[HostProfile],
    framework: str,
    flavor: Flavor,
) -> ImageSpec:
    """The registry image (tag = REPO/NAME@sha256:...) that fits every host, or NoImageFits."""
    remote = registry_catalog(catalog, repo, tag, ca, framework)
    selection = select(remote, hosts, framework, flavor)
    if selection.selected is None:
        raise NoImageFits(selection.message or f"no image in {repo} fits", selection.fix)
    return selection.selected


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


@dataclass(frozen=True)
class PublishOptions:
    targets: tuple[str, ...]
    registry: str
    registry_ca: Path | None
    sources: PackageSources
    json: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> PublishOptions:
        return cls(
            targets=tuple(args.targets),
            registry=registry_from(args.registry),
            registry_ca=registry_settings(args.tag, args.registry_ca)[1],
            sources=PackageSources.resolve(
                ca_cert=args.ca_cert,
                index_url=args.index_url,
                wheelhouses=args.wheelhouse,
                host_pip=args.host_pip,
            ),
            json=bool(args.json),
        )


def publish_image(
    engine: Engine,
    spec: ImageSpec,
    repo: str,
    images_dir: Path,
    sources: PackageSources,
    client: RegistryClient,
) -> Published:
    from cudabox.images.build import build_and_verify
    from cudabox.images.verify import require_verified, verify_image

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


def cmd_publish(args: argparse.Namespace) -> int:
    from cudabox.engine import Engine
    from cudabox.images.build import BUILD_READ_TIMEOUT_S

    options = PublishOptions.from_args(args)
    catalog = load_catalog()
    specs = resolve_targets(catalog, options.targets)
    results = []
    with (
        Engine.connect(read_timeout=BUILD_READ_TIMEOUT_S) as engine,
        RegistryClient(ca_bundle=options.registry_ca) as client,
    ):
        for spec in specs:
            results.append(
                publish_image(engine, spec, options.registry, catalog.root, options.sources, client)
            )
    if options.json:
        print_json([asdict(r) for r in results])
    else:
        rows = [
            [
                r.name,
                r.pinned,
                r.immutable.rpartition(":")[2],
                f"{r.layers_uploaded}/{r.layers}",
                "yes" if r.immutable_existed else "no",
            ]
            for r in results
        ]
        print(table(["image", "pinned", "immutable tag", "layers uploaded", "was there"], rows))
    return int(ExitCode.OK)


# ---- cudabox pull --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PullOptions:
    targets: tuple[str, ...]
    framework: str
    flavor: Flavor
    registry: str
    tag: str
    registry_ca: Path | None
    json: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> PullOptions:
        return cls(
            targets=tuple(args.targets),
            framework=args.framework,
            flavor=args.flavor,
            registry=registry_from(args.registry),
            tag=registry_settings(args.tag, args.registry_ca)[0],
            registry_ca=args.registry_ca,
            json=bool(args.json),
        )


def cmd_pull(args: argparse.Namespace) -> int:
    """Pre-pull for a fleet: named targets as published, or the image that fits this host."""
    from cudabox.engine import Engine
    from cudabox.nvml import probe

    options = PullOptions.from_args(args)
    catalog = load_catalog()
    if options.targets:
        named = Catalog(images=tuple(resolve_targets(catalog, options.targets)), root=catalog.root)
        remote = registry_catalog(
            named, options.registry, options.tag, options.registry_ca, framework=None
        )
        wanted = {s.name for s in named.images}
        chosen = [s for s in remote.images if s.name in wanted]
        missing = sorted(wanted - {s.name for s in chosen})
        if missing:
            raise NotFound(
                f"{options.registry} has no usable {', '.join(missing)} under tag {options.tag!r}",
                f"publish it: `cudabox publish {' '.join(missing)} --registry {options.registry}`",
            )
    else:
        chosen = [
            choose_remote(
                catalog,
                options.registry,
                options.tag,
                options.registry_ca,
                [probe()],
                options.framework,
                options.flavor,
            )
        ]
    with Engine.connect(read_timeout=600) as engine:
        for spec in chosen:
            pull_judged(engine, spec)
    rows = [{"name": s.name, "pinned": s.tag} for s in chosen]
    if options.json:
        print_json(rows)
    else:
        print(table(["image", "pinned"], [[r["name"], r["pinned"]] for r in rows]))
    return int(ExitCode.OK)
