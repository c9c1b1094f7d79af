"""host.xid: Xids from the kernel log and from NVML's events (XidWatch), mapped through data/xid.toml."""

from __future__ import annotations

import os
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from cudabox import nvml
from cudabox.doctor.health_data import load_xids, parse_xids
from cudabox.doctor.host_layer import (
    kmsg_line,
    parse_kernel_xids,
    read_kernel_xids,
    xid_check,
)
from cudabox.doctor.model import DoctorReport, XidRecord
from cudabox.doctor.run import Doctor, Environment, Options, replay
from cudabox.errors import DataError, Unavailable
from cudabox.sourced import DATA
from fakenvml import SCENARIOS, XID_LINES, FakeGpu, FakeNvml, board

LISTED = (79, 48, 63, 64, 94, 95, 119, 120, 74)  # the Xids issue 17 names
# What each listed Xid's fix must say (GPU 0 is the one the fixtures name).
FIXES = {
    79: "reboot",
    48: "nvidia-smi -r -i 0",
    63: "nvidia-smi -r -i 0",
    64: "RMA",
    94: "restart the application",
    95: "nvidia-smi -r -i 0",
    119: "nvidia-bug-report.sh",
    120: "nvidia-bug-report.sh",
    74: "nvidia-smi nvlink -e -i 0",
}


def records_from_watch(lib: FakeNvml) -> tuple[XidRecord, ...]:
    with nvml.XidWatch(lib, poll_ms=5) as watch:
        deadline = time.monotonic() + 5
        while lib.xids and time.monotonic() < deadline:
            time.sleep(0.005)
    assert watch.supported and watch.reason is None
    return tuple(XidRecord(e.xid, e.gpu_index, "nvml", e.time) for e in watch.events)


@pytest.mark.parametrize("xid", LISTED)
def test_each_listed_xid_in_the_kernel_log_fails_with_its_fix(xid: int) -> None:
    gpus = nvml.health(FakeNvml(gpus=[FakeGpu()])).gpus
    records = parse_kernel_xids(f"[ 12.5] {XID_LINES[xid]}\n", gpus)
    assert [(r.xid, r.gpu_index, r.source) for r in records] == [(xid, 0, "kernel-log")]
    found = xid_check(records, ["NVML events: not watched"])
    assert (found.id, found.status, found.value) == ("host.xid", "fail", str(xid))
    info = load_xids()[xid]
    assert info.name in found.message and "on GPU 0 in the kernel log" in found.message
    assert found.fix is not None and FIXES[xid] in found.fix


@pytest.mark.parametrize("xid", LISTED)
def test_each_listed_xid_as_an_nvml_event_fails_with_its_fix(xid: int) -> None:
    records = records_from_watch(SCENARIOS[f"xid-{xid}"])
    assert [(r.xid, r.gpu_index) for r in records] == [(xid, 0)]
    found = xid_check(records, ["the kernel log cannot be read (permission denied)"])
    assert (found.id, found.status) == ("host.xid", "fail")
    assert "NVML's events during the run" in found.message
    assert found.fix is not None and FIXES[xid] in found.fix


def test_unknown_xid_still_fails_and_points_at_nvidias_catalog() -> None:
    found = xid_check([XidRecord(177, 2, "nvml", 1.0)])
    assert (found.status, found.value) == ("fail", "177")
    assert found.fix is not None and "NVIDIA's Xid catalog" in found.fix


def test_application_xids_warn() -> None:
    line = "NVRM: Xid (PCI:0000:18:00): 13, pid=77, name=python, Graphics SM Warp Exception"
    found = xid_check(parse_kernel_xids(line))
    assert (found.status, found.value) == ("warn", "13")
    assert found.fix is not None and "dcgmi diag" in found.fix


def test_several_xids_fail_first_and_list_every_fix() -> None:
    records = [
        XidRecord(13, 0, "kernel-log"),
        XidRecord(79, 1, "nvml", 1.0),
        XidRecord(79, 1, "kernel-log"),
    ]
    found = xid_check(records)
    assert found.status == "fail"
    assert found.message.startswith("Xid 79 (GPU has fallen off the bus) x2 on GPU 1")
    assert found.fix is not None and "GPU 1" in found.fix and "Xid 13:" in found.fix


def test_no_xid_passes_and_no_source_skips() -> None:
    assert xid_check([], []).status == "pass"
    partly = xid_check([], ["the kernel log cannot be read (x)"])
    assert partly.status == "pass" and "cannot be read" in partly.message
    assert xid_check([], ["a", "b"]).status == "skip"


def test_kernel_lines_without_a_known_bus_have_no_gpu() -> None:
    (record,) = parse_kernel_xids("kernel: NVRM: Xid (PCI:0000:ab:00): 79, GPU has fallen off")
    assert (record.xid, record.gpu_index) == (79, None)
    assert record.text == "NVRM: Xid (PCI:0000:ab:00): 79, GPU has fallen off"
    assert parse_kernel_xids("NVRM: GPU at PCI:0000:18:00: GPU-1234\nusb 1-1: new device") == ()


def test_kernel_log_through_dmesg_when_kmsg_is_absent(tmp_path: Path) -> None:
    log = tmp_path / "dmesg.txt"
    log.write_text(f"[  1.0] usb 1-1: hello\n[ 99.1] {XID_LINES[48]}\n")
    gpus = nvml.health(FakeNvml(gpus=board(2))).gpus
    records, why = read_kernel_xids(gpus, tmp_path / "kmsg", ("cat", str(log)))
    assert why is None
    assert [(r.xid, r.gpu_index) for r in records] == [(48, 0)]


def test_unreadable_kernel_log_says_why(tmp_path: Path) -> None:
    records, why = read_kernel_xids(
        (),
        tmp_path / "kmsg",
        (
            "sh",
            "-c",
            "echo 'dmesg: read kernel buffer failed: Operation not permitted' >&2; exit 1",
        ),
    )
    assert records == ()
    assert why is not None and "Operation not permitted" in why and "No such file" in why
    assert xid_check(records, [why, "NVML: no driver"]).status == "skip"


@pytest.mark.skipif(not os.access("/dev/kmsg", os.R_OK), reason="/dev/kmsg is not readable here")
def test_real_kmsg_is_read_without_blocking() -> None:
    started = time.monotonic()
    records, why = read_kernel_xids()
    assert why is None and isinstance(records, tuple)
    assert time.monotonic() - started < 10  # a blocking read would wait for new records forever


def test_xid_catalog_rows_are_sourced_and_strict() -> None:
    catalog = load_xids()
    assert set(LISTED) <= set(catalog)
    assert all(info.source and info.fix and info.meaning for info in catalog.values())
    good = {
        "schema": 1,
        "sources": {"S": "a source"},
        "xid": [
            {"xid": 1, "name": "n", "status": "fail", "meaning": "m", "fix": "f", "source": "S"}
        ],
    }
    assert parse_xids(good)[1].name == "n"
    with pytest.raises(DataError, match="cites unknown source 'T'"):
        parse_xids({**good, "xid": [{**good["xid"][0], "source": "T"}]})  # type: ignore[dict-item]
    with pytest.raises(DataError, match="unknown key 'severity'"):
        parse_xids({**good, "xid": [{**good["xid"][0], "severity": 1}]})  # type: ignore[dict-item]
    with pytest.raises(DataError, match="status must be"):
        parse_xids({**good, "xid": [{**good["xid"][0], "status": "bad"}]})  # type: ignore[dict-item]


# --- the live run: the watch spans the load, the verdict is recorded and replays the same ------


def test_an_xid_during_the_run_fails_host_xid_and_replays_the_same(tmp_path: Path) -> None:
    lib = FakeNvml(gpus=board(2))

    def connect() -> Any:
        lib.raise_xid(1, 79)  # GPU 1 falls off the bus while the doctor works
        raise Unavailable("no container engine answers", "start one")

    def kernel(gpus: Any) -> tuple[tuple[XidRecord, ...], str | None]:
        return parse_kernel_xids(f"[ 5.0] {XID_LINES[48]}", gpus), None

    env = Environment(
        nvml_lib=lib, connect=connect, pci_root=tmp_path, kernel_xids=kernel, say=lambda _: None
    )
    report = Doctor(Options(level="quick"), env).run()
    found = next(c for c in report.checks if c.id == "host.xid")
    assert (found.status, found.value) == ("fail", "48, 79")
    assert "Xid 79 (GPU has fallen off the bus) x1 on GPU 1 in NVML's events" in found.message
    assert found.fix is not None and "check GPU 1's power cables" in found.fix
    assert "drain GPU 0 and reset it (`nvidia-smi -r -i 0`)" in found.fix
    assert report.readings is not None
    assert [(x.xid, x.gpu_index, x.source) for x in report.readings.xids] == [
        (48, 0, "kernel-log"),
        (79, 1, "nvml"),
    ]
    path = tmp_path / "report.json"
    path.write_text(report.dumps())
    again = replay(DoctorReport.load(path))
    assert [(c.id, c.status) for c in again.checks] == [(c.id, c.status) for c in report.checks]
    assert next(c for c in again.checks if c.id == "host.xid") == found


def test_a_clean_run_passes_host_xid_and_says_what_it_could_not_read(tmp_path: Path) -> None:
    env = Environment(
        nvml_lib=FakeNvml(gpus=board(2)),
        connect=lambda: (_ for _ in ()).throw(Unavailable("no engine", "start one")),
        pci_root=tmp_path,
        kernel_xids=lambda gpus: (
            (),
            "the kernel log cannot be read (dmesg: Operation not permitted)",
        ),
        say=lambda _: None,
    )
    report = Doctor(Options(level="quick"), env).run()
    found = report.checks[-1]
    assert (found.id, found.status) == ("host.xid", "pass")
    assert "Operation not permitted" in found.message


def test_every_xid_source_is_public() -> None:
    sources = tomllib.loads((DATA / "xid.toml").read_text())["sources"]
    assert sources and all("https://docs.nvidia.com/" in text for text in sources.values())


def test_kernel_lines_carry_their_time_and_the_check_says_when() -> None:
    boot = 1_780_000_000.0  # 2026-05-28 20:26:40 UTC
    record = b"3,1742,5400123456,-;NVRM: Xid (PCI:0000:18:00): 79, pid=1, GPU has fallen off the bus.\n SUBSYSTEM=pci\n"
    line = kmsg_line(record)
    assert (
        line == "[ 5400.123456] NVRM: Xid (PCI:0000:18:00): 79, pid=1, GPU has fallen off the bus."
    )
    older = "[  12.000000] NVRM: Xid (PCI:0000:18:00): 79, pid=1, GPU has fallen off the bus."
    records = parse_kernel_xids(f"{older}\n{line}", boot=boot)
    assert [r.time for r in records] == [boot + 12.0, round(boot + 5400.123456, 3)]
    found = xid_check(records)
    assert ", last at 2026-05-28 21:56:40 UTC:" in found.message
    assert parse_kernel_xids(older)[0].time is None  # no boot time given: no time claimed


def test_dmesg_lines_are_timed_from_this_boot(tmp_path: Path) -> None:
    log = tmp_path / "dmesg.txt"
    log.write_text(f"[   1.500000] {XID_LINES[94]}\n")
    (record,), _ = read_kernel_xids((), tmp_path / "kmsg", ("cat", str(log)))
    boot = time.time() - time.clock_gettime(time.CLOCK_MONOTONIC)
    assert record.time is not None and abs(record.time - (boot + 1.5)) < 1.0
