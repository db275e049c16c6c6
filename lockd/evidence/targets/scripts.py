"""Running a script other than the probe in a target (the GPU suite, the import smoke test),
bounded like the probe: a deadline, a cap on stdout, killed or removed when it overruns.

A local target runs it as a subprocess, a container through ``docker exec``, an image as the
only process of a throw-away container (no network, removed in every case).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from lockd.evidence.targets.base import Target

Gpus = Literal["none", "all", "auto"]
"""For an image: give the throw-away container no GPU, every GPU (Docker's device request: the
NVIDIA container runtime), or every GPU when the daemon has the NVIDIA runtime (else Docker
refuses the request)."""

__all__ = ["Gpus", "run_script"]


def run_script(
    target: Target,
    argv: Sequence[str],
    *,
    what: str,
    source: str,
    timeout: float,
    max_output: int,
    gpus: Gpus = "none",
) -> bytes:
    """Run ``argv`` (``[python, ...]``) in ``target`` to completion and return its stdout.

    ``what`` names the script in errors ("the GPU suite"), ``source`` starts every message
    ("container app (GPU suite)").

    Raises:
        TargetError: the target cannot be reached, or the daemon fails.
        ProbeError: the script cannot start, exits non-zero, outlives ``timeout`` seconds or
            prints more than ``max_output`` bytes.
    """
    if target.info.kind == "local":
        from lockd.evidence.targets.base import run_probe_subprocess

        return run_probe_subprocess(list(argv), source, timeout=timeout, max_output=max_output)
    from lockd.evidence.targets.docker import ContainerTarget, ImageTarget

    if isinstance(target, ImageTarget):
        return target.run_script(
            argv, what=what, source=source, timeout=timeout, max_output=max_output, gpus=gpus
        )
    assert isinstance(target, ContainerTarget), target
    return target.run_script(argv, what=what, source=source, timeout=timeout, max_output=max_output)
