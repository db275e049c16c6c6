"""What ``lockd watch`` is asked to do, parsed and checked before anything starts. Pure."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lockd.errors import InputError
from lockd.trust.keyless import Identity

DEFAULT_INTERVAL_S = 60.0
DEFAULT_SPOOL = Path("/var/lib/lockd/watch")
DEFAULT_CONCURRENCY = 4
MAX_INTERVAL_S = 86_400.0  # the service keeps interval_s within a day
MIN_INTERVAL_S = 1.0

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_HOST = re.compile(r"^[A-Za-z0-9._-]{1,253}$")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,252}$")


def parse_interval(text: str) -> float:
    """``60s``, ``5m``, ``1h``, ``1500ms`` or bare seconds, between 1 s and a day.

    Raises:
        InputError: anything else.
    """
    match = _DURATION.match(text)
    if match is None:
        raise InputError(f"--interval {text!r}: give a duration such as 60s, 5m or 1h")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not MIN_INTERVAL_S <= seconds <= MAX_INTERVAL_S:
        raise InputError(f"--interval {text!r}: give between 1s and 24h")
    return seconds


@dataclass(frozen=True)
class Selector:
    """``key=value`` (the label has that value) or ``key`` (the label is set)."""

    key: str
    value: str | None = None

    def matches(self, labels: dict[str, str]) -> bool:
        if self.key not in labels:
            return False
        return self.value is None or labels[self.key] == self.value

    def docker_filter(self) -> str:
        return self.key if self.value is None else f"{self.key}={self.value}"


def parse_selectors(specs: list[str]) -> tuple[Selector, ...]:
    """``--label-selector`` values (each may hold several, separated by commas); all must match.

    Raises:
        InputError: an empty term, a malformed key, or ``!=`` (not supported).
    """
    found: list[Selector] = []
    for spec in specs:
        for term in spec.split(","):
            if "!=" in term:
                raise InputError(
                    f"--label-selector {spec!r}: only key=value and key are supported, not !="
                )
            key, equals, value = term.strip().partition("=")
            key = key.strip()
            if not _LABEL_KEY.match(key):
                raise InputError(
                    f"--label-selector {spec!r}: {term.strip()!r} is not key=value or key "
                    "(keys: letters, digits, '.', '_', '/', '-')"
                )
            found.append(Selector(key, value if equals else None))
    return tuple(found)


def check_host(name: str) -> str:
    """Raises InputError unless ``name`` is 1..253 characters of [A-Za-z0-9._-]."""
    if not _HOST.match(name):
        raise InputError(
            f"--host {name!r}: give 1 to 253 letters, digits, '.', '_' or '-' "
            "(this host's name as the fleet view shows it)"
        )
    return name


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) for --metrics-addr.

    Raises:
        InputError: no port, or a port out of range.
    """
    host, colon, port = text.rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--metrics-addr {text!r}: give HOST:PORT, e.g. 127.0.0.1:9464")
    return host, int(port)


@dataclass(frozen=True)
class WatchOptions:
    server: str
    host: str
    spool: Path = DEFAULT_SPOOL
    interval_s: float = DEFAULT_INTERVAL_S
    selectors: tuple[Selector, ...] = ()
    policy: str | None = None
    keys: tuple[Path, ...] = ()  # with identities: what verify's --key and identity flags say
    identities: tuple[Identity, ...] = ()
    trusted_root: Path | None = None
    metrics_addr: tuple[str, int] | None = None
    probe_timeout_s: float = 60.0
    concurrency: int = DEFAULT_CONCURRENCY
    flush_after_s: float = 2.0  # finished verdicts wait at most this for the slower ones
    settle_s: float = 0.5  # a burst of daemon events is gathered this long before acting
    service_timeout_s: float = 10.0
    python: str | None = None

    def __post_init__(self) -> None:
        if not 0 < self.probe_timeout_s <= 3600:
            raise InputError(
                f"--probe-timeout {self.probe_timeout_s:g}: give seconds between 0 and 3600"
            )
        if not 1 <= self.concurrency <= 64:
            raise InputError(f"--concurrency {self.concurrency}: give 1 to 64")
