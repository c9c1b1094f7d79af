"""The kubectl adapter, against a fake kubectl on PATH (no cluster can run here).

The fake records its arguments and standard input, and answers as kubectl does in each scenario;
the messages are kubectl's own (client-go and the API server's Status texts).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from cudabox.errors import AuthError, EngineError, ExitCode, Unavailable
from cudabox.images.catalog import load_catalog
from cudabox.jobs.manifests import Kind, Manifests, render
from cudabox.jobs.spec import JobSpec
from cudabox.kube import KUBECTL_ENV, apply

ROOT = Path(__file__).resolve().parents[1]
CATALOG = load_catalog(ROOT / "images" / "catalog.toml")

FAKE = """#!/bin/sh
printf '%s\\n' "$@" > "$FAKE_KUBECTL_DIR/argv"
cat > "$FAKE_KUBECTL_DIR/stdin"
case "$FAKE_KUBECTL_MODE" in
  ok) printf 'service/smoke\\njob.batch/smoke\\n' ;;
  unreachable)
    echo 'The connection to the server 127.0.0.1:6443 was refused - did you specify the right host or port?' >&2
    exit 1 ;;
  nocrd)
    echo 'error: resource mapping not found for name: "smoke" namespace: "" from "STDIN": no matches for kind "JobSet" in version "jobset.x-k8s.io/v1alpha2"' >&2
    echo 'ensure CRDs are installed first' >&2
    exit 1 ;;
  forbidden)
    echo 'Error from server (Forbidden): error when creating "STDIN": jobs.batch is forbidden: User "alice" cannot create resource "jobs" in API group "batch" in the namespace "default"' >&2
    exit 1 ;;
  unauthorized)
    echo 'error: You must be logged in to the server (Unauthorized)' >&2
    exit 1 ;;
  invalid)
    echo 'The Job "smoke" is invalid: spec.template.spec.containers[0].image: Required value' >&2
    exit 1 ;;
  webhook)
    echo 'Error from server: error when creating "STDIN": admission webhook "validate.kyverno.svc" denied the request: hostPath volumes are not allowed' >&2
    exit 1 ;;
  webhook403)
    echo 'Error from server (Forbidden): error when creating "STDIN": admission webhook "validation.gatekeeper.sh" denied the request: [gpu-quota] GPUs are not allowed in namespace default' >&2
    exit 1 ;;
  crash) exit 3 ;;
esac
"""


def manifests(kind: Kind = "job") -> Manifests:
    spec = JobSpec(
        name="smoke",
        image=CATALOG.get("torch-2.13-cpu"),
        image_ref="registry.example.com/cudabox/torch-2.13-cpu:latest",
        program=("python", "-m", "cudabox.workloads.torch_smoke"),
        nodes=2,
    )
    return render(spec, kind)


@pytest.fixture
def fake(tmp_path: Path) -> dict[str, str]:
    """An environment whose PATH holds only the fake kubectl (and the shell tools it uses)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(FAKE)
    kubectl.chmod(0o755)
    return {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "FAKE_KUBECTL_DIR": str(tmp_path),
        "FAKE_KUBECTL_MODE": "ok",
        "KUBECONFIG": str(tmp_path / "kubeconfig"),  # passed through untouched
    }


def test_apply_pipes_the_rendered_manifests_to_kubectl(
    fake: dict[str, str], tmp_path: Path
) -> None:
    rendered = manifests()
    applied = apply(rendered, namespace="ml", context="lab", env=fake)
    assert applied.objects == ("service/smoke", "job.batch/smoke")
    assert applied.kubectl == str(tmp_path / "bin" / "kubectl")
    argv = (tmp_path / "argv").read_text().splitlines()
    assert argv == ["apply", "-f", "-", "-o", "name", "--namespace", "ml", "--context", "lab"]
    sent = (tmp_path / "stdin").read_text()
    assert sent == rendered.to_yaml()
    assert list(yaml.safe_load_all(sent)) == list(rendered.objects)


def test_server_dry_run_asks_the_api_server_without_creating(
    fake: dict[str, str], tmp_path: Path
) -> None:
    applied = apply(manifests(), server_dry_run=True, env=fake)
    assert applied.server_dry_run
    assert (tmp_path / "argv").read_text().splitlines()[-1] == "--dry-run=server"


def test_another_kubectl_by_environment(fake: dict[str, str], tmp_path: Path) -> None:
    other = tmp_path / "kubectl-1.31"
    other.write_text(FAKE)
    other.chmod(0o755)
    applied = apply(manifests(), env={**fake, KUBECTL_ENV: str(other)})
    assert applied.kubectl == str(other)


def test_kubectl_missing(tmp_path: Path) -> None:
    with pytest.raises(Unavailable, match="kubectl is not on PATH") as caught:
        apply(manifests(), env={"PATH": str(tmp_path)})
    assert "install kubectl" in (caught.value.fix or "")
    assert caught.value.exit_code == ExitCode.UNAVAILABLE
    with pytest.raises(Unavailable, match=f"{KUBECTL_ENV}=/nowhere/kubectl"):
        apply(manifests(), env={"PATH": str(tmp_path), KUBECTL_ENV: "/nowhere/kubectl"})


@pytest.mark.parametrize(
    ("mode", "kind", "error", "said", "fix"),
    [
        ("unreachable", "job", Unavailable, "cannot be reached", "kubectl cluster-info"),
        ("nocrd", "jobset", Unavailable, "does not know the jobset kind", "install JobSet"),
        ("nocrd", "trainjob", Unavailable, "does not know the trainjob kind", "Kubeflow Trainer"),
        ("forbidden", "job", AuthError, "does not allow", "--namespace"),
        ("unauthorized", "job", AuthError, "refused the credentials", "log in again"),
        ("invalid", "job", EngineError, "refused the manifests", "--dry-run=server"),
        ("webhook", "job", EngineError, "denied the request", "policies"),
        ("webhook403", "job", EngineError, "denied the request", "policies"),
        ("crash", "job", EngineError, "kubectl apply failed: no message", "--dry-run=server"),
    ],
)
def test_apply_refused(
    fake: dict[str, str], mode: str, kind: Kind, error: type[Exception], said: str, fix: str
) -> None:
    with pytest.raises(error, match=said) as caught:
        apply(manifests(kind), env={**fake, "FAKE_KUBECTL_MODE": mode})
    assert fix in (getattr(caught.value, "fix", None) or "")


def test_a_kubectl_that_hangs_is_given_up(fake: dict[str, str], tmp_path: Path) -> None:
    slow = tmp_path / "bin" / "kubectl"
    slow.write_text("#!/bin/sh\nexec sleep 30\n")
    with pytest.raises(Unavailable, match="did not answer within 1 s"):
        apply(manifests(), env=fake, timeout_s=1)


def test_the_process_environment_is_the_default(
    fake: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in fake.items():
        monkeypatch.setenv(key, value)
    assert apply(manifests()).objects == ("service/smoke", "job.batch/smoke")
    assert os.environ["FAKE_KUBECTL_MODE"] == "ok"
