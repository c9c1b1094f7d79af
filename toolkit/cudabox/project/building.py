"""Building a project image: the project's locked distributions on a catalog image, by digest.

The image is built FROM the catalog image's id (never a tag, which can move), with the same
build-stage rules as the catalog images: pip installs the lock's hash-pinned files into the
image's /opt/venv, then stage.py moves only the new distributions into layer folders (one per
distribution of at least LAYER_MIN_BYTES, one for the rest), compiles them and fixes their
times, so two builds of the same lock give the same layers. The final stage is the catalog
image plus those layers, the project's env and system packages, the code when it is baked, and
the labels. Before the image is tagged, proof.py runs in it (network off, the image's user):
the catalog image's distributions unchanged, every new module imports, requirements
consistent. An image that fails is removed; nothing of it is left on the engine.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import stat
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packaging.utils import canonicalize_name

from cudabox.errors import BuildError, DataError, EngineError, Unavailable
from cudabox.images.build import build_and_verify
from cudabox.images.catalog import ImageSpec
from cudabox.images.context import (
    LABELS_MARKER,
    BuildOptions,
    dockerfile_quote,
    dockerfile_with_labels,
    final_stage_layers,
    needed_wheels,
    source_date_epoch,
)
from cudabox.images.labels import (
    BASE_DIGEST,
    PROJECT_BAKED,
    PROJECT_CODE,
    PROJECT_LOCK,
    PROJECT_RECIPE,
    ProjectFacts,
    project_labels,
)
from cudabox.images.lock import parse_lock
from cudabox.images.render import LAYER_MIN_BYTES, MAX_LAYERS
from cudabox.output import progress
from cudabox.project.declaration import Project
from cudabox.project.framework_packages import load_framework_packages
from cudabox.project.lockfile import LOCK_FILE, ImageLock, LockedPackage, ProjectLock

if TYPE_CHECKING:
    from cudabox.container import ImageInfo
    from cudabox.engine import Engine

PROJECT_REPO = "cudabox-project"
CODE_TARGET = "/workspace"
CODE_OWNER = "1000:1000"  # the catalog images' user
REST_FOLDER = "_rest"  # the stage folder of the smaller distributions (no distribution's name)
PROOF_DIR = "/tmp/cudabox-proof"
PROOF_TIMEOUT_S = 600
PROOF_MARKER = "cudabox-proof: "
# Not baked: version control, virtualenvs (a folder with pyvenv.cfg), bytecode, tool caches.
_SKIP_FOLDERS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        "__pycache__",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".tox",
        ".nox",
    }
)
_STAGE = Path(__file__).resolve().parent.parent / "images" / "stage.py"
_PROOF = Path(__file__).with_name("proof.py")


def project_tag(project_name: str, image: str) -> str:
    """The project image's tag: cudabox-project/<name>:<catalog image>."""
    return f"{PROJECT_REPO}/{canonicalize_name(project_name)}:{image}"


@dataclass(frozen=True)
class ProjectBuild:
    tag: str
    image_id: str
    image: str  # the catalog image's name
    base_id: str  # the catalog image's id, which FROM names
    seconds: float
    size: int
    added_bytes: int  # size over the catalog image's
    built: bool  # False: an up-to-date image was there
    baked: bool
    stage_id: str | None = None  # the build stage kept as cache (labelled for `cudabox prune`)


# ---- the code, when baked ----------------------------------------------------------------------


def code_files(root: Path) -> list[Path]:
    """The project's files to bake, relative and sorted: no .git, virtualenvs, bytecode, caches."""
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(
            d
            for d in dirs
            if d not in _SKIP_FOLDERS
            and not (here / d / "pyvenv.cfg").is_file()
            and not (here / d).is_symlink()
        )
        found += [(here / f).relative_to(root) for f in files if not f.endswith((".pyc", ".pyo"))]
        found += [(here / d).relative_to(root) for d in dirs if (here / d).is_symlink()]
    return sorted(found)


def code_digest(root: Path, files: Sequence[Path]) -> str:
    """What the baked layer holds: each path, whether executable or a link, and its bytes."""
    digest = hashlib.sha256()
    for rel in files:
        path = root / rel
        if path.is_symlink():
            entry = f"L {rel.as_posix()} {path.readlink()}"
        else:
            executable = bool(path.stat().st_mode & stat.S_IXUSR)
            content = hashlib.sha256(path.read_bytes()).hexdigest()
            entry = f"F {rel.as_posix()} {'x' if executable else '-'} {content}"
        digest.update(entry.encode() + b"\0")
    return digest.hexdigest()


def copy_code(root: Path, files: Sequence[Path], dest: Path, epoch: int) -> None:
    """The files into `dest`, 0644 or 0755, folders 0755, every time `epoch` (not the checkout's)."""
    dest.mkdir(parents=True)
    for rel in files:
        source, target = root / rel, dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(source.readlink())
            continue
        shutil.copyfile(source, target)
        target.chmod(0o755 if source.stat().st_mode & stat.S_IXUSR else 0o644)
    for folder, dirs, files_here in os.walk(dest, topdown=False):
        for name in (*files_here, *dirs):
            path = Path(folder, name)
            if not path.is_symlink() and path.is_dir():
                path.chmod(0o755)
            os.utime(path, (epoch, epoch), follow_symlinks=False)
    dest.chmod(0o755)
    os.utime(dest, (epoch, epoch))


# ---- the Dockerfile --------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the image's content; its digest says whether a rebuild is due."""

    dockerfile: str  # with the labels marker, before the labels are written in
    requirements: str
    code_sha256: str  # "" when the code is mounted
    layers: int  # the RootFS layers the image will have

    @property
    def sha256(self) -> str:
        digest = hashlib.sha256()
        for part in (
            self.dockerfile,
            self.requirements,
            self.code_sha256,
            _STAGE.read_text(),
            _PROOF.read_text(),
        ):
            digest.update(part.encode() + b"\0")
        return digest.hexdigest()


def layer_plan(
    packages: Sequence[LockedPackage],
) -> tuple[list[LockedPackage], list[LockedPackage]]:
    """(heavy, rest): a layer each for the distributions the catalog's threshold calls heavy."""
    heavy = sorted(
        (p for p in packages if p.installed_bytes >= LAYER_MIN_BYTES), key=lambda p: p.name
    )
    rest = sorted(
        (p for p in packages if p.installed_bytes < LAYER_MIN_BYTES), key=lambda p: p.name
    )
    if len(heavy) + bool(rest) > MAX_LAYERS:
        raise DataError(
            f"{len(heavy)} distributions of the project lock need a layer each, more than {MAX_LAYERS}"
        )
    return heavy, rest


def render_dockerfile(
    project: Project,
    image_lock: ImageLock,
    spec: ImageSpec,
    base: ImageInfo,
    tag: str,
    baked: bool,
    epoch: int,
) -> str:
    """The project image's Dockerfile, with the `# cudabox:labels` line where the labels go."""
    heavy, rest = layer_plan(image_lock.packages)
    lines = [
        f"# {tag}: the project {project.name} on the catalog image {spec.name} ({spec.tag}),",
        "# by id, so that a moved tag cannot change what it is built on. Rendered by `cudabox build`",
        f"# from {LOCK_FILE}; classic builder.",
    ]
    if image_lock.packages:
        layer_args = "".join(f" \\\n        --layer {p.name}" for p in heavy)
        lines += [
            "",
            "# ---- build stage: the project's distributions into the image's venv, then one folder",
            "# per layer under /stage holding only what the install added.",
            f"FROM {base.id} AS build",
            "USER root",
            "COPY build/ /tmp/build/",
            "ARG PIP_INDEX_URL=",
            "ARG PIP_EXTRA_INDEX_URL=",
            f"ARG SOURCE_DATE_EPOCH={epoch}",
            "# --require-hashes --no-deps: exactly the lock. The listing taken before the install",
            "# tells stage.py which distributions are the image's own (they stay where they are).",
            "RUN set -eu; \\",
            "    if [ -s /tmp/build/ca.pem ]; then export PIP_CERT=/tmp/build/ca.pem; fi; \\",
            '    if [ -z "${PIP_INDEX_URL}" ]; then unset PIP_INDEX_URL; fi; \\',
            '    if [ -z "${PIP_EXTRA_INDEX_URL}" ]; then unset PIP_EXTRA_INDEX_URL; fi; \\',
            "    ls -1 /opt/venv/lib/python3*/site-packages/ >/tmp/build/before.txt; \\",
            "    /opt/venv/bin/python -m pip install --no-cache-dir --disable-pip-version-check --no-compile \\",
            "        --require-hashes --no-deps --only-binary=:all: --find-links /tmp/build/wheels \\",
            "        --requirement /tmp/build/requirements.txt; \\",
            "    PYTHONHASHSEED=0 /opt/venv/bin/python /tmp/build/stage.py --venv /opt/venv --stage /stage \\",
            '        --epoch "${SOURCE_DATE_EPOCH}" --only-new /tmp/build/before.txt '
            f"--rest {REST_FOLDER}{layer_args}",
            f'LABEL cudabox.stage="build" cudabox.stage_of={dockerfile_quote(tag)}',
        ]
    lines += [
        "",
        "# ---- the image: the catalog image, then the project's layers.",
        f"FROM {base.id}",
    ]
    if project.settings.system_packages:
        packages = " ".join(shlex.quote(p) for p in project.settings.system_packages)
        lines += [
            "# The Debian packages the project's wheels need (not reproducible: apt's own state).",
            "USER root",
            "RUN set -eu; apt-get update; \\",
            "    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
            f"{packages}; \\",
            "    apt-get clean; rm -rf /var/lib/apt/lists/*",
            f"USER {base.user or CODE_OWNER}",
        ]
    for package in heavy:
        lines += [
            f"# {package.pin} ({package.installed_bytes / 1e6:,.0f} MB)",
            f"COPY --from=build /stage/{package.name}/ /",
        ]
    if rest:
        total = sum(p.installed_bytes for p in rest)
        lines += [
            f"# {len(rest)} smaller distributions ({total / 1e6:,.0f} MB): "
            + ", ".join(p.pin for p in rest)[:300],
            f"COPY --from=build /stage/{REST_FOLDER}/ /",
        ]
    env = project.settings.env
    if env:
        lines.append(
            "ENV " + " \\\n    ".join(f"{key}={dockerfile_quote(value)}" for key, value in env)
        )
    if baked:
        lines += [
            "# The project's code, last: an edit rebuilds only this layer.",
            f"COPY --chown={CODE_OWNER} code/ {CODE_TARGET}/",
        ]
    lines.append(LABELS_MARKER)
    return "\n".join(lines) + "\n"


# ---- building ----------------------------------------------------------------------------------


def ensure_project_image(
    engine: Engine,
    project: Project,
    lock: ProjectLock,
    spec: ImageSpec,
    options: BuildOptions | Callable[[], BuildOptions],
    *,
    build_missing: bool = True,
    bake: bool | None = None,
    nocache: bool = False,
    force: bool = False,
) -> ProjectBuild:
    """The project's image on the catalog image `spec`: the one there when up to date, else built.

    `options` may be a function that makes them: resolving the package sources can read the
    host's pip config (half a second), which a run of an up-to-date image should not pay.

    Up to date: the tag exists with the same project lock, catalog image id and (baked) code,
    and the same recipe (Dockerfile, requirements, env, system packages). A missing catalog
    image is built first (and verified), unless build_missing is False (Unavailable, exit 4).
    """
    made: list[BuildOptions] = []

    def resolved() -> BuildOptions:
        if not made:
            made.append(options if isinstance(options, BuildOptions) else options())
        return made[0]

    if isinstance(options, BuildOptions):
        nocache = nocache or options.nocache
    image_lock = lock.get(spec.name)
    if image_lock is None:
        raise DataError(
            f"{LOCK_FILE} of {project.name} has no entry for {spec.name}",
            "run `cudabox lock` in the project folder (add the image to [tool.cudabox] images "
            "if it is not a candidate)",
        )
    if not spec.lock.is_file():  # the proof compares the image with its lock
        raise DataError(
            f"{spec.name}: lock {spec.lock} does not exist", f"run `cudabox lock {spec.name}`"
        )
    tag = project_tag(project.name, spec.name)
    base = engine.image(spec.tag)
    if base is None:
        if not build_missing:
            raise Unavailable(
                f"the catalog image {spec.tag}, which the project image {tag} is built on, is not on this engine",
                f"run `cudabox build` in the project folder (it builds {spec.name} first), "
                f"or `cudabox build {spec.name}`",
            )
        progress(
            f"project {project.name}: the catalog image {spec.tag} is missing; building it first"
        )
        build_and_verify(engine, spec, resolved().sources)
        base = engine.image(spec.tag)
        if base is None:
            raise BuildError(f"building {spec.tag} left no image of that tag")
    baked = project.settings.bake if bake is None else bake
    files = code_files(project.root) if baked else []
    epoch = source_date_epoch()
    dockerfile = render_dockerfile(project, image_lock, spec, base, tag, baked, epoch)
    recipe = Recipe(
        dockerfile=dockerfile,
        requirements=image_lock.requirements_text(),
        code_sha256=code_digest(project.root, files) if baked else "",
        layers=len(base.diff_ids) + final_stage_layers(dockerfile),
    )
    existing = engine.image(tag)
    if existing is not None and not (force or nocache):
        labels = existing.labels
        current = (
            labels.get(PROJECT_LOCK) == lock.sha256
            and labels.get(BASE_DIGEST) == base.id
            and labels.get(PROJECT_BAKED) == ("true" if baked else "false")
            and labels.get(PROJECT_CODE, "") == recipe.code_sha256
            and labels.get(PROJECT_RECIPE) == recipe.sha256
        )
        if current:
            progress(f"project {project.name} on {spec.name}: {tag} is up to date")
            return ProjectBuild(
                tag, existing.id, spec.name, base.id, 0.0, existing.size,
                existing.size - base.size, built=False, baked=baked,
            )  # fmt: skip
    if baked:
        size = sum((project.root / f).lstat().st_size for f in files)
        progress(
            f"project {project.name}: baking {len(files)} files ({size / 1e6:,.1f} MB) into {CODE_TARGET}"
        )
    facts = ProjectFacts(
        project=project.name,
        image=spec.name,
        tag=tag,
        lock_sha256=lock.sha256,
        base_id=base.id,
        base_ref=spec.tag,
        base_repo_digest=base.repo_digests[0] if base.repo_digests else "",
        extensions=tuple(p.extension() for p in image_lock.extensions),
        baked=baked,
        code_sha256=recipe.code_sha256,
        recipe_sha256=recipe.sha256,
        layers=recipe.layers,
        description=f"the project {project.name} on {spec.name} ({spec.framework} "
        f"{spec.framework_version}, {spec.flavor}) with cudabox",
    )
    labels = project_labels(facts, project.root)
    return _build_and_prove(
        engine, project, image_lock, spec, base, recipe, labels, files, resolved(),
        nocache=nocache or resolved().nocache, baked=baked, epoch=epoch,
    )  # fmt: skip


def _build_and_prove(
    engine: Engine,
    project: Project,
    image_lock: ImageLock,
    spec: ImageSpec,
    base: ImageInfo,
    recipe: Recipe,
    labels: dict[str, str],
    files: Sequence[Path],
    options: BuildOptions,
    *,
    nocache: bool,
    baked: bool,
    epoch: int,
) -> ProjectBuild:
    from cudabox.engine import BuildLog  # the Docker SDK: only when a build runs

    tag = project_tag(project.name, spec.name)
    candidate = f"{tag}-unproven-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    progress(
        f"build project {project.name} on {spec.name} -> {tag} "
        f"({len(image_lock.packages)} distributions, {image_lock.installed_bytes / 1e6:,.1f} MB installed)"
    )

    def show(line: str) -> None:
        if not options.quiet or line.startswith("Step "):
            progress(f"  {line}")

    log = BuildLog()
    with _assembled(project, image_lock, spec, recipe, labels, files, options, epoch) as context:
        # As the catalog build: the image's own index only where no wheelhouse stands in for it
        # (images.context.build_args); the project's indexes always, the lock's files are there.
        own = spec.index_url if spec.index_url and not options.sources.wheelhouses else None
        extra = [*([own] if own else []), *project.settings.index_urls]
        try:
            outcome = engine.build(
                context,
                candidate,
                buildargs={
                    "PIP_INDEX_URL": options.sources.index_url or "",
                    "PIP_EXTRA_INDEX_URL": " ".join(extra),
                    "SOURCE_DATE_EPOCH": str(epoch),
                },
                nocache=nocache,
                progress=show,
                log=log,
            )
        except BaseException:  # a failed step, or Ctrl-C: what the build made so far goes
            _remove_partial(engine, log.layers)
            raise
    stage_id = _stage_id(outcome.layers)
    try:
        _prove(engine, candidate, project, image_lock, spec)
    except BaseException:
        _remove(engine, candidate)
        if stage_id:
            _remove(engine, stage_id)
        raise
    old = engine.image(tag)
    engine.tag(outcome.image_id, tag)
    engine.remove_image(candidate)
    if old is not None and old.id != outcome.image_id:
        with suppress(EngineError):  # still used by a container: `cudabox prune` takes it later
            engine.remove_image(old.id)
    info = engine.image(tag)
    size = info.size if info else 0
    seconds = round(time.monotonic() - started, 1)
    progress(f"build project {project.name} on {spec.name}: {tag} in {seconds} s, proven")
    return ProjectBuild(
        tag, outcome.image_id, spec.name, base.id, seconds, size, size - base.size,
        built=True, baked=baked, stage_id=stage_id,
    )  # fmt: skip


@contextmanager
def _assembled(
    project: Project,
    image_lock: ImageLock,
    spec: ImageSpec,
    recipe: Recipe,
    labels: dict[str, str],
    files: Sequence[Path],
    options: BuildOptions,
    epoch: int,
) -> Iterator[Path]:
    """A temporary build context: the Dockerfile, build/ (requirements, stage.py, CA, wheels), code/."""
    with tempfile.TemporaryDirectory(prefix=f"cudabox-project-{project.image_name}-") as tmp:
        dest = Path(tmp)
        (dest / "Dockerfile").write_text(dockerfile_with_labels(recipe.dockerfile, labels, spec))
        build = dest / "build"
        (build / "wheels").mkdir(parents=True)
        (build / "requirements.txt").write_text(recipe.requirements)
        shutil.copyfile(_STAGE, build / "stage.py")
        sources = options.sources
        if sources.ca_cert is not None:
            shutil.copyfile(sources.ca_cert, build / "ca.pem")
        if sources.wheelhouses and image_lock.packages:
            for wheel in needed_wheels(recipe.requirements, sources.wheelhouses):
                try:
                    (build / "wheels" / wheel.name).hardlink_to(wheel)
                except OSError:
                    shutil.copyfile(wheel, build / "wheels" / wheel.name)
        if files:
            copy_code(project.root, files, dest / "code", epoch)
        yield dest


def _stage_id(layers: Sequence[tuple[str, str]]) -> str | None:
    """The build stage's last image (the one its LABEL made), when the build had a stage."""
    froms = [n for n, (instruction, _) in enumerate(layers) if instruction.startswith("FROM ")]
    return layers[froms[1] - 1][1] if len(froms) > 1 and froms[1] > 0 else None


def _remove_partial(engine: Engine, layers: Sequence[tuple[str, str]]) -> None:
    """What a failed build made: the last image of each stage (untagged parents go with it)."""
    froms = [n for n, (instruction, _) in enumerate(layers) if instruction.startswith("FROM ")]
    ends = [layers[n - 1][1] for n in froms[1:] if n > 0]
    if layers and not layers[-1][0].startswith("FROM "):
        ends.append(layers[-1][1])
    for image_id in reversed(ends):
        _remove(engine, image_id)


def _remove(engine: Engine, ref: str) -> None:
    with suppress(EngineError):
        engine.remove_image(ref, force=True)


# ---- the proof ---------------------------------------------------------------------------------


def proof_input(image_lock: ImageLock, spec: ImageSpec) -> dict[str, Any]:
    """What proof.py checks: the catalog image's pins, the project's, and the modules it adds."""
    base = {
        name: pin.version for name, pin in parse_lock(spec.lock.read_text(), str(spec.lock)).items()
    }
    return {
        "base": base,
        "new": {p.name: p.version for p in image_lock.packages},
        "modules": {m: p.name for p in image_lock.packages for m in p.modules},
    }


def _prove(
    engine: Engine, ref: str, project: Project, image_lock: ImageLock, spec: ImageSpec
) -> None:
    given = proof_input(image_lock, spec)
    progress(
        f"  proof: {len(given['base'])} distributions of {spec.name} unchanged, "
        f"{len(given['modules'])} new modules import, requirements consistent"
    )
    result = engine.run(
        ref,
        ["python", f"{PROOF_DIR}/proof.py", f"{PROOF_DIR}/proof.json"],
        timeout=PROOF_TIMEOUT_S,
        files={"proof.py": _PROOF.read_bytes(), "proof.json": json.dumps(given).encode()},
        files_dir=PROOF_DIR,
        network=False,
    )
    report = next(
        (
            json.loads(line[len(PROOF_MARKER) :])
            for line in reversed(result.output.splitlines())
            if line.startswith(PROOF_MARKER)
        ),
        None,
    )
    if report is None:
        tail = "\n".join(result.output.splitlines()[-20:])
        what = (
            f"timed out after {PROOF_TIMEOUT_S} s"
            if result.timed_out
            else f"exit {result.exit_code}"
        )
        raise BuildError(
            f"the proof of the project image on {spec.name} ended without a report ({what}); "
            f"a module's import may have crashed the interpreter\n--- its output ---\n{tail}",
            "import each of the project's modules in the image by hand to find the one; pin "
            "another version of it, or remove it from the project",
        )
    if not report.get("ok"):
        raise proof_error(report["problems"], image_lock, spec, given["base"])


def proof_error(
    problems: list[dict[str, str]],
    image_lock: ImageLock,
    spec: ImageSpec,
    base: dict[str, str],
) -> BuildError:
    """The proof's first failure as a message with a fix; the others listed after it."""
    first = problems[0]
    others = [p["text"] for p in problems[1:]]
    framework = f"{spec.framework} {base.get(spec.framework, spec.framework_version)}"
    check, name = first["check"], first.get("name", "")
    if check == "import":
        package = image_lock.get(name)
        pin = package.pin if package else name
        message = (
            f"`import {first['module']}` ({pin}) fails in the image on {spec.name}: {first['text']}"
        )
        row = load_framework_packages().match(name)
        if row is not None and row.role == "companion" and row.framework == spec.framework:
            fix = (
                f"{pin} was built for another {spec.framework} than the image's {framework}: pin the "
                f"release made for it, or add the index that has the matching build to index-urls "
                f"([tool.cudabox]), then run `cudabox lock`"
            )
        else:
            fix = (
                f"{pin} needs something the image lacks: a Debian library (add it to "
                f"system-packages in [tool.cudabox]) or another version (pin one in the project "
                f"and run `cudabox lock`)"
            )
    elif check == "base":
        message = f"the project's install changed the image {spec.name}: {first['text']}"
        fix = (
            "a distribution of the project lock replaces one of the image's; run `cudabox lock` "
            "(the lock must never pin what the image has), or choose another image"
        )
    elif check == "new":
        message = f"the project image on {spec.name} lacks what its lock installs: {first['text']}"
        fix = "run `cudabox lock` in the project folder, then build again"
    else:
        message = f"the project image on {spec.name} has inconsistent requirements: {first['text']}"
        fix = (
            "a distribution needs a version the image or the lock does not have: run `cudabox "
            "lock` (it resolves against the image's pins), or pin a release that fits"
        )
    if others:
        message += "; also: " + "; ".join(others[:5]) + (" ..." if len(others) > 5 else "")
    return BuildError(message, fix)
