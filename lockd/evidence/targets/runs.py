"""What the Docker targets share when they run the probe or a script: the interpreters tried,
and the errors of one that stopped, failed or was not there."""

from __future__ import annotations

from lockd.errors import ProbeError, TargetError
from lockd.evidence.targets.base import stderr_tail

__all__ = ["NOT_FOUND_EXIT_CODES", "PYTHONS", "candidates", "exited", "no_python", "stopped"]

PYTHONS = ("python3", "python")
"""Interpreters tried, in order, when no --python is given."""

NOT_FOUND_EXIT_CODES = (126, 127)
"""The runtime could not find or run the interpreter."""


def _size(n: int) -> str:
    for unit, factor in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if n >= factor and n % factor == 0:
            return f"{n // factor} {unit}"
    return f"{n} bytes"


def stopped(source: str, status: str, timeout: float, max_output: int) -> ProbeError:
    if status == "timeout":
        return ProbeError(
            f"{source}: probe timed out after {timeout:g}s; the target may be overloaded or "
            "stuck importing a library (torch?): retry, or inspect it"
        )
    return ProbeError(
        f"{source}: probe output exceeds {_size(max_output)}; something in the target floods "
        "stdout (is its python a real Python interpreter?)"
    )


def exited(source: str, python: str, code: int, stderr: bytes) -> ProbeError:
    return ProbeError(
        f"{source}: probe ({python}) exited with status {code}: {stderr_tail(stderr)}"
    )


def candidates(python: str | None) -> tuple[str, ...]:
    return (python,) if python else PYTHONS


def no_python(kind: str, source: str, python: str | None) -> str:
    """Why there is no probe report: no interpreter found. An explicit --python that is not
    there is the user's mistake: an error, not an observation.

    Raises:
        TargetError: ``python`` was given and is not in the target.
    """
    if python:
        raise TargetError(f"{source}: there is no interpreter {python} there; check --python")
    return f"no Python interpreter found in the {kind} (tried {', '.join(PYTHONS)})"
