"""What every target shares: the Target interface, running the probe, reading its output.

A target's capabilities are methods every target has (``Target``): observe with the probe
options passed in (``ProbeOptions``, frozen: nothing is set on a target after it is made), run a
script bounded like the probe (``run_script``), say where its files can be read for ``--deep``
(``files``) and whether it is a running container whose results the caches may keep
(``running``). Callers never ask what kind of target they hold.

The probe runs inside the target, so its output is untrusted input: it is read with a size
cap and a deadline (``run_probe_subprocess``), then parsed as strict JSON and validated
against ``ProbeReport`` (``parse_probe_output``) before anything else looks at it.
"""

from __future__ import annotations

import json
import os
import select
import selectors
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol

from lockd.errors import ProbeError
from lockd.probe import probe_source

if TYPE_CHECKING:  # imported where used: a container's probe starts before lockd's models load
    from pydantic import ValidationError

    from lockd.evidence.cache.hashes import HashCache
    from lockd.model.environment import FamilyImports, ProbeReport
    from lockd.model.host import TargetInfo
    from lockd.model.manifest import Observation

__all__ = [
    "FAMILY_IMPORTS_KEY",
    "MAX_PROBE_OUTPUT",
    "PLAIN",
    "PROBE_TIMEOUT",
    "WITH_FAMILY_IMPORTS",
    "Fetch",
    "Files",
    "Gpus",
    "HostFiles",
    "ProbeOptions",
    "Running",
    "Target",
    "parse_probe_document",
    "parse_probe_output",
    "probe_arguments",
    "read_family_imports",
    "run_probe_subprocess",
    "stderr_tail",
    "validation_summary",
]

MAX_PROBE_OUTPUT = 16 * 1024 * 1024
"""Bytes of probe output lockd reads at most; more is an error, not a truncation."""

WITH_FAMILY_IMPORTS = "--with-family-imports"
"""The probe's option to run the import smoke test after its report, in its own process."""
FAMILY_IMPORTS_KEY = "family_imports"
"""The key of the import smoke test's document in a probe run with ``--with-family-imports``."""

PROBE_TIMEOUT = 60.0
"""Seconds the probe may run (importing torch alone can take several)."""

STDERR_TAIL = 2000
"""Characters of the probe's stderr quoted when it fails."""

_STDERR_KEEP = 16 * 1024  # bytes of stderr kept while reading: enough for STDERR_TAIL chars
_READ_CHUNK = 64 * 1024
_PIPE_BUF: int = getattr(select, "PIPE_BUF", 512)  # one write to a writable pipe never blocks
_ERROR_COUNT = 3  # validation errors quoted in a message
_QUOTE_LIMIT = 120  # characters of untrusted text quoted in a message


Gpus = Literal["none", "all", "auto"]
"""For an image: give the throw-away container no GPU, every GPU (Docker's device request: the
NVIDIA container runtime), or every GPU when the daemon has the NVIDIA runtime (else Docker
refuses the request). A local target and a running container have the GPUs they have."""

Fetch = Callable[[str], "tuple[Iterable[bytes], dict[str, Any]] | None"]
"""``fetch(path)``: the daemon's tar stream of ``path`` in a container and its stat (what
``docker cp`` reads); None when nothing is there."""


@dataclass(frozen=True)
class ProbeOptions:
    """How a target runs its probe this time: passed to ``Target.observe``, never set on a
    target (a target is shared by threads, and by the smoke test's retry without them)."""

    family_imports: bool = False
    """The probe also runs the PyTorch family's import smoke test after its report, in its own
    process (``--with-family-imports``, lockd.evidence.smoke)."""
    extra_time: float = 0.0
    """Seconds the probe may run beyond the target's own timeout (the smoke test's)."""
    reuse: bool = False
    """A running container may take its report from the probe cache when nothing the probe
    can see changed since it was kept (lockd.evidence.cache.probe); a running container and a
    process take the digests of their workload's files from those kept across runs
    (lockd.evidence.cache.hashes). Other targets ignore it."""
    hashes: HashCache | None = field(default=None, compare=False)
    """The hash cache a workload is read through (the watch agent holds one per host while it
    runs); None: as ``reuse`` says."""

    def arguments(self) -> tuple[str, ...]:
        """The probe's command-line options."""
        return (WITH_FAMILY_IMPORTS,) if self.family_imports else ()


PLAIN = ProbeOptions()
"""The probe alone, nothing reused."""


@dataclass(frozen=True)
class HostFiles:
    """A target's files as this host holds them (``--deep`` reads them here when it can)."""

    kind: Literal["local", "overlay", "layers"]
    """``local``: this machine's own filesystem; ``overlay``: a running container's overlay2
    merged directory; ``layers``: an image's overlay2 layer directories."""
    roots: tuple[str, ...]
    """``/``; the merged directory; the layer directories, top first."""
    description: str
    upper: str | None = None
    """A container's writable layer (its upper directory)."""
    layers: tuple[str, ...] = ()
    """A container's overlay2 layer directories, upper first."""
    mounts: tuple[tuple[str, str], ...] = ()
    """(destination, host path) of a container's bind mounts and volumes."""
    image: Callable[[], dict[str, Any] | None] | None = None
    """The daemon's inspect answer for the image (which layer is which, for the layer cache);
    asked only when wanted, None when the daemon cannot give it."""


@dataclass(frozen=True)
class Files:
    """Where a target's files can be read for ``--deep`` (lockd.evidence.integrity.deep.open_source
    reads them): on this host, through the daemon's archive API, or either (the host first)."""

    host: HostFiles | None = None
    archive: Callable[[], AbstractContextManager[Fetch]] | None = None
    """Opens the archive API for the target (an image's throw-away container, removed when
    the context ends): ``fetch(path)``."""
    archive_description: str = ""


class Running(Protocol):
    """A running container as the caches key what they keep for it (lockd.evidence.cache)."""

    @property
    def id(self) -> str: ...

    def inspect(self) -> dict[str, Any]:
        """The daemon's current inspect answer for the container.

        Raises:
            TargetError: the container is gone, or the daemon failed.
        """
        ...


class Target(Protocol):
    """Something lockd can observe: a local Python, a container, an image."""

    @property
    def info(self) -> TargetInfo: ...

    @property
    def python(self) -> str | None:
        """The interpreter given up front (--python, a local target's); None: the probe finds
        the target's own (python3, else python)."""
        ...

    def observe(self, options: ProbeOptions = PLAIN) -> Observation:
        """Run the probe (and gather host evidence where there is a host) and return it all.

        Raises:
            TargetError: the target cannot be reached or inspected.
            ProbeError: the probe failed, hung, flooded its output or printed garbage.
        """
        ...

    def run_script(
        self,
        argv: Sequence[str],
        *,
        what: str,
        source: str,
        timeout: float,
        max_output: int,
        gpus: Gpus = "none",
    ) -> bytes:
        """Run ``argv`` (``[python, ...]``) in the target to completion, bounded like the probe
        (a deadline, a cap on stdout, killed or removed when it overruns), and return its
        stdout. ``what`` names the script in errors ("the GPU suite"), ``source`` starts every
        message ("container app (GPU suite)"); ``gpus`` as ``Gpus`` says.

        Raises:
            TargetError: the target cannot be reached, or the daemon fails.
            ProbeError: the script cannot start, exits non-zero, outlives ``timeout`` seconds
                or prints more than ``max_output`` bytes.
        """
        ...

    def files(self) -> Files:
        """Where the target's files can be read (``--deep``).

        Raises:
            TargetError: the daemon failed.
        """
        ...

    def running(self) -> Running | None:
        """The running container this target is, whose results the caches may keep and reuse
        (lockd.evidence.cache); None for an image or a local Python."""
        ...


# --- reading the probe's output ---------------------------------------------------------------


def probe_arguments(options: ProbeOptions) -> list[str]:
    """The interpreter's arguments that run the probe with ``options``."""
    return ["-c", probe_source(), *options.arguments()]


class _DuplicateKeyError(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeyError(key)
        result[key] = value
    return result


def _quote(value: str) -> str:
    """An untrusted string, short enough to put in a message."""
    if len(value) > _QUOTE_LIMIT:
        return repr(value[:_QUOTE_LIMIT]) + "..."
    return repr(value)


def _short(value: str) -> str:
    """An untrusted name (a key of env), cut short for a message."""
    return value if len(value) <= _QUOTE_LIMIT else value[:_QUOTE_LIMIT] + "..."


def validation_summary(error: ValidationError) -> str:
    errors = error.errors(include_url=False, include_input=False)
    parts = []
    for detail in errors[:_ERROR_COUNT]:
        where = ".".join(_short(str(part)) for part in detail["loc"]) or "(document)"
        parts.append(f"{where}: {detail['msg']}")
    summary = "; ".join(parts)
    if len(errors) > _ERROR_COUNT:
        summary += f" (and {len(errors) - _ERROR_COUNT} more)"
    return summary


def parse_probe_output(stdout: bytes, source: str) -> ProbeReport:
    """Parse and validate what the probe printed in ``source`` (a name for messages).

    Raises:
        ProbeError: the output is too large, not UTF-8, not one JSON object, does not match
            ProbeReport, or lists a distribution twice.
    """
    return parse_probe_document(stdout, source)[0]


def parse_probe_document(
    stdout: bytes, source: str, *, family_imports: bool = False
) -> tuple[ProbeReport, FamilyImports | None]:
    """``parse_probe_output``; with ``family_imports`` (the probe ran with
    ``--with-family-imports``), also the import smoke test's document it carries: what cannot
    be read there becomes its ``error`` (lockd.evidence.smoke), like the separate smoke test's.

    Raises:
        ProbeError: as ``parse_probe_output``.
    """
    from pydantic import ValidationError

    from lockd.model.environment import ProbeReport

    if len(stdout) > MAX_PROBE_OUTPUT:
        raise ProbeError(
            f"{source}: probe output exceeds {MAX_PROBE_OUTPUT // (1024 * 1024)} MiB "
            f"({len(stdout)} bytes); something in the target floods stdout"
        )
    try:
        document = stdout.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProbeError(
            f"{source}: probe output is not UTF-8 (invalid byte at offset {e.start}); "
            "something in the target printed binary data to stdout"
        ) from e
    if not document.strip():
        raise ProbeError(
            f"{source}: probe printed nothing, expected one JSON document; "
            "run the probe by hand in the target (python3 - < lockd/probe/environment.py) "
            "to see why"
        )
    try:
        value = json.loads(document, object_pairs_hook=_reject_duplicate_keys)
    except _DuplicateKeyError as e:
        raise ProbeError(
            f"{source}: probe printed invalid JSON: the key {_quote(e.key)} appears twice"
        ) from e
    except (ValueError, RecursionError) as e:
        raise ProbeError(
            f"{source}: probe printed invalid JSON: {e}; the output starts "
            f"{_quote(document)} (does a sitecustomize or .pth file print to stdout?)"
        ) from e
    if not isinstance(value, dict):
        raise ProbeError(
            f"{source}: probe printed a JSON {type(value).__name__}, expected an object; "
            "is the target running lockd's probe?"
        )
    imports: object = value.pop(FAMILY_IMPORTS_KEY, None) if family_imports else None
    try:
        report = ProbeReport.model_validate(value, strict=True)
    except ValidationError as e:
        raise ProbeError(
            f"{source}: probe output failed validation: {validation_summary(e)}; "
            "the probe and this lockd may differ in version, or the target is tampered with"
        ) from e
    repeated = [
        name for name, count in Counter(d.name for d in report.distributions).items() if count > 1
    ]
    if repeated:
        raise ProbeError(
            f"{source}: probe output lists the distribution {_quote(sorted(repeated)[0])} "
            "more than once; the target is tampered with or its probe is not lockd's"
        )
    if not family_imports:
        return report, None
    return report, read_family_imports(imports, source, report.python.executable)


def read_family_imports(value: object, source: str, python: str) -> FamilyImports:
    """The smoke test's document as the probe's report carried it (JSON already parsed, its
    size bounded by the probe's); what is missing or invalid becomes its ``error``, which the
    ``coherence`` check reports (lockd.evidence.smoke)."""
    from pydantic import ValidationError

    from lockd.model.environment import FamilyImports

    if value is None:
        return FamilyImports(
            python=python, error=f"{source}: the probe printed no smoke test result"
        )
    try:
        return FamilyImports.model_validate(value, strict=True)
    except ValidationError as e:
        return FamilyImports(
            python=python,
            error=f"{source}: the probe printed a family_imports that is not a smoke test "
            f"result ({validation_summary(e)})"[:4000],
        )


# --- running a probe as a local process ---------------------------------------------------------


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """Kill the probe and everything it started (it leads its own session).

    Only called while the leader is not yet reaped, so its pid (the group id) cannot have
    been reused by another process.
    """
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()


def stderr_tail(stderr: bytes) -> str:
    tail = stderr.decode("utf-8", "replace").strip()[-STDERR_TAIL:]
    return tail or "(nothing on stderr)"


def _pump(
    process: subprocess.Popen[bytes],
    source: str,
    stdin: bytes | None,
    deadline: float,
    timeout: float,
    max_output: int,
) -> tuple[bytes, bytes]:
    """Feed stdin, read stdout (at most max_output + 1 bytes) and the tail of stderr until
    both close, or raise at the deadline or the cap."""
    stdout = bytearray()
    stderr = bytearray()
    pending = memoryview(stdin or b"")
    with selectors.DefaultSelector() as selector:
        assert process.stdout is not None
        assert process.stderr is not None
        selector.register(process.stdout, selectors.EVENT_READ)
        selector.register(process.stderr, selectors.EVENT_READ)
        if process.stdin is not None:
            if pending:
                selector.register(process.stdin, selectors.EVENT_WRITE)
            else:
                process.stdin.close()
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProbeError(
                    f"{source}: probe timed out after {timeout:g}s; the target may be "
                    "overloaded or stuck importing a library (torch?): retry, or inspect it"
                )
            for key, _ in selector.select(remaining):
                stream: IO[bytes] = key.fileobj  # type: ignore[assignment]
                if stream is process.stdin:
                    try:
                        written = os.write(key.fd, pending[:_PIPE_BUF])
                    except BrokenPipeError:  # the process stopped reading: its exit tells why
                        written = len(pending)
                    pending = pending[written:]
                    if not pending:
                        selector.unregister(stream)
                        stream.close()
                    continue
                if stream is process.stdout:
                    chunk = os.read(key.fd, min(_READ_CHUNK, max_output + 1 - len(stdout)))
                    stdout += chunk
                    if len(stdout) > max_output:
                        raise ProbeError(
                            f"{source}: probe output exceeds {max_output} bytes; "
                            "something in the target floods stdout"
                        )
                else:
                    chunk = os.read(key.fd, _READ_CHUNK)
                    stderr += chunk
                    del stderr[:-_STDERR_KEEP]
                if not chunk:
                    selector.unregister(stream)
                    stream.close()
    return bytes(stdout), bytes(stderr)


def run_probe_subprocess(
    argv: list[str],
    source: str,
    timeout: float = PROBE_TIMEOUT,
    max_output: int = MAX_PROBE_OUTPUT,
    stdin: bytes | None = None,
) -> bytes:
    """Run ``argv`` (a probe) to completion and return its stdout.

    The process gets ``stdin`` (or nothing), leads its own process group, and is killed with
    everything it started when it outlives ``timeout`` seconds or prints more than
    ``max_output`` bytes. POSIX only (selectors on pipes).

    Raises:
        ProbeError: no such interpreter, it could not start, it timed out, flooded stdout
            or exited non-zero (the message quotes the end of its stderr).
    """
    program = argv[0] if argv else "(empty command)"
    try:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except FileNotFoundError as e:
        raise ProbeError(
            f"{source}: no such interpreter: {program}; check the path, or install Python there"
        ) from e
    except (OSError, ValueError, IndexError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ProbeError(f"{source}: cannot run {program}: {reason}") from e
    deadline = time.monotonic() + timeout
    reaped = False
    try:
        stdout, stderr = _pump(process, source, stdin, deadline, timeout, max_output)
        try:
            process.wait(max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired as e:
            raise ProbeError(
                f"{source}: probe timed out after {timeout:g}s (it closed its output but "
                "did not exit); inspect the target"
            ) from e
        reaped = True
    finally:
        if not reaped:
            _kill_group(process)
            process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()
    if process.returncode != 0:
        status = (
            f"was killed by signal {-process.returncode}"
            if process.returncode < 0
            else f"exited with status {process.returncode}"
        )
        raise ProbeError(f"{source}: probe {status}: {stderr_tail(stderr)}")
    return stdout
