"""Typed options, built at the edge from flags, CUDABOX_* variables and the host's pip config.

Commands turn their argparse Namespace into these values at once; deeper code never sees a
Namespace. The precedence is the same everywhere: a flag, then its CUDABOX_* variable, then
(with --host-pip or CUDABOX_HOST_PIP=1) what the host's own `pip config` says.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cudabox.errors import UsageError

if TYPE_CHECKING:  # `select` reads this module; it needs none of the container types
    from cudabox.container import Ulimit

CA_ENV = "CUDABOX_CA_CERT"
INDEX_ENV = "CUDABOX_INDEX_URL"
WHEELHOUSE_ENV = "CUDABOX_WHEELHOUSE"
HOST_PIP_ENV = "CUDABOX_HOST_PIP"
REGISTRY_ENV = "CUDABOX_REGISTRY"
# Containers and pods get this /dev/shm: Docker's 64 MB breaks DataLoader workers and NCCL.
DEFAULT_SHM = "4g"


# ---- the host's pip configuration --------------------------------------------------------------


@dataclass(frozen=True)
class PipConfig:
    """What `pip config list` says about where packages come from."""

    cert: Path | None = None
    index_url: str | None = None
    # Local find-links folders only: a URL cannot enter a build context.
    find_links: tuple[Path, ...] = ()


def parse_pip_config(listing: str) -> PipConfig:
    """Parse `pip config list` output: `scope.key='value'` lines, the first scope shown wins.

    pip prints the environment (`:env:.`) before site, user and global files, in its own order
    of precedence; find-links may hold several locations separated by whitespace, as paths or
    file:// URLs.
    """
    values: dict[str, str] = {}
    for line in listing.splitlines():
        key, sep, value = line.partition("=")
        name = key.strip().rsplit(".", 1)[-1]
        if sep and name in ("cert", "index-url", "find-links"):
            values.setdefault(name, _unquote(value.strip()))
    folders = []
    for location in values.get("find-links", "").split():
        folder = _local_folder(location)
        if folder is not None and folder not in folders:
            folders.append(folder)
    cert = values.get("cert")
    return PipConfig(
        cert=Path(cert) if cert else None,
        index_url=values.get("index-url") or None,
        find_links=tuple(folders),
    )


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _local_folder(location: str) -> Path | None:
    """A find-links entry as a local folder, or None (a remote URL, or not a folder)."""
    if "://" in location:
        from urllib.parse import unquote, urlparse  # start-up: options loads for every command

        parsed = urlparse(location)
        if parsed.scheme != "file":
            return None
        location = unquote(parsed.path)
    folder = Path(location)
    return folder if folder.is_dir() else None


def read_pip_config(python: str = sys.executable) -> PipConfig:
    """The host pip's settings; an unreadable configuration counts as none."""
    import subprocess  # start-up: options loads for every command; pip is asked only here

    try:
        listing = subprocess.run(
            [python, "-m", "pip", "config", "list"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return PipConfig()
    return parse_pip_config(listing)


# ---- where packages come from (lock and build) ------------------------------------------------


@dataclass(frozen=True)
class PackageSources:
    """The CA bundle, index and local wheel folders that locking and building use."""

    ca_cert: Path | None = None
    index_url: str | None = None
    wheelhouses: tuple[Path, ...] = ()

    @classmethod
    def resolve(
        cls,
        *,
        ca_cert: str | None = None,
        index_url: str | None = None,
        wheelhouses: Sequence[str] = (),
        host_pip: bool = False,
        env: Mapping[str, str] | None = None,
        pip: PipConfig | None = None,
    ) -> PackageSources:
        """Flags, then CUDABOX_* variables, then (host_pip or CUDABOX_HOST_PIP=1) the host pip."""
        env = os.environ if env is None else env
        use_host = host_pip or env_flag(env, HOST_PIP_ENV)
        host = (pip if pip is not None else read_pip_config()) if use_host else PipConfig()
        ca = ca_cert or env.get(CA_ENV) or (str(host.cert) if host.cert else None)
        if wheelhouses:
            folders = [Path(w) for w in wheelhouses]
        elif env.get(WHEELHOUSE_ENV):
            folders = [Path(w) for w in env[WHEELHOUSE_ENV].split(os.pathsep) if w]
        else:
            folders = list(host.find_links)
        sources = cls(
            ca_cert=Path(ca) if ca else None,
            index_url=index_url or env.get(INDEX_ENV) or host.index_url,
            wheelhouses=tuple(folder.resolve() for folder in folders),
        )
        if sources.ca_cert is not None and not sources.ca_cert.is_file():
            what = "is a folder, not a file" if sources.ca_cert.is_dir() else "does not exist"
            raise UsageError(
                f"CA bundle {sources.ca_cert} {what}",
                f"pass an existing PEM file with --ca-cert (or unset {CA_ENV})",
            )
        index = sources.index_url
        # pip and uv also read a local folder laid out as an index.
        from urllib.parse import urlparse  # start-up: options loads for every command

        url = index is not None and urlparse(index).scheme in ("http", "https", "file")
        if index and not url and not Path(index).is_dir():
            raise UsageError(
                f"index {index!r} is neither an http(s):// or file:// URL nor a folder",
                f"pass a URL such as https://pypi.org/simple with --index-url (or unset {INDEX_ENV})",
            )
        for folder in sources.wheelhouses:
            if not folder.is_dir():
                raise UsageError(
                    f"wheelhouse {folder} is not a folder",
                    f"pass a folder of wheels with --wheelhouse (or unset {WHEELHOUSE_ENV})",
                )
        return sources


def env_flag(env: Mapping[str, str], name: str) -> bool:
    """A yes/no variable: 1/true/yes/on or 0/false/no/off (or empty); anything else is a mistake."""
    text = env.get(name, "").strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise UsageError(f"{name}={env[name]!r} is neither yes nor no", f"set {name}=1 or unset it")


# ---- values a user types ------------------------------------------------------------------------

# Docker's size syntax (go-units RAMInBytes): 4g, 512m, 1.5GB, 64MiB; binary multiples.
_SIZE_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?) ?([kKmMgGtTpP])?[iI]?[bB]?$")
# The Docker SDK for Python parses fewer forms than the docker CLI (no "MiB", no t or p), and
# refuses the rest on the client side; this is the form both read.
_SDK_SIZE_RE = re.compile(r"^[0-9]+[bBkKmMgG]?[bB]?$")
_UNITS = "bkmgtp"
INT64_MAX = 2**63 - 1  # the engine reads sizes and rlimits as int64
ULIMIT_NAMES = frozenset(
    [
        "core",
        "cpu",
        "data",
        "fsize",
        "locks",
        "memlock",
        "msgqueue",
        "nice",
        "nofile",
        "nproc",
        "rss",
        "rtprio",
        "rttime",
        "sigpending",
        "stack",
    ]
)


def parse_size(text: str, flag: str) -> str:
    """A size the engine accepts (`4g`, `512m`, `1GB`); a UsageError naming the flag otherwise.

    Written as typed when the Docker SDK reads it that way too, else as a number of bytes.
    """
    match = _SIZE_RE.match(text.strip())
    size: float = 0
    if match:
        number = float(match[1]) if "." in match[1] else int(match[1])  # exact when whole
        size = number * 1024 ** _UNITS.index((match[2] or "b").lower())
    if not match or not 1 <= size <= INT64_MAX:  # also refuses inf, from 400 digits
        raise UsageError(
            f"{flag} {text!r} is not a size", f"write it like the engine does: {flag} 4g or 512m"
        )
    return text.strip() if _SDK_SIZE_RE.match(text.strip()) else str(int(size))


def parse_ulimit(item: str) -> Ulimit:
    """NAME=SOFT[:HARD], -1 meaning unlimited; soft may not exceed hard."""
    name, _, values = item.partition("=")
    soft_text, _, hard_text = values.partition(":")
    hard_text = hard_text or soft_text

    def number(text: str) -> int | None:
        if not re.fullmatch(r"-1|[0-9]+", text.strip()) or int(text) > INT64_MAX:
            return None
        return int(text)

    soft, hard = number(soft_text), number(hard_text)
    if name not in ULIMIT_NAMES or soft is None or hard is None:
        raise UsageError(
            f"--ulimit {item!r} is not NAME=SOFT[:HARD]",
            f"e.g. --ulimit nofile=1024:4096 or memlock=-1 (names: {', '.join(sorted(ULIMIT_NAMES))})",
        )
    unlimited = -1
    if hard != unlimited and (soft == unlimited or soft > hard):
        raise UsageError(
            f"--ulimit {item!r}: the soft limit is above the hard limit",
            f"make SOFT <= HARD, e.g. --ulimit {name}={hard}:{hard}",
        )
    from cudabox.container import Ulimit  # start-up: options loads for every command

    return Ulimit(name, soft, hard)


def parse_pairs(items: Sequence[str], flag: str) -> dict[str, str]:
    result = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} {item!r} is not KEY=VALUE", f"write it as {flag} NAME=value")
        result[key] = value
    return result


_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


def registry_settings(tag: str, ca: Path | None) -> tuple[str, Path | None]:
    """--tag and --registry-ca, checked before any registry is asked."""
    if not _TAG_RE.fullmatch(tag):
        raise UsageError(
            f"--tag {tag!r} is not an image tag",
            "use letters, digits, '_', '.' and '-' (at most 128), e.g. --tag latest",
        )
    if ca is not None and not ca.is_file():
        raise UsageError(
            f"--registry-ca {ca} is not a file", "pass the PEM file of the registry's CA"
        )
    return tag, ca


def current_directory() -> Path:
    """The working directory; a deleted one is a usage error, not a traceback."""
    try:
        return Path.cwd()
    except FileNotFoundError:
        raise UsageError(
            "the current directory no longer exists (it was deleted after this shell entered it)",
            "cd into an existing folder and run the command again",
        ) from None


def absolute(path: Path) -> Path:
    """`path` resolved; one relative to a deleted working directory is a usage error.

    Path.resolve() asks for the working directory, and raised FileNotFoundError there.
    """
    return (path if path.is_absolute() else current_directory() / path).resolve()
