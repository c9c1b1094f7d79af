"""How long choosing among every catalog image in a local registry takes (goal: under 1 s).

    .nox/tests/bin/python tests/registry/bench_select.py [--runs N]

Starts a real `docker-registry` on 127.0.0.1, publishes every catalog image's labels as a tiny
image, then times `remote_candidates` + `resolver.select` for each framework: with an empty config
cache (first look), with a warm cache, and as a fresh `python` process (imports included). Reads
the registry's own log to show that no layer blob was requested. Not a test: figures, printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for registry_server

from cudabox.host import HostProfile
from cudabox.images.catalog import load_catalog
from cudabox.images.labels import labels_for
from cudabox.images.remote import remote_candidates
from cudabox.registry import BlobCache, RegistryClient
from cudabox.resolver import select
from registry_server import running_registry

HOST = Path(__file__).resolve().parents[1] / "fixtures" / "hosts" / "h100.json"
CHILD = """
import sys, time
t0 = time.perf_counter()
from cudabox.host import HostProfile
from cudabox.images.catalog import load_catalog
from cudabox.images.remote import remote_candidates
from cudabox.registry import BlobCache, RegistryClient
from cudabox.resolver import select
catalog = load_catalog()
host = HostProfile.load(__import__("pathlib").Path(sys.argv[2]))
with RegistryClient(lambda r: None, cache=BlobCache(__import__("pathlib").Path(sys.argv[3]))) as c:
    for framework in ("torch", "tensorflow"):
        found = remote_candidates(sys.argv[1], catalog, framework, client=c)
        assert select(found.catalog(catalog), [host], framework).selected is not None
print(f"{time.perf_counter() - t0:.4f}")
"""


def choose_all(repo: str, cache: Path) -> float:
    catalog = load_catalog()
    host = HostProfile.load(HOST)
    started = time.perf_counter()
    with RegistryClient(lambda r: None, cache=BlobCache(cache)) as client:
        for framework in ("torch", "tensorflow"):
            found = remote_candidates(repo, catalog, framework, client=client)
            assert not found.skipped, found.skipped
            assert select(found.catalog(catalog), [host], framework).selected is not None
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    runs = parser.parse_args().runs
    catalog = load_catalog()
    with tempfile.TemporaryDirectory() as folder, running_registry(Path(folder) / "r") as server:
        layers = set()
        for spec in catalog.images:
            labels = {**labels_for(spec, "0" * 64), "cudabox.test": "1"}
            pushed = server.push_image(
                f"bench/{spec.name}", "latest", labels, payload=spec.name.encode()
            )
            layers.add(pushed.layer_digest)
        repo = f"{server.host}/bench"
        mark = server.mark()
        cold = [choose_all(repo, Path(folder) / f"cold-{n}") for n in range(runs)]
        warm_cache = Path(folder) / "warm"
        choose_all(repo, warm_cache)
        warm = [choose_all(repo, warm_cache) for _ in range(runs)]
        process = []
        for _ in range(max(3, runs // 3)):
            started, before = time.perf_counter(), os.times()
            inner = subprocess.run(
                [sys.executable, "-c", CHILD, repo, str(HOST), str(warm_cache)],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            after = os.times()
            cpu = (after.children_user - before.children_user) + (
                after.children_system - before.children_system
            )
            process.append((time.perf_counter() - started, float(inner.stdout), cpu))
        logged = server.requests_since(mark)
    blob_reads = [r.uri.rsplit("/", 1)[1] for r in logged if "/blobs/" in r.uri]
    layer_reads = [b for b in blob_reads if b in layers]
    print(f"catalog images: {len(catalog.images)} (torch and tensorflow), registry {server.host}")
    for what, times in (("cold cache: ", cold), ("warm cache: ", warm)):
        median, worst = statistics.median(times) * 1000, max(times) * 1000
        print(f"{what} median {median:.1f} ms, max {worst:.1f} ms")
    print(
        f"new process: median {statistics.median(p[0] for p in process) * 1000:.0f} ms wall, "
        f"{statistics.median(p[2] for p in process) * 1000:.0f} ms CPU "
        f"(imports + choice {statistics.median(p[1] for p in process) * 1000:.0f} ms wall)"
    )
    print(f"load average while measuring: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(
        f"registry log: {len(logged)} requests, {len(blob_reads)} blob reads "
        f"({len(set(blob_reads))} distinct config blobs), {len(layer_reads)} layer reads"
    )


if __name__ == "__main__":
    main()
