"""``/v1/verifications``: reports, compared here from an observation or made by a client.

``POST /v1/verifications`` is the service's hot path, so it also has a fast lane
(:class:`FastPath`, installed by :func:`install_fast_path`): the same steps as the route, without
FastAPI's routing, dependency and response machinery, for requests that go right. Any other
request, failed ones included, goes to the route, which gives the API's usual answers.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError

from lockd.errors import LockdError
from lockd.model.report import Report
from lockd.server.deps import ReaderDep, Refusal, ServiceDep, admit, authorize, bearer_token
from lockd.server.middleware import ASGIApp, Receive, Scope, Send, replaying
from lockd.server.routes import problems
from lockd.server.routes.manifests import DigestQuery
from lockd.server.schemas import VerificationOut, VerificationRequest
from lockd.server.service import NotFoundError, Service
from lockd.store.repository import NewVerification, VerificationRecord

PATH = "/v1/verifications"

router = APIRouter(prefix=PATH, tags=["verifications"])


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
    record = await service.commits.submit(await _row(service, body, principal.name))
    _count(service, record)
    return Response(
        content=record.report,
        media_type="application/json",
        headers={"Location": f"{PATH}/{record.id}"},
    )


async def _row(service: Service, body: VerificationRequest, actor: str) -> NewVerification:
    """What to store for a request (nothing is stored yet).

    Raises:
        LockdError: no manifest for the observation, no such policy.
    """
    if body.observation is not None:
        return await service.judge_observation(body.observation, body.policy, actor=actor)
    assert body.report is not None  # the model admits exactly one of the two
    return service.client_report(body.report, actor=actor)


def _count(service: Service, record: VerificationRecord) -> None:
    service.metrics.verifications.labels(
        record.source, "verified" if record.verified else "not-verified"
    ).inc()


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


class FastPath:
    """ASGI middleware: ``POST /v1/verifications`` answered here when its token admits it, its
    body validates and a report can be made, else handed on, body and all, to the route (which
    repeats those steps and answers with the error). The decision comes before anything is
    stored. It sits inside lockd's BodyLimit and RequestMetrics, so the size cap holds and the
    request is counted under its route."""

    def __init__(self, app: ASGIApp, service: Service, route: Any) -> None:
        self.app = app
        self.service = service
        self.route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != PATH:
            await self.app(scope, receive, send)
            return
        message = await receive()
        new = None
        if message["type"] == "http.request" and not message.get("more_body", False):
            new = await self._row(scope, message.get("body", b""))
        if new is None:
            await self.app(scope, replaying(message, receive), send)
            return
        scope["route"] = self.route
        record = await self.service.commits.submit(new)
        _count(self.service, record)
        content = record.report.encode("utf-8")
        headers = [
            (b"content-length", str(len(content)).encode("ascii")),
            (b"content-type", b"application/json"),
            (b"location", f"{PATH}/{record.id}".encode("ascii")),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    async def _row(self, scope: Scope, data: bytes) -> NewVerification | None:
        authorization = next(
            (
                value.decode("latin-1")
                for name, value in scope["headers"]
                if name == b"authorization"
            ),
            None,
        )
        principal = admit(self.service, bearer_token(authorization), "recorder")
        if isinstance(principal, Refusal):
            return None  # the route answers with the refusal
        try:
            return await _row(self.service, _BODY.validate_json(data), principal.name)
        except (ValidationError, LockdError):
            return None


def install_fast_path(app: FastAPI, service: Service) -> None:
    """Add :class:`FastPath` (call before adding BodyLimit and RequestMetrics: the middleware
    added first runs innermost)."""
    route = next(r for r in router.routes if getattr(r, "endpoint", None) is post_verification)
    app.add_middleware(FastPath, service=service, route=route)
