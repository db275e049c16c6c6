"""The service's settings, read from the environment by :meth:`Settings.from_env` (never at
import time: the app factory takes a Settings, so tests build their own)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from lockd.errors import InputError

MAX_BODY_BYTES = 5 * 1024 * 1024
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


def default_database_url(environ: Mapping[str, str] | None = None) -> str:
    """A SQLite file under the user's data directory ($XDG_DATA_HOME, else ~/.local/share)."""
    env = os.environ if environ is None else environ
    base = Path(env.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return f"sqlite:///{base / 'lockd' / 'lockd.db'}"


def default_policies() -> Path:
    """The policies shipped beside lockd (the repository's policies/)."""
    return Path(__file__).resolve().parents[2] / "policies"


def _flag(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InputError(f"{name}={raw!r}: give 1/true/yes/on or 0/false/no/off")


class Settings(BaseModel):
    """What the service needs to start."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    database_url: str
    trusted_keys: tuple[Path, ...] = ()
    policies: Path = Field(default_factory=default_policies)
    allow_anonymous_read: bool = False
    max_body_bytes: int = Field(default=MAX_BODY_BYTES, gt=0)
    admission_config: Path | None = None  # YAML: namespaces -> policy + mode (lockd.admission)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """``LOCKD_DATABASE_URL``, ``LOCKD_TRUSTED_KEYS`` (files separated by the OS path
        separator), ``LOCKD_POLICIES`` (a folder), ``LOCKD_ALLOW_ANONYMOUS_READ`` (a flag),
        ``LOCKD_ADMISSION_CONFIG`` (the admission webhook's YAML, see lockd.admission).

        Raises:
            InputError: a flag that is not a boolean.
        """
        env = os.environ if environ is None else environ
        keys = tuple(Path(p) for p in env.get("LOCKD_TRUSTED_KEYS", "").split(os.pathsep) if p)
        policies = env.get("LOCKD_POLICIES")
        return cls(
            database_url=env.get("LOCKD_DATABASE_URL") or default_database_url(env),
            trusted_keys=keys,
            policies=Path(policies) if policies else default_policies(),
            allow_anonymous_read=_flag(
                "LOCKD_ALLOW_ANONYMOUS_READ", env.get("LOCKD_ALLOW_ANONYMOUS_READ", "")
            ),
            admission_config=Path(admission)
            if (admission := env.get("LOCKD_ADMISSION_CONFIG"))
            else None,
        )
