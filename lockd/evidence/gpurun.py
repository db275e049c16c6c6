"""The GPU validation suite from the host: run it in a target and read its output (comparing
results is lockd.judgement.gpucompare's, pure).

The suite itself (lockd/probe/gpu.py) runs inside the target, streamed like the probe. Its
output is untrusted: it is read with a deadline and a size cap, parsed as strict JSON, checked
against ``GpuSuiteResult`` and its signature is recomputed here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from lockd.errors import InputError, ProbeError
from lockd.evidence.targets.base import PLAIN, ProbeOptions
from lockd.probe import suite_source

if TYPE_CHECKING:
    from lockd.evidence.targets.base import Target
    from lockd.model.gpusuite import GpuSuiteResult
    from lockd.model.manifest import Observation

__all__ = [
    "DEVICE_ENV",
    "MAX_SUITE_OUTPUT",
    "OVERRIDES_ENV",
    "SUITE_TIMEOUT",
    "observe_with_suite",
    "parse_suite_output",
    "run_suite",
    "suite_argv",
    "suite_signature",
]

MAX_SUITE_OUTPUT = 1024 * 1024
"""Bytes of suite output lockd reads at most (a real result is about 15 KB)."""

SUITE_TIMEOUT = 600.0
"""Seconds the suite may run: importing torch, torch.compile on a cold cache, NCCL start-up."""

OVERRIDES_ENV = "LOCKD_GPU_SUITE_OVERRIDES"
"""JSON object of settings to change in the suite, for testing that verify notices them."""

DEVICE_ENV = "LOCKD_GPU_DEVICE"
"""auto (default: the GPU when torch sees one, else the CPU), cuda, or cpu."""

TIMEOUT_ENV = "LOCKD_GPU_TIMEOUT"


# --- the suite's source and arguments ---------------------------------------------------------


def suite_options() -> tuple[str, str | None, float]:
    """(device, overrides, timeout) from LOCKD_GPU_DEVICE, LOCKD_GPU_SUITE_OVERRIDES and
    LOCKD_GPU_TIMEOUT. Raises InputError for a bad value."""
    device = os.environ.get(DEVICE_ENV) or "auto"
    if device not in ("auto", "cuda", "cpu"):
        raise InputError(f"{DEVICE_ENV}={device!r}: give auto, cuda or cpu")
    overrides = os.environ.get(OVERRIDES_ENV) or None
    if overrides is not None:
        try:
            parsed = json.loads(overrides)
        except ValueError as e:
            raise InputError(f"{OVERRIDES_ENV}: not JSON: {e}") from e
        if not isinstance(parsed, dict):
            raise InputError(
                f"{OVERRIDES_ENV}: give a JSON object, e.g. '{{\"cudnn_benchmark\": true}}'"
            )
    raw = os.environ.get(TIMEOUT_ENV)
    timeout = SUITE_TIMEOUT
    if raw:
        try:
            timeout = float(raw)
        except ValueError:
            timeout = -1.0
        if not 0 < timeout <= 3600:
            raise InputError(f"{TIMEOUT_ENV}={raw!r}: give seconds between 0 and 3600")
    return device, overrides, timeout


def suite_argv(
    python: str,
    *,
    device: str = "auto",
    overrides: str | None = None,
    only: Sequence[str] = (),
    skip: Sequence[str] = (),
) -> list[str]:
    argv = [python, "-c", suite_source(), "--device", device]
    if overrides:
        argv += ["--overrides", overrides]
    if only:
        argv += ["--only", ",".join(only)]
    if skip:
        argv += ["--skip", ",".join(skip)]
    return argv


# --- reading the output ------------------------------------------------------------------------


def canonical(value: object) -> bytes:
    """The suite's canonical JSON (ASCII, sorted keys, no spaces)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def suite_signature(result: GpuSuiteResult) -> str:
    """sha256 of the canonical JSON of the key and each test's digest (the suite's rule)."""
    digests = {t.name: t.sha256 if t.status == "ok" else t.status for t in result.tests}
    return hashlib.sha256(
        canonical({"key": result.key.model_dump(mode="json"), "tests": digests})
    ).hexdigest()


class _DuplicateKeyError(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeyError(key)
        result[key] = value
    return result


def _first_error(error: ValidationError) -> str:
    first = error.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(part)[:80] for part in first["loc"]) or "(document)"
    more = error.error_count() - 1
    return f"{where}: {first['msg']}" + (f" (and {more} more)" if more else "")


def parse_suite_output(stdout: bytes, source: str) -> GpuSuiteResult:
    """Parse and check what the suite printed in ``source`` (a name for messages).

    Raises:
        ProbeError: too large, not one JSON object, not a GpuSuiteResult, a test named twice,
            a test without its digest, or a signature that does not match the content.
    """
    from lockd.model.gpusuite import GpuSuiteResult

    if len(stdout) > MAX_SUITE_OUTPUT:
        raise ProbeError(
            f"{source}: GPU suite output exceeds {MAX_SUITE_OUTPUT // 1024} KiB "
            f"({len(stdout)} bytes); something in the target floods stdout"
        )
    try:
        value = json.loads(stdout.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except _DuplicateKeyError as e:
        raise ProbeError(f"{source}: GPU suite printed a key twice: {str(e)[:80]!r}") from e
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        start = stdout[:120].decode("utf-8", "replace")
        raise ProbeError(
            f"{source}: GPU suite printed invalid JSON ({e}); the output starts {start!r}"
        ) from e
    if not isinstance(value, dict):
        raise ProbeError(
            f"{source}: GPU suite printed a JSON {type(value).__name__}, not an object"
        )
    try:
        result = GpuSuiteResult.model_validate(value, strict=True)
    except ValidationError as e:
        raise ProbeError(
            f"{source}: GPU suite output failed validation: {_first_error(e)}; the suite and "
            "this lockd may differ in version, or the target is tampered with"
        ) from e
    names = [t.name for t in result.tests]
    if len(set(names)) != len(names):
        raise ProbeError(f"{source}: GPU suite output names a test twice")
    for test in result.tests:
        if test.status == "ok" and (test.sha256 is None or test.stats is None):
            raise ProbeError(f"{source}: GPU suite test {test.name} is ok but has no digest")
    if result.key.device != result.device:
        raise ProbeError(f"{source}: GPU suite output's key is for another device")
    if suite_signature(result) != result.signature:
        raise ProbeError(
            f"{source}: GPU suite signature does not match its content; the target is "
            "tampered with, or its suite is not this lockd's"
        )
    return result


# --- running it in a target --------------------------------------------------------------------


def run_suite(
    target: Target,
    python: str,
    *,
    device: str = "auto",
    overrides: str | None = None,
    timeout: float = SUITE_TIMEOUT,
) -> GpuSuiteResult:
    """Run the suite in ``target`` with its interpreter ``python`` (the one the probe used) and
    return the checked result, stamped with the time it was recorded.

    Raises:
        TargetError: the target cannot be reached.
        ProbeError: the suite failed (no torch, --device cuda without a GPU), hung, flooded
            its output or printed something that is not a valid result.
    """
    argv = suite_argv(python, device=device, overrides=overrides)
    kind = target.info.kind
    where = f"local Python {python}" if kind == "local" else f"{kind} {target.info.ref}"
    source = f"{where} (GPU suite)"
    stdout = target.run_script(
        argv,
        what="the GPU suite",
        source=source,
        timeout=timeout,
        max_output=MAX_SUITE_OUTPUT,
        gpus="auto" if device == "auto" else "all" if device == "cuda" else "none",
    )
    result = parse_suite_output(stdout, source)
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return result.model_copy(update={"recorded_at": now})


# --- observing a target with the suite ---------------------------------------------------------


def observe_with_suite(target: Target, options: ProbeOptions = PLAIN) -> Observation:
    """The target's Observation (its probe run with ``options``) with a run of the GPU suite
    in it (``gpu_suite``).

    Where the interpreter is known up front (a local target, --python) the suite runs beside
    the probe, so the two imports of torch overlap; otherwise after it, with the interpreter
    the probe found. Device, overrides and timeout come from LOCKD_GPU_DEVICE,
    LOCKD_GPU_SUITE_OVERRIDES and LOCKD_GPU_TIMEOUT.

    Raises:
        InputError: a bad value in one of those variables.
        TargetError, ProbeError: as Target.observe and run_suite.
    """
    from concurrent.futures import ThreadPoolExecutor

    device, overrides, timeout = suite_options()
    python = target.python
    if python:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lockd-gpu-suite") as pool:
            running = pool.submit(
                run_suite, target, python, device=device, overrides=overrides, timeout=timeout
            )
            observation = target.observe(options)
            result = running.result()
    else:
        observation = target.observe(options)
        if observation.probe is None:
            return observation  # no Python in the target: nothing can run the suite
        result = run_suite(
            target,
            observation.probe.python.executable,
            device=device,
            overrides=overrides,
            timeout=timeout,
        )
    return observation.model_copy(update={"gpu_suite": result})
