"""A project's images as candidates: the extensions' GPU code in the resolver's rule, the choice
over a fleet in a project folder, a named image judged on the hosts, hand-derived images."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from cudabox.choice import Request, catalog_candidates, choose, project_candidates
from cudabox.cli import main
from cudabox.compat import load_compat
from cudabox.container import ImageInfo
from cudabox.errors import DataError, NoImageFits, UsageError
from cudabox.host import HostProfile
from cudabox.images.catalog import Catalog, Extension, load_catalog
from cudabox.images.labels import LAYERS, labels_for
from cudabox.images.lock import lock_digest
from cudabox.project.candidates import project_specs
from cudabox.project.declaration import Project, candidate_images, load_project
from cudabox.project.lockfile import (
    LOCK_FILE,
    ImageLock,
    LockedPackage,
    ProjectLock,
    lock_inputs,
    write_lock,
)
from cudabox.resolver import judge, select
from cudabox.targets.kubernetes import refuse_unbaked
from cudabox.versions import Arch

HOSTS = Path(__file__).parent.parent / "fixtures" / "hosts"
HASH = "sha256:" + "5" * 64
NEWER, OLDER = "torch-2.10-cu128", "torch-2.7-cu126"  # both fit an A100 + H100 fleet alone


def host(name: str) -> HostProfile:
    return HostProfile.load(HOSTS / f"{name}.json")


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def ext_package(sass: tuple[str, ...], runtime: tuple[int, ...] = (12,)) -> LockedPackage:
    return LockedPackage(
        "torch-scatter",
        "2.1.2",
        (HASH,),
        9_000_000,
        ("torch_scatter",),
        direct=True,
        sass=tuple(Arch.parse(a) for a in sass),
        cuda_runtime=runtime,
    )


def make_project(root: Path, bake: bool = False) -> Project:
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(
        '[project]\nname = "demo"\nversion = "0.1"\ndependencies = ["torch-scatter"]\n\n'
        f'[tool.cudabox]\nframework = "torch"\nimages = ["{NEWER}", "{OLDER}"]\n'
        f"bake = {'true' if bake else 'false'}\n"
    )
    return load_project(root)


def write_project_lock(
    project: Project, catalog: Catalog, archs: dict[str, LockedPackage]
) -> ProjectLock:
    """A current lock written by hand: each image's entry holds the extension given for it."""
    images = candidate_images(project, catalog)
    lock = ProjectLock(
        project.name,
        lock_inputs(project, images),
        tuple(ImageLock(spec.name, lock_digest(spec.lock), (archs[spec.name],)) for spec in images),
    )
    write_lock(project.root / LOCK_FILE, lock)
    return lock


# ---- the resolver: extensions' GPU code --------------------------------------------------------


def test_an_extension_without_code_for_a_gpu_rules_the_image_out_and_says_which(
    catalog: Catalog,
) -> None:
    image = replace(
        catalog.get(NEWER),
        extensions=(Extension("torch-scatter", "2.1.2", (Arch.parse("8.0"),)),),
    )
    compat = load_compat()
    assert not [r for r in judge(image, host("a100"), compat) if r.blocking]
    (blocker,) = [r for r in judge(image, host("h100"), compat) if r.blocking]
    assert blocker.kind == "extension"
    assert "torch-scatter 2.1.2 has sm_80 only" in blocker.text
    assert "CC 9.0) is sm_90" in blocker.text
    assert blocker.fix is not None and "build of torch-scatter with sm_90" in blocker.fix


def test_an_extensions_ptx_reaches_newer_gpus_as_a_note(catalog: Catalog) -> None:
    image = replace(
        catalog.get(NEWER),
        extensions=(Extension("ext", "1", (), (Arch.parse("8.0"),)),),
    )
    reasons = judge(image, host("h100"), load_compat())
    assert not [r for r in reasons if r.blocking]
    assert any("ext 1 runs JIT-compiled PTX" in r.text for r in reasons)


def test_an_extension_linking_another_cuda_major_rules_the_image_out_everywhere(
    catalog: Catalog,
) -> None:
    ext = Extension("vllm", "0.2.0", (Arch.parse("8.0"), Arch.parse("9.0")), (), (11,))
    image = replace(catalog.get(NEWER), extensions=(ext,))
    chosen = select(replace(catalog, images=(image,)), [host("a100")], "torch")
    assert chosen.selected is None
    (blocker,) = chosen.verdicts[0].blockers
    assert blocker.kind == "extension-cuda"
    assert "vllm 0.2.0 links libcudart.so.11; the image has CUDA 12.8" in blocker.text


# ---- the project's candidates ------------------------------------------------------------------


def test_project_specs_are_the_project_images_with_the_locks_extensions(
    tmp_path: Path, catalog: Catalog
) -> None:
    project = make_project(tmp_path)
    lock = write_project_lock(
        project, catalog, {NEWER: ext_package(("8.0",)), OLDER: ext_package(("8.0", "9.0"))}
    )
    specs = {s.base_name: s for s in project_specs(project, lock, catalog)}
    assert set(specs) == {NEWER, OLDER}
    newer = specs[NEWER]
    assert (newer.tag, newer.project, newer.name) == (
        f"cudabox-project/demo:{NEWER}",
        "demo",
        NEWER,
    )
    assert newer.extensions == (
        Extension("torch-scatter", "2.1.2", (Arch.parse("8.0"),), (), (12,)),
    )
    assert newer.sass_archs == catalog.get(NEWER).sass_archs  # the framework's, untouched


def test_a_stale_lock_is_exit_6_with_the_fix_cudabox_lock(tmp_path: Path, catalog: Catalog) -> None:
    project = make_project(tmp_path)
    lock = write_project_lock(
        project, catalog, {NEWER: ext_package(("8.0",)), OLDER: ext_package(("8.0",))}
    )
    (tmp_path / "pyproject.toml").write_text(
        (tmp_path / "pyproject.toml")
        .read_text()
        .replace('"torch-scatter"', '"torch-scatter", "rich"')
    )
    with pytest.raises(DataError) as caught:
        project_candidates(load_project(tmp_path), lock, catalog)
    assert caught.value.exit_code == 6
    assert "stale" in caught.value.message and "cudabox lock" in (caught.value.fix or "")


def test_select_in_a_project_folder_picks_the_image_whose_extensions_cover_both_hosts(
    tmp_path: Path,
    catalog: Catalog,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    project = make_project(tmp_path)
    write_project_lock(
        project, catalog, {NEWER: ext_package(("8.0",)), OLDER: ext_package(("8.0", "9.0"))}
    )
    monkeypatch.chdir(tmp_path)
    hosts = ["--host", str(HOSTS / "a100.json"), "--host", str(HOSTS / "h100.json")]
    assert main(["select", "--framework", "torch", *hosts]) == 0
    out = capsys.readouterr().out
    assert f"selected: {OLDER} (cudabox-project/demo:{OLDER})" in out
    newer_row = next(
        line for line in out.splitlines() if line.startswith(f"cudabox-project/demo:{NEWER}")
    )
    assert "hgx-h100: torch-scatter 2.1.2 has sm_80 only" in newer_row
    assert main(["select", "--framework", "torch", "--json", *hosts]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["selected"]["tag"], data["selected"]["project"]) == (
        f"cudabox-project/demo:{OLDER}",
        "demo",
    )
    newer = next(c for c in data["candidates"] if c["name"] == NEWER)
    assert newer["extensions"] == [
        {"name": "torch-scatter", "version": "2.1.2", "sass": ["8.0"], "ptx": []}
    ]
    assert [b["kind"] for b in newer["blockers"]] == ["extension"]
    # The same fleet without the project (--no-project) takes the newer catalog image.
    assert main(["select", "--framework", "torch", "--no-project", *hosts]) == 0
    assert f"selected: {NEWER} (cudabox/{NEWER}:latest)" in capsys.readouterr().out


def test_select_in_a_project_folder_where_no_extension_covers_a_host_is_exit_3(
    tmp_path: Path, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = make_project(tmp_path)
    write_project_lock(
        project, catalog, {NEWER: ext_package(("8.0",)), OLDER: ext_package(("8.0",))}
    )
    monkeypatch.chdir(tmp_path)
    hosts = ["--host", str(HOSTS / "a100.json"), "--host", str(HOSTS / "h100.json")]
    assert main(["select", "--framework", "torch", *hosts]) == 3


def test_kubernetes_refuses_a_project_image_without_its_code_baked(
    tmp_path: Path, catalog: Catalog
) -> None:
    packages = {NEWER: ext_package(("8.0", "9.0")), OLDER: ext_package(("8.0", "9.0"))}
    mounted = make_project(tmp_path / "mounted")
    candidates = project_candidates(
        mounted, write_project_lock(mounted, catalog, packages), catalog
    )
    with pytest.raises(UsageError) as caught:
        refuse_unbaked(candidates.catalog.images[0], candidates)
    assert caught.value.exit_code == 2 and "bake = true" in (caught.value.fix or "")
    baked = make_project(tmp_path / "baked", bake=True)
    candidates = project_candidates(baked, write_project_lock(baked, catalog, packages), catalog)
    refuse_unbaked(candidates.catalog.images[0], candidates)  # baked: no refusal


# ---- a named image goes through the fit check -------------------------------------------------


def test_a_named_image_that_does_not_fit_is_exit_3_naming_the_reason(catalog: Catalog) -> None:
    request = Request("torch", image="torch-2.15-cu132")
    with pytest.raises(NoImageFits) as caught:
        choose(request, [host("a100")], catalog_candidates(catalog))
    assert "--image torch-2.15-cu132 does not fit this host" in caught.value.message
    assert "driver 550.90.07 supports CUDA 12.4" in caught.value.message
    assert "--skip-fit-check" in (caught.value.fix or "")


def test_skip_fit_check_runs_it_and_says_so(catalog: Catalog) -> None:
    request = Request("torch", image="torch-2.15-cu132", skip_fit_check=True)
    chosen = choose(request, [host("a100")], catalog_candidates(catalog))
    assert chosen.image.name == "torch-2.15-cu132"
    assert chosen.why == "named with --image (fit check skipped)"
    (warning,) = chosen.warnings
    assert warning.startswith("--skip-fit-check: running torch-2.15-cu132 although it does not fit")


def test_a_named_gpu_image_with_cpu_is_not_judged_on_gpus(catalog: Catalog) -> None:
    request = Request("torch", image="torch-2.15-cu132", flavor="cpu")
    assert choose(request, [host("cpu-only")], catalog_candidates(catalog)).warnings == ()


class Engine:
    def __init__(self, infos: list[ImageInfo]) -> None:
        self.infos = infos

    def image(self, ref: str) -> ImageInfo | None:
        return next((i for i in self.infos if ref in i.tags), None)

    def images_with_label(self, label: str) -> list[ImageInfo]:
        return [i for i in self.infos if label in i.labels]


def labelled(tag: str, layers: int, label: str | None) -> ImageInfo:
    labels = labels_for(load_catalog().get("torch-2.13-cpu"), "0" * 64)
    if label is not None:
        labels[LAYERS] = label
    diff_ids = tuple(f"sha256:{i:064x}" for i in range(layers))
    return ImageInfo("sha256:" + "1" * 64, (tag,), 1, labels, {}, "", "", diff_ids)


@pytest.mark.parametrize(
    ("layers", "label", "said"),
    [
        (9, "7", "mine/derived:1 has 2 layers past what cudabox labelled"),
        (7, "7", None),  # as labelled
        (9, None, None),  # no label: nothing to compare
    ],
)
def test_a_labelled_image_with_layers_past_its_label_is_said_to_be_hand_derived(
    catalog: Catalog, layers: int, label: str | None, said: str | None
) -> None:
    engine = Engine([labelled("mine/derived:1", layers, label)])
    request = Request("torch", image="mine/derived:1")
    chosen = choose(request, [host("cpu-only")], catalog_candidates(catalog), engine=engine)
    if said is None:
        assert chosen.warnings == ()
    else:
        (warning,) = chosen.warnings
        assert warning.startswith(said)
        assert "judged as torch 2.13.0 cpu (torch-2.13-cpu)" in warning
        assert warning.endswith("which its extra layers may have changed")
