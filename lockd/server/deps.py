"""FastAPI dependencies: the service, and who is calling (bearer tokens with roles)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, NamedTuple

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from lockd.server.service import Service
from lockd.store.repository import RANK, Principal, Role

bearer = HTTPBearer(
    auto_error=False,
    description="a token made by `lockd token create NAME --role reader|recorder|admin`",
)
ANONYMOUS = Principal(name="anonymous", role="reader")


# The dependencies are async (they never block: the token's principal is cached) so FastAPI
# calls them on the event loop instead of a worker thread each.


async def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]
CredentialsDep = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=detail,
        headers={"WWW-Authenticate": "Bearer"},
    )


class Refusal(NamedTuple):
    """Why a caller is not admitted: the HTTP status (401 or 403) and what to say."""

    status: int
    detail: str


def admit(service: Service, token: str | None, role: Role) -> Principal | Refusal:
    """The one authorization decision of every route (the verifications fast path included):
    who holds ``token`` when it admits ``role`` or a stronger one, else why not."""
    if token is None:
        if role == "reader" and service.settings.allow_anonymous_read:
            return ANONYMOUS
        return Refusal(
            status.HTTP_401_UNAUTHORIZED,
            "this needs a bearer token (header 'Authorization: Bearer <token>'); an admin "
            "makes one with `lockd token create NAME --role ROLE`",
        )
    principal = service.principal(token)
    if principal is None:
        return Refusal(
            status.HTTP_401_UNAUTHORIZED, "the bearer token is not known to this service"
        )
    if RANK[principal.role] < RANK[role]:
        return Refusal(
            status.HTTP_403_FORBIDDEN,
            f"token {principal.name!r} has the role {principal.role}; this needs "
            f"{role} or stronger",
        )
    return principal


async def authorize(service: Service, token: str | None, role: Role) -> Principal:
    """Who holds ``token``, admitted for ``role`` or a stronger one (:func:`admit`).

    Raises:
        HTTPException: 401 without a token or with an unknown one, 403 for too weak a role.
    """
    decided = admit(service, token, role)
    if isinstance(decided, Refusal):
        if decided.status == status.HTTP_401_UNAUTHORIZED:
            raise _unauthorized(decided.detail)
        raise HTTPException(status_code=decided.status, detail=decided.detail)
    return decided


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (None for any other header)."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def require(role: Role) -> Callable[[ServiceDep, CredentialsDep], Awaitable[Principal]]:
    """A dependency that admits a token of ``role`` or a stronger one."""

    async def dependency(service: ServiceDep, credentials: CredentialsDep) -> Principal:
        return await authorize(
            service, None if credentials is None else credentials.credentials, role
        )

    return dependency


ReaderDep = Annotated[Principal, Depends(require("reader"))]
RecorderDep = Annotated[Principal, Depends(require("recorder"))]
AdminDep = Annotated[Principal, Depends(require("admin"))]
