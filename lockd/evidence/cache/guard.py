"""The one "unchanged" guard: what lockd compares before it believes that a file, a directory or
a tree on this host is still the one it read.

A ``StatGuard`` is an entry's ``lstat`` numbers: size, mtime, ctime, inode number and mode
(links are never followed). Content cannot change without one of them changing short of
resetting the host's clock: a process can set an mtime back, not a ctime; extracting or
copying a file again gives it a new inode and ctime; a chmod or a swap for a link changes the
mode. Every cache of lockd believes a kept result only while the guards it was kept with
still hold, each read again on the host (never through a path a container controls):

* one file: ``StatGuard.at(path)`` (the layer cache's digests of image-layer files);
* many files and directories: ``guards_digest`` of (path, guard) pairs, checked again by
  ``paths_digest`` of the paths (the integrity cache's image-layer files and directories);
* a whole tree: ``tree_digest`` (a container's upper directory, a mount's host side), whose
  line for each entry is the same guard's; a directory's size and times, which follow its
  entries (digested one by one), are left out so that an entry left out by ``skip`` does not
  show through them. ``entry_digest`` is a tree's, or one file's guard (a file bind-mounted).

A walk stats every entry and reads nothing (microseconds per entry).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterable
from typing import NamedTuple

__all__ = [
    "MAX_ENTRIES",
    "StatGuard",
    "entry_digest",
    "guards_digest",
    "paths_digest",
    "tree_digest",
]

MAX_ENTRIES = 100_000
"""A larger tree is not digested: the caller looks at the container itself instead."""

_LINE = b"%s\0%d %d %d %d %o\n"
"""One guarded entry: its name, then size, mtime, ctime, inode and mode (octal)."""


class StatGuard(NamedTuple):
    """An entry's ``lstat`` numbers that must all be the same before lockd believes it is
    unchanged."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    mode: int

    @classmethod
    def of(cls, st: os.stat_result) -> StatGuard:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode)

    @classmethod
    def at(cls, path: str) -> StatGuard | None:
        """The guard of ``path`` now (``lstat``); None when it is gone, cannot be read or is
        no path at all (a NUL, a lone surrogate)."""
        try:
            return cls.of(os.lstat(path))
        except (OSError, ValueError):
            return None

    def line(self, name: bytes) -> bytes:
        """The guard as one line of a digest, after ``name``."""
        return _LINE % (name, self.size, self.mtime_ns, self.ctime_ns, self.inode, self.mode)


def guards_digest(guards: Iterable[tuple[str, StatGuard]]) -> str:
    """One digest of (path, guard) pairs, in their order."""
    digest = hashlib.sha256()
    for path, guard in guards:
        digest.update(guard.line(path.encode("utf-8", "surrogateescape")))
    return digest.hexdigest()


def paths_digest(paths: Iterable[str]) -> str | None:
    """``guards_digest`` of ``paths`` with their guards now (``lstat``); None when one is gone,
    cannot be read or is no path at all (a NUL, a lone surrogate). One line per path, formatted
    straight from its ``lstat``: the integrity cache checks tens of thousands this way."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            st = os.lstat(path)
        except (OSError, ValueError):
            return None
        name = path.encode("utf-8", "surrogateescape")
        digest.update(
            _LINE % (name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode)
        )
    return digest.hexdigest()


def tree_digest(
    root: str,
    limit: int = MAX_ENTRIES,
    skip: Callable[[str, bool], bool] | None = None,
    newest: list[int] | None = None,
) -> str | None:
    """A digest of the guard of every entry below ``root`` (not following links; names sorted,
    so the digest does not depend on directory order), a directory's without its size and
    times. ``skip(path, is_dir)``, with ``path`` absolute below ``root``, leaves an entry (and
    what is below it) out. ``newest``: a list whose first item is raised to the newest ctime
    (ns) of ``root`` and every entry, directories included (an entry added, removed or renamed
    changes its directory's ctime; nothing in a container can set a ctime back): what changed
    since a moment. None when ``root`` cannot be read or holds more than ``limit`` entries."""
    digest = hashlib.blake2b(digest_size=20)
    try:
        top = os.lstat(root)
    except (OSError, ValueError):
        return None
    if not stat.S_ISDIR(top.st_mode):
        return None
    if newest is not None:
        newest[0] = max(newest[0], top.st_ctime_ns)
    count = 0
    stack = [""]
    while stack:
        rel = stack.pop()
        directory = os.path.join(root, rel) if rel else root
        try:
            with os.scandir(directory) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except FileNotFoundError:
            digest.update(b"\0gone\0" + rel.encode("utf-8", "surrogateescape"))
            continue  # removed while we walk: the next pass sees the result
        except OSError:
            return None
        for entry in entries:
            count += 1
            if count > limit:
                return None
            path = f"{rel}/{entry.name}" if rel else entry.name
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            except OSError:
                return None
            is_dir = stat.S_ISDIR(st.st_mode)
            if newest is not None:
                newest[0] = max(newest[0], st.st_ctime_ns)
            if skip is not None and skip("/" + path, is_dir):
                continue
            name = path.encode("utf-8", "surrogateescape")
            if is_dir:  # its size and times follow its entries, digested one by one
                digest.update(_LINE % (name, 0, 0, 0, st.st_ino, st.st_mode))
                stack.append(path)
            else:
                digest.update(
                    _LINE
                    % (name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode)
                )
    return digest.hexdigest()


def entry_digest(
    path: str, limit: int = MAX_ENTRIES, newest: list[int] | None = None
) -> str | None:
    """``tree_digest`` of a directory; of anything else (a file bind-mounted over a path) its
    guard; None when it cannot be read or is too large a tree. ``newest``: as
    ``tree_digest``'s."""
    try:
        st = os.lstat(path)
    except (OSError, ValueError):
        return None
    if stat.S_ISDIR(st.st_mode):
        return tree_digest(path, limit, newest=newest)
    if newest is not None:
        newest[0] = max(newest[0], st.st_ctime_ns)
    return StatGuard.of(st).line(b"").hex()
