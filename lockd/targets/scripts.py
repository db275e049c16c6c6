"""Running a script other than the probe in a target (the GPU suite, the import smoke test),
bounded like the probe: a deadline, a cap on stdout, killed or removed when it overruns.

A local target runs it as a subprocess, a container through ``docker exec``, an image as the
only process of a throw-away container (no network, removed in every case).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from lockd.errors import ProbeError

if TYPE_CHECKING:
    from lockd.targets.base import Target
    from lockd.targets.docker import ImageTarget

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
    args = list(argv)
    kind = target.info.kind
    if kind == "local":
        from lockd.targets.base import run_probe_subprocess

        return run_probe_subprocess(args, source, timeout=timeout, max_output=max_output)
    if kind == "container":
        return _in_container(target, args, what, source, timeout, max_output)
    return _in_image(target, args, what, source, timeout, max_output, gpus)


def _in_container(
    target: Target, argv: list[str], what: str, source: str, timeout: float, max_output: int
) -> bytes:
    from lockd.targets.docker import ContainerTarget

    assert isinstance(target, ContainerTarget)
    return target.run_script(argv, what=what, source=source, timeout=timeout, max_output=max_output)


def _wants_gpus(target: ImageTarget, gpus: Gpus, source: str) -> bool:
    from lockd.targets import docker as d

    if gpus != "auto":
        return gpus == "all"
    with d._docker_errors(f"{source}: cannot ask the daemon for its runtimes"):
        runtimes = target.client.api.info().get("Runtimes") or {}
    return "nvidia" in runtimes


def _in_image(
    target: Target,
    argv: list[str],
    what: str,
    source: str,
    timeout: float,
    max_output: int,
    gpus: Gpus,
) -> bytes:
    from lockd.targets import docker as d

    assert isinstance(target, d.ImageTarget)
    api = target.client.api
    python, arguments = argv[0], argv[1:]
    extra: dict[str, Any] = {}
    if _wants_gpus(target, gpus, source):
        from docker.types import DeviceRequest

        extra = {
            "device_requests": [DeviceRequest(count=-1, capabilities=[["gpu"]])],
            "shm_size": "1g",  # NCCL needs more shared memory than Docker's 64 MiB
        }
    # ImageTarget's helpers read with the target's own bounds and names (the probe's): a copy
    # with the script's, so a probe running beside it (observe_with_suite) keeps its own.
    bounded = copy.copy(target)
    bounded.timeout, bounded.max_output, bounded._source = timeout, max_output, source
    container_id = bounded._create_throwaway(
        f"to run {what}",
        command=arguments,
        entrypoint=[python],
        host_config=api.create_host_config(
            network_mode="none", log_config={"Type": "none", "Config": {}}, **extra
        ),
    )
    deadline = time.monotonic() + timeout
    try:
        stdout = bounded._run_in(container_id, python, deadline)
    except BaseException:
        target._remove(container_id, quiet=True)
        raise
    target._remove(container_id, quiet=False)
    if stdout is None:
        raise ProbeError(f"{source}: there is no interpreter {python} in the image")
    return stdout
