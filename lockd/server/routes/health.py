"""``/healthz`` (the process answers), ``/readyz`` (database reachable, migrations applied),
``/metrics`` (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from lockd.server.deps import ServiceDep
from lockd.server.metrics import CONTENT_TYPE
from lockd.server.schemas import Health, Ready
from lockd.store.migrate import schema_state

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Ready,
    responses={503: {"model": Ready, "description": "not ready: see database and revision"}},
)
def readyz(service: ServiceDep, response: Response) -> Ready:
    state = schema_state(service.store.engine)
    if not state.ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Ready(
        status="ready" if state.ready else "not ready",
        database=state.reachable,
        revision=state.revision,
        head=state.head,
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}}}},
)
def metrics(service: ServiceDep) -> Response:
    return Response(content=service.metrics.render(), media_type=CONTENT_TYPE)
