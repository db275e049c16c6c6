"""The on-disk queue of batches for the service: every batch is written (atomically, fsynced)
before it is sent, sent oldest first, and removed only once the service acknowledged it, so
a restart of the agent or of the service loses none and repeats none that was applied (the
service ignores a sequence number it has applied already).

Layout of the spool directory::

    agent          this agent's id (32 hex), made once: batches are numbered per agent
    sequence       the last sequence number handed out (never reused, even when lost)
    queue/         <sequence, 19 digits>.json: FleetBatch documents waiting for the service
    quarantine/    batches that cannot be read or that the service refused, with a .why note
    manifests/     the manifest cache (lockd.watch.verifier)

The queue is bounded (``max_batches``, ``max_bytes``). Past the bound it compacts instead of
dropping reports: first it removes the oldest batch that carries no verdicts (its ``running``
list is superseded by every later batch), then it merges the two oldest batches into one
(newer verdicts win per container). Each compaction is logged and counted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from lockd.errors import InputError
from lockd.fileio import UntrustedFileError, read_own_file, untrusted_directory, write_atomic
from lockd.model.fleet import MAX_RESULTS, FleetBatch

log = logging.getLogger("lockd.watch")

MAX_BATCHES = 4096
MAX_BYTES = 256 * 1024 * 1024
MAX_BATCH_FILE = 64 * 1024 * 1024
_NAME = re.compile(r"^(\d{19})\.json$")
_AGENT = re.compile(r"^[0-9a-f]{32}$")

__all__ = ["Spool", "SpoolError", "merge_batches"]


class SpoolError(InputError):
    """The spool directory cannot be used (exit 2): unwritable, or its state files are corrupt."""


@dataclass
class _Entry:
    has_results: bool
    size: int


def merge_batches(older: FleetBatch, newer: FleetBatch) -> tuple[FleetBatch, int]:
    """One batch standing for both (the newer's sequence, time and running list; every verdict
    of both, the newer's winning per container) and how many verdicts did not fit. Pure."""
    newer_ids = {r.container.id for r in newer.results}
    kept = [r for r in older.results if r.container.id not in newer_ids]
    results = [*kept, *newer.results]
    lost = max(0, len(results) - MAX_RESULTS)
    merged = newer.model_copy(update={"results": results[lost:]})
    return merged, lost


class Spool:
    def __init__(
        self, directory: Path, *, max_batches: int = MAX_BATCHES, max_bytes: int = MAX_BYTES
    ) -> None:
        """Open (or make) the spool in ``directory``.

        Raises:
            SpoolError: the directory cannot be made or written, or ``agent`` / ``sequence``
                is corrupt.
        """
        self.directory = directory
        self.queue = directory / "queue"
        self.quarantined_dir = directory / "quarantine"
        self.max_batches = max(2, max_batches)
        self.max_bytes = max_bytes
        self.quarantined = 0  # batches moved aside since start
        self.dropped = 0  # heartbeat-only batches removed past the bound
        self.merged = 0  # pairs of batches merged past the bound
        self.lost_results = 0  # verdicts that did not fit a merged batch
        self._lock = threading.Lock()
        self._busy: int | None = None  # the sequence being delivered: not compacted
        try:
            self.queue.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.quarantined_dir.mkdir(mode=0o700, exist_ok=True)
        except OSError as e:
            raise SpoolError(f"{directory}: cannot make the spool directory: {e.strerror}") from e
        for inner in (directory, self.queue, self.quarantined_dir):  # each with the one above
            distrust = untrusted_directory(inner)
            if distrust is not None:
                where, why = distrust
                raise SpoolError(
                    f"{where}: not trusted as the spool ({why}): whoever may write there could "
                    "send verdicts as this agent; make it this user's, writable by nobody else "
                    "and no symbolic link"
                )
        self.agent = self._agent_id()
        self._entries: dict[int, _Entry] = {}
        self._scan()
        self._sequence = max([self._read_sequence(), *self._entries])

    # --- state files ------------------------------------------------------------------------

    def _agent_id(self) -> str:
        path = self.directory / "agent"
        text = self._state(path, "the agent id")
        if text is None:
            agent = secrets.token_hex(16)
            self._write(path, agent.encode() + b"\n")
            return agent
        if not _AGENT.match(text):
            raise SpoolError(
                f"{path}: corrupt agent id {text[:40]!r} (expected 32 hex digits); the batches "
                f"queued here cannot be attributed: move {self.directory} aside to start as a "
                "new agent"
            )
        return text

    def _read_sequence(self) -> int:
        path = self.directory / "sequence"
        text = self._state(path, "the last sequence number")
        if text is None:
            return 0
        if not text.isdigit():
            raise SpoolError(
                f"{path}: corrupt sequence number {text[:40]!r}; the service would ignore "
                f"batches numbered again from an old point: move {self.directory} aside to "
                "start as a new agent"
            )
        return int(text)

    @staticmethod
    def _state(path: Path, what: str) -> str | None:
        """A state file's text; None when there is none."""
        try:
            data = read_own_file(path, 64)
            return None if data is None else data.decode("ascii").strip()
        except UntrustedFileError as e:
            raise SpoolError(f"{path}: cannot read {what}: {e.why}") from e
        except UnicodeDecodeError as e:
            raise SpoolError(f"{path}: cannot read {what}: {e}") from e

    def _write(self, path: Path, data: bytes) -> None:
        try:
            write_atomic(path, data, force=True, mode=0o600)
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except (InputError, OSError) as e:
            raise SpoolError(f"{path}: cannot write the spool: {e}") from e

    # --- the queue --------------------------------------------------------------------------

    def _path(self, sequence: int) -> Path:
        return self.queue / f"{sequence:019d}.json"

    def _scan(self) -> None:
        """Index the queue; anything that is not a batch file is moved to quarantine."""
        for name in sorted(os.listdir(self.queue)):
            path = self.queue / name
            if name.startswith(".") and name.endswith(".tmp"):
                path.unlink(missing_ok=True)  # a write cut short by a crash: never queued
                continue
            match = _NAME.match(name)
            if match is None:
                self._quarantine(path, "not a batch file name")
                continue
            batch = self._read(int(match.group(1)))
            if batch is not None:
                self._entries[batch.sequence] = _Entry(bool(batch.results), path.stat().st_size)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def size_bytes(self) -> int:
        with self._lock:
            return sum(e.size for e in self._entries.values())

    def sequences(self) -> list[int]:
        with self._lock:
            return sorted(self._entries)

    def append(self, make: Callable[[int], FleetBatch]) -> FleetBatch:
        """Number the next batch (``make(sequence)``), write it, then keep the queue in bounds.

        Raises:
            SpoolError: it cannot be written (a full disk): the caller keeps its verdicts.
        """
        with self._lock:
            sequence = self._sequence + 1
            batch = make(sequence)
            data = batch.model_dump_json(exclude_none=True).encode("utf-8")
            self._write(self.directory / "sequence", b"%d\n" % sequence)
            self._sequence = sequence
            self._write(self._path(sequence), data)
            self._entries[sequence] = _Entry(bool(batch.results), len(data))
            self._compact()
        return batch

    def _read(self, sequence: int) -> FleetBatch | None:
        """The batch, or None after moving a corrupt file to quarantine (logged, counted)."""
        path = self._path(sequence)
        try:
            data = read_own_file(path, MAX_BATCH_FILE)
        except UntrustedFileError as e:
            self._quarantine(path, f"cannot be read: {e.why}")
            return None
        if data is None:
            return None
        try:
            batch = FleetBatch.model_validate_json(data)
        except ValidationError as e:
            first = e.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "(document)"
            self._quarantine(path, f"not a FleetBatch: {where}: {first['msg']}")
            return None
        if batch.sequence != sequence or batch.agent != self.agent:
            self._quarantine(
                path,
                f"holds sequence {batch.sequence} of agent {batch.agent}, not {sequence} of "
                f"{self.agent}",
            )
            return None
        return batch

    def load(self, sequence: int) -> FleetBatch | None:
        """The queued batch ``sequence`` (marked busy: compaction leaves it alone until
        ``done`` or ``release``); None when it is corrupt (quarantined) or gone."""
        with self._lock:
            batch = self._read(sequence)
            if batch is None:
                self._entries.pop(sequence, None)
            else:
                self._busy = sequence
            return batch

    def release(self) -> None:
        with self._lock:
            self._busy = None

    def done(self, sequence: int) -> None:
        """The service acknowledged ``sequence``: remove it."""
        with self._lock:
            self._path(sequence).unlink(missing_ok=True)
            self._entries.pop(sequence, None)
            self._busy = None

    def reject(self, sequence: int, why: str) -> None:
        """The service refused ``sequence`` for good (a 4xx about the body): quarantine it."""
        with self._lock:
            self._quarantine(self._path(sequence), f"refused by the service: {why}")
            self._entries.pop(sequence, None)
            self._busy = None

    def _quarantine(self, path: Path, why: str) -> None:
        target = self.quarantined_dir / path.name
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, target)
            (self.quarantined_dir / (path.name + ".why")).write_text(why + "\n", encoding="utf-8")
        self.quarantined += 1
        log.error("spool: %s %s; moved to %s (not sent)", path, why, target)

    def _compact(self) -> None:
        def over() -> bool:
            total = sum(e.size for e in self._entries.values())
            return len(self._entries) > self.max_batches or total > self.max_bytes

        while over():
            free = [s for s in sorted(self._entries) if s != self._busy]
            if len(free) < 2:
                return
            heartbeat = next((s for s in free[:-1] if not self._entries[s].has_results), None)
            if heartbeat is not None:
                self._path(heartbeat).unlink(missing_ok=True)
                del self._entries[heartbeat]
                self.dropped += 1
                continue
            older, newer = free[0], free[1]
            first, second = self._read(older), self._read(newer)
            if first is None or second is None:
                for gone, batch in ((older, first), (newer, second)):
                    if batch is None:
                        self._entries.pop(gone, None)
                continue
            merged, lost = merge_batches(first, second)
            data = merged.model_dump_json(exclude_none=True).encode("utf-8")
            self._write(self._path(newer), data)
            self._path(older).unlink(missing_ok=True)
            del self._entries[older]
            self._entries[newer] = _Entry(bool(merged.results), len(data))
            self.merged += 1
            self.lost_results += lost
            log.warning(
                "spool: over its bound (%d batches, %d bytes): merged batch %d into %d%s",
                self.max_batches,
                self.max_bytes,
                older,
                newer,
                f", {lost} verdicts did not fit" if lost else "",
            )
