"""The daemon's container events: followed in a thread that reconnects with backoff when the
daemon goes away, and coalesced (:class:`Coalescer`, pure) so that a flood of events costs one
look per container, however many arrive."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lockd.evidence.docker import DaemonError
from lockd.watch.options import Selector

if TYPE_CHECKING:
    from lockd.evidence.docker import Docker, Events

log = logging.getLogger("lockd.watch")

UP_ACTIONS = frozenset({"start", "unpause", "rename", "update"})  # look at the container again
DOWN_ACTIONS = frozenset({"die", "destroy", "pause"})  # not running now
WATCHED_ACTIONS = ("start", "unpause", "rename", "update", "die", "destroy", "pause")

__all__ = ["RESYNC", "Changes", "Coalescer", "EventFollower", "event_filters"]


class _Resync:
    """Posted when the stream (re)connects: events may have been missed, list everything."""

    def __repr__(self) -> str:
        return "RESYNC"


RESYNC = _Resync()


@dataclass(frozen=True)
class Changes:
    up: frozenset[str]  # container ids to inspect (again): started, unpaused, renamed
    down: frozenset[str]  # container ids no longer running
    destroyed: frozenset[str]  # of those, the ones removed (not just stopped or paused)
    resync: bool  # list every container again
    events: int  # how many events were coalesced into this


class Coalescer:
    """Gathers events; the latest action per container decides what it needs."""

    def __init__(self) -> None:
        self._latest: dict[str, str] = {}  # id -> "up", "down" or "destroy"
        self._resync = False
        self._events = 0

    def __bool__(self) -> bool:
        return bool(self._latest) or self._resync

    def add(self, event: object) -> bool:
        """Take one event (a daemon event dict, or RESYNC); False when it is not a container
        start/stop-like event with a usable id (ignored)."""
        if event is RESYNC:
            self._resync = True
            self._events += 1
            return True
        if not isinstance(event, Mapping) or event.get("Type", "container") != "container":
            return False
        action = str(event.get("Action") or event.get("status") or "")
        action = action.partition(":")[0]  # "exec_start: python3 -c" style actions
        actor = event.get("Actor")
        container_id = actor.get("ID") if isinstance(actor, Mapping) else None
        container_id = container_id or event.get("id")
        if not isinstance(container_id, str) or len(container_id) != 64:
            return False
        if action in UP_ACTIONS:
            self._latest[container_id] = "up"
        elif action == "destroy":
            self._latest[container_id] = "destroy"
        elif action in DOWN_ACTIONS:
            self._latest[container_id] = "down"
        else:
            return False
        self._events += 1
        return True

    def take(self) -> Changes:
        """What the gathered events ask for, and start gathering anew."""
        changes = Changes(
            up=frozenset(i for i, what in self._latest.items() if what == "up"),
            down=frozenset(i for i, what in self._latest.items() if what != "up"),
            destroyed=frozenset(i for i, what in self._latest.items() if what == "destroy"),
            resync=self._resync,
            events=self._events,
        )
        self._latest = {}
        self._resync = False
        self._events = 0
        return changes


def event_filters(selectors: Sequence[Selector]) -> dict[str, list[str]]:
    filters: dict[str, list[str]] = {"type": ["container"], "event": list(WATCHED_ACTIONS)}
    if selectors:
        filters["label"] = [s.docker_filter() for s in selectors]
    return filters


class EventFollower(threading.Thread):
    """Follows the daemon's events and hands each to ``post``; RESYNC after every (re)connect.
    When the daemon goes away it retries with exponential backoff (``backoff`` seconds, first
    and most), never giving up until ``stop`` is set."""

    def __init__(
        self,
        docker: Docker,
        filters: dict[str, list[str]],
        post: Callable[[object], None],
        stop: threading.Event,
        *,
        backoff: tuple[float, float] = (0.5, 30.0),
        on_disconnect: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(name="lockd-watch-events", daemon=True)
        self._docker = docker
        self._filters = filters
        self._post = post
        self._stop = stop
        self._backoff = backoff
        self._on_disconnect = on_disconnect
        self._stream: Events | None = None
        self._lock = threading.Lock()

    def run(self) -> None:
        delay = self._backoff[0]
        while not self._stop.is_set():
            started = time.monotonic()
            reason = self._follow_once()
            if self._stop.is_set():
                return
            if time.monotonic() - started > 10 * self._backoff[0] + 10:
                delay = self._backoff[0]  # it was up a while: this is a new outage
            log.warning("docker events: %s; reconnecting in %.1f s", reason, delay)
            if self._on_disconnect is not None:
                self._on_disconnect(reason)
            self._stop.wait(delay)
            delay = min(delay * 2, self._backoff[1])

    def _follow_once(self) -> str:
        """Follow one connection to its end: why it ended."""
        try:
            stream = self._docker.events(self._filters)
        except DaemonError as e:
            return str(e)
        with self._lock:
            self._stream = stream
        if self._stop.is_set():
            stream.close()
            return "stopped"
        self._post(RESYNC)
        try:
            for event in stream:
                self._post(event)
        except DaemonError as e:
            return str(e)
        finally:
            with self._lock:
                self._stream = None
            stream.close()
        return "the daemon closed the event stream"

    def close(self) -> None:
        """Stop following (``stop`` must be set too, or it reconnects)."""
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.interrupt()
