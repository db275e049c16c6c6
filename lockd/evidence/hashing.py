"""Digests lockd takes of host evidence, one way each: a host file's bytes, a JSON value, the
parts of a fingerprint.

A host file is opened without following a link and without blocking (a FIFO swapped in is
never waited on), and hashed only when it is a regular file, the one an earlier ``lstat``
described where one is given: a file replaced between the look and the read has no digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterable

__all__ = ["CHUNK", "combine", "host_file_sha256", "json_sha256"]

CHUNK = 1024 * 1024
"""Bytes read (and hashed) at a time."""


def host_file_sha256(path: str, st: os.stat_result | None = None) -> str | None:
    """The sha256 (hex) of the regular file at ``path`` on this host, streamed (bounded
    memory); None when it cannot be opened or read, is no regular file, or is no longer the
    file ``st`` (its ``lstat`` taken before) describes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, ValueError):  # ValueError: a NUL in the path
        return None
    try:
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode):
            return None
        if st is not None and (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            return None
        digest = hashlib.sha256()
        while chunk := os.read(fd, CHUNK):
            digest.update(chunk)
        return digest.hexdigest()
    except OSError:
        return None
    finally:
        os.close(fd)


def json_sha256(value: object) -> str:
    """The sha256 (hex) of ``value`` as canonical JSON (sorted keys, no spaces, ASCII;
    anything JSON has no type for as its ``str``)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def combine(parts: Iterable[str | None]) -> str | None:
    """One sha256 (hex) of ``parts``, in their order; None when any part is unknown (None):
    what rests on something lockd could not read has no digest."""
    digest = hashlib.sha256()
    for part in parts:
        if part is None:
            return None
        digest.update(part.encode("utf-8", "surrogateescape") + b"\0")
    return digest.hexdigest()
