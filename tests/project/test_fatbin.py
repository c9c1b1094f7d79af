"""The fatbin reader over synthetic ELF64 files and wheels (layout: project/elfbuild.py), checked
against binutils' readelf where it exists, and over the real torch CPU wheel of this machine."""

from __future__ import annotations

import io
import shutil
import subprocess
import time
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from cudabox.errors import DataError
from cudabox.project.fatbin import GpuCode, read_file, read_shared_object, read_wheel
from cudabox.versions import Arch
from project.elfbuild import Entry, fatbin, shared_object

TORCH_CPU_WHEEL = Path("/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")
# NVIDIA's cuRAND for CUDA 13.0 (57 MiB), in this machine's local package index.
CURAND_WHEEL = Path(
    "/opt/pypi-more/files/nvidia_curand-10.4.0.35-py3-none-manylinux_2_27_x86_64.whl"
)


def archs(*names: str) -> tuple[Arch, ...]:
    return tuple(Arch.parse(n) for n in names)


def typical() -> bytes:
    """sm_80 + sm_90 SASS and compute_90 PTX, linking the CUDA 12 runtime."""
    code = fatbin([Entry("sass", 80), Entry("sass", 90), Entry("ptx", 90)])
    return shared_object(["libcudart.so.12", "libc.so.6"], [(".nv_fatbin", code)])


def test_reads_sass_ptx_and_the_cuda_runtime_major() -> None:
    found = read_shared_object(io.BytesIO(typical()), "ext.so")
    assert found is not None
    assert found.code == GpuCode(sass=archs("8.0", "9.0"), ptx=archs("9.0"))
    assert found.needed == ("libcudart.so.12", "libc.so.6")
    assert found.cuda_runtime_majors == (12,)
    assert [e.compressed for e in found.entries] == [False, False, False]


@pytest.mark.skipif(not shutil.which("readelf"), reason="binutils' readelf is not installed")
def test_the_synthetic_file_is_an_elf_readelf_reads_the_same_way(tmp_path: Path) -> None:
    path = tmp_path / "ext.so"
    path.write_bytes(typical())
    out = subprocess.run(
        ["readelf", "-W", "-S", "-d", str(path)], capture_output=True, text=True, check=True
    )
    assert "warning" not in out.stderr.lower(), out.stderr
    assert ".nv_fatbin" in out.stdout
    assert "Shared library: [libcudart.so.12]" in out.stdout
    assert read_file(path) == read_shared_object(io.BytesIO(path.read_bytes()), str(path))


def test_several_containers_padding_relfatbin_compression_and_long_entry_headers() -> None:
    first = fatbin([Entry("sass", 75), Entry("ptx", 75)])
    second = fatbin(
        [
            Entry("sass", 100, compressed=True, header_size=72),
            Entry("ptx", 120, compressed=True, compression_flag=0x8000),
        ]
    )
    # Containers sit 8-byte aligned with zero padding between them, as the linker places them.
    section = first + b"\0" * 24 + second
    relocatable = fatbin([Entry("sass", 86)])
    so = shared_object(
        ["libcudart.so.13"], [(".nv_fatbin", section), ("__nv_relfatbin", relocatable)]
    )
    found = read_shared_object(io.BytesIO(so), "two.so")
    assert found is not None
    assert found.code == GpuCode(sass=archs("7.5", "8.6", "10.0"), ptx=archs("7.5", "12.0"))
    assert [e.compressed for e in found.entries] == [False, False, True, True, False]
    assert found.cuda_runtime_majors == (13,)


def test_other_sections_are_not_read_as_fatbins() -> None:
    # The same bytes in a section of another name are not device code.
    so = shared_object([], [(".rodata", fatbin([Entry("sass", 80)]))])
    found = read_shared_object(io.BytesIO(so), "plain.so")
    assert found is not None and found.code.empty and found.needed == ()


def test_a_linker_script_named_so_is_skipped_and_elf32_is_refused() -> None:
    assert read_shared_object(io.BytesIO(b"/* GNU ld script */\nINPUT(libfoo.so.1)\n"), "x") is None
    elf32 = bytearray(typical())
    elf32[4] = 1
    with pytest.raises(DataError, match="64-bit little-endian"):
        read_shared_object(io.BytesIO(bytes(elf32)), "old.so")


def test_truncated_and_malformed_files_name_the_file_and_the_offset() -> None:
    whole = typical()
    with pytest.raises(DataError, match=r"cut\.so: the section table .* past the end"):
        read_shared_object(io.BytesIO(whole[:-10]), "cut.so")
    bad = fatbin([Entry("sass", 80)])
    bad = bad[:16] + b"\x07\x00" + bad[18:]  # the entry's kind: neither PTX nor ELF
    so = shared_object([], [(".nv_fatbin", bad)])
    with pytest.raises(
        DataError, match=r"bad\.so: fatbin entry at byte \d+ of \.nv_fatbin has kind 7"
    ):
        read_shared_object(io.BytesIO(so), "bad.so")
    huge = fatbin([Entry("sass", 80)])
    huge = huge[:8] + (10**9).to_bytes(8, "little") + huge[16:]
    so = shared_object([], [(".nv_fatbin", huge)])
    with pytest.raises(DataError, match="past the section's end"):
        read_shared_object(io.BytesIO(so), "huge.so")


def test_a_file_without_a_section_table_has_no_code() -> None:
    stripped = bytearray(typical())
    stripped[0x28:0x30] = bytes(8)  # e_shoff = 0, as sstrip leaves it
    found = read_shared_object(io.BytesIO(bytes(stripped)), "stripped.so")
    assert found is not None and found.code.empty


def make_wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as wheel:
        for name, data in members.items():
            wheel.writestr(name, data)
    return path


def test_a_wheel_gives_each_shared_object_and_the_union(tmp_path: Path) -> None:
    newer = shared_object(
        ["libcudart.so.13"], [(".nv_fatbin", fatbin([Entry("sass", 120), Entry("ptx", 120)]))]
    )
    wheel = make_wheel(
        tmp_path / "ext-1.0-cp311-cp311-manylinux_2_28_x86_64.whl",
        {
            "ext/__init__.py": b"",
            "ext/_C.cpython-311-x86_64-linux-gnu.so": typical(),
            "ext/lib/libnew.so.1.2": newer,
            "ext/lib/libscript.so": b"INPUT(libnew.so.1.2)\n",
            "ext/lib/libhost.so": shared_object(["libc.so.6"]),
            "ext-1.0.dist-info/RECORD": b"",
        },
    )
    found = read_wheel(wheel)
    names = [f.name.split(":", 1)[1] for f in found.files]
    assert names == [
        "ext/_C.cpython-311-x86_64-linux-gnu.so",
        "ext/lib/libnew.so.1.2",
        "ext/lib/libhost.so",
    ]
    assert found.code == GpuCode(sass=archs("8.0", "9.0", "12.0"), ptx=archs("9.0", "12.0"))
    assert found.cuda_runtime_majors == (12, 13)
    assert [f.name.rsplit("/", 1)[1] for f in found.with_code] == [
        "_C.cpython-311-x86_64-linux-gnu.so",
        "libnew.so.1.2",
    ]


def test_a_large_member_is_streamed_not_loaded(tmp_path: Path) -> None:
    size = 96 * 1024 * 1024
    so = shared_object(
        ["libcudart.so.12"], [(".nv_fatbin", fatbin([Entry("sass", 90)]))], filler=size
    )
    wheel = make_wheel(tmp_path / "big-1.0-py3-none-any.whl", {"big/libbig.so": so})
    del so
    tracemalloc.start()
    try:
        found = read_wheel(wheel)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found.code == GpuCode(sass=archs("9.0"))
    # Loading the member whole would need its 96 MiB at least; streaming needs about 2 MiB.
    assert peak < 16 * 1024 * 1024, (
        f"peak {peak / 2**20:.0f} MiB reading a {size / 2**20:.0f} MiB member"
    )


def test_names_far_from_the_section_table_are_still_found(tmp_path: Path) -> None:
    # 1 MiB between .shstrtab and the table: the names lie outside the tail window, and reading
    # them means going back in a compressed member (decompressing it again from its start).
    so = shared_object(
        ["libcudart.so.12"], [(".nv_fatbin", fatbin([Entry("sass", 89)]))], trailing=1 << 20
    )
    wheel = make_wheel(tmp_path / "far-1.0-py3-none-any.whl", {"far/libfar.so": so})
    [found] = read_wheel(wheel).files
    assert found.code == GpuCode(sass=archs("8.9")) and found.needed == ("libcudart.so.12",)
    assert read_shared_object(io.BytesIO(so), "far.so") == read_shared_object(
        io.BytesIO(so), "far.so", cheap_seek=False
    )


def test_not_a_wheel_is_a_data_error(tmp_path: Path) -> None:
    bogus = tmp_path / "x-1.0-py3-none-any.whl"
    bogus.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="is not a wheel"):
        read_wheel(bogus)


@pytest.mark.skipif(
    not TORCH_CPU_WHEEL.is_file(), reason=f"{TORCH_CPU_WHEEL} is not on this machine"
)
def test_the_real_torch_cpu_wheel_has_no_gpu_code() -> None:
    start = time.monotonic()
    found = read_wheel(TORCH_CPU_WHEEL)
    seconds = time.monotonic() - start
    by_name = {f.name.split(":", 1)[1]: f for f in found.files}
    assert "torch/lib/libtorch_cpu.so" in by_name
    assert "libc10.so" in by_name["torch/lib/libtorch_cpu.so"].needed
    assert found.code.empty and found.cuda_runtime_majors == ()
    assert seconds < 60, f"{seconds:.1f} s for a {TORCH_CPU_WHEEL.stat().st_size >> 20} MiB wheel"


@pytest.mark.skipif(not CURAND_WHEEL.is_file(), reason=f"{CURAND_WHEEL} is not on this machine")
def test_a_real_cuda_13_wheel() -> None:
    """CUDA 13.0 builds for sm_75 and newer (it dropped Maxwell, Pascal and Volta): cuRAND carries
    SASS for each such GPU and PTX for the newest, and links the CUDA runtime statically."""
    found = read_wheel(CURAND_WHEEL)
    [library] = found.with_code
    assert library.name.endswith("nvidia/cu13/lib/libcurand.so.10")
    assert found.code == GpuCode(
        sass=archs("7.5", "8.0", "8.6", "8.9", "9.0", "10.0", "10.3", "12.0", "12.1"),
        ptx=archs("12.1"),
    )
    assert found.cuda_runtime_majors == () and "libc.so.6" in library.needed
    # Its PTX is compressed (flag 0x8000), its SASS is not.
    assert {e.kind for e in library.entries if e.compressed} == {"ptx"}
