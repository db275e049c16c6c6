"""The stdlib fast path behind lockd's Docker interface (lockd.evidence.docker.interface):
HTTP/1.1 over the daemon's socket for the Docker Engine API calls of ``lockd verify
<container>`` and ``lockd watch``, stdlib only.

``lockd verify <container>`` needs a handful of calls (inspect the container and its image,
create and start an exec, read its exit status, the changes API as a fallback) and should not
spend ~0.2 s importing the docker SDK (requests, urllib3) for them (bench/verify_latency.py);
``lockd watch`` adds the container list and the event stream, every interval, for as long as it
runs. One connection per request (so threads share an Engine); an exec's output comes back on
the hijacked connection as Docker's multiplexed stream (``ExecStream``, read by
lockd.evidence.docker.base.read_frames); the events come back as a chunked stream of JSON lines
(``EventStream``).

It speaks ``unix://`` and plain ``tcp://`` hosts; for the others (``ssh://``, TLS) ``from_env``
answers None and the interface asks the docker SDK. Every failure is a ``DaemonError``
(lockd.evidence.docker.base).
"""

from __future__ import annotations

import functools
import json
import os
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import quote, urlencode

from lockd.evidence.docker.base import (
    DEFAULT_HOST,
    DaemonError,
    NotFoundError,
    UnreachableError,
    unreachable_message,
)

__all__ = ["Engine", "EventStream", "ExecStream"]

MAX_ANSWER = 256 * 1024 * 1024
"""Bytes of one JSON answer read at most (the changes API of a busy container is the largest)."""
MAX_EVENT = 1024 * 1024
"""Bytes of one event (a line of the event stream) at most."""

_MAX_HEAD = 64 * 1024
_READ_CHUNK = 64 * 1024
_QUOTE = 200  # characters of an unusable answer quoted in a message


def _quote_text(data: bytes) -> str:
    text = " ".join(data[: _QUOTE * 4].decode("utf-8", "replace").split())
    return text[:_QUOTE] + ("..." if len(text) > _QUOTE else "")


class ExecStream:
    """The hijacked connection of a started exec: its multiplexed output, and its stdin.

    Bytes that arrived with the HTTP answer's head are handed out first (``pending``).
    """

    def __init__(self, sock: socket.socket, early: bytes) -> None:
        self._sock = sock
        self._early = early

    def fileno(self) -> int:
        return self._sock.fileno()

    def pending(self) -> bool:
        return bool(self._early)

    def recv(self, size: int) -> bytes:
        if self._early:
            data, self._early = self._early[:size], self._early[size:]
            return data
        return self._sock.recv(size)

    def send_stdin(self, data: bytes) -> None:
        """Write ``data`` to the process's stdin, then close it (the process reads EOF)."""
        self._sock.sendall(data)
        self._sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._sock.close()


class Engine:
    """The Docker daemon at ``host`` (``unix:///path`` or ``tcp://host:port``)."""

    def __init__(self, host: str = DEFAULT_HOST, *, timeout: float = 30.0) -> None:
        """Raises DaemonError for a host this client does not speak (see ``from_env``)."""
        self.host = host
        self.timeout = timeout
        address = _address(host)
        if address is None:
            raise DaemonError(
                f"DOCKER_HOST={host!r}: lockd's Engine client speaks only unix:// "
                "and tcp:// (without TLS)"
            )
        self._address = address

    @classmethod
    def from_env(cls, timeout: float = 30.0) -> Engine | None:
        """The daemon at $DOCKER_HOST (else the default socket); None when the host needs what
        only the docker SDK speaks (ssh://, TLS: DOCKER_TLS_VERIFY or DOCKER_CERT_PATH)."""
        host = os.environ.get("DOCKER_HOST") or DEFAULT_HOST
        tls = os.environ.get("DOCKER_TLS_VERIFY") or os.environ.get("DOCKER_CERT_PATH")
        if (tls and not host.startswith("unix://")) or _address(host) is None:
            return None
        return cls(host, timeout=timeout)

    # --- the calls lockd makes ------------------------------------------------------------------

    def ping(self) -> None:
        status, _, body = self._request("GET", "/_ping")
        if status != 200 or body.strip() != b"OK":
            raise DaemonError(
                f"{self.host} is not a Docker daemon: /_ping answered {status} "
                f"{_quote_text(body)!r}",
                status=status,
            )

    def containers(self, filters: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
        """``docker ps``: the containers ``filters`` select, in the daemon's filter syntax
        (``{"status": ["running"], "label": ["k=v"]}``); with none, the running ones."""
        query = {"filters": _filters(filters)} if filters else None
        answer = self._json("GET", "/containers/json", query=query)
        if not isinstance(answer, list) or not all(isinstance(c, dict) for c in answer):
            raise _unusable(self.host, "GET", "/containers/json", "not a list of containers")
        return answer

    def inspect_container(self, container: str) -> dict[str, Any]:
        return self._object("GET", f"/containers/{_part(container)}/json")

    def inspect_image(self, image: str) -> dict[str, Any]:
        return self._object("GET", f"/images/{quote(image, safe='/:@')}/json")

    def diff(self, container: str) -> list[dict[str, Any]]:
        """The container's filesystem changes (``docker diff``): [{"Path", "Kind"}, ...]."""
        answer = self._json("GET", f"/containers/{_part(container)}/changes")
        if answer is None:
            return []
        if not isinstance(answer, list) or not all(isinstance(c, dict) for c in answer):
            raise _unusable(self.host, "GET", "/containers/.../changes", "not a list of changes")
        return answer

    def exec_create(
        self, container: str, cmd: Sequence[str], *, stdin: bool = False
    ) -> dict[str, Any]:
        """Create (not start) ``cmd`` as an exec in the running container: {"Id": ...}."""
        body = {
            "AttachStdin": stdin,
            "AttachStdout": True,
            "AttachStderr": True,
            "Tty": False,
            "Cmd": list(cmd),
        }
        created = self._object("POST", f"/containers/{_part(container)}/exec", body)
        if not isinstance(created.get("Id"), str):
            raise _unusable(self.host, "POST", "/containers/.../exec", "no exec Id")
        return created

    def exec_start(self, exec_id: str, *, stdin: bytes | None = None) -> ExecStream:
        """Start the exec and hand over its connection, which now carries the multiplexed
        stream (``read_frames``); with ``stdin``, write it to the process first, then EOF."""
        request = _request_bytes(
            "POST",
            f"/exec/{_part(exec_id)}/start",
            json.dumps({"Detach": False, "Tty": False}).encode(),
            upgrade=True,
        )
        sock = self._connect()
        try:
            with _io_errors(self.host, self.timeout, "POST", "/exec/.../start"):
                sock.sendall(request)
                status, headers, rest = _read_head(sock, self.host)
                if status not in (101, 200):
                    body = _read_body(sock, headers, rest, self.host)
                    raise _refused(status, body)
                stream = ExecStream(sock, rest)
                if stdin is not None:
                    stream.send_stdin(stdin)
        except BaseException:
            sock.close()
            raise
        return stream

    def exec_inspect(self, exec_id: str) -> dict[str, Any]:
        return self._object("GET", f"/exec/{_part(exec_id)}/json")

    def events(self, filters: Mapping[str, Sequence[str]]) -> EventStream:
        """Follow the daemon's events (``docker events``) that ``filters`` select, from now on.
        Every failure, opening or reading, is an DaemonError (UnreachableError while no daemon
        answers): a follower logs it and calls again.
        """
        query = {"filters": _filters(filters)} if filters else None
        sock = self._connect()
        try:
            with _io_errors(self.host, self.timeout, "GET", "/events"):
                sock.sendall(_request_bytes("GET", _target("/events", query), None))
                status, headers, rest = _read_head(sock, self.host)
                if status != 200:
                    raise _refused(status, _read_body(sock, headers, rest, self.host))
                sock.settimeout(None)  # the next event may be an hour away
        except BaseException:
            sock.close()
            raise
        return EventStream(sock, headers, rest, self.host)

    # --- HTTP -----------------------------------------------------------------------------------

    def _connect(self) -> socket.socket:
        address = self._address
        try:
            if isinstance(address, str):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.settimeout(self.timeout)
                    sock.connect(address)
                except BaseException:
                    sock.close()
                    raise
            else:
                sock = socket.create_connection(address, timeout=self.timeout)
        except OSError as e:
            cause = e.strerror or str(e) or type(e).__name__
            raise UnreachableError(unreachable_message(self.host, cause)) from e
        return sock

    def _request(
        self, method: str, path: str, body: object = None, query: Mapping[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        data = None if body is None else json.dumps(body).encode()
        sock = self._connect()
        try:
            with _io_errors(self.host, self.timeout, method, path):
                sock.sendall(_request_bytes(method, _target(path, query), data))
                status, headers, rest = _read_head(sock, self.host)
                return status, headers, _read_body(sock, headers, rest, self.host)
        finally:
            sock.close()

    def _json(
        self, method: str, path: str, body: object = None, query: Mapping[str, str] | None = None
    ) -> Any:
        """The JSON answer (None for an empty one); ``path`` without its query names the call
        in messages."""
        status, headers, data = self._request(method, path, body, query)
        if status >= 400:
            raise _refused(status, data)
        if status >= 300:  # never followed: the daemon answers, it does not send us elsewhere
            where = headers.get("location", "")
            raise _unusable(self.host, method, path, f"a redirect ({status}) to {where!r}")
        try:
            return json.loads(data) if data.strip() else None
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise _unusable(self.host, method, path, f"not JSON: {_quote_text(data)!r}") from None

    def _object(self, method: str, path: str, body: object = None) -> dict[str, Any]:
        answer = self._json(method, path, body)
        if not isinstance(answer, dict):
            raise _unusable(self.host, method, path, "not a JSON object")
        return answer


class EventStream:
    """The daemon's open event stream: iterate for its events (dicts), in the order they
    happen; ``interrupt()``, from another thread, ends the iteration."""

    def __init__(self, sock: socket.socket, headers: dict[str, str], rest: bytes, host: str):
        self._sock = sock
        self._host = host
        self._too_long = _unusable(host, "GET", "/events", f"an event over {MAX_EVENT} bytes")
        more = functools.partial(sock.recv, _READ_CHUNK)
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self._pieces = (
            _chunks(rest, more, host, MAX_EVENT, self._too_long) if chunked else _raw(rest, more)
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Events until the daemon ends the stream or it is interrupted.

        Raises:
            DaemonError: the connection broke (the daemon went away) or carried something
                that is not an event.
        """
        buffer = b""
        with _io_errors(self._host, None, "GET", "/events"):
            for piece in self._pieces:
                *lines, buffer = (buffer + piece).split(b"\n")
                if len(buffer) > MAX_EVENT:
                    raise self._too_long
                for line in lines:
                    if line.strip():
                        yield self._event(line)

    def _event(self, line: bytes) -> dict[str, Any]:
        try:
            event = json.loads(line)
        except (UnicodeDecodeError, ValueError, RecursionError):
            event = None
        if not isinstance(event, dict):
            why = f"an event that is not a JSON object: {_quote_text(line)!r}"
            raise _unusable(self._host, "GET", "/events", why)
        return event

    def interrupt(self) -> None:
        """End the stream from another thread: its reader sees the end."""
        with suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Close the stream (from the thread that reads it)."""
        self.interrupt()
        self._sock.close()


def _address(host: str) -> str | tuple[str, int] | None:
    if host.startswith("unix://"):
        path = host[len("unix://") :]
        return path if path.startswith("/") else None
    for scheme in ("tcp://", "http://"):
        if host.startswith(scheme):
            name, _, port = host[len(scheme) :].rstrip("/").rpartition(":")
            if not name:
                name, port = port, "2375"
            try:
                return name.strip("[]"), int(port)
            except ValueError:
                return None
    return None


def _part(value: str) -> str:
    """One path segment: an ID or a name, quoted so that it cannot change the path."""
    return quote(value, safe="")


def _filters(filters: Mapping[str, Sequence[str]]) -> str:
    """The ``filters`` query parameter: JSON, sorted, so that a request is always the same."""
    return json.dumps({k: sorted(v) for k, v in filters.items()}, sort_keys=True)


def _target(path: str, query: Mapping[str, str] | None) -> str:
    return f"{path}?{urlencode(query)}" if query else path


@contextmanager
def _io_errors(host: str, timeout: float | None, method: str, path: str) -> Iterator[None]:
    """The socket's errors during ``method path`` as DaemonErrors that say which call."""
    try:
        yield
    except OSError as e:
        if isinstance(e, TimeoutError) and timeout is not None:
            raise DaemonError(
                f"the Docker daemon ({host}) did not answer {method} {path} within {timeout:g}s"
            ) from e
        raise DaemonError(
            f"lost the connection to the Docker daemon ({host}) during {method} {path}: "
            f"{e.strerror or e}"
        ) from e


def _unusable(host: str, method: str, path: str, why: str) -> DaemonError:
    return DaemonError(
        f"the Docker daemon ({host}) answered {method} {path} with something unusable: {why}"
    )


def _request_bytes(method: str, path: str, body: bytes | None, *, upgrade: bool = False) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: docker", "User-Agent: lockd"]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    lines += ["Connection: Upgrade", "Upgrade: tcp"] if upgrade else ["Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + (body or b"")


def _read_head(sock: socket.socket, host: str) -> tuple[int, dict[str, str], bytes]:
    """(status, lower-cased headers, the bytes after the head) of an HTTP answer."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(_READ_CHUNK)
        if not chunk:
            if not buffer:
                raise DaemonError(f"the Docker daemon ({host}) closed the connection unanswered")
            break
        buffer += chunk
        if len(buffer) > _MAX_HEAD and b"\r\n\r\n" not in buffer[:_MAX_HEAD]:
            break
    head, found, rest = buffer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if not found or len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise DaemonError(
            f"{host} does not answer as a Docker daemon (not HTTP): {_quote_text(buffer)!r}"
        )
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers, rest


def _read_body(sock: socket.socket, headers: dict[str, str], rest: bytes, host: str) -> bytes:
    """The body after the head: chunked, of Content-Length, or up to the end; at most
    MAX_ANSWER bytes."""
    too_long = DaemonError(f"the Docker daemon ({host}) answered more than {MAX_ANSWER} bytes")
    chunks = [rest]
    size = len(rest)

    def more() -> bytes:
        # Never ask for more than one byte past the cap: what an untrusted peer can make us
        # buffer is bounded by MAX_ANSWER, not by how its writes happen to be batched.
        nonlocal size
        if size > MAX_ANSWER:
            raise too_long
        chunk = sock.recv(min(_READ_CHUNK, MAX_ANSWER + 1 - size))
        size += len(chunk)
        if size > MAX_ANSWER:
            raise too_long
        return chunk

    if "chunked" in headers.get("transfer-encoding", "").lower():
        return _dechunk(rest, more, host, too_long)
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit() or int(length) > MAX_ANSWER:
            raise too_long if length.isdigit() else DaemonError(f"{host}: bad Content-Length")
        while size < int(length):
            chunk = more()
            if not chunk:
                raise DaemonError(f"the Docker daemon ({host}) closed the connection mid-answer")
            chunks.append(chunk)
        return b"".join(chunks)[: int(length)]
    while chunk := more():
        chunks.append(chunk)
    return b"".join(chunks)


def _dechunk(data: bytes, more: Callable[[], bytes], host: str, too_long: DaemonError) -> bytes:
    """A whole ``Transfer-Encoding: chunked`` body; ``more()`` reads on (b"" at the end)."""
    body = bytearray()
    for chunk in _chunks(data, more, host, MAX_ANSWER, too_long):
        body += chunk
        if len(body) > MAX_ANSWER:
            raise too_long
    return bytes(body)


def _chunks(
    data: bytes, more: Callable[[], bytes], host: str, limit: int, too_long: DaemonError
) -> Iterator[bytes]:
    """The chunks of a ``Transfer-Encoding: chunked`` body as they arrive, to the last (size 0)
    one; ``more()`` reads on (b"" at the end of the connection). A chunk over ``limit`` bytes
    raises ``too_long`` before it is read."""
    buffer = bytearray(data)
    truncated = DaemonError(f"the Docker daemon ({host}) closed the connection mid-answer")
    while True:
        while b"\r\n" not in buffer:
            chunk = more()
            if not chunk:
                raise truncated
            buffer += chunk
        line, _, remainder = bytes(buffer).partition(b"\r\n")
        try:
            size = int(line.split(b";")[0], 16)
        except ValueError:
            raise DaemonError(f"{host}: a malformed chunked answer") from None
        if size > limit:
            raise too_long
        buffer = bytearray(remainder)
        while len(buffer) < size + 2:
            chunk = more()
            if not chunk:
                raise truncated
            buffer += chunk
        if size == 0:
            return
        yield bytes(buffer[:size])
        del buffer[: size + 2]


def _raw(data: bytes, more: Callable[[], bytes]) -> Iterator[bytes]:
    """A body that is neither chunked nor of a length: what comes, to the end."""
    if data:
        yield data
    while chunk := more():
        yield chunk


def _refused(status: int, body: bytes) -> DaemonError:
    """The daemon's error answer: its {"message": ...}, else the start of the body."""
    message = ""
    try:
        answer = json.loads(body)
        if isinstance(answer, dict) and isinstance(answer.get("message"), str):
            message = answer["message"]
    except (UnicodeDecodeError, ValueError, RecursionError):
        pass
    message = " ".join(message.split()) or f"HTTP {status} {_quote_text(body)!r}"
    return (NotFoundError if status == 404 else DaemonError)(message, status=status)
