"""A project's declaration: what a user's training repo needs, read from its own files.

Sources, first found wins: pyproject.toml ([project], [dependency-groups], [tool.cudabox]), then
cudabox.toml (the same settings at top level, plus name/dependencies/dependency-groups, for repos
that are not Python packages), then a requirements.txt-only folder (framework inferred). Strict
like the catalog: an unknown key or a wrong type is a DataError naming the key and the file.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, cast

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from cudabox.errors import DataError, UsageError
from cudabox.images.catalog import FLAVORS, FRAMEWORKS, Catalog, ImageSpec
from cudabox.images.targets import FLAVOR_ALIASES, FRAMEWORK_ALIASES
from cudabox.output import read_text
from cudabox.project.framework_packages import FrameworkPackages, load_framework_packages

Framework = Literal["torch", "tensorflow"]

PYPROJECT = "pyproject.toml"
CUDABOX_TOML = "cudabox.toml"
REQUIREMENTS = "requirements.txt"

# Groups that are tooling, not training: `cudabox init` proposes every other group.
_TOOLING_GROUPS = frozenset({"dev", "test", "tests", "lint", "docs", "doc", "typing", "mypy"})
# Scripts `cudabox init` proposes as the default command, most likely first.
_ENTRY_SCRIPTS = ("train.py", "main.py", "run.py")
# The catalog's own image-name rule (an image name is part of a tag).
_IMAGE_NAME_RE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# cudabox sets these per host and per run (GPU selection, its own switches): a project cannot.
_RESERVED_ENV_PREFIXES = ("NVIDIA_", "CUDABOX_")
_RESERVED_ENV = frozenset({"CUDA_VISIBLE_DEVICES"})
# Debian package names (Debian Policy 5.6.1), optionally pinned as name=version.
_APT_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+(?:=[A-Za-z0-9.+~:-]+)?$")
# PEP 508 names.
_PROJECT_NAME_RE = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$", re.IGNORECASE)
_URL_SCHEMES = ("https://", "http://", "file://")

_DOCS = "docs/project.md describes every key"
_REQUIREMENTS_FIX = "write one PEP 508 requirement per line (such as `transformers>=4.40`)"


@dataclass(frozen=True)
class Settings:
    """The [tool.cudabox] table (or cudabox.toml's top level), checked and with defaults."""

    framework: Framework
    # Catalog image names or FRAMEWORK:FLAVOR targets that may serve the project; () = all.
    images: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()  # dependency groups installed into the image
    extras: tuple[str, ...] = ()  # [project.optional-dependencies] installed into the image
    env: tuple[tuple[str, str], ...] = ()  # set in the image, in order
    bake: bool = False  # copy the code into the image (default: mounted at /workspace)
    command: tuple[str, ...] = ()  # what `run`/`train` start when given no command
    system_packages: tuple[str, ...] = ()  # Debian packages the project's wheels need
    index_urls: tuple[str, ...] = ()  # extra package indexes, used at lock time only
    framework_inferred: bool = field(default=False, compare=False)

    @property
    def env_dict(self) -> dict[str, str]:
        return dict(self.env)


@dataclass(frozen=True)
class Requirements:
    """A project's requirements split by who provides them."""

    project: tuple[str, ...]  # locked by the project, against the image's pins
    image: tuple[str, ...]  # framework packages: the image provides them; pins are checked


@dataclass(frozen=True)
class Project:
    root: Path
    name: str
    source: Path  # the file the declaration came from
    dependencies: tuple[str, ...]  # PEP 508 strings, as written
    optional_dependencies: tuple[tuple[str, tuple[str, ...]], ...]
    dependency_groups: tuple[tuple[str, tuple[str, ...]], ...]  # include-group resolved
    settings: Settings

    @property
    def framework(self) -> Framework:
        return self.settings.framework

    @property
    def image_name(self) -> str:
        """The name as it can appear in an image tag (PEP 503 normalised)."""
        return str(canonicalize_name(self.name))

    def requirements(self) -> tuple[str, ...]:
        """Every requirement that goes into the image: dependencies, chosen extras and groups."""
        extras = dict(self.optional_dependencies)
        groups = dict(self.dependency_groups)
        chosen = [
            *self.dependencies,
            *(r for name in self.settings.extras for r in extras[name]),
            *(r for name in self.settings.groups for r in groups[name]),
        ]
        return tuple(dict.fromkeys(chosen))

    def split(self, packages: FrameworkPackages | None = None) -> Requirements:
        packages = packages or load_framework_packages()
        image: list[str] = []
        project: list[str] = []
        for text in self.requirements():
            from_image = packages.from_image(Requirement(text).name)
            (image if from_image else project).append(text)
        return Requirements(project=tuple(project), image=tuple(image))


# ---- reading ------------------------------------------------------------------------------


def load_project(root: Path, packages: FrameworkPackages | None = None) -> Project:
    """The declaration of the project in `root`; a missing or invalid one is an error with a fix."""
    if not root.is_dir():
        raise UsageError(f"project folder {root} does not exist", "pass the project's folder")
    packages = packages or load_framework_packages()
    pyproject = root / PYPROJECT
    own = root / CUDABOX_TOML
    if pyproject.is_file():
        data = _read_toml(pyproject)
        declares = "project" in data or "cudabox" in _table(data, "tool", pyproject, "[tool]")
        if declares:
            if own.is_file():
                raise DataError(
                    f"{root} declares the project twice: in {pyproject} and in {own}",
                    f"keep one: move the settings into [tool.cudabox] of {PYPROJECT} and delete {CUDABOX_TOML}",
                )
            return _from_pyproject(root, pyproject, data, packages)
    if own.is_file():
        return _from_cudabox_toml(root, own, _read_toml(own), packages)
    requirements = root / REQUIREMENTS
    if requirements.is_file():
        deps, indexes = parse_requirements_file(requirements, root)
        settings = _settings({}, str(requirements), "", deps, (), (), packages)
        if indexes:
            settings = _replace_indexes(settings, indexes)
        return Project(root, _folder_name(root), requirements, deps, (), (), settings)
    raise UsageError(
        f"{root} has no project declaration ({PYPROJECT} with [project] or [tool.cudabox], "
        f"{CUDABOX_TOML} or {REQUIREMENTS})",
        "run `cudabox init` in the project folder, or pass --project DIR",
    )


def _from_pyproject(
    root: Path, path: Path, data: Mapping[str, Any], packages: FrameworkPackages
) -> Project:
    where = str(path)
    meta = _table(data, "project", path, "[project]")
    tool = _table(_table(data, "tool", path, "[tool]"), "cudabox", path, "[tool.cudabox]")
    if meta:
        name = meta.get("name")
        if not isinstance(name, str) or not _PROJECT_NAME_RE.match(name):
            raise DataError(
                f"{where}: [project] name must be a PEP 508 project name, got {name!r}",
                'set name = "my-project" in [project]',
            )
    else:
        name = _folder_name(root)
    dynamic = meta.get("dynamic", [])
    if not _is_str_list(dynamic):
        raise DataError(
            f"{where}: [project] dynamic must be a list of strings, got {dynamic!r}",
            'write it as dynamic = ["version"] (PEP 621)',
        )
    indexes: tuple[str, ...] = ()
    if "dependencies" in dynamic:
        deps, indexes = _dynamic_dependencies(root, path, data)
    elif not meta and (root / REQUIREMENTS).is_file():
        # Only [tool.cudabox] here: a repo that keeps its dependencies in requirements.txt.
        deps, indexes = parse_requirements_file(root / REQUIREMENTS, root)
    else:
        deps = _requirement_list(meta.get("dependencies", []), where, "[project] dependencies")
    optional_raw = meta.get("optional-dependencies", {})
    if not isinstance(optional_raw, dict):
        raise DataError(
            f"{where}: [project.optional-dependencies] must be a table of lists, got {optional_raw!r}",
            'write each extra as NAME = ["requirement", ...] (PEP 621)',
        )
    optional = tuple(
        (str(extra), _requirement_list(reqs, where, f"[project.optional-dependencies] {extra}"))
        for extra, reqs in optional_raw.items()
    )
    groups = resolve_groups(data.get("dependency-groups", {}), where)
    settings = _settings(tool, where, "[tool.cudabox] ", deps, optional, groups, packages)
    if indexes:
        settings = _replace_indexes(settings, indexes)
    return Project(root, name, path, deps, optional, groups, settings)


def _from_cudabox_toml(
    root: Path, path: Path, data: Mapping[str, Any], packages: FrameworkPackages
) -> Project:
    where = str(path)
    own = {k: data[k] for k in ("name", "dependencies", "dependency-groups") if k in data}
    name = own.get("name", _folder_name(root))
    if not isinstance(name, str) or not _PROJECT_NAME_RE.match(name):
        raise DataError(
            f"{where}: 'name' must be a project name (letters, digits, '.', '_', '-'), got {name!r}",
            _DOCS,
        )
    indexes: tuple[str, ...] = ()
    if "dependencies" not in own and (root / REQUIREMENTS).is_file():
        # Settings here, dependencies where the repo already keeps them.
        deps, indexes = parse_requirements_file(root / REQUIREMENTS, root)
    else:
        deps = _requirement_list(own.get("dependencies", []), where, "'dependencies'")
    groups = resolve_groups(own.get("dependency-groups", {}), where)
    rest = {k: v for k, v in data.items() if k not in own}
    settings = _settings(rest, where, "", deps, (), groups, packages)
    if indexes:
        settings = _replace_indexes(settings, indexes)
    return Project(root, name, path, deps, (), groups, settings)


def _dynamic_dependencies(
    root: Path, path: Path, data: Mapping[str, Any]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """setuptools' `dependencies = {file = [...]}`: the requirements files it names."""
    found: Any = data
    for key in ("tool", "setuptools", "dynamic", "dependencies"):
        found = found.get(key) if isinstance(found, dict) else None
    files = found.get("file") if isinstance(found, dict) else None
    if isinstance(files, str):
        files = [files]
    if not _is_str_list(files) or not files:
        raise DataError(
            f"{path}: [project] dependencies are dynamic, and cudabox reads them only from "
            "[tool.setuptools.dynamic] dependencies = {file = [...]}",
            "list the dependencies in [project] dependencies, or in a requirements file named there",
        )
    deps: list[str] = []
    indexes: list[str] = []
    for name in cast(list[str], files):
        more, urls = parse_requirements_file(root / name, root)
        deps += more
        indexes += urls
    return tuple(dict.fromkeys(deps)), tuple(dict.fromkeys(indexes))


# ---- [tool.cudabox] -------------------------------------------------------------------------

KNOWN_KEYS = (
    "framework",
    "images",
    "groups",
    "extras",
    "env",
    "bake",
    "command",
    "system-packages",
    "index-urls",
)


def _settings(
    raw: Mapping[str, Any],
    where: str,
    prefix: str,
    deps: Sequence[str],
    optional: Sequence[tuple[str, tuple[str, ...]]],
    groups: Sequence[tuple[str, tuple[str, ...]]],
    packages: FrameworkPackages,
) -> Settings:
    for key in raw:
        if key not in KNOWN_KEYS:
            raise DataError(
                f"{where}: unknown key {key!r} in {prefix or 'the declaration '}".rstrip(),
                f"known keys: {', '.join(KNOWN_KEYS)} ({_DOCS})",
            )

    def typed(key: str, kind: str, check: Callable[[Any], bool], default: Any) -> Any:
        if key not in raw:
            return default
        value = raw[key]
        if not check(value):
            raise DataError(f"{where}: {prefix}{key} must be {kind}, got {value!r}", _DOCS)
        return value

    chosen_groups = tuple(typed("groups", "a list of strings", _is_str_list, []))
    group_names = {canonicalize_name(n): n for n, _ in groups}
    for group in chosen_groups:
        if canonicalize_name(group) not in group_names:
            raise DataError(
                f"{where}: {prefix}groups names {group!r}, which [dependency-groups] does not define",
                f"define it, or use one of: {', '.join(group_names.values()) or '(none defined)'}",
            )
    chosen_groups = tuple(group_names[canonicalize_name(g)] for g in chosen_groups)
    extras = tuple(typed("extras", "a list of strings", _is_str_list, []))
    extra_names = {canonicalize_name(n): n for n, _ in optional}
    for extra in extras:
        if canonicalize_name(extra) not in extra_names:
            raise DataError(
                f"{where}: {prefix}extras names {extra!r}, which [project.optional-dependencies] "
                "does not define",
                f"use one of: {', '.join(extra_names.values()) or '(none defined)'}",
            )
    extras = tuple(extra_names[canonicalize_name(e)] for e in extras)

    chosen = [*deps, *(r for n, rs in optional if n in extras for r in rs)]
    chosen += [r for n, rs in groups if n in chosen_groups for r in rs]
    framework, inferred = _framework(raw.get("framework"), where, prefix, chosen, packages)

    images = tuple(
        dict.fromkeys(
            _image_entry(image, framework, where, prefix)
            for image in typed("images", "a list of strings", _is_str_list, [])
        )
    )
    env_raw = typed("env", "a table of text values", _is_str_table, {})
    for name in env_raw:
        _check_env_name(name, where, prefix)
    command = tuple(typed("command", "a list of strings", _is_str_list, []))
    if any(not part for part in command):
        raise DataError(f"{where}: {prefix}command has an empty argument: {list(command)!r}", _DOCS)
    apt = tuple(typed("system-packages", "a list of strings", _is_str_list, []))
    for package in apt:
        if not _APT_RE.match(package):
            raise DataError(
                f"{where}: {prefix}system-packages: {package!r} is not a Debian package name",
                "use names as `apt-get install` takes them, such as libgl1 or ffmpeg",
            )
    indexes = tuple(typed("index-urls", "a list of strings", _is_str_list, []))
    for url in indexes:
        _check_url(url, where, f"{prefix}index-urls")
    return Settings(
        framework=framework,
        images=images,
        groups=chosen_groups,
        extras=extras,
        env=tuple(env_raw.items()),
        bake=typed("bake", "true or false", lambda v: isinstance(v, bool), False),
        command=command,
        system_packages=apt,
        index_urls=indexes,
        framework_inferred=inferred,
    )


def _framework(
    value: Any, where: str, prefix: str, requirements: Iterable[str], packages: FrameworkPackages
) -> tuple[Framework, bool]:
    """The declared framework (checked against the requirements), else the one they imply."""
    implied: dict[str, list[str]] = {}
    for text in requirements:
        name = Requirement(text).name
        framework = packages.implies(name)
        if framework:
            implied.setdefault(framework, []).append(name)
    if value is not None:
        if value not in FRAMEWORKS:
            raise DataError(
                f"{where}: {prefix}framework must be one of {', '.join(FRAMEWORKS)}, got {value!r}",
                _DOCS,
            )
        others = {f: names for f, names in implied.items() if f != value}
        if others:
            other, names = sorted(others.items())[0]
            raise DataError(
                f"{where}: the project's framework is {value}, but it depends on "
                f"{', '.join(names)}, which need{'s' if len(names) == 1 else ''} {other}",
                f"remove {', '.join(names)} from the dependencies, or set framework = {other!r}",
            )
        return cast(Framework, value), False
    if len(implied) == 1:
        return cast(Framework, next(iter(implied))), True
    if implied:
        found = "; ".join(f"{f} (from {', '.join(n)})" for f, n in sorted(implied.items()))
        reason = f"its dependencies name two frameworks: {found}"
    else:
        reason = "no dependency names torch or tensorflow (or a library built for one)"
    raise DataError(
        f"{where}: cannot tell the project's framework: {reason}",
        'say which: framework = "torch" or "tensorflow" in [tool.cudabox] (or in cudabox.toml)',
    )


def _image_entry(entry: str, framework: str, where: str, prefix: str) -> str:
    """An `images` entry in canonical form: a catalog image name, or FRAMEWORK:FLAVOR spelled
    as the one target grammar spells it (tf:gpu -> tensorflow:cuda)."""
    if ":" in entry:
        kind, _, flavor = entry.partition(":")
        if FRAMEWORK_ALIASES.get(kind) != framework or flavor not in FLAVOR_ALIASES:
            raise DataError(
                f"{where}: {prefix}images entry {entry!r} is not {framework}:FLAVOR "
                f"(FLAVOR one of {', '.join(FLAVORS)})",
                f"name catalog images (`cudabox list`) or {framework}:cuda / {framework}:cpu",
            )
        return f"{framework}:{FLAVOR_ALIASES[flavor]}"
    if not _IMAGE_NAME_RE.match(entry):
        raise DataError(
            f"{where}: {prefix}images entry {entry!r} is not a catalog image name",
            "name catalog images as `cudabox list` shows them, such as torch-2.15-cu132",
        )
    return entry


def _check_env_name(name: str, where: str, prefix: str) -> None:
    if not _ENV_NAME_RE.match(name):
        raise DataError(
            f"{where}: {prefix}env name {name!r} is not a variable name",
            "use letters, digits and '_', not starting with a digit",
        )
    if name in _RESERVED_ENV or name.startswith(_RESERVED_ENV_PREFIXES):
        raise DataError(
            f"{where}: {prefix}env sets {name}, which cudabox sets for each host and run",
            f"remove {name}; choose GPUs with `cudabox run --gpus`",
        )


def _check_url(url: str, where: str, key: str) -> None:
    if not url.startswith(_URL_SCHEMES) or len(url) <= len("file://"):
        raise DataError(
            f"{where}: {key}: {url!r} is not an index URL",
            "give a full URL such as https://download.pytorch.org/whl/cu128",
        )


def _replace_indexes(settings: Settings, indexes: Sequence[str]) -> Settings:
    merged = tuple(dict.fromkeys([*settings.index_urls, *indexes]))
    return replace(settings, index_urls=merged)


# ---- dependency groups (PEP 735) ------------------------------------------------------------


def resolve_groups(raw: Any, where: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """[dependency-groups] with every {include-group = ...} expanded, in declaration order."""
    if not isinstance(raw, dict):
        raise DataError(
            f"{where}: [dependency-groups] must be a table of lists, got {raw!r}",
            'write each group as NAME = ["requirement", ...] (PEP 735)',
        )
    by_name: dict[str, tuple[str, list[Any]]] = {}
    for name, items in raw.items():
        key = canonicalize_name(name)
        if key in by_name:
            raise DataError(
                f"{where}: dependency groups {by_name[key][0]!r} and {name!r} are the same name",
                "PEP 735 compares group names normalised; rename one",
            )
        if not isinstance(items, list):
            raise DataError(
                f"{where}: dependency group {name!r} must be a list, got {items!r}",
                f'write it as {name} = ["requirement", ...] (PEP 735)',
            )
        by_name[key] = (name, items)

    def expand(key: str, trail: tuple[str, ...]) -> list[str]:
        name, items = by_name[key]
        out: list[str] = []
        for item in items:
            if isinstance(item, str):
                out.append(_requirement(item, where, f"dependency group {name!r}"))
            elif isinstance(item, dict) and set(item) == {"include-group"}:
                target = item["include-group"]
                if not isinstance(target, str) or canonicalize_name(target) not in by_name:
                    raise DataError(
                        f"{where}: dependency group {name!r} includes {target!r}, which is not defined",
                        f"define [dependency-groups] {target}, or remove the include",
                    )
                inner = canonicalize_name(target)
                if inner in trail:
                    cycle = " -> ".join(by_name[k][0] for k in (*trail, inner))
                    raise DataError(
                        f"{where}: dependency groups include each other: {cycle}",
                        "break the cycle",
                    )
                out += expand(inner, (*trail, inner))
            else:
                raise DataError(
                    f"{where}: dependency group {name!r} has {item!r}; an item is a requirement "
                    "string or {include-group = NAME}",
                    "see PEP 735",
                )
        return list(dict.fromkeys(out))

    return tuple((name, tuple(expand(key, (key,)))) for key, (name, _) in by_name.items())


# ---- requirements ---------------------------------------------------------------------------


def _requirement(text: str, where: str, what: str) -> str:
    try:
        Requirement(text)
    except InvalidRequirement as exc:
        raise DataError(
            f"{where}: {what}: {text!r} is not a PEP 508 requirement ({exc})", _REQUIREMENTS_FIX
        ) from None
    return text.strip()


def _requirement_list(raw: Any, where: str, what: str) -> tuple[str, ...]:
    if not _is_str_list(raw):
        raise DataError(
            f"{where}: {what} must be a list of strings, got {raw!r}", _REQUIREMENTS_FIX
        )
    return tuple(dict.fromkeys(_requirement(t, where, what) for t in raw))


_INDEX_OPTIONS = ("--index-url", "--extra-index-url", "-i")
_INCLUDE_OPTIONS = ("-r", "--requirement")


def parse_requirements_file(
    path: Path, root: Path, _seen: tuple[Path, ...] = ()
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(requirements, index URLs) of a pip requirements file; `-r` includes are followed.

    What cudabox cannot honour is refused by line: editables (the code is mounted or baked, not
    installed), constraints files (the image's lock is the constraint), local paths, other options.
    """
    where = str(path)
    if path.resolve() in _seen:
        raise DataError(f"{where} includes itself (through {_seen[-1]})", "remove the -r cycle")
    text = read_text(path, "requirements file", _REQUIREMENTS_FIX, error=DataError)
    requirements: list[str] = []
    indexes: list[str] = []
    for number, line in _logical_lines(text):
        at = f"{where} line {number}"
        words = line.split()
        option, _, value = words[0].partition("=")
        if option in _INCLUDE_OPTIONS or option in _INDEX_OPTIONS:
            value = value or (words[1] if len(words) > 1 else "")
            if not value:
                raise DataError(f"{at}: {option} needs a value", _REQUIREMENTS_FIX)
            if option in _INDEX_OPTIONS:
                _check_url(value, at, option)
                indexes.append(value)
            else:
                more, urls = parse_requirements_file(
                    path.parent / value, root, (*_seen, path.resolve())
                )
                requirements += more
                indexes += urls
            continue
        if line.startswith("-"):
            hint = {
                "-e": "the project's code is mounted at /workspace (or baked); list packages only",
                "--editable": "the project's code is mounted at /workspace (or baked); list packages only",
                "-c": "the image's lock is the constraint; pin versions in the requirements instead",
                "--constraint": "the image's lock is the constraint; pin versions in the requirements instead",
            }.get(option, "remove the option; cudabox locks with uv and its own settings")
            raise DataError(f"{at}: pip option {option} is not supported here", hint)
        # Per-requirement hashes (a pip-compile output) are the lock's business, not the input's.
        kept = " ".join(w for w in words if not w.startswith("--hash"))
        requirements.append(_requirement(kept, at, "requirement"))
    return tuple(dict.fromkeys(requirements)), tuple(dict.fromkeys(indexes))


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, text) of each non-empty line, continuations joined, comments cut."""
    out: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        if not pending:
            start = number
        line = re.sub(r"(^|\s)#.*$", "", raw)
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if line:
            out.append((start, line))
    if pending.strip():
        out.append((start, pending.strip()))
    return out


# ---- helpers --------------------------------------------------------------------------------


def _read_toml(path: Path) -> dict[str, Any]:
    text = read_text(path, "project file", _DOCS, error=DataError)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DataError(f"{path} is not valid TOML: {exc}", "correct the line it names") from None


def _table(data: Mapping[str, Any], key: str, path: Path, what: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise DataError(f"{path}: {what} must be a table, got {value!r}", _DOCS)
    return value


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _is_str_table(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


def _folder_name(root: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", root.resolve().name).strip("._-")
    return name or "project"


# ---- the catalog images that may serve a project ----------------------------------------------


def candidate_images(project: Project, catalog: Catalog) -> tuple[ImageSpec, ...]:
    """The catalog images `images` allows (default: all of the framework), catalog order.

    Unlike a build target, FRAMEWORK:FLAVOR here is every image of that kind, not the newest:
    the project is locked for each, and the resolver picks among them per host."""
    own = catalog.for_framework(project.framework)
    entries = project.settings.images
    if not entries:
        return own
    chosen: list[ImageSpec] = []
    for entry in entries:
        if ":" in entry:
            flavor = entry.partition(":")[2]
            chosen += [i for i in own if i.flavor == flavor]
            continue
        matches = [i for i in catalog.images if i.name == entry]
        if not matches:
            raise DataError(
                f"{project.source}: images names {entry!r}, which the catalog does not have",
                f"use one of: {', '.join(i.name for i in own)}",
            )
        if matches[0].framework != project.framework:
            raise DataError(
                f"{project.source}: images names {entry!r}, a {matches[0].framework} image, "
                f"but the project's framework is {project.framework}",
                f"use one of: {', '.join(i.name for i in own)}",
            )
        chosen.append(matches[0])
    return tuple(i for i in own if i in chosen)


# ---- cudabox init ---------------------------------------------------------------------------


def init_files(root: Path) -> dict[str, str]:
    """What `render_init` looks at: top-level file names, with the text of the declaration files."""
    files: dict[str, str] = {}
    for entry in sorted(root.iterdir()):
        if entry.name in (PYPROJECT, REQUIREMENTS) and entry.is_file():
            files[entry.name] = read_text(entry, "project file", _DOCS, error=DataError)
        elif entry.is_file():
            files[entry.name] = ""
    return files


def render_init(
    files: Mapping[str, str],
    framework: Framework | None = None,
    packages: FrameworkPackages | None = None,
    standalone: bool = False,
) -> str:
    """The text of a starting [tool.cudabox] table for a folder's files (name -> text); with
    `standalone`, the same keys at top level, as the text of a new cudabox.toml."""
    packages = packages or load_framework_packages()
    deps: list[str] = []
    groups: list[str] = []
    if PYPROJECT in files:
        data = _loads(files[PYPROJECT], PYPROJECT)
        project = data.get("project", {})
        deps += [d for d in project.get("dependencies", []) if isinstance(d, str)]
        raw_groups = data.get("dependency-groups", {})
        if isinstance(raw_groups, dict):
            groups = [str(g) for g in raw_groups]
    if not deps and REQUIREMENTS in files:
        for _, line in _logical_lines(files[REQUIREMENTS]):
            if not line.startswith("-"):
                deps.append(line.split()[0] if " --hash" in line else line)
    valid = [d for d in deps if _valid(d)]
    reason = ""
    if framework is None:
        implied = sorted({f for d in valid if (f := packages.implies(Requirement(d).name))})
        if len(implied) != 1:
            found = f"both {' and '.join(implied)}" if implied else "no framework"
            raise DataError(
                f"the dependencies name {found}, so cudabox init cannot choose",
                "pass --framework torch or --framework tensorflow",
            )
        framework = cast(Framework, implied[0])
        names = [Requirement(d).name for d in valid if packages.implies(Requirement(d).name)]
        reason = f"  # from the dependencies: {', '.join(dict.fromkeys(names))}"
    training = [g for g in groups if canonicalize_name(g) not in _TOOLING_GROUPS]
    lines = [
        *([] if standalone else ["[tool.cudabox]"]),
        "# How cudabox builds this project's image on each catalog image: docs/project.md.",
        f'framework = "{framework}"{reason}',
        f'# images = ["{framework}:cuda"]  # default: every catalog image of the framework',
    ]
    if groups:
        lines.append(
            f"groups = [{', '.join(_quote(g) for g in training)}]  # of: {', '.join(groups)}"
        )
    script = next((s for s in _ENTRY_SCRIPTS if s in files), None)
    if script:
        lines.append(f'command = ["python", "{script}"]')
    lines += [
        "bake = false  # true: copy the code into the image (clusters without a shared folder)",
        '# env = { HF_HOME = "/workspace/.cache/huggingface" }',
        '# system-packages = ["libgl1"]  # Debian packages some wheels need',
    ]
    return "\n".join(lines) + "\n"


def insert_init(pyproject_text: str, table: str) -> str:
    """pyproject.toml's text with `table` appended; every other byte kept, the result checked."""
    before = _loads(pyproject_text, PYPROJECT)
    tool = before.get("tool", {})
    if isinstance(tool, dict) and "cudabox" in tool:
        raise UsageError(
            f"{PYPROJECT} already has a [tool.cudabox] table",
            "edit it, or delete it and run init again",
        )
    newline = "\r\n" if "\r\n" in pyproject_text else "\n"
    body = table.replace("\r\n", "\n").replace("\n", newline)
    separator = "" if not pyproject_text or pyproject_text.endswith("\n") else newline
    if pyproject_text.strip():
        separator += newline
    result = pyproject_text + separator + body
    try:
        after = tomllib.loads(result)
    except tomllib.TOMLDecodeError:
        after = {}
    added = after.get("tool", {}).pop("cudabox", None)
    if not after.get("tool") and "tool" not in before:
        after.pop("tool", None)
    if added is None or after != before:
        raise DataError(
            f"appending [tool.cudabox] would change the meaning of {PYPROJECT} "
            "(it defines `tool` in a way a new table cannot extend)",
            "add the table by hand: docs/project.md shows it",
        )
    return result


def _loads(text: str, where: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DataError(f"{where} is not valid TOML: {exc}", "correct the line it names") from None


def _valid(text: str) -> bool:
    try:
        Requirement(text)
    except InvalidRequirement:
        return False
    return True


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
