"""Pick the target a reference names: `local`, `process:PID`, `container:X`, `image:X`, or a bare
name."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from lockd.errors import InputError

if TYPE_CHECKING:
    from lockd.evidence.targets.base import Target


def probe_timeout() -> float:
    """$LOCKD_PROBE_TIMEOUT seconds, else the default. Raises InputError for a bad value."""
    from lockd.evidence.targets.base import PROBE_TIMEOUT

    raw = os.environ.get("LOCKD_PROBE_TIMEOUT")
    if not raw:
        return PROBE_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise InputError(f"LOCKD_PROBE_TIMEOUT={raw!r}: give seconds between 0 and 3600")
    return value


def open_target(ref: str, *, python: str | None = None) -> Target:
    """Raises InputError (exit 2) for a malformed reference (``process:`` and no number), or
    lockd's own process; TargetError (exit 3) when no daemon answers, nothing has that name, or
    the process cannot be inspected."""
    timeout = probe_timeout()
    if ref == "local":
        from lockd.evidence.targets.local import LocalTarget

        return LocalTarget(python, timeout=timeout)
    if ref.startswith("process:"):
        from lockd.evidence.targets.process import ProcessTarget, parse_pid

        return ProcessTarget(parse_pid(ref), python=python, timeout=timeout)
    from lockd.evidence.targets import docker

    return docker.open_docker_target(ref, python=python, timeout=timeout)
