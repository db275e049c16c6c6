"""The hash cache of the running workload (#17): digests of the files a target's processes map,
read through ``/proc/PID/{exe,map_files}`` (lockd.evidence.workload), kept per file and taken
again while the file is provably the one read.

A file is keyed by the kernel's device and inode number, and kept with the one "unchanged" guard
(lockd.evidence.cache.guard: size, mtime, ctime, inode, mode) of its stat through the kernel's
link to the very file the process mapped. A digest is reused only when that stat, taken again
each time, gives the same device and the same guard: a file rewritten in place (its size and
mtime put back) has another ctime, a copy put in its place another inode and ctime; nothing a
container does can set a ctime back. A file whose ctime or mtime is within ``RACY_NS`` of the
moment it was hashed is not kept (written again within the same clock tick, it could show the
same numbers).

* ``HashCache``: in memory, thread-safe; the watch agent holds one per host for as long as it
  runs, a ``lockd verify`` one per run.
* ``load`` and ``save``: the CLI's across runs, one entry ``workload-hashes`` in the kept-store
  ``cache_root()/workload`` (lockd.evidence.cache.store: trusted only when this user owns it
  and nobody else can write it, written atomically), zlib-compressed, at most ``MAX_KEPT``
  files, the ones seen last kept first. Entries of another boot (``/proc/sys/kernel/random/
  boot_id``) are dropped: device numbers of overlay and tmpfs mounts are handed out again
  after a reboot. ``verify --no-cache`` and ``record`` neither take nor keep them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

from lockd.evidence.cache.guard import StatGuard
from lockd.evidence.cache.store import Store
from lockd.fileio import cache_root

__all__ = [
    "FORMAT",
    "MAX_KEPT",
    "RACY_NS",
    "HashCache",
    "cache_dir",
    "guard",
    "load",
    "save",
]

FORMAT = "lockd-workload-hashes/1"
ENTRY = "workload-hashes.json"
MAX_KEPT = 20_000
"""Files whose digests are kept across runs (torch's workload maps about 400)."""
MAX_FILE_BYTES = 8 * 1024 * 1024
RACY_NS = 2_000_000_000
"""A file whose ctime is this close to when it was hashed is not kept in the cache: a file
written again within the same clock tick could show the same numbers."""
DEFAULT_ENTRIES = 4 * 65536
"""Files a ``HashCache`` holds in memory at most (four times the most a workload lists)."""

Guard = tuple[int, StatGuard]
"""A file's device and lockd's one "unchanged" guard (size, mtime, ctime, inode, mode), of its
stat through the kernel's link."""

_Entry = tuple[Guard, str, "str | None"]


def guard(st: os.stat_result) -> Guard:
    return st.st_dev, StatGuard.of(st)


class HashCache:
    """Digests (and sonames) of files read through ``/proc/PID/{exe,map_files}``, kept per
    (device, inode) with the guard they were read under; reused only while the guard, read
    again through the kernel's link, is the same. Thread-safe. Pass one to ``read_workload`` to
    reuse it across verifications; none, and each walk still reads each file once."""

    def __init__(self, max_entries: int = DEFAULT_ENTRIES) -> None:
        self.max_entries = max_entries
        self._entries: dict[tuple[int, int], _Entry] = {}
        self._lock = threading.Lock()
        self.added = 0  # entries put since made (or loaded): whether ``save`` has anything new
        self._used: set[tuple[int, int]] = set()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, st: os.stat_result) -> tuple[str, str | None] | None:
        """(sha256, soname) of the file ``st`` describes, when it is the one read."""
        key = (st.st_dev, st.st_ino)
        found = self._entries.get(key)
        if found is None or found[0] != guard(st):
            return None
        with self._lock:
            self._used.add(key)
        return found[1], found[2]

    def put(self, st: os.stat_result, sha256: str, soname: str | None, now_ns: int) -> bool:
        """Keep a digest read under ``st`` (the same before and after reading); not when the
        file changed in the last RACY_NS before ``now_ns``, or the cache is full."""
        if now_ns - max(st.st_ctime_ns, st.st_mtime_ns) < RACY_NS:
            return False
        key = (st.st_dev, st.st_ino)
        with self._lock:
            if len(self._entries) >= self.max_entries and key not in self._entries:
                return False
            self._entries[key] = guard(st), sha256, soname
            self._used.add(key)
            self.added += 1
        return True

    def items(self) -> list[_Entry]:
        """The entries, those used (taken or put) since made or loaded first."""
        with self._lock:
            used = [self._entries[k] for k in self._used if k in self._entries]
            rest = [e for k, e in self._entries.items() if k not in self._used]
        return used + rest

    def _restore(self, entries: Iterable[_Entry]) -> None:
        with self._lock:
            for entry in entries:
                if len(self._entries) >= self.max_entries:
                    break
                (device, numbers), _, _ = entry
                self._entries[(device, numbers.inode)] = entry


# --- across runs --------------------------------------------------------------------------------


def cache_dir() -> Path:
    """``workload`` under lockd.evidence.cache.store's ``cache_root()``."""
    return cache_root() / "workload"


def _store(directory: Path | None) -> Store:
    return Store(directory or cache_dir(), FORMAT, MAX_FILE_BYTES, 4, compress=True)


@cache
def boot_id() -> str:
    """This boot's ID (the kernel's); "" where it cannot be read (then nothing is kept)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            return f.read(64).decode("ascii", "replace").strip()
    except OSError:
        return ""


def _entry(row: Any) -> _Entry | None:
    """A kept row ``[device, size, mtime, ctime, inode, mode, sha256, soname]``, None when it is
    not one."""
    if not isinstance(row, list) or len(row) != 8:
        return None
    *numbers, sha256, soname = row
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers):
        return None
    if not (isinstance(sha256, str) and len(sha256) == 64):
        return None
    if soname is not None and not (isinstance(soname, str) and len(soname) <= 4096):
        return None
    try:
        int(sha256, 16)
    except ValueError:
        return None
    device, size, mtime, ctime, inode, mode = numbers
    return (device, StatGuard(size, mtime, ctime, inode, mode)), sha256.lower(), soname


def load(directory: Path | None = None) -> HashCache:
    """A ``HashCache`` holding the digests kept by earlier runs of this boot (empty when there
    are none, or the kept-store is not trusted: lockd.evidence.cache.store reports why)."""
    found = HashCache()
    boot = boot_id()
    if not boot:
        return found
    document = _store(directory).load(ENTRY, {"boot": boot})
    rows = document.get("files") if document is not None else None
    if isinstance(rows, list):
        found._restore(e for e in map(_entry, rows[:MAX_KEPT]) if e is not None)
    return found


def save(hashes: HashCache, directory: Path | None = None) -> bool:
    """Keep ``hashes`` for the next run (at most MAX_KEPT files, those used by this run first);
    nothing when it holds nothing new or the boot is unknown. Whether it was written."""
    boot = boot_id()
    if not hashes.added or not boot:
        return False
    rows = [
        [device, g.size, g.mtime_ns, g.ctime_ns, g.inode, g.mode, sha256, soname]
        for (device, g), sha256, soname in hashes.items()[:MAX_KEPT]
    ]
    written = _store(directory).save(ENTRY, {"boot": boot, "files": rows}, trim=False)
    if written:
        hashes.added = 0
    return written
