"""Locks: pinned, hashed ``requirements.txt`` files, read (pure). Compiling one is
lockd.lock's.

``parse_lock`` turns the bytes of a requirements file into pins (PEP 503 name, version, allowed
archive sha256s, marker) or raises an InputError naming the file and line. ``lock_info`` keeps
the pins whose environment markers hold for a probed target: that is what a manifest embeds
(``Manifest.lock``) and what the ``lock`` check compares installed distributions with.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lockd.errors import InputError, RefusedError
from lockd.fileio import read_capped
from lockd.model.base import normalise_name
from lockd.model.environment import ProbeReport
from lockd.model.manifest import LockInfo, LockPin

if TYPE_CHECKING:
    from packaging.requirements import Requirement


MAX_LOCK_BYTES = 16 * 1024 * 1024

# --- reading a lock (pure) -------------------------------------------------------------------

_COMMENT = re.compile(r"(^|\s+)#.*$")
_HASH = re.compile(r"^sha256:([0-9a-fA-F]{64})$")
_HEADER_FIELD = re.compile(r"^#\s{2,}([a-z-]+):\s+(.*?)\s*$")
# Global options a compiled lock may carry; they say where archives come from, not what is pinned.
_ALLOWED_OPTIONS = frozenset(
    {
        "-i",
        "--index-url",
        "--extra-index-url",
        "-f",
        "--find-links",
        "--trusted-host",
        "--no-index",
        "--prefer-binary",
        "--only-binary",
        "--no-binary",
        "--require-hashes",
        "--pre",
    }
)
_NOT_SELF_CONTAINED = frozenset({"-r", "--requirement", "-c", "--constraint", "-e", "--editable"})


@dataclass(frozen=True)
class Pin:
    """One ``name==version`` line of a lock, with its allowed archive hashes (sha256, hex)."""

    name: str  # PEP 503 normalised
    version: str
    hashes: tuple[str, ...]
    marker: str | None
    line: int


@dataclass(frozen=True)
class Lock:
    source: str  # the path as given, for messages
    sha256: str  # of the whole file
    pins: tuple[Pin, ...]
    header: Mapping[str, str] = field(default_factory=dict)  # fields of lockd's header

    @property
    def unhashed(self) -> list[Pin]:
        return [p for p in self.pins if not p.hashes]


def logical_lines(text: str) -> Iterable[tuple[int, str]]:
    """(first line number, line) with backslash continuations joined, comments removed."""
    start = 0
    parts: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not parts:
            start = number
        if raw.lstrip().startswith("#"):  # a comment line also ends a continuation
            if parts:
                yield start, " ".join(parts)
                parts = []
            continue
        line = _COMMENT.sub("", raw)
        if line.endswith("\\"):
            parts.append(line[:-1].strip())
            continue
        parts.append(line.strip())
        yield start, " ".join(p for p in parts if p)
        parts = []
    if parts:
        yield start, " ".join(p for p in parts if p)


def _requirement(text: str, where: str) -> Requirement:
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        return Requirement(text)
    except InvalidRequirement as e:
        raise InputError(f"{where}: not a requirement: {text!r} ({e})") from e


def _hashes(options: list[str], where: str) -> tuple[str, ...]:
    """The ``--hash`` values among a requirement's options (``--hash=X`` or ``--hash X``)."""
    found: list[str] = []
    i = 0
    while i < len(options):
        option = options[i]
        name, equals, value = option.partition("=")
        if name != "--hash":
            raise InputError(
                f"{where}: unexpected option {option!r} after a requirement "
                "(a lock line is name==version followed by --hash=sha256:... options)"
            )
        if not equals:
            i += 1
            if i == len(options):
                raise InputError(f"{where}: --hash without a value")
            value = options[i]
        match = _HASH.match(value)
        if match is None:
            raise InputError(
                f"{where}: --hash={value}: lockd reads sha256:<64 hex digits> hashes only "
                "(compile the lock with lockd lock, which uses sha256)"
            )
        found.append(match.group(1).lower())
        i += 1
    return tuple(sorted(set(found)))


def _pin(line: str, number: int, source: str) -> Pin:
    where = f"{source} line {number}"
    tokens = line.split()
    first_option = next((i for i, t in enumerate(tokens) if t.startswith("-")), len(tokens))
    requirement = _requirement(" ".join(tokens[:first_option]), where)
    hashes = _hashes(tokens[first_option:], where)
    if requirement.url:
        raise InputError(
            f"{where}: {requirement.name} comes from a URL ({requirement.url}); "
            "a lock pins name==version"
        )
    specifiers = list(requirement.specifier)
    if (
        len(specifiers) != 1
        or specifiers[0].operator not in ("==", "===")
        or specifiers[0].version.endswith(".*")
    ):
        raise InputError(
            f"{where}: {requirement.name} is not pinned to one version "
            f"({str(requirement.specifier) or 'no version'}); a lock pins name==version "
            "(compile it with lockd lock)"
        )
    return Pin(
        name=normalise_name(requirement.name),
        version=specifiers[0].version,
        hashes=hashes,
        marker=str(requirement.marker) if requirement.marker is not None else None,
        line=number,
    )


def _header(text: str) -> dict[str, str]:
    """The ``#   key: value`` fields of the comment block that opens a lockd lock."""
    fields: dict[str, str] = {}
    for raw in text.splitlines():
        if not raw.startswith("#"):
            break
        match = _HEADER_FIELD.match(raw)
        if match is not None:
            fields.setdefault(match.group(1), match.group(2))
    return fields


def parse_lock(data: bytes, source: str) -> Lock:
    """Parse a pinned requirements file. Raises InputError naming `source` and the line.

    Every requirement must be ``name==version`` (extras and markers allowed, hashes optional
    here: see ``require_hashes``); ``-r``, ``-c`` and ``-e`` lines, URLs, ranges, malformed lines
    and a name pinned twice for the same marker are errors.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{source}: not UTF-8 text (byte {e.start}); is this a lock?") from e
    pins: list[Pin] = []
    seen: dict[tuple[str, str | None], int] = {}
    for number, line in logical_lines(text):
        if not line:
            continue
        if line.startswith("-"):
            option = line.split()[0].split("=", 1)[0]
            if option in _NOT_SELF_CONTAINED:
                raise InputError(
                    f"{source} line {number}: {option} is not allowed in a lock: a lock lists "
                    "every pin itself (compile it with lockd lock)"
                )
            if option not in _ALLOWED_OPTIONS:
                raise InputError(f"{source} line {number}: unknown option {option!r}")
            continue
        pin = _pin(line, number, source)
        first = seen.get((pin.name, pin.marker)) or seen.get((pin.name, None))
        if first is None and pin.marker is None:
            first = next((n for (name, _), n in seen.items() if name == pin.name), None)
        if first is not None:
            raise InputError(
                f"{source} line {number}: duplicate pin for {pin.name} (first on line {first}); "
                "a lock pins each distribution once"
            )
        seen[(pin.name, pin.marker)] = number
        pins.append(pin)
    if not pins:
        raise InputError(f"{source}: no pins (name==version lines); is this a compiled lock?")
    return Lock(
        source=source,
        sha256=hashlib.sha256(data).hexdigest(),
        pins=tuple(pins),
        header=_header(text),
    )


def read_lock(path: Path) -> Lock:
    """Read and parse the lock at `path`. Raises InputError naming it."""
    return parse_lock(read_capped(path, limit=MAX_LOCK_BYTES, what="lock"), str(path))


def require_hashes(lock: Lock) -> None:
    """Raises InputError unless every pin carries at least one ``--hash``."""
    missing = lock.unhashed
    if not missing:
        return
    names = ", ".join(p.name for p in missing[:10]) + (" ..." if len(missing) > 10 else "")
    raise InputError(
        f"{lock.source}: {len(missing)} of {len(lock.pins)} pin(s) have no --hash ({names}); "
        "a lock bound into a manifest must pin archive hashes: compile it with "
        "lockd lock (pip-compile --generate-hashes), or pass --allow-unhashed"
    )


# --- a lock against a probed target (pure) ---------------------------------------------------

_IMPLEMENTATIONS = {
    "cpython": "CPython",
    "pypy": "PyPy",
    "graalpy": "GraalVM",
    "ironpython": "IronPython",
}
_SYSTEMS = {"linux": "Linux", "darwin": "Darwin", "win32": "Windows", "cygwin": "CYGWIN_NT"}


def marker_environment(probe: ProbeReport) -> dict[str, str]:
    """PEP 508 marker variables for the probed target (what the probe does not report is "")."""
    python = probe.python
    major_minor = ".".join(python.version.split(".")[:2])
    return {
        "implementation_name": python.implementation,
        "implementation_version": python.version,
        "os_name": "nt" if python.platform == "win32" else "posix",
        "platform_machine": probe.os.machine,
        "platform_python_implementation": _IMPLEMENTATIONS.get(
            python.implementation, python.implementation
        ),
        "platform_release": "",
        "platform_system": _SYSTEMS.get(python.platform, python.platform),
        "platform_version": "",
        "python_full_version": python.version,
        "python_version": major_minor,
        "sys_platform": python.platform,
        "extra": "",
    }


def applicable_pins(lock: Lock, probe: ProbeReport | None) -> list[Pin]:
    """The pins whose markers hold for the target (all of them when it was not probed)."""
    if probe is None:
        return [p for p in lock.pins if p.marker is None]
    from packaging.markers import Marker

    environment = marker_environment(probe)
    chosen: dict[str, Pin] = {}
    for pin in lock.pins:
        if pin.marker is not None and not Marker(pin.marker).evaluate(environment):
            continue
        other = chosen.get(pin.name)
        if other is not None:
            raise InputError(
                f"{lock.source}: lines {other.line} and {pin.line} both pin {pin.name} for this "
                f"target (Python {probe.python.version} on {probe.python.platform})"
            )
        chosen[pin.name] = pin
    return sorted(chosen.values(), key=lambda p: p.name)


_ARCHES = {"amd64": "x86_64", "x86_64": "x86_64", "arm64": "aarch64", "aarch64": "aarch64"}


def _platform_parts(tag: str) -> tuple[str | None, str | None, tuple[int, int] | None]:
    """(sys.platform, machine, glibc floor) a wheel platform tag stands for, where known."""
    manylinux = re.match(r"^manylinux_(\d+)_(\d+)_(\w+)$", tag)
    if manylinux is not None:
        floor = (int(manylinux.group(1)), int(manylinux.group(2)))
        return "linux", _ARCHES.get(manylinux.group(3), manylinux.group(3)), floor
    legacy = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
    for prefix, floor in legacy.items():
        if tag.startswith(prefix + "_"):
            arch = tag[len(prefix) + 1 :]
            return "linux", _ARCHES.get(arch, arch), floor
    for prefix, system in (
        ("musllinux_", "linux"),
        ("linux_", "linux"),
        ("macosx_", "darwin"),
        ("win_", "win32"),
    ):
        if tag.startswith(prefix):
            arch = tag.rsplit("_", 1)[1] if prefix != "linux_" else tag[len(prefix) :]
            return system, _ARCHES.get(arch, arch), None
    return None, None, None


def _version_tuple(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        return None


def target_mismatches(lock: Lock, probe: ProbeReport) -> list[str]:
    """Why a lock compiled by lockd for one Python/platform does not fit the probed target."""
    problems: list[str] = []
    locked_python = lock.header.get("python", "").split(" ")[0]
    running = ".".join(probe.python.version.split(".")[:2])
    if locked_python and locked_python != running:
        problems.append(f"it was compiled for Python {locked_python}, the target runs {running}")
    tag = lock.header.get("platform")
    if tag:
        system, machine, floor = _platform_parts(tag)
        target_machine = _ARCHES.get(probe.os.machine.lower(), probe.os.machine.lower())
        if system is not None and system != probe.python.platform:
            problems.append(f"it was compiled for {tag}, the target is {probe.python.platform}")
        elif machine is not None and machine != target_machine:
            problems.append(f"it was compiled for {tag}, the target is {probe.os.machine}")
        glibc = _version_tuple(probe.os.glibc)
        if floor is not None and glibc is not None and glibc[:2] < floor:
            problems.append(
                f"it was compiled for {tag} (glibc >= {floor[0]}.{floor[1]}), "
                f"the target has glibc {probe.os.glibc}"
            )
    return problems


def lock_info(lock: Lock, probe: ProbeReport | None) -> LockInfo:
    """What a manifest embeds: the lock's identity and the pins that apply to the target.

    Raises RefusedError when the lock was compiled for another Python or platform than the
    target's, InputError when two pins of one name both apply.
    """
    if probe is not None:
        problems = target_mismatches(lock, probe)
        if problems:
            raise RefusedError(
                f"{lock.source} does not fit the target: {'; '.join(problems)}; compile a lock "
                "for the target with lockd lock --python-version X.Y --platform TAG"
            )
    pins = applicable_pins(lock, probe)
    return LockInfo(
        path=Path(lock.source).name,
        sha256=lock.sha256,
        python=lock.header.get("python"),
        platform=lock.header.get("platform"),
        pins=[LockPin(name=p.name, version=p.version, hashes=list(p.hashes)) for p in pins],
    )


# The CUDA stack a lock pins, read from NVIDIA's wheels (names of CUDA 12 and 13 builds).
_CUDA_PINS = (
    (
        "CUDA runtime",
        ("nvidia-cuda-runtime-cu12", "nvidia-cuda-runtime-cu13", "nvidia-cuda-runtime"),
    ),
    ("cuDNN", ("nvidia-cudnn-cu12", "nvidia-cudnn-cu13")),
    ("NCCL", ("nvidia-nccl-cu12", "nvidia-nccl-cu13")),
    ("cuBLAS", ("nvidia-cublas-cu12", "nvidia-cublas-cu13", "nvidia-cublas")),
)


def cuda_stack(pins: Sequence[LockPin] | Sequence[Pin]) -> dict[str, str]:
    """{"CUDA runtime": "12.4.127", "cuDNN": "9.1.0.70", ...} for the nvidia-* wheels pinned."""
    versions = {p.name: p.version for p in pins}
    stack: dict[str, str] = {}
    for label, names in _CUDA_PINS:
        for name in names:
            if name in versions:
                stack[label] = versions[name]
                break
    return stack
