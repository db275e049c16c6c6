"""The PyTorch family's import smoke test, run inside a target (``--deep``).

The probe (lockd/probe/environment.py) runs a second time, with ``--family-imports``: it imports
each installed family member and runs one of its compiled ops on a tiny tensor, and prints a
``FamilyImports`` document. A failure there is evidence, not an error of lockd's: a crash, a
timeout or garbage becomes ``FamilyImports.error``, which the ``coherence`` check reports. Only
a target lockd cannot reach raises.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from lockd.coherence import FAMILY, TORCH
from lockd.errors import ProbeError
from lockd.model import FamilyImports, Observation

if TYPE_CHECKING:
    from lockd.targets.base import Target

SMOKE_TIMEOUT = 180.0
"""Seconds the smoke test may run: importing torch and its family cold can take a minute."""

MAX_SMOKE_OUTPUT = 1024 * 1024
FLAG = "--family-imports"
_FAMILY = frozenset((TORCH, *FAMILY, "triton", "flash-attn"))


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
    if not wanted(observation):
        return observation
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
    kind = target.info.kind
    source = f"{kind} {target.info.ref} (import smoke test)"
    try:
        if kind == "local":
            from lockd.targets.base import run_probe_subprocess

            stdout = run_probe_subprocess(
                argv, source, timeout=timeout, max_output=MAX_SMOKE_OUTPUT
            )
        elif kind == "container":
            stdout = _in_container(target, argv, source, timeout)
        else:
            stdout = _in_image(target, argv, source, timeout)
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


def _in_container(target: Target, argv: list[str], source: str, timeout: float) -> bytes:
    """``docker exec`` the smoke test in a running container, bounded like the probe."""
    from lockd.targets import docker as d

    assert isinstance(target, d.ContainerTarget)
    api = target.client.api
    deadline = time.monotonic() + timeout
    with d._docker_errors(f"{source}: cannot run the import smoke test"):
        target.container.reload()
        state = target.container.attrs.get("State") or {}
        exec_id = api.exec_create(target.container.id, argv, stdin=False, tty=False)["Id"]
        sock = api.exec_start(exec_id, socket=True)
    try:
        with d._docker_errors(f"{source}: lost the import smoke test's output"):
            stdout, stderr, end = d._read_frames(sock, deadline, MAX_SMOKE_OUTPUT)
    finally:
        d._close_socket(sock)
    if end != "eof":
        target._kill(exec_id, state)
        raise d._stopped(source, end, timeout, MAX_SMOKE_OUTPUT)
    code = target._exit_code(exec_id)
    if code != 0:
        if code is None:
            target._kill(exec_id, state)
        raise d._exited(source, argv[0], -1 if code is None else code, stderr)
    return bytes(stdout)


def _in_image(target: Target, argv: list[str], source: str, timeout: float) -> bytes:
    """The smoke test as the only process of a throw-away container of the image."""
    from lockd.targets import docker as d

    assert isinstance(target, d.ImageTarget)
    api = target.client.api
    python, arguments = argv[0], argv[1:]
    with d._docker_errors(f"{source}: cannot create a container to run the import smoke test"):
        created = api.create_container(
            str(target.image.id),
            command=arguments,
            entrypoint=[python],
            network_disabled=True,
            labels={d.THROWAWAY_LABEL: "1"},
            host_config=api.create_host_config(
                network_mode="none", log_config={"Type": "none", "Config": {}}
            ),
        )
    container_id = str(created["Id"])
    deadline = time.monotonic() + timeout
    try:
        stdout = target._run_in(container_id, python, deadline)
    except BaseException:
        target._remove(container_id, quiet=True)
        raise
    target._remove(container_id, quiet=False)
    if stdout is None:
        raise ProbeError(f"{source}: there is no interpreter {python} in the image")
    return stdout
