"""`cudabox report FILE...`: one table (and, with --html, one page) for a fleet's doctor reports."""

from __future__ import annotations

import argparse
from pathlib import Path

from cudabox.choice import catalog_candidates
from cudabox.doctor.fleet import (
    choose,
    fleet_framework,
    fleet_json,
    fleet_view,
    load_reports,
    render,
)
from cudabox.doctor.fleet_html import page
from cudabox.errors import ExitCode, UsageError
from cudabox.images.catalog import load_catalog
from cudabox.output import check_writable, print_json, write_atomic


def cmd_report(args: argparse.Namespace) -> int:
    html: Path | None = args.html
    if html is not None:
        if str(html) == "-":
            raise UsageError(
                "--html needs a file: standard output carries the table",
                "name a file, e.g. --html fleet.html",
            )
        check_writable(html, "report page")
    reports = load_reports(args.files)
    framework = fleet_framework(reports, args.framework)
    choice = choose(reports, framework, catalog_candidates(load_catalog()))
    view = fleet_view(reports)
    if args.json:
        print_json(fleet_json(reports, choice, view))
    else:
        print(render(reports, choice, view, args.all))
    if html is not None:
        write_atomic(html, page(reports, choice, view), "report page")
    if view.status == "fail" or any(c.status == "fail" for r in reports for c in r.checks):
        return int(ExitCode.FAILED)
    if choice.every.selected is None:
        return int(ExitCode.NO_FIT)
    return int(ExitCode.OK)
