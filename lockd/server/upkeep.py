"""The fleet's upkeep: transition events that wait for nothing are deleted once older than
``LOCKD_FLEET_EVENT_RETENTION_S``, and hosts silent for ``LOCKD_FLEET_FORGET_AFTER_S`` (when
set) are forgotten. Each service process runs a pass on the first agent batch it receives, then
on the first one at least :data:`UPKEEP_EVERY_S` after the last pass: no timer, and an idle
service does nothing (there is nothing new to prune either). Passes of several processes at
once are harmless: each deletes what is due, in its own transaction.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool

from lockd.model.fleet import timestamp
from lockd.store import fleet as store_fleet

if TYPE_CHECKING:
    from lockd.server.service import Service
    from lockd.server.settings import Settings
    from lockd.store.repository import Store

log = logging.getLogger("lockd.server.upkeep")
UPKEEP_EVERY_S = 600.0
ACTOR = "lockd:upkeep"  # the audit actor of hosts forgotten by age (no token name has a colon)

__all__ = ["ACTOR", "UPKEEP_EVERY_S", "Upkeep", "Upkept", "run_pass", "upkeep"]


class Upkeep:
    """When this process's next pass is due (by a monotonic clock the caller reads)."""

    def __init__(self, every_s: float = UPKEEP_EVERY_S) -> None:
        self.every_s = every_s
        self._last: float | None = None

    def due(self, clock: float) -> bool:
        """Whether a pass is due at ``clock``; when it is, it counts as started then."""
        if self._last is not None and clock - self._last < self.every_s:
            return False
        self._last = clock
        return True


@dataclass(frozen=True)
class Upkept:
    pruned: int  # events deleted
    forgotten: list[str] = field(default_factory=list)  # hosts forgotten by age


def upkeep(store: Store, settings: Settings, now: dt.datetime) -> Upkept:
    """One pass (it blocks: run it off the event loop)."""
    retained = now - dt.timedelta(seconds=settings.fleet_event_retention_s)
    pruned = store_fleet.prune_events(store, before=timestamp(retained))
    forgotten: list[str] = []
    if settings.forget_after_s:
        silent = now - dt.timedelta(seconds=settings.forget_after_s)
        forgotten = store_fleet.forget_stale_hosts(
            store, before=timestamp(silent), actor=ACTOR, time=timestamp(now)
        )
    if pruned or forgotten:
        log.info(
            "fleet upkeep: %d event(s) pruned, %d host(s) forgotten%s",
            pruned,
            len(forgotten),
            f" ({', '.join(forgotten)})" if forgotten else "",
        )
    return Upkept(pruned=pruned, forgotten=forgotten)


async def run_pass(service: Service) -> None:
    """A pass for the service, on a worker thread (it may delete many rows), counted in its
    metrics; a failure is logged, and the next pass tries again."""
    try:
        done = await run_in_threadpool(
            upkeep, service.store, service.settings, dt.datetime.now(dt.timezone.utc)
        )
    except Exception:  # the database went away
        log.exception("fleet upkeep: cannot prune events or forget hosts")
        return
    service.metrics.fleet_upkeep.labels("events_pruned").inc(done.pruned)
    service.metrics.fleet_upkeep.labels("hosts_forgotten").inc(len(done.forgotten))
