"""The `cudabox` command line.

Every command's arguments are declared here, and its handler ("module:function") is imported
only when that command runs, so `cudabox probe` does not pay for Docker, builds or the doctor.
Handlers turn the parsed arguments into typed options at once.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cudabox import __version__
from cudabox.errors import CudaboxError, DiskFull, ExitCode
from cudabox.options import DEFAULT_SHM

FRAMEWORKS = ("torch", "tensorflow")  # the catalog checks its own copy on load
LEVELS = ("quick", "standard", "full")
BUILD_TARGETS_HELP = (
    "catalog image name, FRAMEWORK:FLAVOR (newest of the kind, e.g. torch:cuda) or all"
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse's own usage errors: same exit code as ours, with a pointer to --help.
        self.print_usage(sys.stderr)
        self.exit(ExitCode.USAGE, f"cudabox: error: {message}\n  fix: see `{self.prog} --help`\n")


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    handler: str  # "module:function", imported when the command runs
    arguments: Callable[[argparse.ArgumentParser], None]
    description: str | None = None


# ---- arguments, per command ---------------------------------------------------------------------


def _json_flag(parser: argparse.ArgumentParser, help: str = "print the result as JSON") -> None:
    parser.add_argument("--json", action="store_true", help=help)


def _probe_args(parser: argparse.ArgumentParser) -> None:
    _json_flag(parser, "print the host profile as JSON")


def _selection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--framework",
        choices=FRAMEWORKS,
        default=None,
        help="the images' framework (required outside a project folder; in one, the project's)",
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


def _registry_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry",
        metavar="REPO",
        default=None,
        help="a registry repository prefix such as ghcr.io/org/cudabox (default: $CUDABOX_REGISTRY "
        "where the command needs one)",
    )
    parser.add_argument(
        "--tag", default="latest", help="the tag to read in the registry (default: latest)"
    )
    parser.add_argument(
        "--registry-ca",
        type=Path,
        metavar="FILE",
        default=None,
        help="CA bundle for a registry with a private certificate",
    )


def _select_args(parser: argparse.ArgumentParser) -> None:
    _selection_args(parser)
    _project_arg(parser)
    parser.add_argument(
        "--local",
        action="store_true",
        help="also judge images on the container engine (built or pulled) from their labels",
    )
    _registry_args(parser)
    _json_flag(parser, "print every verdict as JSON")


def _images_args(parser: argparse.ArgumentParser) -> None:
    _json_flag(parser)


def _base_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="rebuild even when the tag exists")
    parser.add_argument(
        "--no-pull", action="store_true", help="bootstrap without trying the registry first"
    )
    _json_flag(parser)


def _source_args(parser: argparse.ArgumentParser) -> None:
    """Where packages come from: the same flags for lock and build."""
    parser.add_argument(
        "--ca-cert", metavar="FILE", help="extra CA bundle (build stage only) ($CUDABOX_CA_CERT)"
    )
    parser.add_argument(
        "--index-url", metavar="URL", help="pip index (a mirror) ($CUDABOX_INDEX_URL)"
    )
    parser.add_argument(
        "--wheelhouse",
        metavar="DIR",
        action="append",
        default=[],
        help="a folder of wheels the locks may need; repeat for several ($CUDABOX_WHEELHOUSE)",
    )
    parser.add_argument(
        "--host-pip",
        action="store_true",
        help="take missing CA/index/wheelhouse settings from this host's pip config "
        "($CUDABOX_HOST_PIP=1)",
    )


def _project_arg(parser: argparse._ActionsContainer, ignore: bool = True) -> None:
    """Which project: the current folder when it declares one, DIR, or (with ignore) none."""
    parser.add_argument(
        "--project",
        type=Path,
        metavar="DIR",
        default=None,
        help="the project folder (default: the current one when it has cudabox.lock, "
        "cudabox.toml or [tool.cudabox]); docs/project.md",
    )
    if ignore:
        parser.add_argument(
            "--no-project",
            action="store_true",
            help="use the catalog images even in a project folder",
        )


def _lock_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "targets",
        nargs="*",
        metavar="TARGET",
        help=BUILD_TARGETS_HELP
        + " (default: in a project folder, the project against each of its images; else all)",
    )
    _project_arg(parser, ignore=False)
    parser.add_argument(
        "--check",
        action="store_true",
        help="project: change nothing; exit 6 when cudabox.lock is not current",
    )
    parser.add_argument(
        "--upgrade", action="store_true", help="project: newest versions, not the locked ones"
    )
    parser.add_argument(
        "--upgrade-package",
        action="append",
        default=[],
        metavar="NAME",
        help="project: the newest version of NAME only (repeatable)",
    )
    _source_args(parser)
    _json_flag(parser)


def _build_common(parser: argparse.ArgumentParser, nargs: str = "+") -> None:
    parser.add_argument("targets", nargs=nargs, metavar="TARGET", help=BUILD_TARGETS_HELP)
    _source_args(parser)
    parser.add_argument("--no-cache", action="store_true", help="build every step afresh")
    _json_flag(parser)


def _build_args(parser: argparse.ArgumentParser) -> None:
    _build_common(parser, nargs="*")
    parser.add_argument("--no-verify", action="store_true", help="skip the proof-of-contents check")
    group = parser.add_argument_group("a project (no TARGET, in a project folder)")
    _project_arg(group)
    group.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="NAME",
        help="build the project on this catalog image only (repeatable; default: the one that "
        "fits this host)",
    )
    group.add_argument(
        "--all-images",
        action="store_true",
        help="build the project on every image of its lock",
    )
    group.add_argument(
        "--bake",
        action="store_true",
        default=None,
        help="copy the code into the image (default: [tool.cudabox] bake)",
    )


def _init_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--project", type=Path, metavar="DIR", default=None, help="the folder (default: here)"
    )
    parser.add_argument("--framework", choices=FRAMEWORKS, default=None)
    parser.add_argument(
        "--print", action="store_true", help="print the settings instead of writing them"
    )


def _verify_args(parser: argparse.ArgumentParser) -> None:
    _build_common(parser)
    parser.add_argument(
        "--record",
        type=Path,
        metavar="FILE",
        help="write what each image reported to FILE (images/verified.json)",
    )
    parser.add_argument(
        "--remove-after",
        action="store_true",
        help="remove each image once verified (CUDA images are ~6 GB); a failing one is kept",
    )
    parser.add_argument(
        "--gpus", action="store_true", help="give the containers the host's GPUs (the GPU units)"
    )


def _prune_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--images",
        action="store_true",
        help="also remove the images cudabox built (never the base, or images built FROM them)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="remove nothing; list what would go and its bytes"
    )
    parser.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only what also carries this label, e.g. cudabox.stage_of=torch-2.13-cpu (repeatable)",
    )
    _json_flag(parser, "print what was removed and the bytes freed as JSON (docs/prune.md)")


def _render_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "targets", nargs="*", metavar="TARGET", help=BUILD_TARGETS_HELP + " (default: all)"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="change nothing; exit 1 naming each committed Dockerfile that is not current",
    )


def _diff_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", metavar="A", help="an image on the engine (name or ID)")
    parser.add_argument("b", metavar="B", help="the image to compare it with")
    _json_flag(parser)


def _publish_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "targets",
        nargs="*",
        metavar="TARGET",
        help=BUILD_TARGETS_HELP + " (none in a project folder: the project's images)",
    )
    _registry_args(parser)
    _project_arg(parser)
    _source_args(parser)
    _json_flag(parser, "print the pushed references and digests as JSON")


def _pull_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "targets",
        nargs="*",
        metavar="TARGET",
        help=BUILD_TARGETS_HELP + " (default: the image that fits this host)",
    )
    parser.add_argument("--framework", choices=FRAMEWORKS, default="torch")
    parser.add_argument("--flavor", choices=("auto", "cuda", "cpu"), default="auto")
    _registry_args(parser)
    _project_arg(parser)
    _json_flag(parser)


def _container_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--image",
        default="auto",
        help="a catalog image name, an image reference, or auto (default); a named image must "
        "fit this host too",
    )
    parser.add_argument(
        "--skip-fit-check",
        action="store_true",
        help="run the --image named even where it does not fit this host (said on stderr)",
    )
    _project_arg(parser)
    parser.add_argument(
        "--gpus",
        default=None,
        help="all, a count, or device ids/UUIDs (default: every visible GPU)",
    )
    parser.add_argument("--cpu", action="store_true", help="use the CPU image and pass no GPU")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would run (the docker command, or the job script) and stop",
    )
    parser.add_argument(
        "--no-build", action="store_true", help="fail instead of building a missing image"
    )
    parser.add_argument(
        "--shm-size", default=DEFAULT_SHM, help=f"size of /dev/shm (default {DEFAULT_SHM})"
    )
    parser.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--ulimit",
        action="append",
        default=[],
        metavar="NAME=SOFT[:HARD]",
        help="container rlimits (-1: unlimited)",
    )
    parser.add_argument(
        "--mount",
        action="append",
        default=[],
        metavar="SRC:DST[:ro]",
        help="another host folder in the container (a shared filesystem on a cluster)",
    )
    parser.add_argument(
        "--workspace",
        type=Path,
        default=None,
        metavar="DIR",
        help="the host folder mounted at /workspace (default: the current one; / only if named)",
    )
    _registry_args(parser)
    group = parser.add_argument_group("several processes or nodes (torchrun)")
    group.add_argument(
        "--nproc-per-node", type=int, default=1, metavar="N", help="processes per node (torchrun)"
    )
    group.add_argument(
        "--nnodes",
        type=int,
        default=1,
        metavar="N",
        help="nodes taking part (one cudabox per node)",
    )
    group.add_argument(
        "--rdzv-endpoint", default=None, metavar="HOST:PORT", help="where the nodes meet (c10d)"
    )
    group.add_argument("--rdzv-id", default=None, metavar="ID", help="the job's rendezvous id")
    group.add_argument(
        "--node-addr",
        default=None,
        metavar="ADDR",
        help="this node's address for the others (default: $SLURMD_NODENAME, else its FQDN)",
    )
    group.add_argument(
        "--node-rank",
        type=int,
        default=None,
        metavar="R",
        help="this node's rank (default: $SLURM_NODEID or $JOB_COMPLETION_INDEX); rank 0 hosts "
        "the rendezvous",
    )
    sched = parser.add_argument_group("on a cluster")
    sched.add_argument(
        "--scheduler",
        choices=("none", "slurm", "k8s"),
        default="none",
        help="submit to Slurm or Kubernetes instead of running here",
    )
    sched.add_argument("--nodes", type=int, default=1, metavar="N", help="nodes for the job")
    sched.add_argument(
        "--name", default=None, help="the job's name (default: cudabox-FRAMEWORK-RANDOM)"
    )
    sched.add_argument(
        "--gpus-per-node", type=int, default=None, metavar="G", help="GPUs per node (cluster jobs)"
    )
    sched.add_argument(
        "--launcher",
        choices=("auto", "pyxis", "apptainer", "cudabox"),
        default="auto",
        help="Slurm: how each node starts the image (default: what the cluster has)",
    )
    sched.add_argument("--partition", default=None, help="Slurm partition")
    sched.add_argument("--time", default=None, metavar="LIMIT", help="Slurm time limit")
    sched.add_argument(
        "--wait-pending",
        action="store_true",
        help="Slurm: keep waiting for a job pending on a reason that never clears by itself "
        "(PartitionNodeLimit, ...) instead of cancelling it (exit 4)",
    )
    sched.add_argument(
        "--k8s-kind",
        choices=("job", "jobset", "trainjob"),
        default="job",
        help="Kubernetes: an Indexed Job (default), a JobSet, or a Kubeflow TrainJob",
    )
    sched.add_argument("--namespace", default=None, help="Kubernetes namespace")
    sched.add_argument(
        "--host",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="host profiles of the cluster's nodes (`cudabox probe --json` on each kind of "
        "node), to choose the image that fits them all",
    )


def _run_args(parser: argparse.ArgumentParser) -> None:
    _container_args(parser)
    parser.add_argument("--framework", choices=FRAMEWORKS, default="torch")
    parser.add_argument(
        "command", nargs="*", help="the command; put it after -- when it has options"
    )


def _train_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("framework", choices=FRAMEWORKS)
    parser.add_argument(
        "--here", action="store_true", help="run in this Python, without a container"
    )
    parser.add_argument(
        "--require-gpu",
        action="store_true",
        help="fail at once unless a usable GPU is visible (never train on the CPU)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="checkpoints and metrics (default: runs/FRAMEWORK)"
    )
    _json_flag(parser, "print the summary as JSON")
    _container_args(parser)


def _doctor_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--framework", choices=FRAMEWORKS, default="torch")
    parser.add_argument(
        "--image",
        default="auto",
        metavar="NAME|auto",
        help="catalog image to check (default: the one `cudabox select` picks)",
    )
    parser.add_argument("--level", choices=LEVELS, default=None, help="default: standard")
    parser.add_argument(
        "--json", type=Path, metavar="FILE", help="write the report as JSON ('-' for stdout)"
    )
    parser.add_argument(
        "--replay",
        type=Path,
        metavar="REPORT",
        help="judge the readings a `doctor --json` report recorded, without touching this host",
    )
    parser.add_argument(
        "--burn-seconds",
        type=float,
        default=60.0,
        metavar="S",
        help="level full: seconds of bf16 burn on every GPU (default 60)",
    )
    parser.add_argument("--strict", action="store_true", help="warnings fail too (exit 1)")
    parser.add_argument(
        "--here",
        action="store_true",
        help="run the host, framework, performance and training layers in this Python, without an engine",
    )


def _report_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="doctor JSON reports")
    parser.add_argument(
        "--framework",
        choices=FRAMEWORKS,
        default=None,
        help="framework for the image choice (default: the one the reports were made for)",
    )
    parser.add_argument("--all", action="store_true", help="list every check, not only problems")
    _json_flag(parser, "print the fleet view as JSON")
    parser.add_argument(
        "--html",
        type=Path,
        metavar="FILE",
        help="also write the fleet view as one self-contained HTML page (tables and charts)",
    )


COMMANDS = (
    Command(
        "probe",
        "read the host's NVIDIA driver and GPUs through NVML",
        "cudabox.commands.probe:cmd_probe",
        _probe_args,
    ),
    Command(
        "select",
        "pick the image that fits this host (or the hosts given)",
        "cudabox.commands.select:cmd_select",
        _select_args,
    ),
    Command("images", "list the catalog", "cudabox.commands.images:cmd_images", _images_args),
    Command(
        "base",
        "make the base image available: pull, else bootstrap from Debian packages",
        "cudabox.commands.base:cmd_base",
        _base_args,
    ),
    Command(
        "init",
        "write a starting [tool.cudabox] (or cudabox.toml) for a training project",
        "cudabox.commands.init:cmd_init",
        _init_args,
    ),
    Command(
        "lock",
        "lock a project against each of its images, or regenerate catalog images' locks",
        "cudabox.commands.lock:cmd_lock",
        _lock_args,
    ),
    Command(
        "render",
        "write each image's Dockerfile from the template and its lock",
        "cudabox.commands.render:cmd_render",
        _render_args,
    ),
    Command(
        "build",
        "build catalog images, or a project's image, and check what is inside them",
        "cudabox.commands.build:cmd_build",
        _build_args,
    ),
    Command(
        "verify",
        "check that images hold what the catalog says (building them if missing)",
        "cudabox.commands.verify:cmd_verify",
        _verify_args,
    ),
    Command(
        "prune",
        "remove what builds and runs leave on the engine (build stages, old images, stopped "
        "containers)",
        "cudabox.commands.prune:cmd_prune",
        _prune_args,
        "Remove cudabox's leftovers and print the bytes freed. Build stages (the cache of a "
        "rebuild), images a rebuild replaced and stopped cudabox containers go; the images "
        "cudabox built go only with --images. Exit 0.",
    ),
    Command(
        "diff",
        "compare two images: shared layers, changed distributions and files",
        "cudabox.commands.diff:cmd_diff",
        _diff_args,
    ),
    Command(
        "publish",
        "push built and verified images to a registry",
        "cudabox.commands.publish:cmd_publish",
        _publish_args,
    ),
    Command(
        "pull",
        "pull images from a registry by digest, after judging them there",
        "cudabox.commands.pull:cmd_pull",
        _pull_args,
    ),
    Command(
        "run",
        "run a command in the image that fits this host, GPUs wired in",
        "cudabox.commands.run:cmd_run",
        _run_args,
        "Run COMMAND in the matching image with the current directory at /workspace.",
    ),
    Command(
        "train",
        "run the smoke training workload (in its image, or --here)",
        "cudabox.commands.train:cmd_train",
        _train_args,
        "Train the smoke workload and print a summary; extra workload options after --.",
    ),
    Command(
        "doctor",
        "check that training will work here: host, engine, container, framework, speed",
        "cudabox.commands.doctor:cmd_doctor",
        _doctor_args,
        "Validate this machine's driver/CUDA setup end to end. Levels: quick = host + engine (seconds); "
        "standard = + container, framework, performance, copies, P2P, NCCL (about two minutes); full = + a "
        "memory pattern test, a bf16 burn under NVML sampling and a short training run. "
        "Exit 0 all pass (warnings too, unless --strict), 1 a check failed, 2 usage error, 4 could not run.",
    ),
    Command(
        "report",
        "combine doctor reports (one per node) into one fleet table",
        "cudabox.commands.report:cmd_report",
        _report_args,
        "Read `cudabox doctor --json FILE` reports, one per node: which node fails which check, and which image "
        "fits every node, and which node is slower than its peers (per metric and GPU model) or configured "
        "unlike them (driver, VBIOS, ECC, power limit, GPU count). Exit 1 when a node has a failing check or "
        "finding, 3 when no image fits every node.",
    ),
)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: every command and its arguments (help, tests)."""
    parser = _Parser(
        prog="cudabox",
        description="Reproducible, correct GPU deep-learning environments: probe the host, "
        "choose the image that fits, build or pull it, run and train in it, validate the setup.",
        epilog="Exit codes: 0 ok; 1 a check or the command failed; 2 usage; 3 no image fits; "
        "4 could not run (no engine, GPU, registry or cluster); 5 build failed; 6 project data "
        "invalid; 7 the engine refused; 8 registry credentials; 9 not in the registry; 10 no "
        "linux/amd64 image; 11 content does not match its digest; 12 image without cudabox "
        "labels; 13 disk full; 130 interrupted. `cudabox run` returns the command's own code.",
    )
    parser.add_argument("--version", action="version", version=f"cudabox {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in COMMANDS:
        child = sub.add_parser(command.name, help=command.help, description=command.description)
        command.arguments(child)
        child.set_defaults(handler=command.handler)
    return parser


def parse(words: Sequence[str]) -> argparse.Namespace:
    """The arguments: one command's own parser when the first word names a command (the common
    case: argparse builds and translates every parser's texts, a third of `cudabox probe`'s
    time); else the whole command line, which prints help, the version or the mistake."""
    command = next((c for c in COMMANDS if words and c.name == words[0]), None)
    if command is None:
        return build_parser().parse_args(words)
    parser = _Parser(
        prog=f"cudabox {command.name}", description=command.description or command.help
    )
    command.arguments(parser)
    parser.set_defaults(handler=command.handler)
    return parser.parse_args(words[1:])


def handler(reference: str) -> Callable[[argparse.Namespace], int]:
    module, _, function = reference.partition(":")
    found: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(module), function)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first "--" belongs to the command being launched, untouched.
    rest: list[str] = []
    if "--" in words:
        cut = words.index("--")
        words, rest = words[:cut], words[cut + 1 :]
    args = parse(words)
    args.rest = rest
    try:
        code = int(handler(args.handler)(args))
        if sys.stdout is not None:  # a closed stdout (`>&-`) leaves Python none
            sys.stdout.flush()
        return code
    except CudaboxError as exc:
        print(exc.render(), file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("cudabox: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except BrokenPipeError:
        return int(ExitCode.OK)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            error = DiskFull(
                f"no space left on the device while writing ({exc.filename or 'output'})",
                "free disk space, or write the output elsewhere",
            )
            print(error.render(), file=sys.stderr)
            return int(error.exit_code)
        raise
