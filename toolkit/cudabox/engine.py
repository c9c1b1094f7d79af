"""The container engine adapter: the only module that imports the Docker SDK for Python.

Docker, and Podman through its Docker-compatible socket, are one `Engine`: it is read once into an
`EngineDescription` (cudabox.container) and turns the SDK's exceptions into cudabox errors with a
fix. Import this module lazily (inside functions): the images carry cudabox but not the SDK.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import os
import re
import shutil
import tarfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types
import docker.utils
import requests.exceptions
import urllib3.exceptions

from cudabox import cdi
from cudabox.container import (
    MANAGED_LABEL,
    BuildOutcome,
    ContainerSpec,
    EngineDescription,
    GpuRequest,
    ImageInfo,
    RunResult,
    TransferEvent,
    gpu_refusal,
    rlimit_refusal,
)
from cudabox.errors import (
    AuthError,
    BuildError,
    CudaboxError,
    DiskFull,
    EngineError,
    NotFound,
    Unavailable,
    UsageError,
)

_STEP_RE = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
_LAYER_RE = re.compile(r"^ ---> ([0-9a-f]{12,64})$")
_NO_SPACE = re.compile(r"no space left on device", re.IGNORECASE)
_NOT_IN_REGISTRY = re.compile(r"manifest unknown|not found|does not exist", re.IGNORECASE)
# How the engine says it could not reach a registry (Go's net errors, as dockerd passes them on).
_NO_SUCH_HOST = re.compile(r"lookup (\S+?)(?: on \S+)?: no such host")
_REFUSED = re.compile(r"dial tcp (\S+): connect: connection refused")
_NO_ANSWER = re.compile(
    r"i/o timeout|TLS handshake timeout|network is unreachable|no route to host|"
    r"request canceled while waiting for connection"
)
# The engine stopped answering: requests' errors, urllib3's (raw stream reads) and the socket's.
_BROKEN_OFF = (
    requests.exceptions.RequestException,
    urllib3.exceptions.HTTPError,
    ConnectionError,
    TimeoutError,
)

# An engine that accepts the connection and never answers must not hang cudabox: the first
# answer (version negotiation, ping) has this long; later calls get the caller's read timeout.
CONNECT_TIMEOUT_S = 5.0
DEFAULT_READ_TIMEOUT_S = 120.0
HOOK = "nvidia-container-runtime-hook"  # Docker registers its "nvidia" GPU driver when this exists

Progress = Callable[[str], None]

ADDRESS_FIX = (
    "set DOCKER_HOST to the engine's socket or address (unix:///var/run/docker.sock, "
    "tcp://HOST:2375, ssh://USER@HOST), or unset it to use the local engine"
)
TLS_FIX = (
    "put ca.pem, cert.pem and key.pem in DOCKER_CERT_PATH (default ~/.docker), or unset "
    "DOCKER_TLS_VERIFY for an engine without TLS"
)
REFUSED_FIX = (
    "the engine's own message above says what it refused; its log (`journalctl -u docker`, or "
    "dockerd's output) may say more"
)
MISSING_IMAGE_FIX = (
    "build it (`cudabox build NAME`) or pull it (`cudabox pull NAME`); `docker images` lists "
    "what the engine has"
)
REGISTRY_FIX = (
    "check the registry's name and this host's network and DNS (the engine connects, not "
    "cudabox); where no registry can answer, make the base with `cudabox base` (it bootstraps "
    "one from Debian packages) and move images with `docker save`/`docker load`"
)
REFERENCE_FIX = "write it as NAME[:TAG] or NAME@sha256:DIGEST, in lowercase, e.g. cudabox/torch:1"


def engine_address() -> str:
    host = os.environ.get("DOCKER_HOST")
    return (
        f"DOCKER_HOST={host}"
        if host
        else "DOCKER_HOST is unset, so the default unix:///var/run/docker.sock"
    )


def is_local_engine(env: Mapping[str, str] | None = None) -> bool:
    """DOCKER_HOST unset or a unix socket: the daemon shares this machine's filesystem."""
    host = (os.environ if env is None else env).get("DOCKER_HOST", "")
    return host == "" or host.startswith("unix://")


START_FIX = (
    "start a Docker engine (`sudo systemctl start docker`, or `dockerd &` where systemd does not run), "
    "or point DOCKER_HOST at one that runs (Podman: `podman system service --time=0 unix:///PATH.sock` "
    "and DOCKER_HOST=unix:///PATH.sock)"
)


@dataclass
class BuildLog:
    """What a build printed, kept per step so that a failure can show the failing step's output."""

    step: str = ""
    instruction: str = ""
    step_output: list[str] = field(default_factory=list)
    image_id: str | None = None
    cached: int = 0
    layer_step: str = ""
    # (instruction, resulting image id) per finished step, in order.
    layers: list[tuple[str, str]] = field(default_factory=list)


# Docker's diff id of a layer that changes no file (an empty tar): it holds no bytes.
EMPTY_LAYER = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"


@dataclass(frozen=True)
class StoredImage:
    """An image as the engine stores it: what `cudabox prune` weighs before removing any."""

    id: str
    tags: tuple[str, ...]
    digests: tuple[str, ...]  # REPO@sha256:... (an image pulled by digest has no tag)
    labels: Mapping[str, str]
    created: int  # seconds since the epoch
    # (chain id, bytes) per layer, bottom first: images that share a chain id share the layer.
    layers: tuple[tuple[str, int], ...]
    last_step: str  # the newest history line (a classic build's last instruction)


@dataclass(frozen=True)
class StoredContainer:
    id: str
    name: str
    image_id: str
    state: str  # created, running, paused, restarting, exited, dead, removing
    labels: Mapping[str, str]
    size: int  # bytes of its writable layer (0 when not asked for)


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """The layer store's key of each layer: its diff id on top of everything below it."""
    chains: list[str] = []
    for diff_id in diff_ids:
        if chains:
            digest = hashlib.sha256(f"{chains[-1]} {diff_id}".encode()).hexdigest()
            chains.append(f"sha256:{digest}")
        else:
            chains.append(diff_id)
    return chains


def layer_sizes(diff_ids: Sequence[str], history: Sequence[Mapping[str, Any]]) -> list[int]:
    """Bytes per layer, from `docker history` (newest first, as the engine answers).

    The engine gives a size per history entry, not per layer; a layer that holds bytes has a
    non-zero entry, in order, and an empty one (EMPTY_LAYER) has none.
    """
    sized = [int(h.get("Size") or 0) for h in reversed(history) if int(h.get("Size") or 0) > 0]
    sizes = []
    for diff_id in diff_ids:
        sizes.append(0 if diff_id == EMPTY_LAYER or not sized else sized.pop(0))
    return sizes


class Engine:
    """A connected container engine. Create it with `Engine.connect()`; it is a context manager."""

    def __init__(self, client: Any) -> None:
        self.client = client

    @classmethod
    def connect(cls, read_timeout: float = DEFAULT_READ_TIMEOUT_S) -> Engine:
        check_address(os.environ)
        try:
            client = docker.from_env(timeout=int(CONNECT_TIMEOUT_S))
            client.ping()
        except docker.errors.TLSParameterError as exc:
            raise Unavailable(
                f"the engine's TLS settings are incomplete ({engine_address()}): {_short(exc)}",
                TLS_FIX,
            ) from None
        except (docker.errors.DockerException, *_BROKEN_OFF) as exc:
            raise Unavailable(
                f"no container engine answers ({engine_address()}): {_short(exc)}", START_FIX
            ) from None
        client.api.timeout = read_timeout
        return cls(client)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @cached_property
    def description(self) -> EngineDescription:
        """The engine's kind, version, runtimes and CDI specs, read once."""
        with _wrapped("read the engine's version and info"):
            version = self.client.version()
            info = self.client.info()
        local = is_local_engine()
        folders = [Path(d) for d in info.get("CDISpecDirs") or ()] or list(cdi.DEFAULT_DIRS)
        return EngineDescription.from_answers(
            version,
            info,
            local=local,
            nvidia_hook=local and shutil.which(HOOK) is not None,
            cdi_specs=cdi.find_specs(folders) if local else (),
        )

    # ---- images -------------------------------------------------------------------------

    def image(self, ref: str) -> ImageInfo | None:
        """The image's facts, or None when the engine does not have it."""
        with _wrapped(f"inspect image {ref}"):
            try:
                attrs = self.client.api.inspect_image(ref)
            except docker.errors.ImageNotFound:
                return None
        config = attrs.get("Config") or {}
        env = dict(item.split("=", 1) for item in config.get("Env") or [] if "=" in item)
        return ImageInfo(
            id=attrs["Id"],
            tags=tuple(attrs.get("RepoTags") or ()),
            size=int(attrs.get("Size") or 0),
            labels=dict(config.get("Labels") or {}),
            env=env,
            user=config.get("User") or "",
            created=attrs.get("Created", ""),
            diff_ids=tuple((attrs.get("RootFS") or {}).get("Layers") or ()),
            repo_digests=tuple(attrs.get("RepoDigests") or ()),
        )

    def images_with_label(self, label: str) -> list[ImageInfo]:
        """Every tagged image carrying `label` (e.g. the ones cudabox built, or pulled)."""
        with _wrapped(f"list images labelled {label}"):
            found = self.client.api.images(filters={"label": label, "dangling": False})
        infos = []
        for entry in found:
            for tag in entry.get("RepoTags") or []:
                info = self.image(tag)
                if info is not None:
                    infos.append(replace(info, tags=(tag,)))
        return infos

    def has_image(self, ref: str) -> bool:
        return self.image(ref) is not None

    def history(self, ref: str) -> list[str]:
        """The `created_by` line of every layer, untruncated (what `docker history` shows)."""
        with _wrapped(f"read the history of {ref}"):
            return [str(entry.get("CreatedBy", "")) for entry in self.client.api.history(ref)]

    def remove_image(self, ref: str, force: bool = False) -> bool:
        """Remove an image (its tag); False when it was not there."""
        with _wrapped(f"remove image {ref}"):
            try:
                self.client.api.remove_image(ref, force=force, noprune=False)
            except docker.errors.ImageNotFound:
                return False
        return True

    def tag(self, ref: str, target: str) -> None:
        repository, tag = split_ref(target)
        with _wrapped(f"tag {ref} as {target}"):
            self.client.api.tag(ref, repository, tag=tag)

    def image_tarball(self, *refs: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The images as `docker save` writes them (layers shared between them once), in chunks."""
        with _wrapped(f"save {' '.join(refs)}"):
            response = self.client.api._get(
                self.client.api._url("/images/get"),
                params={"names": list(refs)},
                stream=True,
                timeout=None,
            )
            try:
                self.client.api._raise_for_status(response)
                yield from response.iter_content(chunk_size=chunk_size)
            finally:
                response.close()  # also when the reader stops early

    def pull(
        self,
        ref: str,
        progress: Progress | None = None,
        events: Callable[[TransferEvent], None] | None = None,
    ) -> None:
        """Pull `ref` (a tag or REPO@sha256:...): `progress` gets messages, `events` per-layer state."""
        repository, tag = split_ref(ref)
        try:
            self._transfer(
                f"pull {ref}",
                lambda: self.client.api.pull(repository, tag=tag, stream=True, decode=True),
                progress,
                events,
            )
        except EngineError as exc:
            if _NOT_IN_REGISTRY.search(exc.message):
                raise NotFound(
                    f"the registry has no {ref} ({exc.message})",
                    "check the name and tag or digest; a digest pruned from the registry is gone: "
                    "choose again (`cudabox select --registry REPO`)",
                ) from None
            raise

    def push(
        self,
        ref: str,
        progress: Progress | None = None,
        events: Callable[[TransferEvent], None] | None = None,
    ) -> str | None:
        """Push `ref`; returns the manifest digest the registry answered (sha256:...)."""
        repository, tag = split_ref(ref)
        return self._transfer(
            f"push {ref}",
            lambda: self.client.api.push(repository, tag=tag, stream=True, decode=True),
            progress,
            events,
        )

    def _transfer(
        self,
        action: str,
        start: Callable[[], Iterator[Mapping[str, Any]]],
        progress: Progress | None,
        events: Callable[[TransferEvent], None] | None,
    ) -> str | None:
        digest = None
        # The request is sent inside the translation: a registry that does not resolve fails
        # at once with a 500 from the SDK, before any of the stream is read.
        with _wrapped(action, transfer=True):
            for event in start():
                if "error" in event or "errorDetail" in event:
                    detail = event.get("errorDetail") or {}
                    raise docker.errors.APIError(str(detail.get("message") or event.get("error")))
                aux = event.get("aux")
                if isinstance(aux, Mapping) and "Digest" in aux:
                    digest = str(aux["Digest"])
                status = str(event.get("status") or "")
                found = re.search(r"digest: (sha256:[0-9a-f]{64})", status)
                if found:
                    digest = found[1]
                if events is not None and status:
                    detail = event.get("progressDetail") or {}
                    events(
                        TransferEvent(
                            layer=event.get("id") if "id" in event else None,
                            status=status,
                            current=detail.get("current"),
                            total=detail.get("total"),
                        )
                    )
                if progress and status and "id" not in event:
                    progress(status)
        return digest

    def import_tarball(self, tarball: Path, ref: str, changes: Sequence[str] = ()) -> str:
        """`docker import`: a root filesystem tarball becomes the image `ref`; returns its id."""
        repository, tag = split_ref(ref)
        if not tarball.is_file():  # the SDK would open it and raise a bare OSError
            raise BuildError(f"cannot import {tarball} as {ref}: it is not a file")
        with _wrapped(f"import {tarball} as {ref}"):
            answer = self.client.api.import_image_from_file(
                str(tarball), repository=repository, tag=tag, changes=list(changes)
            )
        text = answer if isinstance(answer, str) else str(answer)
        match = re.search(r"sha256:[0-9a-f]{64}", text)
        info = self.image(ref)
        if info is None:
            raise BuildError(f"importing {tarball} did not create {ref}: {text.strip()}")
        return match[0] if match else info.id

    def build(
        self,
        context: Path,
        tag: str,
        *,
        buildargs: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        target: str | None = None,
        nocache: bool = False,
        progress: Progress | None = None,
        log: BuildLog | None = None,
    ) -> BuildOutcome:
        """Build `context` (classic builder) and tag it.

        Progress gets every build step and the lines it prints. A failing step raises BuildError
        naming the step, with the tail of its output; pass `log` to keep the layers made so far.
        """
        log = log if log is not None else BuildLog()
        if not context.is_dir():  # the SDK raises a bare TypeError for it
            raise BuildError(f"cannot build {tag}: the build context {context} is not a folder")
        with _wrapped(f"build {tag}", building=True):
            events = self.client.api.build(
                path=str(context),
                tag=tag,
                buildargs=dict(buildargs or {}),
                labels=dict(labels or {}),
                target=target,
                nocache=nocache,
                rm=True,
                forcerm=True,
                pull=False,
                decode=True,
            )
            for event in events:
                self._on_build_event(event, log, progress)
        if log.image_id is None:
            raise BuildError(f"the build of {tag} ended without an image")
        return BuildOutcome(log.image_id, tuple(log.layers), log.cached)

    @staticmethod
    def _on_build_event(event: Mapping[str, Any], log: BuildLog, progress: Progress | None) -> None:
        if "error" in event or "errorDetail" in event:
            detail = event.get("errorDetail") or {}
            message = str(detail.get("message") or event.get("error") or "unknown error").strip()
            tail = "\n".join(log.step_output[-40:])
            failed = log.step or "(before the first step)"
            error_class = DiskFull if _NO_SPACE.search(message) else BuildError
            if error_class is DiskFull:
                fix = "free disk space for the engine (`cudabox prune`, remove images you no longer need)"
            elif log.instruction.startswith("FROM "):
                # The classic builder pulls a base it lacks; where no registry answers, that fails.
                fix = (
                    "the base image is neither on this engine nor pullable: `cudabox base` makes "
                    "it (a pull, else a bootstrap from Debian packages)"
                )
            else:
                fix = (
                    "read the step's output above; a network error inside the build often needs "
                    "--ca-cert, --index-url or --wheelhouse"
                )
            raise error_class(
                f"build step {failed} failed: {' '.join(message.split())}"
                + (f"\n--- output of the step ---\n{tail}" if tail else ""),
                fix,
            )
        aux = event.get("aux")
        if isinstance(aux, dict) and "ID" in aux:
            log.image_id = str(aux["ID"])
        text = event.get("stream")
        if text is None and event.get("status"):
            text = f"{event['status']} {event.get('progress', '')}".rstrip() + "\n"
        if not text:
            return
        for line in str(text).splitlines():
            line = line.rstrip()
            if not line:
                continue
            step = _STEP_RE.match(line)
            layer = _LAYER_RE.match(line)
            if step:
                log.step = f"{step[1]}/{step[2]} ({step[3]})"
                log.instruction = step[3]
                log.step_output = []
            elif layer:
                # The last id a step prints is its result.
                if log.layer_step == log.step:
                    log.layers[-1] = (log.instruction, layer[1])
                else:
                    log.layers.append((log.instruction, layer[1]))
                    log.layer_step = log.step
            else:
                if line == " ---> Using cache":
                    log.cached += 1
                log.step_output.append(line)
                found = re.match(r"^Successfully built ([0-9a-f]+)$", line)
                if found and log.image_id is None:
                    log.image_id = found[1]
            if progress:
                progress(line)

    # ---- containers -----------------------------------------------------------------------

    def run(
        self,
        image: str,
        command: Sequence[str],
        *,
        timeout: float,
        files: Mapping[str, bytes] | None = None,
        files_dir: str = "/tmp/cudabox",
        environment: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        user: str | None = None,
        network: bool = False,
        gpus: bool = False,
    ) -> RunResult:
        """Run `command` in a fresh container to completion (or `timeout` seconds) and remove it.

        `files` (name -> content) are copied into `files_dir` before the container starts, which
        works with remote engines too (unlike bind mounts).
        """
        name = f"cudabox-{uuid.uuid4().hex[:12]}"
        all_labels = {MANAGED_LABEL: "1", **(labels or {})}
        device_requests = [GpuRequest(count=-1).device_request()] if gpus else []
        started = time.monotonic()
        with _wrapped(f"run {' '.join(command)} in {image}"):
            try:
                container = self.client.containers.create(
                    image,
                    command=list(command),
                    name=name,
                    labels=all_labels,
                    environment=dict(environment or {}),
                    user=user,
                    network_disabled=not network,
                    device_requests=device_requests or None,
                )
            except docker.errors.ImageNotFound:
                raise Unavailable(
                    f"image {image} is not in the engine", MISSING_IMAGE_FIX
                ) from None
            try:
                if files:
                    container.put_archive(str(Path(files_dir).parent), _tar_of(files, files_dir))
                container.start()
                timed_out = False
                exit_code: int | None
                try:
                    exit_code = int(container.wait(timeout=timeout)["StatusCode"])
                except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                    timed_out = True
                    exit_code = None
                    container.kill()
                output = container.logs(stdout=True, stderr=True).decode(errors="replace")
            finally:
                container.remove(force=True)
        return RunResult(exit_code, output, time.monotonic() - started, timed_out)

    @contextmanager
    def started(self, spec: ContainerSpec) -> Iterator[_Running]:
        """A started container for `spec`, removed when the block ends, whatever happens.

        The engine also removes it on its own when it exits (auto-remove), so even a launcher
        killed with SIGKILL leaves nothing once the command ends.
        """
        running = _start(self, spec)
        try:
            yield running
        finally:
            running.remove()

    def containers_with_label(self, label: str) -> list[str]:
        with _wrapped("list containers"):
            return [c.name for c in self.client.containers.list(all=True, filters={"label": label})]

    # ---- what `cudabox prune` weighs and removes ------------------------------------------

    def stored_images(self) -> list[StoredImage]:
        """Every tagged or top-level image, with its layers' chain ids and sizes."""
        with _wrapped("list images"):
            found = self.client.api.images(all=False)
        stored = []
        for entry in found:
            image_id = str(entry["Id"])
            with _wrapped(f"inspect image {image_id}"):
                try:
                    attrs = self.client.api.inspect_image(image_id)
                    history = self.client.api.history(image_id)
                except docker.errors.ImageNotFound:
                    continue  # removed since the list: nothing to weigh
            diff_ids = list((attrs.get("RootFS") or {}).get("Layers") or ())
            tags = tuple(t for t in attrs.get("RepoTags") or () if t != "<none>:<none>")
            digests = tuple(d for d in attrs.get("RepoDigests") or () if d != "<none>@<none>")
            stored.append(
                StoredImage(
                    id=image_id,
                    tags=tags,
                    digests=digests,
                    labels=dict((attrs.get("Config") or {}).get("Labels") or {}),
                    created=int(entry.get("Created") or 0),
                    layers=tuple(
                        zip(chain_ids(diff_ids), layer_sizes(diff_ids, history), strict=True)
                    ),
                    last_step=str(history[0].get("CreatedBy", "")) if history else "",
                )
            )
        return stored

    def stored_containers(self, label: str | None = None) -> list[StoredContainer]:
        """Every container (with `label`, and then with its writable layer's size), any state."""
        filters = {"label": label} if label else None
        with _wrapped("list containers"):
            found = self.client.api.containers(all=True, size=label is not None, filters=filters)
        return [
            StoredContainer(
                id=str(c["Id"]),
                name=str((c.get("Names") or [""])[0]).lstrip("/"),
                image_id=str(c.get("ImageID") or ""),
                state=str(c.get("State") or ""),
                labels=dict(c.get("Labels") or {}),
                size=int(c.get("SizeRw") or 0),
            )
            for c in found
        ]

    def delete_image(self, ref: str) -> frozenset[str]:
        """Remove an image (one tag, or an untagged image by id) and its untagged parents.

        Returns the ids the engine says it deleted (Docker: images and layers' chain ids;
        Podman: images only). A parent or a layer that another image still uses stays.
        """
        with _wrapped(f"remove image {ref}"):
            answer = self.client.api.remove_image(ref, force=False, noprune=False)
        return frozenset(str(item["Deleted"]) for item in answer or () if item.get("Deleted"))

    def remove_container(self, container_id: str) -> None:
        # NotFound: already gone.
        with (
            _wrapped(f"remove container {container_id[:12]}"),
            contextlib.suppress(docker.errors.NotFound),
        ):
            self.client.api.remove_container(container_id, v=True)


def check_address(env: Mapping[str, str]) -> None:
    """A DOCKER_HOST the SDK cannot use is named as such, not as an engine that is down."""
    host = env.get("DOCKER_HOST", "")
    if not host:
        return
    try:
        # ValueError: a port that is not a number (tcp://host:x), or out of range.
        docker.utils.parse_host(host, False)
    except (docker.errors.DockerException, ValueError) as exc:
        raise Unavailable(
            f"DOCKER_HOST={host} is not an engine address: {_short(exc)}", ADDRESS_FIX
        ) from None
    if host.startswith("npipe:"):
        raise Unavailable(f"DOCKER_HOST={host} is a Windows named pipe", ADDRESS_FIX)
    if host.startswith("ssh:") and importlib.util.find_spec("paramiko") is None:
        raise Unavailable(
            f"DOCKER_HOST={host} needs the paramiko package, which is not installed",
            "pip install paramiko; or forward the engine's socket (`ssh -nNT -L "
            "/tmp/docker.sock:/var/run/docker.sock USER@HOST &`) and set "
            "DOCKER_HOST=unix:///tmp/docker.sock",
        )


def split_ref(ref: str) -> tuple[str, str]:
    """'python:3.11-slim' -> ('python', '3.11-slim'); 'r/x@sha256:..' -> ('r/x', 'sha256:..').

    A ref without a tag means 'latest'. The SDK takes a digest in the tag argument.
    """
    if "@" in ref:
        name, _, digest = ref.partition("@")
        return name, digest
    name, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        return ref, "latest"
    return name, tag


def _tar_of(files: Mapping[str, bytes], files_dir: str) -> bytes:
    """A tar stream that creates `files_dir` (world-readable) holding `files`."""
    buffer = io.BytesIO()
    now = time.time()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        # put_archive extracts into an existing folder: "/tmp/cudabox" goes into /tmp as cudabox/.
        leaf = Path(files_dir).name
        if leaf:
            info = tarfile.TarInfo(leaf)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            info.mtime = int(now)
            tar.addfile(info)
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(f"{leaf}/{name}" if leaf else name)
            info.size = len(content)
            info.mode = 0o644
            info.mtime = int(now)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


def registry_unreachable(text: str) -> str | None:
    """The engine's words for a registry it could not reach, as a short reason; else None."""
    found = _NO_SUCH_HOST.search(text)
    if found:
        return f"{found[1]} does not resolve"
    found = _REFUSED.search(text)
    if found:
        return f"{found[1]} refused the connection"
    if _NO_ANSWER.search(text):
        return "the registry did not answer"
    return None


@contextmanager
def _wrapped(action: str, building: bool = False, transfer: bool = False) -> Iterator[None]:
    """Turn the SDK's exceptions into cudabox errors that say what cudabox was doing.

    Every call into the SDK (the request and the stream it answers) runs inside one of these.
    Only a build's own failures are build errors (exit 5); an engine that refuses anything else
    (an inspect, a list, a push) is an engine error (exit 7); one that stops answering, or a
    registry a pull or push cannot reach (`transfer`), exit 4.
    """
    refused = BuildError if building else EngineError
    try:
        yield
    except CudaboxError:
        raise
    except docker.errors.BuildError as exc:
        raise BuildError(f"could not {action}: {_short(exc)}") from None
    except docker.errors.APIError as exc:
        text = " ".join(str(exc.explanation or exc).split())  # one line
        refusal = gpu_refusal(text)
        if refusal is not None:
            raise refusal from None
        if _NO_SPACE.search(text):
            raise DiskFull(
                f"could not {action}: the engine ran out of disk space ({text})",
                "free disk space for the engine (`cudabox prune`, remove images you no longer need)",
            ) from None
        if "invalid reference format" in text:
            raise UsageError(
                f"could not {action}: not a valid image reference ({text})", REFERENCE_FIX
            ) from None
        unreachable = registry_unreachable(text) if transfer else None
        if unreachable is not None:
            raise Unavailable(f"could not {action}: {unreachable} ({text})", REGISTRY_FIX) from None
        if isinstance(exc, docker.errors.ImageNotFound):
            raise refused(f"could not {action}: {text}", MISSING_IMAGE_FIX) from None
        raise refused(
            f"could not {action}: {text or _short(exc)}", None if building else REFUSED_FIX
        ) from None
    except docker.errors.DockerException as exc:
        # The SDK refused the request itself (a value it cannot send); the engine never saw it.
        raise refused(
            f"could not {action}: {_short(exc)}", None if building else REFUSED_FIX
        ) from None
    except _BROKEN_OFF as exc:
        # Also a connection that broke mid-answer (ChunkedEncodingError), or a stream read from
        # the raw socket (urllib3's and the socket's own errors, which requests never wraps).
        raise Unavailable(
            f"could not {action}: the engine stopped answering ({_short(exc)})", START_FIX
        ) from None


# ---- long-running containers (cudabox run / train) ------------------------------------------


class _Running:
    """A started container: its output (stdout and stderr apart), signals, exit code, removal.

    The exit code comes from a wait that was registered before the start, as `docker run --rm`
    does.
    """

    def __init__(self, container: Any, output: Iterator[Any], waiter: Any) -> None:
        self._container = container
        self._output = output
        self._waiter = waiter
        self.name: str = container.name

    def stream(self) -> Iterator[tuple[bytes | None, bytes | None]]:
        """(stdout, stderr) chunks from the command's first byte (attached before the start)."""
        try:
            for item in self._output:
                if isinstance(item, tuple):
                    yield item[0], item[1]
                else:
                    yield item, None
        except (docker.errors.APIError, *_BROKEN_OFF):
            return  # the connection ended with the container; wait() has the exit code

    def signal(self, signum: int) -> None:
        # An APIError here means it has already stopped: nothing left to signal.
        with contextlib.suppress(docker.errors.APIError, *_BROKEN_OFF):
            self._container.kill(signal=signum)

    def wait(self) -> int:
        try:
            answer = self._waiter.json()
        except (ValueError, *_BROKEN_OFF) as exc:
            raise Unavailable(f"lost track of container {self.name}: {_short(exc)}") from None
        if answer.get("Error") and answer["Error"].get("Message"):
            raise Unavailable(f"waiting for {self.name} failed: {answer['Error']['Message']}")
        return int(answer["StatusCode"])

    def remove(self) -> None:
        try:
            self._container.remove(force=True)
        except docker.errors.NotFound:
            pass  # already gone: auto-remove got there first
        except docker.errors.APIError as exc:
            if "already in progress" not in str(exc):
                raise EngineError(
                    f"could not remove container {self.name}: {_short(exc)}",
                    f"remove it by hand: `docker rm -f {self.name}`",
                ) from None
        except _BROKEN_OFF as exc:
            raise Unavailable(
                f"could not remove container {self.name}: {_short(exc)}",
                f"remove it by hand once the engine answers: `docker rm -f {self.name}`",
            ) from None


def _register_wait(client: Any, container_id: str) -> Any:
    """Ask for the exit code before the start; the engine answers the headers at once.

    The SDK's own wait() blocks until the end, and from a thread it could be registered only
    after a fast command was already removed; so the request goes out here, its body read later.
    """
    api = client.api
    response = api._post(
        api._url("/containers/{0}/wait", container_id),
        params={"condition": "next-exit"},  # Podman answers 0 to "removed"
        stream=True,
        timeout=None,
    )
    api._raise_for_status(response)
    return response


def _start(engine: Engine, spec: ContainerSpec) -> _Running:
    """Create and start a container; a GPU request the engine cannot serve is Unavailable."""
    network_mode = "host" if spec.host_network else (None if spec.network else "none")
    host_config: dict[str, Any] = {
        "image": spec.image,
        "command": list(spec.command),
        "name": spec.name,
        "working_dir": spec.workdir,
        "environment": dict(spec.environment),
        "user": spec.user,
        "labels": {MANAGED_LABEL: "1", **spec.labels},
        "mounts": [
            docker.types.Mount(target=m.target, source=m.source, type="bind", read_only=m.read_only)
            for m in spec.mounts
        ],
        "shm_size": spec.shm_size,
        "init": spec.init or None,
        "ulimits": [
            docker.types.Ulimit(name=u.name, soft=u.soft, hard=u.hard) for u in spec.ulimits
        ]
        or None,
        "device_requests": [spec.gpus.device_request()] if spec.gpus else None,
        "network_mode": network_mode,
        "auto_remove": True,
        "detach": True,
    }
    container = None
    try:
        container = engine.client.containers.create(**host_config)
        waiter = _register_wait(engine.client, container.id)
        # Attach before starting, so that a command that exits at once loses no output to the
        # auto-remove (as `docker run --rm` does); demux keeps stdout and stderr apart.
        output = engine.client.api.attach(
            container.id, stdout=True, stderr=True, stream=True, logs=True, demux=True
        )
        container.start()
    except docker.errors.APIError as exc:
        if container is not None:
            _force_remove(container)
        text = str(exc.explanation or exc)
        refusal = gpu_refusal(text) or rlimit_refusal(text)
        if refusal is not None:
            raise refusal from None
        if isinstance(exc, docker.errors.ImageNotFound):
            raise Unavailable(
                f"image {spec.image} is not in the engine", MISSING_IMAGE_FIX
            ) from None
        raise EngineError(
            f"could not start a container from {spec.image}: {text.strip()}", REFUSED_FIX
        ) from None
    except docker.errors.DockerException as exc:
        # Refused by the SDK before anything was sent (a value it cannot encode): not an engine
        # that is down.
        if container is not None:
            _force_remove(container)
        raise EngineError(
            f"could not start a container from {spec.image}: {_short(exc)}", REFUSED_FIX
        ) from None
    except _BROKEN_OFF as exc:
        if container is not None:
            _force_remove(container)
        raise Unavailable(f"could not start a container: {_short(exc)}", START_FIX) from None
    return _Running(container, output, waiter)


def _force_remove(container: Any) -> None:
    with contextlib.suppress(docker.errors.APIError, *_BROKEN_OFF):
        container.remove(force=True)


def registry_credentials(registry: str) -> tuple[str, str] | None:
    """The user's Docker login for `registry` (host[:port], "docker.io" for Docker Hub), or None.

    Read as the Docker CLI reads it ($DOCKER_CONFIG/config.json, else ~/.docker/config.json,
    credential stores and helpers included), so `docker login` is all a user does. An identity
    token comes back as Docker's own pair ("<token>", TOKEN). Used by cudabox.registry.
    """
    # Only a registry command reads the Docker login; the rest of the SDK is loaded above.
    import docker.auth
    import docker.utils.config

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a missing helper warns, then fails: the error says it
            found = docker.auth.load_config().resolve_authconfig(registry)
    except (docker.errors.DockerException, ValueError, TypeError, AttributeError, OSError) as exc:
        where = docker.utils.config.find_config_file() or "the Docker config"
        raise AuthError(
            f"cannot read the Docker credentials for {registry} from {where}: "
            f"{str(exc) or type(exc).__name__}",
            f"repair that file (or its credential helper), then `docker login {registry}`",
        ) from None
    if not found:
        return None
    token = found.get("IdentityToken")
    if token:
        return ("<token>", str(token))
    username = found.get("username") or found.get("Username")
    password = found.get("password") or found.get("Password")
    if not username or password is None:
        return None
    return (str(username), str(password))
