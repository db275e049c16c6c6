"""``/v1/verifications``: reports, compared here from an observation or made by a client."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError

from lockd.model import Report
from lockd.server.deps import ReaderDep, ServiceDep, authorize, bearer_token
from lockd.server.routes import problems
from lockd.server.routes.manifests import DigestQuery
from lockd.server.schemas import VerificationOut, VerificationRequest
from lockd.server.service import NotFoundError, Service
from lockd.store.repository import VerificationRecord

router = APIRouter(prefix="/v1/verifications", tags=["verifications"])


def out(record: VerificationRecord) -> VerificationOut:
    return VerificationOut(
        id=record.id,
        created_at=record.created_at,
        actor=record.actor,
        source="server" if record.source == "server" else "client",
        subject=record.subject,
        manifest_digest=record.manifest_digest,
        policy=record.policy,
        verified=record.verified,
        report=Report.model_validate_json(record.report),
    )


_BODY: TypeAdapter[VerificationRequest] = TypeAdapter(VerificationRequest)


@router.post(
    "",
    response_model=Report,
    openapi_extra={
        # The body is read and checked by the route itself (the hot path: one pass of
        # pydantic's JSON parser, no dependency machinery); its schema is documented here.
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/VerificationRequest"}}
            },
        },
        "security": [{"HTTPBearer": []}],
    },
    responses={
        200: {
            "description": "the report, stored; its address is in the Location header",
            "headers": {"Location": {"schema": {"type": "string"}}},
        },
        **problems(400, 401, 403, 404, 413, 422),
    },
)
async def post_verification(request: Request) -> Response:
    """With ``observation``: compare it with the newest trusted manifest for its image under
    ``policy`` (404 when none is stored). With ``report``: store a client's report as is."""
    service: Service = request.app.state.service
    principal = await authorize(
        service, bearer_token(request.headers.get("authorization")), "recorder"
    )
    try:
        body = _BODY.validate_json(await request.body())
    except ValidationError as e:
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in e.errors(include_url=False)]
        ) from e
    record = await service.run(_store_verification, service, body, principal.name)
    service.metrics.verifications.labels(
        record.source, "verified" if record.verified else "not-verified"
    ).inc()
    return Response(
        content=record.report,
        media_type="application/json",
        headers={"Location": f"/v1/verifications/{record.id}"},
    )


def _store_verification(
    service: Service, body: VerificationRequest, actor: str
) -> VerificationRecord:
    if body.observation is not None:
        record, _ = service.verify_observation(body.observation, body.policy, actor=actor)
        return record
    assert body.report is not None  # the model admits exactly one of the two
    return service.record_report(body.report, actor=actor)


@router.get("", response_model=list[VerificationOut], responses=problems(401, 403, 422))
def list_verifications(
    service: ServiceDep,
    _: ReaderDep,
    subject: DigestQuery = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[VerificationOut]:
    """Stored reports, newest first, optionally for one image digest."""
    return [out(r) for r in service.store.list_verifications(subject=subject, limit=limit)]


@router.get(
    "/{verification_id}", response_model=VerificationOut, responses=problems(401, 403, 404, 422)
)
def get_verification(
    verification_id: Annotated[int, Path(ge=1, le=2**31 - 1)], service: ServiceDep, _: ReaderDep
) -> VerificationOut:
    record = service.store.get_verification(verification_id)
    if record is None:
        raise NotFoundError(f"no verification {verification_id} is stored")
    return out(record)
