"""The PyTorch family's import smoke test, run inside a target (``--deep``).

The probe (lockd/probe/environment.py) imports each installed family member and runs one of its
compiled ops on a tiny tensor, and prints a ``FamilyImports`` document. ``observe`` asks the
probe itself for it (``--with-family-imports``: after its report, reusing its import of torch);
where that probe fails (a member that crashes the interpreter takes the probe with it) or the
target cannot run it, the probe runs alone and the smoke test a second time, by itself, with
``--family-imports``. A failure there is evidence, not an error of lockd's: a crash, a timeout
or garbage becomes ``FamilyImports.error``, which the ``coherence`` check reports. Only a
target lockd cannot reach raises.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from lockd.errors import ProbeError
from lockd.evidence.targets.base import PLAIN, ProbeOptions, read_family_imports
from lockd.judgement.coherence import FAMILY, TORCH
from lockd.model.environment import FamilyImports
from lockd.model.manifest import Observation

if TYPE_CHECKING:
    from lockd.evidence.targets.base import Target

__all__ = [
    "FLAG",
    "SMOKE_TIMEOUT",
    "observe",
    "parse_family_imports",
    "read_family_imports",
    "run_family_imports",
    "wanted",
    "with_family_imports",
]

SMOKE_TIMEOUT = 180.0
"""Seconds the smoke test may run: importing torch and its family cold can take a minute."""

MAX_SMOKE_OUTPUT = 1024 * 1024
FLAG = "--family-imports"
_FAMILY = frozenset((TORCH, *FAMILY, "triton", "flash-attn"))


def observe(
    target: Target, options: ProbeOptions = PLAIN, *, timeout: float = SMOKE_TIMEOUT
) -> Observation:
    """``target.observe(options)``, with ``family_imports`` from the probe's own process where
    the target has a PyTorch family (else None: then ``with_family_imports`` runs the smoke
    test by itself). The probe then has ``timeout`` seconds more.

    Raises:
        what ``target.observe()`` raises.
    """
    combined = dataclasses.replace(
        options, family_imports=True, extra_time=options.extra_time + timeout
    )
    try:
        observation = target.observe(combined)
    except ProbeError:  # the smoke test may have killed it: the probe alone says
        return target.observe(options)
    if wanted(observation):
        return observation
    return observation.model_copy(update={"family_imports": None})


def wanted(observation: Observation) -> bool:
    """Whether the target has a PyTorch family to import (torch or one of its members)."""
    probe = observation.probe
    return probe is not None and any(d.name in _FAMILY for d in probe.distributions)


def with_family_imports(
    target: Target, observation: Observation, *, timeout: float = SMOKE_TIMEOUT
) -> Observation:
    """`observation` with ``family_imports``, when the target has a PyTorch family to import
    (else unchanged: the smoke test costs an import of torch).

    Raises:
        TargetError: the target cannot be reached (a failing smoke test does not raise).
    """
    if not wanted(observation) or observation.family_imports is not None:
        return observation  # nothing to import, or the probe did it (``observe``)
    assert observation.probe is not None
    python = observation.probe.python.executable
    return observation.model_copy(
        update={"family_imports": run_family_imports(target, python, timeout=timeout)}
    )


def run_family_imports(
    target: Target, python: str, *, timeout: float = SMOKE_TIMEOUT
) -> FamilyImports:
    """Run the import smoke test in `target` with its interpreter `python`.

    Raises:
        TargetError: the target cannot be reached.
    """
    from lockd.probe import probe_source

    argv = [python, "-c", probe_source(), FLAG]
    source = f"{target.info.kind} {target.info.ref} (import smoke test)"
    try:
        stdout = target.run_script(
            argv,
            what="the import smoke test",
            source=source,
            timeout=timeout,
            max_output=MAX_SMOKE_OUTPUT,
        )
    except ProbeError as e:  # it crashed, hung or flooded: that is the finding
        return FamilyImports(python=python, error=str(e)[:4000])
    return parse_family_imports(stdout, source, python)


def parse_family_imports(stdout: bytes, source: str, python: str) -> FamilyImports:
    """The smoke test's document; what cannot be read becomes its ``error``."""
    try:
        value: Any = json.loads(stdout.decode("utf-8"))
        return FamilyImports.model_validate(value, strict=True)
    except (UnicodeDecodeError, ValueError, RecursionError, ValidationError) as e:
        start = stdout[:120].decode("utf-8", "replace")
        return FamilyImports(
            python=python,
            error=f"{source}: printed something that is not a smoke test result ({e}); "
            f"the output starts {start!r}"[:4000],
        )
