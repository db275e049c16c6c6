"""Engines for the service's two databases: SQLite (WAL, the embedded default) and PostgreSQL.

On SQLite every transaction that writes starts with ``BEGIN IMMEDIATE`` (it takes the one write
lock up front, waiting up to the busy timeout), so two writers never both read the audit head
and then race to append; reads start a plain deferred ``BEGIN`` and never block writers (WAL).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from lockd.errors import InputError

WRITE = "lockd_write"  # execution option: this connection's transaction writes
SQLITE_BUSY_TIMEOUT_MS = 30_000

__all__ = ["WRITE", "is_postgres", "is_sqlite", "make_engine", "parse_url"]


def parse_url(url: str) -> URL:
    """The database URL, with PostgreSQL mapped onto the psycopg (3) driver.

    Raises:
        InputError: not a URL, or a database other than SQLite and PostgreSQL.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise InputError(
            f"LOCKD_DATABASE_URL: not a database URL ({e}); give sqlite:////path/to/lockd.db "
            "or postgresql://user:password@host/db"
        ) from e
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        return parsed
    if backend == "sqlite":
        return parsed
    raise InputError(
        f"LOCKD_DATABASE_URL: {backend} databases are not supported; use sqlite:///… "
        "(embedded) or postgresql://…"
    )


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def make_engine(url: str, *, pool_size: int = 8) -> Engine:
    """An engine for ``url`` (SQLite files get WAL, a busy timeout and ``BEGIN IMMEDIATE`` for
    writes; their folder is created). Nothing connects until the engine is first used.

    Raises:
        InputError: a bad URL, or a SQLite folder that cannot be created.
    """
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed)
    return create_engine(
        parsed, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, future=True
    )


def _sqlite_engine(url: URL) -> Engine:
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        raise InputError(
            f"LOCKD_DATABASE_URL={url.render_as_string(hide_password=True)}: an in-memory SQLite "
            "database loses everything at exit; give a file: sqlite:////path/to/lockd.db"
        )
    folder = Path(database).expanduser().resolve().parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(
            f"{folder}: cannot create the database folder ({e.strerror}); set "
            "LOCKD_DATABASE_URL to a writable place"
        ) from e
    engine = create_engine(url, pool_size=8, max_overflow=8, future=True)

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite's own is deferred only).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")  # in WAL: durable against a process crash
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        write = connection.get_execution_options().get(WRITE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine
