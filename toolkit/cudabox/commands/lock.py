"""`cudabox lock`: lock a project against each of its images, or regenerate catalog images' locks.

Project mode: no TARGET and a project folder (`--project DIR`, or the current folder when it
declares a cudabox project or holds a requirements.txt and is not cudabox's own checkout).
Catalog mode: TARGETs, or no project.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cudabox.commands._shared import package_sources
from cudabox.errors import ExitCode, UsageError
from cudabox.images.catalog import Catalog, load_catalog
from cudabox.images.locking import lock_image, write_lock
from cudabox.images.targets import resolve_targets
from cudabox.output import human_bytes, print_json, progress, table
from cudabox.project.declaration import REQUIREMENTS, load_project
from cudabox.project.discover import project_folder
from cudabox.project.lockfile import LOCK_FILE
from cudabox.project.lockfile import write_lock as write_project_lock
from cudabox.project.locking import ImageOutcome, check_lock, lock_project, previous_lock


def cmd_lock(args: argparse.Namespace) -> int:
    catalog = load_catalog()
    folder = _project_mode(args, catalog)
    if folder is not None:
        return _lock_project(args, catalog, folder)
    if args.check or args.upgrade or args.upgrade_package:
        raise UsageError(
            "--check, --upgrade and --upgrade-package work on a project's cudabox.lock",
            "run it in the project folder, or pass --project DIR",
        )
    return _lock_catalog(args, catalog)


def _project_mode(args: argparse.Namespace, catalog: Catalog) -> Path | None:
    """The project folder to lock, or None for the catalog images."""
    if args.targets:
        if args.project is not None:
            raise UsageError(
                "TARGET names catalog images; --project locks a project",
                "drop the TARGETs, or --project",
            )
        return None
    folder = project_folder(args.project, False)
    if folder is not None:
        return folder
    # A requirements.txt-only folder is a project when locked in it: what else could a bare
    # `cudabox lock` there mean? cudabox's own checkout (the catalog's parent) stays catalog mode.
    here = Path.cwd().resolve()
    if (here / REQUIREMENTS).is_file() and here != catalog.root.resolve().parent:
        return here
    return None


def _lock_project(args: argparse.Namespace, catalog: Catalog, folder: Path) -> int:
    project = load_project(folder)
    path = folder / LOCK_FILE
    if args.check:
        lock = check_lock(project, catalog, path)
        if args.json:
            print_json({"project": project.name, "lock": str(path), "current": True})
        else:
            print(f"{path} is current ({len(lock.images)} images)")
        return ExitCode.OK
    sources = package_sources(args)
    outcome = lock_project(
        project,
        catalog,
        sources,
        previous=previous_lock(path),
        upgrade=args.upgrade,
        upgrade_packages=args.upgrade_package,
        report=progress,
    )
    changed = write_project_lock(path, outcome.lock)
    rows = [_row(o) for o in outcome.images]
    if args.json:
        print_json(
            {
                "project": project.name,
                "lock": str(path),
                "changed": changed,
                "sha256": outcome.lock.sha256,
                "images": rows,
            }
        )
        return ExitCode.OK
    print(
        table(
            ["image", "packages", "added", "extensions (SASS / PTX)", "findings"],
            [
                [
                    r["image"],
                    "-" if r["excluded"] else r["packages"],
                    "-" if r["excluded"] else human_bytes(r["installed_bytes"]),
                    "; ".join(
                        f"{e['name']} {' '.join(e['sass']) or '-'} / {' '.join(e['ptx']) or '-'}"
                        for e in r["extensions"]
                    )
                    or "-",
                    ("LEFT OUT: " if r["excluded"] else "")
                    + ("; ".join(f["kind"] for f in r["findings"] if f["kind"] != "archs") or "-"),
                ]
                for r in rows
            ],
        )
    )
    for o in outcome.images:
        for finding in o.findings:
            if finding.kind != "archs":
                print(f"{o.spec.name}: {finding}")
    print(f"{path}: {'written' if changed else 'unchanged'}")
    return ExitCode.OK


def _row(outcome: ImageOutcome) -> dict[str, Any]:
    lock = outcome.lock
    return {
        "image": outcome.spec.name,
        "excluded": outcome.excluded,
        "packages": len(lock.packages) if lock else 0,
        "installed_bytes": lock.installed_bytes if lock else 0,
        "base_pins_changed": outcome.base_pins_changed,
        "seconds": round(outcome.seconds, 2),
        "extensions": [
            {
                "name": p.name,
                "version": p.version,
                "sass": [str(a) for a in p.sass],
                "ptx": [str(a) for a in p.ptx],
                "cuda_runtime": list(p.cuda_runtime),
            }
            for p in (lock.extensions if lock else ())
        ],
        "findings": [
            {"kind": f.kind, "fatal": f.fatal, "message": f.message} for f in outcome.findings
        ],
    }


def _lock_catalog(args: argparse.Namespace, catalog: Catalog) -> int:
    sources = package_sources(args)
    rows = []
    for spec in resolve_targets(catalog, args.targets, empty_means_all=True):
        progress(f"lock {spec.name}: {spec.requirements.relative_to(catalog.root)}")
        locked = write_lock(spec, lock_image(spec, catalog.root, sources))
        rows.append(
            {
                "name": locked.name,
                "lock": str(locked.lock.relative_to(catalog.root)),
                "packages": locked.packages,
                "changed": locked.changed,
                "sha256": locked.sha256,
            }
        )
    if args.json:
        print_json(rows)
    else:
        print(
            table(
                ["image", "lock", "packages", "changed", "sha256"],
                [
                    [
                        r["name"],
                        r["lock"],
                        r["packages"],
                        "yes" if r["changed"] else "no",
                        str(r["sha256"])[:12],
                    ]
                    for r in rows
                ],
            )
        )
    return ExitCode.OK
