"""`cudabox images`: list the catalog."""

from __future__ import annotations

import argparse

from cudabox.errors import ExitCode
from cudabox.images.catalog import load_catalog
from cudabox.output import print_json, table


def cmd_images(args: argparse.Namespace) -> int:
    catalog = load_catalog()
    if args.json:
        print_json(
            [
                {
                    "name": i.name,
                    "framework": i.framework,
                    "framework_version": i.framework_version,
                    "flavor": i.flavor,
                    "cuda": str(i.cuda) if i.cuda else None,
                    "cudnn": i.cudnn,
                    "sass_archs": [str(a) for a in i.sass_archs],
                    "ptx_archs": [str(a) for a in i.ptx_archs],
                    "min_driver": str(i.min_driver) if i.min_driver else None,
                    "tag": i.tag,
                }
                for i in catalog.images
            ]
        )
        return ExitCode.OK
    rows = [
        [
            i.name,
            i.framework_version,
            i.flavor,
            str(i.cuda or "-"),
            i.cudnn or "-",
            " ".join(str(a) for a in i.sass_archs) or "-",
            " ".join(str(a) for a in i.ptx_archs) or "-",
            str(i.min_driver or "-"),
        ]
        for i in catalog.images
    ]
    print(table(["image", "version", "flavor", "CUDA", "cuDNN", "SASS", "PTX", "min driver"], rows))
    return ExitCode.OK
