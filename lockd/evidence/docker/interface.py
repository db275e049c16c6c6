"""The one Docker interface the rest of lockd uses: ``Docker``, every call lockd makes of the
daemon, and nothing about how a call travels.

Behind it, two transports (one module each):

* lockd.evidence.docker.engine, the stdlib fast path: HTTP/1.1 over the daemon's socket for
  the calls of ``lockd verify <container>`` and ``lockd watch`` (inspect, exec, the changes
  API, the container list, the event stream). It spares ``lockd verify <container>`` the
  ~0.2 s of importing the docker SDK (requests, urllib3): bench/verify_latency.py measured
  1.13 s with the SDK against 0.83 s with it (docs/benchmarks.md). It speaks ``unix://`` and
  plain ``tcp://``;
* lockd.evidence.docker.sdk, the docker SDK, for the rest (an image's throw-away containers,
  the archive API, the daemon's info) and for every call where DOCKER_HOST needs ``ssh://`` or
  TLS. Imported on the first call that needs it.

Every failure is a ``DaemonError`` (a TargetError, exit 3): ``UnreachableError`` when no daemon
answers, ``NotFoundError`` for what the daemon does not have. ``failing(what)`` turns them into
errors that say what lockd was doing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from lockd.errors import TargetError
from lockd.evidence.docker.base import (
    DEFAULT_HOST,
    Archive,
    DaemonError,
    Events,
    Stream,
    UnreachableError,
    UnsupportedHostError,
    cause,
)
from lockd.evidence.docker.engine import Engine
from lockd.evidence.docker.sdk import Sdk

__all__ = ["Docker", "connect", "failing"]


class _Calls(Protocol):
    """The calls both transports answer (the fast path's)."""

    def ping(self) -> None: ...

    def containers(self, filters: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]: ...

    def inspect_container(self, container: str) -> dict[str, Any]: ...

    def inspect_image(self, image: str) -> dict[str, Any]: ...

    def diff(self, container: str) -> list[dict[str, Any]]: ...

    def exec_create(self, container: str, cmd: Sequence[str]) -> dict[str, Any]: ...

    def exec_start(self, exec_id: str) -> Stream: ...

    def exec_inspect(self, exec_id: str) -> dict[str, Any]: ...


def connect(timeout: float = 30.0, *, events: bool = False) -> Docker:
    """The daemon at $DOCKER_HOST (else the default socket). Nothing is asked yet: the first
    call that fails says so.

    ``events``: the caller follows the daemon's event stream for as long as it runs (``lockd
    watch``), which only lockd's own client does.

    Raises:
        UnsupportedHostError: with ``events``, DOCKER_HOST needs ssh:// or TLS (exit 2).
    """
    host = os.environ.get("DOCKER_HOST") or DEFAULT_HOST
    engine = Engine.from_env(timeout=timeout)
    if events and engine is None:
        raise UnsupportedHostError(host)
    return Docker(host, engine=engine, sdk=Sdk(host, timeout=timeout))


@contextmanager
def failing(what: str) -> Iterator[None]:
    """The daemon's failures inside as TargetErrors that start with ``what``; an unreachable
    daemon keeps its own message (it says how to start one)."""
    try:
        yield
    except UnreachableError:
        raise
    except (DaemonError, OSError) as e:
        raise TargetError(f"{what}: {cause(e)}") from e


class Docker:
    """The Docker daemon at ``host``, as lockd asks it (see the module's docstring). One
    connection per call: threads share it. Every method raises ``DaemonError``."""

    def __init__(self, host: str, *, engine: Engine | None, sdk: Sdk) -> None:
        self.host = host
        self._engine = engine
        self._sdk = sdk
        self._quick: _Calls = engine if engine is not None else sdk

    # --- containers, images, exec: the verify path and the watch agent --------------------------

    def ping(self) -> None:
        self._quick.ping()

    def containers(self, filters: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
        """``docker ps``: the containers ``filters`` select, in the daemon's filter syntax
        (``{"status": ["running"], "label": ["k=v"]}``); with none, the running ones."""
        return self._quick.containers(filters)

    def inspect_container(self, container: str) -> dict[str, Any]:
        return self._quick.inspect_container(container)

    def inspect_image(self, image: str) -> dict[str, Any]:
        return self._quick.inspect_image(image)

    def diff(self, container: str) -> list[dict[str, Any]]:
        """The container's filesystem changes (``docker diff``): [{"Path", "Kind"}, ...]."""
        return self._quick.diff(container)

    def exec_create(self, container: str, cmd: Sequence[str]) -> str:
        """Create (not start) ``cmd`` as an exec in the running container; its ID."""
        return str(self._quick.exec_create(container, cmd)["Id"])

    def exec_start(self, exec_id: str) -> Stream:
        """Start the exec; its output as Docker's multiplexed stream (``read_frames``)."""
        return self._quick.exec_start(exec_id)

    def exec_inspect(self, exec_id: str) -> dict[str, Any]:
        return self._quick.exec_inspect(exec_id)

    def events(self, filters: Mapping[str, Sequence[str]]) -> Events:
        """Follow the daemon's events (``docker events``) that ``filters`` select, from now on
        (iterate; ``interrupt()`` from another thread ends it).

        Raises:
            UnsupportedHostError: DOCKER_HOST needs ssh:// or TLS (see ``connect``).
            DaemonError: opening or reading the stream failed.
        """
        if self._engine is None:
            raise UnsupportedHostError(self.host)
        return self._engine.events(filters)

    # --- throw-away containers, archives --------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """``docker info`` (its ``Runtimes``: whether the NVIDIA runtime is there)."""
        return self._sdk.info()

    def create_container(
        self,
        image: str,
        *,
        name: str,
        labels: Mapping[str, str],
        entrypoint: Sequence[str],
        command: Sequence[str] | None = None,
        runs: bool = False,
        gpus: bool = False,
    ) -> str:
        """Create (not start) a container of ``image`` named ``name``, with networking
        disabled; its ID. ``runs``: it will run a process whose output is read from
        ``attach`` (no network at all, no log kept); ``gpus``: it gets every GPU (Docker's
        device request, the NVIDIA runtime) and room in /dev/shm."""
        return self._sdk.create_container(
            image,
            name=name,
            labels=labels,
            entrypoint=entrypoint,
            command=command,
            runs=runs,
            gpus=gpus,
        )

    def attach(self, container: str) -> Stream:
        """The created container's stdout and stderr (attach before ``start``)."""
        return self._sdk.attach(container)

    def start(self, container: str) -> None:
        self._sdk.start(container)

    def wait(self, container: str, timeout: float) -> int:
        """The container's exit status, once it has stopped (within ``timeout`` seconds)."""
        return int(self._sdk.wait(container, timeout).get("StatusCode", -1))

    def remove_container(self, container: str) -> None:
        """Remove the container, running or not (``docker rm -f``)."""
        self._sdk.remove_container(container)

    def get_archive(self, container: str, path: str) -> Archive:
        """``path`` in the container as the daemon's tar stream and its stat (``docker cp``);
        the stream raises DaemonError while it arrives."""
        return self._sdk.get_archive(container, path)
