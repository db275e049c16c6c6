"""FastAPI dependencies: the service, and who is calling (bearer tokens with roles; the
admission webhook's channel)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, NamedTuple

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from lockd.errors import InputError
from lockd.server.service import Service
from lockd.server.settings import Settings
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


# --- who sends admission reviews -----------------------------------------------------------


def is_loopback_host(host: str | None) -> bool:
    """``host`` (an address to listen on) reaches this machine only; None (not told) is not."""
    import ipaddress

    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


ACTOR_LENGTH = 64  # the audit log's actor column


def certificate_actor(subject: str) -> str:
    """``tls:<subject>`` as one line that fits the actor column and names one certificate:
    control characters (a newline forging a second line where the log is shown) are escaped
    as RFC 4514 hex pairs (``\\0a``), and a subject too long to fit is cut and ends with
    ``~`` and 16 hex of its SHA-256 (the column cut at 64 used to give two certificates
    sharing their first 60 characters one actor)."""
    import hashlib

    escaped = "".join(
        "".join(f"\\{b:02x}" for b in ch.encode()) if not ch.isprintable() else ch for ch in subject
    )
    actor = f"tls:{escaped}"
    if len(actor) <= ACTOR_LENGTH:
        return actor
    digest = hashlib.sha256(subject.encode()).hexdigest()[:16]
    return actor[: ACTOR_LENGTH - 17] + "~" + digest


@dataclass(frozen=True)
class AdmissionChannel:
    """How ``/v1/admission`` authenticates its caller, decided once by the app factory from the
    settings: on the admission listener (``tls_port``: its TLS handshake already required a
    client certificate from LOCKD_CLIENT_CA) only, the actor being the certificate's subject
    (``tls:CN=…``) where the server puts it in the scope, else ``tls:`` and the configured
    identity; else a bearer token of a recorder or admin (``token:NAME``); else, only where
    the service listens on loopback or was told ``--insecure-admission``, anonymously."""

    tls_port: int | None
    tls_actor: str
    anonymous_actor: str | None
    where: str

    @classmethod
    def from_settings(cls, settings: Settings, *, client_certs_checked: bool) -> AdmissionChannel:
        """Raises InputError for an admission port whose client certificates no one checks
        (the app built by uvicorn started by hand: only `lockd serve` opens that listener)."""
        port = settings.admission_port
        if port is not None and not client_certs_checked:
            raise InputError(
                f"LOCKD_ADMISSION_PORT={port}: only `lockd serve` opens the admission listener "
                "(it requires client certificates from LOCKD_CLIENT_CA there); this app cannot "
                "tell that its server checks them. Unset it and give the webhook a bearer "
                "token, or run `lockd serve --admission-port`"
            )
        anonymous = None
        if settings.insecure_admission:
            anonymous = "anonymous:insecure-admission"
        elif is_loopback_host(settings.listen_host):
            anonymous = "anonymous:loopback"
        return cls(
            tls_port=port,
            tls_actor=f"tls:{settings.admission_identity}",
            anonymous_actor=anonymous,
            where=settings.listen_host or "an address it was not told (LOCKD_HOST)",
        )

    def caller(self, service: Service, request: Request) -> str | Refusal:
        """The audit actor of a review arriving as ``request``, or why it is refused (before
        its body is read; a token is looked up, nothing else touches the store)."""
        server = request.scope.get("server")
        port = server[1] if server else None
        if self.tls_port is not None:
            if port == self.tls_port and request.url.scheme == "https":
                tls = request.scope.get("extensions", {}).get("tls", {})
                name = tls.get("client_cert_name")  # the ASGI TLS extension (lockd serve's)
                return certificate_actor(name) if isinstance(name, str) and name else self.tls_actor
            return Refusal(
                status.HTTP_403_FORBIDDEN,
                f"admission reviews are answered on the admission listener (port "
                f"{self.tls_port}) only, to callers with a client certificate",
            )
        token = bearer_token(request.headers.get("authorization"))
        if token is not None:
            decided = admit(service, token, "recorder")
            return decided if isinstance(decided, Refusal) else f"token:{decided.name}"
        if self.anonymous_actor == "anonymous:loopback" and _arrived_off_loopback(request):
            # LOCKD_HOST is what the operator said; the socket says where the review came in
            # (uvicorn started by hand with --host 0.0.0.0 and LOCKD_HOST=127.0.0.1).
            return Refusal(
                status.HTTP_401_UNAUTHORIZED,
                f"this review arrived on {request.scope['server'][0]}, not loopback, though "
                f"LOCKD_HOST is {self.where}: /v1/admission needs" + _CREDENTIALS,
            )
        if self.anonymous_actor is not None:
            return self.anonymous_actor
        return Refusal(
            status.HTTP_401_UNAUTHORIZED,
            f"this service listens on {self.where}: /v1/admission needs" + _CREDENTIALS,
        )


_CREDENTIALS = (
    " a client certificate (lockd serve --admission-port with --client-ca) or a bearer token "
    "of a recorder (lockd token create NAME --role recorder); --insecure-admission (or "
    "LOCKD_INSECURE_ADMISSION=1) allows anonymous reviews"
)


def _arrived_off_loopback(request: Request) -> bool:
    """The connection's local address (the ASGI scope's ``server``, from the socket: no header
    changes it) is an IP address off loopback; an IPv4-mapped one counts as its IPv4 address.
    A server that gives no address (a test client's name, a Unix socket) is taken at its
    LOCKD_HOST."""
    import ipaddress

    server = request.scope.get("server")
    try:
        address = ipaddress.ip_address(str(server[0]).partition("%")[0]) if server else None
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address is not None and not address.is_loopback
