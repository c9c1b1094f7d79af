"""The host layer against fake-NVML scenarios: one per real failure, status and fix asserted."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from cudabox import nvml
from cudabox.doctor.health_data import load_limits, parse_limits
from cudabox.doctor.host_layer import (
    HostReadings,
    host_checks,
    read_kernel_module,
    read_pci_gpus,
    replay_delta_check,
)
from cudabox.doctor.model import Check
from cudabox.errors import DataError
from fakenvml import SCENARIOS, FakeGpu, FakeNvml, board


def run(
    lib: FakeNvml, pci: tuple[str, ...] | None = None, module: str | None = None
) -> dict[str, Check]:
    readings = HostReadings(nvml.health(lib), nvml.probe(lib, env={}), pci, module)
    checks = host_checks(readings)
    ids = [c.id for c in checks]
    assert len(ids) == len(set(ids)), f"duplicate check ids: {ids}"
    return {c.id: c for c in checks}


def test_healthy_h100_passes_everything_it_can() -> None:
    checks = run(SCENARIOS["healthy"], pci=("0000:18:00.0",), module="580.95.05")
    assert {c.status for c in checks.values()} == {"pass"}, {
        i: c.message for i, c in checks.items()
    }
    assert checks["host.pcie_link.gpu0"].message.startswith("Gen1 at idle (power saving)")
    assert all(c.fix is None for c in checks.values())


@pytest.mark.parametrize(
    ("scenario", "status", "message", "fix"),
    [
        ("hw-slowdown", "fail", "HW slowdown", "check cooling, fans and the GPU power cables"),
        ("hw-thermal", "fail", "HW thermal slowdown", "check airflow"),
        ("power-brake", "fail", "HW power brake", "power supply's capacity"),
        ("sw-thermal", "warn", "SW thermal slowdown", "improve airflow"),
    ],
)
def test_clock_slowdowns(scenario: str, status: str, message: str, fix: str) -> None:
    found = run(SCENARIOS[scenario])["host.clocks.gpu0"]
    assert found.status == status
    assert message in found.message
    assert found.fix is not None and fix in found.fix


def test_idle_and_app_clocks_are_fine() -> None:
    lib = FakeNvml(gpus=[replace(FakeGpu(), clock_reasons=0x1 | 0x2 | 0x4)])
    found = run(lib)["host.clocks.gpu0"]
    assert found.status == "pass"
    assert found.value == "idle, application clocks, SW power cap"


def test_downtrained_link_width_fails() -> None:
    found = run(SCENARIOS["downtrained-width"])["host.pcie_link.gpu0"]
    assert (found.status, found.value, found.expected) == ("fail", "Gen5 x8", "Gen5 x16")
    assert found.fix is not None and "reseat the GPU" in found.fix and "LnkSta" in found.fix


def test_low_link_generation_while_busy_warns() -> None:
    found = run(SCENARIOS["gen-low-under-load"])["host.pcie_link.gpu0"]
    assert found.status == "warn"
    assert "not idle" in found.message
    assert found.fix is not None and "host-to-device bandwidth" in found.fix


def test_slot_that_limits_the_link_warns() -> None:
    found = run(SCENARIOS["slot-limited"])["host.pcie_link.gpu0"]
    assert found.status == "warn"
    assert "the slot limits the link to Gen4 (the GPU can do Gen5)" in found.message
    assert found.fix is not None and "Gen5 slot" in found.fix


def test_pending_page_retirement_fails() -> None:
    found = run(SCENARIOS["retired-pages-pending"])["host.retired_memory.gpu0"]
    assert (found.status, found.value, found.unit) == ("fail", 1, "pages")
    assert found.fix is not None and "nvidia-smi -r -i 0" in found.fix


def test_many_retired_pages_warn() -> None:
    found = run(SCENARIOS["retired-pages-many"])["host.retired_memory.gpu0"]
    assert (found.status, found.value) == ("warn", 12)
    assert found.fix is not None and "dcgmi diag" in found.fix


def test_row_remap_failure_fails_with_rma() -> None:
    found = run(SCENARIOS["remap-failure"])["host.retired_memory.gpu0"]
    assert (found.status, found.value) == ("fail", 8)
    assert found.fix is not None and "replaced (RMA)" in found.fix


def test_row_remap_pending_fails_with_reset() -> None:
    found = run(SCENARIOS["remap-pending"])["host.retired_memory.gpu0"]
    assert found.status == "fail"
    assert found.fix is not None and "reset GPU 0" in found.fix


def test_uncorrected_ecc_since_boot_fails() -> None:
    found = run(SCENARIOS["ecc-volatile"])["host.ecc.gpu0"]
    assert (found.status, found.value, found.expected) == ("fail", 2, 0)
    assert found.fix is not None and "nvidia-smi -r -i 0" in found.fix and "RMA" in found.fix


def test_uncorrected_ecc_in_the_past_warns() -> None:
    found = run(SCENARIOS["ecc-aggregate"])["host.ecc.gpu0"]
    assert (found.status, found.value) == ("warn", 4)


def test_persistence_off_warns() -> None:
    found = run(SCENARIOS["no-persistence"])["host.persistence.gpu0"]
    assert (found.status, found.value, found.expected) == ("warn", "off", "on")
    assert found.fix is not None and "nvidia-persistenced" in found.fix and "-pm 1" in found.fix


def test_driver_library_mismatch_fails() -> None:
    checks = run(SCENARIOS["mismatch"], pci=("0000:18:00.0",), module="580.95.05")
    found = checks["host.driver_library"]
    assert found.status == "fail"
    assert "version mismatch" in found.message
    assert found.fix is not None and "rmmod nvidia_uvm" in found.fix and "reboot" in found.fix
    assert checks["host.driver_loaded"].status == "pass"
    assert checks["host.gpus_enumerated"].status == "skip"


def test_library_from_another_driver_fails() -> None:
    found = run(SCENARIOS["library-skew"])["host.driver_library"]
    assert (found.status, found.value, found.expected) == ("fail", "580.82.07", "580.95.05")
    assert found.fix is not None and "modprobe nvidia" in found.fix


def test_kernel_module_from_another_driver_fails() -> None:
    found = run(SCENARIOS["healthy"], module="575.57.08")["host.driver_library"]
    assert found.status == "fail" and "kernel module is 575.57.08" in found.message


def test_no_driver_and_no_gpu_skips() -> None:
    checks = run(SCENARIOS["no-driver"], pci=())
    assert {c.status for c in checks.values()} == {"skip"}
    assert checks["host.driver_loaded"].message.startswith("no GPU:")


def test_no_driver_with_a_gpu_on_the_bus_fails() -> None:
    found = run(SCENARIOS["no-driver"], pci=("0000:18:00.0",))["host.driver_loaded"]
    assert found.status == "fail"
    assert "1 NVIDIA GPU(s) on the PCI bus" in found.message
    assert found.fix is not None and "install the NVIDIA driver" in found.fix


def test_lost_gpu_fails_enumeration_and_others_are_still_checked() -> None:
    checks = run(SCENARIOS["gpu-lost"])
    found = checks["host.gpus_enumerated"]
    assert (found.status, found.value, found.expected) == ("fail", 1, 2)
    assert found.fix is not None and "Xid" in found.fix
    assert checks["host.clocks.gpu0"].status == "pass"
    assert "host.clocks.gpu1" not in checks


def test_gpu_missing_from_the_driver_fails() -> None:
    found = run(SCENARIOS["healthy"], pci=("0000:18:00.0", "0000:2a:00.0"))["host.gpus_enumerated"]
    assert (found.status, found.value, found.expected) == ("fail", 1, 2)
    assert found.fix is not None and "RmInitAdapter" in found.fix


def test_mig_change_pending_warns() -> None:
    found = run(SCENARIOS["mig-pending"])["host.mig.gpu0"]
    assert (found.status, found.value, found.expected) == ("warn", "off", "on")
    assert found.fix is not None and "nvidia-smi -r -i 0" in found.fix


def test_mig_without_instances_fails() -> None:
    found = run(SCENARIOS["mig-no-instances"])["host.mig.gpu0"]
    assert found.status == "fail"
    assert found.fix is not None and "-cgi" in found.fix


def test_old_driver_api_falls_back_to_throttle_reasons() -> None:
    checks = run(SCENARIOS["old-driver-api"])
    assert (
        checks["host.clocks.gpu0"].status == "fail"
    )  # read through the older ThrottleReasons call
    assert checks["host.pcie_link.gpu0"].status == "pass"  # no GPU-max generation: no slot verdict


def test_pre_ampere_and_consumer_gpus_skip_what_they_lack() -> None:
    lib = FakeNvml(gpus=[replace(FakeGpu(), ecc=(0, 0), mig=None, remapped_rows=None)])
    lib.missing = {"nvmlDeviceGetPersistenceMode"}
    checks = run(lib)
    assert (
        checks["host.ecc.gpu0"].status == "pass" and "ECC is off" in checks["host.ecc.gpu0"].message
    )
    assert checks["host.retired_memory.gpu0"].status == "skip"
    assert checks["host.mig.gpu0"].status == "skip"
    assert checks["host.persistence.gpu0"].status == "skip"


def test_pci_bus_scan_counts_nvidia_display_functions(tmp_path: Path) -> None:
    for name, vendor, klass in [
        ("0000:18:00.0", "0x10de", "0x030200"),  # 3D controller: a datacenter GPU
        ("0000:18:00.1", "0x10de", "0x040300"),  # its audio function
        ("0000:40:00.0", "0x10de", "0x068000"),  # an NVSwitch bridge
        ("0000:65:00.0", "0x8086", "0x030000"),  # another vendor's VGA
    ]:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "vendor").write_text(vendor + "\n")
        (folder / "class").write_text(klass + "\n")
    assert read_pci_gpus(tmp_path) == ("0000:18:00.0",)
    assert read_pci_gpus(tmp_path / "absent") is None


def test_kernel_module_version_is_read_from_proc(tmp_path: Path) -> None:
    proc = tmp_path / "version"
    proc.write_text(
        "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.95.05  Release Build  "
        "(dvs-builder@U22-I3-AF03-09-1)  Tue Sep 23 09:57:48 UTC 2025\nGCC version:  gcc 12\n"
    )
    assert read_kernel_module(proc) == "580.95.05"
    assert read_kernel_module(tmp_path / "absent") is None


# --- issue 17: fabric manager, recovery action, memory limits, PCIe replays, NVLink ----------


def test_healthy_board_passes_the_hardware_checks() -> None:
    checks = run(FakeNvml(gpus=board(8)))
    for n in range(8):
        for name in ("fabric", "recovery_action", "pcie_replay", "nvlink"):
            found = checks[f"host.{name}.gpu{n}"]
            assert found.status == "pass", (found.id, found.message)
    assert checks["host.nvlink.gpu3"].value == "18/18"
    assert checks["host.fabric.gpu0"].value == "completed"


def test_fabric_manager_not_started_fails_with_the_fix() -> None:
    # The GPUs enumerate (NVML lists them) but CUDA would fail with error 802.
    checks = run(SCENARIOS["fabric-not-started"], module="580.95.05")
    assert checks["host.gpus_enumerated"].status == "pass"
    found = checks["host.fabric.gpu1"]
    assert (found.status, found.value, found.expected) == ("fail", "not_started", "completed")
    assert "802" in found.message
    assert found.fix is not None
    assert "nvidia-fabricmanager" in found.fix and "580.95.05" in found.fix
    assert "nvidia-smi -q | grep -A2 Fabric" in found.fix
    assert checks["host.fabric.gpu0"].status == "pass"


def test_fabric_registration_error_fails_with_nvml_text() -> None:
    found = run(SCENARIOS["fabric-failed"])["host.fabric.gpu1"]
    assert (found.status, found.value) == ("fail", "failed")
    # Without a driver the binding names the code only; with one, nvmlErrorString's text.
    assert "NVML Error with code 23" in found.message
    assert found.fix is not None and "same version as the driver" in found.fix


def test_gpus_without_a_fabric_skip_it() -> None:
    for scenario in ("h100-nvl-pair", "pcie-consumer"):
        assert run(SCENARIOS[scenario])["host.fabric.gpu0"].status == "skip"


@pytest.mark.parametrize(
    ("scenario", "value", "fix"),
    [
        ("recovery-reboot", "reboot", "reboot it"),
        ("recovery-reset", "reset", "nvidia-smi -r -i 0"),
        ("recovery-unknown", "unknown", "nvidia-smi -q"),
    ],
)
def test_recovery_action_fails_with_what_to_do(scenario: str, value: str, fix: str) -> None:
    found = run(SCENARIOS[scenario])["host.recovery_action.gpu0"]
    assert (found.status, found.value, found.expected) == ("fail", value, "none")
    assert found.fix is not None and fix in found.fix


def test_row_remaps_over_the_limit_fail() -> None:
    found = run(SCENARIOS["row-remaps-over-limit"])["host.retired_memory.gpu0"]
    assert (found.status, found.value, found.expected) == ("fail", 520, 512)
    assert found.fix is not None and "RMA" in found.fix and "dcgmi diag -r 3" in found.fix


def test_row_remaps_under_the_limit_pass() -> None:
    found = run(FakeNvml(gpus=[replace(FakeGpu(), remapped_rows=(400, 111, 0, 0))]))[
        "host.retired_memory.gpu0"
    ]
    assert (found.status, found.value, found.expected) == ("pass", 511, 512)


def test_retired_pages_at_dcgms_limit_fail() -> None:
    found = run(SCENARIOS["retired-pages-over-limit"])["host.retired_memory.gpu0"]
    assert (found.status, found.value, found.expected) == ("fail", 63, 63)
    assert found.fix is not None and "RMA" in found.fix


def test_limits_come_from_the_sourced_data() -> None:
    limits = load_limits()
    assert (limits.retired_pages_fail, limits.remapped_rows_fail) == (63, 512)
    assert (limits.retired_pages_warn, limits.pcie_replays_per_minute) == (10, 8)


def test_pending_remap_fails_even_with_few_rows() -> None:
    found = run(SCENARIOS["remap-pending"])["host.retired_memory.gpu0"]
    assert (found.status, found.value) == ("fail", 1)
    assert found.fix is not None and "nvidia-smi -r -i 0" in found.fix


def test_gpu_with_fewer_nvlink_links_than_its_siblings_fails() -> None:
    checks = run(SCENARIOS["nvlink-down"])
    found = checks["host.nvlink.gpu1"]
    assert (found.status, found.value, found.expected) == ("fail", "17/18", "18/18")
    assert found.fix is not None and "nvidia-smi nvlink -s -i 1" in found.fix
    assert [checks[f"host.nvlink.gpu{n}"].status for n in (0, 2, 7)] == ["pass"] * 3


def test_h100_nvl_with_twelve_links_by_design_passes() -> None:
    checks = run(SCENARIOS["h100-nvl-pair"])
    assert [checks[f"host.nvlink.gpu{n}"].value for n in (0, 1)] == ["12/12", "12/12"]
    assert {checks[f"host.nvlink.gpu{n}"].status for n in (0, 1)} == {"pass"}


def test_siblings_are_gpus_of_the_same_model_only() -> None:
    # An A100 with 12 links beside H100s with 18 is not a fault: different models.
    a100 = replace(
        FakeGpu(), name="NVIDIA A100-SXM4-80GB", pci_device_id=0x20B210DE, nvlinks=(1,) * 12
    )
    gpus = board(2)
    checks = run(FakeNvml(gpus=[*gpus, replace(a100, uuid="GPU-a100", bus_id="00000000:40:00.0")]))
    assert checks["host.nvlink.gpu2"].status == "pass"


def test_consumer_gpu_skips_what_it_lacks() -> None:
    checks = run(SCENARIOS["pcie-consumer"])
    for name in ("fabric", "recovery_action", "pcie_replay", "nvlink"):
        assert checks[f"host.{name}.gpu0"].status == "skip", name


def test_pcie_replay_count_is_reported() -> None:
    found = run(FakeNvml(gpus=[replace(FakeGpu(), replay_count=42)]))["host.pcie_replay.gpu0"]
    assert (found.status, found.value, found.unit) == ("pass", 42, "replays")


@pytest.mark.parametrize(
    ("before", "after", "seconds", "status", "expected"),
    [
        (100, 100, 5.0, "pass", 8.0),
        (100, 108, 5.0, "pass", 8.0),  # a short window is judged as one minute
        (100, 109, 5.0, "fail", 8.0),  # over DCGM's 8 a minute
        (0, 16, 120.0, "pass", 16.0),
        (0, 17, 120.0, "fail", 16.0),
        (None, 5, 5.0, "skip", None),
        (9, 3, 5.0, "skip", None),  # the counter went back: a reset during the load
    ],
)
def test_replay_delta_against_dcgms_rate(
    before: int | None, after: int | None, seconds: float, status: str, expected: float | None
) -> None:
    found = replay_delta_check(before, after, seconds, gpu=3)
    assert found.id == "perf.pcie_replay.gpu3"
    assert (found.status, found.expected) == (status, expected)
    if status == "fail":
        assert found.fix is not None and "reseat the GPU" in found.fix


def test_an_unexpected_nvml_error_in_a_new_reading_does_not_make_the_gpu_unreadable() -> None:
    gpu = replace(
        FakeGpu(),
        fail={
            "nvmlDeviceGetGpuFabricInfo": nvml.NO_PERMISSION,
            "nvmlDeviceGetPcieReplayCounter": 999,  # NVML_ERROR_UNKNOWN
        },
    )
    checks = run(FakeNvml(gpus=[gpu]))
    assert checks["host.gpus_enumerated"].status == "pass"
    assert checks["host.fabric.gpu0"].status == "skip"
    assert checks["host.pcie_replay.gpu0"].status == "skip"
    assert checks["host.ecc.gpu0"].status == "pass"


def test_every_health_source_is_public_or_explained_in_facts() -> None:
    facts = (Path(__file__).parents[2] / "docs" / "facts.md").read_text()
    assert "\n## 9. Host hardware health" in facts  # the section the data files cite
    for key, text in load_limits().sources.items():
        assert "https://" in text or "docs/facts.md" in text, key


def test_health_limits_are_parsed_strictly() -> None:
    good = {
        "schema": 1,
        "sources": {"S": "https://example.org"},
        "limit": [
            {"name": name, "value": 5, "unit": "u", "source": "S"}
            for name in (
                "retired_pages_warn",
                "retired_pages_fail",
                "remapped_rows_fail",
                "pcie_replays_per_minute",
            )
        ],
    }
    assert parse_limits(good).remapped_rows_fail == 5
    rows: list[dict[str, object]] = good["limit"]  # type: ignore[assignment]
    for broken, message in [
        (rows[1:], "no row for the limit 'retired_pages_warn'"),
        ([*rows, {**rows[0], "name": "fans"}], "unknown limit 'fans'"),
        ([{**rows[0], "value": 5.5}, *rows[1:]], "'value' has the wrong type"),
        ([{**rows[0], "source": "X"}, *rows[1:]], "cites unknown source 'X'"),
        ([*rows, rows[0]], "a second row for retired_pages_warn"),
    ]:
        with pytest.raises(DataError, match=re.escape(message)):
            parse_limits({**good, "limit": broken})
