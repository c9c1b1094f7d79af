"""Project environment figures (issue 16): lock time per image, the project image's size and
reproducibility, and invoke-to-first-line after an edit.

Prints figures; asserts nothing. Works on copies in a temporary folder (the example project under
a name of its own, so that no one else's project image is touched) and removes every image,
build stage and container it made, on failure too.

    python benchmarks/project.py [--image torch-2.13-cpu] [--runs 5] [--json] [--save FILE]
        lock      `cudabox lock --project DIR --json`: seconds per image for a copy of
                  examples/torch-project and for `transformers datasets accelerate`
        build     `cudabox build --project DIR --image IMAGE --json`: seconds; the image's bytes
                  over its catalog image's against the lock's installed bytes for that image
        repro     two more builds with --no-cache: their layer diff_ids, identical or not
        edit-run  after an edit of a .py in the copy: invoke-to-first-line of `cudabox run
                  --project DIR -- python -c 'print("first")'` vs the same with --no-project (the
                  catalog image), median of --runs each, and whether the run built anything;
                  with CUDABOX_HOST_PIP set, once more without it (reading the host pip's
                  settings is a pip subprocess, which a run pays when it may build)

Build settings come from CUDABOX_CA_CERT / _INDEX_URL / _WHEELHOUSE, or the host's pip config
with CUDABOX_HOST_PIP=1 (what the nox session sets). The catalog image must be on the engine, or
`cudabox build` builds it first (minutes; its time is then in the build figure).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cudabox.engine import Engine
from cudabox.errors import EngineError
from cudabox.images.catalog import load_catalog
from cudabox.options import HOST_PIP_ENV
from cudabox.project.building import project_tag
from cudabox.project.lockfile import LOCK_FILE, read_lock

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "torch-project"
EXAMPLE_NAME = "spiral-classifier"
HF_DEPENDENCIES = ("torch", "transformers", "datasets", "accelerate")
LOCK_TIMEOUT_S = 900
BUILD_TIMEOUT_S = 3600
RUN_TIMEOUT_S = 300
BUILD_SIGNAL = "build project "  # what building.py prints (stderr) when it builds


@dataclass
class LockFigures:
    project: str
    wall_s: float
    images: list[dict[str, Any]]  # image, seconds, packages, installed_bytes, excluded, findings


@dataclass
class BuildFigures:
    command: str
    wall_s: float
    seconds: float  # as `cudabox build` reports it (the build and the proof)
    built: bool
    image_bytes: int
    base_bytes: int
    installed_bytes: int  # the lock's, for this image
    files_bytes: int = 0  # in the image: the new distributions' listed files (their RECORD)
    bytecode_bytes: int = 0  # in the image: the .pyc the build compiled for them (not in RECORD)

    @property
    def added_bytes(self) -> int:
        return self.image_bytes - self.base_bytes

    @property
    def ratio(self) -> float:
        return self.added_bytes / self.installed_bytes if self.installed_bytes else float("nan")

    @property
    def ratio_without_bytecode(self) -> float:
        added = self.added_bytes - self.bytecode_bytes
        return added / self.installed_bytes if self.installed_bytes else float("nan")


@dataclass
class ReproFigures:
    seconds: list[float]  # each --no-cache build
    diff_ids: list[list[str]]
    base_layers: int

    @property
    def identical(self) -> bool:
        return len(self.diff_ids) == 2 and self.diff_ids[0] == self.diff_ids[1]


@dataclass
class RunFigures:
    environment: str  # which environment the runs had
    project_s: list[float]
    catalog_s: list[float]
    builds_seen: int  # project runs whose stderr showed a build
    image_unchanged: bool  # the project image's id before and after the runs
    up_to_date_seen: int  # project runs that said the image is up to date

    @property
    def difference_s(self) -> float:
        return statistics.median(self.project_s) - statistics.median(self.catalog_s)


@dataclass
class Figures:
    image: str
    locks: list[LockFigures] = field(default_factory=list)
    build: BuildFigures | None = None
    repro: ReproFigures | None = None
    runs: list[RunFigures] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class StepFailed(Exception):
    pass


def cudabox(
    args: Sequence[str], cwd: Path, timeout: int
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "cudabox", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    wall = time.monotonic() - started
    if result.returncode != 0:
        tail = "\n".join(result.stderr.splitlines()[-15:])
        raise StepFailed(f"cudabox {' '.join(args)}: exit {result.returncode}\n{tail}")
    return result, wall


# ---- the projects ------------------------------------------------------------------------------


def example_copy(tmp: Path, name: str) -> Path:
    """examples/torch-project under another project name (its image tag is then ours alone)."""
    folder = tmp / name
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("__pycache__", ".venv"))
    pyproject = folder / "pyproject.toml"
    text = pyproject.read_text()
    if f'name = "{EXAMPLE_NAME}"' not in text:
        raise StepFailed(f'{pyproject}: no `name = "{EXAMPLE_NAME}"` to rename')
    pyproject.write_text(text.replace(f'name = "{EXAMPLE_NAME}"', f'name = "{name}"', 1))
    return folder


def hf_project(tmp: Path, name: str) -> Path:
    folder = tmp / name
    folder.mkdir()
    deps = ", ".join(json.dumps(d) for d in HF_DEPENDENCIES)
    (folder / "pyproject.toml").write_text(
        f'[project]\nname = "{name}"\nversion = "0.1"\nrequires-python = ">=3.11"\n'
        f'dependencies = [{deps}]\n\n[tool.cudabox]\nframework = "torch"\n'
    )
    (folder / "train.py").write_text("import accelerate, datasets, transformers\n")
    return folder


# ---- the figures -------------------------------------------------------------------------------


def lock_figures(folder: Path, label: str) -> LockFigures:
    result, wall = cudabox(["lock", "--project", str(folder), "--json"], folder, LOCK_TIMEOUT_S)
    report = json.loads(result.stdout)
    images = [
        {
            "image": row["image"],
            "seconds": row["seconds"],
            "packages": row["packages"],
            "installed_bytes": row["installed_bytes"],
            "base_pins_changed": row["base_pins_changed"],
            "excluded": row["excluded"],
            "findings": [f["kind"] for f in row["findings"] if f["kind"] != "archs"],
        }
        for row in report["images"]
    ]
    return LockFigures(label, round(wall, 2), images)


def installed_bytes(lock: LockFigures, image: str) -> int:
    row = next((r for r in lock.images if r["image"] == image), None)
    if row is None or row["excluded"]:
        raise StepFailed(f"the lock of {lock.project} has no entry for {image}")
    return int(row["installed_bytes"])


# Run in the project image: what the new distributions' files and their bytecode weigh there.
_CONTENTS = """
import importlib.metadata as md, importlib.util, json, os, sys
listed = pyc = 0
for name in json.loads(sys.argv[1]):
    for f in md.distribution(name).files or []:
        path = str(f.locate())
        if "__pycache__" not in path and os.path.isfile(path) and not os.path.islink(path):
            listed += os.path.getsize(path)
        if path.endswith(".py"):
            cached = importlib.util.cache_from_source(path)
            if os.path.isfile(cached):
                pyc += os.path.getsize(cached)
print("cudabox-bench:", json.dumps({"listed": listed, "pyc": pyc}))
"""


def image_contents(engine: Engine, tag: str, names: Sequence[str]) -> tuple[int, int]:
    """(listed file bytes, bytecode bytes) of the distributions `names` in the image `tag`."""
    result = engine.run(tag, ["python", "-c", _CONTENTS, json.dumps(list(names))], timeout=120)
    line = next((x for x in result.output.splitlines() if x.startswith("cudabox-bench: ")), None)
    if line is None:
        raise StepFailed(f"reading the distributions in {tag}: {result.output[-2000:]}")
    found = json.loads(line.removeprefix("cudabox-bench: "))
    return int(found["listed"]), int(found["pyc"])


def build(folder: Path, image: str, nocache: bool) -> tuple[dict[str, Any], float, str]:
    args = ["build", "--project", str(folder), "--image", image, "--json"]
    if nocache:
        args.append("--no-cache")
    result, wall = cudabox(args, folder, BUILD_TIMEOUT_S)
    (row,) = json.loads(result.stdout)
    return row, wall, " ".join(["cudabox", *args])


def first_line(args: Sequence[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    """Seconds from invoke to the first stdout line, and the whole stderr."""
    with tempfile.TemporaryFile("w+") as err:
        started = time.monotonic()
        with subprocess.Popen(
            [sys.executable, "-m", "cudabox", "run", *args, "--", "python", "-c", 'print("first")'],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        ) as process:
            assert process.stdout is not None
            line = process.stdout.readline()
            seconds = time.monotonic() - started
            process.stdout.read()
            code = process.wait(timeout=RUN_TIMEOUT_S)
        err.seek(0)
        stderr = err.read()
    if code != 0 or line.strip() != "first":
        tail = "\n".join(stderr.splitlines()[-15:])
        raise StepFailed(f"cudabox run {' '.join(args)}: exit {code}, first line {line!r}\n{tail}")
    return seconds, stderr


def run_figures(
    engine: Engine, folder: Path, tag: str, runs: int, environment: str, env: dict[str, str]
) -> RunFigures:
    before = engine.image(tag)
    if before is None:
        raise StepFailed(f"{tag} is not on the engine before the runs")
    edited = next(folder.glob("*.py"))
    project_s: list[float] = []
    catalog_s: list[float] = []
    builds = up_to_date = 0
    # Warm both paths once (page cache, the Docker SDK's first import), then alternate, so that
    # the other engineers' load falls on both alike.
    first_line(["--no-project"], folder, env)
    first_line(["--project", str(folder)], folder, env)
    for n in range(runs):
        with edited.open("a") as f:
            f.write(f"# bench edit {n} {time.time()!r}\n")
        seconds, stderr = first_line(["--project", str(folder)], folder, env)
        project_s.append(round(seconds, 3))
        builds += BUILD_SIGNAL in stderr
        up_to_date += "is up to date" in stderr
        seconds, _ = first_line(["--no-project"], folder, env)
        catalog_s.append(round(seconds, 3))
    after = engine.image(tag)
    return RunFigures(
        environment,
        project_s,
        catalog_s,
        builds,
        after is not None and after.id == before.id,
        up_to_date,
    )


def measure(engine: Engine, image: str, runs: int, tmp: Path, made: set[str]) -> Figures:
    figures = Figures(image)
    suffix = uuid.uuid4().hex[:8]
    example = example_copy(tmp, f"cudabox-bench-spiral-{suffix}")
    hf = hf_project(tmp, f"cudabox-bench-hf-{suffix}")
    tag = project_tag(example.name, image)
    made.add(tag)
    spec = load_catalog().get(image)
    try:
        figures.locks.append(lock_figures(example, "examples/torch-project (copy)"))
    except StepFailed as exc:
        figures.errors.append(f"lock: {exc}")
        return figures  # nothing to build without the lock
    try:
        figures.locks.append(lock_figures(hf, " ".join(HF_DEPENDENCIES[1:])))
    except StepFailed as exc:
        figures.errors.append(f"lock (hf): {exc}")
    try:
        row, wall, command = build(example, image, nocache=False)
        stage = row.get("stage_id")
        if stage:
            made.add(stage)
        base = engine.image(spec.tag)
        built = engine.image(tag)
        if base is None or built is None:
            raise StepFailed(f"{spec.tag} or {tag} is missing after the build")
        made.add(built.id)
        image_lock = read_lock(example / LOCK_FILE).get(image)
        names = [p.name for p in image_lock.packages] if image_lock else []
        files_bytes, bytecode_bytes = image_contents(engine, tag, names)
        figures.build = BuildFigures(
            command,
            round(wall, 1),
            float(row["seconds"]),
            bool(row["built"]),
            built.size,
            base.size,
            installed_bytes(figures.locks[0], image),
            files_bytes,
            bytecode_bytes,
        )
    except StepFailed as exc:
        figures.errors.append(f"build: {exc}")
        return figures
    try:
        seconds, layers = [], []
        for _ in range(2):
            row, wall, _command = build(example, image, nocache=True)
            if row.get("stage_id"):
                made.add(row["stage_id"])
            info = engine.image(tag)
            if info is None:
                raise StepFailed(f"{tag} is missing after a --no-cache build")
            made.add(info.id)
            seconds.append(float(row["seconds"]))
            layers.append(list(info.diff_ids))
        base = engine.image(spec.tag)
        figures.repro = ReproFigures(seconds, layers, len(base.diff_ids) if base else 0)
    except StepFailed as exc:
        figures.errors.append(f"reproducible: {exc}")
    # As given; and, when CUDABOX_HOST_PIP is set, without it too: a run reads the host pip's
    # settings when it may build, which costs a pip subprocess (a GPU host has no such setting).
    variants = [("as given", dict(os.environ))]
    if os.environ.get(HOST_PIP_ENV):
        plain = {k: v for k, v in os.environ.items() if k != HOST_PIP_ENV}
        variants.append((f"{HOST_PIP_ENV} unset", plain))
    for environment, env in variants:
        try:
            figures.runs.append(run_figures(engine, example, tag, runs, environment, env))
        except StepFailed as exc:
            figures.errors.append(f"edit -> run ({environment}): {exc}")
    return figures


def clean(engine: Engine, made: set[str]) -> None:
    """Every container on our images, the tags, build stages and image ids we made."""
    client = engine.client
    tags = sorted(r for r in made if ":" in r and not r.startswith("sha256:"))
    refs = [*tags, *sorted(made - set(tags))]
    for ref in refs:
        with suppress(Exception):
            for container in client.containers.list(all=True, filters={"ancestor": ref}):
                container.remove(force=True)
    for tag in tags:  # stages labelled for our tags, whether or not the build reported them
        with suppress(Exception):
            for image in client.images.list(filters={"label": f"cudabox.stage_of={tag}"}):
                refs.append(image.id)
        with suppress(Exception):  # an unproven candidate left by an interrupted build
            for image in client.images.list(name=tag.split(":")[0]):
                refs += list(image.tags) or [image.id]
    for ref in dict.fromkeys(refs):
        with suppress(EngineError):
            engine.remove_image(ref, force=True)


# ---- the report --------------------------------------------------------------------------------


def digest(diff_ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(diff_ids).encode()).hexdigest()[:16]


def as_json(figures: Figures) -> dict[str, Any]:
    out: dict[str, Any] = {"image": figures.image, "errors": figures.errors}
    out["locks"] = [asdict(lock) for lock in figures.locks]
    if figures.build:
        out["build"] = {
            **asdict(figures.build),
            "added_bytes": figures.build.added_bytes,
            "ratio": round(figures.build.ratio, 4),
            "ratio_without_bytecode": round(figures.build.ratio_without_bytecode, 4),
        }
    if figures.repro:
        out["reproducible"] = {
            **asdict(figures.repro),
            "identical": figures.repro.identical,
            "digests": [digest(d) for d in figures.repro.diff_ids],
        }
    out["edit_run"] = [
        {
            **asdict(run),
            "project_median_s": statistics.median(run.project_s),
            "catalog_median_s": statistics.median(run.catalog_s),
            "difference_s": round(run.difference_s, 3),
        }
        for run in figures.runs
    ]
    return out


def report(figures: Figures) -> None:
    for lock in figures.locks:
        print(f"lock {lock.project}: {lock.wall_s:.1f} s wall")
        print(f"  {'image':18} {'seconds':>8} {'packages':>9} {'installed':>11}  findings")
        for r in lock.images:
            print(
                f"  {r['image']:18} {r['seconds']:>8.2f} {r['packages']:>9} "
                f"{r['installed_bytes'] / 1e6:>8,.1f} MB  "
                + ("LEFT OUT " if r["excluded"] else "")
                + (", ".join(r["findings"]) or "-")
            )
        per_image = [r["seconds"] for r in lock.images]
        if per_image:
            print(f"  max {max(per_image):.2f} s/image (goal <= 10)")
    b = figures.build
    if b:
        print(
            f"build ({b.command}): {b.seconds:.1f} s reported, {b.wall_s:.1f} s wall, built={b.built}"
        )
        print(
            f"  image {b.image_bytes:,} B - base {b.base_bytes:,} B = {b.added_bytes:,} B added; "
            f"lock installed {b.installed_bytes:,} B: {b.ratio:.3f}x (goal <= 1.25x)"
        )
        print(
            f"  in the image: the distributions' listed files {b.files_bytes:,} B, the bytecode "
            f"the build compiled {b.bytecode_bytes:,} B; without the bytecode "
            f"{b.ratio_without_bytecode:.3f}x"
        )
    repro = figures.repro
    if repro:
        print(
            f"reproducible: two --no-cache builds {repro.seconds[0]:.1f} s and {repro.seconds[1]:.1f} s; "
            f"{len(repro.diff_ids[0])} layers ({repro.base_layers} of the catalog image), "
            f"identical: {'yes' if repro.identical else 'NO'}"
        )
        for n, ids in enumerate(repro.diff_ids, 1):
            print(
                f"  build {n}: diff_ids digest {digest(ids)}; above the base: "
                + " ".join(i.removeprefix("sha256:")[:12] for i in ids[repro.base_layers :])
            )
    for run in figures.runs:
        print(
            f"edit -> run ({run.environment}), invoke to first line, median of "
            f"{len(run.project_s)}: project "
            f"{statistics.median(run.project_s):.3f} s, catalog (--no-project) "
            f"{statistics.median(run.catalog_s):.3f} s, difference {run.difference_s:+.3f} s "
            "(goal within 1 s)"
        )
        print(f"  project runs: {' '.join(f'{s:.3f}' for s in run.project_s)}")
        print(f"  catalog runs: {' '.join(f'{s:.3f}' for s in run.catalog_s)}")
        print(
            f"  builds during the runs: {run.builds_seen}; 'up to date' said by "
            f"{run.up_to_date_seen} of {len(run.project_s)}; image id unchanged: "
            f"{'yes' if run.image_unchanged else 'NO'}"
        )
    for error in figures.errors:
        print(f"FAILED {error}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--image", default="torch-2.13-cpu", help="the catalog image to build on")
    parser.add_argument("--runs", type=int, default=5, help="runs of each kind for edit -> run")
    parser.add_argument("--json", action="store_true", help="the figures as JSON")
    parser.add_argument("--save", type=Path, default=None, help="also write the JSON to FILE")
    args = parser.parse_args()
    made: set[str] = set()
    with (
        Engine.connect(read_timeout=BUILD_TIMEOUT_S) as engine,
        tempfile.TemporaryDirectory(prefix="cudabox-bench-project-") as tmp,
    ):
        try:
            figures = measure(engine, args.image, args.runs, Path(tmp), made)
        finally:
            clean(engine, made)
    if args.save is not None:
        args.save.write_text(json.dumps(as_json(figures), indent=2) + "\n")
    if args.json:
        print(json.dumps(as_json(figures), indent=2))
    else:
        report(figures)
    return 1 if figures.errors else 0


if __name__ == "__main__":
    sys.exit(main())
