"""A container's filesystem changes relative to its image: read from its overlay2 upper
directory on this host, with their content (trusted even if the container is not), else as the
daemon's changes API reports them (names and kinds only).

Deny by default: every change is evidence unless the policy names its place volatile; the walk
does not descend into the default policy's volatile places (``walk_skipped``).
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from lockd.evidence.docker import Docker, failing
from lockd.evidence.hashing import host_file_sha256
from lockd.evidence.overlay import LowerLayers, is_opaque, is_whiteout, lstat_entry
from lockd.evidence.targets.host import fit, parse_env

if TYPE_CHECKING:
    from lockd.judgement.policy import Volatile
    from lockd.model.host import ChangeKind, FileChange, FileType

__all__ = [
    "Changes",
    "changes_from_api",
    "changes_from_overlay",
    "container_changes",
    "default_volatile",
    "ld_cache_folders",
    "walk_skipped",
]

_CHANGE_KINDS: dict[int, ChangeKind] = {0: "changed", 1: "added", 2: "deleted"}
_MAX_CHANGES = 100_000  # lockd.model.host.MAX_CHANGES, not imported: the probe starts before models
_TYPES: tuple[tuple[Callable[[int], bool], FileType], ...] = (
    (stat.S_ISREG, "file"),
    (stat.S_ISLNK, "symlink"),
    (stat.S_ISDIR, "dir"),
    (stat.S_ISCHR, "char"),
    (stat.S_ISBLK, "block"),
    (stat.S_ISFIFO, "fifo"),
    (stat.S_ISSOCK, "socket"),
)
_LD_CACHE = "/etc/ld.so.cache"
_LD_CACHE_MAX = 64 * 1024 * 1024
_NEW_MAGIC = b"glibc-ld.so.cache1.1"
_OLD_MAGIC = b"ld.so-1.7.0"


def ld_cache_folders(data: bytes) -> list[str] | None:
    """The folders the entries of an ld.so.cache point the dynamic loader to (glibc's format,
    "glibc-ld.so.cache1.1", alone or after the old "ld.so-1.7.0" table), read the way ld.so
    reads them: each entry's value offset, the string there. None when it is not such a file
    or any entry points outside it: a cache lockd cannot read is not the toolkit's."""
    import struct

    base = 0
    if data.startswith(_OLD_MAGIC):
        if len(data) < 16:
            return None
        (old,) = struct.unpack_from("<I", data, 12)
        base = (16 + old * 12 + 7) & ~7
    if data[base : base + len(_NEW_MAGIC)] != _NEW_MAGIC or len(data) < base + 48:
        return None
    (count,) = struct.unpack_from("<I", data, base + 20)
    if base + 48 + count * 24 > len(data):
        return None
    folders: set[str] = set()
    for i in range(count):
        (value,) = struct.unpack_from("<I", data, base + 48 + i * 24 + 8)
        start = base + value
        end = data.find(b"\0", start)
        if value == 0 or start >= len(data) or end < 0:
            return None
        path = data[start:end].decode("utf-8", "surrogateescape")
        if not path.startswith("/"):
            return None
        folders.add(posixpath.normpath(posixpath.dirname(path)))
    return sorted(folders)[:1024] if len(folders) <= 1024 else None


def _ld_cache(path: str, st: os.stat_result) -> list[str] | None:
    if st.st_size > _LD_CACHE_MAX:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb", buffering=0) as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = f.read(_LD_CACHE_MAX + 1)
    return ld_cache_folders(data)


def _content(path: str, st: os.stat_result, where: str = "") -> dict[str, Any]:
    """What a FileChange holds of an entry of the upper directory (see FileChange)."""
    mode = st.st_mode
    kind: FileType = (
        "file" if stat.S_ISREG(mode) else next((n for t, n in _TYPES if t(mode)), "file")
    )
    found: dict[str, Any] = {
        "type": kind,
        "mode": stat.S_IMODE(mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
    }
    if kind == "file":
        found["size"] = st.st_size
        found["sha256"] = host_file_sha256(path, st)
        if where == _LD_CACHE:
            found["cache_dirs"] = _ld_cache(path, st)
    elif kind == "symlink":
        with suppress(OSError):
            found["target"] = fit(os.readlink(path))
    return found


def walk_skipped() -> list[str]:
    """The default policy's volatile places the walk does not descend into: all but bytecode
    (``__pycache__``), which sits beside the code it stands for and is read, so that a policy
    which does not call it volatile judges it (a crafted .pyc runs instead of its source)."""
    from lockd.judgement.policy import BYTECODE_PLACE, DEFAULT_VOLATILE

    return [p for p in DEFAULT_VOLATILE if p != BYTECODE_PLACE]


def default_volatile(env: dict[str, str]) -> Volatile:
    """What the walk does not descend into for a container configured with ``env``
    (walk_skipped, with its never-volatile places; a verifying policy judges what it reads)."""
    from lockd.judgement.policy import python_places, volatile_places

    return volatile_places(walk_skipped(), env, python_places(env))


def changes_from_overlay(
    upper_dir: str,
    lower_dirs: Sequence[str],
    volatile: Volatile | None = None,
    limit: int = _MAX_CHANGES,
) -> list[FileChange]:
    """A container's filesystem changes, read from its overlay2 directories on this host, with
    their content (FileChange: type, mode, owner, a file's sha256, a link's target).

    Every non-directory in the upper directory is a change: a whiteout is ``deleted``, an entry
    the image has is ``changed``, anything else ``added``; the files an opaque directory hides
    are ``deleted``. Directories themselves are not listed. Paths are container-absolute.
    Nothing in ``volatile`` is read (a directory it skips is not walked). At most ``limit`` + 1
    changes: one more than ``limit`` says there are more (the walk stopped there).

    Raises:
        OSError: a directory cannot be read (the caller falls back to the daemon's API).
    """
    from lockd.model.host import FileChange

    layers = LowerLayers(lower_dirs)
    changes: dict[str, FileChange] = {}
    stack = [""]
    while stack and len(changes) <= limit:
        rel_dir = stack.pop()
        directory = os.path.join(upper_dir, rel_dir) if rel_dir else upper_dir
        try:
            with os.scandir(directory) as entries:
                listed = sorted(entries, key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            continue  # removed while we walk: the container is running
        for entry in listed:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            path = "/" + rel
            st = lstat_entry(entry)
            if st is None:
                continue
            if stat.S_ISDIR(st.st_mode):
                if volatile is not None and volatile.skips(path):
                    continue
                if is_opaque(entry.path):
                    for hidden in sorted(layers.files_under(rel)):
                        if not os.path.lexists(os.path.join(upper_dir, hidden)):
                            gone = "/" + hidden
                            if volatile is None or gone not in volatile:
                                changes[gone] = FileChange(path=fit(gone), kind="deleted")
                            if len(changes) > limit:
                                break
                stack.append(rel)
            elif volatile is not None and path in volatile:
                continue
            elif is_whiteout(st):
                changes[path] = FileChange(path=fit(path), kind="deleted")
            else:
                kind: ChangeKind = "changed" if layers.contains(rel) else "added"
                changes[path] = FileChange(
                    path=fit(path), kind=kind, **_content(entry.path, st, path)
                )
            if len(changes) > limit:
                break
    return [changes[path] for path in sorted(changes)][: limit + 1]


def changes_from_api(
    docker: Docker,
    container: str,
    volatile: Volatile | None = None,
    limit: int = _MAX_CHANGES,
    *,
    source: str | None = None,
) -> list[FileChange]:
    """A container's filesystem changes as the daemon reports them (``docker diff``): names and
    kinds, no content. ``source`` names the container in errors.

    The daemon also lists the directories above each change; those are dropped, to match
    ``changes_from_overlay`` (an empty directory that was added still shows).

    Raises:
        TargetError: the daemon failed.
    """
    where = source or f"container {container}"
    with failing(f"cannot read the filesystem changes of {where}"):
        diff = docker.diff(container)
    return _changes_from_diff(diff, volatile, limit)


def _changes_from_diff(
    diff: Iterable[dict[str, Any]], volatile: Volatile | None = None, limit: int = _MAX_CHANGES
) -> list[FileChange]:
    """The changes of the daemon's answer, less those in ``volatile``: at most ``limit`` + 1."""
    from lockd.model.host import FileChange

    kinds = {str(item["Path"]): _CHANGE_KINDS.get(int(item["Kind"]), "changed") for item in diff}
    parents: set[str] = set()
    for path in kinds:
        parent = posixpath.dirname(path)
        while parent not in parents and parent != "/":
            parents.add(parent)
            parent = posixpath.dirname(parent)
    kept = [
        path
        for path in sorted(kinds)
        if path not in parents and (volatile is None or path not in volatile)
    ]
    return [FileChange(path=fit(path), kind=kinds[path]) for path in kept[: limit + 1]]


@dataclass(frozen=True)
class Changes:
    """A container's changes as HostEvidence records them."""

    changes: list[FileChange]
    source: Literal["overlay", "api"]
    truncated: bool
    skipped: list[str]

    def evidence(self) -> dict[str, Any]:
        """HostEvidence's fields about the changes."""
        return {
            "changes": self.changes,
            "changes_source": self.source,
            "changes_content": self.source == "overlay",
            "changes_truncated": self.truncated,
            "changes_skipped": self.skipped,
        }


def container_changes(
    attrs: dict[str, Any],
    from_api: Callable[[Volatile, int], list[FileChange]],
    limit: int = _MAX_CHANGES,
) -> Changes:
    """The changes of the container ``attrs`` (the daemon's inspect answer) describes: from its
    overlay2 upper directory when this host can read it (lockd runs beside the daemon, as
    root), else ``from_api(volatile, limit)`` (the daemon's changes API); what is volatile by
    default not read at all, at most ``limit``."""
    driver = attrs.get("GraphDriver") or {}
    data = driver.get("Data") or {}
    upper = data.get("UpperDir")
    lowers = [p for p in str(data.get("LowerDir") or "").split(":") if p]
    volatile = default_volatile(parse_env((attrs.get("Config") or {}).get("Env")))
    skipped = [p for p in walk_skipped() if not p.startswith("!")]
    if driver.get("Name") == "overlay2" and upper and os.path.isdir(upper):
        try:
            found = changes_from_overlay(upper, lowers, volatile, limit)
        except OSError:
            pass  # not ours to read after all (permissions, another host's path)
        else:
            return Changes(found[:limit], "overlay", len(found) > limit, skipped)
    found = from_api(volatile, limit)
    return Changes(found[:limit], "api", len(found) > limit, skipped)
