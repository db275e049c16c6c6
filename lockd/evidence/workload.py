"""The running workload of a target, read on the host (#17): for every process, its executable
(hashed through ``/proc/PID/exe``), command line, start time, tracked environment variables and
every mapping, each distinct mapped file hashed once through ``/proc/PID/map_files/RANGE``.

Evidence of the first level (ARCHITECTURE.md), with two labelled exceptions: the command line
and the environment come from the process's own memory. Nothing is read through
``/proc/PID/root`` or by a path name inside the target: a file is read through the kernel's
link to the very file the process mapped, so a file deleted or replaced after it was mapped is
still the bytes the process runs (marked ``deleted``), and a file the target put at the same
name afterwards is not what lockd reads. Where the host may not read ``map_files`` (it needs
CAP_SYS_ADMIN in the host's user namespace: root; a kernel without it), the workload says it
was not examined and why; lockd never falls back to opening the paths by name.

Bad input is a marker naming the pid, never a crash or a silent pass: a process that exits (or
whose pid is reused) while lockd reads it is ``vanished``, a zombie ``zombie``, another user's
process without root ``unreadable``, lines of ``maps`` not in the kernel's format and parts that
could not be read are the process's ``unread``.

Call it **before** lockd's own probe starts: ``read_container_workload(attrs, exclude=...)``
for a container (its cgroup's members, v1 or v2: lockd.evidence.kernel), ``read_workload(pids,
init_pid=...)`` for any processes (``process_tree(pid)`` for a process and its descendants).
``HashCache`` (lockd.evidence.cache.hashes) keeps digests between verifications while every
guard (device, inode, size, mtime, ctime, mode, read again through map_files each time) holds; a
file changed in the two seconds before it was hashed is not kept (its timestamps could repeat).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import struct
import time
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from lockd.errors import TargetError
from lockd.evidence import kernel
from lockd.evidence.cache.hashes import HashCache, guard
from lockd.evidence.procfiles import (
    MapLine,
    Stat,
    decode,
    fit,
    group_key,
    library_of,
    parse_cmdline,
    parse_environ,
    parse_maps,
    parse_stat,
    special_kind,
)
from lockd.judgement.checks.workload import tracked_env
from lockd.model.workload import (
    MAX_ARGS,
    MAX_ENV,
    MAX_FILES,
    MAX_PROCESSES,
    MAX_SPECIALS,
    MappedFile,
    SkippedProcess,
    Special,
    Workload,
    WorkloadProcess,
)

__all__ = [
    "HashCache",
    "container_processes",
    "process_tree",
    "read_container_workload",
    "read_workload",
    "workload_key",
]

PROC = "/proc"
MAX_MAPS_BYTES = 16 * 1024 * 1024  # 65 530 mappings (vm.max_map_count) of long paths
MAX_CMDLINE_BYTES = 1024 * 1024
MAX_ENVIRON_BYTES = 4 * 1024 * 1024
CHUNK = 1024 * 1024


# --- reading /proc ------------------------------------------------------------------------------


class _GoneError(Exception):
    """The process exited (or its pid was reused) while lockd read it."""


class _NoMapFilesError(Exception):
    """The host may not read /proc/PID/map_files: the workload cannot be examined."""


def _read(path: str, limit: int) -> bytes:
    """Up to ``limit + 1`` bytes of a /proc file."""
    chunks = []
    size = 0
    with open(path, "rb", buffering=0) as handle:
        while size <= limit:
            chunk = handle.read(min(65536, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    return b"".join(chunks)


def _gone(error: OSError) -> bool:
    return isinstance(error, (FileNotFoundError, ProcessLookupError)) or error.errno == errno.ESRCH


def _denied(error: OSError) -> bool:
    return error.errno in (errno.EACCES, errno.EPERM)


def _link(path: str) -> str:
    return decode(os.readlink(os.fsencode(path)))


@dataclass
class _Raw:
    """One process as read, before its files are examined."""

    pid: int
    stat: Stat
    executable: str = "?"
    executable_deleted: bool = False
    command: list[str] = field(default_factory=list)
    command_truncated: bool = False
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    uid: int | None = None
    maps: list[MapLine] = field(default_factory=list)
    unread: list[str] = field(default_factory=list)


def _uid(status: bytes) -> int | None:
    for line in status.splitlines():
        if line.startswith(b"Uid:"):
            fields = line.split()
            return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None
    return None


def _read_process(pid: int, first: Stat, proc: str) -> _Raw:
    """Raises: _GoneError; PermissionError (another user's process without root)."""
    base = f"{proc}/{pid}"
    raw = _Raw(pid, first)
    try:
        maps = _read(f"{base}/maps", MAX_MAPS_BYTES)
        if first.state in ("Z", "X") and not maps:
            raise _GoneError("zombie")
        try:
            exe = _link(f"{base}/exe")
            raw.executable_deleted = exe.endswith(" (deleted)")
            raw.executable = fit(exe.removesuffix(" (deleted)"))
        except FileNotFoundError:
            if not maps:
                raise
            raw.unread.append("no executable link (/proc/PID/exe)")
        raw.command, raw.command_truncated = parse_cmdline(
            _read(f"{base}/cmdline", MAX_CMDLINE_BYTES), MAX_ARGS
        )
        try:
            raw.cwd = _link(f"{base}/cwd")
        except OSError as e:
            if _gone(e):
                raise
            raw.unread.append(f"working directory: {e.strerror}")
        environ = _read(f"{base}/environ", MAX_ENVIRON_BYTES)
        raw.env, more = parse_environ(environ, tracked_env, MAX_ENV)
        if more or len(environ) > MAX_ENVIRON_BYTES:
            raw.unread.append(
                f"environment: more than {MAX_ENV} tracked variables or {MAX_ENVIRON_BYTES} bytes"
            )
        raw.uid = _uid(_read(f"{base}/status", 65536))
    except OSError as e:
        if _gone(e):
            raise _GoneError(str(e)) from e
        raise
    if len(maps) > MAX_MAPS_BYTES:
        raw.unread.append(f"/proc/{pid}/maps is larger than {MAX_MAPS_BYTES} bytes: read in part")
        maps = maps[: maps.rfind(b"\n", 0, MAX_MAPS_BYTES) + 1]
    raw.maps, bad = parse_maps(maps)
    if bad:
        raw.unread.append(f"{bad} line(s) of /proc/{pid}/maps not in the kernel's format")
    return raw


def _stats(pids: Iterable[int], proc: str) -> tuple[dict[int, Stat], dict[int, SkippedProcess]]:
    """/proc/PID/stat of each pid, or why it is skipped."""
    found: dict[int, Stat] = {}
    skipped: dict[int, SkippedProcess] = {}
    for pid in pids:
        try:
            parsed = parse_stat(_read(f"{proc}/{pid}/stat", 4096))
        except OSError as e:
            reason = "vanished" if _gone(e) else "unreadable"
            skipped[pid] = SkippedProcess(
                pid=pid, reason=reason, message=f"/proc/{pid}/stat: {e.strerror or e}"
            )
            continue
        if parsed is None:
            skipped[pid] = SkippedProcess(
                pid=pid, reason="unreadable", message=f"/proc/{pid}/stat: not in the format"
            )
            continue
        found[pid] = parsed
    return found, skipped


def _descendants(roots: Collection[int], parents: Mapping[int, int]) -> set[int]:
    """``roots`` and every pid of ``parents`` whose chain of parents reaches one of them."""
    found = set(roots)
    for pid in parents:
        chain: list[int] = []
        at = pid
        while at in parents and at not in found and len(chain) <= len(parents):
            chain.append(at)
            at = parents[at]
        if at in found:
            found.update(chain)
    return found


def _origin(pid: int, init_pid: int | None, init_tree: set[int]) -> str:
    if init_pid is None:
        return "unknown"
    return "init" if pid in init_tree else "exec"


# --- the files ----------------------------------------------------------------------------------


class _Candidate:
    """A distinct mapped path (by the kernel's device, inode, path and deleted mark): the
    processes' links to it, whether one maps it executable, what it turned out to be."""

    __slots__ = ("deleted", "executable", "kind", "links", "path", "special", "st")

    links: list[tuple[int, str]]  # (pid, range): /proc/PID/map_files/RANGE

    def __init__(self, path: str, deleted: bool, kind: str) -> None:
        self.path = path
        self.deleted = deleted
        self.kind = kind
        self.executable = False
        self.links = []
        self.st: os.stat_result | None = None
        self.special: tuple[str, str | None] | None = None


class _Read(NamedTuple):
    sha256: str | None
    soname: str | None
    unread: str | None
    read_bytes: int
    reused: bool


def _soname(fd: int, size: int) -> str | None:
    from lockd.probe import fatbin

    try:
        return fatbin.soname(fd, size, fatbin.elf_sections(fd, size))
    except (OSError, fatbin.NotElfError, struct.error, ValueError, KeyError, IndexError):
        return None


_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY


def _hash(
    links: Iterable[str], st: os.stat_result, elf: bool, cache: HashCache, max_bytes: int | None
) -> _Read:
    """The file behind ``links`` (the kernel's links to it; ``st``: its stat through the
    first): from the cache when the guard holds, else read through the first link that still
    stands, kept when it did not change meanwhile."""
    kept = cache.get(st)
    if kept is not None:
        return _Read(kept[0], kept[1], None, 0, True)
    if max_bytes is not None and st.st_size > max_bytes:
        return _Read(None, None, f"larger than {max_bytes} bytes: not read", 0, False)
    fd = -1
    for link in links:
        try:
            fd = os.open(link, _OPEN_FLAGS)
            break
        except FileNotFoundError:
            continue  # that process exited or unmapped it: another one's link
        except OSError as e:
            return _Read(None, None, f"cannot open it through {link}: {e.strerror}", 0, False)
    if fd < 0:
        return _Read(None, None, "unmapped by every process while lockd read it", 0, False)
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode) or guard(before) != guard(st):
            return _Read(None, None, "replaced while lockd read it", 0, False)
        digest = hashlib.sha256()
        size = 0
        while True:
            chunk = os.read(fd, CHUNK)
            if not chunk:
                break
            digest.update(chunk)
            size += len(chunk)
        soname = _soname(fd, before.st_size) if elf else None
        after = os.fstat(fd)
    except OSError as e:
        return _Read(None, None, f"cannot read it through {link}: {e.strerror}", 0, False)
    finally:
        os.close(fd)
    if guard(after) != guard(before) or size != before.st_size:
        return _Read(None, None, "changed while lockd read it", size, False)
    sha256 = digest.hexdigest()
    cache.put(before, sha256, soname, time.time_ns())
    return _Read(sha256, soname, None, size, False)


def _pool(work: list[Any], function: Any) -> list[Any]:
    threads = max(1, min(8, os.cpu_count() or 1))
    if threads <= 1 or len(work) <= 1:
        return [function(item) for item in work]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="lockd-workload") as pool:
        return list(pool.map(function, work))


def _examine(candidate: _Candidate, proc: str) -> None:
    """Stat the file through the first link that still stands (a process may have exited);
    none standing leaves ``st`` and ``special`` None.

    Raises: _NoMapFilesError."""
    for pid, where in candidate.links:
        link = f"{proc}/{pid}/map_files/{where}"
        try:
            st = os.stat(link)
        except OSError as e:
            if _denied(e):
                raise _NoMapFilesError(
                    f"the host may not read {link.rsplit('/', 1)[0]} ({e.strerror}): reading "
                    "the files a process mapped needs root (CAP_SYS_ADMIN)"
                ) from e
            continue
        if stat.S_ISREG(st.st_mode):
            candidate.st = st
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            candidate.special = ("device", candidate.path)
        else:
            candidate.special = ("other", candidate.path)
        return


# --- the walk -----------------------------------------------------------------------------------


def read_workload(
    pids: Iterable[int],
    *,
    init_pid: int | None = None,
    exclude: Collection[int] = (),
    hashes: HashCache | None = None,
    container: bool = False,
    incomplete: str | None = None,
    max_file_bytes: int | None = None,
    proc: str = PROC,
) -> Workload:
    """The workload of the processes ``pids`` (read on the host's ``/proc``).

    ``init_pid``: the target's init process (its tree is ``init``, the others ``exec``;
    without it, ``unknown``). ``exclude``: pids left out with their descendants (lockd's own
    exec), listed as ``excluded``. ``container``: the pids are a container's cgroup members (a
    member still in the host's mount namespace is a ``docker exec`` in transit, left out as
    such). ``incomplete``: what the caller could not list. ``max_file_bytes``: a larger file is
    not read (it says so). Never raises for a process or a file: each is a marker.
    """
    cache = hashes if hashes is not None else HashCache()
    wanted = list(dict.fromkeys(pids))
    notes = [incomplete] if incomplete else []
    if len(wanted) > MAX_PROCESSES:
        notes.append(f"{len(wanted)} processes: only the first {MAX_PROCESSES} are read")
        wanted = wanted[:MAX_PROCESSES]
    stats, skipped = _stats(wanted, proc)
    parents = {pid: s.ppid for pid, s in stats.items()}
    excluded = _descendants([p for p in exclude if p in parents], parents) if exclude else set()
    init_tree = _descendants([init_pid], parents) if init_pid in parents else set()
    hosts = kernel.host_namespaces() if container else frozenset()
    raws: list[_Raw] = []
    for pid, first in stats.items():
        if pid in excluded:
            skipped[pid] = SkippedProcess(pid=pid, reason="excluded", message="left out by lockd")
            continue
        try:
            if container and pid != init_pid and os.readlink(f"{proc}/{pid}/ns/mnt") in hosts:
                skipped[pid] = SkippedProcess(
                    pid=pid,
                    reason="transit",
                    message="in the host's mount namespace: a docker exec starting",
                )
                continue
            raws.append(_read_process(pid, first, proc))
        except _GoneError as e:
            reason = "zombie" if str(e) == "zombie" else "vanished"
            skipped[pid] = SkippedProcess(pid=pid, reason=reason, message=_vanished(pid, reason))
        except OSError as e:
            if _gone(e):
                skipped[pid] = SkippedProcess(
                    pid=pid, reason="vanished", message=_vanished(pid, "vanished")
                )
            else:
                skipped[pid] = SkippedProcess(
                    pid=pid,
                    reason="unreadable",
                    message=f"cannot read /proc/{pid}: {e.strerror or e} (another user's "
                    "process: lockd needs root)",
                )
    files, per_process, not_examined, totals = _files(raws, cache, max_file_bytes, proc)
    processes = []
    for raw in raws:
        mine = per_process.get(raw.pid, ([], []))
        process = _process(raw, mine, cache, proc, _origin(raw.pid, init_pid, init_tree))
        if _restarted(raw, proc):  # exited, or the pid was reused, while lockd read it
            skipped[raw.pid] = SkippedProcess(
                pid=raw.pid, reason="vanished", message=_vanished(raw.pid, "vanished")
            )
            continue
        processes.append(process)
    if len(files) > MAX_FILES:
        notes.append(f"more than {MAX_FILES} distinct mapped files: the rest are not listed")
    return Workload(
        not_examined=not_examined,
        processes=sorted(processes, key=lambda p: p.pid),
        files=files[:MAX_FILES],
        skipped=sorted(skipped.values(), key=lambda s: s.pid)[:MAX_PROCESSES],
        incomplete="; ".join(notes) or None,
        hashed=totals[0],
        reused=totals[1],
        bytes=totals[2],
    )


def _vanished(pid: int, reason: str) -> str:
    if reason == "zombie":
        return f"pid {pid} is a zombie: it maps nothing and runs nothing"
    return f"pid {pid} exited (or its pid was reused) while lockd read it"


def _restarted(raw: _Raw, proc: str) -> bool:
    try:
        now = parse_stat(_read(f"{proc}/{raw.pid}/stat", 4096))
    except OSError:
        return True
    return now is None or now.started != raw.stat.started


_Collected = tuple[
    dict[tuple[str, int, str, bool], _Candidate],
    dict[int, list[_Candidate]],
    dict[int, Counter[tuple[str, str | None]]],
]


def _collect(raws: list[_Raw]) -> _Collected:
    """The distinct mapped paths (by the kernel's device, inode, path and deleted mark) with a
    few processes' links to each; per pid, the ones it maps and its other mappings counted by
    kind. Tens of thousands of lines: each distinct path is classified once."""
    candidates: dict[tuple[str, int, str, bool], _Candidate] = {}
    mapped: dict[int, list[_Candidate]] = {}
    specials: dict[int, Counter[tuple[str, str | None]]] = {}
    kinds: dict[tuple[str, bool, bool], tuple[str, str | None] | None] = {}
    for raw in raws:
        mine: dict[int, _Candidate] = {}
        counts: Counter[tuple[str, str | None]] = Counter()
        for line in raw.maps:
            named = (line.path, line.deleted, line.shared)
            if named in kinds:
                kind = kinds[named]
            else:
                kind = kinds[named] = special_kind(line)
            if kind is not None and not (
                line.executable and line.path and kind[0] in ("memfd", "shm", "sysv")
            ):
                counts[kind] += 1
                continue
            key = (line.device, line.inode, line.path, line.deleted)
            candidate = candidates.get(key)
            if candidate is None:
                file_kind = "file" if kind is None else ("memfd" if kind[0] == "memfd" else "shm")
                candidate = candidates[key] = _Candidate(line.path, line.deleted, file_kind)
            if not candidate.links or candidate.links[-1][0] != raw.pid:
                candidate.links.append((raw.pid, line.range))
            candidate.executable = candidate.executable or line.executable
            mine[id(candidate)] = candidate
        mapped[raw.pid] = list(mine.values())
        specials[raw.pid] = counts
    return candidates, mapped, specials


def _files(
    raws: list[_Raw], cache: HashCache, max_bytes: int | None, proc: str
) -> tuple[
    list[MappedFile],
    dict[int, tuple[list[int], list[Special]]],
    str | None,
    tuple[int, int, int],
]:
    """The distinct files the processes map, read once each; per pid, its files' indexes and
    its other mappings; why the files could not be examined; (hashed, reused, bytes)."""
    candidates, mapped, specials = _collect(raws)
    not_examined = None
    if candidates and not os.path.isdir(f"{proc}/self/map_files"):
        not_examined = "this kernel has no /proc/PID/map_files: the mapped files cannot be read"
    if not_examined is None:
        try:
            for candidate in candidates.values():
                _examine(candidate, proc)
        except _NoMapFilesError as e:
            not_examined = str(e)
    if not_examined is not None:
        return [], {r.pid: ([], _specials(specials[r.pid])) for r in raws}, not_examined, (0, 0, 0)
    regular = [c for c in candidates.values() if c.st is not None]
    work = [
        ((f"{proc}/{pid}/map_files/{where}" for pid, where in c.links), c.st, c.executable)
        for c in regular
    ]
    results: list[_Read] = _pool(
        work, lambda item: _hash(item[0], item[1], item[2], cache, max_bytes)
    )
    read = dict(zip((id(c) for c in regular), results, strict=True))
    entries = {id(c): _mapped_file(c, read[id(c)]) for c in regular}
    order = sorted(entries, key=lambda k: _order(entries[k]))
    index = {key: at for at, key in enumerate(order)}
    files = [entries[key] for key in order]
    per_process: dict[int, tuple[list[int], list[Special]]] = {}
    for raw in raws:
        counts = specials[raw.pid]
        indexes = []
        gone = 0
        for candidate in mapped[raw.pid]:
            if candidate.special is not None:
                counts[candidate.special] += 1
            elif id(candidate) in index:
                indexes.append(index[id(candidate)])
            else:
                gone += 1
        if gone:  # unmapped by every process that mapped it before lockd could stat it
            raw.unread.append(f"{gone} mapped file(s) unmapped while lockd read them")
        per_process[raw.pid] = (sorted(indexes), _specials(counts))
    totals = (
        sum(1 for r in results if r.sha256 is not None and not r.reused),
        sum(1 for r in results if r.reused),
        sum(r.read_bytes for r in results),
    )
    return files, per_process, None, totals


def _order(entry: MappedFile) -> tuple[str, bool, str, int]:
    return entry.path, entry.deleted, entry.device or "", entry.inode or 0


def _specials(counts: Counter[tuple[str, str | None]]) -> list[Special]:
    found = [
        Special.model_validate(
            {"kind": kind, "name": None if name is None else fit(name), "count": count}
        )
        for (kind, name), count in sorted(counts.items(), key=lambda i: (i[0][0], i[0][1] or ""))
    ]
    return found[:MAX_SPECIALS]


def _mapped_file(candidate: _Candidate, read: _Read) -> MappedFile:
    st = candidate.st
    assert st is not None
    library = library_of(candidate.path, read.soname) if candidate.kind == "file" else None
    return MappedFile.model_validate(
        {
            "path": fit(candidate.path),
            "deleted": candidate.deleted,
            "kind": candidate.kind,
            "executable": candidate.executable,
            "sha256": read.sha256,
            "size": st.st_size,
            "device": f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}",
            "inode": st.st_ino,
            "soname": None if read.soname is None else fit(read.soname),
            "library": None if library is None else fit(library[0], 256),
            "library_role": None if library is None else library[1],
            "library_version": None if library is None else library[2],
            "unread": read.unread,
        }
    )


def _process(
    raw: _Raw, mine: tuple[list[int], list[Special]], cache: HashCache, proc: str, origin: str
) -> WorkloadProcess:
    """The process as the model holds it, its executable hashed through /proc/PID/exe."""
    indexes, specials = mine
    sha256 = None
    link = f"{proc}/{raw.pid}/exe"
    try:
        st = os.stat(link)
        if stat.S_ISREG(st.st_mode):
            read = _hash([link], st, False, cache, None)
            sha256 = read.sha256
            if read.unread:
                raw.unread.append(f"executable: {read.unread}")
    except OSError as e:
        raw.unread.append(f"executable: {e.strerror}")
    return WorkloadProcess.model_validate(
        {
            "pid": raw.pid,
            "ppid": raw.stat.ppid,
            "origin": origin,
            "started": raw.stat.started,
            "uid": raw.uid,
            "executable": raw.executable,
            "executable_deleted": raw.executable_deleted,
            "executable_sha256": sha256,
            "command": raw.command,
            "command_truncated": raw.command_truncated,
            "group": group_key(raw.executable, raw.command, raw.cwd),
            "env": raw.env,
            "files": [i for i in indexes if i < MAX_FILES],
            "specials": specials,
            "mappings": len(raw.maps),
            "unread": fit("; ".join(raw.unread)) if raw.unread else None,
        }
    )


# --- whose processes ----------------------------------------------------------------------------


def process_tree(pid: int, proc: str = PROC) -> list[int]:
    """``pid`` and its descendants (by the parent pid in each /proc/PID/stat), ``pid`` first;
    empty when it is gone. For a ``process:PID`` target."""
    parents: dict[int, int] = {}
    with os.scandir(proc) as entries:
        names = [e.name for e in entries if e.name.isdigit()]
    for name in names:
        try:
            parsed = parse_stat(_read(f"{proc}/{name}/stat", 4096))
        except OSError:
            continue
        if parsed is not None:
            parents[int(name)] = parsed.ppid
    if pid not in parents:
        return []
    tree = _descendants([pid], parents)
    return [pid, *sorted(tree - {pid})]


def container_processes(
    init_pid: int, container_id: str, exclude: Collection[int] = ()
) -> tuple[list[int], str | None]:
    """(the pids of the container's cgroup, v1 or v2 (lockd.evidence.kernel), init first,
    without ``exclude`` and their descendants; why the list may be incomplete).

    Raises:
        ProcessLookupError: the init process is gone.
    """
    pids, incomplete = kernel.member_pids(init_pid, container_id)
    if not exclude:
        return pids, incomplete
    stats, _ = _stats(pids, PROC)
    left_out = _descendants(
        [p for p in exclude if p in stats], {p: s.ppid for p, s in stats.items()}
    )
    return [p for p in pids if p not in left_out and p not in exclude], incomplete


def read_container_workload(
    attrs: Mapping[str, Any],
    source: str,
    *,
    exclude: Collection[int] = (),
    hashes: HashCache | None = None,
) -> Workload:
    """The workload of a running container (``attrs``: the daemon's inspect answer; ``source``:
    "container NAME", for messages), read on the host: every member of its cgroup but
    ``exclude`` (lockd's own exec, when one runs) and their descendants. Call it before lockd's
    probe starts.

    Raises:
        TargetError: the container's init process exited while lockd read it (it stopped).
    """
    init_pid = int((attrs.get("State") or {}).get("Pid") or 0)
    container_id = str(attrs.get("Id") or "")
    if init_pid <= 0 or not container_id:
        return Workload(not_examined="the daemon names no running process")
    try:
        pids, incomplete = kernel.member_pids(init_pid, container_id)
    except ProcessLookupError:
        upper = str(((attrs.get("GraphDriver") or {}).get("Data") or {}).get("UpperDir") or "")
        if upper and os.path.isdir(upper):
            raise TargetError(
                f"{source} stopped while lockd read its processes (pid {init_pid})"
            ) from None
        return Workload(
            not_examined=f"pid {init_pid} is not on this host (is the daemon remote?): run "
            "lockd on the Docker host, as root, to read what the container's processes run"
        )
    return read_workload(
        pids,
        init_pid=init_pid,
        exclude=exclude,
        hashes=hashes,
        container=True,
        incomplete=incomplete,
    )


# --- the watch agent's key ----------------------------------------------------------------------


def _process_key(pid: int, proc: str) -> bytes | None:
    """One process's part of ``workload_key``; None when it exited meanwhile.

    Raises:
        OSError: it cannot be read (another user's, without root)."""
    base = f"{proc}/{pid}"
    try:
        executable = _link(f"{base}/exe")
        command, _ = parse_cmdline(_read(f"{base}/cmdline", MAX_CMDLINE_BYTES), MAX_ARGS)
        try:
            cwd: str | None = _link(f"{base}/cwd")
        except OSError as e:
            if _gone(e):
                raise
            cwd = None
        env, _ = parse_environ(_read(f"{base}/environ", MAX_ENVIRON_BYTES), tracked_env, MAX_ENV)
        lines, bad = parse_maps(_read(f"{base}/maps", MAX_MAPS_BYTES))
    except OSError as e:
        if _gone(e):
            return None
        raise
    mapped = sorted(
        {(line.device, line.inode, line.path, line.deleted) for line in lines if line.executable}
    )
    group = group_key(executable.removesuffix(" (deleted)"), command, cwd)
    text = repr((group, executable, sorted(env.items()), mapped, bad))
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()


def workload_key(attrs: Mapping[str, Any], proc: str = PROC) -> str | None:
    """What of a running container's workload makes the watch agent look at it again
    (lockd.evidence.cache.fingerprint's ``watch``): for each process of its cgroup, its
    executable and group (what it runs), its tracked variables and the code it maps (device,
    inode, path and deleted mark of each executable mapping, as /proc/PID/maps says: nothing is
    hashed; data, shared memory and heap churn without changing a verdict); the *set* of
    those, so that processes coming and going as the ones before them (a worker restarted, a
    shell's commands) leave it unchanged, and a library mapped mid-run, a file replaced under a
    mapping, a program or a variable that was not there changes it. A ``docker exec`` in
    transit is left out. None when any of it cannot be read (not root, another host's daemon,
    the container stopped, its cgroup not found)."""
    init_pid = int((attrs.get("State") or {}).get("Pid") or 0)
    container_id = str(attrs.get("Id") or "")
    if init_pid <= 0 or not container_id:
        return None
    try:
        pids, incomplete = kernel.member_pids(init_pid, container_id)
    except ProcessLookupError:
        return None
    if incomplete is not None:
        return None
    hosts = kernel.host_namespaces()
    found: set[bytes] = set()
    try:
        for pid in pids:
            try:
                if pid != init_pid and os.readlink(f"{proc}/{pid}/ns/mnt") in hosts:
                    continue  # a docker exec in transit
            except OSError as e:
                if _gone(e):
                    continue
                raise
            key = _process_key(pid, proc)
            if key is None and pid == init_pid:
                return None
            if key is not None:
                found.add(key)
    except OSError:
        return None
    return hashlib.sha256(b"".join(sorted(found))).hexdigest()
