"""`cudabox report --html`: the page's content, and the page as real headless Chromium draws it.

Fixtures: the four 8 x H100 nodes of fixtures/doctor/reports/fleet (h100-n3 12 % slow on bf16,
h100-n4 another VBIOS).
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from cudabox.choice import catalog_candidates
from cudabox.cli import main
from cudabox.doctor.fleet import Measurement, choose, fleet_view, load_reports, outliers
from cudabox.doctor.fleet_html import chart, page
from cudabox.errors import ExitCode
from cudabox.images.catalog import load_catalog
from realtools import unavailable

FLEET = sorted(
    (Path(__file__).parents[1] / "fixtures" / "doctor" / "reports" / "fleet").glob("*.json")
)
NODES = [p.stem for p in FLEET]
FAIL_TINT = (0xFD, 0xE3, 0xE3)  # report_html._BAND["fail"]: the failing node's column
FAIL_RED = (0xC6, 0x28, 0x28)  # report_html._COLOUR["fail"]: its dots


def _page() -> str:
    reports = load_reports(FLEET)
    return page(
        reports, choose(reports, "torch", catalog_candidates(load_catalog())), fleet_view(reports)
    )


def test_the_page_stands_alone() -> None:
    html = _page()
    # Nothing is fetched when the page is viewed: no script, link, image, font or address.
    assert "<script" not in html.lower() and "://" not in html
    assert not re.search(r"<(link|img|iframe|object|embed)\b", html) and "@import" not in html
    assert "url(" not in html and " src=" not in html and " href=" not in html


def test_the_page_has_the_tables_and_a_chart_per_metric() -> None:
    html = _page()
    for node in NODES:
        assert f"<td>{node}</td>" in html
    # One chart per (metric, GPU model): four per-GPU figures and NCCL's node figure.
    titles = re.findall(r"<h3>([^<]+)</h3>", html)
    assert titles == [
        "matmul_bf16: NVIDIA H100 80GB HBM3",
        "matmul_tf32: NVIDIA H100 80GB HBM3",
        "mem_bandwidth: NVIDIA H100 80GB HBM3",
        "h2d_bandwidth: NVIDIA H100 80GB HBM3",
        "nccl_busbw: 8x NVIDIA H100 80GB HBM3",
    ]
    assert html.count("<svg") == 5
    # 8 GPUs x 4 nodes per GPU metric, one dot per node for NCCL.
    assert html.count("<circle") == 4 * 32 + 4
    # The slow node is marked in its chart (tinted column, label) and listed with its fix.
    bf16 = html.split("<h3>matmul_bf16")[1].split("</figure>")[0]
    assert bf16.count('fill="#fde3e3"') == 1 and "FAIL 0.87 x" in bf16
    assert "failing: h100-n3" in bf16
    assert html.count("#fde3e3") == 1  # no other chart marks a node
    assert "perf.matmul_bf16.gpu6" in html and "96.00.61.00.01 (GPU 0-7)" in html
    assert "slower than the fleet&#x27;s NVIDIA H100 80GB HBM3 at matmul_bf16" in html
    assert "flash the VBIOS the fleet runs (96.00.74.00.11)" in html


def test_a_crowded_chart_names_its_outliers_only() -> None:
    def fleet(size: int) -> str:
        found = [
            Measurement(f"n{n:02d}", "perf.x.gpu0", "x", "GPU", 0, 100.0 + n % 3, "GB/s")
            for n in range(size - 1)
        ]
        found.append(Measurement("slow", "perf.x.gpu0", "x", "GPU", 0, 80.0, "GB/s"))
        return chart(outliers(found))

    few = fleet(12)
    assert all(f">n{n:02d}</text>" in few for n in range(11)) and "rotate(-25" not in few
    some = fleet(20)
    assert all(f">n{n:02d}</text>" in some for n in range(19)) and "rotate(-25" in some
    many = fleet(40)
    assert ">slow</text>" in many and not re.search(r">n\d\d</text>", many)
    assert many.count("<circle") == 40 and "FAIL 0.79 x" in many


def test_report_writes_the_page_atomically(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "fleet.html"
    assert main(["report", "--html", str(target), *map(str, FLEET)]) == ExitCode.FAILED
    assert target.read_text() == _page()
    assert [p.name for p in tmp_path.iterdir()] == ["fleet.html"]  # no temporary file left
    assert "nodes unlike their peers" in capsys.readouterr().out  # the table still printed
    assert main(["report", "--html", "-", *map(str, FLEET)]) == ExitCode.USAGE
    assert "--html needs a file" in capsys.readouterr().err
    missing = tmp_path / "no" / "such" / "page.html"
    assert main(["report", "--html", str(missing), *map(str, FLEET)]) == ExitCode.USAGE
    assert "does not exist" in capsys.readouterr().err


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        unavailable(
            "chromium", "chromium not installed; the page test needs `apt-get install chromium`"
        )
    return found


def _headless(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        chromium,
        "--headless",
        "--no-sandbox",  # as root, Chromium refuses to start with its sandbox
        "--disable-gpu",
        f"--user-data-dir={profile}",  # its own profile: other Chromium runs may be going on
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=True)


@pytest.mark.chromium
def test_chromium_draws_the_page(tmp_path: Path) -> None:
    chromium = _chromium()
    html = tmp_path / "page.html"
    assert main(["report", "--html", str(html), *map(str, FLEET)]) == ExitCode.FAILED
    url = html.as_uri()

    shot = tmp_path / "page.png"
    _headless(chromium, tmp_path / "p1", f"--screenshot={shot}", "--window-size=1200,900", url)
    assert shot.stat().st_size > 20_000
    width, height, pixels = read_png(shot.read_bytes())
    assert (width, height) == (1200, 900)
    colours = set(pixels)
    assert len(colours) > 50, f"the screenshot has {len(colours)} colours: not a drawn page"

    # The whole page, at half scale (the pure-Python decoder's time): the charts are drawn, the
    # slow node's column tinted and its dots red.
    tall = tmp_path / "tall.png"
    _headless(
        chromium,
        tmp_path / "p2",
        f"--screenshot={tall}",
        "--window-size=1200,3200",
        "--force-device-scale-factor=0.5",
        url,
    )
    _, _, everything = read_png(tall.read_bytes())
    counts: dict[tuple[int, int, int], int] = {}
    for pixel in everything:
        counts[pixel] = counts.get(pixel, 0) + 1
    assert counts.get(FAIL_TINT, 0) > 5_000  # a column of about 100 x 62 pixels
    assert counts.get(FAIL_RED, 0) > 100  # eight dots, the label and the fail line

    dom = _headless(chromium, tmp_path / "p3", "--dump-dom", url).stdout
    for node in NODES:
        assert node in dom
    assert dom.count("<svg") == 5 and "FAIL 0.87 x" in dom


def read_png(data: bytes) -> tuple[int, int, list[tuple[int, int, int]]]:
    """Width, height and RGB pixels of an 8-bit RGB or RGBA PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    at, idat, header = 8, b"", b""
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        at += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, "an unexpected PNG layout"
    step = 3 if colour == 2 else 4
    stride = width * step
    raw = zlib.decompress(idat)
    rows: list[bytearray] = []
    previous = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        if kind == 2:  # "up", most of Chromium's rows: one pass without the per-byte branches
            line = bytearray((a + b) & 0xFF for a, b in zip(line, previous, strict=True))
        elif kind != 0:
            for x in range(stride):
                left = line[x - step] if x >= step else 0
                up = previous[x]
                if kind == 1:
                    line[x] = (line[x] + left) & 0xFF
                elif kind == 3:
                    line[x] = (line[x] + (left + up) // 2) & 0xFF
                else:  # 4, Paeth
                    corner = previous[x - step] if x >= step else 0
                    guess = left + up - corner
                    pa, pb, pc = abs(guess - left), abs(guess - up), abs(guess - corner)
                    best = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                    line[x] = (line[x] + best) & 0xFF
        rows.append(line)
        previous = line
    pixels = [(line[x], line[x + 1], line[x + 2]) for line in rows for x in range(0, stride, step)]
    return width, height, pixels
