"""The container engine adapter: the only module that imports the Docker SDK for Python.

Everything else in cudabox talks to Docker (or Podman's Docker-compatible socket) through
`Engine`, which turns the SDK's exceptions into cudabox errors with a fix. Import this module
lazily (inside functions): the images carry cudabox but not the Docker SDK.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types
import requests.exceptions

from cudabox.errors import BuildError, CudaboxError, Unavailable

# Every container cudabox starts carries this label, so leftovers can be found and removed.
MANAGED_LABEL = "cudabox.managed"
_STEP_RE = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
_LAYER_RE = re.compile(r"^ ---> ([0-9a-f]{12,64})$")

Progress = Callable[[str], None]


def _engine_address() -> str:
    host = os.environ.get("DOCKER_HOST")
    return (
        f"DOCKER_HOST={host}"
        if host
        else "DOCKER_HOST is unset, so the default unix:///var/run/docker.sock"
    )


_START_FIX = (
    "start a Docker engine (`sudo systemctl start docker`, or `dockerd &` where systemd does not run), "
    "or point DOCKER_HOST at one that runs (Podman: `podman system service --time=0 unix:///PATH.sock` "
    "and DOCKER_HOST=unix:///PATH.sock)"
)


@dataclass(frozen=True)
class ImageInfo:
    id: str
    tags: tuple[str, ...]
    size: int  # bytes, as the engine reports it (all layers)
    labels: dict[str, str]
    env: dict[str, str]
    user: str
    created: str


@dataclass(frozen=True)
class RunResult:
    exit_code: int | None  # None when the container was killed at the timeout
    output: str  # stdout and stderr, interleaved as the engine kept them
    seconds: float
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


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


@dataclass(frozen=True)
class BuildOutcome:
    image_id: str
    layers: tuple[tuple[str, str], ...]  # (instruction, image id) per step, stages included
    cached_steps: int


class Engine:
    """A connected container engine. Create it with `Engine.connect()`."""

    def __init__(self, client: Any) -> None:
        self.client = client

    @classmethod
    def connect(cls, timeout: int = 600) -> Engine:
        try:
            client = docker.from_env(timeout=timeout)
            client.ping()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise Unavailable(
                f"no container engine answers ({_engine_address()}): {_short(exc)}", _START_FIX
            ) from None
        return cls(client)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
        )

    def info(self) -> dict[str, Any]:
        """`docker info`: runtimes, CDI spec folders, storage driver, ..."""
        with _wrapped("read the engine's info"):
            return dict(self.client.info())

    def version(self) -> dict[str, Any]:
        """`docker version`: the engine's components (Docker Engine, or Podman Engine)."""
        with _wrapped("read the engine's version"):
            return dict(self.client.version())

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

    def image_tarball(self, ref: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The image as `docker save` writes it (every layer, uncompressed), in chunks."""
        with _wrapped(f"save {ref}"):
            yield from self.client.api.get_image(ref, chunk_size=chunk_size)

    def pull(self, ref: str, progress: Progress | None = None) -> None:
        repository, tag = split_ref(ref)
        with _wrapped(f"pull {ref}"):
            for event in self.client.api.pull(repository, tag=tag, stream=True, decode=True):
                if "error" in event:
                    raise docker.errors.APIError(event["error"])
                if progress and event.get("status") and "id" not in event:
                    progress(str(event["status"]))

    def import_tarball(self, tarball: Path, ref: str, changes: Sequence[str] = ()) -> str:
        """`docker import`: a root filesystem tarball becomes the image `ref`; returns its id."""
        repository, tag = split_ref(ref)
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
        with _wrapped(f"build {tag}"):
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
            raise BuildError(
                f"build step {failed} failed: {message}"
                + (f"\n--- output of the step ---\n{tail}" if tail else ""),
                "read the step's output above; a network error inside the build often needs --ca-cert, --index-url or --wheelhouse",
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

    # ---- short-lived containers ------------------------------------------------------------

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

    def containers_with_label(self, label: str) -> list[str]:
        with _wrapped("list containers"):
            return [c.name for c in self.client.containers.list(all=True, filters={"label": label})]


def split_ref(ref: str) -> tuple[str, str]:
    """'python:3.11-slim' -> ('python', '3.11-slim'); a ref without a tag means 'latest'."""
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


_NO_GPU_RUNTIME = re.compile(
    r"could not select device driver|unknown or invalid runtime name: nvidia"
)
_CDI_UNRESOLVED = re.compile(r"unresolvable CDI devices|CDI device injection failed")
GPU_PASSTHROUGH_FIX = (
    "install the NVIDIA Container Toolkit and register it with the engine "
    "(`sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker`), "
    "or generate a CDI spec (`sudo nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`); "
    "or run on the CPU with --cpu"
)


def _gpu_refusal(text: str) -> Unavailable | None:
    """The engine's answer to a GPU request it cannot serve, as a diagnosis with the fix."""
    if _NO_GPU_RUNTIME.search(text):
        return Unavailable(
            f"the container engine cannot pass GPUs to containers: {text.strip()}",
            GPU_PASSTHROUGH_FIX,
        )
    if _CDI_UNRESOLVED.search(text):
        return Unavailable(
            f"the engine's CDI specs do not provide the GPUs asked for: {text.strip()}",
            "regenerate the spec after a driver change: `sudo nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`",
        )
    return None


@contextmanager
def _wrapped(action: str) -> Iterator[None]:
    """Turn the SDK's exceptions into cudabox errors that say what cudabox was doing."""
    try:
        yield
    except CudaboxError:
        raise
    except docker.errors.ImageNotFound as exc:
        raise BuildError(f"could not {action}: image not found ({_short(exc)})") from None
    except docker.errors.BuildError as exc:
        raise BuildError(f"could not {action}: {_short(exc)}") from None
    except docker.errors.APIError as exc:
        refusal = _gpu_refusal(str(exc.explanation or exc))
        if refusal is not None:
            raise refusal from None
        raise BuildError(f"could not {action}: {exc.explanation or _short(exc)}") from None
    except (docker.errors.DockerException, requests.exceptions.ConnectionError) as exc:
        raise Unavailable(
            f"could not {action}: the engine stopped answering ({_short(exc)})", _START_FIX
        ) from None


# ---- long-running containers (cudabox run / train) ------------------------------------------


@dataclass(frozen=True)
class GpuRequest:
    """Which GPUs a container gets: all, a count, or device ids (indices or UUIDs)."""

    count: int | None = None  # -1 = all
    device_ids: tuple[str, ...] = ()
    cdi: bool = (
        False  # name the devices through CDI (nvidia.com/gpu=...) instead of the runtime hook
    )

    def device_request(self) -> dict[str, Any]:
        if self.cdi:
            ids = [f"nvidia.com/gpu={d}" for d in self.device_ids] or ["nvidia.com/gpu=all"]
            return {"driver": "cdi", "device_ids": ids}
        if self.device_ids:
            return {"device_ids": list(self.device_ids), "capabilities": [["gpu"]]}
        return {"count": self.count if self.count is not None else -1, "capabilities": [["gpu"]]}

    def cli(self) -> list[str]:
        if self.cdi:
            ids = self.device_ids or ("all",)
            return [arg for d in ids for arg in ("--device", f"nvidia.com/gpu={d}")]
        if self.device_ids:
            return ["--gpus", f'"device={",".join(self.device_ids)}"']
        return ["--gpus", "all" if self.count in (None, -1) else str(self.count)]


@dataclass(frozen=True)
class ContainerSpec:
    image: str
    command: tuple[str, ...]
    name: str
    workdir: str | None = None
    mounts: tuple[tuple[str, str, bool], ...] = ()  # (host path, container path, read only)
    environment: Mapping[str, str] = field(default_factory=dict)
    user: str | None = None
    gpus: GpuRequest | None = None
    shm_size: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    ulimits: tuple[tuple[str, int, int], ...] = ()  # (name, soft, hard)
    init: bool = True  # an init process forwards signals to the command and reaps zombies

    def docker_cli(self) -> list[str]:
        """The equivalent `docker run` command line."""
        args = ["docker", "run", "--rm", "--name", self.name]
        if self.init:
            args.append("--init")
        for key, value in self.labels.items():
            args += ["--label", f"{key}={value}"]
        if self.user:
            args += ["--user", self.user]
        for host, inside, read_only in self.mounts:
            args += ["-v", f"{host}:{inside}{':ro' if read_only else ''}"]
        if self.workdir:
            args += ["-w", self.workdir]
        if self.shm_size:
            args += ["--shm-size", self.shm_size]
        for name, soft, hard in self.ulimits:
            args += ["--ulimit", f"{name}={soft}:{hard}"]
        if self.gpus:
            args += self.gpus.cli()
        for key, value in self.environment.items():
            args += ["-e", f"{key}={value}"]
        return [*args, self.image, *self.command]


class RunningContainer:
    """A started container: stream its output, signal it, wait for it, remove it.

    The engine removes the container itself when it exits (auto-remove), so even a launcher
    killed with SIGKILL leaves nothing behind once the command ends. The exit code comes from a
    wait that was registered before the start, as `docker run --rm` does.
    """

    def __init__(self, container: Any, output: Iterator[bytes], waiter: Any) -> None:
        self._container = container
        self._output = output
        self._waiter = waiter
        self.name: str = container.name

    def stream(self) -> Iterator[bytes]:
        """The command's stdout and stderr, from its first byte (attached before the start)."""
        try:
            yield from self._output
        except (docker.errors.APIError, requests.exceptions.RequestException):
            return  # the connection ended with the container; wait() has the exit code

    def signal(self, signum: int) -> None:
        # An APIError here means it has already stopped: nothing left to signal.
        with contextlib.suppress(docker.errors.APIError):
            self._container.kill(signal=signum)

    def wait(self) -> int:
        try:
            answer = self._waiter.json()
        except (ValueError, requests.exceptions.RequestException) as exc:
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
                raise Unavailable(
                    f"could not remove container {self.name}: {_short(exc)}"
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


def engine_info(engine: Engine) -> dict[str, Any]:
    """The engine's info, with its version under "_version" (the launcher needs both)."""
    return {**engine.info(), "_version": engine.version()}


def start_container(engine: Engine, spec: ContainerSpec) -> RunningContainer:
    """Create and start a container; a GPU request the engine cannot serve is Unavailable."""
    host_config: dict[str, Any] = {
        "image": spec.image,
        "command": list(spec.command),
        "name": spec.name,
        "working_dir": spec.workdir,
        "environment": dict(spec.environment),
        "user": spec.user,
        "labels": {MANAGED_LABEL: "1", **spec.labels},
        "mounts": [
            docker.types.Mount(target=inside, source=host, type="bind", read_only=read_only)
            for host, inside, read_only in spec.mounts
        ],
        "shm_size": spec.shm_size,
        "init": spec.init or None,
        "ulimits": [docker.types.Ulimit(name=n, soft=s, hard=h) for n, s, h in spec.ulimits]
        or None,
        "device_requests": [spec.gpus.device_request()] if spec.gpus else None,
        "auto_remove": True,
        "detach": True,
    }
    container = None
    try:
        container = engine.client.containers.create(**host_config)
        waiter = _register_wait(engine.client, container.id)
        # Attach before starting, so that a command that exits at once loses no output to the
        # auto-remove (as `docker run --rm` does).
        output = container.attach(stdout=True, stderr=True, stream=True, logs=True)
        container.start()
    except docker.errors.APIError as exc:
        if container is not None:
            _force_remove(container)
        text = str(exc.explanation or exc)
        refusal = _gpu_refusal(text)
        if refusal is not None:
            raise refusal from None
        if isinstance(exc, docker.errors.ImageNotFound):
            raise Unavailable(
                f"image {spec.image} is not in the engine", "build it first: `cudabox build NAME`"
            ) from None
        raise Unavailable(
            f"could not start a container from {spec.image}: {text.strip()}"
        ) from None
    except (docker.errors.DockerException, requests.exceptions.ConnectionError) as exc:
        if container is not None:
            _force_remove(container)
        raise Unavailable(f"could not start a container: {_short(exc)}", _START_FIX) from None
    return RunningContainer(container, output, waiter)


def _force_remove(container: Any) -> None:
    with contextlib.suppress(docker.errors.APIError):
        container.remove(force=True)
