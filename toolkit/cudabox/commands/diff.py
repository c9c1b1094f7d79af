"""`cudabox diff`: compare two images on the engine (shared layers, distributions, files)."""

from __future__ import annotations

import argparse

from cudabox.engine import Engine
from cudabox.images.diff import diff_images, render
from cudabox.output import print_json, progress


def cmd_diff(args: argparse.Namespace) -> int:
    a_ref, b_ref, as_json = str(args.a), str(args.b), bool(args.json)
    with Engine.connect() as engine:
        result = diff_images(engine, a_ref, b_ref, progress=progress)
    if as_json:
        print_json(result.to_json())
    else:
        print(render(result))
    return result.exit_code
