"""Reading a target's files on the Docker host: a running container's merged directory or an
image's layers (overlayfs's rules), symbolic links resolved inside the target's root, each file
hashed in bounded windows."""

from __future__ import annotations

import glob
import hashlib
import mmap
import os
import posixpath
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from lockd.errors import LockdError
from lockd.evidence.cache.integrity import Guard, guard
from lockd.evidence.cache.layers import DigestCache, LayerView
from lockd.evidence.integrity.records import (
    CHUNK,
    MAP_MIN,
    MAX_LINK_HOPS,
    FileState,
    digest_text,
    is_under,
)
from lockd.evidence.overlay import is_opaque, is_whiteout
from lockd.model.host import IntegritySource

if TYPE_CHECKING:
    pass


_PATH_FLAGS: int = getattr(os, "O_PATH", os.O_RDONLY)
_SMALL_READ = 64 * 1024
_MAP_WINDOW = 16 * 1024 * 1024  # a multiple of mmap.ALLOCATIONGRANULARITY
_GUESSES = (
    "usr/lib/python3*/site-packages",
    "usr/lib/python3/dist-packages",
    "usr/local/lib/python3*/site-packages",
    "usr/local/lib/python3*/dist-packages",
    "opt/*/lib/python3*/site-packages",
    "opt/conda/envs/*/lib/python3*/site-packages",
)
"""Where distributions usually live: hashed while the probe runs, before it names them."""


# --- reading a target's files -------------------------------------------------------------------


class TooLargeError(Exception):
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
        TooLargeError, or with ``head`` give the first ``limit``. Raises OSError."""
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
                if hops > MAX_LINK_HOPS:
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
        if opened.st.st_size < MAP_MIN:
            return False
        if self.immutable:
            return True
        if self.upper is None or any(is_under("/" + opened.hit.rel, m) for m in self._mount_points):
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
            raise TooLargeError(path)
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
            mappable = opened.st_size >= MAP_MIN
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
                is_under("/" + parent.rel, m) for m in self._mount_points
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
            if st.st_size >= MAP_MIN:
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
                view = whole if before.st_size >= MAP_MIN else whole[:_SMALL_READ]
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
