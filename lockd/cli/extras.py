"""lockd's optional parts: which extra a command needs, and a clear error where it is missing.

The bare ``pip install lockd`` gives what a CI runner or a deploy gate needs (record, verify,
gate, ...). ``lockd lock`` needs the ``lock`` extra (uv, pip-tools); the service and the commands
that open its database need ``server`` (FastAPI, uvicorn, SQLAlchemy, Alembic, psycopg, Jinja2,
Prometheus client). Keyless verification needs ``sigstore`` (lockd.trust.keyless says so where
it is missing). ``all`` is all three.
"""

from __future__ import annotations

from importlib.util import find_spec

from lockd.errors import InputError

EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "lock": ("piptools",),  # uv: its wheel's binary, else any uv on PATH (lockd.lock)
    "server": ("fastapi", "uvicorn", "sqlalchemy", "alembic", "jinja2", "prometheus_client"),
    "sigstore": ("sigstore",),
}
"""The modules an extra installs that its commands import (psycopg is imported only for a
PostgreSQL URL, where its own error says so)."""


class MissingExtraError(InputError):
    """A command was run whose optional dependencies are not installed."""


def missing_modules(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here."""
    return [name for name in EXTRA_MODULES[extra] if find_spec(name) is None]


def require_extra(extra: str, command: str) -> None:
    """Raise MissingExtraError (exit 2) naming the extra to install when ``command`` cannot run.

    Raises:
        MissingExtraError: a module of the extra is not installed.
    """
    missing = missing_modules(extra)
    if missing:
        raise MissingExtraError(
            f"lockd {command} needs the '{extra}' extra, which is not installed (missing: "
            f"{', '.join(missing)}): pip install 'lockd[{extra}]' (or 'lockd[all]')"
        )
