"""Digests of directory trees by ``lstat``: what must change before lockd looks again.

The watch agent (lockd.watch.fingerprint) and the probe cache (lockd.evidence.cache.probe) both
decide from one whether anything a process in a container could see has changed: a walk that stats
every entry, reads and hashes nothing (microseconds per entry).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable

__all__ = ["MAX_ENTRIES", "entry_digest", "tree_digest"]

MAX_ENTRIES = 100_000
"""A larger tree is not digested: the caller looks at the container itself instead."""


def tree_digest(
    root: str,
    limit: int = MAX_ENTRIES,
    skip: Callable[[str, bool], bool] | None = None,
    newest: list[int] | None = None,
) -> str | None:
    """A digest of the path, type, mode and inode, and for non-directories the size and times,
    of every entry below ``root`` (not following links; names sorted, so the digest does not
    depend on directory order).
    ``skip(path, is_dir)``, with ``path`` absolute below ``root``, leaves an entry (and what is
    below it) out. ``newest``: a list whose first item is raised to the newest ctime (ns) of
    ``root`` and every entry, directories included (an entry added, removed or renamed changes
    its directory's ctime; nothing in a container can set a ctime back): what changed since a
    moment. None when ``root`` cannot be read or holds more than ``limit`` entries."""
    digest = hashlib.blake2b(digest_size=20)
    try:
        top = os.lstat(root)
    except OSError:
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
            # A directory's times and size follow its entries, which are digested one by one
            # (so an entry left out by ``skip`` must not show through its parent's mtime).
            times = (0, 0, 0) if is_dir else (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            digest.update(
                b"%s\0%o %d %d %d %d\n"
                % (path.encode("utf-8", "surrogateescape"), st.st_mode, *times, st.st_ino)
            )
            if is_dir:
                stack.append(path)
    return digest.hexdigest()


def entry_digest(
    path: str, limit: int = MAX_ENTRIES, newest: list[int] | None = None
) -> str | None:
    """``tree_digest`` of a directory; of anything else (a file bind-mounted over a path) its
    lstat numbers (mode, size, mtime, ctime, inode); None when it cannot be read or is too
    large a tree. ``newest``: as ``tree_digest``'s."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if stat.S_ISDIR(st.st_mode):
        return tree_digest(path, limit, newest=newest)
    if newest is not None:
        newest[0] = max(newest[0], st.st_ctime_ns)
    return repr((st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
