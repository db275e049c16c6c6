"""SQLite's one writer at a time, queued without polling.

SQLite makes a second writer wait in its busy handler, which sleeps and retries (1, 2, 5, 10
... up to 100 ms a try): with several writers that is milliseconds lost per conflict, on the
event loop of a server that writes inline. So lockd's writers queue before they begin: threads
of one process on a lock, processes (``lockd serve --workers N`` on one database file) on an
``flock`` of a file beside the database, ``<database>-writer``, which the kernel hands to the
next waiter the moment it is released. The busy handler then only meets writers that are not
lockd servers (``lockd token create``). Where there is no ``fcntl`` (Windows) or the file cannot
be made, processes fall back to the busy handler.
"""

from __future__ import annotations

import os
import threading
from types import TracebackType

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["WriteLock"]


class WriteLock:
    """A context manager: held by one thread of one process at a time (see the module)."""

    def __init__(self, database: str | None) -> None:
        self._threads = threading.Lock()
        self._path = database + "-writer" if database and fcntl is not None else None
        self._fd: int | None = None
        self._pid = 0

    def __enter__(self) -> None:
        self._threads.acquire()
        try:
            fd = self._descriptor()
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            self._threads.release()
            raise

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def _descriptor(self) -> int | None:
        """The lock file, opened once per process (a forked child opens its own: an flock is
        shared by every descriptor copied from one open)."""
        if self._path is None:
            return None
        if self._fd is None or self._pid != os.getpid():
            try:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError:
                self._path = self._fd = None  # e.g. a read-only folder: the busy handler alone
                return None
            self._pid = os.getpid()
        return self._fd

    def close(self) -> None:
        with self._threads:
            if self._fd is not None and self._pid == os.getpid():
                os.close(self._fd)
            self._fd = None
