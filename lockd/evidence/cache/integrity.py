"""The integrity cache: a container's ``--deep`` result, taken again while nothing it rests on
changed.

``verify --deep`` hashes every file every RECORD lists (lockd.evidence.integrity); the layer cache
spares it re-reading the image's layers, but still lstat's, locates and compares each of tens of
thousands of files in Python (about 1 CPU-second for torch). For a container verified again, the
result is a function of what the probe cache fingerprints (lockd.evidence.cache.fingerprint's
``exact``: the container's upper directory, the kernel's view of its processes and mounts, the
host side of the mounts over the places the result rests on, configuration, image, the host:
all read on the host, none through /proc/PID/root), of the distributions the probe reported,
of the ignore patterns and of lockd's own code; and of the image's layer files, which the
daemon never changes but root on the host could. So the result is kept under a fingerprint of
the former, with guards for the latter (lockd.evidence.cache.guard: the size, mtime, ctime,
inode number and mode) of every lower-layer file lockd read or took from the layer cache, and
of every lower-layer directory it listed. A later ``verify --deep`` of the same container
takes the result again when the fingerprint is the same, the probe reports the same
distributions and every guard still holds (one lstat each, about 20 ms for torch); its report
says so. An identical container of the same image (the ``sibling`` fingerprint: same
configuration, same content in its upper directory, no mounts of its own) takes a sibling's
result the same way: it sees the same files. A result is kept only when nothing it rests on
changed while lockd hashed (the fingerprints before and after, and no ctime of an overlapping
mount's entry from that time).
``--no-cache`` hashes everything again; ``record`` never takes a kept result.

One zlib-compressed JSON file per container in the kept-store ``cache_root()/integrity``
(lockd.evidence.cache.store; the guarded paths and one digest of their guards: about 100 KB for
torch), at most ``MAX_FILES``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lockd.evidence.cache import fingerprint as fingerprints
from lockd.evidence.cache.fingerprint import KeyFor, Keys
from lockd.evidence.cache.guard import StatGuard, guards_digest, paths_digest
from lockd.evidence.cache.store import Store
from lockd.evidence.hashing import json_sha256
from lockd.fileio import cache_root

if TYPE_CHECKING:
    from lockd.model.environment import Distribution
    from lockd.model.host import Integrity
    from lockd.model.manifest import Observation

__all__ = [
    "FORMAT",
    "MAX_FILES",
    "Guard",
    "Kept",
    "Keys",
    "cache_dir",
    "distributions_digest",
    "guard",
    "guard_digest",
    "keys",
    "load",
    "load_first",
    "places",
    "still_standing",
    "store",
]

FORMAT = "lockd-integrity-cache/3"  # 3: places, mode in guards
MAX_FILES = 256
MAX_FILE_BYTES = 64 * 1024 * 1024

Guard = tuple[str, StatGuard]
"""A lower-layer file or directory: its host path and its guard (lockd.evidence.cache.guard)."""


@dataclass(frozen=True)
class Kept:
    """A kept result: the integrity found, when, of which distributions, resting on which
    lower-layer files and directories (``guarded``, whose guards ``guard_digest`` digests)."""

    integrity: Integrity
    observed_at: str
    distributions: str
    guarded: list[str]
    guard_digest: str

    def intact(self) -> bool:
        """Whether every guarded file and directory is still the one read then."""
        return paths_digest(self.guarded) == self.guard_digest


def cache_dir() -> Path:
    """``integrity`` under lockd.evidence.cache.store's ``cache_root()``."""
    return cache_root() / "integrity"


def _store(directory: Path | None) -> Store:
    return Store(directory or cache_dir(), FORMAT, MAX_FILE_BYTES, MAX_FILES, compress=True)


def guard(path: str, st: os.stat_result) -> Guard:
    return path, StatGuard.of(st)


def guard_digest(guards: Iterable[Guard]) -> str:
    """One digest of guards, in their order (lockd.evidence.cache.guard.guards_digest)."""
    return guards_digest(guards)


@cache
def _code() -> str:
    """A digest of the code the result depends on: lockd.evidence.integrity and
    lockd.evidence.cache.layers."""
    digest = hashlib.sha256()
    here = Path(__file__).resolve()
    for module in (
        *sorted((here.parents[1] / "integrity").glob("*.py")),
        here.with_name("layers.py"),
    ):
        digest.update(module.read_bytes())
    return digest.hexdigest()


def _inputs(ignore: Sequence[str]) -> list[list[str]]:
    """What a result depends on besides the container: lockd's code, the ignore patterns."""
    return [[FORMAT, _code()], ["--ignore", *ignore]]


def keys(attrs: dict[str, Any], ignore: Sequence[str]) -> Keys:
    """A container's fingerprints for its result (``attrs``: its inspect answer)."""
    return fingerprints.keys(attrs, _inputs(ignore))


def load_first(
    container_id: str, attrs: dict[str, Any], ignore: Sequence[str]
) -> tuple[Kept | None, Keys]:
    """(the result kept for the container or None, the fingerprints looked under): its own
    first, an identical sibling's only then (lockd.evidence.cache.fingerprint.first_kept)."""
    return fingerprints.first_kept(container_id, attrs, _inputs(ignore), load)


def places(observation: Observation) -> list[str]:
    """Where a result for ``observation`` rests: the probe's places
    (lockd.evidence.cache.fingerprint.places), its distributions' locations among them."""
    host = observation.host
    env = [f"{k}={v}" for k, v in host.config_env.items()] if host is not None else []
    return fingerprints.places(observation.probe, env)


def still_standing(
    container_id: str, before: Keys, after: Keys, attrs: dict[str, Any], found: Sequence[str]
) -> list[tuple[str, str]]:
    """lockd.evidence.cache.fingerprint.still_standing: where to keep a result resting on
    ``found``."""
    return fingerprints.still_standing(container_id, before, after, attrs, found)


def distributions_digest(distributions: Iterable[Distribution]) -> str:
    """What of the probe's distributions a result rests on: names, locations, RECORDs."""
    return json_sha256(sorted((d.name, d.location, d.record_sha256 or "") for d in distributions))


def load(
    container_id: str, fingerprint: str | KeyFor, directory: Path | None = None
) -> Kept | None:
    """The result kept for the container under ``fingerprint`` (or the one ``fingerprint(the
    document)`` gives); None when there is none, it was kept under another, or the file is not
    trusted or not in the format."""
    from lockd.model.host import Integrity

    document = _store(directory).load_entry(container_id, fingerprint)
    if document is None:
        return None
    distributions = document.get("distributions")
    if not isinstance(distributions, str):
        return None
    guarded, digest = document.get("guarded"), document.get("guard_digest")
    if not (isinstance(guarded, list) and all(isinstance(p, str) for p in guarded)):
        return None
    if not isinstance(digest, str):
        return None
    try:
        integrity = Integrity.model_validate(document["integrity"])
    except (ValueError, TypeError, KeyError):  # pydantic's ValidationError is a ValueError
        return None
    return Kept(integrity, document["observed_at"], distributions, guarded, digest)


def store(
    container_id: str,
    fingerprint: str,
    integrity: Integrity,
    distributions: str,
    guards: Sequence[Guard],
    found: Sequence[str] = (),
    directory: Path | None = None,
    now: dt.datetime | None = None,
) -> None:
    """Keep a container's result under ``fingerprint``, with the places it rests on
    (``found``: ``places``). Failing to write is not an error: the cache is an
    optimisation."""
    fields = {
        "places": list(found),
        "distributions": distributions,
        "integrity": integrity.model_dump(mode="json", exclude_none=True),
        "guarded": [path for path, _ in guards],
        "guard_digest": guards_digest(guards),
    }
    _store(directory).store_entry(container_id, fingerprint, fields, now=now)
