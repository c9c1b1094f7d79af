"""The `cudabox` command line. Each feature module adds its subcommands through `register()`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from cudabox import __version__
from cudabox.images.catalog import FRAMEWORKS, Catalog, load_catalog
from cudabox.errors import CudaboxError, ExitCode, NoImageFits
from cudabox.host import HostProfile
from cudabox.output import print_json, table
from cudabox.resolver import Flavor, Selection, select

# Feature modules; each exposes register(subparsers). Kept apart so that each owns its command.
FEATURE_MODULES = (
    "cudabox.images.base",
    "cudabox.images.build",
    "cudabox.images.lock",
    "cudabox.launch",
    "cudabox.doctor",
    "cudabox.report",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse's own usage errors: same exit code as ours, with a pointer to --help.
        self.print_usage(sys.stderr)
        self.exit(ExitCode.USAGE, f"cudabox: error: {message}\n  fix: see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cudabox", description=__doc__)
    parser.add_argument("--version", action="version", version=f"cudabox {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    probe = sub.add_parser("probe", help="read the host's NVIDIA driver and GPUs through NVML")
    probe.add_argument("--json", action="store_true", help="print the host profile as JSON")
    probe.set_defaults(func=cmd_probe)

    sel = sub.add_parser(
        "select", help="pick the catalog image that fits this host (or the hosts given)"
    )
    add_selection_args(sel)
    sel.add_argument(
        "--local",
        action="store_true",
        help="also judge images on the container engine (built or pulled) from their labels",
    )
    sel.add_argument("--json", action="store_true", help="print every verdict as JSON")
    sel.set_defaults(func=cmd_select)

    images = sub.add_parser("images", help="list the catalog")
    images.add_argument("--json", action="store_true")
    images.set_defaults(func=cmd_images)

    for name in FEATURE_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def add_selection_args(parser: argparse.ArgumentParser, framework_required: bool = True) -> None:
    parser.add_argument(
        "--framework", choices=FRAMEWORKS, required=framework_required, default="torch"
    )
    parser.add_argument("--flavor", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument(
        "--host",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="a host profile from `cudabox probe --json` on another machine (repeat for a fleet)",
    )


def hosts_from_args(files: Sequence[Path]) -> list[HostProfile]:
    if files:
        return [HostProfile.load(path) for path in files]
    from cudabox.nvml import probe

    return [probe()]


def selection_from_args(args: argparse.Namespace) -> Selection:
    flavor: Flavor = args.flavor
    catalog = load_catalog()
    if getattr(args, "local", False):
        catalog = with_local_images(catalog)
    return select(catalog, hosts_from_args(args.host), args.framework, flavor)


def with_local_images(catalog: Catalog) -> Catalog:
    """The catalog plus the engine's cudabox-labelled images that it does not already name."""
    from dataclasses import replace

    from cudabox.engine import Engine
    from cudabox.images.labels import spec_from_labels

    known = {image.tag for image in catalog.images}
    extra = []
    with Engine.connect() as engine:
        for info in engine.images_with_label("cudabox.image"):
            tag = info.tags[0]
            if tag in known:
                continue
            try:
                spec = spec_from_labels(info.labels, tag)
            except CudaboxError as exc:
                print(f"cudabox: skipping {tag}: {exc.message}", file=sys.stderr)
                continue
            extra.append(replace(spec, name=f"{spec.name}@{tag}", tag=tag))
    return replace(catalog, images=(*catalog.images, *extra))


def cmd_probe(args: argparse.Namespace) -> int:
    from cudabox.nvml import probe

    profile = probe()
    if args.json:
        print_json(profile.to_json())
    else:
        print(render_profile(profile))
    if profile.status == "error":
        return ExitCode.UNAVAILABLE
    return ExitCode.OK


def render_profile(profile: HostProfile) -> str:
    lines = [
        f"host:    {profile.name}",
        f"driver:  {profile.driver_version or '-'}  (CUDA {profile.cuda_driver_version or '-'})",
    ]
    if profile.status != "ok" or profile.message:
        lines.append(f"status:  {profile.status}: {profile.message}")
        if profile.fix:
            lines.append(f"fix:     {profile.fix}")
    if profile.gpus:
        rows = []
        for g in profile.gpus:
            mig = f"on ({len(g.mig_devices)} instances)" if g.mig_enabled else "off"
            memory = f"{g.memory_total_mib} MiB" if g.memory_total_mib is not None else "-"
            rows.append(
                [
                    g.index,
                    g.name or f"error: {g.error}",
                    g.compute_capability or "-",
                    memory,
                    mig,
                    "yes" if g.visible else "no",
                ]
            )
        lines += ["", table(["GPU", "name", "CC", "memory", "MIG", "visible"], rows)]
    return "\n".join(lines)


def cmd_select(args: argparse.Namespace) -> int:
    selection = selection_from_args(args)
    if args.json:
        print_json(selection.to_json())
    else:
        print(render_selection(selection))
    if selection.selected is None:
        if not args.json:
            raise NoImageFits(selection.message or "no image fits", selection.fix)
        return ExitCode.NO_FIT
    return ExitCode.OK


def render_selection(selection: Selection) -> str:
    fleet = len(selection.hosts) > 1
    rows = []
    for verdict in selection.verdicts:
        mark = "fits" if verdict.fits else "no"
        why = "; ".join(r.render(fleet) for r in verdict.reasons) or "-"
        rows.append(
            [verdict.image.name, verdict.image.flavor, str(verdict.image.cuda or "-"), mark, why]
        )
    text = table(["image", "flavor", "CUDA", "fits", "reasons"], rows)
    if selection.selected:
        text += f"\n\nselected: {selection.selected.name} ({selection.selected.tag})"
    return text


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first "--" belongs to the command being launched, untouched.
    rest: list[str] = []
    if "--" in words:
        cut = words.index("--")
        words, rest = words[:cut], words[cut + 1 :]
    args = parser.parse_args(words)
    args.rest = rest
    try:
        return int(args.func(args))
    except CudaboxError as exc:
        print(exc.render(), file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("cudabox: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except BrokenPipeError:
        return int(ExitCode.OK)
