"""The kept-store: where lockd keeps what it learnt between runs, and how it reads and writes it.

Each cache (probe reports, ``--deep`` results, layer digests) is one ``Store``: a directory below
``cache_root()``, a format, limits. A cache is an optimisation: it holds evidence that lets lockd
skip work, so it is trusted only as far as this user's own files are, and a problem with it is
never an error.

* **The directory** is made mode 0700 and trusted only when it and the directory above it (the
  cache root) are directories, not symbolic links (``lstat``: never followed), that this user
  owns (the one above may be root's) and nobody else may write (the one above may be sticky,
  as /tmp is).
* **An entry** is one file named by the cache, holding a JSON object that carries the cache's
  ``format``, zlib-compressed where the cache asks (read either way). It is read only when it is
  a regular file (opened without following a link) that this user owns and nobody else may
  write, at most ``max_bytes`` on disk and once inflated. Reading it marks it used.
* **Writes are atomic**: a temporary file in the same directory, renamed over the entry; a
  reader never sees half of one, and a failed write leaves nothing behind.
* **At most ``max_files`` entries**: the least recently used go first.

A problem (an untrusted directory, a full disk, an entry that cannot be read) is logged once per
process and kind and directory, as a warning of the ``lockd.cache`` logger, saying where and
what to do; the caller then computes again what it would have taken from the cache. A cache
never makes a verdict weaker and never fails a command.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import tempfile
import threading
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lockd.fileio import UntrustedFileError, read_own_file, untrusted_directory

__all__ = ["ENTRY_NAME", "Store"]

log = logging.getLogger("lockd.cache")

_ZLIB = b"\x78"  # the first byte of a zlib stream (JSON starts with "{")
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")
ENTRY_NAME = re.compile("[0-9a-f]{64}")
"""A fingerprinted entry's name: a container ID, or a fingerprint shared by identical
containers."""

_reported: set[tuple[str, str]] = set()
_reported_lock = threading.Lock()


def _problem(kind: str, where: Path, message: str) -> None:
    """Log ``message`` unless a problem of this ``kind`` at ``where`` was logged before."""
    with _reported_lock:
        if (kind, str(where)) in _reported:
            return
        _reported.add((kind, str(where)))
    log.warning("%s", message)


@dataclass(frozen=True)
class Store:
    """One cache's entries in ``directory``, in format ``format``: each at most ``max_bytes``
    (``compress``: written zlib-compressed), at most ``max_files`` of them."""

    directory: Path
    format: str
    max_bytes: int
    max_files: int
    compress: bool = False

    # -- the directory --

    def _ready(self, *, make: bool) -> bool:
        """Whether the directory is there and trusted; ``make``: made (0700) if need be. An
        untrusted one is reported; a missing one, only when it cannot be made."""
        if make:
            try:
                self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as e:
                _problem(
                    "make",
                    self.directory,
                    f"cannot make lockd's cache directory {self.directory} "
                    f"({e.strerror or e}): nothing is kept, so lockd computes everything "
                    "again next time; set LOCKD_CACHE_DIR to a directory lockd may write",
                )
                return False
        elif not os.path.lexists(self.directory):
            return False
        distrust = untrusted_directory(self.directory)
        if distrust is None:
            return True
        where, why = distrust
        _problem(  # once for the directory above, however many caches it holds
            "untrusted",
            where,
            f"lockd does not trust its cache directory {self.directory} ({why}): nothing is "
            "kept or taken from there, so lockd computes everything again each time; make it "
            "and the directory above it this user's, writable by nobody else and no symbolic "
            "links, or set LOCKD_CACHE_DIR",
        )
        return False

    def path(self, name: str) -> Path | None:
        """Where the entry ``name`` lies; None when it is no entry name (letters, digits, ``.``,
        ``_``, ``-``, not starting with a dot): no such entry is read or written."""
        return self.directory / name if _FILE_NAME.fullmatch(name) else None

    # -- reading --

    def _unusable(self, name: str, why: str) -> None:
        _problem(
            "entry",
            self.directory,
            f"lockd ignores a cache entry it cannot use, {self.directory / name} ({why}), and "
            f"computes it again (further entries of {self.directory} like it are not named)",
        )

    def read(self, name: str) -> bytes | None:
        """The entry's bytes (inflated when compressed); None when there is none or it cannot
        be used (not trusted, too large, unreadable: reported)."""
        path = self.path(name)
        if path is None or not self._ready(make=False):
            return None
        try:
            data = read_own_file(path, self.max_bytes)
        except UntrustedFileError as e:
            self._unusable(name, e.why)
            return None
        if data is None:
            return None
        if data[:1] == _ZLIB:
            try:
                inflated = _inflate(data, self.max_bytes)
            except zlib.error:
                inflated = None
            if inflated is None:
                self._unusable(name, "not a whole zlib stream within the limit")
            return inflated
        return data

    def load(self, name: str, fields: Mapping[str, Any]) -> dict[str, Any] | None:
        """The JSON object kept as ``name`` when it is in this store's format and has each of
        ``fields`` with that value (it is then marked used); None when there is none, it cannot
        be used (``read``; not a JSON object: reported) or it is another's (another format,
        other fields: not reported, the next ``save`` replaces it)."""
        data = self.read(name)
        if data is None:
            return None
        try:
            document = json.loads(data)
        except (ValueError, RecursionError):
            document = None
        if not isinstance(document, dict):
            self._unusable(name, "not a JSON object")
            return None
        wanted = {"format": self.format, **fields}
        if any(document.get(k) != v for k, v in wanted.items()):
            return None
        with contextlib.suppress(OSError):
            os.utime(self.directory / name)
        return document

    # -- writing --

    def write(self, name: str, data: bytes) -> bool:
        """Write ``data`` as the entry ``name`` atomically (in the directory, made if need
        be); whether it was written (a full disk, an untrusted directory: reported)."""
        path = self.path(name)
        if path is None or not self._ready(make=True):
            return False
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as e:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            _problem(
                "write",
                self.directory,
                f"cannot write to lockd's cache directory {self.directory} "
                f"({e.strerror or e}): nothing is kept, so lockd computes everything again "
                "next time; free space there or set LOCKD_CACHE_DIR",
            )
            return False
        return True

    def save(self, name: str, document: Mapping[str, Any], *, trim: bool = True) -> bool:
        """Keep ``document`` (with this store's ``format``) as ``name``: canonical JSON,
        compressed where the store is; nothing when that is more than ``max_bytes``. Then
        ``trim`` (unless not ``trim``). Whether it was written."""
        whole = {**document, "format": self.format}
        data = json.dumps(whole, separators=(",", ":"), sort_keys=True).encode()
        if self.compress and len(data) <= self.max_bytes:
            data = zlib.compress(data, 6)
        if len(data) > self.max_bytes or not self.write(name, data):
            return False
        if trim:
            self.trim()
        return True

    def trim(self) -> None:
        """Drop the least recently used entries beyond ``max_files``."""
        try:
            found = []
            with os.scandir(self.directory) as listing:
                for entry in listing:
                    if entry.name.endswith(".json") and not entry.name.startswith("."):
                        found.append((entry.stat(follow_symlinks=False).st_mtime_ns, entry.name))
        except OSError:
            return
        found.sort()
        for _, name in found[: max(0, len(found) - self.max_files)]:
            with contextlib.suppress(OSError):
                os.unlink(self.directory / name)

    # -- entries kept under a fingerprint --

    def load_entry(
        self,
        name: str,
        key: str | Callable[[Mapping[str, Any]], str | None],
        *,
        kind: str = "",
    ) -> dict[str, Any] | None:
        """The document kept as ``name`` (and ``kind``) under fingerprint ``key`` (or the one
        ``key(document)`` gives: what it must have been kept under follows from what it says
        it rests on), with its ``observed_at``; None when ``name`` is not 64 hex digits or
        there is no such document (``load``)."""
        if not ENTRY_NAME.fullmatch(name):
            return None
        document = self.load(_entry_file(name, kind), {"container": name})
        if document is None or not isinstance(document.get("observed_at"), str):
            return None
        expected = key if isinstance(key, str) else key(document)
        if expected is None or document.get("key") != expected:
            return None
        return document

    def store_entry(
        self,
        name: str,
        key: str,
        fields: Mapping[str, Any],
        *,
        kind: str = "",
        now: dt.datetime | None = None,
    ) -> None:
        """Keep ``fields`` as ``name`` (and ``kind``) under fingerprint ``key``, observed
        ``now``, for ``load_entry``; nothing when ``name`` is not 64 hex digits."""
        if not ENTRY_NAME.fullmatch(name):
            return
        moment = (now or dt.datetime.now(dt.timezone.utc)).isoformat(timespec="seconds")
        document = {**fields, "container": name, "key": key, "observed_at": moment}
        self.save(_entry_file(name, kind), document)


def _entry_file(name: str, kind: str) -> str:
    return f"{name}-{kind}.json" if kind else f"{name}.json"


def _inflate(data: bytes, max_bytes: int) -> bytes | None:
    """zlib-compressed ``data`` inflated, None when that is more than ``max_bytes`` or not one
    whole stream.

    Raises:
        zlib.error: it is no zlib stream.
    """
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, max_bytes + 1)
    complete = inflater.eof and not inflater.unused_data  # one whole stream, nothing after it
    return out if len(out) <= max_bytes and complete else None
