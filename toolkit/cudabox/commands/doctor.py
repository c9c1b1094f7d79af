"""`cudabox doctor`: check this host's driver/CUDA/engine/framework stack, or judge a recorded
report again (`--replay`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cudabox.doctor import render_summary
from cudabox.doctor.model import DoctorReport, Level
from cudabox.doctor.run import Doctor, Options, replay
from cudabox.errors import Unavailable, UsageError
from cudabox.output import check_writable, write_atomic


def cmd_doctor(args: argparse.Namespace) -> int:

    if args.here and args.image != "auto":
        raise UsageError(
            "--here checks this Python environment, not an image", "drop --image, or drop --here"
        )
    if args.replay is not None:
        return _replay(args)
    level: Level = args.level or "standard"
    if args.json is not None:
        # Before the run: a `full` run takes minutes, and its results must not be lost to a typo.
        check_writable(args.json, "doctor report")
    if not 1 <= args.burn_seconds <= 3600:
        raise UsageError(
            f"--burn-seconds must be between 1 and 3600, got {args.burn_seconds:g}",
            "give the burn's length in seconds (the default 60 is what docs/doctor.md assumes)",
        )
    doctor = Doctor(
        Options(
            framework=args.framework,
            image=args.image,
            level=level,
            here=args.here,
            burn_seconds=args.burn_seconds,
        )
    )
    report = doctor.run()
    _show(report, args.json)
    if doctor.unavailable is not None:
        raise Unavailable(
            f"the {level} level needs a container engine: {doctor.unavailable}",
            "start one (see engine.reachable's fix), or run `cudabox doctor --here` to check this "
            "Python environment without containers",
        )
    return report.exit_code(args.strict)


def _replay(args: argparse.Namespace) -> int:
    """Judge a recorded report's readings again: no NVML, no engine, no framework run."""

    given = [
        flag
        for flag, used in (
            ("--here", args.here),
            ("--image", args.image != "auto"),
            ("--level", args.level is not None),
            ("--framework", args.framework != "torch"),
            ("--burn-seconds", args.burn_seconds != 60.0),
        )
        if used
    ]
    if given:
        raise UsageError(
            f"--replay judges what the report recorded; {given[0]} would change what is read",
            f"drop {given[0]}: the report's own level, framework and image are used",
        )
    if args.json is not None:
        check_writable(args.json, "doctor report")
    report = replay(DoctorReport.load(args.replay))
    _show(report, args.json)
    return report.exit_code(args.strict)


def _show(report: DoctorReport, json_path: Path | None) -> None:
    if json_path is not None:
        write_atomic(json_path, report.dumps(), "doctor report")
    to_stdout = json_path is not None and str(json_path) == "-"
    print(render_summary(report), file=sys.stderr if to_stdout else None)
