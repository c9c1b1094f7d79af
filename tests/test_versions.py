from __future__ import annotations

import pytest

from cudabox.versions import Arch, CudaVersion, DriverVersion, parse_cc


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8.6", "8.6"),
        ("sm_86", "8.6"),
        ("sm_90a", "9.0a"),
        ("compute_120", "12.0"),
        ("100", "10.0"),
        ("10.0f", "10.0f"),
    ],
)
def test_arch_spellings(text: str, expected: str) -> None:
    assert str(Arch.parse(text)) == expected


def test_versions_compare_numerically() -> None:
    assert DriverVersion.parse("580.95.05") > DriverVersion.parse("580.9.5")
    assert str(DriverVersion.parse("570.26")) == "570.26"
    assert CudaVersion.from_int(12040) == CudaVersion(12, 4) < CudaVersion.parse("12.10")
    with pytest.raises(ValueError, match=r"MAJOR\.MINOR"):
        parse_cc("9")
