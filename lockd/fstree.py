"""Digests of directory trees by ``lstat``: what must change before lockd looks again.

The watch agent (lockd.watch.fingerprint) and the probe cache (lockd.probecache) both decide
from one whether anything a process in a container could see has changed: a walk that stats
every entry, reads and hashes nothing (microseconds per entry).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable

__all__ = ["MAX_ENTRIES", "tree_digest"]

MAX_ENTRIES = 100_000
"""A larger tree is not digested: the caller looks at the container itself instead."""


def tree_digest(
    root: str, limit: int = MAX_ENTRIES, skip: Callable[[str, bool], bool] | None = None
) -> str | None:
    """A digest of the path, type, mode and inode, and for non-directories the size and times,
    of every entry below ``root`` (not following links; names sorted, so the digest does not
    depend on directory order).
    ``skip(path, is_dir)``, with ``path`` absolute below ``root``, leaves an entry (and what is
    below it) out. None when ``root`` cannot be read or holds more than ``limit`` entries."""
    digest = hashlib.blake2b(digest_size=20)
    try:
        top = os.lstat(root)
    except OSError:
        return None
    if not stat.S_ISDIR(top.st_mode):
        return None
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
