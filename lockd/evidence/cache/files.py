"""Where lockd keeps its caches on this host, and how it reads and writes their files.

A cache is an optimisation: failing to read or write one is never an error, and a file is
trusted only when this user owns it and nobody else can write it (the caches hold evidence
that lets lockd skip work). Files are written atomically (a temporary file, then a rename), so
a reader never sees half of one; each cache keeps at most so many files, the least recently
used going first.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import stat
import tempfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

_ZLIB = b"\x78"  # the first byte of a zlib stream (JSON starts with "{")

__all__ = [
    "cache_root",
    "ensure_dir",
    "load_document",
    "load_entry",
    "owned",
    "read_trusted",
    "store_document",
    "store_entry",
    "trim",
    "write_atomic",
]


def cache_root() -> Path:
    """``$LOCKD_CACHE_DIR``, else ``/var/cache/lockd`` for root, ``${XDG_CACHE_HOME:-~/.cache}
    /lockd`` for others."""
    base = os.environ.get("LOCKD_CACHE_DIR")
    if not base:
        if os.geteuid() == 0:
            base = "/var/cache/lockd"
        else:
            xdg = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
            base = os.path.join(xdg, "lockd")
    return Path(base)


def owned(st: os.stat_result) -> bool:
    """Whether a file or directory is this user's and nobody else may write it."""
    return st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def ensure_dir(directory: Path) -> bool:
    """Make ``directory`` (mode 0700) if needed; whether it is there and trusted."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        return owned(os.stat(directory))
    except OSError:
        return False


def read_trusted(path: Path, max_bytes: int) -> bytes | None:
    """The file's bytes; None when it is not there, not trusted (``owned``) or larger than
    ``max_bytes``.

    Raises:
        OSError: it cannot be read.
    """
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if not owned(st) or st.st_size > max_bytes:
                return None
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        return None
    return data if len(data) <= max_bytes else None


def write_atomic(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` through a temporary file renamed over it; whether it was
    written."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError:
        return False
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        return False
    return True


def trim(directory: Path, keep: int, pattern: str = "*.json") -> None:
    """Drop the least recently modified files matching ``pattern`` beyond ``keep``."""
    try:
        found = [(p.stat().st_mtime_ns, p) for p in directory.glob(pattern)]
    except OSError:
        return
    found.sort()
    for _, path in found[: max(0, len(found) - keep)]:
        with contextlib.suppress(OSError):
            path.unlink()


def load_document(path: Path, max_bytes: int, fields: Mapping[str, str]) -> dict[str, Any] | None:
    """The JSON object in the trusted cache file ``path`` when it has each of ``fields`` with
    that value (it is then marked recently used, see ``trim``); None when there is none, it is
    not trusted (``read_trusted``), not a JSON object, or another's."""
    try:
        data = read_trusted(path, max_bytes)
        if data is not None and data[:1] == _ZLIB:
            data = _inflate(data, max_bytes)
        document = None if data is None else json.loads(data)
    except (OSError, ValueError, RecursionError, zlib.error):
        return None
    if not isinstance(document, dict) or any(document.get(k) != v for k, v in fields.items()):
        return None
    with contextlib.suppress(OSError):
        os.utime(path)
    return document


def _inflate(data: bytes, max_bytes: int) -> bytes | None:
    """zlib-compressed ``data`` inflated, None when that is more than ``max_bytes``."""
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, max_bytes + 1)
    complete = inflater.eof and not inflater.unused_data  # one whole stream, nothing after it
    return out if len(out) <= max_bytes and complete else None


def store_document(
    path: Path, document: Mapping[str, Any], max_bytes: int, keep: int, *, compress: bool = False
) -> None:
    """Write ``document`` as JSON (zlib-compressed with ``compress``: ``load_document`` reads
    either) to ``path`` atomically, in a trusted directory made if need be, when the JSON is at
    most ``max_bytes``; then ``trim`` the directory to ``keep`` files."""
    data = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
    if compress and len(data) <= max_bytes:
        data = zlib.compress(data, 6)
    if len(data) <= max_bytes and ensure_dir(path.parent) and write_atomic(path, data):
        trim(path.parent, keep)


# --- entries kept under a fingerprint ----------------------------------------------------------

_NAME = re.compile("[0-9a-f]{64}")
"""An entry's name: a container ID, or a fingerprint shared by identical containers."""


def _entry_path(directory: Path, name: str, kind: str) -> Path:
    return directory / (f"{name}-{kind}.json" if kind else f"{name}.json")


def load_entry(
    directory: Path,
    name: str,
    fmt: str,
    key: str | Callable[[Mapping[str, Any]], str | None],
    max_bytes: int,
    *,
    kind: str = "",
) -> dict[str, Any] | None:
    """The document kept as ``name`` (and ``kind``) in format ``fmt`` under fingerprint
    ``key`` (or the one ``key(document)`` gives: what it must have been kept under follows from
    what it says it rests on), with its ``observed_at``; None when ``name`` is not 64 hex
    digits or there is no such document (``load_document``)."""
    if not _NAME.fullmatch(name):
        return None
    fields = {"format": fmt, "container": name}
    document = load_document(_entry_path(directory, name, kind), max_bytes, fields)
    if document is None or not isinstance(document.get("observed_at"), str):
        return None
    expected = key if isinstance(key, str) else key(document)
    if expected is None or document.get("key") != expected:
        return None
    return document


def store_entry(
    directory: Path,
    name: str,
    fmt: str,
    key: str,
    fields: Mapping[str, Any],
    max_bytes: int,
    keep: int,
    *,
    kind: str = "",
    compress: bool = False,
    now: dt.datetime | None = None,
) -> None:
    """Keep ``fields`` as ``name`` (and ``kind``) in format ``fmt`` under fingerprint ``key``,
    observed ``now``, for ``load_entry`` (``store_document``); nothing when ``name`` is not
    64 hex digits."""
    if not _NAME.fullmatch(name):
        return
    moment = (now or dt.datetime.now(dt.timezone.utc)).isoformat(timespec="seconds")
    document = {**fields, "format": fmt, "container": name, "key": key, "observed_at": moment}
    store_document(_entry_path(directory, name, kind), document, max_bytes, keep, compress=compress)
