"""Kubernetes manifests for a distributed training job: a pure function of a JobSpec.

Three shapes, one pod: an Indexed Job plus a headless Service (the default: no operator needed),
a JobSet (jobset.x-k8s.io/v1alpha2), or a Kubeflow Trainer TrainJob (trainer.kubeflow.org/v1alpha1,
the API of Trainer 2.3, whose runtime turns it into a JobSet). Every pod asks for
`gpus_per_node` `nvidia.com/gpu`, mounts a memory-backed /dev/shm of `shm_size`, and carries the
required node affinity of `affinity.node_affinity`, so the scheduler never places it on a node
whose driver or GPU architecture the image cannot use.

Rendezvous: torchrun's c10d rendezvous on the pod of completion index 0, reached through the
stable DNS name that the headless Service gives it (`<pod hostname>.<subdomain>`). That pod itself
names the endpoint `localhost`: torch hosts the c10d store only where the endpoint matches the
machine's own host name, and a pod's host name is not its DNS name (TorchX does the same).
Submitting what this renders is the job of `cudabox.kube`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from cudabox.compat import Compat
from cudabox.errors import UsageError
from cudabox.jobs.affinity import NodeAffinity, node_affinity
from cudabox.jobs.spec import JobSpec, Rendezvous, shell_line, torchrun_argv

Kind = Literal["job", "jobset", "trainjob"]
KINDS: tuple[Kind, ...] = ("job", "jobset", "trainjob")

# The oldest Kubernetes whose API the rendered objects are checked against (tests validate
# against it and the newest the validator knows). Indexed Jobs with pod host names are GA there.
KUBERNETES_VERSION = "1.31"

GPU_RESOURCE = "nvidia.com/gpu"  # the NVIDIA device plugin's resource name
CONTAINER = "trainer"
REPLICATED_JOB = "node"  # JobSet's replicated job; Trainer's torch runtime names its own "node"
TRAINER_CONTAINER = "node"  # the container of Trainer's torch runtimes
DEFAULT_RUNTIME = "torch-distributed"  # the ClusterTrainingRuntime Kubeflow Trainer installs
SHM_VOLUME = "dshm"
OUT_VOLUME = "out"
RDZV_HOST_VAR = "RDZV_HOST"  # a shell variable of the pod's command, not an environment variable

_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_SIZE = re.compile(r"^(\d+(?:\.\d+)?) ?([kKmMgGtTpP]?)[iI]?[bB]?$")  # as cudabox.options reads it
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}
_BINARY = ((5, "Pi"), (4, "Ti"), (3, "Gi"), (2, "Mi"), (1, "Ki"))


@dataclass(frozen=True)
class Manifests:
    """The rendered objects, in the order they are applied, and what they were derived from."""

    kind: Kind
    objects: tuple[dict[str, Any], ...]
    affinity: NodeAffinity | None  # None for a CPU job
    rendezvous: Rendezvous | None  # None for a one-node job (torchrun --standalone)

    def to_yaml(self) -> str:
        return to_yaml(self.objects)


def render(
    spec: JobSpec,
    kind: Kind = "job",
    *,
    namespace: str | None = None,
    runtime: str = DEFAULT_RUNTIME,
    compat: Compat | None = None,
) -> Manifests:
    """The manifests for `spec` as `kind`. `runtime` names the Trainer runtime (trainjob only)."""
    if kind not in KINDS:
        raise UsageError(f"--k8s-kind {kind!r} is not known", f"use one of: {', '.join(KINDS)}")
    if spec.uses_gpus and not spec.image.is_cuda:
        raise UsageError(
            f"--gpus-per-node {spec.gpus_per_node} with the CPU image {spec.image.name}",
            "pass --gpus-per-node 0, or select a CUDA image",
        )
    _check_name(spec, kind)
    affinity = node_affinity(spec.image, compat) if spec.uses_gpus else None
    if kind == "job":
        return _indexed_job(spec, namespace, affinity)
    if kind == "jobset":
        return _jobset(spec, namespace, affinity)
    return _trainjob(spec, namespace, runtime, affinity)


def shm_quantity(size: str) -> str:
    """A Docker-style size (`4g`, `512m`, `1.5GB`; binary units, as Docker reads them) as a
    Kubernetes quantity (`4Gi`, `512Mi`, `1536Mi`)."""
    match = _SIZE.fullmatch(size.strip())
    if not match:
        raise UsageError(f"--shm-size {size!r} is not a size", "write it like 4g or 512m")
    number = float(match[1]) * 1024 ** _POWERS[match[2].lower()]
    if number < 1 or number != int(number):
        raise UsageError(f"--shm-size {size!r} is not a whole number of bytes", "e.g. 4g or 512m")
    count = int(number)
    for power, suffix in _BINARY:
        if count % 1024**power == 0:
            return f"{count // 1024**power}{suffix}"
    return str(count)


def _indexed_job(spec: JobSpec, namespace: str | None, affinity: NodeAffinity | None) -> Manifests:
    name = spec.name
    rank0 = f"{name}-0.{name}"  # an Indexed Job's pod host name is <job>-<index>
    rdzv = Rendezvous(rank0, spec.rdzv_port, name) if spec.nodes > 1 else None
    labels = _labels(name)
    pod = _pod(spec, affinity, rdzv, CONTAINER, subdomain=name if rdzv else None)
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(spec, namespace),
        "spec": _job_spec(spec, {"metadata": {"labels": labels}, "spec": pod}),
    }
    if rdzv is None:
        return Manifests("job", (job,), affinity, None)
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec, namespace),
        "spec": {
            "clusterIP": "None",
            "selector": labels,
            # The ranks meet before any pod is Ready; DNS must answer for them already.
            "publishNotReadyAddresses": True,
            "ports": [{"name": "rdzv", "port": spec.rdzv_port, "targetPort": spec.rdzv_port}],
        },
    }
    # The Service first: its DNS name must exist when the first pod starts looking for rank 0.
    return Manifests("job", (service, job), affinity, rdzv)


def _jobset(spec: JobSpec, namespace: str | None, affinity: NodeAffinity | None) -> Manifests:
    name = spec.name
    # JobSet names pods <jobset>-<replicated job>-<job index>-<pod index> and makes the headless
    # Service named after the JobSet itself.
    rank0 = f"{name}-{REPLICATED_JOB}-0-0.{name}"
    rdzv = Rendezvous(rank0, spec.rdzv_port, name) if spec.nodes > 1 else None
    pod = _pod(spec, affinity, rdzv, CONTAINER, subdomain=None)
    jobset = {
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": _metadata(spec, namespace),
        "spec": {
            "network": {"enableDNSHostnames": True, "publishNotReadyAddresses": True},
            # One failed node fails the run: torchrun's ranks cannot continue without it.
            "failurePolicy": {"maxRestarts": 0},
            "replicatedJobs": [
                {
                    "name": REPLICATED_JOB,
                    "replicas": 1,
                    "template": {
                        "spec": _job_spec(
                            spec, {"metadata": {"labels": _labels(name)}, "spec": pod}
                        )
                    },
                }
            ],
        },
    }
    return Manifests("jobset", (jobset,), affinity, rdzv)


def _trainjob(
    spec: JobSpec, namespace: str | None, runtime: str, affinity: NodeAffinity | None
) -> Manifests:
    name = spec.name
    # Trainer runs the trainer as the JobSet <trainjob> with the replicated job "node".
    rank0 = f"{name}-{REPLICATED_JOB}-0-0.{name}"
    rdzv = Rendezvous(rank0, spec.rdzv_port, name) if spec.nodes > 1 else None
    trainer: dict[str, Any] = {
        "image": spec.image_ref,
        "command": _command(spec, rdzv),
        "numNodes": spec.nodes,
        "numProcPerNode": spec.nproc_per_node,
    }
    if env := _env(spec, rdzv):
        trainer["env"] = env
    if spec.uses_gpus:
        trainer["resourcesPerNode"] = {"limits": {GPU_RESOURCE: str(spec.gpus_per_node)}}
    # What the Trainer API has no field for (affinity, tolerations, /dev/shm) goes into a patch of
    # the runtime's pod template, owned by cudabox.
    pod_patch: dict[str, Any] = {}
    if affinity is not None:
        pod_patch["affinity"] = affinity.to_json()
        pod_patch["tolerations"] = _gpu_tolerations()
    pod_patch["volumes"] = _volumes(spec)
    pod_patch["containers"] = [{"name": TRAINER_CONTAINER, "volumeMounts": _mounts(spec)}]
    trainjob = {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": _metadata(spec, namespace),
        "spec": {
            "runtimeRef": {
                "apiGroup": "trainer.kubeflow.org",
                "kind": "ClusterTrainingRuntime",
                "name": runtime,
            },
            "trainer": trainer,
            "runtimePatches": [
                {
                    "manager": "cudabox",
                    "trainingRuntimeSpec": {
                        "template": {
                            "spec": {
                                "replicatedJobs": [
                                    {
                                        "name": REPLICATED_JOB,
                                        "template": {"spec": {"template": {"spec": pod_patch}}},
                                    }
                                ]
                            }
                        }
                    },
                }
            ],
        },
    }
    return Manifests("trainjob", (trainjob,), affinity, rdzv)


def _job_spec(spec: JobSpec, template: dict[str, Any]) -> dict[str, Any]:
    return {
        "completionMode": "Indexed",  # stable pod names and a JOB_COMPLETION_INDEX per node
        "completions": spec.nodes,
        "parallelism": spec.nodes,
        "backoffLimit": 0,  # a failed rank fails the job; resuming is a new run from a checkpoint
        "template": template,
    }


def _pod(
    spec: JobSpec,
    affinity: NodeAffinity | None,
    rdzv: Rendezvous | None,
    container: str,
    subdomain: str | None,
) -> dict[str, Any]:
    main: dict[str, Any] = {
        "name": container,
        "image": spec.image_ref,
        "command": _command(spec, rdzv),
    }
    if env := _env(spec, rdzv):
        main["env"] = env
    main["volumeMounts"] = _mounts(spec)
    if rdzv is not None:
        main["ports"] = [{"name": "rdzv", "containerPort": spec.rdzv_port}]
    if spec.uses_gpus:
        main["resources"] = {"limits": {GPU_RESOURCE: str(spec.gpus_per_node)}}
    pod: dict[str, Any] = {"restartPolicy": "Never"}
    if subdomain is not None:
        pod["subdomain"] = subdomain
    if affinity is not None:
        pod["affinity"] = affinity.to_json()
        pod["tolerations"] = _gpu_tolerations()
    pod["containers"] = [main]
    pod["volumes"] = _volumes(spec)
    return pod


def _command(spec: JobSpec, rdzv: Rendezvous | None) -> list[str]:
    if rdzv is None:
        return torchrun_argv(spec.program, 1, spec.nproc_per_node, None)
    meet = Rendezvous(f"${RDZV_HOST_VAR}", rdzv.port, rdzv.job_id)
    line = shell_line(torchrun_argv(spec.program, spec.nodes, spec.nproc_per_node, meet))
    # JOB_COMPLETION_INDEX is set by the Job controller in every pod of an Indexed Job.
    script = (
        f"{RDZV_HOST_VAR}={rdzv.host}; "
        f'if [ "$JOB_COMPLETION_INDEX" = 0 ]; then {RDZV_HOST_VAR}=localhost; fi; '
        f"exec {line}"
    )
    return ["/bin/sh", "-c", script]


def _env(spec: JobSpec, rdzv: Rendezvous | None) -> list[dict[str, str]]:
    env = dict(spec.env)
    if rdzv is not None:
        # For programs that read them; torchrun sets its own for the ranks it starts. These win
        # over the user's: a MASTER_ADDR from the submitting host means nothing in the cluster.
        env |= {"MASTER_ADDR": rdzv.host, "MASTER_PORT": str(rdzv.port)}
    return [{"name": key, "value": value} for key, value in sorted(env.items())]


def _mounts(spec: JobSpec) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [{"name": SHM_VOLUME, "mountPath": "/dev/shm"}]
    if spec.out_dir is not None:
        mounts.append({"name": OUT_VOLUME, "mountPath": spec.out_dir})
    return mounts


def _volumes(spec: JobSpec) -> list[dict[str, Any]]:
    # The container runtime's 64 MB /dev/shm breaks NCCL and DataLoader workers. A memory-backed
    # emptyDir counts against the pod's memory, so it is sized, not left unbounded.
    volumes: list[dict[str, Any]] = [
        {
            "name": SHM_VOLUME,
            "emptyDir": {"medium": "Memory", "sizeLimit": shm_quantity(spec.shm_size)},
        }
    ]
    if spec.out_dir is not None:
        # A folder every node mounts at the same path (a shared file system), as on Slurm.
        volumes.append(
            {"name": OUT_VOLUME, "hostPath": {"path": spec.out_dir, "type": "DirectoryOrCreate"}}
        )
    return volumes


def _gpu_tolerations() -> list[dict[str, str]]:
    # GPU node pools are commonly tainted nvidia.com/gpu:NoSchedule (GKE, AKS, EKS guides).
    return [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]


def _labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "cudabox"}


def _metadata(spec: JobSpec, namespace: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": spec.name}
    if namespace is not None:
        meta["namespace"] = namespace
    meta["labels"] = _labels(spec.name)
    # The image the affinity was derived from, for whoever reads the object in the cluster.
    meta["annotations"] = {"cudabox.image": spec.image.name}
    return meta


def _check_name(spec: JobSpec, kind: Kind) -> None:
    """Object names become a Service name (DNS-1035) and pod host names (at most 63 bytes)."""
    last = spec.nodes - 1
    longest = f"{spec.name}-{last}" if kind == "job" else f"{spec.name}-{REPLICATED_JOB}-0-{last}"
    if not _DNS_1035.fullmatch(spec.name) or len(longest) > 63:
        raise UsageError(
            f"job name {spec.name!r} cannot name Kubernetes objects",
            "use lower-case letters, digits and '-', starting with a letter, "
            f"short enough that {longest!r} stays within 63 characters",
        )


# A deliberately small YAML writer: block style, keys in insertion order, and every string that a
# YAML 1.1 reader (PyYAML, go-yaml) could take for something else written as a JSON string.
_PLAIN = re.compile(r"^[A-Za-z_/][A-Za-z0-9_./-]*$")
_YAML11_WORDS = frozenset({"y", "n", "yes", "no", "true", "false", "on", "off", "null"})
_FLOW_WIDTH = 80


def to_yaml(documents: Sequence[Mapping[str, Any]]) -> str:
    """The documents as one YAML stream, `---` before each (what `kubectl apply -f -` reads)."""
    return "".join("---\n" + "".join(_mapping(doc, 0)) for doc in documents)


def _mapping(data: Mapping[str, Any], indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    for key, value in data.items():
        head = f"{pad}{_scalar(key)}:"
        if isinstance(value, Mapping) and value:
            lines += [head + "\n", *_mapping(value, indent + 2)]
        elif isinstance(value, list) and value:
            flow = "[" + ", ".join(_scalar(v) for v in value) + "]"
            if _all_scalars(value) and len(head) + len(flow) < _FLOW_WIDTH:
                lines.append(f"{head} {flow}\n")  # values: ["9"], short and still one glance
            else:
                lines += [head + "\n", *_sequence(value, indent)]  # "- " at the key's indent
        else:
            lines.append(f"{head} {_scalar(value)}\n")
    return lines


def _sequence(items: Sequence[Any], indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    for item in items:
        if isinstance(item, Mapping) and item:
            body = _mapping(item, indent + 2)
            lines.append(f"{pad}- {body[0].lstrip()}")
            lines.extend(body[1:])
        elif isinstance(item, list) and item:
            lines.extend([f"{pad}-\n", *_sequence(item, indent + 2)])
        else:
            lines.append(f"{pad}- {_scalar(item)}\n")
    return lines


def _all_scalars(items: Sequence[Any]) -> bool:
    return not any(isinstance(item, Mapping | list) for item in items)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Mapping):
        return "{}"
    if isinstance(value, list):
        return "[]"
    if isinstance(value, str):
        if _PLAIN.fullmatch(value) and value.lower() not in _YAML11_WORDS:
            return value
        return _quoted(value)
    raise TypeError(f"cannot write {type(value).__name__} as YAML")


def _quoted(text: str) -> str:
    """A double-quoted YAML scalar in printable ASCII: everything else as \\u or \\U escapes
    (JSON's surrogate pairs for characters beyond the BMP are not YAML)."""
    out = []
    for char in text:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x20 <= code < 0x7F:
            out.append(char)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return '"' + "".join(out) + '"'
