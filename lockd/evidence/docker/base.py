"""What the Docker interface and the transports behind it share: the errors every call raises,
the stream a started exec or an attached container hands back, and reading Docker's
multiplexed stream from it with a deadline and a size cap (``read_frames``).

Every failure is a ``DaemonError`` (a TargetError, exit 3): ``UnreachableError`` when no daemon
answers, ``NotFoundError`` for what the daemon does not have (HTTP 404).
"""

from __future__ import annotations

import select
import struct
import time
from collections.abc import Iterable, Iterator
from typing import Any, Literal, Protocol

from lockd.errors import InputError, TargetError

__all__ = [
    "ARCHIVE_CHUNK",
    "DEFAULT_HOST",
    "Archive",
    "DaemonError",
    "Events",
    "NotFoundError",
    "Stream",
    "UnreachableError",
    "UnsupportedHostError",
    "cause",
    "read_frames",
    "unreachable_message",
]

DEFAULT_HOST = "unix:///var/run/docker.sock"
ARCHIVE_CHUNK = 1024 * 1024
"""Bytes of an archive stream asked for at a time."""

Archive = tuple[Iterable[bytes], dict[str, Any]]
"""The daemon's tar stream of a path in a container (``docker cp``) and the path's stat."""

_READ_CHUNK = 64 * 1024
_STDERR_KEEP = 16 * 1024  # bytes of an exec's stderr kept: enough for an error message's tail
_FRAME_HEADER = struct.Struct(">BxxxL")  # stream (1 stdout, 2 stderr), 3 zero bytes, size
_CAUSE_LIMIT = 300  # characters of a daemon's message kept in one of lockd's


class DaemonError(TargetError):
    """The daemon refused or failed a request, or answered something unusable (exit 3).

    ``explanation`` is the daemon's own message (or what went wrong), ``status`` the HTTP
    status when there was one.
    """

    def __init__(self, explanation: str, *, status: int | None = None) -> None:
        super().__init__(explanation)
        self.explanation = explanation
        self.status = status


class NotFoundError(DaemonError):
    """The daemon has no such container, image or exec (HTTP 404)."""


class UnreachableError(DaemonError):
    """No daemon answers at the host (no socket, nobody listening, no permission)."""


class UnsupportedHostError(InputError):
    """DOCKER_HOST names a daemon lockd reaches only through the docker SDK (ssh://, TLS), for a
    use that needs lockd's own client: following the daemon's event stream (exit 2)."""

    def __init__(self, host: str) -> None:
        super().__init__(
            f"DOCKER_HOST={host!r}: following the daemon's events needs unix:// or tcp:// "
            "(without TLS)"
        )
        self.host = host


def unreachable_message(host: str, cause: str) -> str:
    return (
        f"cannot reach the Docker daemon ({host}): {cause}. Start it (e.g. `sudo systemctl "
        "start docker`, or `dockerd &` as root) or set DOCKER_HOST."
    )


def cause(error: BaseException) -> str:
    """One line that says why the daemon failed (its own message where it gave one)."""
    explanation = getattr(error, "explanation", None)
    text = str(explanation) if explanation else (str(error) or type(error).__name__)
    text = " ".join(text.split())
    return text if len(text) <= _CAUSE_LIMIT else text[:_CAUSE_LIMIT] + "..."


class Stream(Protocol):
    """A hijacked connection that carries Docker's multiplexed stream: a started exec's, an
    attached container's."""

    def fileno(self) -> int: ...

    def pending(self) -> bool:
        """Whether bytes are buffered already (no need to wait for the socket)."""
        ...

    def recv(self, size: int) -> bytes | None:
        """At most ``size`` bytes; b"" at the end, None when none are there yet."""
        ...

    def close(self) -> None: ...


class Events(Protocol):
    """The daemon's event stream (``docker events``), followed from when it was opened."""

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Events (the daemon's JSON objects) in the order they happen, until the daemon ends
        the stream or it is interrupted.

        Raises:
            DaemonError: the connection broke or carried something that is not an event.
        """
        ...

    def interrupt(self) -> None:
        """End the iteration, from another thread."""
        ...

    def close(self) -> None:
        """Close the stream (from the thread that reads it)."""
        ...


def read_frames(
    stream: Stream, deadline: float, max_output: int
) -> tuple[bytes, bytes, Literal["eof", "timeout", "overflow"]]:
    """Read a hijacked attach/exec stream to its end: (stdout, stderr tail, how it ended).

    Stops early at the deadline (``time.monotonic()``) or when stdout exceeds ``max_output``
    bytes: the output is untrusted, so no read asks for more than can still go to stdout under
    the cap (one byte past it) plus what is left of a stderr frame (kept only as a bounded
    tail). An overflow therefore always returns exactly ``max_output + 1`` bytes of stdout,
    however the peer's writes are batched.
    """
    stdout = bytearray()
    stderr = bytearray()
    header = bytearray()
    kind = 1
    left = 0  # bytes of the current frame still to come
    while True:
        if not stream.pending():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return bytes(stdout), bytes(stderr), "timeout"
            readable, _, _ = select.select([stream], [], [], remaining)
            if not readable:
                continue
        room = max_output + 1 - len(stdout)  # >= 1: stdout over the cap has returned
        chunk = stream.recv(min(_READ_CHUNK, room + (left if kind == 2 else 0)))
        if chunk is None:
            continue
        if not chunk:
            return bytes(stdout), bytes(stderr), "eof"
        view = memoryview(chunk)
        while view:
            if left == 0:
                need = _FRAME_HEADER.size - len(header)
                header += view[:need]
                view = view[need:]
                if len(header) == _FRAME_HEADER.size:
                    kind, left = _FRAME_HEADER.unpack(header)
                    header.clear()
                continue
            part = view[:left]
            view = view[left:]
            left -= len(part)
            if kind == 2:
                stderr += part
                del stderr[:-_STDERR_KEEP]
            else:
                stdout += part
        if len(stdout) > max_output:
            return bytes(stdout), bytes(stderr), "overflow"
