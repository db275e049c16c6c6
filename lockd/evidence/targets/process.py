"""The process target, ``process:PID`` (#17): a Python process on this host, for GPU nodes that
run jobs without Docker (Slurm, bare metal).

There is no image: the evidence is the process's workload, read on the host before anything
else runs (lockd.evidence.workload: its tree's executables, mappings and every mapped file,
hashed through ``/proc/PID/map_files``; ``lockd verify`` takes the digests kept by its earlier
runs while each file's guard holds, as for a container: lockd.evidence.cache.hashes), and the
probe, run the way the process runs:

* with **the interpreter its command line names**, not ``/proc/PID/exe`` (which resolves a venv's
  ``bin/python`` link to the base interpreter and so loses the venv). ``argv[0]`` is taken as
  the kernel ran it: a path (made absolute against the process's working directory), or a bare
  name looked up in the process's own ``PATH`` the way ``execvp`` does. The command line is the
  process's own memory, so the path must be the very file ``/proc/PID/exe`` is (device and
  inode): a rewritten command line is refused, never believed. ``--python`` names it instead;
* with **the process's environment**, every variable of ``/proc/PID/environ`` (the process's
  own memory, like the workload's ``env``, which is labelled ``env_source: process-memory``).
  The variables travel to the probe on its standard input, never on a command line that other
  users could read;
* from ``/``, and **as the process's user**: when lockd runs as root, the probe drops to the
  process's user and groups, so code that user can write (a venv's ``.pth`` files) never runs
  with root's rights.

The process's root must be lockd's: a process in another mount namespace (a container's) or
under another root directory (a chroot) names paths that are not this host's, and
``/proc/PID/root`` is the process's choice; such a process is refused, with what to verify
instead.

Refused with the CLI contract's exit codes: a reference that is not a positive number, or
lockd's own process (``InputError``, exit 2); no such process, a zombie, a kernel thread, a
process that exits (or whose ID is reused) while lockd reads or probes it, another user's
process when lockd is not root, another mount namespace or root, a program that is not a
Python interpreter, a command line that does not name the program it runs (``TargetError``,
exit 3).
"""

from __future__ import annotations

import errno
import os
import posixpath
import pwd
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass

from lockd.errors import InputError, TargetError
from lockd.evidence.procfiles import parse_stat
from lockd.evidence.targets.base import (
    MAX_PROBE_OUTPUT,
    PLAIN,
    PROBE_TIMEOUT,
    Files,
    Gpus,
    HostFiles,
    ProbeOptions,
    parse_probe_document,
    probe_arguments,
    run_probe_subprocess,
)
from lockd.evidence.workload import process_tree, read_workload
from lockd.model.host import TargetInfo
from lockd.model.manifest import Observation
from lockd.model.workload import Workload

__all__ = ["PREFIX", "ProcessTarget", "parse_pid"]

PREFIX = "process:"
PROC = "/proc"
DEFAULT_PATH = "/bin:/usr/bin"
"""What ``execvp`` searches when the environment has no ``PATH`` (glibc)."""
MAX_ENVIRON = 4 * 1024 * 1024
MAX_CMDLINE = 1024 * 1024
_PYTHON = re.compile(r"(python|pypy)[0-9.]*[dmu]?")  # as lockd.evidence.procfiles groups them
_DIGITS = re.compile(r"[0-9]{1,10}")

# Run by the target's interpreter as ``python -I -S -c _LAUNCH`` (isolated, no site: nothing of
# lockd's environment or the target's site-packages runs here), with lockd's privileges: reads
# from stdin the credentials, the argv and the environment (NUL-separated), takes the process's
# user and groups when given, and execs argv from / with exactly that environment. Python 3.8+.
_LAUNCH = """\
import os, sys
fields = sys.stdin.buffer.read().split(b"\\0")
who, count = fields[0], int(fields[1])
argv = fields[2:2 + count]
env = {}
for entry in fields[2 + count:]:
    name, sep, value = entry.partition(b"=")
    if sep and name and name not in env:
        env[name] = value
os.chdir("/")
if who:
    uid, gid, groups = who.split(b":")
    os.setgroups([int(g) for g in groups.split(b",") if g])
    os.setresgid(int(gid), int(gid), int(gid))
    os.setresuid(int(uid), int(uid), int(uid))
os.execve(argv[0], argv, env)
"""


def parse_pid(ref: str) -> int:
    """The process ID of ``process:PID``.

    Raises:
        InputError: the text after ``process:`` is not a positive decimal number (exit 2).
    """
    text = ref[len(PREFIX) :] if ref.startswith(PREFIX) else ref
    if not _DIGITS.fullmatch(text) or int(text) == 0:
        raise InputError(
            f"target {ref!r}: name a process by its ID, a positive decimal number "
            "(process:1234; `ps -e` lists them)"
        )
    return int(text)


@dataclass(frozen=True)
class _Credentials:
    uid: int
    gid: int
    groups: tuple[int, ...]

    def encode(self) -> bytes:
        groups = ",".join(str(g) for g in self.groups)
        return f"{self.uid}:{self.gid}:{groups}".encode()


def _read(path: str, limit: int) -> bytes:
    with open(path, "rb", buffering=0) as handle:
        return handle.read(limit + 1)


def _ids(status: bytes, field: bytes) -> list[int]:
    for line in status.splitlines():
        if line.startswith(field + b":"):
            return [int(v) for v in line.split()[1:] if v.isdigit()]
    return []


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "no name"


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class ProcessTarget:
    """A running Python process on this host, by its ID (see the module's text)."""

    def __init__(
        self,
        pid: int,
        *,
        python: str | None = None,
        timeout: float = PROBE_TIMEOUT,
        max_output: int = MAX_PROBE_OUTPUT,
        proc: str = PROC,
    ) -> None:
        """Read what the probe needs of process ``pid``: who runs it, where, with which
        interpreter and environment.

        Raises:
            InputError: ``pid`` is lockd's own process (exit 2).
            TargetError: the process cannot be inspected (see the module's text; exit 3).
        """
        self.pid = pid
        self.timeout = timeout
        self.max_output = max_output
        self.proc = proc
        self.where = f"process:{pid}"
        if pid == os.getpid():
            raise InputError(
                f"{self.where} is this lockd itself: name the job's process (`ps -e` lists them)"
            )
        self.started: int | None = None
        self.started = self._start_time()
        base = f"{proc}/{pid}"
        try:
            status = _read(f"{base}/status", 65536)
            self.credentials = self._owner(status)
            self._same_root(base)
            command = _read(f"{base}/cmdline", MAX_CMDLINE).split(b"\0")
            if command and not command[-1]:
                command.pop()
            if not command:
                raise TargetError(
                    f"{self.where} is a kernel thread (its command line is empty): it runs "
                    "no program to inspect"
                )
            environ = _read(f"{base}/environ", MAX_ENVIRON)
            if len(environ) > MAX_ENVIRON:
                raise TargetError(
                    f"{self.where}: its environment is larger than {MAX_ENVIRON} bytes; "
                    "lockd will not pass it on to the probe"
                )
            self.environ = environ
            self.python = _given(python) if python else self._interpreter(base, command)
        except OSError as e:
            raise self._unreadable(e) from e
        self._still_running("while lockd read it")
        self.info = TargetInfo(kind="process", ref=str(pid))

    # --- what the process is ---------------------------------------------------------------

    def _start_time(self) -> int:
        """The process's start time (/proc/PID/stat).

        Raises:
            TargetError: it is gone, or a zombie."""
        try:
            parsed = parse_stat(_read(f"{self.proc}/{self.pid}/stat", 4096))
        except OSError as e:
            raise self._unreadable(e) from e
        if parsed is None:
            raise TargetError(f"{self.where}: /proc/{self.pid}/stat is not in the kernel's format")
        if parsed.state in ("Z", "X"):
            raise _zombie(self.where)
        return parsed.started

    def _still_running(self, when: str) -> None:
        """Raises TargetError when the process exited, or another one has its ID now."""
        if self._start_time() != self.started:
            raise self._exited(when)

    def _exited(self, when: str) -> TargetError:
        return TargetError(
            f"{self.where} exited {when} (or its ID was reused): there is nothing left to "
            "inspect; start the job again and name its new ID"
        )

    def _unreadable(self, error: OSError) -> TargetError:
        if isinstance(error, FileNotFoundError | ProcessLookupError) or error.errno == errno.ESRCH:
            if self.started is not None:
                return self._exited("while lockd read it")
            return TargetError(
                f"{self.where}: no such process on this host (it exited, or runs in another "
                "PID namespace); `ps -e` lists the running ones"
            )
        return TargetError(
            f"{self.where}: cannot read {error.filename or f'/proc/{self.pid}'}: "
            f"{error.strerror or error}"
        )

    def _owner(self, status: bytes) -> _Credentials | None:
        """The user and groups the probe takes (None: lockd's own, when lockd is not root).

        Raises TargetError for another user's process when lockd is not root."""
        uids, gids = _ids(status, b"Uid"), _ids(status, b"Gid")
        if len(uids) < 2 or len(gids) < 2:
            raise TargetError(f"{self.where}: /proc/{self.pid}/status names no user")
        me = _caller_uid()
        if me != 0:
            others = sorted({u for u in uids[:3] if u != me})
            if others:
                raise TargetError(
                    f"{self.where} belongs to uid {others[0]} ({_user(others[0])}), not to "
                    f"this user (uid {me}): reading another user's process needs root; run "
                    "lockd as root"
                )
            return None
        return _Credentials(uids[1], gids[1], tuple(_ids(status, b"Groups")))

    def _same_root(self, base: str) -> None:
        """Refuse a process whose paths are not lockd's: another mount namespace, another root
        directory."""
        theirs, ours = os.readlink(f"{base}/ns/mnt"), os.readlink(f"{self.proc}/self/ns/mnt")
        if theirs != ours:
            raise TargetError(
                f"{self.where} runs in another mount namespace than lockd ({theirs}; lockd's: "
                f"{ours}), a container's? The paths it maps and its interpreter are not this "
                "host's: verify its container (container:NAME)"
            )
        root, own = os.readlink(f"{base}/root"), os.readlink(f"{self.proc}/self/root")
        if root != own:
            raise TargetError(
                f"{self.where} runs under another root directory ({root}: a chroot): the paths "
                "it maps are not this host's, and lockd will not start its probe there"
            )

    def _interpreter(self, base: str, command: list[bytes]) -> str:
        """The interpreter the command line names, proven to be the program the process runs
        (the same file as /proc/PID/exe)."""
        exe = os.readlink(f"{base}/exe")
        running = os.stat(f"{base}/exe")
        if not _PYTHON.fullmatch(posixpath.basename(exe.removesuffix(" (deleted)"))):
            raise TargetError(
                f"{self.where} runs {exe}, not a Python interpreter: name the job's Python "
                "process (a child of this one?), or give its interpreter with --python PATH"
            )
        named = os.fsdecode(command[0])
        cwd = os.readlink(f"{base}/cwd")
        if "/" in named:
            path: str | None = posixpath.normpath(posixpath.join(cwd, named))
        else:
            path = _search(named, _path_of(self.environ), cwd)
        try:
            found = os.stat(path) if path is not None else None
        except OSError:
            found = None
        if found is None or not _same_file(found, running):
            resolved = "found nowhere on its PATH" if path is None else path
            raise TargetError(
                f"{self.where}: its command line names {named!r} ({resolved}), which is not the "
                f"program it runs ({exe}, /proc/{self.pid}/exe): the command line was rewritten, "
                "or the file replaced since it started; give its interpreter with --python PATH"
            )
        assert path is not None
        return path

    # --- the Target interface ---------------------------------------------------------------

    def observe(self, options: ProbeOptions = PLAIN) -> Observation:
        """The workload of the process and its descendants (read on the host first), then the
        probe run with its interpreter, environment and user; no host evidence (no image).

        Raises:
            TargetError: the process exited (or its ID was reused) meanwhile, or cannot be read.
            ProbeError: the probe failed, hung, flooded its output or printed garbage.
        """
        workload = self._workload(options)
        source = f"{self.where} (probe with {self.python})"
        output = self._run(
            [self.python, *probe_arguments(options)],
            source,
            timeout=self.timeout + options.extra_time,
            max_output=self.max_output,
        )
        probe, imports = parse_probe_document(output, source, family_imports=options.family_imports)
        self._still_running("while lockd probed it")
        return Observation(target=self.info, probe=probe, family_imports=imports, workload=workload)

    def _workload(self, options: ProbeOptions) -> Workload:
        """The workload of the process's tree, lockd (and what it started) left out when it is
        part of that tree; its files' digests through ``options.hashes``, else, with
        ``options.reuse`` (``lockd verify``), those kept across runs (lockd.evidence.cache.hashes:
        taken while each file's guard holds), else every mapped file read."""
        from lockd.evidence.cache import hashes as kept

        self._still_running("before lockd read it")
        pids = process_tree(self.pid, self.proc)
        if not pids:
            raise self._exited("while lockd read it")
        hashes = options.hashes
        across_runs = hashes is None and options.reuse
        if across_runs:
            hashes = kept.load()
        workload = read_workload(
            pids, init_pid=self.pid, exclude=(os.getpid(),), hashes=hashes, proc=self.proc
        )
        if across_runs and hashes is not None:
            kept.save(hashes)
        skipped = {s.pid: s for s in workload.skipped}
        mine = skipped.get(self.pid)
        if mine is not None and mine.reason == "zombie":
            raise _zombie(self.where)
        if mine is not None and mine.reason != "vanished":
            raise TargetError(f"{self.where}: cannot read it: {mine.message}")
        read = [p for p in workload.processes if p.pid == self.pid]
        if not read or read[0].started != self.started:
            raise self._exited("while lockd read it")
        return workload

    def _run(self, argv: Sequence[str], source: str, *, timeout: float, max_output: int) -> bytes:
        """``argv`` run like the process: from /, with its environment, as its user."""
        who = b"" if self.credentials is None else self.credentials.encode()
        payload = b"\0".join(
            [who, str(len(argv)).encode(), *(os.fsencode(a) for a in argv), self.environ]
        )
        return run_probe_subprocess(
            [self.python, "-I", "-S", "-c", _LAUNCH],
            source,
            timeout=timeout,
            max_output=max_output,
            stdin=payload,
        )

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
        """``argv`` run like the probe, as the process runs (Target.run_script; the host's
        GPUs are the process's own).

        Raises:
            ProbeError: no such interpreter, or the script failed, hung or flooded its output.
        """
        return self._run(argv, source, timeout=timeout, max_output=max_output)

    def files(self) -> Files:
        """This host's filesystem: the process's root is lockd's (refused otherwise)."""
        return Files(
            host=HostFiles(
                kind="local", roots=("/",), description=f"this host's filesystem ({self.where})"
            )
        )

    def running(self) -> None:
        """No container: nothing is kept for a process between runs."""


def _zombie(where: str) -> TargetError:
    return TargetError(
        f"{where} is a zombie: it exited and its parent has not reaped it, so nothing runs "
        "there to inspect"
    )


def _caller_uid() -> int:
    """lockd's effective user ID (a function, so a test can stand in for a user without root)."""
    return os.geteuid()


def _given(python: str) -> str:
    """``--python`` as a path the probe's launcher can exec from /: a bare name looked up on
    lockd's PATH, a relative path made absolute against lockd's working directory."""
    if "/" not in python:
        python = shutil.which(python) or python
    return os.path.abspath(python) if "/" in python else python


def _path_of(environ: bytes) -> str:
    for entry in environ.split(b"\0"):
        if entry.startswith(b"PATH="):
            return os.fsdecode(entry[len(b"PATH=") :])
    return DEFAULT_PATH


def _search(name: str, path: str, cwd: str) -> str | None:
    """Where ``execvp`` finds ``name`` on ``path``: the first executable regular file (an empty
    entry is the working directory)."""
    for directory in path.split(":"):
        candidate = posixpath.normpath(posixpath.join(cwd, directory or ".", name))
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None
