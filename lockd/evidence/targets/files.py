"""A Docker target's files for ``--deep`` (Target.files): the overlay2 directories the daemon
reports, when this host can read them, and the daemon's archive API (``docker cp``) where it
cannot.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

from lockd.errors import TargetError
from lockd.evidence.docker import Archive, DaemonError, Docker, NotFoundError, cause, failing

__all__ = ["fetch_archive", "overlay_dirs", "readable_dir"]


def overlay_dirs(attrs: dict[str, Any]) -> tuple[str | None, list[str]]:
    """(merged directory, layer directories top first) of a container's or an image's
    overlay2 storage as the daemon reports them; (None, []) for another storage driver."""
    driver = attrs.get("GraphDriver") or {}
    if driver.get("Name") != "overlay2":
        return None, []
    data = driver.get("Data") or {}
    layers = [str(data["UpperDir"])] if data.get("UpperDir") else []
    layers += [p for p in str(data.get("LowerDir") or "").split(":") if p]
    merged = data.get("MergedDir")
    return (str(merged) if merged else None), layers


def readable_dir(path: str) -> bool:
    return os.path.isdir(path) and os.access(path, os.R_OK | os.X_OK)


def _archive_stream(chunks: Iterable[bytes], what: str) -> Iterator[bytes]:
    """The chunks, with what the daemon raises while they arrive made a TargetError."""
    try:
        yield from chunks
    except (DaemonError, OSError) as e:
        raise TargetError(f"{what}: {cause(e)}") from e


def fetch_archive(docker: Docker, container: str, path: str, what: str) -> Archive | None:
    """``path`` in ``container`` as the daemon's tar stream, None when nothing is there;
    ``what`` starts every error.

    Raises:
        TargetError: the daemon failed (also while the stream arrives).
    """
    with failing(what):
        try:
            chunks, info = docker.get_archive(container, path)
        except NotFoundError:
            return None
    return _archive_stream(chunks, what), info
