"""Lock files: parsing, the uv command, reproducibility of the header."""

from __future__ import annotations

import stat
from dataclasses import replace
from pathlib import Path

import pytest

from cudabox.errors import DataError
from cudabox.images.catalog import ImageSpec, load_catalog
from cudabox.images.lock import lock_digest, parse_lock
from cudabox.images.locking import compile_args, header, write_lock

IMAGES = Path(__file__).resolve().parents[2] / "images"
H1 = "sha256:" + "a" * 64
H2 = "sha256:" + "b" * 64


def test_parse_lock_reads_pins_hashes_and_skips_comments() -> None:
    text = f"""# header
torch==2.13.0+cpu \\
    --hash={H1} \\
    --hash={H2}
    # via -r torch.in
Typing_Extensions==4.16.0 ; python_version >= "3.9" \\
    --hash={H1}
"""
    pins = parse_lock(text)
    assert set(pins) == {"torch", "typing-extensions"}
    assert pins["torch"].version == "2.13.0+cpu"
    assert pins["torch"].hashes == (H1, H2)
    assert pins["typing-extensions"].version == "4.16.0"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("six==1.17.0\n", "no --hash"),
        (f"six>=1.0 --hash={H1}\n", "not pinned"),
        ("--index-url https://example.org/simple\n", "options"),
    ],
)
def test_parse_lock_rejects_what_require_hashes_would_refuse(text: str, needle: str) -> None:
    with pytest.raises(DataError, match=needle):
        parse_lock(text)


def test_every_catalog_lock_parses_and_pins_its_framework_numpy_and_nvml() -> None:
    catalog = load_catalog(IMAGES / "catalog.toml")
    for spec in catalog.images:
        pins = parse_lock(spec.lock.read_text())
        framework = (
            "tensorflow-cpu"
            if spec.name.endswith("cpu") and spec.framework == "tensorflow"
            else spec.framework
        )
        assert framework in pins, spec.name
        assert pins[framework].version.split("+")[0] == spec.framework_version, spec.name
        assert {"numpy", "nvidia-ml-py"} <= set(pins), spec.name
        assert f"cudabox lock {spec.name}" in spec.lock.read_text(), "the header names the command"


def test_tf_cuda_lock_holds_the_tested_cuda_libraries() -> None:
    spec = load_catalog(IMAGES / "catalog.toml").get("tf-2.21-cu125")
    pins = parse_lock(spec.lock.read_text())
    assert pins["nvidia-cuda-runtime-cu12"].version.startswith("12.5.")
    assert pins["nvidia-cudnn-cu12"].version.startswith("9.3.")
    nccl = tuple(int(p) for p in pins["nvidia-nccl-cu12"].version.split("."))
    assert nccl >= (2, 27, 7)


def test_compile_args_use_the_image_platform_and_wheelhouse_only_where_needed(
    tmp_path: Path,
) -> None:
    catalog = load_catalog(IMAGES / "catalog.toml")
    cpu = catalog.get("torch-2.13-cpu")
    cuda = catalog.get("torch-2.15-cu132")
    args = compile_args(cpu, (tmp_path,), None)
    assert args[args.index("--python-version") + 1] == "3.11"
    assert args[args.index("--python-platform") + 1] == "x86_64-manylinux_2_28"
    assert "--generate-hashes" in args
    assert args[args.index("--find-links") + 1] == str(tmp_path)
    assert "--find-links" not in compile_args(cuda, (tmp_path,), None)
    # Without a wheelhouse the +cpu image resolves from its own index.
    assert cpu.index_url in compile_args(cpu, (), None)


def test_header_has_no_host_path(tmp_path: Path) -> None:
    cpu = load_catalog(IMAGES / "catalog.toml").get("torch-2.13-cpu")
    text = header(cpu, compile_args(cpu, (tmp_path,), None), "torch/requirements/torch-2.13-cpu.in")
    assert str(tmp_path) not in text
    assert "$CUDABOX_WHEELHOUSE" in text


def test_lock_digest_changes_with_one_byte(tmp_path: Path) -> None:
    lock = tmp_path / "x.txt"
    lock.write_text("a")
    first = lock_digest(lock)
    lock.write_text("b")
    assert lock_digest(lock) != first and len(first) == 64


def _spec_with_lock(lock: Path) -> ImageSpec:
    return replace(load_catalog(IMAGES / "catalog.toml").get("torch-2.13-cpu"), lock=lock)


LOCK_TEXT = f"torch==2.13.0+cpu --hash={H1}\nnumpy==2.4.6 --hash={H2}\n"


def test_write_lock_writes_a_new_lock_whole_and_counts_its_pins(tmp_path: Path) -> None:
    lock = tmp_path / "torch" / "lock.txt"
    locked = write_lock(_spec_with_lock(lock), LOCK_TEXT)
    assert lock.read_text() == LOCK_TEXT
    assert (locked.packages, locked.changed, locked.sha256) == (2, True, lock_digest(lock))
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["lock.txt"]  # no temp left


def test_write_lock_leaves_an_unchanged_lock_alone(tmp_path: Path) -> None:
    lock = tmp_path / "lock.txt"
    lock.write_text(LOCK_TEXT)
    lock.chmod(0o644)
    before = lock.stat()
    assert write_lock(_spec_with_lock(lock), LOCK_TEXT).changed is False
    assert lock.stat().st_mtime_ns == before.st_mtime_ns and lock.stat().st_ino == before.st_ino


def test_write_lock_replaces_the_file_atomically_and_keeps_its_mode(tmp_path: Path) -> None:
    lock = tmp_path / "lock.txt"
    lock.write_text("old\n")
    lock.chmod(0o640)
    inode = lock.stat().st_ino
    assert write_lock(_spec_with_lock(lock), LOCK_TEXT).changed is True
    # A rename, not a rewrite in place: a build reading the old lock never sees half a file.
    assert lock.stat().st_ino != inode
    assert stat.S_IMODE(lock.stat().st_mode) == 0o640


def test_write_lock_refuses_text_it_cannot_read_back(tmp_path: Path) -> None:
    lock = tmp_path / "lock.txt"
    lock.write_text(LOCK_TEXT)
    with pytest.raises(DataError, match="not pinned"):
        write_lock(_spec_with_lock(lock), "torch>=2\n")
    assert lock.read_text() == LOCK_TEXT  # the good lock stays


def test_lock_names_are_pep_503_normalised() -> None:
    pins = parse_lock(f"Typing_Extensions==4.16.0 --hash={H1}\nruamel.yaml==0.18 --hash={H2}\n")
    assert sorted(pins) == ["ruamel-yaml", "typing-extensions"]
