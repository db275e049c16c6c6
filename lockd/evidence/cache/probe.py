"""The probe cache: a container's probe report, asked for once and taken again while nothing
the probe can see has changed.

The probe imports torch (and, for --deep, the PyTorch family) inside the container: 2-3
CPU-seconds on every verification, most of what ``lockd verify <container>`` costs. What it
reports is a function of what its process sees, and lockd reads all of that on the host side
(trusted evidence), from places the container cannot redirect, into one fingerprint
(lockd.evidence.cache.fingerprint: ``exact`` for the container itself, ``sibling`` for an
identical container of the same image, which then takes the report a sibling's probe made).

The report's bytes are kept, with the places it rests on (``places``), under the fingerprint
taken before the probe ran, and only when the one taken after it ran is the same and no entry
of an overlapping mount changed meanwhile (``still_standing``). A later verification takes them
again when the fingerprint is still the same, and says so: the report's checks rest on inside
evidence either way, what the container said about itself, and reusing it adds nothing the
container could steer (the decision rests on host evidence only). ``--no-cache`` asks the probe
again. One JSON file per container (or sibling fingerprint) and probe command line
(``variant``) in the kept-store ``cache_root()/probe`` (lockd.evidence.cache.store), at most
``MAX_FILES``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lockd.evidence.cache.fingerprint import (
    KeyFor,
    Keys,
    first_kept,
    keys,
    places,
    still_standing,
)
from lockd.evidence.cache.store import Store
from lockd.evidence.hashing import json_sha256
from lockd.fileio import cache_root

__all__ = [
    "FORMAT",
    "MAX_FILES",
    "CachedProbe",
    "KeyFor",
    "Keys",
    "cache_dir",
    "first_kept",
    "keys",
    "load",
    "places",
    "still_standing",
    "store",
    "variant",
]

FORMAT = "lockd-probe-cache/2"
MAX_FILES = 256
"""Containers whose last report is kept."""
MAX_FILE_BYTES = 32 * 1024 * 1024  # the probe's output is capped at 16 MiB


@dataclass(frozen=True)
class CachedProbe:
    stdout: bytes
    python: str  # the interpreter that ran it
    observed_at: str


def cache_dir() -> Path:
    """``probe`` under lockd.evidence.cache.store's ``cache_root()``."""
    return cache_root() / "probe"


def _store(directory: Path | None) -> Store:
    return Store(directory or cache_dir(), FORMAT, MAX_FILE_BYTES, MAX_FILES)


def variant(inputs: Sequence[Sequence[str]]) -> str:
    """A short name for the probe's command lines: a container's reports for different ones
    (``verify`` and ``verify --deep``) are kept side by side."""
    return json_sha256([list(argv) for argv in inputs])[:16]


def load(
    container_id: str, key: str | KeyFor, *, kind: str = "", directory: Path | None = None
) -> CachedProbe | None:
    """The report kept for the container under fingerprint ``key`` (or the one ``key(the
    document)`` gives); None when there is none, it was kept under another fingerprint, or the
    file is not trusted or not in the format."""
    document = _store(directory).load_entry(container_id, key, kind=kind)
    if document is None:
        return None
    stdout, python = document.get("stdout"), document.get("python")
    if not (isinstance(stdout, str) and isinstance(python, str)):
        return None
    return CachedProbe(stdout.encode(), python, document["observed_at"])


def store(
    container_id: str,
    key: str,
    stdout: bytes,
    python: str,
    found: Sequence[str] = (),
    *,
    kind: str = "",
    directory: Path | None = None,
    now: dt.datetime | None = None,
) -> None:
    """Keep the report (the probe's stdout) for the container under fingerprint ``key``,
    with the places it rests on (``found``: ``places``); ``kind``: the probe's ``variant``.
    Failing to write is not an error: the cache is an optimisation."""
    try:
        text = stdout.decode("utf-8")
    except UnicodeDecodeError:
        return  # the probe prints JSON with ASCII escapes: this is no report to keep
    fields = {"python": python, "stdout": text, "places": list(found)}
    _store(directory).store_entry(container_id, key, fields, kind=kind, now=now)
