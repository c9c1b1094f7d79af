"""`cudabox run`: the user's command in the image that fits, here or as a cluster job."""

from __future__ import annotations

import argparse

from cudabox.commands._launch import chosen_target, launch_options, opened_target
from cudabox.errors import ExitCode, UsageError
from cudabox.targets import Job


def cmd_run(args: argparse.Namespace) -> int:
    command = [*args.command, *args.rest]
    if not command:
        raise UsageError(
            "no command to run", "put it after --, e.g. `cudabox run -- python train.py`"
        )
    target = chosen_target(args)
    options = launch_options(args, target)
    with opened_target(target, args, options) as opened:
        outcome = opened.run(Job(options.framework, tuple(command), options))
    return ExitCode.OK if outcome.code is None else outcome.code
