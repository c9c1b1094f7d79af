"""The proof of contents: what the framework reports inside the image, against the catalog.

The in-image `facts.py` of the framework (images/units/FRAMEWORK/) reports version, CUDA,
cuDNN and architectures; the labels and the image config are checked too; then the in-image unit
scripts run under a hard timeout. What the image reports beats any table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from cudabox.container import ContainerEngine, ImageInfo
from cudabox.errors import BuildError
from cudabox.images.catalog import ImageSpec
from cudabox.images.labels import BuiltOn, Reported, built_on, compare, compare_labels
from cudabox.images.lock import lock_digest
from cudabox.output import parse_json, progress

UNIT_TIMEOUT_S = 300


@dataclass
class VerifyResult:
    name: str
    tag: str
    ok: bool
    problems: list[str] = field(default_factory=list)
    reported: dict[str, Any] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    image_bytes: int = 0
    base_bytes: int | None = None  # None: the base it was built on is not on this engine
    packages_bytes: int = 0
    base: BuiltOn | None = None  # from the image's labels: the base it was really built on
    base_layers: int | None = None  # how many of diff_ids are the base's (None: base not here)
    diff_ids: tuple[str, ...] = ()  # the image's layers, bottom first (RootFS.Layers)

    @property
    def overhead_pct(self) -> float | None:
        # Without the real base there is no truthful figure (sizing another image gave 22 %).
        if self.base_bytes is None:
            return None
        content = self.base_bytes + self.packages_bytes
        if not content or not self.image_bytes:
            return None
        return round(100 * (self.image_bytes - content) / content, 1)


def units_dir(catalog_root: Path, spec: ImageSpec) -> Path:
    return catalog_root / "units" / spec.framework


def run_script(
    engine: ContainerEngine,
    tag: str,
    script: Path,
    gpus: bool,
    labels: dict[str, str] | None = None,
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


# The facts cudabox reads from facts.py's JSON line (images/units/*/facts.py), and their types.
_FACTS: dict[str, tuple[type, ...]] = {
    "framework_version": (str,),
    "cuda": (str, type(None)),
    "cudnn": (int, str, type(None)),  # torch: 92600; TensorFlow: "9"
    "arch_list": (list,),
    "uid": (int,),
    "packages": (dict,),
    "packages_bytes": (int,),
}


def parse_facts(output: str, where: str, fix: str) -> tuple[dict[str, Any], Reported]:
    """The JSON object facts.py prints as its last line, and what it reports.

    Anything else (no JSON, a list, a fact of the wrong type) is a BuildError that shows the
    script's output, not a crash of cudabox.
    """
    text = output.strip()

    def refuse(problem: str) -> NoReturn:
        raise BuildError(f"{where} {problem}:\n{text[-3000:]}", fix)

    last = text.splitlines()[-1] if text else ""
    try:
        data = parse_json(last, "its last line", fix, error=BuildError)
    except BuildError as exc:
        refuse(f"printed no JSON object ({exc.message})")
    if not isinstance(data, dict):
        refuse(f"printed {type(data).__name__} {last[:60]}, not a JSON object")
    for key, kinds in _FACTS.items():
        if key not in data:
            refuse(f"printed no {key!r}")
        if not isinstance(data[key], kinds) or isinstance(data[key], bool):
            refuse(f"printed {key!r} as {json.dumps(data[key])[:40]}")
    if not all(isinstance(a, str) for a in data["arch_list"]):
        refuse("printed an 'arch_list' that is not a list of texts")
    if not all(isinstance(v, str) for v in data["packages"].values()):
        refuse("printed 'packages' whose versions are not texts")
    if data["packages_bytes"] < 0:
        refuse("printed a negative 'packages_bytes'")
    try:
        reported = Reported.from_json(data)
    except ValueError as exc:
        refuse(f"printed a fact cudabox cannot read ({exc})")
    return data, reported


def find_base(engine: ContainerEngine, image: ImageInfo) -> tuple[BuiltOn | None, ImageInfo | None]:
    """The base `image` was built on (its labels) and that base on this engine, if it is here.

    The engine's image must be the labelled one (its id or a repo digest is the labelled digest)
    and its layers the bottom of `image`'s: a base re-made or re-pulled since is another base.
    """
    base = built_on(image.labels)
    if base is None:
        return None, None
    for ref in (base.name, base.digest):
        found = engine.image(ref) if ref else None
        if found is None:
            continue
        digests = {found.id, *(d.rpartition("@")[2] for d in found.repo_digests)}
        same = not base.digest or base.digest in digests
        if same and image.diff_ids[: len(found.diff_ids)] == found.diff_ids:
            return base, found
    return base, None


def verify_image(
    engine: ContainerEngine,
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
    result = VerifyResult(spec.name, tag, ok=False, image_bytes=info.size, diff_ids=info.diff_ids)
    result.base, base = find_base(engine, info)
    if base is not None:
        result.base_bytes, result.base_layers = base.size, len(base.diff_ids)
    else:
        progress(
            f"verify {spec.name}: the base {result.base or '(no base label)'} is not on this "
            "engine: no overhead figure"
        )
    folder = units_dir(catalog_root, spec)
    progress(f"verify {spec.name}: {folder.name}/facts.py in {tag}")
    ok, output, _ = run_script(engine, tag, folder / "facts.py", gpus)
    if not ok:
        raise BuildError(
            f"{spec.name}: the facts check failed inside {tag}:\n{output.strip()[-3000:]}"
        )
    fix = f"see what it prints: docker run --rm -i {tag} python - < {folder / 'facts.py'}"
    data, reported = parse_facts(output, f"{spec.name}: the facts check in {tag}", fix)
    result.packages_bytes = data.pop("packages_bytes")
    result.reported = data
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
    if result.ok:
        return
    stale = all("lock_sha256" in problem for problem in result.problems)
    raise BuildError(
        f"{result.name}: the image {result.tag} does not hold what the catalog says:\n  "
        + "\n  ".join(result.problems),
        f"it was built from another lock: rebuild it (`cudabox build {result.name}`)"
        if stale
        else "what the image reports beats the table: correct images/catalog.toml (or the "
        "lock), then rebuild",
    )
