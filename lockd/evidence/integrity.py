"""Deep integrity (``--deep``): every file a distribution's RECORD lists, hashed again.

A RECORD (PEP 376, the wheel spec) lists each file the installer wrote with its digest
(``sha256=<urlsafe base64, no padding>``) and size. lockd reads every RECORD of the target,
hashes every file it lists with a hash (the RECORD itself and ``.pyc`` files carry none and are
skipped) and reports, under the check ``integrity``:

* ``modified``: a file whose digest or size differs, or that is no longer a regular file;
* ``missing``: a listed file that is gone;
* ``unlisted``: a file inside a distribution's own top-level directories (``torch/``,
  ``torch-2.13.0+cpu.dist-info/``) that no RECORD lists, unless the policy's filesystem ignore
  patterns cover it (``**/__pycache__/**`` by default);
* ``unstable``: a file written to or replaced while lockd hashed it; ``unreadable``;
* ``record-malformed`` (naming the RECORD and the line), ``record-missing``,
  ``record-mismatch`` (the RECORD lockd read is not the one the probe reported).

Where the bytes come from (``Integrity.source``), most trusted first:

* ``overlay``: a running container's overlay2 merged directory, read on the Docker host (lockd
  running there as root): the container cannot lie about it;
* ``layers``: an image's overlay2 layer directories, merged as overlayfs merges them
  (whiteouts, opaque directories), without starting anything;
* ``api``: the Docker daemon's archive API (what ``docker cp`` uses), a tar stream hashed as it
  arrives, where lockd cannot read the daemon's storage (not root, a remote daemon, another
  storage driver). ``LOCKD_DEEP_SOURCE=api`` forces it;
* ``local``: the local environment's own files (evidence from inside).

The probe says where each distribution lives and the sha256 of its RECORD; lockd reads the
RECORD itself from the same place as the files and reports when the two differ. Symbolic links
are resolved inside the target's root, never on the host, and a file opened in a running
container's merged directory is checked to be the file meant (a directory swapped for a link
meanwhile cannot redirect lockd to a file of the host).

Files of an image's read-only layers read on the host (``overlay``, ``layers``) go through the
layer cache (lockd.evidence.cache.layers: digests keyed by layer chain ID and path, guarded by size,
mtime, ctime and inode); a container's own writes (its upper directory) are always hashed, and
``Integrity.cached`` counts the digests taken from the cache. ``--no-cache`` hashes every file.

Hashing runs in a thread pool (hashlib releases the GIL on large buffers), reads 1 MiB at a
time into one buffer per thread and starts with the largest files. ``DeepTarget`` overlaps it
with the probe: the distributions of the usual site-packages directories are hashed while the
probe still runs, and the results kept for the locations the probe then names.
"""

from __future__ import annotations

import base64
import csv
import glob
import hashlib
import io
import mmap
import os
import posixpath
import re
import stat
import sys
import tarfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

from lockd.errors import LockdError, RefusedError, TargetError
from lockd.evidence.cache import integrity as integritycache
from lockd.evidence.cache.integrity import Guard, guard
from lockd.evidence.cache.layers import DigestCache, LayerView, cache_dir, container_layer_keys
from lockd.evidence.overlay import is_opaque, is_whiteout
from lockd.judgement.policy import DEFAULT_IGNORE, matches
from lockd.model.base import normalise_name
from lockd.model.environment import Distribution
from lockd.model.host import Integrity, IntegritySource
from lockd.model.report import Finding

if TYPE_CHECKING:
    from lockd.evidence.targets.base import HostFiles, ProbeOptions, Running, Target
    from lockd.model.host import TargetInfo
    from lockd.model.manifest import Observation

__all__ = [
    "CHUNK",
    "MAX_FINDINGS",
    "ArchiveSource",
    "DeepTarget",
    "FileState",
    "HostTree",
    "Row",
    "Source",
    "check_files",
    "deepen",
    "describe",
    "digest_text",
    "open_source",
    "own_directories",
    "parse_record",
    "require_intact",
    "row_finding",
]

CHUNK = 1024 * 1024
"""Bytes read (and hashed) at a time."""

MAX_RECORD_BYTES = 64 * 1024 * 1024
"""A larger RECORD is a finding, not read (torch's is about 2 MB)."""

MAX_METADATA_HEAD = 64 * 1024
"""Bytes of a METADATA file read for its Name header."""

MAX_FINDINGS = 1000
"""Findings kept in an Integrity; the rest are counted in ``omitted``."""

HASHES: dict[str, int] = {"sha256": 32, "sha384": 48, "sha512": 64}
"""The RECORD hash algorithms lockd checks, with their digest sizes (the wheel spec forbids
md5 and sha1)."""

_MAX_LINK_HOPS = 40
_BATCH_BYTES = 4 * 1024 * 1024
_BATCH_FILES = 32
_DIGEST = re.compile(
    "|".join(f"{name}=[A-Za-z0-9_-]{{{-(-size * 4 // 3)}}}" for name, size in HASHES.items())
)
"""A RECORD digest: urlsafe base64 without padding, as long as the algorithm's digest."""
_PATH_FLAGS: int = getattr(os, "O_PATH", os.O_RDONLY)
_MAP_MIN = 1024 * 1024  # smaller files are read: a map costs more than the copy it saves
_SMALL_READ = 64 * 1024
_MAP_WINDOW = 16 * 1024 * 1024  # a multiple of mmap.ALLOCATIONGRANULARITY
_TEXT_LIMIT = 4096
_GUESSES = (
    "usr/lib/python3*/site-packages",
    "usr/lib/python3/dist-packages",
    "usr/local/lib/python3*/site-packages",
    "usr/local/lib/python3*/dist-packages",
    "opt/*/lib/python3*/site-packages",
    "opt/conda/envs/*/lib/python3*/site-packages",
)
"""Where distributions usually live: hashed while the probe runs, before it names them."""


def digest_text(algorithm: str, raw: bytes) -> str:
    """A digest as RECORD writes it: ``sha256=<urlsafe base64 without padding>``."""
    return f"{algorithm}=" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _fit(text: str) -> str:
    return text if len(text) <= _TEXT_LIMIT else text[: _TEXT_LIMIT - 3] + "..."


def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


# --- RECORD (pure) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One file a RECORD lists: its target-absolute path, its digest as RECORD writes it (or
    None), its size (or None), and the line of the RECORD it starts on."""

    path: str
    digest: str | None
    size: int | None
    line: int

    @cached_property  # asked for each row several times; kept in the instance's __dict__
    def algorithm(self) -> str | None:
        return None if self.digest is None else self.digest.partition("=")[0]


def _row_problem(fields: list[str]) -> str | None:
    """Why a RECORD row is malformed, or None."""
    if len(fields) != 3:
        return f"expected 3 fields (path,hash,size), found {len(fields)}"
    path, digest, size = fields
    if not path:
        return "the path is empty"
    if not path.isascii():
        if "\x00" in path:
            return "the path contains a NUL character"
        if any("\udc80" <= c <= "\udcff" for c in path):
            return "the path is not UTF-8"
    elif "\x00" in path:
        return "the path contains a NUL character"
    if digest and _DIGEST.fullmatch(digest) is None:
        algorithm, separator, value = digest.partition("=")
        if not separator:
            return f"hash {digest[:80]!r} is not ALGORITHM=DIGEST"
        if algorithm not in HASHES:
            return (
                f"unsupported hash algorithm {algorithm[:40]!r} (lockd checks "
                f"{', '.join(HASHES)}; the wheel spec forbids md5 and sha1)"
            )
        return f"{value[:80]!r} is not a {algorithm} digest in urlsafe base64"
    if size and not (size.isascii() and size.isdigit()):
        return f"size {size[:40]!r} is not a whole number of bytes"
    return None


def _target_path(location: str, path: str) -> str:
    """A RECORD path as a target-absolute path: RECORD paths are relative to the location and
    may climb out of it (``../../../bin/torchrun``); ``..`` stops at the root."""
    if not path.startswith("/") and "//" not in path and "/." not in "/" + path:
        return f"{location.rstrip('/')}/{path}"  # the usual row, normal already
    joined = path if path.startswith("/") else posixpath.join(location, path)
    return "/" + posixpath.normpath(joined).lstrip("/")


def _csv_rows(text: str) -> Iterator[tuple[int, list[str] | None, str | None]]:
    """(first line, fields or None, why not) for each CSV record of ``text``."""
    reader = csv.reader(io.StringIO(text, newline=""))
    line = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield line, None, f"not valid CSV ({e})"
            line = reader.line_num + 1
            continue
        yield line, fields, None
        line = reader.line_num + 1


def parse_record(data: bytes, record_path: str, location: str) -> tuple[list[Row], list[Finding]]:
    """The rows of the RECORD at ``record_path`` (its paths resolved against ``location``) and
    a ``record-malformed`` finding naming the RECORD and the line for each line that is not
    ``path,hash,size``. A path listed twice with two digests is malformed; blank lines are not.
    Pure.
    """
    text = data.decode("utf-8", "surrogateescape")
    rows: list[Row] = []
    findings: list[Finding] = []
    seen: dict[str, Row] = {}

    def malformed(line: int, why: str) -> None:
        findings.append(
            Finding(
                kind="record-malformed",
                path=_fit(record_path),
                message=_fit(f"{record_path} line {line}: {why}"),
            )
        )

    for line, fields, error in _csv_rows(text):
        if fields is None:
            malformed(line, error or "not valid CSV")
            continue
        if not fields or fields == [""]:
            continue
        problem = _row_problem(fields)
        if problem is not None:
            malformed(line, problem)
            continue
        path, digest, size = fields
        row = Row(_target_path(location, path), digest or None, int(size) if size else None, line)
        first = seen.get(row.path)
        if first is None:
            seen[row.path] = row
            rows.append(row)
        elif row.digest is not None and first.digest is not None and row.digest != first.digest:
            malformed(line, f"{path} is listed again (first on line {first.line}), another digest")
    return rows, findings


def own_directories(rows: Iterable[Row], location: str) -> set[str]:
    """A distribution's own top-level directories in ``location``: the first component of
    each listed path below it that is a directory (``torch``, ``torch-2.13.0.dist-info``); not
    the shared ``__pycache__``, nor anything outside the location (scripts in ``bin/``)."""
    prefix = location.rstrip("/") + "/"
    start = len(prefix)
    heads: set[str] = set()
    for row in rows:
        path = row.path
        if path.startswith(prefix):
            slash = path.find("/", start)
            if slash > start:
                heads.add(path[start:slash])
    heads.discard("__pycache__")
    return {prefix + head for head in heads}


def metadata_name(data: bytes) -> str | None:
    """The Name header of a METADATA / PKG-INFO file's head."""
    for raw in data.decode("utf-8", "replace").splitlines():
        if not raw.strip():
            return None
        key, separator, value = raw.partition(":")
        if separator and raw[0] not in " \t" and key.strip().lower() == "name":
            return value.strip() or None
    return None


# --- what lockd saw of one listed file ----------------------------------------------------------

StateKind = Literal["file", "missing", "other", "unreadable", "unstable"]


@dataclass(frozen=True)
class FileState:
    """A listed file as lockd found it: its digest (RECORD notation) and size, or why not."""

    kind: StateKind
    digest: str | None = None
    size: int | None = None
    message: str | None = None


def row_finding(name: str, row: Row, state: FileState) -> Finding | None:
    """The finding for one listed file of distribution ``name``, or None when it matches."""
    path = _fit(row.path)
    if state.kind == "missing":
        return Finding(kind="missing", name=name, path=path, expected=row.digest)
    if state.kind in ("unreadable", "unstable"):
        return Finding(kind=state.kind, name=name, path=path, message=state.message)
    if state.kind == "other":
        return Finding(
            kind="modified", name=name, path=path, expected=row.digest, message=state.message
        )
    resized = row.size is not None and state.size is not None and row.size != state.size
    if state.digest == row.digest and not resized:
        return None
    return Finding(
        kind="modified",
        name=name,
        path=path,
        expected=row.digest,
        observed=state.digest,
        message=f"{row.size} bytes listed, {state.size} found"
        if resized
        else "the content differs from the file the package shipped",
    )


# --- reading a target's files -------------------------------------------------------------------


class _TooLargeError(Exception):
    pass


class Source:
    """Where a target's files are read from. Paths are target-absolute."""

    kind: IntegritySource = "local"
    evidence: Literal["host", "inside"] = "inside"
    description = "the local filesystem"
    on_bytes: Callable[[int], None] | None = None  # told of the bytes a stream hashed

    def prepare(self, locations: Sequence[str]) -> None:
        """Called once the locations to check are known (the archive source streams them)."""

    def list_dir(self, path: str) -> list[str] | None:
        """The names in the directory ``path``; None when it is not a directory."""
        raise NotImplementedError

    def read(self, path: str, limit: int, *, head: bool = False) -> bytes | None:
        """A small file's bytes, None when it is missing. More than ``limit`` bytes raise
        _TooLargeError, or with ``head`` give the first ``limit``. Raises OSError."""
        raise NotImplementedError

    def hash(self, path: str, algorithm: str, buffer: bytearray) -> FileState:
        """The state of the listed file ``path``, hashed with ``algorithm`` (using ``buffer``)."""
        raise NotImplementedError

    def hash_many(
        self, directory: str, jobs: Sequence[tuple[str, str]], buffer: bytearray
    ) -> Iterator[FileState]:
        """The states of files (name, algorithm) of one ``directory``, in order."""
        for name, algorithm in jobs:
            try:
                yield self.hash(f"{directory}/{name}", algorithm, buffer)
            except (OSError, LockdError) as e:  # one odd file must not cost the whole check
                yield FileState("unreadable", message=str(e))

    def files(self, directory: str) -> Iterator[str]:
        """Every non-directory below ``directory`` (symbolic links not followed)."""
        raise NotImplementedError

    def guess_locations(self) -> list[str]:
        """Directories that usually hold distributions, to hash before the probe names them."""
        return []

    def changed_meanwhile(self) -> set[str]:
        """Paths hashed where the target may have changed them since (asked after hashing)."""
        return set()

    def cached_files(self) -> int:
        """Files whose digest came from the layer cache (lockd.evidence.cache.layers)."""
        return 0

    def close(self) -> None:
        """Give back what the source holds (a throw-away container)."""


@dataclass
class _Hit:
    kind: Literal["dir", "file", "link", "other"]
    rel: str  # the canonical path below the root, no leading slash ("" is the root)
    host: str  # where it lies on this host (in the topmost layer that has it)
    copies: list[str] = field(default_factory=list)  # a directory: its copy in each layer


@dataclass
class _Opened:
    handle: int  # O_PATH
    st: os.stat_result
    hit: _Hit


class _LoopError(Exception):
    pass


class _MovedError(Exception):
    pass


class HostTree(Source):
    """A target's filesystem read on this host: one directory (a container's merged directory,
    ``/`` for the local environment) or an image's overlay2 layers, top first, merged as
    overlayfs merges them (a whiteout hides what lies below, an opaque directory hides the
    lower layers' copies).

    Symbolic links are followed inside the root (an absolute link starts again at the root,
    ``..`` stops there), never on the host. With ``check_opened``, each opened file's real
    path must be the path meant: in a running container a directory may be swapped for a
    link while lockd reads, and that must not redirect lockd outside the container.

    Large files are hashed through a memory map (no copy) where nothing can truncate them
    meanwhile (a truncated map kills the process): every file of an ``immutable`` tree (an
    image's layers), and a container's files that its writable ``upper`` layer does not hold
    (overlayfs serves them from the image's read-only layers). Other files are read.

    ``mounts`` (destination, host path): a container's bind mounts and volumes, which its
    merged directory does not show, are read from their sources, as the container sees them.

    ``digests`` (lockd.evidence.cache.layers): a file an image's read-only layer provides is taken
    from the layer cache when it holds it, else hashed and kept there; for a container, ``view``
    says which layer provides each file (its upper directory's files are always hashed), for
    an image, ``layer_keys`` names each layer.
    """

    def __init__(
        self,
        layers: Sequence[str],
        *,
        kind: IntegritySource,
        evidence: Literal["host", "inside"],
        description: str,
        check_opened: bool = False,
        immutable: bool = False,
        upper: str | None = None,
        mounts: Sequence[tuple[str, str]] = (),
        digests: DigestCache | None = None,
        view: LayerView | None = None,
        layer_keys: Sequence[str | None] = (),
    ) -> None:
        if not layers:
            raise ValueError("a HostTree needs at least one directory")
        self.layers = [os.path.realpath(layer) for layer in layers]
        self.kind = kind
        self.evidence = evidence
        self.description = description
        self.check_opened = check_opened
        self.immutable = immutable
        self.upper = None if upper is None else os.path.realpath(upper)
        self._merging = len(self.layers) > 1
        self._dirs: dict[str, list[str]] = {"": list(self.layers)}
        self._resolved: dict[str, _Hit | None] = {}
        self._mounted_files: dict[str, str] = {}
        self._mount_points: list[str] = []
        self.digests = digests
        self.view = view
        self._from_lower: list[tuple[str, str, str]] = []  # (rel dir, name, path) read there
        self._lower_reads: list[tuple[str, os.stat_result]] = []  # (host path, stat) of those
        self._walked: set[str] = set()  # canonical directories files() listed
        self._layer_keys = dict(zip(self.layers, layer_keys, strict=False))
        for destination, source in mounts:  # what the container sees there: the mount's source
            rel = posixpath.normpath(destination).strip("/")
            real = os.path.realpath(source)
            self._mount_points.append("/" + rel)
            if os.path.isdir(real):
                self._dirs[rel] = [real]
            else:
                self._mounted_files[rel] = real

    # -- the merged view --

    @staticmethod
    def _join(base: str, name: str) -> str:
        return base + name if base.endswith("/") else f"{base}/{name}"

    def _root(self) -> _Hit:
        return _Hit("dir", "", self.layers[0], self._dirs[""])

    def _at(self, canonical: list[str]) -> _Hit:
        """The directory at a canonical path already walked (so in the cache)."""
        if not canonical:
            return self._root()
        return self._entry("/".join(canonical[:-1]), canonical[-1]) or self._root()

    def _entry(self, parent: str, name: str) -> _Hit | None:
        """``name`` in the canonical directory ``parent``, as the merged view shows it."""
        rel = f"{parent}/{name}" if parent else name
        copies = self._dirs.get(rel)
        if copies is not None:
            return _Hit("dir", rel, copies[0], copies)
        if rel in self._mounted_files:  # a file bind-mounted over this path
            return _Hit("file", rel, self._mounted_files[rel])
        copies = []
        for base in self._dirs.get(parent, ()):
            path = self._join(base, name)
            try:
                st = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                continue
            if stat.S_ISDIR(st.st_mode):
                copies.append(path)
                if not self._merging or is_opaque(path):
                    break
                continue
            if copies or (self._merging and is_whiteout(st)):
                break  # hidden below an upper directory, or a whiteout: deleted here
            kind: Literal["file", "link", "other"] = (
                "file"
                if stat.S_ISREG(st.st_mode)
                else "link"
                if stat.S_ISLNK(st.st_mode)
                else "other"
            )
            return _Hit(kind, rel, path)
        if not copies:
            return None
        self._dirs[rel] = copies
        return _Hit("dir", rel, copies[0], copies)

    def _resolve(self, path: str, *, follow: bool = True) -> _Hit | None:
        """The entry at ``path``, links on the way followed inside the root (the last one too
        when ``follow``); None when there is nothing.

        Raises:
            _LoopError: more than 40 links on the way.
            OSError: a link cannot be read.
        """
        pending = [p for p in reversed(path.split("/")) if p not in ("", ".")]
        canonical: list[str] = []
        hit = self._root()
        hops = 0
        while pending:
            name = pending.pop()
            if name == "..":
                if canonical:
                    canonical.pop()
                hit = self._at(canonical)
                continue
            found = self._entry("/".join(canonical), name)
            if found is None:
                return None
            if found.kind == "link" and (pending or follow):
                hops += 1
                if hops > _MAX_LINK_HOPS:
                    raise _LoopError(path)
                target = os.readlink(found.host)
                if target.startswith("/"):
                    canonical = []
                pending.extend(p for p in reversed(target.split("/")) if p not in ("", "."))
                hit = self._at(canonical)
                continue
            if pending and found.kind != "dir":
                return None
            canonical.append(name)
            hit = found
        return hit

    def _directory(self, path: str) -> _Hit | None:
        """The directory at ``path`` (cached: every file of a directory asks for it)."""
        if path in self._resolved:
            return self._resolved[path]
        try:
            hit = self._resolve(path)
        except (_LoopError, OSError):
            hit = None
        if hit is not None and hit.kind != "dir":
            hit = None
        self._resolved[path] = hit
        return hit

    def _file(self, path: str) -> _Opened | FileState:
        """The regular file at ``path`` (a last link followed) opened as a path only (O_PATH:
        opening a device or a FIFO this way runs nothing of it), or its state when there is
        no such file."""
        directory, _, name = path.rpartition("/")
        parent = self._directory(directory or "/")
        if parent is None or name in ("", ".", ".."):
            return FileState("missing")
        if self._merging:
            hit = self._entry(parent.rel, name)
        else:  # one directory: open it straight away, lstat-free
            rel = f"{parent.rel}/{name}" if parent.rel else name
            host = self._mounted_files.get(rel) or self._join(parent.host, name)
            hit = _Hit("file", rel, host)
        for _ in range(2):
            if hit is None:
                return FileState("missing")
            if hit.kind == "dir":
                return FileState("other", message="is a directory, not the file listed")
            try:
                handle = os.open(hit.host, _PATH_FLAGS | os.O_NOFOLLOW | os.O_CLOEXEC)
            except (FileNotFoundError, NotADirectoryError):
                return FileState("missing")
            except OSError as e:
                return FileState("unreadable", message=f"cannot open it: {e.strerror}")
            try:
                st = os.fstat(handle)
            except OSError as e:
                os.close(handle)
                return FileState("unreadable", message=f"cannot stat it: {e.strerror}")
            if stat.S_ISREG(st.st_mode):
                return _Opened(handle, st, hit)
            os.close(handle)
            if not stat.S_ISLNK(st.st_mode):
                what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
                return FileState("other", message=f"is {what}, not the file listed")
            try:  # a link: follow it inside the root
                hit = self._resolve(path)
            except _LoopError:
                return FileState("other", message="a loop of symbolic links")
            except OSError as e:
                return FileState("unreadable", message=f"cannot read its link: {e.strerror}")
        return FileState("unstable", message="it changed while lockd opened it")

    def _reopen(self, opened: _Opened) -> int:
        """The O_PATH handle opened for reading (then closed); with ``check_opened``, only when
        it is the file meant.

        Raises:
            _MovedError: the handle is not the file meant.
            OSError: it cannot be opened.
        """
        proc = f"/proc/self/fd/{opened.handle}"
        try:
            if self.check_opened:
                real = os.readlink(proc)
                if real != opened.hit.host:
                    raise _MovedError(f"opened {real}")
            if _PATH_FLAGS == os.O_RDONLY:  # pragma: no cover - no O_PATH (not Linux)
                return os.dup(opened.handle)
            return os.open(proc, os.O_RDONLY | os.O_CLOEXEC)
        finally:
            os.close(opened.handle)

    def _mappable(self, opened: _Opened) -> bool:
        """Whether nothing can truncate the file while it is mapped (see the class)."""
        if opened.st.st_size < _MAP_MIN:
            return False
        if self.immutable:
            return True
        if self.upper is None or any(_under("/" + opened.hit.rel, m) for m in self._mount_points):
            return False  # no upper layer to tell, or a mount the container may write to
        return not os.path.lexists(self._join(self.upper, opened.hit.rel))

    def _names(self, hit: _Hit) -> list[str]:
        names: dict[str, None] = {}
        for base in hit.copies:
            try:
                with os.scandir(base) as entries:
                    for entry in entries:
                        names.setdefault(entry.name)
            except OSError:
                continue
        return list(names)

    # -- Source --

    def list_dir(self, path: str) -> list[str] | None:
        hit = self._directory(path)
        if hit is None:
            return None
        return sorted(n for n in self._names(hit) if self._entry(hit.rel, n) is not None)

    def read(self, path: str, limit: int, *, head: bool = False) -> bytes | None:
        found = self._file(path)
        if isinstance(found, FileState):
            if found.kind == "missing":
                return None
            raise OSError(found.message or "cannot be read")
        try:
            fd = self._reopen(found)
        except FileNotFoundError:
            return None
        except _MovedError as e:
            raise OSError(f"it changed while lockd opened it ({e})") from e
        try:
            chunks = []
            left = limit if head else limit + 1
            while left > 0:
                chunk = os.read(fd, min(left, CHUNK))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
        finally:
            os.close(fd)
        data = b"".join(chunks)
        if len(data) > limit:
            raise _TooLargeError(path)
        return data

    def hash(self, path: str, algorithm: str, buffer: bytearray) -> FileState:
        found = self._file(path)
        if isinstance(found, FileState):
            return found
        key = self._layer_key(found.hit.host) if self.digests is not None else None
        if key is not None and self.digests is not None:
            cached = self.digests.get(key, found.hit.rel, algorithm, found.st)
            if cached is not None:
                os.close(found.handle)
                return FileState("file", digest=cached, size=found.st.st_size)
        try:
            fd = self._reopen(found)
        except FileNotFoundError:
            return FileState("missing")
        except _MovedError as e:
            return FileState("unstable", message=f"it changed while lockd opened it ({e})")
        except OSError as e:
            return FileState("unreadable", message=f"cannot open it: {e.strerror or e}")
        try:
            mappable = self._mappable(found)
            state = _hash_fd(fd, found.hit.host, found.st, algorithm, buffer, mappable)
        finally:
            os.close(fd)
        if key is not None and self.digests is not None and state.digest is not None:
            self.digests.put(key, found.hit.rel, state.digest, found.st)
        return state

    def _layer_key(self, host: str) -> str | None:
        """The chain ID of the image layer (of an ``immutable`` tree) that ``host`` lies in."""
        if not self.immutable:
            return None
        for layer, key in self._layer_keys.items():
            if key is not None and host.startswith(layer + "/"):
                return key
        return None

    def _hash_lower(
        self, rel_dir: str, name: str, algorithm: str, buffer: bytearray
    ) -> FileState | None:
        """The file ``name`` of the canonical directory ``rel_dir`` when a read-only layer of
        the container provides it, read in that layer (which nothing writes to: no overlayfs
        in the way, no check for writes meanwhile), from the layer cache where the layer is
        the image's; None when the container's upper directory provides it (or lockd cannot
        tell): hashed the usual way then."""
        assert self.view is not None
        located = self.view.locate(rel_dir, name)
        if located is None:
            return None
        key, host = located
        rel = f"{rel_dir}/{name}" if rel_dir else name
        cache = self.digests  # for the image's layers (a chain ID), not Docker's -init layer
        if cache is not None and key is not None:
            try:
                st = os.lstat(host)
            except OSError:
                return None
            cached = cache.get(key, rel, algorithm, st)
            if cached is not None:
                self._lower_reads.append((host, st))
                return FileState("file", digest=cached, size=st.st_size)
        try:
            fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            opened = os.fstat(fd)
            if not stat.S_ISREG(opened.st_mode):
                return None
            mappable = opened.st_size >= _MAP_MIN
            state = _hash_fd(fd, host, opened, algorithm, buffer, mappable, settled=True)
        finally:
            os.close(fd)
        if state.digest is None:
            return None  # hashed the usual way, which says why
        if cache is not None and key is not None:
            cache.put(key, rel, state.digest, opened)
        self._lower_reads.append((host, opened))
        return state

    def lower_guards(self) -> list[Guard] | None:
        """Guards (lockd.evidence.cache.integrity) of every lower-layer file lockd read and
        directory it listed, as they are now; None when it read no layers (no layer view)."""
        if self.view is None:
            return None
        found = {path: guard(path, st) for path, st in self._lower_reads}
        directories = set(self.view.lower_dirs_listed())
        for rel in self._walked:
            directories.update(self.view.lower_copies(rel))
        for path in directories:
            try:
                found[path] = guard(path, os.lstat(path))
            except OSError:
                return None
        return sorted(found.values())

    def changed_meanwhile(self) -> set[str]:
        # the container may have written over a file lockd read in a lower layer
        if self.view is None or not self._from_lower:
            return set()
        changed = self.view.changed_since()
        if changed is None:
            return set()
        return {path for rel_dir, name, path in self._from_lower if changed(rel_dir, name)}

    def hash_many(
        self, directory: str, jobs: Sequence[tuple[str, str]], buffer: bytearray
    ) -> Iterator[FileState]:
        """Files of one directory through one handle on it (checked once, with
        ``check_opened``): each file is then a one-name lookup, not a walk from the root."""
        parent = None if self._merging else self._directory(directory)
        if parent is None:  # layers (no race to fear: images), or no such directory
            yield from super().hash_many(directory, jobs, buffer)
            return
        try:
            dir_fd = os.open(parent.host, _PATH_FLAGS | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            yield from super().hash_many(directory, jobs, buffer)
            return
        try:
            try:
                moved = self.check_opened and os.readlink(f"/proc/self/fd/{dir_fd}") != parent.host
            except OSError:
                moved = True
            if moved:
                for _ in jobs:
                    yield FileState("unstable", message="its directory moved while lockd read")
                return
            layered = self.view is not None and not any(
                _under("/" + parent.rel, m) for m in self._mount_points
            )
            for name, algorithm in jobs:
                rel = f"{parent.rel}/{name}" if parent.rel else name
                if rel in self._mounted_files or rel in self._dirs:  # a mount point: not here
                    yield self.hash(f"{directory}/{name}", algorithm, buffer)
                    continue
                lower = self._hash_lower(parent.rel, name, algorithm, buffer) if layered else None
                if lower is not None:
                    self._from_lower.append((parent.rel, name, f"{directory}/{name}"))
                    yield lower
                else:
                    yield self._hash_in(dir_fd, directory, parent, name, algorithm, buffer)
        finally:
            os.close(dir_fd)

    def _hash_in(
        self,
        dir_fd: int,
        directory: str,
        parent: _Hit,
        name: str,
        algorithm: str,
        buffer: bytearray,
    ) -> FileState:
        try:
            handle = os.open(name, _PATH_FLAGS | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except (FileNotFoundError, NotADirectoryError):
            return FileState("missing")
        except OSError as e:
            return FileState("unreadable", message=f"cannot open it: {e.strerror}")
        try:
            st = os.fstat(handle)
            if not stat.S_ISREG(st.st_mode):
                if stat.S_ISLNK(st.st_mode):  # a link: resolved inside the root, the long way
                    return self.hash(f"{directory}/{name}", algorithm, buffer)
                what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
                return FileState("other", message=f"is {what}, not the file listed")
            fd = os.open(f"/proc/self/fd/{handle}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            return FileState("unreadable", message=f"cannot open it: {e.strerror}")
        finally:
            os.close(handle)
        try:
            mappable = False
            if st.st_size >= _MAP_MIN:
                hit = _Hit("file", f"{parent.rel}/{name}" if parent.rel else name, "")
                mappable = self._mappable(_Opened(-1, st, hit))
            return _hash_fd(fd, name, st, algorithm, buffer, mappable, dir_fd=dir_fd)
        finally:
            os.close(fd)

    def files(self, directory: str) -> Iterator[str]:
        top = self._directory(directory)
        if top is None:
            return
        stack = [(directory.rstrip("/"), top)]
        while stack:
            path, hit = stack.pop()
            self._walked.add(hit.rel)
            if not self._merging:  # one directory: the listing says what each entry is
                try:
                    with os.scandir(hit.host) as scan:
                        entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in scan]
                except OSError:
                    continue
                for name, is_dir in entries:
                    if is_dir:
                        rel = f"{hit.rel}/{name}" if hit.rel else name
                        copies = self._dirs.get(rel) or [self._join(hit.host, name)]
                        stack.append((f"{path}/{name}", _Hit("dir", rel, copies[0], copies)))
                    else:
                        yield f"{path}/{name}"
                continue
            for name in self._names(hit):
                found = self._entry(hit.rel, name)
                if found is None:
                    continue
                if found.kind == "dir":
                    stack.append((f"{path}/{name}", found))
                else:
                    yield f"{path}/{name}"

    def guess_locations(self) -> list[str]:
        if self.kind == "local":  # this host's own Python directories: rarely the target's
            return []
        found: set[str] = set()
        for layer in self.layers:
            for pattern in _GUESSES:
                for match in glob.glob(os.path.join(glob.escape(layer), pattern)):
                    found.add("/" + os.path.relpath(match, layer))
        return sorted(p for p in found if self._directory(p) is not None)

    def cached_files(self) -> int:
        return 0 if self.digests is None else self.digests.hits

    def close(self) -> None:
        if self.digests is not None:
            self.digests.save()


def _hash_fd(
    fd: int,
    where: str,
    before: os.stat_result,
    algorithm: str,
    buffer: bytearray,
    mappable: bool = False,
    dir_fd: int | None = None,
    *,
    settled: bool = False,
) -> FileState:
    """Hash an open regular file (``before``: its stat when opened; ``where``: its path, from
    ``dir_fd`` when given), through a memory map when ``mappable``; ``unstable`` when it is
    written to or replaced meanwhile (not asked again when ``settled``: nothing writes to it)."""
    digest = hashlib.new(algorithm)
    size = 0
    try:
        if mappable:  # a window at a time: the pages mapped count as the process's memory
            while size < before.st_size:
                length = min(_MAP_WINDOW, before.st_size - size)
                with mmap.mmap(fd, length, prot=mmap.PROT_READ, offset=size) as mapped:
                    mapped.madvise(mmap.MADV_SEQUENTIAL)
                    with memoryview(mapped) as window:
                        digest.update(window)
                size += length
        else:
            with memoryview(buffer) as whole:
                # small reads for small files: the kernel serves a 64 KiB read of a small
                # file faster than a 1 MiB one (measured on overlayfs and ext4)
                view = whole if before.st_size >= _MAP_MIN else whole[:_SMALL_READ]
                # one byte more than its size first: a short read is the end, no second call
                first = view[: before.st_size + 1]
                count = size = os.readv(fd, [first])
                digest.update(first[:count])
                if count == len(first):  # not provably at the end: read on
                    while count := os.readv(fd, [view]):
                        digest.update(view[:count])
                        size += count
                first.release()
                view.release()
        if settled:
            if size != before.st_size:
                return FileState("unstable", message="its size changed while lockd hashed it")
            return FileState("file", digest=digest_text(algorithm, digest.digest()), size=size)
        after = os.fstat(fd)
        now = os.stat(where, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return FileState("unstable", message="removed while lockd hashed it")
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        return FileState("unreadable", message=f"cannot read it: {reason}")
    if (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino):
        return FileState("unstable", message="replaced while lockd hashed it")
    if size != after.st_size or (before.st_size, before.st_mtime_ns, before.st_ctime_ns) != (
        after.st_size,
        after.st_mtime_ns,
        after.st_ctime_ns,
    ):
        return FileState("unstable", message="written to while lockd hashed it")
    return FileState("file", digest=digest_text(algorithm, digest.digest()), size=size)


# --- reading through the Docker API (tar streams) ---------------------------------------------

Fetch = Callable[[str], "tuple[Iterable[bytes], dict[str, Any]] | None"]
"""``fetch(path)``: the daemon's tar stream of ``path`` and its stat; None when nothing is
there."""


class _ChunkReader(io.RawIOBase):
    """A binary file over an iterator of chunks (the SDK's archive stream)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            try:
                self._pending = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count


@dataclass
class _Node:
    kind: Literal["dir", "file", "link", "other"]
    digest: str | None = None  # sha256, RECORD notation
    size: int | None = None
    link: str | None = None
    content: bytes | None = None  # only the small files lockd reads (RECORD, METADATA)
    children: list[str] = field(default_factory=list)


class ArchiveSource(Source):
    """A target's files streamed through the Docker daemon's archive API, hashed (sha256) as
    they arrive with one 1 MiB buffer. ``prepare`` streams each location once; a path outside
    them (a script in ``bin/``) is fetched on its own when asked for."""

    kind: IntegritySource = "api"
    evidence: Literal["host", "inside"] = "host"

    def __init__(
        self,
        fetch: Fetch,
        description: str,
        closer: AbstractContextManager[Any] | None = None,
    ) -> None:
        self._fetch = fetch
        self.description = description
        self._closer = closer
        self._nodes: dict[str, _Node] = {}
        self._roots: list[str] = []
        self._fetched: set[str] = set()
        self._lock = threading.Lock()
        self._buffer = bytearray(CHUNK)

    def _stream(self, path: str, keep: Callable[[str], bool]) -> bool:
        """Index the tree at ``path``; False when there is nothing there."""
        fetched = self._fetch(path)
        if fetched is None:
            return False
        parent = posixpath.dirname(path.rstrip("/")) or "/"
        view = memoryview(self._buffer)
        try:
            with tarfile.open(fileobj=_ChunkReader(fetched[0]), mode="r|", bufsize=CHUNK) as tar:
                for member in tar:
                    where = _target_path(parent, member.name)
                    self._nodes[where] = self._member(tar, member, parent, keep(where), view)
                    up = self._nodes.get(posixpath.dirname(where))
                    if up is not None and where != "/":
                        up.children.append(posixpath.basename(where))
        finally:
            view.release()
        return True

    def _member(
        self, tar: tarfile.TarFile, member: tarfile.TarInfo, parent: str, keep: bool, view: Any
    ) -> _Node:
        if member.isdir():
            return _Node("dir")
        if member.issym():
            return _Node("link", link=member.linkname)
        if member.islnk():  # a hard link to a member streamed before it
            first = self._nodes.get(_target_path(parent, member.linkname))
            if first is not None and first.kind == "file":
                return _Node("file", digest=first.digest, size=first.size, content=first.content)
            return _Node("other")
        handle = tar.extractfile(member) if member.isreg() else None
        if handle is None:
            return _Node("other")
        digest = hashlib.sha256()
        kept = bytearray() if keep and member.size <= MAX_RECORD_BYTES else None
        size = 0
        while count := handle.readinto(view):  # type: ignore[attr-defined]
            digest.update(view[:count])
            if kept is not None:
                kept += view[:count]
            size += count
        if self.on_bytes is not None:
            self.on_bytes(size)
        return _Node(
            "file",
            digest=digest_text("sha256", digest.digest()),
            size=size,
            content=None if kept is None else bytes(kept),
        )

    @staticmethod
    def _small(path: str) -> bool:
        directory, _, name = path.rpartition("/")
        return name in ("RECORD", "METADATA", "PKG-INFO") and directory.lower().endswith(
            (".dist-info", ".egg-info")
        )

    def prepare(self, locations: Sequence[str]) -> None:
        for location in sorted(set(locations)):
            if not any(_under(location, root) for root in self._roots) and self._stream(
                location, self._small
            ):
                self._roots.append(location)

    def _node(self, path: str, hops: int = 0) -> _Node | None:
        """The node at ``path``, links on the way followed (the last one too)."""
        if hops > _MAX_LINK_HOPS:
            return _Node("other")
        if not any(_under(path, root) for root in self._roots):
            with self._lock:
                if path not in self._fetched:
                    self._fetched.add(path)
                    self._stream(path, lambda p: p == path)
        node = self._nodes.get(path)
        if node is None:
            parts = path.split("/")
            for depth in range(len(parts) - 1, 1, -1):  # a link to a directory on the way?
                above = self._nodes.get("/".join(parts[:depth]))
                if above is not None and above.kind == "link" and above.link is not None:
                    base = _target_path(posixpath.dirname("/".join(parts[:depth])), above.link)
                    return self._node(base + "/" + "/".join(parts[depth:]), hops + 1)
            return None
        if node.kind == "link" and node.link is not None:
            return self._node(_target_path(posixpath.dirname(path), node.link), hops + 1)
        return node

    def list_dir(self, path: str) -> list[str] | None:
        node = self._node(path)
        return None if node is None or node.kind != "dir" else sorted(node.children)

    def read(self, path: str, limit: int, *, head: bool = False) -> bytes | None:
        node = self._node(path)
        if node is None:
            return None
        if node.kind != "file":
            raise OSError("not a regular file")
        if node.size is not None and node.size > limit and not head:
            raise _TooLargeError(path)
        if node.content is None:
            raise OSError("not kept from the archive stream")
        return node.content[:limit]

    def hash(self, path: str, algorithm: str, buffer: bytearray) -> FileState:
        node = self._node(path)
        if node is None:
            return FileState("missing")
        if node.kind != "file":
            what = "a directory" if node.kind == "dir" else "not a regular file"
            return FileState("other", message=f"is {what}, not the file listed")
        if algorithm == "sha256":
            return FileState("file", digest=node.digest, size=node.size)
        with self._lock:  # another algorithm: stream this one file again
            fetched = self._fetch(path)
            if fetched is None:
                return FileState("missing")
            digest = hashlib.new(algorithm)
            size = 0
            with tarfile.open(fileobj=_ChunkReader(fetched[0]), mode="r|") as tar:
                for member in tar:
                    handle = tar.extractfile(member) if member.isreg() else None
                    while handle is not None and (chunk := handle.read(CHUNK)):
                        digest.update(chunk)
                        size += len(chunk)
        return FileState("file", digest=digest_text(algorithm, digest.digest()), size=size)

    def files(self, directory: str) -> Iterator[str]:
        top = self._nodes.get(directory.rstrip("/"))
        if top is None or top.kind != "dir":
            return
        stack = [(directory.rstrip("/"), top)]
        while stack:
            path, node = stack.pop()
            for name in node.children:
                child = f"{path}/{name}"
                found = self._nodes[child]
                if found.kind == "dir":
                    stack.append((child, found))
                else:
                    yield child

    def close(self) -> None:
        if self._closer is not None:
            closer, self._closer = self._closer, None
            closer.__exit__(None, None, None)


# --- the check ----------------------------------------------------------------------------------


@dataclass
class _Dist:
    name: str
    location: str
    record_path: str
    rows: list[Row]


class _Progress:
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


class _Hasher:
    """Hashes (path, algorithm) jobs, each once: the large files one per task in ``pools``'
    first pool (its threads hash in parallel: hashlib lets go of the GIL), largest first; the
    small ones in batches in the second, one thread (their cost is Python's, under the GIL: a
    second thread only contends for it, measured +35% CPU). Keeps every state for whoever asks
    later (the probe names its locations after hashing began)."""

    def __init__(
        self,
        source: Source,
        pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor],
        progress: _Progress,
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
        split = next((i for i, job in enumerate(fresh) if job[2] < _MAP_MIN), len(fresh))
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
            pool = large if batch[0][2] >= _MAP_MIN else small
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
def _pools(workers: int | None = None) -> Iterator[tuple[ThreadPoolExecutor, ThreadPoolExecutor]]:
    """_Hasher's pools: (large files, small files)."""
    with (
        ThreadPoolExecutor(workers or _workers(), thread_name_prefix="lockd-hash") as large,
        ThreadPoolExecutor(1, thread_name_prefix="lockd-hash-small") as small,
    ):
        yield large, small


@dataclass
class _Early:
    """What DeepTarget read before the probe named the distributions, kept for reuse: the
    metadata directories of each location, RECORDs (bytes and rows), directory walks."""

    dist_infos: dict[str, dict[str, str]] = field(default_factory=dict)
    records: dict[str, bytes] = field(default_factory=dict)
    rows: dict[tuple[str, str], tuple[list[Row], list[Finding]]] = field(default_factory=dict)
    walks: dict[str, list[str]] = field(default_factory=dict)


def _dist_infos(source: Source, location: str) -> dict[str, str]:
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
    source: Source, dists: Sequence[Distribution], early: _Early
) -> tuple[list[_Dist], list[Finding]]:
    """Each distribution's RECORD as the source shows it, checked against the probe's sha256."""
    findings: list[Finding] = []
    loaded: list[_Dist] = []
    directories = dict(early.dist_infos)
    for dist in dists:
        if dist.location not in directories:
            directories[dist.location] = _dist_infos(source, dist.location)
        directory = directories[dist.location].get(dist.name)
        record_path = f"{directory}/RECORD" if directory else None
        problem: Finding | None = None
        data = None
        try:
            if record_path is not None and record_path in early.records:
                data = early.records[record_path]
            elif record_path is not None:
                data = source.read(record_path, MAX_RECORD_BYTES)
        except _TooLargeError:
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
            update = {"name": dist.name, "path": _fit(record_path or dist.location)}
            findings.append(problem.model_copy(update=update))
            continue
        assert data is not None and record_path is not None
        seen = hashlib.sha256(data).hexdigest()
        if seen != dist.record_sha256:
            findings.append(
                Finding(
                    kind="record-mismatch",
                    name=dist.name,
                    path=_fit(record_path),
                    expected=dist.record_sha256,
                    observed=seen,
                    message="the RECORD lockd read is not the one the probe reported "
                    "(it changed meanwhile, or the probe does not see the target's files)",
                )
            )
        parsed = early.rows.get((record_path, dist.location))
        rows, malformed = parsed or parse_record(data, record_path, dist.location)
        findings += [f.model_copy(update={"name": dist.name}) for f in malformed]
        loaded.append(_Dist(dist.name, dist.location, record_path, rows))
    return loaded, findings


def _jobs(dists: Iterable[_Dist]) -> list[_Job]:
    return [
        (row.path, row.algorithm, row.size or 0)
        for dist in dists
        for row in dist.rows
        if row.algorithm is not None
    ]


def _owners(dists: Sequence[_Dist]) -> dict[str, str]:
    """{own directory: the distribution it belongs to (the first by name)}; a directory inside
    another's is left out (walked with it)."""
    owners: dict[str, str] = {}
    for dist in sorted(dists, key=lambda d: d.name):
        for directory in own_directories(dist.rows, dist.location):
            owners.setdefault(directory, dist.name)
    return {
        directory: name
        for directory, name in owners.items()
        if not any(_under(directory, other) for other in owners if other != directory)
    }


def _unlisted(
    source: Source, dists: Sequence[_Dist], ignore: Sequence[str], early: _Early
) -> list[Finding]:
    """Files in the distributions' own directories that no RECORD lists."""
    listed: set[str] = set()
    for dist in dists:
        listed.update(row.path for row in dist.rows)
        listed.add(dist.record_path)
    owners = _owners(dists)
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
                        path=_fit(path),
                        message=f"in {owners[directory]}'s directory but in no RECORD",
                    )
                )
    return findings


def _integrity(
    source: Source,
    distributions: Sequence[Distribution],
    ignore: Sequence[str],
    hasher: _Hasher,
    early: _Early | None = None,
) -> Integrity:
    with_record = [d for d in distributions if d.record_sha256 is not None]
    if source.on_bytes is not None:
        hasher.progress.show(f"lockd: streaming {source.description}", None)
    source.prepare(sorted({d.location for d in with_record}))
    early = early or _Early()
    dists, findings = _read_records(source, with_record, early)
    jobs = _jobs(dists)
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
    bar = _Progress(progress)
    source.on_bytes = bar.advance if source.kind == "api" else None
    try:
        with _pools(workers) as pools:
            return _integrity(source, distributions, ignore, _Hasher(source, pools, bar))
    finally:
        bar.stop()


# --- targets ------------------------------------------------------------------------------------


def open_source(target: Target, *, cache: bool = True) -> Source:
    """Where ``target``'s files can be read (``Target.files``): on the host when lockd can,
    else through the Docker API (``LOCKD_DEEP_SOURCE=api`` forces the API for a target that
    has it: a container or an image). With ``cache``, files of an image's read-only layers
    read on the host go through the layer cache (lockd.evidence.cache.layers).

    Raises:
        TargetError: a target lockd cannot read the files of, or the daemon failed.
    """
    files = target.files()
    force_api = os.environ.get("LOCKD_DEEP_SOURCE", "") == "api" and files.archive is not None
    if files.host is not None and not force_api:
        return _host_tree(files.host, cache=cache)
    if files.archive is None:
        raise TargetError(f"{target.info.ref}: lockd cannot read this target's files for --deep")
    holder = files.archive()
    fetch = holder.__enter__()
    return ArchiveSource(fetch, files.archive_description, closer=holder)


def _host_tree(host: HostFiles, *, cache: bool) -> HostTree:
    """The files ``host`` describes, read on this host."""
    if host.kind == "local":
        return HostTree(
            list(host.roots), kind="local", evidence="inside", description=host.description
        )
    if host.kind == "overlay":
        assert host.upper is not None
        view = _layer_view(host, host.upper, keyed=cache)
        return HostTree(
            list(host.roots),
            kind="overlay",
            evidence="host",
            description=host.description,
            check_opened=True,
            upper=host.upper,
            mounts=host.mounts,
            digests=DigestCache(cache_dir()) if cache and view is not None else None,
            view=view,
        )
    image = host.image() if cache and host.image is not None else None
    keys = None if image is None else container_layer_keys(host.roots, image)
    return HostTree(
        list(host.roots),
        kind="layers",
        evidence="host",
        description=host.description,
        immutable=True,
        digests=None if keys is None else DigestCache(cache_dir()),
        layer_keys=keys or (),
    )


def _layer_view(host: HostFiles, upper: str, *, keyed: bool) -> LayerView | None:
    """A container's overlay layers, read straight from the host: its upper directory,
    then its lower ones, by chain ID where ``keyed`` (the layer cache) and the daemon's
    answers say which layer is which; None when the first directory is not ``upper``."""
    layers = host.layers
    if not layers or os.path.realpath(layers[0]) != os.path.realpath(upper):
        return None
    image = host.image() if keyed and host.image is not None else None
    keys = None if image is None else container_layer_keys(layers[1:], image)
    lower: Sequence[str | None] = keys or [None] * len(layers[1:])
    return LayerView([(layers[0], None), *zip(layers[1:], lower, strict=True)])


def deepen(
    target: Target,
    observation: Observation,
    *,
    ignore: Sequence[str] = DEFAULT_IGNORE,
    progress: bool | None = None,
    cache: bool = True,
) -> Observation:
    """``observation`` (of ``target``) with ``integrity``: its files against their RECORDs.

    Raises:
        TargetError: the target's files cannot be read.
    """
    source = open_source(target, cache=cache)
    try:
        distributions = observation.probe.distributions if observation.probe else []
        found = check_files(source, distributions, ignore=ignore, progress=progress)
    finally:
        source.close()
    return observation.model_copy(update={"integrity": found})


class DeepTarget:
    """A target whose ``observe()`` also checks every installed file against its RECORD
    (``Observation.integrity``), hashing the usual locations while the probe runs."""

    def __init__(
        self,
        target: Target,
        *,
        ignore: Sequence[str] = DEFAULT_IGNORE,
        progress: bool | None = None,
        cache: bool = True,
        family_imports: bool = False,
        options: ProbeOptions | None = None,
    ) -> None:
        """``cache``: use the layer cache (lockd.evidence.cache.layers) where the files are read on
        the host; False hashes every file. ``family_imports``: the probe also runs the PyTorch
        family's import smoke test (lockd.evidence.smoke.observe). ``options``: the probe's
        (with ``reuse``, a container's kept results may be reused: its probe report, and
        with ``cache`` this check's, lockd.evidence.cache.integrity)."""
        from lockd.evidence.targets.base import PLAIN

        self.target = target
        self.info: TargetInfo = target.info
        self.ignore = list(ignore)
        self.progress = progress
        self.cache = cache
        self.family_imports = family_imports
        self.options = options or PLAIN

    def observe(self) -> Observation:
        """Raises what the target's ``observe()`` raises, and TargetError when its files cannot
        be read."""
        kept, under = self._kept()
        if kept is not None and kept.intact():
            observation = self._observe()
            probe = observation.probe
            if (
                integritycache.distributions_digest(probe.distributions if probe else [])
                == kept.distributions
            ):
                found = kept.integrity.model_copy(update={"reused_from": kept.observed_at})
                return observation.model_copy(update={"integrity": found})
            return deepen(self.target, observation, ignore=self.ignore, cache=self.cache)
        observation, guards = self._hash_while_observing()
        if any(under) and guards is not None and observation.integrity is not None:
            self._keep(under, observation, guards)
        return observation

    def _reusing(self) -> Running | None:
        """The target, when it is a running container verified with the caches on (its probe
        report may be reused too): only then is its result kept (lockd.evidence.cache.integrity)."""
        if not self.cache or not self.options.reuse:
            return None
        return self.target.running()

    def _kept(self) -> tuple[integritycache.Kept | None, integritycache.Keys]:
        """(the integrity cache's result for the target or None, the fingerprints looked
        under)."""
        container = self._reusing()
        if container is None:
            return None, integritycache.Keys(None, None)
        return integritycache.load_first(container.id, container.inspect(), self.ignore)

    def _keep(
        self, under: integritycache.Keys, observation: Observation, guards: list[Guard]
    ) -> None:
        """Keep the result under each fingerprint that did not change while lockd hashed."""
        found = observation.integrity
        container = self._reusing()
        assert found is not None and container is not None
        if found.source != "overlay":
            return
        probe = observation.probe
        dists = integritycache.distributions_digest(probe.distributions if probe else [])
        attrs = container.inspect()
        after = integritycache.keys(attrs, self.ignore)
        rests_on = integritycache.places(observation)
        for name, key in integritycache.still_standing(container.id, under, after, attrs, rests_on):
            integritycache.store(name, key, found, dists, guards, rests_on)

    def _hash_while_observing(self) -> tuple[Observation, list[Guard] | None]:
        """The observation with its integrity, hashing the usual locations while the probe
        runs; the guards of the lower-layer files and directories read
        (lockd.evidence.cache.integrity), None where the files were not read in layers."""
        source = open_source(self.target, cache=self.cache)
        guards = None
        bar = _Progress(self.progress)
        source.on_bytes = bar.advance if source.kind == "api" else None
        try:
            with (
                _pools() as pools,
                ThreadPoolExecutor(1, thread_name_prefix="lockd-probe") as probing,
            ):
                hasher = _Hasher(source, pools, bar)
                observing = probing.submit(self._observe)
                early = _Early()
                guessed = self._speculate(source, hasher, early)
                try:
                    observation = observing.result()
                except BaseException:
                    hasher.cancel(lambda _: False)
                    raise
                probe = observation.probe
                named = {d.location for d in probe.distributions} if probe else set()
                wasted = [g for g in guessed if g not in named]
                hasher.cancel(lambda path: not any(_under(path, g) for g in wasted))
                found = _integrity(
                    source, probe.distributions if probe else [], self.ignore, hasher, early
                )
            if isinstance(source, HostTree):
                guards = source.lower_guards()
        finally:
            bar.stop()
            source.close()
        return observation.model_copy(update={"integrity": found}), guards

    def _observe(self) -> Observation:
        if not self.family_imports:
            return self.target.observe(self.options)
        from lockd.evidence.smoke import observe

        return observe(self.target, self.options)

    @staticmethod
    def _speculate(source: Source, hasher: _Hasher, early: _Early) -> list[str]:
        """Start hashing what the RECORDs of the usual locations list, and walk their
        distributions' directories meanwhile (kept in ``early``); those locations."""
        locations = source.guess_locations()
        dists: list[_Dist] = []
        for location in locations:
            early.dist_infos[location] = _dist_infos(source, location)
            for name, directory in early.dist_infos[location].items():
                record_path = f"{directory}/RECORD"
                try:
                    data = source.read(record_path, MAX_RECORD_BYTES)
                except (OSError, _TooLargeError):
                    continue
                if data is not None:
                    early.records[record_path] = data
                    parsed = early.rows[(record_path, location)] = parse_record(
                        data, record_path, location
                    )
                    dists.append(_Dist(name, location, record_path, parsed[0]))
        hasher.submit(_jobs(dists))
        for directory in _owners(dists):
            early.walks[directory] = list(source.files(directory))
        return locations


def describe(finding: Finding) -> str:
    """A finding on one line, for people."""
    text = f"{finding.kind} {finding.path or finding.name or ''}"
    if finding.name and finding.path:
        text += f" ({finding.name})"
    return text + (f": {finding.message}" if finding.message else "")


def require_intact(observation: Observation, shown: int = 20) -> None:
    """Raises RefusedError (exit 1) when ``--deep`` found files that disagree with their
    RECORD (or RECORDs that are malformed): lockd signs no such environment."""
    found = observation.integrity
    if found is None or (not found.findings and not found.omitted):
        return
    count = len(found.findings) + found.omitted
    lines = [describe(f) for f in found.findings[:shown]]
    if count > len(lines):
        lines.append(f"... and {count - len(lines)} more")
    raise RefusedError(
        f"{observation.target.ref}: refusing to sign: {count} installed file(s) or RECORD(s) "
        "disagree with what the packages shipped; reinstall them or rebuild the image, then "
        "record again:\n  " + "\n  ".join(lines)
    )
