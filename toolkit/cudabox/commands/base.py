"""`cudabox base`: make each catalog base image available (pull it, else bootstrap it)."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from cudabox.engine import Engine
from cudabox.errors import ExitCode
from cudabox.images.base import BaseOptions, ensure_base
from cudabox.images.catalog import load_catalog
from cudabox.output import human_bytes, print_json, table


def cmd_base(args: argparse.Namespace) -> int:
    options = BaseOptions(bool(args.force), bool(args.no_pull), bool(args.json))
    catalog = load_catalog()
    bases = sorted({spec.base_image for spec in catalog.images})
    with Engine.connect() as engine:
        results = [ensure_base(engine, image, catalog.root, options) for image in bases]
    if options.json:
        print_json([asdict(r) for r in results])
        return ExitCode.OK
    rows = [
        [
            r.image,
            r.action,
            r.python or "-",
            r.packages or "-",
            human_bytes(r.size) if r.size else "-",
            r.seconds or "-",
            r.package_list or "-",
        ]
        for r in results
    ]
    headers = ["base image", "action", "python", "packages", "size", "seconds", "package list"]
    print(table(headers, rows))
    return ExitCode.OK
