"""Split an installed venv into one folder per image layer, reproducibly. Runs in the build stage.

Standard library only: it runs with the image's own Python, before cudabox is installed.

    python3 stage.py --venv /opt/venv --stage /stage --epoch 1767225600 \
        --layer torch --layer nvidia-cublas-cu12 --rest deps --user cudabox:1000

Each distribution's files (by its RECORD) go to /stage/<its layer>/<absolute path>; the heavy
distributions named with --layer get a folder each, all others the --rest folder; what no RECORD
claims (the interpreter links, pyvenv.cfg, the launcher) goes to /stage/venv. Every .py is
compiled with hash-based invalidation (a .pyc holds the source's hash, not its time) and every
file, folder and link gets the time --epoch: the same lock gives byte-identical layers.
/stage/system holds the image's user: /etc/passwd and /etc/group with one line added, its home
and /workspace.

A project image (cudabox.project.building) is built on a catalog image whose venv is already
there: with --only-new FILE (the site-packages listing taken before the project's install), only
the distributions whose .dist-info FILE does not name move; the venv, the interpreter and the
user stay the catalog image's, so no venv or system folder is made.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import importlib.util
import os
import py_compile
import re
import shutil
import sys
from pathlib import Path

VENV_LAYER = "venv"
SYSTEM_LAYER = "system"


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def distributions(site: Path) -> dict[str, list[Path]]:
    """Normalised distribution name -> the absolute paths its RECORD lists."""
    found: dict[str, list[Path]] = {}
    for info in sorted(site.glob("*.dist-info")):
        name = info.name[: -len(".dist-info")].rsplit("-", 1)[0]
        for line in (info / "METADATA").read_text(errors="replace").splitlines():
            if line.startswith("Name:"):
                name = line.split(":", 1)[1].strip()
                break
        record = info / "RECORD"
        with record.open(newline="") as handle:
            paths = [Path(os.path.normpath(site / row[0])) for row in csv.reader(handle) if row]
        found[normalise(name)] = paths
    return found


def move(path: Path, venv: Path, stage: Path, layer: str) -> int:
    """Move one file or link from the venv to its layer folder; returns its size."""
    target = stage / layer / path.relative_to("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    size = path.lstat().st_size
    path.replace(target)
    return size


def compile_layer(folder: Path) -> int:
    """Compile every .py of a layer folder as it will sit in the image; returns the count."""
    sources = sorted(p for p in folder.rglob("*.py") if p.is_file() and not p.is_symlink())
    jobs = [(str(p), str(Path("/") / p.relative_to(folder))) for p in sources]
    workers = max(1, min(8, os.cpu_count() or 1))
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        return sum(pool.map(_compile_one, jobs, chunksize=64))


def _compile_one(job: tuple[str, str]) -> int:
    source, shown = job
    cache = importlib.util.cache_from_source(source)
    try:
        py_compile.compile(
            source,
            cfile=cache,
            dfile=shown,  # tracebacks name the file where it is in the image
            doraise=True,
            invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH,
        )
    except (py_compile.PyCompileError, SyntaxError, ValueError):
        return 0  # as pip does: a file that does not compile (py2-only tests, templates) is left
    return 1


def add_user(stage: Path, name: str, uid: int) -> None:
    """The image's user: /etc/passwd and /etc/group lines, its home and /workspace."""
    system = stage / SYSTEM_LAYER
    (system / "etc").mkdir(parents=True, exist_ok=True)
    for table, line in (
        ("passwd", f"{name}:x:{uid}:{uid}:{name}:/home/{name}:/bin/sh"),
        ("group", f"{name}:x:{uid}:"),
    ):
        text = Path("/etc", table).read_text()
        if not text.endswith("\n"):
            text += "\n"
        target = system / "etc" / table
        target.write_text(text + line + "\n")
        target.chmod(0o644)
    for folder in (system / "home" / name, system / "workspace"):
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o755)
        os.chown(folder, uid, uid)


def only_new(owned: dict[str, list[Path]], site: Path, before: Path) -> dict[str, list[Path]]:
    """The distributions installed after `before` (a listing of site-packages) was taken."""
    present = {line.strip() for line in before.read_text().splitlines()}
    new = {}
    for dist, paths in owned.items():
        infos = {p.relative_to(site).parts[0] for p in paths if site in p.parents}
        if not any(i.endswith(".dist-info") and i in present for i in infos):
            new[dist] = paths
    return new


def set_times(stage: Path, epoch: int) -> None:
    for root, dirs, files in os.walk(stage, topdown=False):
        for entry in (*files, *dirs):
            os.utime(Path(root, entry), (epoch, epoch), follow_symlinks=False)
    os.utime(stage, (epoch, epoch))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, required=True)
    parser.add_argument("--stage", type=Path, required=True)
    parser.add_argument("--epoch", type=int, required=True)
    parser.add_argument("--layer", action="append", default=[], help="a distribution of its own")
    parser.add_argument("--rest", required=True, help="the layer of every other distribution")
    parser.add_argument("--user", metavar="NAME:UID", help="the image's user (not with --only-new)")
    parser.add_argument(
        "--only-new", type=Path, metavar="FILE", help="a project: move only what FILE does not list"
    )
    args = parser.parse_args(argv)
    if (args.user is None) == (args.only_new is None):
        parser.error("give exactly one of --user (a catalog image) and --only-new (a project)")
    venv, stage = args.venv.resolve(), args.stage
    (site,) = venv.glob("lib/python*/site-packages")

    if args.only_new is not None:
        return stage_new(venv, site, stage, args)
    # Stale bytecode (pip's, ensurepip's) goes: every layer is compiled afresh below.
    for cache in sorted(venv.rglob("__pycache__"), reverse=True):
        shutil.rmtree(cache)
    owned = distributions(site)
    heavy = [normalise(n) for n in args.layer]
    missing = [n for n in heavy if n not in owned]
    if missing:
        print(
            f"stage: not installed, yet named with --layer: {', '.join(missing)}", file=sys.stderr
        )
        return 2
    sizes: dict[str, int] = {}
    for dist, paths in sorted(owned.items()):
        layer = dist if dist in heavy else args.rest
        for path in paths:
            if path.parent.name == "__pycache__" or not os.path.lexists(path):
                continue  # bytecode was removed above; RECORD may list files never written
            if venv not in path.parents:
                print(f"stage: {dist} installs {path} outside the venv", file=sys.stderr)
                return 2
            sizes[layer] = sizes.get(layer, 0) + move(path, venv, stage, layer)
    # What no RECORD claims: the interpreter links, pyvenv.cfg, activate scripts, the launcher.
    for path in sorted(venv.rglob("*")):
        if path.is_symlink() or path.is_file():
            sizes[VENV_LAYER] = sizes.get(VENV_LAYER, 0) + move(path, venv, stage, VENV_LAYER)
    for folder in ("bin", site.relative_to(venv).as_posix()):
        (stage / VENV_LAYER / venv.relative_to("/") / folder).mkdir(parents=True, exist_ok=True)

    name, _, uid = args.user.partition(":")
    add_user(stage, name, int(uid))
    for layer in sorted({*heavy, args.rest, VENV_LAYER}):
        folder = stage / layer
        compiled = compile_layer(folder) if folder.is_dir() else 0
        print(f"stage: {layer}: {sizes.get(layer, 0) / 1e6:,.1f} MB, {compiled} modules compiled")
    set_times(stage, args.epoch)
    return 0


def stage_new(venv: Path, site: Path, stage: Path, args: argparse.Namespace) -> int:
    """A project's layers: its own distributions only, the catalog image's venv left as it is."""
    owned = only_new(distributions(site), site, args.only_new)
    heavy = [normalise(n) for n in args.layer]
    missing = [n for n in heavy if n not in owned]
    if missing:
        print(
            f"stage: not newly installed, yet named with --layer: {', '.join(missing)}",
            file=sys.stderr,
        )
        return 2
    sizes: dict[str, int] = {}
    for dist, paths in sorted(owned.items()):
        layer = dist if dist in heavy else args.rest
        for path in paths:
            if path.parent.name == "__pycache__" or not os.path.lexists(path):
                continue  # installed with --no-compile: every layer is compiled afresh below
            if venv not in path.parents:
                print(f"stage: {dist} installs {path} outside the venv", file=sys.stderr)
                return 2
            sizes[layer] = sizes.get(layer, 0) + move(path, venv, stage, layer)
    for layer in sorted({*heavy, args.rest}):
        folder = stage / layer
        compiled = compile_layer(folder) if folder.is_dir() else 0
        print(f"stage: {layer}: {sizes.get(layer, 0) / 1e6:,.1f} MB, {compiled} modules compiled")
    stage.mkdir(parents=True, exist_ok=True)
    set_times(stage, args.epoch)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
