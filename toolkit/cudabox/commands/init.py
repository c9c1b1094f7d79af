"""`cudabox init`: write a starting [tool.cudabox] (or a new cudabox.toml) for a training project.

The text comes from `declaration.render_init` over the folder's files; before anything is
written (or printed) the folder as it would be afterwards is loaded with `load_project`, so a
proposal that would not load is an error and the folder is left as it was.
"""

from __future__ import annotations

import argparse
import tempfile
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

from cudabox.errors import CudaboxError, UsageError
from cudabox.images.catalog import load_catalog
from cudabox.output import write_atomic
from cudabox.project.declaration import (
    CUDABOX_TOML,
    PYPROJECT,
    Framework,
    Project,
    candidate_images,
    init_files,
    insert_init,
    load_project,
    render_init,
)


@dataclass(frozen=True)
class InitPlan:
    """What init writes: the file, its whole new text, and the part init added."""

    path: Path
    text: str  # the file's text after init
    added: str  # the [tool.cudabox] table, or the whole new cudabox.toml
    project: Project  # the declaration as load_project reads it from `text`


def plan_init(root: Path, framework: Framework | None = None) -> InitPlan:
    """The declaration init would write in `root`, already loaded and checked; writes nothing."""
    if not root.is_dir():
        raise UsageError(f"project folder {root} does not exist", "pass the project's folder")
    own = root / CUDABOX_TOML
    if own.exists():
        raise UsageError(
            f"{own} already declares the project",
            "edit it (docs/project.md lists every key), or delete it and run init again",
        )
    files = init_files(root)
    pyproject = root / PYPROJECT
    if PYPROJECT in files:
        # Refused before anything is proposed: an ambiguous framework would hide this.
        if _has_table(files[PYPROJECT]):
            raise UsageError(
                f"{pyproject} already has a [tool.cudabox] table",
                "edit it (docs/project.md lists every key), or delete it and run init again",
            )
        added = render_init(files, framework)
        path, text = pyproject, insert_init(files[PYPROJECT], added)
    else:
        # No pyproject.toml: a repository that is not a Python package gets its own file.
        added = render_init(files, framework, standalone=True)
        path, text = own, added
    return InitPlan(path, text, added, _load_as_if_written(root, path.name, text))


def _has_table(pyproject_text: str) -> bool:
    try:
        tool = tomllib.loads(pyproject_text).get("tool")
    except tomllib.TOMLDecodeError:
        return False  # render_init names the line
    return isinstance(tool, dict) and "cudabox" in tool


def _load_as_if_written(root: Path, name: str, text: str) -> Project:
    """load_project over `root` with `name` holding `text`, in a mirror: the folder is untouched.

    The mirror links every other top-level entry (requirements files, folders that
    [tool.setuptools.dynamic] names) and bears the folder's name, which is the project's name
    when no file gives one; errors name the real folder, not the mirror."""
    with tempfile.TemporaryDirectory(prefix="cudabox-init-") as scratch:
        mirror = Path(scratch) / root.name
        mirror.mkdir()
        for entry in root.iterdir():
            if entry.name != name:
                (mirror / entry.name).symlink_to(entry)
        (mirror / name).write_text(text, encoding="utf-8", newline="")
        try:
            project = load_project(mirror)
        except CudaboxError as exc:
            raise type(exc)(
                _unmirror(exc.message, mirror, root, name),
                exc.fix and _unmirror(exc.fix, mirror, root, name),
            ) from None
    return replace(project, root=root, source=root / project.source.name)


def _unmirror(text: str, mirror: Path, root: Path, name: str) -> str:
    text = text.replace(str(mirror / name), f"{root / name} (as init would write it)")
    return text.replace(str(mirror), str(root))


def cmd_init(args: argparse.Namespace) -> int:
    root = Path(args.project) if args.project is not None else Path.cwd()
    plan = plan_init(root.resolve(), cast("Framework | None", args.framework))
    if args.print:
        # Only what init adds, so `cudabox init --print >> pyproject.toml` does the same.
        print(plan.added, end="")
        return 0
    write_atomic(plan.path, plan.text, "the project declaration")
    project = plan.project
    split = project.split()
    images = candidate_images(project, load_catalog())
    what = "[tool.cudabox] to" if plan.path.name == PYPROJECT else "a new"
    how = "inferred from the dependencies" if args.framework is None else "as given"
    print(f"wrote {what} {plan.path}")
    print(f"  framework:      {project.framework} ({how})")
    print(f"  from the image: {', '.join(split.image) or '(none named)'}")
    print(f"  project lock:   {', '.join(split.project) or '(nothing to add)'}")
    print(f"  images:         {', '.join(i.name for i in images)}")
    where = "" if root.resolve() == Path.cwd().resolve() else f" --project {args.project}"
    print(
        f"next: `cudabox lock{where}` locks the project against each of these images "
        f"(cudabox.lock, to commit); then `cudabox build{where}` and `cudabox run{where}`"
    )
    return 0
