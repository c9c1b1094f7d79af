"""The proof of a project image, run inside it before it is tagged: standard library only.

    python proof.py /tmp/cudabox-proof/proof.json

proof.json holds `base` (the catalog image's lock pins, name -> version), `new` (the project's
distributions, name -> version) and `modules` (each top-level module the project adds -> its
distribution). The proof checks that every base distribution is still there once, at its pinned
version (the project's install replaced or removed none); that every new distribution is there;
that every new module imports; and that the installed requirements are consistent (`pip check`,
or the distributions' own metadata where the venv has no pip). It prints one line,
`cudabox-proof: {JSON}`, and exits 0 only when nothing failed. It runs with the network off and
as the image's user, as the user's run will.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

MARKER = "cudabox-proof: "
PIP_CHECK_TIMEOUT_S = 120


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> dict[str, list[str]]:
    """Normalised name -> the versions of every copy on sys.path (two copies: a replaced one)."""
    found: dict[str, list[str]] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(normalise(name), []).append(dist.version)
    return found


def check_distributions(
    base: dict[str, str], new: dict[str, str], have: dict[str, list[str]]
) -> list[dict[str, str]]:
    problems = []
    for name, version in sorted(base.items()):
        versions = have.get(name, [])
        if not versions:
            problems.append(
                {"check": "base", "name": name, "text": f"{name}=={version} was removed"}
            )
        elif versions != [version]:
            problems.append(
                {
                    "check": "base",
                    "name": name,
                    "text": f"{name}=={version} was replaced: the image now has {', '.join(versions)}",
                }
            )
    for name, version in sorted(new.items()):
        if version not in have.get(name, []):
            got = ", ".join(have.get(name, [])) or "nothing"
            problems.append(
                {
                    "check": "new",
                    "name": name,
                    "text": f"{name}=={version} is not installed ({got})",
                }
            )
    return problems


def check_imports(modules: dict[str, str]) -> list[dict[str, str]]:
    problems = []
    for module, dist in sorted(modules.items()):
        try:
            importlib.import_module(module)
        except BaseException as exc:  # SystemExit and KeyboardInterrupt from an import count too
            lines = [line for line in f"{type(exc).__name__}: {exc}".splitlines() if line.strip()]
            problems.append(
                {
                    "check": "import",
                    "name": dist,
                    "module": module,
                    "text": lines[-1] if lines else type(exc).__name__,
                }
            )
    return problems


def check_requirements() -> tuple[str, list[dict[str, str]]]:
    """`python -m pip check` when the venv has pip; else each Requires-Dist name is installed."""
    if importlib.util.find_spec("pip") is not None:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "check", "--disable-pip-version-check"],
            capture_output=True,
            text=True,
            timeout=PIP_CHECK_TIMEOUT_S,
            check=False,
        )
        if done.returncode == 0:
            return "pip check", []
        lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
        return "pip check", [{"check": "requirements", "name": "", "text": line} for line in lines]
    names = set(installed())
    problems = []
    for dist in importlib.metadata.distributions():
        for requirement in dist.requires or ():
            text, _, marker = requirement.partition(";")
            if marker.strip():
                continue  # extras and platform markers: the standard library cannot judge them
            wanted = normalise(re.split(r"[\s\[<>=!~(]", text.strip(), maxsplit=1)[0])
            if wanted and wanted not in names:
                problems.append(
                    {
                        "check": "requirements",
                        "name": normalise(dist.metadata["Name"] or ""),
                        "text": f"{dist.metadata['Name']} requires {text.strip()}, which is not installed",
                    }
                )
    return "metadata", problems


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} PROOF_JSON", file=sys.stderr)
        return 2
    spec: dict[str, Any] = json.loads(Path(argv[1]).read_text())
    problems = check_distributions(spec["base"], spec["new"], installed())
    problems += check_imports(spec["modules"])
    how, found = check_requirements()
    problems += found
    print(
        MARKER + json.dumps({"ok": not problems, "requirements_check": how, "problems": problems})
    )
    return 0 if not problems else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
