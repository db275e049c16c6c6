"""The app factory: ``create_app(settings)`` builds the FastAPI app (nothing is created at import
time); ``app_from_env()`` is the factory uvicorn's workers call."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from lockd import __version__
from lockd.errors import InputError, LockdError, SignatureError
from lockd.server.deps import AdmissionChannel
from lockd.server.middleware import BodyLimit, ListenerRoutes, RequestMetrics, StorableText
from lockd.server.routes import admission, audit, fleet, health, manifests, tokens, verifications
from lockd.server.service import NotFoundError, Service
from lockd.server.settings import Settings
from lockd.server.upkeep import Upkeep
from lockd.store.repository import Store

if TYPE_CHECKING:
    from lockd.server.metrics import FleetCounts
    from lockd.server.webhook import WebhookWorker

ADMISSION_LISTENER_PATHS = frozenset({"/v1/admission", "/healthz", "/readyz"})
DESCRIPTION = """Signed environments (DSSE envelopes of lockd manifests), the verification
reports made against them, and a hash-chained audit log of every write and decision."""


def _status_of(error: LockdError) -> int:
    if isinstance(error, NotFoundError):
        return 404
    if isinstance(error, (SignatureError, InputError)):
        return 422
    return 500


async def _lockd_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, LockdError)
    return JSONResponse({"detail": error.diagnostics()}, status_code=_status_of(error))


def _where(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        kind, rest = parts[0], parts[1:]
        return f"{kind} {'.'.join(rest)}" if rest else kind
    return ".".join(parts) or "request"


async def _validation_error(_: Request, error: Exception) -> JSONResponse:
    """One readable line per problem; a body that is not JSON at all is a 400."""
    assert isinstance(error, RequestValidationError)
    errors: list[Any] = list(error.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        first = next(e for e in errors if e.get("type") == "json_invalid")
        why = first.get("ctx", {}).get("error", "invalid JSON")
        return JSONResponse(
            {"detail": f"the request body is not valid JSON ({why}); nothing was stored"},
            status_code=400,
        )
    lines = []
    for e in errors[:10]:
        message = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        if e.get("type") == "missing" and tuple(e.get("loc", ())) == ("body",):
            message = "a JSON body is required"
        lines.append(f"{_where(tuple(e.get('loc', ())))}: {message}")
    more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
    return JSONResponse({"detail": "; ".join(lines) + more}, status_code=422)


def _document_raw_bodies(app: FastAPI) -> None:
    """Add the schemas of bodies that routes read themselves (``POST /v1/verifications``) to
    the OpenAPI components, under names of their own so they never clash with FastAPI's."""
    from lockd.server.schemas import VerificationRequest

    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        if "VerificationRequest" not in components:
            prefix = "VerificationRequest."
            body = VerificationRequest.model_json_schema(
                ref_template=f"#/components/schemas/{prefix}{{model}}"
            )
            for name, definition in body.pop("$defs", {}).items():
                components[prefix + name] = definition
            components["VerificationRequest"] = body
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(
    settings: Settings, *, store: Store | None = None, client_certs_checked: bool = False
) -> FastAPI:
    """The lockd service for ``settings``. Trusted keys are read now (a bad key file fails here,
    naming the file); the database is opened lazily and closed at shutdown unless ``store`` was
    handed in. Migrations are not run here: ``lockd serve`` runs them before it starts.

    Who may send admission reviews is decided here, for every way the app is served
    (:class:`AdmissionChannel`): ``client_certs_checked`` says the caller serves
    ``settings.admission_port`` with client certificates required (``lockd serve`` does).

    Raises:
        KeyFileError: a trusted key file cannot be read.
        InputError: a bad database URL, or an unreadable trusted root (LOCKD_TRUSTED_ROOT); an
            admission port nobody checks certificates on.
        PolicyError: a bad admission config (LOCKD_ADMISSION_CONFIG).
    """
    from lockd.trust import keys
    from lockd.trust.keyless import load_trusted_root

    channel = AdmissionChannel.from_settings(settings, client_certs_checked=client_certs_checked)
    trusted = [keys.load_public_key(path) for path in settings.trusted_keys]
    root = settings.trusted_root
    owned = store is None
    the_store = store if store is not None else Store.open(settings.database_url)
    service = Service(
        settings,
        the_store,
        trusted,
        trusted_root=None if root is None else load_trusted_root(root),
    )
    service.metrics.watch_fleet(_fleet_counts(service))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker = _start_webhook(app, service)
        yield
        if worker is not None:
            await worker.stop()
        if owned:
            the_store.close()

    app = FastAPI(
        title="lockd",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.admission = admission.Gatekeeper.from_service(service)
    app.state.admission_channel = channel
    app.state.upkeep = Upkeep()  # the fleet's: pruning events, forgetting silent hosts
    _document_raw_bodies(app)
    for module in (health, manifests, verifications, audit, tokens, admission, fleet):
        app.include_router(module.router)
    from lockd.server import pages

    app.include_router(pages.router)
    app.add_exception_handler(LockdError, _lockd_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    verifications.install_fast_path(app, service)  # innermost: inside the three below
    app.add_middleware(StorableText)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=service.metrics)
    if settings.admission_port is not None:  # outermost: the admission listener serves it only
        app.add_middleware(
            ListenerRoutes, port=settings.admission_port, paths=ADMISSION_LISTENER_PATHS
        )
    return app


def _fleet_counts(service: Service) -> FleetCounts:
    def counts() -> tuple[dict[str, int], dict[str, int]]:
        from lockd.store.fleet import fleet_counts

        return fleet_counts(
            service.store,
            now=dt.datetime.now(dt.timezone.utc),
            stale_after_s=service.settings.stale_after_s,
        )

    return counts


def _start_webhook(app: FastAPI, service: Service) -> WebhookWorker | None:
    """The transition webhook's delivery worker, when LOCKD_WEBHOOK_URL is set."""
    if service.settings.webhook_url is None:
        return None
    from lockd.server.webhook import WebhookWorker

    worker = WebhookWorker(service)
    worker.start()
    app.state.webhook = worker
    return worker


def app_from_env() -> FastAPI:
    """For ``uvicorn --factory lockd.server.app:app_from_env`` (several workers)."""
    from lockd.server.tuning import tune_gc

    app = create_app(Settings.from_env())
    tune_gc()
    return app
