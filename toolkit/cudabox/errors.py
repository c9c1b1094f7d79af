"""Error classes for everything a user can get wrong or a host can lack.

Each class carries its own exit code, so scripts can tell a usage mistake from a host that
cannot run the job. Messages follow one shape: what went wrong, then how to fix it.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # a check failed, or the user's command failed
    USAGE = 2  # bad arguments or bad input files
    NO_FIT = 3  # no catalog image fits the host(s)
    UNAVAILABLE = 4  # could not run: no engine, no GPU passthrough, no driver where one is needed
    BUILD = 5  # an image build or its verification failed
    DATA = 6  # the project's own data (catalog, compat tables) is invalid
    ENGINE = 7  # the container engine refused an operation that is not a build
    AUTH = 8  # a registry refused the credentials (or asked for some and none were given)
    NOT_FOUND = 9  # a registry has no such repository, tag or digest
    PLATFORM = 10  # the registry has the image, but not for linux/amd64
    INTEGRITY = 11  # content does not match its digest, or a pulled image is not what was judged
    UNLABELLED = 12  # an image carries no cudabox labels, so it cannot be judged
    DISK_FULL = 13  # no space left while writing (a pull, a build, a report)
    INTERRUPTED = 130


class CudaboxError(Exception):
    """Base class: a failure with a plain diagnosis and a fix, shown without a traceback."""

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def render(self) -> str:
        text = f"cudabox: error: {self.message}"
        if self.fix:
            text += f"\n  fix: {self.fix}"
        return text


class UsageError(CudaboxError):
    exit_code = ExitCode.USAGE


class NoImageFits(CudaboxError):
    exit_code = ExitCode.NO_FIT


class Unavailable(CudaboxError):
    exit_code = ExitCode.UNAVAILABLE


class BuildError(CudaboxError):
    exit_code = ExitCode.BUILD


class DataError(CudaboxError):
    exit_code = ExitCode.DATA


class EngineError(CudaboxError):
    """The engine answered, but refused an operation (inspect, list, remove, push, ...)."""

    exit_code = ExitCode.ENGINE


class AuthError(CudaboxError):
    exit_code = ExitCode.AUTH


class NotFound(CudaboxError):
    exit_code = ExitCode.NOT_FOUND


class PlatformMissing(CudaboxError):
    exit_code = ExitCode.PLATFORM


class IntegrityError(CudaboxError):
    exit_code = ExitCode.INTEGRITY


class Unlabelled(CudaboxError):
    exit_code = ExitCode.UNLABELLED


class DiskFull(CudaboxError):
    exit_code = ExitCode.DISK_FULL


class Interrupted(CudaboxError):
    """Stopped by a signal (Ctrl-C, SIGTERM, a closed terminal) after cleaning up."""

    exit_code = ExitCode.INTERRUPTED
