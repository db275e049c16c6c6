"""The files of ``/proc/PID`` the workload reader uses (lockd.evidence.workload), parsed: pure
functions of bytes, unit-tested with hostile input (tests/unit/evidence/test_procfiles.py).

* ``parse_maps``: ``/proc/PID/maps`` (proc(5)): one mapping a line, the path as the kernel prints
  it (spaces kept, a newline in a name printed as ``\\012``, `` (deleted)`` appended to a file
  removed or replaced since it was mapped); a line not in the format is counted, never trusted.
* ``special_kind``: what a mapping that is not a file lockd reads is (heap, stack, a memfd...).
* ``parse_stat``: the state, parent and start time of ``/proc/PID/stat`` (the command name in
  parentheses may hold anything, parentheses and spaces included).
* ``parse_cmdline``, ``parse_environ``: NUL-separated, from the process's own memory.
* ``group_key``: what a process is judged as: its executable and the script or module it runs.
* ``library_of``: a CUDA or driver library's name and version, where its file name says it.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Callable
from typing import NamedTuple

from lockd.probe.fatbin import CUDA_LIBRARIES, DRIVER_LIBRARIES, FILE_VERSION

__all__ = [
    "DELETED",
    "MapLine",
    "Stat",
    "fit",
    "group_key",
    "library_of",
    "parse_cmdline",
    "parse_environ",
    "parse_maps",
    "parse_stat",
    "special_kind",
]

DELETED = " (deleted)"
TEXT_LIMIT = 4096
"""The model's string limit (lockd.model.base.Str)."""

_LINE = re.compile(
    rb"^([0-9a-f]{1,16})-([0-9a-f]{1,16}) ([r-][w-][x-][ps]) ([0-9a-f]{1,16}) "
    rb"([0-9a-f]{1,8}:[0-9a-f]{1,8}) ([0-9]{1,20})(?: +(.*))?$",
    re.MULTILINE,
)
_PYTHON = re.compile(r"(python|pypy)[0-9.]*[dmu]?")
_PYTHON_VALUED = frozenset("cmWXQ")  # options whose value follows (-c CMD, -m MOD, -W, -X)
_PYTHON_LONG_VALUED = frozenset({"--check-hash-based-pycs"})
_HASHED_NAME = re.compile(r"-[0-9a-f]{8}(?=\.so)")  # auditwheel's rename: libgomp-a34b3233.so.1
_KERNEL_PAGES = frozenset({"[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]", "[uprobes]"})


def fit(text: str, limit: int = TEXT_LIMIT) -> str:
    """``text`` within the model's string limit; an over-long value keeps a digest of itself,
    so that a change in it still shows."""
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "backslashreplace")).hexdigest()
    return f"{text[: limit - 90]}...(sha256:{digest})"


def decode(raw: bytes) -> str:
    """Bytes of a path or an argument as text: bytes that are not UTF-8 written as ``\\xNN``
    (lockd's models hold valid Unicode only)."""
    return raw.decode("utf-8", "backslashreplace")


class MapLine(NamedTuple):
    """One line of /proc/PID/maps."""

    start: int
    end: int
    perms: str  # rwxp / r--s...
    offset: int
    device: str  # major:minor, as printed (hex)
    inode: int
    path: str  # as printed, " (deleted)" taken off; "" for an anonymous mapping
    deleted: bool

    @property
    def executable(self) -> bool:
        return self.perms[2] == "x"

    @property
    def shared(self) -> bool:
        return self.perms[3] == "s"

    @property
    def range(self) -> str:
        """The mapping's name in /proc/PID/map_files (hex without leading zeros)."""
        return f"{self.start:x}-{self.end:x}"


def parse_maps(data: bytes) -> tuple[list[MapLine], int]:
    """(the mappings of /proc/PID/maps in order, how many lines were not in the kernel's
    format). A path may hold spaces; the kernel pads before it, and nothing follows it. Tens of
    thousands of lines a walk: the few distinct paths, permissions and devices are decoded once."""
    found: list[MapLine] = []
    texts: dict[bytes, str] = {}
    paths: dict[bytes, tuple[str, bool]] = {}
    new = tuple.__new__
    bad = 0
    for match in _LINE.finditer(data):
        start_hex, end_hex, perms, offset, device, inode, raw = match.groups()
        start, end = int(start_hex, 16), int(end_hex, 16)
        if end < start:
            bad += 1
            continue
        named = paths.get(raw or b"")
        if named is None:
            path = decode(raw or b"")
            deleted = path.endswith(DELETED) and path.startswith("/")
            named = paths[raw or b""] = (path[: -len(DELETED)] if deleted else path, deleted)
        perms_text = texts.get(perms) or texts.setdefault(perms, perms.decode("ascii"))
        device_text = texts.get(device) or texts.setdefault(device, device.decode("ascii"))
        fields = (start, end, perms_text, int(offset, 16), device_text, int(inode), *named)
        found.append(new(MapLine, fields))
    lines = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
    lines -= data.count(b"\n\n") + (1 if data.startswith(b"\n") else 0)  # empty ones
    return found, bad + max(0, lines - len(found) - bad)


def special_kind(line: MapLine) -> tuple[str, str | None] | None:
    """(kind, name) of a mapping that is no file on a filesystem, from its line alone; None
    for one that names a path (a regular file, a device node, shared memory: the caller asks
    the kernel what it is through map_files). A memfd, a shared-memory file and System V
    shared memory are named here but are files in the kernel's eyes: mapped executable, the
    caller reads them as code."""
    path = line.path
    if not path:
        return ("shm", None) if line.shared else ("anon", None)
    if path == "[heap]":
        return "heap", None
    if path == "[stack]" or path.startswith("[stack:"):
        return "stack", None
    if path in _KERNEL_PAGES:
        return "vdso", path
    if path.startswith("[anon_shmem:"):
        return "shm", path[len("[anon_shmem:") : -1]
    if path.startswith("[anon:"):
        return "anon", path[len("[anon:") : -1]
    if path.startswith("/memfd:"):
        return "memfd", path[len("/memfd:") :]
    if path.startswith("/SYSV") and line.deleted:
        return "sysv", path[1:]
    if path in ("/dev/zero", "/anon_hugepage") and line.deleted:
        return ("shm" if line.shared else "anon"), path
    if path.startswith("/dev/shm/"):  # noqa: S108  (a name the kernel printed, not a file made)
        return "shm", path
    if not path.startswith("/"):
        return "other", path  # anon_inode:[perf_event], a [name] this parser does not know
    return None


class Stat(NamedTuple):
    """What /proc/PID/stat says of the process lockd uses."""

    state: str  # R, S, D, Z (zombie), X (dead), T, t, I...
    ppid: int
    started: int  # field 22: clock ticks after boot


def parse_stat(data: bytes) -> Stat | None:
    """The state, parent pid and start time; None when the text is not in the format. The
    command name (field 2, in parentheses) may hold ") " itself: the last ")" ends it."""
    close = data.rfind(b")")
    if close < 0:
        return None
    fields = data[close + 1 :].split()
    # fields[0] is field 3 (state), fields[1] field 4 (ppid), fields[19] field 22 (starttime)
    if len(fields) < 20 or not fields[1].isdigit() or not fields[19].isdigit():
        return None
    return Stat(fields[0].decode("ascii", "replace"), int(fields[1]), int(fields[19]))


def parse_cmdline(data: bytes, max_args: int) -> tuple[list[str], bool]:
    """(the first ``max_args`` arguments, whether there were more or one was cut). A process
    that rewrote its argv (setproctitle) shows what it wrote: one argument with spaces, often."""
    if data.endswith(b"\0"):
        data = data[:-1]
    if not data:
        return [], False
    parts = data.split(b"\0")
    cut = len(parts) > max_args
    args = []
    for raw in parts[:max_args]:
        text = decode(raw)
        cut = cut or len(text) > TEXT_LIMIT
        args.append(fit(text))
    return args, cut


def parse_environ(
    data: bytes, wanted: Callable[[str], bool], max_vars: int
) -> tuple[dict[str, str], bool]:
    """(the variables of /proc/PID/environ whose name ``wanted`` takes, whether more than
    ``max_vars`` were). Entries without ``=`` are left out; a name repeated keeps its first
    value (what getenv returns)."""
    found: dict[str, str] = {}
    more = False
    for entry in data.split(b"\0"):
        name, sep, value = entry.partition(b"=")
        if not sep or not name:
            continue
        key = decode(name)
        if key in found or not wanted(key):
            continue
        if len(found) >= max_vars:
            more = True
            break
        found[fit(key, 256)] = fit(decode(value))
    return found, more


def _python_target(args: list[str]) -> tuple[str, str] | None:
    """("-m", module) / ("-c", "") / ("-", "") / ("script", path) of a Python command line
    (its arguments after the interpreter), None for an interactive interpreter."""
    at = 0
    while at < len(args):
        arg = args[at]
        at += 1
        if arg == "--":
            return ("script", args[at]) if at < len(args) else None
        if arg == "-":
            return "-", ""
        if arg.startswith("--"):
            if arg in _PYTHON_LONG_VALUED:
                at += 1
            continue
        if not arg.startswith("-"):
            return "script", arg
        flags = arg[1:]
        for position, flag in enumerate(flags):
            if flag not in _PYTHON_VALUED:
                continue
            value = flags[position + 1 :]
            if not value:
                value = args[at] if at < len(args) else ""
                at += 1
            if flag == "c":
                return "-c", ""
            if flag == "m":
                return "-m", value
            break  # -W / -X / -Q took the rest of the argument or the next one
    return None


def group_key(executable: str, command: list[str], cwd: str | None) -> str:
    """What a process is judged as: its executable, and for a Python interpreter the module
    (``-m X``), the script (made absolute against the process's working directory), ``-c`` or
    ``-`` it runs; never its pid or its other arguments (a run's arguments vary)."""
    if not _PYTHON.fullmatch(posixpath.basename(executable)):
        return executable
    found = _python_target(command[1:])
    if found is None:
        return executable
    kind, value = found
    if kind == "script":
        if not value.startswith("/") and cwd is not None and cwd.startswith("/"):
            value = posixpath.normpath(posixpath.join(cwd, value))
        return fit(f"{executable} {value}")
    if kind == "-m":
        return fit(f"{executable} -m {value}")
    return f"{executable} {kind}"


def library_of(path: str, soname: str | None) -> tuple[str, str, str | None] | None:
    """(name, role, version) of a CUDA library (libcudart, libcudnn_cnn, libnccl...; role
    ``cuda``) or a driver library (libcuda, libnvidia-*; role ``driver``), None for another
    file. The name is the soname's (else the file's) stem: libcudnn.so.9 -> libcudnn,
    libgomp-a34b3233.so.1 -> libgomp; the version is what the file's name (else its soname)
    carries: libcudart.so.12.4.127 -> 12.4.127."""
    base = posixpath.basename(path)
    name = soname or base
    if base.startswith(DRIVER_LIBRARIES) or name.startswith(DRIVER_LIBRARIES):
        role = "driver"
    elif (
        base.startswith(CUDA_LIBRARIES)
        or name.startswith(CUDA_LIBRARIES)
        or path.startswith("/usr/local/cuda")
        or "-packages/nvidia/" in path
    ):
        role = "cuda"
    else:
        return None
    if ".so" not in name:
        return None
    stem = _HASHED_NAME.sub("", name).split(".so", 1)[0]
    version = FILE_VERSION.search(base) or (FILE_VERSION.search(soname) if soname else None)
    return stem, role, version.group(1) if version else None
