"""Figures for images served from a registry: choosing without pulling, and pulling.

    nox -s bench-registry            (or: python benchmarks/registry.py [--runs N] [--no-pull])

Starts a real `docker-registry` on 127.0.0.1 with a temporary storage folder, then measures:

1. Choosing among every catalog image in the registry (goal: under 1 s, no layer read). Each
   catalog image's labels are published as a tiny image; `remote_candidates` + `resolver.select`
   run for every framework with an empty config cache (first look), with a warm one, and as a
   fresh `python` process (imports included). The registry's own log shows what was read.
2. Pulling the CPU torch image (needs Docker, root and `unshare`; `cudabox publish` builds the
   image when missing): `cudabox publish` it, then `cudabox pull` it on a fresh host, i.e. a
   scratch Docker daemon with an empty image store, in a private network namespace with the same
   registry storage served there (the machine's engine, its images and its network are not
   touched): seconds, the compressed bytes the manifest lists, the layers, what the registry
   actually served, and a second pull (nothing to do).

Not a test: it prints figures, with the date and the machine's load.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # registry_server: the same registry the tests run

from cudabox.host import HostProfile  # noqa: E402
from cudabox.images.catalog import load_catalog  # noqa: E402
from cudabox.images.labels import labels_for  # noqa: E402
from cudabox.images.remote import remote_candidates  # noqa: E402
from cudabox.registry import BlobCache, RegistryClient  # noqa: E402
from cudabox.resolver import select  # noqa: E402
from registry_server import RegistryServer, running_registry  # noqa: E402

HOST = ROOT / "tests" / "fixtures" / "hosts" / "h100.json"
PULLED = "torch-2.13-cpu"
CHILD = """
import sys, time
t0 = time.perf_counter()
from pathlib import Path
from cudabox.host import HostProfile
from cudabox.images.catalog import load_catalog
from cudabox.images.remote import remote_candidates
from cudabox.registry import BlobCache, RegistryClient
from cudabox.resolver import select
catalog = load_catalog()
host = HostProfile.load(Path(sys.argv[2]))
with RegistryClient(lambda r: None, cache=BlobCache(Path(sys.argv[3]))) as c:
    for framework in ("torch", "tensorflow"):
        found = remote_candidates(sys.argv[1], catalog, framework, client=c)
        assert select(found.catalog(catalog), [host], framework).selected is not None
print(f"{time.perf_counter() - t0:.4f}")
"""


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} CPUs"


# ---- 1. choosing --------------------------------------------------------------------------------


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


def bench_choose(folder: Path, runs: int) -> None:
    catalog = load_catalog()
    with running_registry(folder / "choose") as server:
        layers = set()
        for spec in catalog.images:
            labels = {**labels_for(spec, "0" * 64), "cudabox.test": "1"}
            pushed = server.push_image(
                f"bench/{spec.name}", "latest", labels, payload=spec.name.encode()
            )
            layers.add(pushed.layer_digest)
        repo = f"{server.host}/bench"
        mark = server.mark()
        cold = [choose_all(repo, folder / f"cold-{n}") for n in range(runs)]
        warm_cache = folder / "warm"
        choose_all(repo, warm_cache)
        warm = [choose_all(repo, warm_cache) for _ in range(runs)]
        process = []
        for _ in range(max(3, runs // 3)):
            started, before = time.perf_counter(), os.times()
            inner = subprocess.run(
                [sys.executable, "-c", CHILD, repo, str(HOST), str(warm_cache)],
                check=True,
                capture_output=True,
                text=True,
            )
            after = os.times()
            cpu = (after.children_user - before.children_user) + (
                after.children_system - before.children_system
            )
            process.append((time.perf_counter() - started, float(inner.stdout), cpu))
        logged = server.requests_since(mark)
    blob_reads = [r.uri.rsplit("/", 1)[1] for r in logged if "/blobs/" in r.uri]
    layer_reads = [b for b in blob_reads if b in layers]
    print(f"## Choosing among all {len(catalog.images)} catalog images (torch and tensorflow)")
    print(f"registry {server.host}, host profile {HOST.name}, {runs} runs each")
    for what, times in (("cold config cache", cold), ("warm config cache", warm)):
        median, worst = statistics.median(times) * 1000, max(times) * 1000
        print(f"- {what}: median {median:.1f} ms, max {worst:.1f} ms")
    print(
        f"- new process: median {statistics.median(p[0] for p in process) * 1000:.0f} ms wall, "
        f"{statistics.median(p[2] for p in process) * 1000:.0f} ms CPU "
        f"(imports + choice {statistics.median(p[1] for p in process) * 1000:.0f} ms wall)"
    )
    print(
        f"- registry log: {len(logged)} requests, {len(blob_reads)} blob reads "
        f"({len(set(blob_reads))} distinct config blobs), {len(layer_reads)} layer reads"
    )
    print(f"- {load()}")


# ---- 2. pulling ---------------------------------------------------------------------------------


def cudabox(*args: str, cwd: Path, docker_host: str | None = None) -> tuple[float, str, str]:
    """`cudabox ARGS` as a user types it; (seconds, stdout, stderr). Fails loudly."""
    command = shutil.which("cudabox", path=str(Path(sys.executable).parent)) or "cudabox"
    env = {**os.environ, "XDG_CACHE_HOME": str(cwd / "cache"), "CUDABOX_HOST_PIP": "1"}
    if docker_host:
        env["DOCKER_HOST"] = docker_host
    started = time.perf_counter()
    done = subprocess.run(
        [command, *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"cudabox {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, done.stdout, done.stderr


def sees_a_docker0() -> bool:
    """Whether this network namespace has a docker0 (the host's: another engine's bridge)."""
    found = subprocess.run(["ip", "link", "show", "docker0"], capture_output=True, check=False)
    return found.returncode == 0


@contextmanager
def empty_engine(folder: Path) -> Iterator[str]:
    """A second Docker daemon with its own, empty image store: a GPU host that has nothing yet.

    Only inside a private network namespace (`unshare --net`): a daemon started with
    `--bridge=none` deletes the host's docker0 interface, which would cut every container of the
    machine's own engine off its network. Own data-root, exec-root (hence its own containerd),
    socket, config and containerd namespaces. Yields its DOCKER_HOST.
    """
    if sees_a_docker0():
        raise RuntimeError("a scratch dockerd runs only where no docker0 exists (unshare --net)")
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        sys.exit("the pull figures need dockerd (or pass --no-pull)")
    # Unix sockets take 107 bytes at most: keep the paths short.
    root = Path(tempfile.mkdtemp(prefix="cbx-engine-", dir="/tmp"))
    socket = root / "docker.sock"
    (root / "daemon.json").write_text("{}")  # not the host's /etc/docker/daemon.json
    log = (folder / "dockerd.log").open("wb")
    process = subprocess.Popen(
        [
            dockerd,
            f"--config-file={root / 'daemon.json'}",
            f"--data-root={root / 'data'}",
            f"--exec-root={root / 'exec'}",
            f"--pidfile={root / 'docker.pid'}",
            f"--host=unix://{socket}",
            "--bridge=none",
            "--iptables=false",
            "--ip-masq=false",
            "--containerd-namespace=cudabox-bench",
            "--containerd-plugins-namespace=cudabox-bench-plugins",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while (
            not socket.exists()
            or subprocess.run(
                ["docker", "-H", f"unix://{socket}", "version"], capture_output=True, check=False
            ).returncode
        ):
            if process.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the scratch dockerd did not start; see {folder / 'dockerd.log'}")
            time.sleep(0.5)
        yield f"unix://{socket}"
    finally:
        process.terminate()  # dockerd unmounts its layers and stops its containerd
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def pull_on_a_fresh_host(storage: Path, folder: Path) -> dict[str, Any]:
    """Inside `unshare --net`: the published storage served again, pulled by a scratch engine."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    served_from = folder / "registry"
    served_from.mkdir()
    (served_from / "storage").symlink_to(storage)  # the blobs as published, read only
    with running_registry(served_from) as server, empty_engine(folder) as host:
        repo = f"{server.host}/cudabox"
        with RegistryClient(lambda r: None, cache=BlobCache(folder / "cache")) as client:
            remote = client.image(f"{repo}/{PULLED}:latest")
        sizes = {layer.digest: layer.size for layer in remote.layers}
        mark = server.mark()
        pull = ("pull", PULLED, "--registry", repo, "--json")
        pull_s, out, err = cudabox(*pull, cwd=folder, docker_host=host)
        served = served_layers(server, mark, sizes)
        (entry,) = json.loads(out)
        again_s, _, again_err = cudabox(*pull, cwd=folder, docker_host=host)
        installed = subprocess.run(
            ["docker", "-H", host, "image", "inspect", "--format", "{{.Size}}", entry["pinned"]],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    return {
        "pull_s": pull_s,
        "layers": len(remote.layers),
        "compressed_bytes": remote.download_bytes,
        "largest_layer_bytes": max(sizes.values()),
        "served_layers": len(served),
        "served_bytes": sum(served.values()),
        "unpacked_bytes": int(installed),
        "progress": [line for line in err.splitlines() if " layers in " in line],
        "again_s": again_s,
        "again_moved": "pull " in again_err,
    }


def bench_pull(folder: Path) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        sys.exit("the pull figures need root and unshare (or pass --no-pull)")
    with running_registry(folder / "pull") as server:
        repo = f"{server.host}/cudabox"
        publish_s, out, _ = cudabox("publish", PULLED, "--registry", repo, "--json", cwd=folder)
        (entry,) = json.loads(out)
        # The development engine holds other images that share most layers of this one (they
        # are reproducible), so a pull there moves only what is new; a fresh host has none.
        inner = folder / "fresh-host"
        inner.mkdir()
        done = subprocess.run(
            [
                "unshare",
                "--net",
                "--",
                sys.executable,
                __file__,
                "--fresh-host-pull",
                str(server.storage),
                str(inner),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            sys.exit(f"the pull on a fresh host failed:\n{done.stdout}\n{done.stderr[-3000:]}")
        figures = json.loads(done.stdout.splitlines()[-1])
        storage = server.storage_bytes()
    mb = 1e6
    print(f"## Pulling {PULLED} from a local registry (plain HTTP on 127.0.0.1)")
    print(f"- `cudabox publish` (verify + push of {entry['layers']} layers): {publish_s:.1f} s")
    print(
        f"- manifest {entry['digest'][:19]}: {figures['layers']} layers, "
        f"{figures['compressed_bytes'] / mb:,.1f} MB compressed "
        f"(largest {figures['largest_layer_bytes'] / mb:,.1f} MB), "
        f"{figures['unpacked_bytes'] / mb:,.1f} MB unpacked; "
        f"registry storage {storage / mb:,.1f} MB"
    )
    print(
        f"- `cudabox pull` on a fresh host (a scratch dockerd with an empty store): "
        f"{figures['pull_s']:.1f} s; the registry served {figures['served_layers']} layers, "
        f"{figures['served_bytes'] / mb:,.1f} MB"
    )
    for line in figures["progress"]:
        print(f"  ({line.strip()})")
    moved = "something moved!" if figures["again_moved"] else "nothing moves"
    print(f"- `cudabox pull` again, the image present: {figures['again_s']:.1f} s ({moved})")
    print(f"- {load()}")


def served_layers(server: RegistryServer, mark: int, sizes: dict[str, int]) -> dict[str, int]:
    """The layer blobs the registry answered with 200 since `mark`, with their sizes."""
    served = {}
    for request in server.requests_since(mark):
        digest = request.uri.rsplit("/", 1)[1]
        blob = request.method == "GET" and "/blobs/" in request.uri
        if blob and digest in sizes and request.status == 200:
            served[digest] = sizes[digest]
    return served


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="runs per choosing figure")
    parser.add_argument("--no-pull", action="store_true", help="skip the pull figures (no Docker)")
    # Internal: the pull on a fresh host, run by bench_pull inside `unshare --net`.
    parser.add_argument("--fresh-host-pull", nargs=2, metavar=("STORAGE", "FOLDER"), type=Path)
    args = parser.parse_args()
    if args.fresh_host_pull:
        print(json.dumps(pull_on_a_fresh_host(*args.fresh_host_pull)))
        return
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"# Registry figures, {now}, {platform.node()} ({platform.platform()})")
    print(f"- before: {load()}\n")
    with tempfile.TemporaryDirectory() as folder:
        bench_choose(Path(folder), args.runs)
        if not args.no_pull:
            print()
            bench_pull(Path(folder))


if __name__ == "__main__":
    main()
