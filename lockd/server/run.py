"""What ``lockd serve`` and ``lockd token create`` do: migrate, then serve or make a token."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import signal
from collections.abc import Iterator
from typing import Any

import uvicorn
from pydantic import ValidationError

from lockd.errors import InputError
from lockd.server.schemas import TokenCreate
from lockd.server.settings import Settings
from lockd.server.tuning import tune_gc
from lockd.store.migrate import upgrade
from lockd.store.repository import Store

log = logging.getLogger("lockd.server")


def open_store(settings: Settings, *, migrate: bool = True) -> Store:
    """The settings' database, brought to the newest revision unless ``migrate`` is off.

    Raises:
        InputError: a bad URL, or a database that cannot be reached or migrated.
    """
    store = Store.open(settings.database_url)
    if migrate:
        try:
            upgrade(store.engine)
        except BaseException:
            store.close()
            raise
    return store


def create_token(settings: Settings, name: str, role: str) -> str:
    """Make a token in the settings' database (migrating it first); the caller shows it once.

    Raises:
        InputError: a bad name or role, a name that exists, an unreachable database.
    """
    request = _token_request(name, role)
    store = open_store(settings)
    try:
        return store.create_token(request.name, request.role, actor=f"cli:{_user()}")
    finally:
        store.close()


def _token_request(name: str, role: str) -> TokenCreate:
    try:
        return TokenCreate(name=name, role=role)
    except ValidationError as e:
        field = str(e.errors()[0]["loc"][0])
        why = (
            f"token name {name!r}: give 1-64 of A-Z a-z 0-9 . _ @ - (starting with a letter or "
            "digit)"
            if field == "name"
            else f"role {role!r}: give reader, recorder or admin"
        )
        raise InputError(why) from e


def _user() -> str:
    try:
        return getpass.getuser()[:32]
    except (KeyError, OSError):
        return "unknown"


def check_tls(settings: Settings) -> None:
    """Load the TLS files now, so a bad one is named before any socket is opened.

    Raises:
        InputError: a certificate, key or client CA that cannot be loaded.
    """
    import ssl

    if settings.tls_cert is None or settings.tls_key is None:
        return
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as e:
        raise InputError(
            f"{settings.tls_cert}, {settings.tls_key}: cannot load the TLS certificate and key "
            f"({e}); give a PEM certificate (chain) and its unencrypted key"
        ) from e
    if settings.client_ca is not None:
        try:
            context.load_verify_locations(cafile=settings.client_ca)
        except (OSError, ssl.SSLError) as e:
            raise InputError(
                f"{settings.client_ca}: cannot load the client CA ({e}); give PEM certificates"
            ) from e


def _tls(settings: Settings) -> dict[str, Any]:
    if settings.tls_cert is None:
        return {}
    return {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}


GRACEFUL_SHUTDOWN_S = 10
"""How long a stop waits for open connections and requests: without a bound, one idle TLS
keep-alive connection whose peer never answers the close held the process for asyncio's 30 s
TLS shutdown timeout, as long as Kubernetes' default grace period before SIGKILL."""


def serve(
    settings: Settings,
    *,
    port: int = 8080,
    workers: int = 1,
    migrate: bool = True,
    log_level: str = "info",
    access_log: bool = False,
) -> None:
    """Migrate the database (unless told not to), then serve until stopped: on
    ``settings.listen_host`` (loopback when unset) and ``port`` (TLS
    with ``settings.tls_cert``), and with ``settings.admission_port`` a second listener for the
    admission webhook whose TLS handshake requires a client certificate from
    ``settings.client_ca``. No line per request unless ``access_log``: every write is in the
    audit log and every request is counted and timed in /metrics, and uvicorn's access line
    cost about a sixth of a verification's CPU.

    Raises:
        InputError / KeyFileError: bad settings, found before the socket is opened.
    """
    from lockd.server.app import create_app

    host = settings.listen_host or "127.0.0.1"
    if settings.admission_port is not None and workers > 1:
        raise InputError(
            "--admission-port serves from one process: give --workers 1 and run more replicas"
        )
    check_tls(settings)
    open_store(settings, migrate=migrate).close()
    if not settings.trusted_keys:
        log.warning("LOCKD_TRUSTED_KEYS is empty: every pushed envelope will be refused")
    if settings.log_key is None and not settings.database_url.startswith("sqlite"):
        log.warning(
            "LOCKD_LOG_KEY is not set: the audit log's checkpoints are not signed (make a key "
            "with `lockd keygen --log-key NAME`, the same for every replica)"
        )
    common: dict[str, Any] = {
        "log_level": log_level,
        "access_log": access_log,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S,
        **_tls(settings),
    }
    if workers > 1:
        # Each worker builds its app from the environment (settings cannot cross processes:
        # `lockd serve` put its options there).
        uvicorn.run(
            "lockd.server.app:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            **common,
        )
        return
    app = create_app(settings, client_certs_checked=settings.admission_port is not None)
    tune_gc()
    if settings.admission_port is None:
        uvicorn.run(app, host=host, port=port, **common)
        return
    import ssl

    main = uvicorn.Config(app, host=host, port=port, **common)
    admission = uvicorn.Config(
        app,
        host=host,
        port=settings.admission_port,
        lifespan="off",  # one app: the main listener starts and stops it
        ssl_cert_reqs=ssl.CERT_REQUIRED,
        ssl_ca_certs=str(settings.client_ca),
        http=_tls_scope_protocol(),
        **common,
    )
    factory = main.get_loop_factory()
    loop = factory() if factory is not None else asyncio.new_event_loop()
    try:
        loop.run_until_complete(_serve_all([_Listener(main), _Listener(admission)]))
    finally:
        loop.close()


def _tls_scope_protocol() -> Any:
    """uvicorn's HTTP protocol, with the ASGI TLS extension added to each request's scope
    (``scope["extensions"]["tls"]["client_cert_name"]``: the verified client certificate's
    subject, RFC 4514), which uvicorn does not fill itself; "auto" without httptools (the
    actor is then the listener's configured identity)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return "auto"

    class TlsScope(HttpToolsProtocol):
        tls: dict[str, Any] | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.tls = _tls_extension(transport.get_extra_info("ssl_object"))

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self.tls is not None:
                self.scope["extensions"] = {"tls": self.tls}

    return TlsScope


def _tls_extension(ssl_object: Any) -> dict[str, Any] | None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        return None
    cert = x509.load_der_x509_certificate(der)
    pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    return {
        "server_cert": None,
        "client_cert_chain": [pem],
        "client_cert_name": cert.subject.rfc4514_string(),
        "client_cert_error": None,
        "tls_version": None,
        "cipher_suite": None,
    }


class _Listener(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # _serve_all handles the signals once, for every listener


async def _serve_all(servers: list[_Listener]) -> None:
    """Serve every listener until SIGINT or SIGTERM, then stop them all (one stopping for
    another reason, a port in use, stops the others too)."""
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for server in servers:
            server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    tasks = [asyncio.create_task(server.serve()) for server in servers]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        stop()
        await asyncio.gather(*tasks)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
