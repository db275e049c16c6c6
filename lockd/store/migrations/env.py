"""Alembic's environment: migrations run on the connection lockd.store.migrate hands over
(``config.attributes["connection"]``), or on ``sqlalchemy.url`` when run by the alembic tool."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from lockd.store.engine import make_engine
from lockd.store.tables import metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("set sqlalchemy.url (alembic -x) or run `lockd serve`, which migrates")
    engine = make_engine(url)
    with engine.connect() as conn:
        _run(conn)
        conn.commit()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported")
run()
