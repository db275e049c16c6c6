"""The transition webhook's delivery worker: a task of the service's event loop that POSTs each
queued transition event (lockd.model.fleet.TransitionEvent) to ``LOCKD_WEBHOOK_URL``, retrying with
exponential backoff, and records the outcome in the database.

An event is marked delivered when the receiver answers 2xx, and is never sent again; events not
yet delivered survive a restart (they are rows, with their next attempt's time). Each attempt
holds a lease on its event, so several service processes never send one event at once. The one
window for a repeat is a crash between the receiver's 2xx and the mark; receivers can drop a
repeat by the event id (the body's ``id``, the X-Lockd-Event header).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import secrets
import socket
from typing import TYPE_CHECKING

import httpx

from lockd import __version__
from lockd.model.fleet import EVENT_HEADER, SIGNATURE_HEADER, sign, timestamp
from lockd.store import fleet as store_fleet

if TYPE_CHECKING:
    from lockd.server.service import Service

log = logging.getLogger("lockd.server.webhook")
LEASE_MARGIN_S = 10.0  # beyond the attempt's timeout: time to record its outcome
POLL_MAX_S = 1.0

__all__ = ["WebhookWorker", "backoff_s"]


def backoff_s(attempts: int, first: float, most: float) -> float:
    """The wait before the next attempt after ``attempts`` failed ones: first, twice that,
    four times... up to ``most``."""
    return float(min(most, first * 2 ** min(attempts - 1, 60)))


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class WebhookWorker:
    """Delivers due events until stopped; ``wake()`` after queueing one to send it now."""

    def __init__(self, service: Service) -> None:
        settings = service.settings
        assert settings.webhook_url is not None
        self.service = service
        self.url = settings.webhook_url
        self.owner = f"{socket.gethostname()[:32]}:{os.getpid()}:{secrets.token_hex(4)}"
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._poll = min(POLL_MAX_S, settings.webhook_backoff_s)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="lockd-webhook")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        """Finish the attempt in flight (at most the timeout), then hand back unfinished
        leases."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.TimeoutError):  # wait_for cancels it then
                await asyncio.wait_for(self._task, self.service.settings.webhook_timeout_s + 5)
        with contextlib.suppress(Exception):
            await self.service.run(store_fleet.release_claims, self.service.store, owner=self.owner)

    async def _run(self) -> None:
        settings = self.service.settings
        async with httpx.AsyncClient(
            timeout=settings.webhook_timeout_s, follow_redirects=False
        ) as client:
            while not self._stopping:
                try:
                    sent = await self._deliver_one(client)
                except Exception:  # the database went away: log, wait, try again
                    log.exception("webhook: cannot read or record deliveries")
                    sent = False
                if sent:
                    continue
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._poll)

    async def _deliver_one(self, client: httpx.AsyncClient) -> bool:
        """Claim and attempt one due event; False when none is due."""
        service, settings = self.service, self.service.settings
        now = _utc_now()
        lease = now + dt.timedelta(seconds=settings.webhook_timeout_s + LEASE_MARGIN_S)
        claimed = await service.run(
            store_fleet.claim_event,
            service.store,
            owner=self.owner,
            now=timestamp(now),
            lease_until=timestamp(lease),
        )
        if claimed is None:
            return False
        event = claimed.event
        body = event.body()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"lockd/{__version__}",
            EVENT_HEADER: str(event.id),
        }
        if settings.webhook_secret:
            headers[SIGNATURE_HEADER] = sign(settings.webhook_secret, body)
        error = None
        try:  # the whole attempt within the timeout (httpx's own is per read or write)
            answer = await asyncio.wait_for(
                client.post(self.url, content=body, headers=headers), settings.webhook_timeout_s
            )
            if not 200 <= answer.status_code < 300:
                error = f"the receiver answered {answer.status_code}"
        except asyncio.TimeoutError:
            error = f"no answer in {settings.webhook_timeout_s:g} s"
        except httpx.HTTPError as e:
            error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        attempts = claimed.attempts + 1
        if error is None:
            await service.run(
                store_fleet.mark_delivered,
                service.store,
                event.id,
                owner=self.owner,
                at=timestamp(_utc_now()),
            )
            service.metrics.webhook_deliveries.labels("delivered").inc()
            return True
        give_up = attempts >= settings.webhook_max_attempts
        retry_at = None
        if not give_up:
            wait = backoff_s(attempts, settings.webhook_backoff_s, settings.webhook_backoff_max_s)
            retry_at = timestamp(_utc_now() + dt.timedelta(seconds=wait))
        await service.run(
            store_fleet.mark_failed,
            service.store,
            event.id,
            owner=self.owner,
            error=error,
            retry_at=retry_at,
        )
        outcome = "gave_up" if give_up else "failed"
        service.metrics.webhook_deliveries.labels(outcome).inc()
        log.warning(
            "webhook: event %d to %s failed (attempt %d): %s%s",
            event.id,
            self.url,
            attempts,
            error,
            "; giving up" if give_up else f"; retrying at {retry_at}",
        )
        return True
