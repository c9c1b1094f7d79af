"""Which image? The one answer, for run, train, cluster launches, select, pull, publish, doctor.

The candidates come from a source passed in as a value: the catalog, the catalog plus the
engine's cudabox-labelled images (the engine passed in), or the images a registry holds (the
registry client passed in). A named image (`--image NAME|REF`) is taken as named: a catalog name,
or a reference judged from its labels. Otherwise the pure `resolver.select` picks the newest image
that fits every host; a named image is judged on the hosts the same way. In a project folder
the candidates are the project's images (`project_candidates`). Nothing here opens an adapter or
prints: warnings come back as `notes` and `warnings`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from cudabox.compat import load_compat
from cudabox.errors import CudaboxError, DataError, NoImageFits, Unavailable, Unlabelled
from cudabox.host import HostProfile
from cudabox.images.catalog import Catalog, ImageSpec
from cudabox.images.labels import LAYERS, PROJECT_LOCK, spec_from_labels
from cudabox.project.candidates import project_specs
from cudabox.project.declaration import Project
from cudabox.project.lockfile import LOCK_FILE, ProjectLock
from cudabox.resolver import Flavor, Reason, Selection, image_reasons, judge, select

if TYPE_CHECKING:
    from cudabox.container import ImageInfo
    from cudabox.registry import RegistryClient

AUTO = "auto"  # --image auto: let the resolver choose
LABEL = "cudabox.image"  # every image cudabox builds or publishes carries it


class LabelledImages(Protocol):
    """What the choice asks of an engine: its images, and their labels."""

    def image(self, ref: str) -> ImageInfo | None: ...

    def images_with_label(self, label: str) -> list[ImageInfo]: ...


@dataclass(frozen=True)
class ProjectImages:
    """A project whose images are the candidates: what building one of them needs."""

    project: Project
    lock: ProjectLock
    catalog: Catalog  # the catalog itself: the project images' bases

    def base(self, spec: ImageSpec) -> ImageSpec:
        """The catalog image a project image is built on."""
        return self.catalog.get(spec.base_name or spec.name)


@dataclass(frozen=True)
class Candidates:
    """The images to choose from, where they are, and what was skipped on the way."""

    catalog: Catalog
    where: str = ""  # " in the registry", " on this engine": said in the choice's why
    notes: tuple[str, ...] = ()
    project: ProjectImages | None = None  # set when the candidates are a project's images


@dataclass(frozen=True)
class Request:
    """What the caller asks for: a framework, a flavour, perhaps a named image."""

    framework: str
    image: str = AUTO  # a catalog name, an image reference, or auto
    flavor: Flavor = "auto"
    # Refuse at once (Unavailable) when a host shows no usable GPU: a GPU run never falls back.
    require_gpu: bool = False
    here: bool = False  # the fix names `--here` (train --here)
    skip_fit_check: bool = False  # run a named image that does not fit (said in `warnings`)


@dataclass(frozen=True)
class ImageChoice:
    image: ImageSpec
    why: str
    hosts: tuple[HostProfile, ...]
    selection: Selection | None = None  # None when the image was named
    notes: tuple[str, ...] = ()  # the candidates' notes (their source already showed them)
    warnings: tuple[str, ...] = ()  # the choice's own: every target shows them on stderr

    @property
    def profile(self) -> HostProfile:
        """The (first) host the image was chosen for: the one a local run wires GPUs on."""
        return self.hosts[0]


# ---- candidate sources ---------------------------------------------------------------------------


def catalog_candidates(catalog: Catalog) -> Candidates:
    return Candidates(catalog)


def project_candidates(project: Project, lock: ProjectLock, catalog: Catalog) -> Candidates:
    """The project's images: one per candidate catalog image its (current) lock covers."""
    specs = project_specs(project, lock, catalog)
    return Candidates(
        replace(catalog, images=specs),
        f" of the project {project.name}",
        project=ProjectImages(project, lock, catalog),
    )


def engine_candidates(catalog: Catalog, engine: LabelledImages) -> Candidates:
    """The catalog plus the engine's cudabox-labelled images that it does not already name."""
    known = {image.tag for image in catalog.images}
    extra: list[ImageSpec] = []
    notes: list[str] = []
    for info in engine.images_with_label(LABEL):
        tag = info.tags[0]
        if tag in known:
            continue
        try:
            spec = spec_from_labels(info.labels, tag)
        except CudaboxError as exc:
            notes.append(f"skipping {tag}: {exc.message}")
            continue
        extra.append(replace(spec, name=f"{spec.name}@{tag}", tag=tag))
    return Candidates(replace(catalog, images=(*catalog.images, *extra)), "", tuple(notes))


def registry_candidates(
    catalog: Catalog,
    client: RegistryClient,
    repo: str,
    tag: str,
    framework: str | None = None,
) -> Candidates:
    """The registry's images of `framework` (every framework when None), judged from labels.

    Raises the error that explains an empty result: nothing published (9), no login (8), only
    unlabelled images (12), other platforms only (10).
    """
    # Imported here: it loads the HTTP stack, which `cudabox select` without --registry skips.
    from cudabox.images.remote import RemoteCandidates, Skipped, remote_candidates

    frameworks = [framework] if framework else sorted({i.framework for i in catalog.images})
    found: list[ImageSpec] = []
    skipped: list[Skipped] = []
    notes: list[str] = []
    for name in frameworks:
        remote = remote_candidates(repo, catalog, name, tag=tag, client=client)
        skipped += remote.skipped
        found += [c.spec for c in remote.found]
        for candidate in remote.found:
            lock = catalog.get(candidate.spec.name).lock
            if lock.is_file() and candidate.lock_sha256 != _sha256(lock.read_bytes()):
                notes.append(
                    f"warning: {repo}/{candidate.spec.name}:{tag} was built from another lock"
                )
    if not found:
        RemoteCandidates(repo, tag, (), tuple(skipped)).require_any()
    notes += [f"{s.reference}: skipped: {s.reason}" for s in skipped]
    return Candidates(
        Catalog(images=tuple(found), root=catalog.root), " in the registry", tuple(notes)
    )


def registry_project_candidates(
    project: Project, lock: ProjectLock, catalog: Catalog, client: RegistryClient, repo: str
) -> Candidates:
    """The project's images as `cudabox publish` pushed them (REPO/<project>:<image>), judged
    from their labels and pinned to the digest read. NotFound (9) when none is there."""
    from cudabox.errors import NotFound  # with the HTTP stack: see registry_candidates
    from cudabox.images.remote import image_reference, spec_of
    from cudabox.registry import RepositoryDenied

    found: list[ImageSpec] = []
    notes: list[str] = []
    for spec in project_specs(project, lock, catalog):
        ref = image_reference(repo, project.image_name, spec.base_name or spec.name)
        try:
            remote = client.image(ref)
        except (NotFound, RepositoryDenied):
            notes.append(f"{ref}: not published")
            continue
        got = spec_of(remote, str(remote.pinned))
        if got.project != project.name or got.base_name != spec.base_name:
            notes.append(f"{ref}: skipped: its labels name another project or image")
            continue
        if remote.labels.get(PROJECT_LOCK) != lock.sha256:
            notes.append(f"warning: {ref} was built from another {LOCK_FILE} of {project.name}")
        found.append(got)
    if not found:
        raise NotFound(
            f"{repo}/{project.image_name} holds none of the project {project.name}'s images",
            f"publish them: `cudabox publish --registry {repo}` in the project folder",
        )
    return Candidates(
        replace(catalog, images=tuple(found)),
        f" of the project {project.name} in the registry",
        tuple(notes),
        ProjectImages(project, lock, catalog),
    )


def _sha256(data: bytes) -> str:
    # The lock's digest as `cudabox build` labels it (images.lock.lock_digest, a layer above).
    return hashlib.sha256(data).hexdigest()


# ---- a named image -------------------------------------------------------------------------------


def is_reference(image: str) -> bool:
    """An image reference (`cudabox/torch-2.13-cpu:latest`, `REPO/NAME@sha256:...`), not a name."""
    return "/" in image or "@" in image or ":" in image


def named_image(
    image: str,
    catalog: Catalog,
    engine: LabelledImages | None = None,
    registry: RegistryClient | None = None,
) -> ImageSpec:
    """The image --image names: a reference (judged from its labels), else a catalog name.

    A reference is read from the engine's copy, else from its registry; nothing is pulled here.
    A registry image comes back pinned to the digest that was read (a tag may move before the
    pull). An image without cudabox labels cannot be judged (Unlabelled), wherever it is.
    """
    return _named(image, catalog, engine, registry)[0]


def _named(
    image: str,
    catalog: Catalog,
    engine: LabelledImages | None,
    registry: RegistryClient | None,
) -> tuple[ImageSpec, tuple[str, ...]]:
    """named_image, and the warning that a labelled image has layers past its labels."""
    if not is_reference(image):
        return catalog.get(image), ()  # UsageError (exit 2) names the catalog's images
    info = engine.image(image) if engine is not None else None
    if info is not None:
        try:
            spec = spec_from_labels(dict(info.labels), image)
        except DataError as exc:
            raise Unlabelled(
                exc.message,
                "run images built by cudabox (`cudabox build`), or pulled from a `cudabox "
                "publish`ed registry",
            ) from None
        return spec, hand_derived(image, spec, info)
    if registry is None:
        raise Unavailable(
            f"{image} is not on this engine, and no registry was given to read it from",
            "start the container engine, or pull the image first",
        )
    from cudabox.images.remote import spec_of  # the HTTP stack: see registry_candidates

    remote = registry.image(image)
    return spec_of(remote, str(remote.pinned)), ()


def hand_derived(name: str, spec: ImageSpec, info: ImageInfo) -> tuple[str, ...]:
    """A note when the image has more layers than its `cudabox.layers` label counts: something
    (a hand-written `FROM` it) was added after cudabox labelled it. No label: no note."""
    labelled = info.labels.get(LAYERS, "")
    if not labelled.isdigit() or len(info.diff_ids) <= int(labelled):
        return ()
    extra = len(info.diff_ids) - int(labelled)
    judged = f"{spec.framework} {spec.framework_version} {spec.flavor}"
    judged += f", CUDA {spec.cuda}" if spec.cuda else ""
    judged += f", the project {spec.project}" if spec.project else ""
    return (
        f"{name} has {extra} layer{'s' if extra > 1 else ''} past what cudabox labelled: it is "
        f"judged as {judged} ({spec.name}), which its extra layers may have changed",
    )


# ---- the choice ----------------------------------------------------------------------------------


def require_visible_gpu(framework: str, profile: HostProfile, here: bool = False) -> None:
    """A GPU run on a host without a usable GPU fails at once; it never falls back to the CPU."""
    if profile.visible_gpus:
        return
    short = "tf" if framework == "tensorflow" else framework
    found = profile.message or "NVML lists no visible GPU"
    instead = f"cudabox train {framework} {'--here ' if here else ''}--cpu"
    raise Unavailable(
        f"no usable NVIDIA GPU on this host ({found}); a GPU run never falls back to the CPU",
        f"run `nox -s train-{short}-cpu` (or `{instead}`) instead",
    )


def selection(
    candidates: Candidates, hosts: Sequence[HostProfile], framework: str, flavor: Flavor = "auto"
) -> Selection:
    """Every candidate judged on every host (`cudabox select` shows all of it)."""
    return select(candidates.catalog, hosts, framework, flavor)


def choose(
    request: Request,
    hosts: Sequence[HostProfile],
    candidates: Candidates,
    *,
    engine: LabelledImages | None = None,
    registry: RegistryClient | None = None,
    hosts_text: str = "this host",
) -> ImageChoice:
    """The image to run on every host in `hosts`: the named one, or the newest that fits.

    `hosts_text` says in the why which hosts those are ("the 2 node profile(s) given with --host").
    Raises NoImageFits (exit 3) with the resolver's message and fix when none fits.
    """
    if not hosts:
        raise ValueError("choose() needs at least one host profile")
    if request.image != AUTO:
        spec, warnings = _named(request.image, candidates.catalog, engine, registry)
        return _judged_named(request, spec, hosts, candidates, warnings, hosts_text)
    if request.require_gpu:
        for host in hosts:
            require_visible_gpu(request.framework, host, request.here)
    chosen = selection(candidates, hosts, request.framework, request.flavor)
    if chosen.selected is None:
        raise NoImageFits(
            chosen.message or f"no {request.framework} image fits {hosts_text}", chosen.fix
        )
    image = chosen.selected
    why = (
        f"newest {request.framework} {image.flavor} image{candidates.where} that fits {hosts_text}"
    )
    if len(hosts) == 1:
        if request.flavor == "auto" and not hosts[0].visible_gpus:
            why += f"; no usable GPU ({hosts[0].message or 'none visible'})"
        verdict = next(v for v in chosen.verdicts if v.image == image)
        notes = "; ".join(r.text for r in verdict.reasons)
        why += f" ({notes})" if notes else ""
    return ImageChoice(image, why, tuple(hosts), chosen, candidates.notes)


def _judged_named(
    request: Request,
    spec: ImageSpec,
    hosts: Sequence[HostProfile],
    candidates: Candidates,
    warnings: tuple[str, ...],
    hosts_text: str,
) -> ImageChoice:
    """A named image judged on every host as the resolver judges candidates: NoImageFits (exit
    3) naming the reasons, unless the request skips the check (then a warning says so)."""
    reasons: list[Reason] = image_reasons(spec)
    if not (request.flavor == "cpu" and spec.is_cuda):  # --cpu: its GPU code is not used
        for host in hosts:
            reasons += judge(spec, host, load_compat())
    blockers = [r for r in reasons if r.blocking]
    fleet = len(hosts) > 1
    why = "named with --image"
    if blockers:
        said = "; ".join(r.render(fleet) for r in blockers)
        if not request.skip_fit_check:
            raise NoImageFits(
                f"--image {request.image} does not fit {hosts_text}: {said}",
                f"{blockers[0].fix or 'name another image'}; or drop --image to let cudabox "
                "choose (--skip-fit-check runs it anyway)",
            )
        warnings += (f"--skip-fit-check: running {spec.name} although it does not fit: {said}",)
        why += " (fit check skipped)"
    return ImageChoice(spec, why, tuple(hosts), notes=candidates.notes, warnings=warnings)
