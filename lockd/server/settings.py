"""The service's settings, read from the environment by :meth:`Settings.from_env` (never at
import time: the app factory takes a Settings, so tests build their own)."""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lockd.errors import InputError
from lockd.judgement.policy import search_dirs
from lockd.trust.keyless import Identity, identities_from_env

MAX_BODY_BYTES = 5 * 1024 * 1024
STALE_AFTER_S = 180
FLEET_EVENT_RETENTION_S = 30 * 86_400
WEBHOOK_MAX_ATTEMPTS = 20
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


def default_database_url(environ: Mapping[str, str] | None = None) -> str:
    """A SQLite file under the user's data directory ($XDG_DATA_HOME, else ~/.local/share)."""
    env = os.environ if environ is None else environ
    base = Path(env.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return f"sqlite:///{base / 'lockd' / 'lockd.db'}"


def _number(env: Mapping[str, str], name: str) -> float | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise InputError(f"{name}={raw!r}: give a number") from None


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
    # Keyless signers (lockd.trust.keyless) and the trusted_root.json they are checked against
    # (None: the sigstore package's public-good root).
    trusted_identities: tuple[Identity, ...] = ()
    trusted_root: Path | None = None
    policies: tuple[Path, ...] = ()  # searched before the shipped policies
    allow_anonymous_read: bool = False
    max_body_bytes: int = Field(default=MAX_BODY_BYTES, gt=0)
    admission_config: Path | None = (
        None  # YAML: namespaces -> policy + mode (lockd.judgement.admission)
    )
    # The audit log's checkpoint signing key (lockd keygen --log-key); None: a SQLite file's
    # service keeps one beside its database, others sign no checkpoints (lockd.server.service).
    log_key: Path | None = None
    # The fleet (lockd.model.fleet): a host is stale when it has not reported for this long.
    stale_after_s: int = Field(default=STALE_AFTER_S, gt=0)
    # Transition events that wait for nothing (delivered, given up, never to be sent) are
    # deleted this long after their transition; hosts that have not reported for
    # forget_after_s are forgotten (0: never). Both done by lockd.server.upkeep.
    fleet_event_retention_s: int = Field(default=FLEET_EVENT_RETENTION_S, gt=0)
    forget_after_s: int = Field(default=0, ge=0)
    # The transition webhook: POSTed on every transition to fail or unrecorded (lockd.webhook).
    webhook_url: str | None = None
    webhook_secret: str | None = Field(default=None, repr=False)  # HMAC-SHA256 of the body
    webhook_max_attempts: int = Field(default=WEBHOOK_MAX_ATTEMPTS, ge=1, le=1000)
    webhook_backoff_s: float = Field(default=1.0, gt=0, le=3600)  # first retry; doubles
    webhook_backoff_max_s: float = Field(default=300.0, gt=0, le=86_400)
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=300)
    # Where the service listens (`lockd serve --host` sets it; LOCKD_HOST under uvicorn started
    # by hand). None: not told, so taken as reachable from other machines (fail closed).
    listen_host: str | None = None
    # Answer /v1/admission without a client certificate or token off loopback (never needed in
    # a cluster: the API server presents a certificate or a token).
    insecure_admission: bool = False
    tls_cert: Path | None = None  # the serving certificate (PEM, chain) and its key
    tls_key: Path | None = None
    # The admission listener: its own port, TLS with a client certificate required from
    # client_ca; its decisions are audited as tls:<admission_identity>.
    admission_port: int | None = Field(default=None, ge=1, le=65535)
    client_ca: Path | None = None
    admission_identity: str = Field(
        default="kube-apiserver", pattern=r"^[A-Za-z0-9][A-Za-z0-9._@:-]{0,47}$"
    )

    @model_validator(mode="after")
    def _listeners(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("give both --tls-cert and --tls-key (LOCKD_TLS_CERT, LOCKD_TLS_KEY)")
        if self.admission_port is not None and (self.tls_cert is None or self.client_ca is None):
            raise ValueError(
                "--admission-port needs --tls-cert, --tls-key and --client-ca: the admission "
                "listener requires a client certificate (LOCKD_ADMISSION_PORT, LOCKD_CLIENT_CA)"
            )
        if self.client_ca is not None and self.admission_port is None:
            raise ValueError(
                "--client-ca is used by the admission listener only: give --admission-port too"
            )
        return self

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(
                f"LOCKD_WEBHOOK_URL {url!r}: give an http:// or https:// URL with a host"
            )
        return url

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """``LOCKD_DATABASE_URL``, ``LOCKD_TRUSTED_KEYS`` (files separated by the OS path
        separator), ``LOCKD_TRUSTED_IDENTITIES`` (keyless signers: a JSON list of
        ``{"issuer", "identity" or "identity_regexp"}``), ``LOCKD_TRUSTED_ROOT`` (their
        trusted_root.json), ``LOCKD_POLICIES`` (folders searched before the shipped policies,
        separated likewise), ``LOCKD_ALLOW_ANONYMOUS_READ`` (a flag),
        ``LOCKD_ADMISSION_CONFIG`` (the admission webhook's YAML, see lockd.judgement.admission),
        ``LOCKD_LOG_KEY`` (the audit log's checkpoint key, lockd keygen --log-key);
        the fleet's ``LOCKD_STALE_AFTER_S``, ``LOCKD_FLEET_EVENT_RETENTION_S``,
        ``LOCKD_FLEET_FORGET_AFTER_S`` (seconds), ``LOCKD_WEBHOOK_URL``,
        ``LOCKD_WEBHOOK_SECRET``, ``LOCKD_WEBHOOK_MAX_ATTEMPTS``, ``LOCKD_WEBHOOK_BACKOFF_S``,
        ``LOCKD_WEBHOOK_BACKOFF_MAX_S``, ``LOCKD_WEBHOOK_TIMEOUT_S``; the listeners'
        ``LOCKD_HOST``, ``LOCKD_INSECURE_ADMISSION`` (a flag), ``LOCKD_TLS_CERT``,
        ``LOCKD_TLS_KEY``, ``LOCKD_ADMISSION_PORT``, ``LOCKD_CLIENT_CA``,
        ``LOCKD_ADMISSION_IDENTITY``.

        Raises:
            InputError: a flag that is not a boolean, a number that is not one or out of
                range, a webhook URL that is not http(s), listener settings that do not fit.
        """
        env = os.environ if environ is None else environ
        keys = tuple(Path(p) for p in env.get("LOCKD_TRUSTED_KEYS", "").split(os.pathsep) if p)
        fleet: dict[str, object] = {}
        for field, name in _FLEET_ENV.items():
            value = _number(env, name)
            if value is not None:
                fleet[field] = value
        if url := env.get("LOCKD_WEBHOOK_URL", "").strip():
            fleet["webhook_url"] = url
        if secret := env.get("LOCKD_WEBHOOK_SECRET", ""):
            fleet["webhook_secret"] = secret
        anonymous = _flag("LOCKD_ALLOW_ANONYMOUS_READ", env.get("LOCKD_ALLOW_ANONYMOUS_READ", ""))
        admission = env.get("LOCKD_ADMISSION_CONFIG")
        identities = identities_from_env(env.get("LOCKD_TRUSTED_IDENTITIES", ""))
        root = env.get("LOCKD_TRUSTED_ROOT")
        log_key = env.get("LOCKD_LOG_KEY")
        listeners = _listener_settings(env)
        try:
            return cls(
                **fleet,
                **listeners,
                database_url=env.get("LOCKD_DATABASE_URL") or default_database_url(env),
                trusted_keys=keys,
                trusted_identities=identities,
                trusted_root=Path(root) if root else None,
                policies=search_dirs(env),
                allow_anonymous_read=anonymous,
                admission_config=Path(admission) if admission else None,
                log_key=Path(log_key) if log_key else None,
            )
        except ValidationError as e:
            error = e.errors()[0]
            field = str(error["loc"][0]) if error["loc"] else ""
            message = str(error["msg"]).removeprefix("Value error, ")
            if field in ("webhook_url", ""):
                raise InputError(message) from None
            raise InputError(f"{_ENV_NAMES.get(field, field)}: {message}") from None


def _listener_settings(env: Mapping[str, str]) -> dict[str, object]:
    found: dict[str, object] = {}
    for field, name in _PATH_ENV.items():
        if value := env.get(name, "").strip():
            found[field] = Path(value)
    if host := env.get("LOCKD_HOST", "").strip():
        found["listen_host"] = host
    if identity := env.get("LOCKD_ADMISSION_IDENTITY", "").strip():
        found["admission_identity"] = identity
    port = _number(env, "LOCKD_ADMISSION_PORT")
    if port is not None:
        found["admission_port"] = port
    raw = env.get("LOCKD_INSECURE_ADMISSION", "")
    found["insecure_admission"] = _flag("LOCKD_INSECURE_ADMISSION", raw)
    return found


_PATH_ENV = {
    "tls_cert": "LOCKD_TLS_CERT",
    "tls_key": "LOCKD_TLS_KEY",
    "client_ca": "LOCKD_CLIENT_CA",
}

_FLEET_ENV = {
    "stale_after_s": "LOCKD_STALE_AFTER_S",
    "fleet_event_retention_s": "LOCKD_FLEET_EVENT_RETENTION_S",
    "forget_after_s": "LOCKD_FLEET_FORGET_AFTER_S",
    "webhook_max_attempts": "LOCKD_WEBHOOK_MAX_ATTEMPTS",
    "webhook_backoff_s": "LOCKD_WEBHOOK_BACKOFF_S",
    "webhook_backoff_max_s": "LOCKD_WEBHOOK_BACKOFF_MAX_S",
    "webhook_timeout_s": "LOCKD_WEBHOOK_TIMEOUT_S",
}
_ENV_NAMES = {
    **_FLEET_ENV,
    "admission_port": "LOCKD_ADMISSION_PORT",
    "admission_identity": "LOCKD_ADMISSION_IDENTITY",
}
