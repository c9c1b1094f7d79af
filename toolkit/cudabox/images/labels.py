"""What an image says about itself: its labels, and what its framework reports inside it.

Labels carry the catalog facts into the image, so an image that exists only locally (or was
pulled) can be judged without the catalog: `spec_from_labels()` turns them back into an
ImageSpec. `compare()` is the proof of contents: what the framework reports inside the image
against the catalog and the labels.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cudabox import __version__
from cudabox.errors import DataError
from cudabox.images.catalog import FLAVORS, FRAMEWORKS, Extension, ImageSpec
from cudabox.versions import Arch, CudaVersion, DriverVersion

PREFIX = "cudabox."
OCI = "org.opencontainers.image."
# How many RootFS layers the image had when cudabox labelled it: more means layers on top that
# no cudabox label describes (a hand-written `FROM cudabox/...`).
LAYERS = f"{PREFIX}layers"
PROJECT = f"{PREFIX}project"
PROJECT_LOCK = f"{PREFIX}project.lock_sha256"
PROJECT_IMAGE = f"{PREFIX}project.image"
PROJECT_BAKED = f"{PREFIX}project.baked"
PROJECT_CODE = f"{PREFIX}project.code_sha256"  # the baked code's digest ("" when mounted)
PROJECT_RECIPE = f"{PREFIX}project.recipe_sha256"  # Dockerfile + requirements + code
BASE_DIGEST = f"{PREFIX}base_digest"
EXTENSIONS = f"{PREFIX}extensions"


def _archs(archs: tuple[Arch, ...]) -> str:
    return " ".join(str(a) for a in archs)


def labels_for(spec: ImageSpec, lock_sha256: str) -> dict[str, str]:
    """The labels cudabox puts on the image it builds from `spec`."""
    labels = {
        f"{OCI}title": spec.tag.rpartition(":")[0] or spec.name,
        f"{OCI}description": f"{spec.framework} {spec.framework_version} ({spec.flavor}"
        + (f", CUDA {spec.cuda}, cuDNN {spec.cudnn})" if spec.is_cuda else ")")
        + " with cudabox",
        f"{OCI}version": spec.framework_version,
        # The catalog's base; a build's provenance labels name the base it really used.
        f"{OCI}base.name": spec.base_image,
        f"{OCI}vendor": "cudabox",
        f"{PREFIX}image": spec.name,
        f"{PREFIX}framework": spec.framework,
        f"{PREFIX}framework_version": spec.framework_version,
        f"{PREFIX}flavor": spec.flavor,
        f"{PREFIX}python": spec.python,
        f"{PREFIX}cuda": str(spec.cuda) if spec.cuda else "",
        f"{PREFIX}cudnn": spec.cudnn or "",
        f"{PREFIX}sass_archs": _archs(spec.sass_archs),
        f"{PREFIX}ptx_archs": _archs(spec.ptx_archs),
        f"{PREFIX}min_driver": str(spec.min_driver) if spec.min_driver else "",
        f"{PREFIX}lock_sha256": lock_sha256,
        f"{PREFIX}version": __version__,
    }
    if spec.ptx_cuda:
        labels[f"{PREFIX}ptx_cuda"] = str(spec.ptx_cuda)
    if spec.forward_compat:
        labels[f"{PREFIX}forward_compat"] = "true"
    return labels


def provenance_labels(
    base_name: str,
    base_digest: str,
    repo_root: Path | None,
    env: Mapping[str, str] | None = None,
    now: dt.datetime | None = None,
) -> dict[str, str]:
    """The standard OCI labels that say where an image comes from and when it was built.

    Source and revision come from GitHub Actions' variables when set, else from the checkout's
    git; a label that cannot be known is left out rather than guessed.
    """
    env = os.environ if env is None else env
    labels = {
        f"{OCI}base.name": base_name,
        f"{OCI}base.digest": base_digest,
        f"{OCI}created": (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    source = revision = None
    if env.get("GITHUB_REPOSITORY"):
        server = env.get("GITHUB_SERVER_URL", "https://github.com")
        source = f"{server}/{env['GITHUB_REPOSITORY']}"
        revision = env.get("GITHUB_SHA")
    elif repo_root is not None:
        remote = _git(repo_root, "remote", "get-url", "origin")
        source = source_url(remote) if remote else None
        revision = _git(repo_root, "rev-parse", "HEAD")
    if source:
        labels[f"{OCI}source"] = source
    if revision:
        labels[f"{OCI}revision"] = revision
    return labels


_SCP_LIKE = re.compile(r"^(?:[^@/:]+@)?([^/:]+):(?!//)(.+)$")


def source_url(remote: str) -> str | None:
    """A git remote as the https URL of its repository; None for a local path or file:// URL.

    The OCI `source` label is read by people and registries elsewhere: a path of the build
    machine means nothing there, and credentials in a remote URL must never reach an image.
    """
    remote = remote.strip()
    scp = _SCP_LIKE.match(remote)
    # A one-letter "host" is a Windows drive (C:/src/repo), not a server.
    if "://" not in remote and scp and len(scp[1]) > 1 and not remote.startswith(("/", ".")):
        host, path = scp[1], scp[2]  # git@github.com:owner/repo.git
    else:
        scheme, _, rest = remote.partition("://")
        if scheme not in ("https", "http", "ssh", "git", "git+ssh", "ssh+git") or not rest:
            return None  # file://, a local path
        authority, _, path = rest.partition("/")
        host = authority.rpartition("@")[2]  # drop user:token@
        if scheme != "https" and scheme != "http":
            host = host.split(":")[0]  # ssh's port is not the web server's
        elif scheme == "http":
            return f"http://{host}/{path.removesuffix('.git').strip('/')}" if path else None
    path = path.removesuffix(".git").strip("/")
    if not host or not path:
        return None
    return f"https://{host}/{path}"


@dataclass(frozen=True)
class BuiltOn:
    """The base an image was really built on, from its provenance labels (not the catalog)."""

    name: str
    digest: str  # the base's repo digest, or its image id for a local bootstrap; "" if unknown

    def __str__(self) -> str:
        return f"{self.name}@{self.digest}" if self.digest else self.name


def built_on(labels: Mapping[str, str]) -> BuiltOn | None:
    """The base named by the image's labels, or None for an image without a base label."""
    name = labels.get(f"{OCI}base.name", "")
    return BuiltOn(name, labels.get(f"{OCI}base.digest", "")) if name else None


def _git(repo_root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(repo_root), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = done.stdout.strip()
    return text if done.returncode == 0 and text else None


def extensions_label(extensions: Sequence[Extension]) -> str:
    """The `cudabox.extensions` label: the compiled extensions a project image adds, as JSON."""
    return json.dumps(
        [
            {
                "name": e.name,
                "version": e.version,
                "sass": [str(a) for a in e.sass_archs],
                "ptx": [str(a) for a in e.ptx_archs],
                "cuda_runtime": list(e.cuda_runtime),
            }
            for e in extensions
        ],
        separators=(",", ":"),
    )


def parse_extensions(text: str, tag: str = "") -> tuple[Extension, ...]:
    if not text:
        return ()
    try:
        entries = json.loads(text)
        return tuple(
            Extension(
                name=str(e["name"]),
                version=str(e["version"]),
                sass_archs=tuple(Arch.parse(str(a)) for a in e.get("sass", [])),
                ptx_archs=tuple(Arch.parse(str(a)) for a in e.get("ptx", [])),
                cuda_runtime=tuple(int(m) for m in e.get("cuda_runtime", [])),
            )
            for e in entries
        )
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise DataError(f"image {tag or '?'}: the {EXTENSIONS} label is malformed: {exc}") from None


@dataclass(frozen=True)
class ProjectFacts:
    """What a project image says about itself beyond its catalog image's labels."""

    project: str  # the project's name
    image: str  # the catalog image it is built on
    tag: str  # the project image's tag (its title label is the repository part)
    lock_sha256: str  # the project lock (cudabox.lock) it was built from
    base_id: str  # the catalog image's id, which the Dockerfile's FROM names
    base_ref: str  # the catalog image's tag, for people
    base_repo_digest: str  # REPO@sha256:... when the catalog image came from a registry, else ""
    extensions: tuple[Extension, ...]
    baked: bool
    code_sha256: str
    recipe_sha256: str
    layers: int
    description: str


def project_labels(
    facts: ProjectFacts,
    repo_root: Path | None,
    env: Mapping[str, str] | None = None,
    now: dt.datetime | None = None,
) -> dict[str, str]:
    """The labels a project image adds to (or puts over) the ones its catalog image passes on.

    The catalog's cudabox.* labels stay: the framework, its CUDA and architectures and the
    image's own lock are still what the image holds (the build's proof checks the last). What
    would be untrue is put over: the title, the description, the base, the provenance; an
    inherited source or revision that the project cannot give is blanked, not kept.
    """
    digest = facts.base_repo_digest.rpartition("@")[2] or facts.base_id
    provenance = provenance_labels(facts.base_ref, digest, repo_root, env, now)
    return {
        f"{OCI}title": facts.tag.rpartition(":")[0],
        f"{OCI}description": facts.description,
        f"{OCI}source": "",
        f"{OCI}revision": "",
        **provenance,
        # Restated (the same value): the last step names it, as on every image cudabox builds,
        # which is how `cudabox prune` tells cudabox's images from hand-built ones on top.
        f"{PREFIX}image": facts.image,
        PROJECT: facts.project,
        PROJECT_LOCK: facts.lock_sha256,
        PROJECT_IMAGE: facts.image,
        PROJECT_BAKED: "true" if facts.baked else "false",
        PROJECT_CODE: facts.code_sha256,
        PROJECT_RECIPE: facts.recipe_sha256,
        BASE_DIGEST: facts.base_id,
        EXTENSIONS: extensions_label(facts.extensions),
        LAYERS: str(facts.layers),
    }


def spec_from_labels(labels: dict[str, str], tag: str = "") -> ImageSpec:
    """An ImageSpec rebuilt from an image's labels (paths are empty: the image is all there is)."""

    def get(key: str) -> str:
        return labels.get(PREFIX + key, "")

    missing = [k for k in ("image", "framework", "framework_version", "flavor") if not get(k)]
    if missing:
        raise DataError(
            f"image {tag or '?'} has no cudabox.{missing[0]} label: not built by cudabox build"
        )
    if get("framework") not in FRAMEWORKS or get("flavor") not in FLAVORS:
        raise DataError(f"image {tag or '?'}: labels name an unknown framework or flavour")
    try:
        return ImageSpec(
            name=get("image"),
            framework=get("framework"),
            framework_version=get("framework_version"),
            flavor=get("flavor"),
            python=get("python"),
            base_image=labels.get(f"{OCI}base.name", ""),
            dockerfile=Path(),
            requirements=Path(),
            lock=Path(),
            source=f"labels of {tag}" if tag else "image labels",
            cuda=CudaVersion.parse(get("cuda")) if get("cuda") else None,
            cudnn=get("cudnn") or None,
            sass_archs=tuple(Arch.parse(a) for a in get("sass_archs").split()),
            ptx_archs=tuple(Arch.parse(a) for a in get("ptx_archs").split()),
            min_driver=DriverVersion.parse(get("min_driver")) if get("min_driver") else None,
            ptx_cuda=CudaVersion.parse(get("ptx_cuda")) if get("ptx_cuda") else None,
            forward_compat=get("forward_compat") == "true",
            tag=tag or f"cudabox/{get('image')}:latest",
            project=get("project") or None,
            base_name=get("project.image") or None,
            extensions=parse_extensions(get("extensions"), tag),
        )
    except ValueError as exc:
        raise DataError(f"image {tag or '?'}: a cudabox label is malformed: {exc}") from None


def cudnn_text(value: Any) -> str | None:
    """cuDNN as MAJOR.MINOR: torch reports 92600 (9.26.0) or 8902 (8.9.2); TF reports '9'."""
    if value in (None, ""):
        return None
    if isinstance(value, int) or str(value).isdigit():
        number = int(value)
        if number >= 90000:  # cuDNN 9 encodes major*10000 + minor*100 + patch
            return f"{number // 10000}.{(number % 10000) // 100}"
        if number >= 1000:  # cuDNN 7/8: major*1000 + minor*100 + patch
            return f"{number // 1000}.{(number % 1000) // 100}"
        return str(number)
    parts = str(value).split(".")
    return ".".join(parts[:2])


def split_archs(arch_list: list[str]) -> tuple[tuple[Arch, ...], tuple[Arch, ...]]:
    """['sm_80', 'sm_90', 'compute_90'] -> SASS (8.0, 9.0), PTX (9.0)."""
    sass = tuple(Arch.parse(a) for a in arch_list if a.startswith("sm_"))
    ptx = tuple(Arch.parse(a) for a in arch_list if a.startswith("compute_"))
    return sass, ptx


@dataclass(frozen=True)
class Reported:
    """The facts the framework reported inside the image, normalised for comparison."""

    framework_version: str  # without a local part (+cu132)
    local: str  # the local part ('cu132', 'cpu', '')
    cuda: CudaVersion | None
    cudnn: str | None  # MAJOR.MINOR where known, else MAJOR
    sass_archs: tuple[Arch, ...]
    ptx_archs: tuple[Arch, ...]
    uid: int | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Reported:
        version, _, local = str(data.get("framework_version", "")).partition("+")
        cuda = data.get("cuda")
        sass, ptx = split_archs(list(data.get("arch_list") or []))
        cudnn = cudnn_text(data.get("cudnn"))
        if cudnn is not None and "." not in cudnn:
            # TF reports only cuDNN's major; the pip-installed library it loads says the minor.
            for name, installed in (data.get("packages") or {}).items():
                text = cudnn_text(installed) if name.startswith("nvidia-cudnn-cu") else None
                if text and text.split(".")[0] == cudnn:
                    cudnn = text
        uid = data.get("uid")
        return cls(
            framework_version=version,
            local=local,
            cuda=CudaVersion.parse(str(cuda)) if cuda else None,
            cudnn=cudnn,
            sass_archs=sass,
            ptx_archs=ptx,
            uid=int(uid) if uid is not None else None,
        )


def _same_archs(a: tuple[Arch, ...], b: tuple[Arch, ...]) -> bool:
    return sorted(map(str, a)) == sorted(map(str, b))


def compare(spec: ImageSpec, reported: Reported) -> list[str]:
    """Every way the image's own report disagrees with `spec` (catalog or labels); [] when none."""
    problems = []
    if reported.framework_version != spec.framework_version:
        problems.append(
            f"{spec.framework} version: image reports {reported.framework_version}, expected {spec.framework_version}"
        )
    if spec.is_cuda:
        if reported.cuda != spec.cuda:
            problems.append(
                f"CUDA: image reports {reported.cuda or 'none (a CPU build)'}, expected {spec.cuda}"
            )
        if spec.cudnn and reported.cudnn != spec.cudnn:
            problems.append(
                f"cuDNN: image reports {reported.cudnn or 'none'}, expected {spec.cudnn}"
            )
        if not _same_archs(reported.sass_archs, spec.sass_archs):
            problems.append(
                f"SASS archs: image reports [{_archs(reported.sass_archs)}], expected [{_archs(spec.sass_archs)}]"
            )
        if not _same_archs(reported.ptx_archs, spec.ptx_archs):
            problems.append(
                f"PTX archs: image reports [{_archs(reported.ptx_archs)}], expected [{_archs(spec.ptx_archs)}]"
            )
    elif reported.cuda is not None:
        problems.append(
            f"flavour: a cpu image, but its {spec.framework} is a CUDA {reported.cuda} build"
        )
    if reported.uid == 0:
        problems.append("user: the image runs as root")
    return problems


def compare_labels(spec: ImageSpec, labels: dict[str, str], lock_sha256: str) -> list[str]:
    """Labels that disagree with what cudabox would label `spec` with today."""
    problems = []
    expected = labels_for(spec, lock_sha256)
    for key, value in expected.items():
        if key in (f"{PREFIX}version", f"{OCI}description", f"{OCI}title", f"{OCI}base.name"):
            continue  # descriptive (the base may be the offline bootstrap), not facts
        if labels.get(key, "") != value:
            what = "was built from another lock (rebuild it)" if key.endswith("lock_sha256") else ""
            problems.append(
                f"label {key}={labels.get(key, '')!r}, expected {value!r} {what}".rstrip()
            )
    return problems
