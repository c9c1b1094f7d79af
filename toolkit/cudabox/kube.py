"""The Kubernetes adapter: the only module that talks to a cluster, through `kubectl apply`.

kubectl rather than the Python client: it is what cluster users already have configured (contexts,
exec credential plugins, proxies), and `apply -f -` takes the rendered manifests as they are.
Everything it can say is turned into a cudabox error with a fix; the rest of cudabox sees
`Applied` values.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cudabox.errors import AuthError, CudaboxError, EngineError, Unavailable
from cudabox.jobs.manifests import Manifests

KUBECTL_ENV = "CUDABOX_KUBECTL"  # another kubectl binary (a wrapper, a pinned version)
DEFAULT_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Applied:
    """What the API server accepted, as kubectl names it (`job.batch/train`, `service/train`)."""

    objects: tuple[str, ...]
    kubectl: str  # the binary that ran
    server_dry_run: bool


def apply(
    manifests: Manifests,
    *,
    namespace: str | None = None,
    context: str | None = None,
    server_dry_run: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    env: Mapping[str, str] | None = None,
) -> Applied:
    """`kubectl apply -f -` with the rendered manifests on its standard input.

    `server_dry_run` asks the API server to admit the objects (schemas, CRDs, webhooks, quotas)
    without creating them. `env` replaces the process environment (tests, a KUBECONFIG).
    """
    environment = dict(os.environ if env is None else env)
    kubectl = find_kubectl(environment)
    argv = [kubectl, "apply", "-f", "-", "-o", "name"]
    if namespace:
        argv += ["--namespace", namespace]
    if context:
        argv += ["--context", context]
    if server_dry_run:
        argv.append("--dry-run=server")
    try:
        done = subprocess.run(
            argv,
            input=manifests.to_yaml(),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=environment,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise Unavailable(
            f"kubectl apply did not answer within {timeout_s:.0f} s",
            "check that the cluster is reachable (`kubectl cluster-info`)",
        ) from None
    except OSError as exc:
        raise Unavailable(f"cannot run {kubectl}: {exc.strerror}", _INSTALL) from None
    if done.returncode != 0:
        raise refusal(done.stderr, manifests)
    objects = tuple(line.strip() for line in done.stdout.splitlines() if line.strip())
    return Applied(objects, kubectl, server_dry_run)


def find_kubectl(env: Mapping[str, str]) -> str:
    """$CUDABOX_KUBECTL, else `kubectl` on PATH."""
    wanted = env.get(KUBECTL_ENV) or "kubectl"
    found = shutil.which(wanted, path=env.get("PATH"))
    if found is None:
        where = f"{KUBECTL_ENV}={wanted}" if env.get(KUBECTL_ENV) else "kubectl is not on PATH"
        raise Unavailable(f"cannot submit to Kubernetes: {where}", _INSTALL)
    return found


_INSTALL = (
    "install kubectl (https://kubernetes.io/docs/tasks/tools/) and point it at the cluster, "
    "or render with --dry-run and apply the manifests yourself"
)


def refusal(stderr: str, manifests: Manifests) -> CudaboxError:
    """kubectl's complaint as a cudabox error: what went wrong and how to fix it."""
    said = _first_lines(stderr)
    low = stderr.lower()
    if "no matches for kind" in low or "ensure crds are installed" in low:
        operator = {
            "jobset": "JobSet (https://jobset.sigs.k8s.io)",
            "trainjob": "Kubeflow Trainer (https://www.kubeflow.org/docs/components/trainer/)",
        }.get(manifests.kind, "the operator that serves this kind")
        return Unavailable(
            f"the cluster does not know the {manifests.kind} kind: {said}",
            f"install {operator}, or submit with --k8s-kind job (a plain Indexed Job)",
        )
    if "admission webhook" in low or "(invalid)" in low or " is invalid" in low:
        # An older API server, or a policy (a webhook refusing hostPath, GPUs, a namespace).
        return EngineError(
            f"the cluster refused the manifests: {said}",
            "check the cluster's Kubernetes version and policies against the --dry-run output; "
            "`kubectl apply --dry-run=server -f -` shows the same answer without creating anything",
        )
    if any(m in low for m in _UNREACHABLE):
        return Unavailable(
            f"the Kubernetes API server cannot be reached: {said}",
            "check the kubeconfig context (`kubectl config current-context`, `--context`) "
            "and that the cluster is up (`kubectl cluster-info`)",
        )
    if "unauthorized" in low or "must be logged in" in low:
        return AuthError(
            f"the cluster refused the credentials: {said}",
            "log in again (refresh the kubeconfig credentials) and retry",
        )
    if "forbidden" in low:
        return AuthError(
            f"the cluster does not allow these objects here: {said}",
            "ask for create rights on Jobs/Services (or the operator's kind) in this namespace, "
            "or pick another with --namespace",
        )
    return EngineError(
        f"kubectl apply failed: {said or 'no message'}",
        "run the --dry-run output through `kubectl apply --dry-run=server -f -` to see why",
    )


_UNREACHABLE = (
    "unable to connect to the server",
    "connection to the server",
    "connection refused",
    "no such host",
    "i/o timeout",
    "tls handshake timeout",
)


def _first_lines(text: str, count: int = 3) -> str:
    lines: Sequence[str] = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " / ".join(lines[:count])
