"""``/v1/fleet``: what the watch agents (``lockd watch``) report, the fleet view, and
forgetting a host."""

from __future__ import annotations

import datetime as dt
import time
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Path, Query, Request, Response, status

from lockd.model.fleet import FleetAck, FleetBatch, FleetView, HostName, Verdict, timestamp
from lockd.server.deps import AdminDep, ReaderDep, RecorderDep, ServiceDep
from lockd.server.routes import problems
from lockd.server.service import NotFoundError
from lockd.server.upkeep import Upkeep, run_pass
from lockd.store import fleet as store_fleet

router = APIRouter(prefix="/v1/fleet", tags=["fleet"])


@router.post("/reports", response_model=FleetAck, responses=problems(400, 401, 403, 413, 422))
async def post_fleet_reports(
    batch: FleetBatch,
    service: ServiceDep,
    principal: RecorderDep,
    request: Request,
    background: BackgroundTasks,
) -> FleetAck:
    """Apply an agent's batch: its reports are stored as verifications, containers it no
    longer runs are removed, and transitions to fail or unrecorded are queued for the webhook.
    A batch whose sequence is at or below the last applied one of its (host, agent) is a
    redelivery: answered with ``applied: false``, nothing changes."""
    now = dt.datetime.now(dt.timezone.utc)
    schedule: Upkeep = request.app.state.upkeep
    if schedule.due(time.monotonic()):
        background.add_task(run_pass, service)  # after the answer is sent
    applied = await service.run(
        store_fleet.apply_batch,
        service.store,
        batch,
        actor=principal.name,
        received_at=timestamp(now),
        notify=service.settings.webhook_url is not None,
    )
    for result in batch.results if applied.applied else ():
        if result.report is not None:
            service.metrics.verifications.labels(
                "client", "verified" if result.report.verified else "not-verified"
            ).inc()
    worker = getattr(request.app.state, "webhook", None)
    if applied.notifications and worker is not None:
        worker.wake()
    return FleetAck(
        applied=applied.applied, sequence=applied.sequence, verifications=applied.verifications
    )


@router.get("", response_model=FleetView, responses=problems(401, 403, 422))
async def get_fleet(
    service: ServiceDep,
    _: ReaderDep,
    host: Annotated[HostName | None, Query(description="only this host")] = None,
    verdict: Annotated[Verdict | None, Query(description="only containers of this verdict")] = None,
) -> FleetView:
    """Every host with a watch agent (``stale`` when it has not reported for
    ``stale_after_s``) and its running containers' latest verdicts."""
    return await service.run(
        store_fleet.fleet_view,
        service.store,
        now=dt.datetime.now(dt.timezone.utc),
        stale_after_s=service.settings.stale_after_s,
        host=host,
        verdict=verdict,
    )


@router.delete(
    "/hosts/{host}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problems(401, 403, 404, 422),
)
async def forget_host(
    host: Annotated[HostName, Path(description="the host's name, as its agent reports it")],
    service: ServiceDep,
    principal: AdminDep,
) -> None:
    """Remove a host and its containers from the fleet view (audited as ``fleet.forget``), e.g.
    a decommissioned one that shows as stale. Its transition events stay until they are pruned;
    a new batch from its agent brings it back."""
    forgotten = await service.run(
        store_fleet.forget_host,
        service.store,
        host,
        actor=principal.name,
        time=timestamp(dt.datetime.now(dt.timezone.utc)),
    )
    if not forgotten:
        raise NotFoundError(
            f"host {host!r} is not in the fleet view (it never reported, or it was forgotten "
            "already); GET /v1/fleet lists the hosts"
        )
