"""`cudabox run`: the user's command in the image that fits, here or as a cluster job."""

from __future__ import annotations

import argparse

from cudabox.commands._launch import chosen_target, launch_options, opened_target, project_of
from cudabox.errors import ExitCode, UsageError
from cudabox.targets import Job


def cmd_run(args: argparse.Namespace) -> int:
    command = [*args.command, *args.rest]
    target = chosen_target(args)
    project = project_of(args, target)
    if not command and project is not None:
        command = list(project.settings.command)  # [tool.cudabox] command: the default
    if not command:
        fix = "put it after --, e.g. `cudabox run -- python train.py`"
        if project is not None:
            fix += f", or set `command` in [tool.cudabox] of {project.source}"
        raise UsageError("no command to run", fix)
    options = launch_options(args, target, project)
    with opened_target(target, args, options, project=project) as opened:
        outcome = opened.run(Job(options.framework, tuple(command), options))
    return ExitCode.OK if outcome.code is None else outcome.code
