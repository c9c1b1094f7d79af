"""`cudabox train`: the smoke training workload in its image, in this Python, or on a cluster,
and its summary."""

from __future__ import annotations

import argparse

from cudabox.commands._launch import chosen_target, launch_options, opened_target, project_of
from cudabox.errors import ExitCode, UsageError
from cudabox.options import absolute, current_directory
from cudabox.output import print_json, table
from cudabox.train import TrainOptions, output_folder, summary, train, workload_options


def cmd_train(args: argparse.Namespace) -> int:
    target = chosen_target(args, here=args.here)
    project = project_of(args, target)
    if project is not None and project.framework != args.framework:
        raise UsageError(
            f"the project {project.name} is a {project.framework} project; its images cannot "
            f"run the {args.framework} workload",
            f"run `cudabox train {project.framework}`, or pass --no-project for the catalog's "
            f"{args.framework} images",
        )
    launch = launch_options(args, target, project)
    out = absolute(args.out) if args.out else current_directory() / "runs" / args.framework
    output_folder(out, args.dry_run)
    options = TrainOptions(
        out=out,
        json=args.json,
        require_gpu=args.require_gpu,
        workload=workload_options(tuple(args.rest), args.require_gpu, args.cpu),
    )
    with opened_target(
        target, args, launch, require_gpu=args.require_gpu, project=project
    ) as opened:
        outcome = train(opened, launch, options)
    if outcome.code is None or not outcome.finished:
        return ExitCode.OK if outcome.code is None else outcome.code
    result = summary(out, outcome)
    if options.json:
        print_json(result)
    else:
        print(table(["summary", ""], [[key, _shown(value)] for key, value in result.items()]))
    return outcome.code


def _shown(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return "-" if value is None else str(value)
