"""Which project a command works on: `--project DIR`, the current folder, or none.

A folder is taken as a project without being named only when it says so for cudabox: a
`cudabox.lock`, a `cudabox.toml`, or a `[tool.cudabox]` table. A plain Python package (a
`pyproject.toml` with only `[project]`, cudabox's own checkout included) or a lone
`requirements.txt` is not, so `cudabox run` in any repository keeps choosing catalog images
until the user runs `cudabox init` or `cudabox lock` there (or passes --project).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from cudabox.errors import UsageError
from cudabox.project.declaration import CUDABOX_TOML, PYPROJECT
from cudabox.project.lockfile import LOCK_FILE


def declares_cudabox(folder: Path) -> bool:
    """True when `folder` says it is a cudabox project (see the module's docstring)."""
    if (folder / LOCK_FILE).is_file() or (folder / CUDABOX_TOML).is_file():
        return True
    pyproject = folder / PYPROJECT
    if not pyproject.is_file():
        return False
    try:
        data = tomllib.loads(pyproject.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError):
        return False  # not ours to judge here; load_project reports it when asked
    tool = data.get("tool")
    return isinstance(tool, dict) and "cudabox" in tool


def project_folder(
    named: Path | None, no_project: bool = False, cwd: Path | None = None
) -> Path | None:
    """The project folder `--project` (named) and `--no-project` mean, or None for the catalog images.

    `--project DIR` must exist (exit 2); `--no-project` wins over the current folder; the
    current folder counts only when it declares a cudabox project.
    """
    if no_project:
        if named is not None:
            raise UsageError("--project and --no-project contradict each other", "drop one of them")
        return None
    if named is not None:
        if not named.is_dir():
            raise UsageError(f"--project {named}: no such folder", "pass the project's folder")
        return named.resolve()
    try:
        here = (cwd or Path.cwd()).resolve()
    except FileNotFoundError:
        return None  # a deleted working directory holds no project; commands that need it say so
    return here if declares_cudabox(here) else None
