"""The integrity check: every RECORD of a source read, every listed file hashed in a thread
pool (largest first), unlisted files of a distribution's own directories reported."""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lockd.evidence.integrity.hosttree import Source, TooLargeError
from lockd.evidence.integrity.records import (
    CHUNK,
    MAP_MIN,
    MAX_FINDINGS,
    MAX_METADATA_HEAD,
    MAX_RECORD_BYTES,
    FileState,
    RecordRow,
    clip_text,
    is_under,
    metadata_name,
    own_directories,
    parse_record,
    row_finding,
)
from lockd.judgement.policy import DEFAULT_IGNORE, matches
from lockd.model.base import normalise_name
from lockd.model.environment import Distribution
from lockd.model.host import Integrity
from lockd.model.report import Finding

if TYPE_CHECKING:
    pass


_BATCH_BYTES = 4 * 1024 * 1024
_BATCH_FILES = 32


# --- the check ----------------------------------------------------------------------------------


@dataclass
class Dist:
    name: str
    location: str
    record_path: str
    rows: list[RecordRow]


class ProgressBar:
    """A progress bar (bytes hashed) on stderr when stderr is a terminal; else nothing."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.done = 0
        self._bar: Any = None
        self._task: Any = None
        self._lock = threading.Lock()

    def show(self, description: str, total: int | None) -> None:
        if not self.enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        with self._lock:
            if self._bar is None:
                self._bar = Progress(
                    TextColumn("{task.description}"),
                    BarColumn(),
                    DownloadColumn(),
                    TransferSpeedColumn(),
                    TimeRemainingColumn(),
                    console=Console(stderr=True),
                    transient=True,
                )
                self._bar.start()
                self._task = self._bar.add_task(description, total=total, completed=self.done)
            else:
                self._bar.update(self._task, description=description, total=total)

    def advance(self, amount: int) -> None:
        with self._lock:
            self.done += amount
            if self._bar is not None:
                self._bar.update(self._task, completed=self.done)

    def stop(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.stop()
                self._bar = None


def _workers() -> int:
    """One hashing thread per core this process may run on (at least 2, at most 16)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(2, min(16, cores))


_Job = tuple[str, str, int]  # path, algorithm, size listed


class Hasher:
    """Hashes (path, algorithm) jobs, each once: the large files one per task in ``pools``'
    first pool (its threads hash in parallel: hashlib lets go of the GIL), largest first; the
    small ones in batches in the second, one thread (their cost is Python's, under the GIL: a
    second thread only contends for it, measured +35% CPU). Keeps every state for whoever asks
    later (the probe names its locations after hashing began)."""

    def __init__(
        self,
        source: Source,
        pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor],
        progress: ProgressBar,
    ) -> None:
        self.source = source
        self.pools = pools
        self.progress = progress
        self.states: dict[tuple[str, str], FileState] = {}
        self.batches: dict[tuple[str, str], Future[None]] = {}
        self.sizes: dict[tuple[str, str], int] = {}
        self._local = threading.local()

    def _run(self, directory: str, batch: list[_Job]) -> None:
        """Hash a batch of files of one directory."""
        buffer: bytearray | None = getattr(self._local, "buffer", None)
        if buffer is None:
            buffer = self._local.buffer = bytearray(CHUNK)
        names = [(path.rpartition("/")[2], algorithm) for path, algorithm, _ in batch]
        states = self.source.hash_many(directory, names, buffer)
        for (path, algorithm, size), state in zip(batch, states, strict=True):
            self.states[(path, algorithm)] = state
            if self.source.on_bytes is None:  # an archive source tells of its bytes itself
                self.progress.advance(size)

    def submit(self, jobs: Iterable[_Job]) -> None:
        fresh: list[_Job] = []
        for job in jobs:
            key = (job[0], job[1])
            known = self.batches.get(key)
            if known is None or known.cancelled():
                self.sizes[key] = job[2]
                self.batches[key] = _PENDING
                fresh.append(job)
        # the largest files first, each alone; then the small ones, a directory at a time
        fresh.sort(key=lambda job: -job[2])
        split = next((i for i, job in enumerate(fresh) if job[2] < MAP_MIN), len(fresh))
        batches = [[job] for job in fresh[:split]]
        by_directory: dict[str, list[_Job]] = {}
        for job in fresh[split:]:
            by_directory.setdefault(job[0].rpartition("/")[0], []).append(job)
        for jobs_here in by_directory.values():
            batch: list[_Job] = []
            weight = 0
            for job in jobs_here:
                batch.append(job)
                weight += job[2]
                if weight >= _BATCH_BYTES or len(batch) >= _BATCH_FILES:
                    batches.append(batch)
                    batch, weight = [], 0
            if batch:
                batches.append(batch)
        large, small = self.pools
        for batch in batches:
            pool = large if batch[0][2] >= MAP_MIN else small
            future = pool.submit(self._run, batch[0][0].rpartition("/")[0], batch)
            for path, algorithm, _ in batch:
                self.batches[(path, algorithm)] = future

    def cancel(self, keep: Callable[[str], bool]) -> None:
        """Cancel the batches not begun that hold only paths ``keep`` rejects."""
        kept = {id(f) for (path, _), f in self.batches.items() if keep(path)}
        for future in set(self.batches.values()):
            if id(future) not in kept:
                future.cancel()

    def state(self, path: str, algorithm: str) -> FileState:
        """Raises what hashing raised that is not an OSError or a LockdError (a bug)."""
        key = (path, algorithm)
        if key not in self.states:
            self.batches[key].result()
        return self.states[key]


_PENDING: Future[None] = Future()


@contextmanager
def hashing_pools(
    workers: int | None = None,
) -> Iterator[tuple[ThreadPoolExecutor, ThreadPoolExecutor]]:
    """Hasher's pools: (large files, small files)."""
    with (
        ThreadPoolExecutor(workers or _workers(), thread_name_prefix="lockd-hash") as large,
        ThreadPoolExecutor(1, thread_name_prefix="lockd-hash-small") as small,
    ):
        yield large, small


@dataclass
class EarlyHashes:
    """What DeepTarget read before the probe named the distributions, kept for reuse: the
    metadata directories of each location, RECORDs (bytes and rows), directory walks."""

    dist_infos: dict[str, dict[str, str]] = field(default_factory=dict)
    records: dict[str, bytes] = field(default_factory=dict)
    rows: dict[tuple[str, str], tuple[list[RecordRow], list[Finding]]] = field(default_factory=dict)
    walks: dict[str, list[str]] = field(default_factory=dict)


def find_dist_infos(source: Source, location: str) -> dict[str, str]:
    """{normalised name: metadata directory} in ``location``; where a name repeats, the first
    in sorted order, as the probe reports it."""
    found: dict[str, str] = {}
    for entry in source.list_dir(location) or []:
        if not entry.lower().endswith((".dist-info", ".egg-info")):
            continue
        directory = f"{location.rstrip('/')}/{entry}"
        for metadata in ("METADATA", "PKG-INFO"):
            try:
                head = source.read(f"{directory}/{metadata}", MAX_METADATA_HEAD, head=True)
            except OSError:
                head = None
            if head is not None:
                name = metadata_name(head)
                if name:
                    found.setdefault(normalise_name(name), directory)
                break
    return found


def _read_records(
    source: Source, dists: Sequence[Distribution], early: EarlyHashes
) -> tuple[list[Dist], list[Finding]]:
    """Each distribution's RECORD as the source shows it, checked against the probe's sha256."""
    findings: list[Finding] = []
    loaded: list[Dist] = []
    directories = dict(early.dist_infos)
    for dist in dists:
        if dist.location not in directories:
            directories[dist.location] = find_dist_infos(source, dist.location)
        directory = directories[dist.location].get(dist.name)
        record_path = f"{directory}/RECORD" if directory else None
        problem: Finding | None = None
        data = None
        try:
            if record_path is not None and record_path in early.records:
                data = early.records[record_path]
            elif record_path is not None:
                data = source.read(record_path, MAX_RECORD_BYTES)
        except TooLargeError:
            problem = Finding(
                kind="record-malformed",
                message=f"{record_path} is larger than {MAX_RECORD_BYTES // 2**20} MiB",
            )
        except OSError as e:
            problem = Finding(kind="unreadable", message=f"cannot read it: {e.strerror or e}")
        if problem is None and data is None:
            problem = Finding(
                kind="record-missing",
                message=f"the probe reports {dist.name} {dist.version} with a RECORD in "
                f"{dist.location}; {source.description} shows none",
            )
        if problem is not None:
            update = {"name": dist.name, "path": clip_text(record_path or dist.location)}
            findings.append(problem.model_copy(update=update))
            continue
        assert data is not None and record_path is not None
        seen = hashlib.sha256(data).hexdigest()
        if seen != dist.record_sha256:
            findings.append(
                Finding(
                    kind="record-mismatch",
                    name=dist.name,
                    path=clip_text(record_path),
                    expected=dist.record_sha256,
                    observed=seen,
                    message="the RECORD lockd read is not the one the probe reported "
                    "(it changed meanwhile, or the probe does not see the target's files)",
                )
            )
        parsed = early.rows.get((record_path, dist.location))
        rows, malformed = parsed or parse_record(data, record_path, dist.location)
        findings += [f.model_copy(update={"name": dist.name}) for f in malformed]
        loaded.append(Dist(dist.name, dist.location, record_path, rows))
    return loaded, findings


def hash_jobs(dists: Iterable[Dist]) -> list[_Job]:
    return [
        (row.path, row.algorithm, row.size or 0)
        for dist in dists
        for row in dist.rows
        if row.algorithm is not None
    ]


def owners_of(dists: Sequence[Dist]) -> dict[str, str]:
    """{own directory: the distribution it belongs to (the first by name)}; a directory inside
    another's is left out (walked with it)."""
    owners: dict[str, str] = {}
    for dist in sorted(dists, key=lambda d: d.name):
        for directory in own_directories(dist.rows, dist.location):
            owners.setdefault(directory, dist.name)
    return {
        directory: name
        for directory, name in owners.items()
        if not any(is_under(directory, other) for other in owners if other != directory)
    }


def _unlisted(
    source: Source, dists: Sequence[Dist], ignore: Sequence[str], early: EarlyHashes
) -> list[Finding]:
    """Files in the distributions' own directories that no RECORD lists."""
    listed: set[str] = set()
    for dist in dists:
        listed.update(row.path for row in dist.rows)
        listed.add(dist.record_path)
    owners = owners_of(dists)
    patterns = list(ignore)
    findings = []
    for directory in sorted(owners):
        walked = early.walks.get(directory)
        for path in source.files(directory) if walked is None else walked:
            if path not in listed and not matches(path, patterns):
                findings.append(
                    Finding(
                        kind="unlisted",
                        name=owners[directory],
                        path=clip_text(path),
                        message=f"in {owners[directory]}'s directory but in no RECORD",
                    )
                )
    return findings


def run_check(
    source: Source,
    distributions: Sequence[Distribution],
    ignore: Sequence[str],
    hasher: Hasher,
    early: EarlyHashes | None = None,
) -> Integrity:
    with_record = [d for d in distributions if d.record_sha256 is not None]
    if source.on_bytes is not None:
        hasher.progress.show(f"lockd: streaming {source.description}", None)
    source.prepare(sorted({d.location for d in with_record}))
    early = early or EarlyHashes()
    dists, findings = _read_records(source, with_record, early)
    jobs = hash_jobs(dists)
    hasher.submit(jobs)
    if source.on_bytes is None:
        hasher.progress.show(
            f"lockd: hashing {len(jobs)} files ({source.kind})", sum(hasher.sizes.values())
        )
    findings += _unlisted(source, dists, ignore, early)
    hashed = [
        (dist.name, row, hasher.state(row.path, row.algorithm))
        for dist in dists
        for row in dist.rows
        if row.algorithm is not None
    ]
    changed = source.changed_meanwhile()  # asked once every file is hashed
    unhashed = sum(row.algorithm is None for dist in dists for row in dist.rows)
    files = total = 0
    for name, row, hashed_state in hashed:
        state = (
            FileState("unstable", message="the target wrote over it while lockd hashed it")
            if row.path in changed
            else hashed_state
        )
        files += 1
        total += state.size or 0
        finding = row_finding(name, row, state)
        if finding is not None:
            findings.append(finding)
    findings.sort(key=lambda f: (f.path or "", f.kind, f.name or ""))
    return Integrity(
        source=source.kind,
        evidence=source.evidence,
        distributions=len(dists),
        files=files,
        bytes=total,
        cached=min(files, source.cached_files()),
        unhashed=unhashed,
        without_record=sorted(d.name for d in distributions if d.record_sha256 is None),
        findings=findings[:MAX_FINDINGS],
        omitted=max(0, len(findings) - MAX_FINDINGS),
    )


def check_files(
    source: Source,
    distributions: Sequence[Distribution],
    *,
    ignore: Sequence[str] = DEFAULT_IGNORE,
    progress: bool | None = None,
    workers: int | None = None,
) -> Integrity:
    """Hash every file the RECORDs of ``distributions`` (the probe's) list, as ``source``
    shows them, and report those that disagree. ``ignore``: patterns (policy syntax) of
    unlisted files not to report. A progress bar shows on stderr when ``progress`` (None:
    when stderr is a terminal)."""
    bar = ProgressBar(progress)
    source.on_bytes = bar.advance if source.kind == "api" else None
    try:
        with hashing_pools(workers) as pools:
            return run_check(source, distributions, ignore, Hasher(source, pools, bar))
    finally:
        bar.stop()
