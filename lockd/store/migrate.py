"""Alembic migrations, run from code: the scripts ship inside the package (lockd/store/migrations).

``lockd serve`` and ``lockd token create`` bring the database to the newest revision before they
use it; replicas starting at once on PostgreSQL take turns (an advisory lock).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from lockd.errors import InputError
from lockd.store.engine import WRITE, is_postgres

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_PG_MIGRATION_LOCK = 0x6C6F636B64  # "lockd": replicas migrating at once take turns

__all__ = ["MIGRATIONS", "SchemaState", "head_revision", "schema_state", "upgrade"]


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


@cache
def head_revision() -> str:
    """The newest revision the shipped migrations know."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships migrations
        raise RuntimeError(f"no migrations under {MIGRATIONS}")
    return head


def upgrade(engine: Engine) -> None:
    """Bring the database to the newest revision (nothing to do when it is there).

    Raises:
        InputError: the database cannot be reached or migrated (the URL, hidden password, named).
    """
    config = _config()
    try:
        with (
            engine.connect().execution_options(**{WRITE: True}) as connection,
            connection.begin(),
        ):
            if is_postgres(engine):
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK}
                )
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except SQLAlchemyError as e:
        where = engine.url.render_as_string(hide_password=True)
        cause = getattr(e, "orig", None) or e
        raise InputError(
            f"{where}: cannot migrate the database ({type(e).__name__}: {cause}); check "
            "LOCKD_DATABASE_URL and that the database server is running"
        ) from e


@dataclass(frozen=True)
class SchemaState:
    reachable: bool
    revision: str | None
    head: str
    error: str | None = None

    @property
    def ready(self) -> bool:
        return self.reachable and self.revision == self.head


def schema_state(engine: Engine) -> SchemaState:
    """Whether the database answers and carries the newest revision (for /readyz)."""
    head = head_revision()
    try:
        with engine.connect() as connection:
            revision = MigrationContext.configure(connection).get_current_revision()
    except SQLAlchemyError as e:
        return SchemaState(reachable=False, revision=None, head=head, error=type(e).__name__)
    return SchemaState(reachable=True, revision=revision, head=head)
