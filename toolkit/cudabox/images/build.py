"""`cudabox build` and `cudabox verify`: build catalog images and prove what is inside them.

A build assembles a small context in a temporary folder (the Dockerfile, the image's lock, the
wheelhouse files that lock needs, an optional CA bundle, cudabox's own source), builds it with
the classic builder, and then runs the framework inside the image to check that it reports what
the catalog and the labels say (unless --no-verify).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cudabox
from cudabox.images.catalog import Catalog, ImageSpec, load_catalog
from cudabox.errors import BuildError, DataError, ExitCode, Unavailable, UsageError
from cudabox.images.labels import Reported, compare, compare_labels, cudnn_text, labels_for
from cudabox.images.lock import INDEX_ENV, WHEELHOUSE_ENV, lock_digest, normalise, parse_lock
from cudabox.output import print_json, progress, table

if TYPE_CHECKING:
    from cudabox.engine import Engine

CA_ENV = "CUDABOX_CA_CERT"
HOST_PIP_ENV = "CUDABOX_HOST_PIP"
FRAMEWORK_ALIASES = {
    "torch": "torch",
    "pytorch": "torch",
    "tensorflow": "tensorflow",
    "tf": "tensorflow",
}
FLAVOR_ALIASES = {"cpu": "cpu", "cuda": "cuda", "gpu": "cuda"}
UNIT_TIMEOUT_S = 300
# A build step can stay silent for minutes (installing or copying a 6 GB venv).
BUILD_READ_TIMEOUT_S = 3600
RECORD_SCHEMA = 1
LABELS_MARKER = "# cudabox:labels"


@dataclass(frozen=True)
class BuildOptions:
    ca_cert: Path | None = None
    index_url: str | None = None
    wheelhouse: Path | None = None
    nocache: bool = False
    quiet: bool = False  # build output off (step lines only)

    @classmethod
    def from_env(cls) -> BuildOptions:
        """No flags: the CUDABOX_* variables (and CUDABOX_HOST_PIP) alone decide."""
        return cls.from_args(argparse.Namespace(ca_cert=None, index_url=None, wheelhouse=None))

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BuildOptions:
        """Flags first, then CUDABOX_* variables, then (with --host-pip) the host's pip config."""
        host = (
            host_pip_settings()
            if getattr(args, "host_pip", False) or os.environ.get(HOST_PIP_ENV) == "1"
            else {}
        )
        ca = args.ca_cert or os.environ.get(CA_ENV) or host.get("cert")
        wheelhouse = args.wheelhouse or os.environ.get(WHEELHOUSE_ENV) or host.get("find-links")
        options = cls(
            ca_cert=Path(ca) if ca else None,
            index_url=args.index_url or os.environ.get(INDEX_ENV) or host.get("index-url"),
            wheelhouse=Path(wheelhouse) if wheelhouse else None,
            nocache=bool(getattr(args, "no_cache", False)),
        )
        if options.ca_cert is not None and not options.ca_cert.is_file():
            raise UsageError(
                f"CA bundle {options.ca_cert} does not exist",
                f"pass an existing PEM file (or unset {CA_ENV})",
            )
        if options.wheelhouse is not None and not options.wheelhouse.is_dir():
            raise UsageError(
                f"wheelhouse {options.wheelhouse} is not a folder",
                f"pass a folder of wheels (or unset {WHEELHOUSE_ENV})",
            )
        return options


@dataclass(frozen=True)
class BuildResult:
    name: str
    tag: str
    image_id: str
    seconds: float
    size: int
    cached_steps: int
    build_stage_id: str | None  # the build stage's last layer (the venv before the copy)
    layers: tuple[tuple[str, str], ...] = ()  # (instruction, image id) per step


@dataclass
class VerifyResult:
    name: str
    tag: str
    ok: bool
    problems: list[str] = field(default_factory=list)
    reported: dict[str, Any] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    image_bytes: int = 0
    base_bytes: int = 0
    packages_bytes: int = 0

    @property
    def overhead_pct(self) -> float | None:
        content = self.base_bytes + self.packages_bytes
        if not content or not self.image_bytes:
            return None
        return round(100 * (self.image_bytes - content) / content, 1)


# ---- targets -----------------------------------------------------------------------------


def host_pip_settings() -> dict[str, str]:
    """The host pip's cert, index-url and (local) find-links: what builds behind a proxy need.

    Corporate proxies and mirrors are configured once, for pip; builds reuse that instead of
    asking for the same facts again. Non-local find-links (URLs) cannot enter a build context.
    """
    try:
        listing = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    settings: dict[str, str] = {}
    for line in listing.splitlines():
        key, sep, value = line.partition("=")
        name = key.rsplit(".", 1)[-1]
        if sep and name in ("cert", "index-url", "find-links"):
            settings.setdefault(name, value.strip().strip("'\""))
    if "find-links" in settings and not Path(settings["find-links"]).is_dir():
        del settings["find-links"]
    return settings


def parse_targets(catalog: Catalog, targets: list[str]) -> list[ImageSpec]:
    """Catalog names, FRAMEWORK:FLAVOR (the newest of that kind: torch:cuda, tf:cpu) or 'all'."""
    if not targets:
        raise UsageError(
            "name at least one image", "e.g. torch-2.13-cpu, torch:cuda, tf:cpu or all"
        )
    chosen: list[ImageSpec] = []
    for target in targets:
        if target == "all":
            specs = list(catalog.images)
        elif ":" in target:
            framework, _, flavor = target.partition(":")
            if framework not in FRAMEWORK_ALIASES or flavor not in FLAVOR_ALIASES:
                raise UsageError(
                    f"target {target!r} is not FRAMEWORK:FLAVOR",
                    "use torch:cuda, torch:cpu, tensorflow:cuda or tensorflow:cpu (tf and gpu work too)",
                )
            specs = [catalog.newest(FRAMEWORK_ALIASES[framework], FLAVOR_ALIASES[flavor])]
        else:
            specs = [catalog.get(target)]
        chosen += [s for s in specs if s not in chosen]
    return chosen


# ---- the build context -------------------------------------------------------------------


def wheel_pin(filename: str) -> tuple[str, str] | None:
    """'torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl' -> ('torch', '2.13.0+cpu')."""
    if not filename.endswith(".whl"):
        return None
    parts = filename[: -len(".whl")].split("-")
    if len(parts) < 5:
        return None
    return normalise(parts[0]), parts[1]


def needed_wheels(lock_text: str, wheelhouse: Path) -> list[Path]:
    """The wheelhouse files that match a pin of the lock (by name and version)."""
    pins = {(p.name, p.version) for p in parse_lock(lock_text).values()}
    return sorted(path for path in wheelhouse.glob("*.whl") if wheel_pin(path.name) in pins)


def assemble_context(
    spec: ImageSpec, dest: Path, options: BuildOptions, cudabox_src: Path | None = None
) -> list[str]:
    """Fill `dest` with what the Dockerfile needs; returns the files placed, for the log."""
    if not spec.dockerfile.is_file():
        raise DataError(f"{spec.name}: Dockerfile {spec.dockerfile} does not exist")
    if not spec.lock.is_file():
        raise DataError(
            f"{spec.name}: lock {spec.lock} does not exist", f"run `cudabox lock {spec.name}`"
        )
    lock_text = spec.lock.read_text()
    pins = parse_lock(lock_text)
    placed = ["Dockerfile", "build/requirements.txt", "catalog.toml", "cudabox/"]
    (dest / "Dockerfile").write_text(
        dockerfile_with_labels(
            spec.dockerfile.read_text(), labels_for(spec, lock_digest(spec.lock)), spec
        )
    )
    wheels = dest / "build" / "wheels"
    wheels.mkdir(parents=True)
    shutil.copyfile(spec.lock, dest / "build" / "requirements.txt")
    shutil.copyfile(spec.dockerfile.parent.parent / "catalog.toml", dest / "catalog.toml")
    if options.ca_cert is not None:
        shutil.copyfile(options.ca_cert, dest / "build" / "ca.pem")
        placed.append("build/ca.pem")
    if options.wheelhouse is not None:
        for wheel in needed_wheels(lock_text, options.wheelhouse):
            _link_or_copy(wheel, wheels / wheel.name)
            placed.append(f"build/wheels/{wheel.name}")
        local = [p for p in pins.values() if "+" in p.version]
        found = {wheel_pin(Path(p).name) for p in placed if p.endswith(".whl")}
        for pin in local:
            if (pin.name, pin.version) not in found:
                raise UsageError(
                    f"{spec.name}: the lock needs {pin.name}=={pin.version}, which is not in the wheelhouse {options.wheelhouse}",
                    f"add its wheel there, or build without --wheelhouse where {spec.index_url or 'its index'} answers",
                )
    source = cudabox_src or Path(cudabox.__file__).resolve().parent
    shutil.copytree(
        source,
        dest / "cudabox",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".mypy_cache"),
    )
    return placed


def _quote(text: str) -> str:
    """A Dockerfile double-quoted string (no variable expansion)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def dockerfile_with_labels(text: str, labels: dict[str, str], spec: ImageSpec) -> str:
    """Put the labels in the Dockerfile's `# cudabox:labels` line, as one LABEL instruction.

    One instruction instead of the engine's per-label steps: the classic builder commits a layer
    for each, which would cost seconds on every rebuild.
    """
    if LABELS_MARKER not in text.splitlines():
        raise DataError(f"{spec.dockerfile} has no {LABELS_MARKER!r} line where the labels go")
    instruction = "LABEL " + " \\\n      ".join(
        f"{_quote(k)}={_quote(v)}" for k, v in sorted(labels.items())
    )
    return (
        "\n".join(instruction if line == LABELS_MARKER else line for line in text.splitlines())
        + "\n"
    )


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        target.hardlink_to(source)
    except OSError:
        shutil.copyfile(source, target)


def build_args(spec: ImageSpec, options: BuildOptions) -> dict[str, str]:
    extra = spec.index_url if spec.index_url and options.wheelhouse is None else ""
    return {
        "BASE_IMAGE": spec.base_image,
        "PIP_INDEX_URL": options.index_url or "",
        "PIP_EXTRA_INDEX_URL": extra,
    } | ({"NVIDIA_REQUIRE_CUDA": spec.require_cuda} if spec.require_cuda else {})


@contextmanager
def build_context(
    spec: ImageSpec, options: BuildOptions, cudabox_src: Path | None = None
) -> Iterator[Path]:
    """The assembled context in a temporary folder, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=f"cudabox-build-{spec.name}-") as tmp:
        assemble_context(spec, Path(tmp), options, cudabox_src)
        yield Path(tmp)


# ---- build and verify --------------------------------------------------------------------


def ensure_base(engine: Engine, spec: ImageSpec) -> None:
    """The base image must be on the engine: pull it, or say how to make it."""
    if engine.has_image(spec.base_image):
        return
    progress(f"build {spec.name}: base image {spec.base_image} is not here; pulling it")
    try:
        engine.pull(spec.base_image, progress=lambda line: progress(f"  {line}"))
    except (BuildError, Unavailable) as exc:
        raise Unavailable(
            f"the base image {spec.base_image} is not on this engine and cannot be pulled ({exc.message})",
            f"pull it (`docker pull {spec.base_image}`), or where no registry answers, make it with `cudabox base`",
        ) from None


def build_image(
    engine: Engine,
    spec: ImageSpec,
    options: BuildOptions,
    tag: str | None = None,
    cudabox_src: Path | None = None,
) -> BuildResult:
    tag = tag or spec.tag
    ensure_base(engine, spec)
    started = time.monotonic()
    progress(f"build {spec.name} -> {tag}")

    def show(line: str) -> None:
        if not options.quiet or line.startswith("Step "):
            progress(f"  {line}")

    with build_context(spec, options, cudabox_src) as context:
        outcome = engine.build(
            context,
            tag,
            buildargs=build_args(spec, options),
            target="cuda" if spec.is_cuda else "runtime",
            nocache=options.nocache,
            progress=show,
        )
    seconds = round(time.monotonic() - started, 1)
    info = engine.image(tag)
    froms = [
        n for n, (instruction, _) in enumerate(outcome.layers) if instruction.startswith("FROM ")
    ]
    build_stage_id = outcome.layers[froms[1] - 1][1] if len(froms) > 1 and froms[1] > 0 else None
    progress(f"build {spec.name}: {tag} in {seconds} s ({outcome.cached_steps} steps from cache)")
    return BuildResult(
        spec.name,
        tag,
        outcome.image_id,
        seconds,
        info.size if info else 0,
        outcome.cached_steps,
        build_stage_id,
        outcome.layers,
    )


def units_dir(catalog_root: Path, spec: ImageSpec) -> Path:
    return catalog_root / "units" / spec.framework


def run_script(
    engine: Engine, tag: str, script: Path, gpus: bool, labels: dict[str, str] | None = None
) -> tuple[bool, str, float]:
    """Run one in-image script (copied in, not mounted) under a hard timeout."""
    result = engine.run(
        tag,
        ["python", f"/tmp/cudabox-units/{script.name}"],
        timeout=UNIT_TIMEOUT_S,
        files={script.name: script.read_bytes()},
        files_dir="/tmp/cudabox-units",
        labels=labels,
        gpus=gpus,
    )
    if result.timed_out:
        return False, f"timed out after {UNIT_TIMEOUT_S} s\n{result.output}", result.seconds
    return result.ok, result.output, result.seconds


def verify_image(
    engine: Engine,
    spec: ImageSpec,
    catalog_root: Path,
    tag: str | None = None,
    gpus: bool = False,
    run_units: bool = True,
) -> VerifyResult:
    """The proof of contents: the framework's own report against the catalog and the labels."""
    tag = tag or spec.tag
    info = engine.image(tag)
    if info is None:
        raise BuildError(f"image {tag} does not exist", f"build it: cudabox build {spec.name}")
    result = VerifyResult(spec.name, tag, ok=False, image_bytes=info.size)
    base = engine.image(spec.base_image)
    result.base_bytes = base.size if base else 0
    folder = units_dir(catalog_root, spec)
    progress(f"verify {spec.name}: {folder.name}/facts.py in {tag}")
    ok, output, _ = run_script(engine, tag, folder / "facts.py", gpus)
    if not ok:
        raise BuildError(
            f"{spec.name}: the facts check failed inside {tag}:\n{output.strip()[-3000:]}"
        )
    try:
        data = json.loads(output.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        raise BuildError(
            f"{spec.name}: the facts check printed no JSON:\n{output.strip()[-3000:]}"
        ) from None
    result.packages_bytes = int(data.pop("packages_bytes", 0))
    result.reported = data
    reported = Reported.from_json(data)
    problems = [f"catalog: {p}" for p in compare(spec, reported)]
    problems += [f"labels: {p}" for p in compare_labels(spec, info.labels, lock_digest(spec.lock))]
    if info.user in ("", "root", "0", "0:0"):
        problems.append(f"image config: USER is {info.user or 'unset'} (root)")
    if spec.is_cuda and info.env.get("NVIDIA_REQUIRE_CUDA") != spec.require_cuda:
        problems.append(
            f"image config: NVIDIA_REQUIRE_CUDA={info.env.get('NVIDIA_REQUIRE_CUDA')!r}, expected {spec.require_cuda!r}"
        )
    if run_units:
        for script in sorted(folder.glob("unit_*.py")):
            ok, output, seconds = run_script(engine, tag, script, gpus)
            last = output.strip().splitlines()[-1] if output.strip() else ""
            result.units[script.name] = f"{'ok' if ok else 'FAILED'} ({seconds:.1f} s): {last}"
            progress(f"verify {spec.name}: {script.name}: {result.units[script.name]}")
            if not ok:
                problems.append(f"unit {script.name} failed:\n{output.strip()[-2000:]}")
    result.problems = problems
    result.ok = not problems
    return result


def require_verified(result: VerifyResult) -> None:
    if not result.ok:
        raise BuildError(
            f"{result.name}: the image {result.tag} does not hold what the catalog says:\n  "
            + "\n  ".join(result.problems),
            "what the image reports beats the table: correct images/catalog.toml (or the lock), then rebuild",
        )


# ---- the verified record -----------------------------------------------------------------


def record_entry(
    spec: ImageSpec,
    result: VerifyResult,
    build: BuildResult | None,
    previous: dict[str, Any] | None,
) -> dict[str, Any]:
    lock_sha = lock_digest(spec.lock)
    build_seconds = build.seconds if build else None
    if build_seconds is None and previous and previous.get("lock_sha256") == lock_sha:
        build_seconds = previous.get("build_seconds")  # verified an image built earlier
    reported = dict(result.reported)
    return {
        "tag": result.tag,
        "verified_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "lock_sha256": lock_sha,
        "base_image": spec.base_image,
        "reported": {k: reported[k] for k in sorted(reported)},
        "units": result.units,
        "image_bytes": result.image_bytes,
        "base_bytes": result.base_bytes,
        "packages_bytes": result.packages_bytes,
        "overhead_pct": result.overhead_pct,
        "build_seconds": build_seconds,
        "build_cached_steps": build.cached_steps
        if build
        else (previous or {}).get("build_cached_steps"),
    }


def write_record(path: Path, entries: dict[str, dict[str, Any]]) -> None:
    data: dict[str, Any] = {"schema": RECORD_SCHEMA, "images": {}}
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} is not valid JSON: {exc}") from None
    data.setdefault("images", {}).update(entries)
    data["images"] = dict(sorted(data["images"].items()))
    path.write_text(json.dumps(data, indent=2) + "\n")


def read_record(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    images = json.loads(path.read_text()).get("images", {})
    return images if isinstance(images, dict) else {}


def remove_built(engine: Engine, tag: str, build: BuildResult | None) -> None:
    """Remove the image and, when this run built it, its build stage (a CUDA venv is ~6 GB)."""
    engine.remove_image(tag)
    if build and build.build_stage_id:
        try:
            engine.remove_image(build.build_stage_id)
        except BuildError as exc:  # still the parent of another build's layers: keep it
            progress(f"  kept the build stage {build.build_stage_id}: {exc.message}")


# ---- commands ----------------------------------------------------------------------------


def _mb(size: int) -> str:
    return f"{size / 1e6:,.0f} MB" if size else "-"


def cmd_build(args: argparse.Namespace) -> int:
    from cudabox.engine import Engine

    catalog = load_catalog()
    specs = parse_targets(catalog, args.targets)
    options = BuildOptions.from_args(args)
    rows = []
    with Engine.connect(timeout=BUILD_READ_TIMEOUT_S) as engine:
        for spec in specs:
            built = build_image(engine, spec, options)
            entry: dict[str, Any] = asdict(built)
            if not args.no_verify:
                checked = verify_image(engine, spec, catalog.root)
                require_verified(checked)
                entry["verified"] = True
                entry["overhead_pct"] = checked.overhead_pct
            rows.append(entry)
    if args.json:
        print_json(rows)
    else:
        print(
            table(
                ["image", "tag", "seconds", "size", "cached steps", "verified"],
                [
                    [
                        r["name"],
                        r["tag"],
                        r["seconds"],
                        _mb(r["size"]),
                        r["cached_steps"],
                        "yes" if r.get("verified") else "no",
                    ]
                    for r in rows
                ],
            )
        )
    return ExitCode.OK


def cmd_verify(args: argparse.Namespace) -> int:
    from cudabox.engine import Engine

    catalog = load_catalog()
    specs = parse_targets(catalog, args.targets)
    options = BuildOptions.from_args(args)
    previous = read_record(args.record) if args.record else {}
    rows = []
    with Engine.connect(timeout=BUILD_READ_TIMEOUT_S) as engine:
        for spec in specs:
            built = None
            if not engine.has_image(spec.tag):
                built = build_image(engine, spec, options)
            checked = verify_image(engine, spec, catalog.root, gpus=args.gpus)
            if not checked.ok and args.remove_after:
                stage = (
                    f" and its build stage {built.build_stage_id}"
                    if built and built.build_stage_id
                    else ""
                )
                progress(
                    f"verify {spec.name}: failed; kept {spec.tag}{stage} for inspection (docker rmi them when done)"
                )
            require_verified(checked)
            entry = record_entry(spec, checked, built, previous.get(spec.name))
            if args.record:
                write_record(args.record, {spec.name: entry})
                progress(f"verify {spec.name}: recorded in {args.record}")
            if args.remove_after:
                progress(f"verify {spec.name}: removing {spec.tag}")
                remove_built(engine, spec.tag, built)
            rows.append({"name": spec.name, **entry})
    if args.json:
        print_json(rows)
    else:
        print(
            table(
                [
                    "image",
                    "CUDA",
                    "cuDNN",
                    "size",
                    "packages",
                    "base",
                    "overhead",
                    "build s",
                    "units",
                ],
                [
                    [
                        r["name"],
                        r["reported"].get("cuda") or "-",
                        cudnn_text(r["reported"].get("cudnn")) or "-",
                        _mb(r["image_bytes"]),
                        _mb(r["packages_bytes"]),
                        _mb(r["base_bytes"]),
                        f"{r['overhead_pct']}%" if r["overhead_pct"] is not None else "-",
                        r["build_seconds"] or "-",
                        f"{sum(v.startswith('ok') for v in r['units'].values())}/{len(r['units'])} ok",
                    ]
                    for r in rows
                ],
            )
        )
    return ExitCode.OK


def _add_build_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "targets",
        nargs="+",
        metavar="TARGET",
        help="catalog image name, FRAMEWORK:FLAVOR (newest of the kind) or all",
    )
    parser.add_argument(
        "--ca-cert",
        metavar="FILE",
        help=f"extra CA bundle for the build stage only (default: ${CA_ENV})",
    )
    parser.add_argument(
        "--index-url",
        metavar="URL",
        help=f"pip index (mirror) for the build (default: ${INDEX_ENV})",
    )
    parser.add_argument(
        "--wheelhouse",
        metavar="DIR",
        help=f"local wheels the lock may need (default: ${WHEELHOUSE_ENV})",
    )
    parser.add_argument(
        "--host-pip",
        action="store_true",
        help=f"take missing CA/index/wheelhouse settings from this host's pip config (or ${HOST_PIP_ENV}=1)",
    )
    parser.add_argument("--no-cache", action="store_true", help="build every step afresh")
    parser.add_argument("--json", action="store_true")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    build = sub.add_parser("build", help="build catalog images and check what is inside them")
    _add_build_options(build)
    build.add_argument("--no-verify", action="store_true", help="skip the proof-of-contents check")
    build.set_defaults(func=cmd_build)

    verify = sub.add_parser(
        "verify", help="check that images hold what the catalog says (building them if missing)"
    )
    _add_build_options(verify)
    verify.add_argument(
        "--record",
        type=Path,
        metavar="FILE",
        help="write what each image reported to FILE (images/verified.json)",
    )
    verify.add_argument(
        "--remove-after",
        action="store_true",
        help="remove each image once verified (CUDA images are ~6 GB); a failing one is kept for inspection",
    )
    verify.add_argument(
        "--gpus",
        action="store_true",
        help="give the containers the host's GPUs (the units' GPU branch)",
    )
    verify.set_defaults(func=cmd_verify)
