"""What ``lockd serve`` and ``lockd token create`` do: migrate, then serve or make a token."""

from __future__ import annotations

import getpass
import logging

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


def serve(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    workers: int = 1,
    migrate: bool = True,
    log_level: str = "info",
    access_log: bool = False,
) -> None:
    """Migrate the database (unless told not to), then serve until stopped. No line per
    request unless ``access_log``: every write is in the audit log and every request is counted
    and timed in /metrics, and uvicorn's access line cost about a sixth of a verification's CPU.

    Raises:
        InputError / KeyFileError: bad settings, found before the socket is opened.
    """
    import uvicorn

    from lockd.server.app import create_app

    open_store(settings, migrate=migrate).close()
    if not settings.trusted_keys:
        log.warning("LOCKD_TRUSTED_KEYS is empty: every pushed envelope will be refused")
    if workers > 1:
        # Each worker builds its app from the environment (settings cannot cross processes).
        uvicorn.run(
            "lockd.server.app:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=log_level,
            access_log=access_log,
        )
        return
    app = create_app(settings)
    tune_gc()
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log)
