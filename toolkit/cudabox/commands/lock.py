"""`cudabox lock`: regenerate the hash-locked requirements of catalog images."""

from __future__ import annotations

import argparse

from cudabox.errors import ExitCode
from cudabox.images.catalog import load_catalog
from cudabox.images.locking import lock_image, write_lock
from cudabox.images.targets import resolve_targets
from cudabox.options import PackageSources
from cudabox.output import print_json, progress, table


def cmd_lock(args: argparse.Namespace) -> int:
    catalog = load_catalog()
    sources = PackageSources.resolve(
        ca_cert=args.ca_cert,
        index_url=args.index_url,
        wheelhouses=args.wheelhouse,
        host_pip=args.host_pip,
    )
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
