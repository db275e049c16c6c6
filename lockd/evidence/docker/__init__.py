"""The one Docker interface the rest of lockd uses (lockd.evidence.docker.interface): ``Docker``,
made by ``connect()``; the errors every call raises; the stream an exec hands back and
``read_frames`` to read it. No module outside this package imports the docker SDK or knows
which transport answered."""

from lockd.evidence.docker.base import (
    ARCHIVE_CHUNK,
    Archive,
    DaemonError,
    Events,
    NotFoundError,
    Stream,
    UnreachableError,
    UnsupportedHostError,
    cause,
    read_frames,
)
from lockd.evidence.docker.interface import Docker, connect, failing

__all__ = [
    "ARCHIVE_CHUNK",
    "Archive",
    "DaemonError",
    "Docker",
    "Events",
    "NotFoundError",
    "Stream",
    "UnreachableError",
    "UnsupportedHostError",
    "cause",
    "connect",
    "failing",
    "read_frames",
]
