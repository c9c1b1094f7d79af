"""Rendered Kubernetes manifests: strict offline validation, golden files, and their meaning.

Kubernetes objects (Job, Service) are validated by kubernetes-validate in strict mode (unknown
fields refused); JobSet and TrainJob against the vendored schemas in tests/fixtures/k8s/crds/
(see the generator there), whose embedded core types resolve to the same strict Kubernetes schema.
No cluster runs here: what the API server and the controllers would do is not tested.
"""

from __future__ import annotations

import json
import os
import subprocess
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from kubernetes_validate.utils import all_versions, latest_version, major_minor
from referencing import Registry, Resource

from cudabox.errors import UsageError
from cudabox.host import HostProfile
from cudabox.images.catalog import ImageSpec, load_catalog
from cudabox.jobs.affinity import Requirement, Term, gfd_labels, known_capabilities
from cudabox.jobs.manifests import (
    KINDS,
    KUBERNETES_VERSION,
    Kind,
    Manifests,
    render,
    shm_quantity,
    to_yaml,
)
from cudabox.jobs.spec import JobSpec
from cudabox.resolver import gpu_coverage, judge, select

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "tests" / "fixtures" / "k8s"
CATALOG = load_catalog(ROOT / "images" / "catalog.toml")
HOSTS = {
    name: HostProfile.load(ROOT / f"tests/fixtures/hosts/{name}.json")
    for name in ("h100", "gtx1080")
}
VERSIONS = (KUBERNETES_VERSION, major_minor(latest_version()))
CRDS = {
    ("jobset.x-k8s.io/v1alpha2", "JobSet"): "jobset.x-k8s.io_v1alpha2_JobSet",
    ("trainer.kubeflow.org/v1alpha1", "TrainJob"): "trainer.kubeflow.org_v1alpha1_TrainJob",
}
DIGEST = "sha256:" + "0123456789abcdef" * 4
PROGRAM = ("python", "-m", "cudabox.workloads.torch_smoke", "--steps", "300", "--out", "/out/run 1")


def job_spec(image: ImageSpec, nodes: int = 2, gpus: int = 0, **extra: Any) -> JobSpec:
    return JobSpec(
        name="smoke",
        image=image,
        image_ref=f"registry.example.com/cudabox/{image.name}@{DIGEST}",
        program=PROGRAM,
        nodes=nodes,
        nproc_per_node=max(gpus, 2),
        gpus_per_node=gpus,
        env={"NCCL_DEBUG": "WARN", "MASTER_ADDR": "laptop.local"},
        **extra,
    )


def cpu_spec(nodes: int = 2) -> JobSpec:
    return job_spec(CATALOG.get("torch-2.13-cpu"), nodes)


def gpu_spec(host: str = "h100", nodes: int = 2) -> JobSpec:
    """A job in the image the resolver selects for `host`, using all of its GPUs."""
    chosen = select(CATALOG, [HOSTS[host]], "torch", "cuda").selected
    assert chosen is not None
    return job_spec(chosen, nodes, gpus=len(HOSTS[host].gpus))


# Strict validation ---------------------------------------------------------------------------


def strict_definitions(version: str) -> dict[str, Any]:
    full = [v for v in all_versions() if major_minor(v) <= version][-1]
    folder = files("kubernetes_validate") / "kubernetes-json-schema" / f"v{full}-local-strict"
    return json.loads((folder / "_definitions.json").read_text())  # type: ignore[no-any-return]


@cache
def crd_validator(stem: str, version: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((K8S / "crds" / f"{stem}.schema.json").read_text())
    core = strict_definitions(version)
    registry: Registry = Registry().with_resources(
        [
            (schema["$id"], Resource.from_contents(schema)),
            (core["$id"], Resource.from_contents(core)),
        ]
    )
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate(obj: dict[str, Any], version: str) -> None:
    """Raises unless `obj` is valid, strictly, for Kubernetes `version`."""
    stem = CRDS.get((obj["apiVersion"], obj["kind"]))
    if stem is None:
        kubernetes_validate.validate(obj, version, strict=True)
    else:
        crd_validator(stem, version).validate(obj)


SPECS = {
    "cpu-1": lambda: cpu_spec(1),
    "cpu-2": lambda: cpu_spec(2),
    "h100-1": lambda: gpu_spec("h100", 1),
    "h100-2": lambda: gpu_spec("h100", 2),
    "gtx1080-3": lambda: gpu_spec("gtx1080", 3),
    "h100-out": lambda: job_spec(CATALOG.get("torch-2.15-cu132"), 2, 8, out_dir="/shared/runs"),
}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("spec", SPECS)
def test_every_rendered_object_passes_strict_validation(
    spec: str, kind: Kind, version: str
) -> None:
    manifests = render(SPECS[spec](), kind, namespace="ml")
    for obj in manifests.objects:
        validate(obj, version)
    # What is validated is what kubectl would read: the YAML text, parsed back.
    assert list(yaml.safe_load_all(manifests.to_yaml())) == list(manifests.objects)


JOBSET_POD = "spec.replicatedJobs.0.template.spec.template.spec"
TRAINJOB_POD = "spec.runtimePatches.0.trainingRuntimeSpec.template.spec." + JOBSET_POD[5:]
TERM = "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms.0"


@pytest.mark.parametrize(
    ("kind", "path", "value"),
    [
        ("job", "spec.completionmode", "Indexed"),  # a misspelt field
        ("job", "spec.template.spec.containers.0.image", 5),
        ("job", "spec.template.spec.affinity.nodeAffinity.required", {}),
        ("jobset", "spec.replicatedjobs", []),
        ("jobset", f"{JOBSET_POD}.containers.0.gpus", 1),  # the core types a CRD embeds
        ("trainjob", "spec.trainer.numNodes", "two"),
        ("trainjob", f"{TRAINJOB_POD}.{TERM}.matchExpression", []),
    ],
)
def test_validation_refuses_what_the_api_server_would(kind: Kind, path: str, value: Any) -> None:
    # Proof that the validators are not vacuous.
    obj = json.loads(json.dumps(render(gpu_spec(), kind).objects[-1]))
    *parents, last = path.split(".")
    target = obj
    for step in parents:
        target = target[int(step)] if step.isdigit() else target[step]
    target[last] = value
    with pytest.raises(jsonschema.ValidationError):
        validate(obj, KUBERNETES_VERSION)


# Golden files ----------------------------------------------------------------------------------

GOLDEN = {
    "job-cpu.yaml": lambda: render(cpu_spec(2), "job"),
    "job-gpu-h100.yaml": lambda: render(gpu_spec("h100", 2), "job"),
    "jobset-gpu-h100.yaml": lambda: render(gpu_spec("h100", 2), "jobset"),
    "trainjob-gpu-h100.yaml": lambda: render(gpu_spec("h100", 2), "trainjob"),
}


@pytest.mark.parametrize("name", GOLDEN)
def test_rendered_manifests_match_the_golden_files(name: str) -> None:
    """CUDABOX_UPDATE_GOLDEN=1 rewrites them; review the diff like code."""
    text = GOLDEN[name]().to_yaml()
    path = K8S / "golden" / name
    if os.environ.get("CUDABOX_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.read_text() == text


# What the manifests mean -----------------------------------------------------------------------


def pod_spec(manifests: Manifests) -> dict[str, Any]:
    top = manifests.objects[-1]
    if manifests.kind == "job":
        return top["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    if manifests.kind == "jobset":
        return top["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    patch = top["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]
    return patch["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def affinity_terms(pod: dict[str, Any]) -> list[Term]:
    """The affinity read back from the manifest, not from the renderer's objects."""
    selector = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    return [
        Term(
            tuple(
                Requirement(e["key"], e["operator"], tuple(e["values"]))
                for e in t["matchExpressions"]
            )
        )
        for t in selector["nodeSelectorTerms"]
    ]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("host", ["h100", "gtx1080"])
def test_the_affinity_of_the_rendered_job_admits_exactly_what_the_image_runs_on(
    host: str, kind: Kind
) -> None:
    spec = gpu_spec(host, 2)
    terms = affinity_terms(pod_spec(render(spec, kind)))
    in_terms = {
        (int(v["nvidia.com/gpu.compute.major"][0]), int(v["nvidia.com/gpu.compute.minor"][0]))
        for v in ({r.key: r.values for r in t.requirements if r.operator == "In"} for t in terms)
    }
    has_kernels = {
        cc for cc in known_capabilities() if gpu_coverage(cc, spec.image, _compat()) != "none"
    }
    assert in_terms == has_kernels
    for other, profile in HOSTS.items():
        admitted = any(t.matches(gfd_labels(profile)) for t in terms)
        fits = not any(r.blocking for r in judge(spec.image, profile, _compat()))
        assert admitted == fits, other
    assert any(t.matches(gfd_labels(HOSTS[host])) for t in terms)  # its own host, always


def _compat() -> Any:
    from cudabox.compat import load_compat

    return load_compat()


def test_an_indexed_job_with_a_headless_service_for_rank_0() -> None:
    manifests = render(gpu_spec("h100", 3), "job")
    service, job = manifests.objects
    assert (service["kind"], job["kind"]) == ("Service", "Job")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 3)
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"] == "smoke"
    labels = spec["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert manifests.rendezvous is not None and manifests.rendezvous.host == "smoke-0.smoke"


def test_gpu_limits_shm_and_environment() -> None:
    pod = pod_spec(render(gpu_spec("h100", 2), "job"))
    (container,) = pod["containers"]
    assert container["resources"] == {"limits": {"nvidia.com/gpu": "8"}}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "4Gi"}} in pod["volumes"]
    env = {e["name"]: e["value"] for e in container["env"]}
    # The user's NCCL settings pass; the rendezvous wins over a MASTER_ADDR from the laptop.
    assert env == {"NCCL_DEBUG": "WARN", "MASTER_ADDR": "smoke-0.smoke", "MASTER_PORT": "29500"}


@pytest.mark.parametrize("kind", KINDS)
def test_a_cpu_job_has_no_gpu_affinity_limits_or_tolerations(kind: Kind) -> None:
    manifests = render(cpu_spec(2), kind)
    assert manifests.affinity is None
    text = manifests.to_yaml()
    assert "nvidia.com" not in text
    assert "affinity" not in text and "tolerations" not in text


def test_a_cuda_image_without_gpus_is_a_cpu_job() -> None:
    manifests = render(job_spec(CATALOG.get("torch-2.15-cu132"), 2, gpus=0), "job")
    assert manifests.affinity is None and "nvidia.com" not in manifests.to_yaml()


def test_one_node_runs_standalone_without_a_service() -> None:
    manifests = render(gpu_spec("h100", 1), "job")
    (job,) = manifests.objects
    assert manifests.rendezvous is None
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:3] == ["torchrun", "--nproc-per-node=8", "--standalone"]
    assert "subdomain" not in job["spec"]["template"]["spec"]


@pytest.mark.parametrize(
    ("kind", "rank0"),
    [
        ("job", "smoke-0.smoke"),
        ("jobset", "smoke-node-0-0.smoke"),
        ("trainjob", "smoke-node-0-0.smoke"),
    ],
)
def test_the_pod_command_meets_rank_0_by_name_and_rank_0_hosts_it(
    tmp_path: Path, kind: Kind, rank0: str
) -> None:
    """Run the rendered command with /bin/sh and a fake torchrun that prints its arguments."""
    manifests = render(cpu_spec(3), kind)
    top = manifests.objects[-1]
    command = (
        top["spec"]["trainer"]["command"]
        if kind == "trainjob"
        else pod_spec(manifests)["containers"][0]["command"]
    )
    fake = tmp_path / "torchrun"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    fake.chmod(0o755)

    def argv(index: str) -> list[str]:
        env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "JOB_COMPLETION_INDEX": index}
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        return done.stdout.splitlines()

    others, first = argv("2"), argv("0")
    assert f"--rdzv-endpoint={rank0}:29500" in others
    assert "--rdzv-endpoint=localhost:29500" in first  # torch hosts the store where it matches
    for words in (first, others):
        assert (
            "--nnodes=3" in words and "--rdzv-backend=c10d" in words and "--rdzv-id=smoke" in words
        )
        # The program's words survive the shell, the space in "/out/run 1" included.
        assert words[-6:] == [
            "-m",
            "cudabox.workloads.torch_smoke",
            "--steps",
            "300",
            "--out",
            "/out/run 1",
        ]


def test_trainjob_asks_the_trainer_runtime_for_nodes_processes_and_gpus() -> None:
    top = render(gpu_spec("h100", 2), "trainjob", runtime="torch-cuda").objects[0]
    spec = top["spec"]
    assert spec["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
        "name": "torch-cuda",
    }
    trainer = spec["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 8)
    assert trainer["resourcesPerNode"] == {"limits": {"nvidia.com/gpu": "8"}}
    patch = pod_spec(render(gpu_spec("h100", 2), "trainjob"))
    assert patch["containers"] == [
        {"name": "node", "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}]}
    ]


def test_out_dir_is_the_same_shared_folder_on_every_node() -> None:
    pod = pod_spec(
        render(job_spec(CATALOG.get("torch-2.13-cpu"), 2, out_dir="/shared/runs"), "job")
    )
    assert {"name": "out", "mountPath": "/shared/runs"} in pod["containers"][0]["volumeMounts"]
    assert {
        "name": "out",
        "hostPath": {"path": "/shared/runs", "type": "DirectoryOrCreate"},
    } in pod["volumes"]


def test_namespace_and_labels() -> None:
    for obj in render(cpu_spec(2), "job", namespace="research").objects:
        assert obj["metadata"]["namespace"] == "research"
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "cudabox"
        assert obj["metadata"]["annotations"] == {"cudabox.image": "torch-2.13-cpu"}


def test_refusals() -> None:
    with pytest.raises(UsageError, match="CPU image"):
        render(job_spec(CATALOG.get("torch-2.13-cpu"), 2, gpus=1))
    with pytest.raises(UsageError, match="--k8s-kind"):
        render(cpu_spec(), "pytorchjob")  # type: ignore[arg-type]
    for name in ("Smoke", "9lives", "a_b", "smoke\n", "x" * 62):
        spec = JobSpec(
            name=name, image=CATALOG.get("torch-2.13-cpu"), image_ref="x", program=PROGRAM, nodes=2
        )
        with pytest.raises(UsageError, match="cannot name Kubernetes objects"):
            render(spec)
    # 63 characters is the limit of a pod host name, "<name>-<index>" included.
    fits = JobSpec(
        name="x" * 61, image=CATALOG.get("torch-2.13-cpu"), image_ref="x", program=PROGRAM, nodes=10
    )
    render(fits)
    with pytest.raises(UsageError):
        render(
            JobSpec(
                name="x" * 61,
                image=CATALOG.get("torch-2.13-cpu"),
                image_ref="x",
                program=PROGRAM,
                nodes=11,
            )
        )


def test_shm_quantity_reads_docker_sizes() -> None:
    assert [shm_quantity(s) for s in ("4g", "4G", "4gb", "512m", "1.5g", "64k", "1024", "100")] == [
        "4Gi",
        "4Gi",
        "4Gi",
        "512Mi",
        "1536Mi",
        "64Ki",
        "1Ki",
        "100",
    ]
    for bad in ("", "4x", "-1g", "0", "0.5"):
        with pytest.raises(UsageError):
            shm_quantity(bad)


# The YAML writer -------------------------------------------------------------------------------

scalars = st.one_of(
    st.booleans(),
    st.none(),
    st.integers(-(2**40), 2**40),
    st.text(max_size=12),
    st.sampled_from(
        [
            "yes",
            "No",
            "on",
            "OFF",
            "y",
            "n",
            "null",
            "~",
            "1.5",
            "0x1F",
            "1e3",
            "-",
            "- a",
            "a: b",
            "#x",
            "@x",
            "*a",
            "&a",
            "!t",
            "%x",
            "'",
            '"',
            "\t",
            "a\nb",
            "/dev/shm",
            "[1]",
            "{}",
            ".inf",
            "2024-01-01",
            "0777",
        ]
    ),
)
documents = st.dictionaries(
    st.text(min_size=1, max_size=8),
    st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(st.text(min_size=1, max_size=6), inner, max_size=4)
        ),
        max_leaves=20,
    ),
    max_size=6,
)


@settings(max_examples=120, deadline=None)
@given(st.lists(documents, min_size=1, max_size=3))
def test_yaml_round_trips_through_a_yaml_reader(docs: list[dict[str, Any]]) -> None:
    assert list(yaml.safe_load_all(to_yaml(docs))) == [d or None for d in docs]
