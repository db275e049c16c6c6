"""The docker SDK behind lockd's Docker interface (lockd.evidence.docker.interface).

It answers what the stdlib fast path (lockd.evidence.docker.engine) does not: an image's
throw-away containers (create, attach, start, wait, remove), the archive API (``docker cp``),
the daemon's info; and every call where DOCKER_HOST names a daemon only the SDK speaks
(``ssh://``, TLS). ``import docker`` costs ~0.2 s (requests, urllib3), so nothing imports it
before the first call that needs it, and the client is made then (and pinged).

What the SDK and requests raise becomes the interface's errors (lockd.evidence.docker.base):
``UnreachableError`` when no daemon answers the first call, ``NotFoundError`` for a 404, else
``DaemonError``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import suppress
from typing import Any

from lockd.evidence.docker.base import (
    ARCHIVE_CHUNK,
    Archive,
    DaemonError,
    NotFoundError,
    UnreachableError,
    cause,
    unreachable_message,
)

__all__ = ["Sdk"]

_SHM_FOR_GPUS = "1g"  # NCCL needs more shared memory than Docker's 64 MiB


class _SdkStream:
    """A hijacked connection as the SDK hands it out: a socket, or ``socket.SocketIO`` over
    one (a Unix socket), or a TLS socket (which may hold bytes already read)."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock

    def fileno(self) -> int:
        return int(self._sock.fileno())

    def pending(self) -> bool:
        pending = getattr(self._sock, "pending", None)
        return bool(pending and pending())

    def recv(self, size: int) -> bytes | None:
        if hasattr(self._sock, "recv"):
            data: bytes = self._sock.recv(size)
            return data
        result: bytes | None = self._sock.read(size)  # socket.SocketIO: None when none yet
        return result

    def close(self) -> None:
        for closable in (self._sock, getattr(self._sock, "_sock", None)):
            if closable is not None:
                with suppress(OSError):
                    closable.close()


class Sdk:
    """The daemon at ``host`` through the docker SDK's low-level APIClient (made on first use
    from the environment, as ``docker`` does, and pinged). Thread-safe."""

    def __init__(self, host: str, *, timeout: float = 30.0) -> None:
        self.host = host
        self.timeout = timeout
        self._api: Any = None
        self._lock = threading.Lock()

    def _client(self) -> Any:
        """The SDK's APIClient.

        Raises:
            UnreachableError: no daemon answers (or the environment names none the SDK can use).
        """
        with self._lock:
            if self._api is None:
                import docker
                from docker.errors import DockerException

                try:
                    client = docker.from_env(timeout=self.timeout)
                    client.ping()
                except (DockerException, OSError) as e:
                    raise UnreachableError(unreachable_message(self.host, cause(e))) from e
                self._api = client.api
        return self._api

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        api = self._client()
        from docker.errors import DockerException, NotFound

        try:
            return getattr(api, method)(*args, **kwargs)
        except NotFound as e:
            raise NotFoundError(cause(e), status=404) from e
        except (DockerException, OSError) as e:  # requests' exceptions are OSErrors
            raise DaemonError(cause(e), status=getattr(e, "status_code", None)) from e

    # --- what the fast path answers where it speaks DOCKER_HOST --------------------------------

    def ping(self) -> None:
        self._call("ping")

    def containers(self, filters: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
        found = self._call("containers", filters={k: list(v) for k, v in filters.items()})
        return [dict(c) for c in found or []]

    def inspect_container(self, container: str) -> dict[str, Any]:
        return dict(self._call("inspect_container", container))

    def inspect_image(self, image: str) -> dict[str, Any]:
        return dict(self._call("inspect_image", image))

    def diff(self, container: str) -> list[dict[str, Any]]:
        return list(self._call("diff", container) or [])

    def exec_create(self, container: str, cmd: Sequence[str]) -> dict[str, Any]:
        return dict(self._call("exec_create", container, list(cmd), stdin=False, tty=False))

    def exec_start(self, exec_id: str) -> _SdkStream:
        return _SdkStream(self._call("exec_start", exec_id, socket=True))

    def exec_inspect(self, exec_id: str) -> dict[str, Any]:
        return dict(self._call("exec_inspect", exec_id))

    # --- what only the SDK answers -------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return dict(self._call("info"))

    def create_container(
        self,
        image: str,
        *,
        name: str,
        labels: Mapping[str, str],
        entrypoint: Sequence[str],
        command: Sequence[str] | None,
        runs: bool,
        gpus: bool,
    ) -> str:
        options: dict[str, Any] = {}
        if command is not None:
            options["command"] = list(command)
        if runs:
            extra: dict[str, Any] = {}
            if gpus:
                from docker.types import DeviceRequest

                extra = {
                    "device_requests": [DeviceRequest(count=-1, capabilities=[["gpu"]])],
                    "shm_size": _SHM_FOR_GPUS,
                }
            options["host_config"] = self._client().create_host_config(
                network_mode="none", log_config={"Type": "none", "Config": {}}, **extra
            )
        created = self._call(
            "create_container",
            image,
            name=name,
            network_disabled=True,
            labels=dict(labels),
            entrypoint=list(entrypoint),
            **options,
        )
        return str(created["Id"])

    def attach(self, container: str) -> _SdkStream:
        params = {"stdout": 1, "stderr": 1, "stream": 1}
        return _SdkStream(self._call("attach_socket", container, params=params))

    def start(self, container: str) -> None:
        self._call("start", container)

    def wait(self, container: str, timeout: float) -> dict[str, Any]:
        return dict(self._call("wait", container, timeout=timeout))

    def remove_container(self, container: str) -> None:
        self._call("remove_container", container, force=True)

    def get_archive(self, container: str, path: str) -> Archive:
        chunks, stat = self._call("get_archive", container, path, chunk_size=ARCHIVE_CHUNK)
        return _stream(chunks), dict(stat)


def _stream(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The chunks, with what the SDK raises while they arrive made a DaemonError."""
    from docker.errors import DockerException

    try:
        yield from chunks
    except (DockerException, OSError) as e:
        raise DaemonError(cause(e)) from e
