"""Docker targets: running containers and images, through the Docker Engine API.

Two kinds of evidence, as the architecture describes:

* from the host (trusted even if the container is not): the image identity the daemon
  reports, the mounts, the configured environment, and the container's filesystem changes
  read from the overlay2 upper directory on this host (or the daemon's changes API);
* from inside: the probe, run by the target's own Python through ``docker exec`` (for a
  container) or as the only process of a throw-away container (for an image). Its output
  is untrusted: read with a deadline and a size cap, then validated by ``parse_probe_document``.

The daemon is asked through lockd's Docker interface (lockd.evidence.docker), which alone knows
how a call travels. Every failure becomes a ``TargetError`` (exit 3) naming the target.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import signal
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from lockd.errors import InputError, ProbeError, TargetError
from lockd.evidence import kernel
from lockd.evidence.cache import probe as probecache
from lockd.evidence.docker import (
    Archive,
    DaemonError,
    Docker,
    NotFoundError,
    Stream,
    cause,
    connect,
    failing,
    read_frames,
)
from lockd.evidence.targets.base import (
    MAX_PROBE_OUTPUT,
    PLAIN,
    PROBE_TIMEOUT,
    Fetch,
    Files,
    Gpus,
    HostFiles,
    ProbeOptions,
    parse_probe_document,
    probe_arguments,
    stderr_tail,
)

if TYPE_CHECKING:
    from lockd.evidence.targets.base import Target
    from lockd.judgement.policy import Volatile
    from lockd.model.environment import FamilyImports, ProbeReport
    from lockd.model.host import ChangeKind, FileChange, FileType, HostEvidence, Mount, TargetInfo
    from lockd.model.manifest import Observation

__all__ = [
    "THROWAWAY_LABEL",
    "ContainerTarget",
    "ImageTarget",
    "changes_from_api",
    "changes_from_overlay",
    "open_docker_target",
    "overlay_dirs",
    "resolve",
]

THROWAWAY_LABEL = "lockd.throwaway"
"""Label on the containers ImageTarget starts (and always removes): find leftovers with it."""

PYTHONS = ("python3", "python")
"""Interpreters tried, in order, when no --python is given."""

_NOT_FOUND_EXIT_CODES = (126, 127)  # the runtime could not find or run the interpreter
_CONTAINER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
_EXIT_WAIT = 5.0  # seconds to wait for an exec's exit code once its output has closed
_TEXT_LIMIT = 4096  # the model's longest string
_OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
_CHANGE_KINDS: dict[int, ChangeKind] = {0: "changed", 1: "added", 2: "deleted"}
_MAX_CHANGES = 100_000  # lockd.model.host.MAX_CHANGES, not imported: the probe starts before models


# --- the daemon ---------------------------------------------------------------------------------


def open_docker_target(
    ref: str,
    *,
    python: str | None = None,
    timeout: float = PROBE_TIMEOUT,
    max_output: int = MAX_PROBE_OUTPUT,
) -> Target:
    """What ``ref`` names on the daemon at DOCKER_HOST, as ``resolve`` finds it.

    Raises:
        InputError: the reference is empty after its prefix (exit 2).
        TargetError: no daemon answers, nothing has that name, or the daemon failed (exit 3).
    """
    return resolve(ref, connect(), python=python, timeout=timeout, max_output=max_output)


def resolve(
    ref: str,
    docker: Docker,
    *,
    python: str | None = None,
    timeout: float = PROBE_TIMEOUT,
    max_output: int = MAX_PROBE_OUTPUT,
) -> Target:
    """The target ``ref`` names on ``docker``: ``container:X``, ``image:X``, or a bare X (a
    container of that name or ID if one exists, else an image).

    Raises:
        InputError: the reference is empty after its prefix (exit 2).
        TargetError: no daemon answers, nothing has that name, or the daemon failed (exit 3).
    """
    kind, name = _split_ref(ref)
    options: dict[str, Any] = {"python": python, "timeout": timeout, "max_output": max_output}
    if kind == "container" and not _CONTAINER_NAME.match(name.removeprefix("/")):
        raise _no_container(name)  # no container can have that name (or ID)
    if _may_be_container(kind, name):
        with failing(f"cannot look up container {name}"):
            try:
                return ContainerTarget(docker, docker.inspect_container(name), **options)
            except NotFoundError:
                pass
    return _image_target(docker, kind, name, options)


def _may_be_container(kind: str, name: str) -> bool:
    return kind == "container" or (not kind and _CONTAINER_NAME.match(name) is not None)


def _no_container(name: str) -> TargetError:
    return TargetError(
        f"no container named {name!r}; list the running ones with `docker ps`, "
        f"or verify an image with image:{name}"
    )


def _image_target(docker: Docker, kind: str, name: str, options: dict[str, Any]) -> ImageTarget:
    """The image ``name``, once no container has that name (``kind``: the ref's prefix)."""
    if kind == "container":
        raise _no_container(name)
    if not kind and _find_image(docker, name) is None:
        raise TargetError(
            f"no container or image named {name!r}; list them with `docker ps -a` and "
            "`docker images`, or pull or build the image first"
        )
    return ImageTarget(docker, name, **options)


def _split_ref(ref: str) -> tuple[Literal["container", "image", ""], str]:
    for prefix in ("container", "image"):
        if ref.startswith(prefix + ":"):
            name = ref[len(prefix) + 1 :]
            if not name:
                raise InputError(f"target {ref!r} names no {prefix}; write {prefix}:NAME")
            return prefix, name
    if not ref:
        raise InputError("the target is empty; name a container, an image, or local")
    return "", ref


def _find_image(docker: Docker, ref: str) -> dict[str, Any] | None:
    """The daemon's inspect answer for the image ``ref``, None when there is none."""
    with failing(f"cannot look up image {ref}"):
        try:
            return docker.inspect_image(ref)
        except NotFoundError:
            return None
        except DaemonError as e:
            if e.status == 400:  # not a valid reference: nothing can have that name
                return None
            raise


# --- host evidence ------------------------------------------------------------------------------


def _fit(text: str) -> str:
    """``text`` within the model's string limit; an over-long value keeps a digest of itself
    so that a change in it still shows."""
    if len(text) <= _TEXT_LIMIT:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{text[: _TEXT_LIMIT - 90]}...(sha256:{digest})"


def _parse_env(env: Sequence[str] | None) -> dict[str, str]:
    """``["K=V", ...]`` as a dict; an entry without ``=`` maps to the empty string."""
    result: dict[str, str] = {}
    for entry in env or ():
        key, _, value = entry.partition("=")
        result[_fit(key)] = _fit(value)
    return result


def _image_names(docker: Docker, image_id: str) -> tuple[list[str], list[str]]:
    """(repo digests, repo tags) of an image; none when the image has gone (untagged and
    removed while a container still uses it)."""
    with failing(f"cannot look up image {image_id}"):
        try:
            attrs = docker.inspect_image(image_id)
        except NotFoundError:
            return [], []
    return sorted(attrs.get("RepoDigests") or []), sorted(attrs.get("RepoTags") or [])


def _mounts(attrs: dict[str, Any]) -> list[Mount]:
    from lockd.model.host import Mount

    mounts = [
        Mount(
            destination=_fit(str(m.get("Destination", ""))),
            source=_fit(str(m.get("Source", ""))),
            type=str(m.get("Type", "")),
            rw=bool(m.get("RW", False)),
        )
        for m in attrs.get("Mounts") or []
    ]
    return sorted(mounts, key=lambda m: m.destination)


# --- filesystem changes -------------------------------------------------------------------------


def _is_whiteout(st: os.stat_result) -> bool:
    """overlayfs marks a deleted entry with a character device 0:0."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: str) -> bool:
    """overlayfs marks a directory that hides everything below it in lower layers."""
    for name in _OPAQUE_XATTRS:
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False


_Entry = Literal["missing", "whiteout", "file", "dir", "opaque"]


class _LowerLayers:
    """The image's layers, top first, as overlayfs merges them (whiteouts, opaque dirs)."""

    def __init__(self, lowers: Sequence[str]) -> None:
        self.lowers = list(lowers)
        self._dirs: dict[tuple[str, str], _Entry] = {}

    def _entry(self, layer: str, rel: str, cache: bool) -> _Entry:
        key = (layer, rel)
        if cache and key in self._dirs:
            return self._dirs[key]
        path = os.path.join(layer, rel)
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            entry: _Entry = "missing"
        else:
            if _is_whiteout(st):
                entry = "whiteout"
            elif stat.S_ISDIR(st.st_mode):
                entry = "opaque" if _is_opaque(path) else "dir"
            else:
                entry = "file"
        if cache:
            self._dirs[key] = entry
        return entry

    def contains(self, rel: str) -> bool:
        """Whether the image (all lower layers merged) has something at ``rel``."""
        parts = rel.split("/")
        for layer in self.lowers:
            hides_lower = False
            for depth in range(1, len(parts) + 1):
                last = depth == len(parts)
                entry = self._entry(layer, "/".join(parts[:depth]), cache=not last)
                if entry == "missing":
                    break
                if entry == "whiteout":
                    return False
                if last:
                    return True
                if entry == "file":  # a file where a parent directory should be
                    return False
                if entry == "opaque":
                    hides_lower = True
            if hides_lower:
                return False
        return False

    def files_under(self, rel: str) -> set[str]:
        """Every non-directory the image shows below the directory ``rel``."""
        found: set[str] = set()
        for layer in self.lowers:
            top = os.path.join(layer, rel)
            for path in _walk_files(top):
                candidate = rel + "/" + os.path.relpath(path, top)
                if candidate not in found and self.contains(candidate):
                    found.add(candidate)
        return found


def _lstat(entry: os.DirEntry[str]) -> os.stat_result | None:
    try:
        return entry.stat(follow_symlinks=False)
    except FileNotFoundError:  # removed while we walk: the container is running
        return None


def _walk_files(top: str) -> Iterator[str]:
    """Every non-directory, non-whiteout path below ``top`` (not following links)."""
    stack = [top]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as entries:
                listed = list(entries)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in listed:
            st = _lstat(entry)
            if st is None:
                continue
            if stat.S_ISDIR(st.st_mode):
                stack.append(entry.path)
            elif not _is_whiteout(st):
                yield entry.path


_HASH_CHUNK = 1024 * 1024
_TYPES: tuple[tuple[Callable[[int], bool], FileType], ...] = (
    (stat.S_ISREG, "file"),
    (stat.S_ISLNK, "symlink"),
    (stat.S_ISDIR, "dir"),
    (stat.S_ISCHR, "char"),
    (stat.S_ISBLK, "block"),
    (stat.S_ISFIFO, "fifo"),
    (stat.S_ISSOCK, "socket"),
)


def _sha256(path: str, st: os.stat_result) -> str | None:
    """The sha256 of the regular file at ``path`` (streamed: bounded memory), None when it is
    gone or is no longer the file ``st`` describes (replaced while lockd reads)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            return None
        digest = hashlib.sha256()
        while chunk := os.read(fd, _HASH_CHUNK):
            digest.update(chunk)
        return digest.hexdigest()
    except OSError:
        return None
    finally:
        os.close(fd)


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
        found["sha256"] = _sha256(path, st)
        if where == _LD_CACHE:
            found["cache_dirs"] = _ld_cache(path, st)
    elif kind == "symlink":
        with suppress(OSError):
            found["target"] = _fit(os.readlink(path))
    return found


def walk_skipped() -> list[str]:
    """The default policy's volatile places the walk does not descend into: all but bytecode
    (``__pycache__``), which sits beside the code it stands for and is read, so that a policy
    which does not call it volatile judges it (a crafted .pyc runs instead of its source)."""
    from lockd.judgement.policy import BYTECODE_PLACE, DEFAULT_VOLATILE

    return [p for p in DEFAULT_VOLATILE if p != BYTECODE_PLACE]


def _default_volatile(env: dict[str, str]) -> Volatile:
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

    layers = _LowerLayers(lower_dirs)
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
            st = _lstat(entry)
            if st is None:
                continue
            if stat.S_ISDIR(st.st_mode):
                if volatile is not None and volatile.skips(path):
                    continue
                if _is_opaque(entry.path):
                    for hidden in sorted(layers.files_under(rel)):
                        if not os.path.lexists(os.path.join(upper_dir, hidden)):
                            gone = "/" + hidden
                            if volatile is None or gone not in volatile:
                                changes[gone] = FileChange(path=_fit(gone), kind="deleted")
                            if len(changes) > limit:
                                break
                stack.append(rel)
            elif volatile is not None and path in volatile:
                continue
            elif _is_whiteout(st):
                changes[path] = FileChange(path=_fit(path), kind="deleted")
            else:
                kind: ChangeKind = "changed" if layers.contains(rel) else "added"
                changes[path] = FileChange(
                    path=_fit(path), kind=kind, **_content(entry.path, st, path)
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
    return [FileChange(path=_fit(path), kind=kinds[path]) for path in kept[: limit + 1]]


@dataclass(frozen=True)
class _Changes:
    changes: list[FileChange]
    source: Literal["overlay", "api"]
    truncated: bool
    skipped: list[str]
    gpus: bool

    def evidence(self) -> dict[str, Any]:
        """HostEvidence's fields about the changes."""
        return {
            "changes": self.changes,
            "changes_source": self.source,
            "changes_content": self.source == "overlay",
            "changes_truncated": self.truncated,
            "changes_skipped": self.skipped,
            "gpus_requested": self.gpus,
        }


def _gpus_requested(attrs: dict[str, Any]) -> bool:
    """Whether the container asked for GPUs: ``--gpus`` or a CDI device (DeviceRequests), the
    nvidia runtime."""
    host_config = attrs.get("HostConfig") or {}
    runtime = str(host_config.get("Runtime") or "")
    return bool(host_config.get("DeviceRequests")) or "nvidia" in runtime


def _changes(
    attrs: dict[str, Any],
    from_api: Callable[[Volatile, int], list[FileChange]],
    limit: int = _MAX_CHANGES,
) -> _Changes:
    """The changes of the container ``attrs`` describes (see container_changes), but what is
    volatile by default (not read at all), at most ``limit``."""
    driver = attrs.get("GraphDriver") or {}
    data = driver.get("Data") or {}
    upper = data.get("UpperDir")
    lowers = [p for p in str(data.get("LowerDir") or "").split(":") if p]
    volatile = _default_volatile(_parse_env((attrs.get("Config") or {}).get("Env")))
    skipped = [p for p in walk_skipped() if not p.startswith("!")]
    gpus = _gpus_requested(attrs)
    if driver.get("Name") == "overlay2" and upper and os.path.isdir(upper):
        try:
            found = changes_from_overlay(upper, lowers, volatile, limit)
        except OSError:
            pass  # not ours to read after all (permissions, another host's path)
        else:
            return _Changes(found[:limit], "overlay", len(found) > limit, skipped, gpus)
    found = from_api(volatile, limit)
    return _Changes(found[:limit], "api", len(found) > limit, skipped, gpus)


# --- files, for lockd.evidence.integrity (--deep) -------------------------------------------------


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


def _readable_dir(path: str) -> bool:
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


# --- running something in a target, bounded -----------------------------------------------------


def _size(n: int) -> str:
    for unit, factor in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if n >= factor and n % factor == 0:
            return f"{n // factor} {unit}"
    return f"{n} bytes"


def _stopped(source: str, status: str, timeout: float, max_output: int) -> ProbeError:
    if status == "timeout":
        return ProbeError(
            f"{source}: probe timed out after {timeout:g}s; the target may be overloaded or "
            "stuck importing a library (torch?): retry, or inspect it"
        )
    return ProbeError(
        f"{source}: probe output exceeds {_size(max_output)}; something in the target floods "
        "stdout (is its python a real Python interpreter?)"
    )


def _exited(source: str, python: str, code: int, stderr: bytes) -> ProbeError:
    return ProbeError(
        f"{source}: probe ({python}) exited with status {code}: {stderr_tail(stderr)}"
    )


def _candidates(python: str | None) -> tuple[str, ...]:
    return (python,) if python else PYTHONS


def _no_python(kind: str, source: str, python: str | None) -> str:
    """Why there is no probe report: no interpreter found. An explicit --python that is not
    there is the user's mistake: an error, not an observation.

    Raises:
        TargetError: ``python`` was given and is not in the target.
    """
    if python:
        raise TargetError(f"{source}: there is no interpreter {python} there; check --python")
    return f"no Python interpreter found in the {kind} (tried {', '.join(PYTHONS)})"


# --- a running container ------------------------------------------------------------------------


def _mount_namespace(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def _wait_dead(pid: int, timeout: float = 2.0) -> None:
    """Wait (a little) until a killed process is gone or a zombie: SIGKILL is delivered
    asynchronously, and "killed" should hold when the caller goes on."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                state = handle.read().rpartition(b")")[2].split()[:1]
        except OSError:
            return
        if state in ([b"Z"], [b"X"]):
            return
        time.sleep(0.01)


class ContainerTarget:
    """A running container: host evidence from the daemon and the host's overlay directories,
    the probe through ``docker exec``."""

    def __init__(
        self,
        docker: Docker,
        attrs: dict[str, Any],
        python: str | None = None,
        timeout: float = PROBE_TIMEOUT,
        max_output: int = MAX_PROBE_OUTPUT,
    ) -> None:
        """``attrs``: the daemon's inspect answer for the container."""
        self._docker = docker
        self.attrs = attrs
        self.id = str(attrs["Id"])
        self.python = python
        self.timeout = timeout
        self.max_output = max_output
        self.name: str = str(attrs.get("Name") or "").lstrip("/") or self.id
        self._info: TargetInfo | None = None
        self._source = f"container {self.name}"

    @property
    def info(self) -> TargetInfo:
        """Made on first use: the probe starts before lockd's models are imported."""
        if self._info is None:
            from lockd.model.host import TargetInfo

            self._info = TargetInfo(kind="container", ref=self.name)
        return self._info

    def _gone(self) -> TargetError:
        return TargetError(f"{self._source} no longer exists; list containers with `docker ps -a`")

    def inspect(self) -> dict[str, Any]:
        """The daemon's current inspect answer for the container (also kept in ``attrs``).

        Raises:
            TargetError: the container is gone, or the daemon failed.
        """
        with failing(f"cannot inspect {self._source}"):
            try:
                attrs = self._docker.inspect_container(self.id)
            except NotFoundError as e:
                raise self._gone() from e
        self.attrs = attrs
        return attrs

    def observe(self, options: ProbeOptions = PLAIN) -> Observation:
        """Host evidence, then the probe's report (or why there is none: no Python).

        The probe starts first and runs in the container while the host evidence is gathered;
        with ``options.reuse``, its report is taken from the probe cache instead when
        nothing it can see has changed since it was kept (lockd.evidence.cache.probe).

        Raises:
            TargetError: the container is gone or not running, or the daemon failed.
            ProbeError: the probe failed, hung, flooded its output or printed garbage.
        """
        attrs = self.inspect()
        state = attrs.get("State") or {}
        status = str(state.get("Status", "unknown"))
        if status != "running":
            image = (attrs.get("Config") or {}).get("Image") or attrs.get("Image")
            raise TargetError(
                f"{self._source} is not running (status: {status}); start it or verify its "
                f"image with image:{image}"
            )
        pythons = _candidates(self.python)
        cached, keys, kind = self._kept_report(attrs, pythons, options)
        if cached is not None:
            try:
                probe, imports = self._parse(cached.stdout, options)
            except ProbeError:
                pass  # kept by a lockd whose models differ: ask the probe
            else:
                host = self._host_evidence(attrs)
                return self._observation(host, probe, imports, None, cached.observed_at)
        timeout = self.timeout + options.extra_time
        deadline = time.monotonic() + timeout
        started = self._start(self._probe_argv(pythons[0], options), "the probe", self._source)
        try:
            host = self._host_evidence(attrs)
        except BaseException:
            started[1].close()
            raise
        ran = self._probe(pythons, started, state, deadline, timeout, options)
        if ran is None:
            no_python = _no_python("container", self._source, self.python)
            return self._observation(host, None, None, no_python)
        stdout, python = ran
        probe, imports = self._parse(stdout, options)
        if keys.own or keys.sibling:  # kept where nothing changed while it ran
            after = probecache.keys(self.inspect(), self._probe_argvs(pythons, options))
            env = (self.attrs.get("Config") or {}).get("Env") or []
            rests_on = probecache.places(probe, env)
            for name, key in probecache.still_standing(self.id, keys, after, self.attrs, rests_on):
                probecache.store(name, key, stdout, python, rests_on, kind=kind)
        return self._observation(host, probe, imports, None)

    def _observation(
        self,
        host: HostEvidence,
        probe: ProbeReport | None,
        imports: FamilyImports | None,
        probe_error: str | None,
        reused_from: str | None = None,
    ) -> Observation:
        from lockd.model.manifest import (
            Observation,  # here: the probe starts before the models load
        )

        return Observation(
            target=self.info,
            host=host,
            probe=probe,
            probe_error=probe_error,
            family_imports=imports,
            probe_reused_from=reused_from,
        )

    def _kept_report(
        self, attrs: dict[str, Any], pythons: tuple[str, ...], options: ProbeOptions
    ) -> tuple[probecache.CachedProbe | None, probecache.Keys, str]:
        """(the probe cache's report for the container or None, the fingerprints looked under,
        the probe's variant). Its own fingerprint is tried first; the one it shares with
        identical containers of its image (which hashes the content of the container's own
        files) only when that finds nothing."""
        if not options.reuse:
            return None, probecache.Keys(None, None), ""
        argvs = self._probe_argvs(pythons, options)
        kind = probecache.variant(argvs)

        def load(name: str, key: probecache.KeyFor) -> probecache.CachedProbe | None:
            return probecache.load(name, key, kind=kind)

        found, keys = probecache.first_kept(self.id, attrs, argvs, load)
        return found, keys, kind

    def _probe_argvs(self, pythons: tuple[str, ...], options: ProbeOptions) -> list[list[str]]:
        return [self._probe_argv(python, options) for python in pythons]

    def _parse(
        self, stdout: bytes, options: ProbeOptions
    ) -> tuple[ProbeReport, FamilyImports | None]:
        return parse_probe_document(stdout, self._source, family_imports=options.family_imports)

    @staticmethod
    def _probe_argv(python: str, options: ProbeOptions) -> list[str]:
        return [python, *probe_arguments(options)]

    def _host_evidence(self, attrs: dict[str, Any]) -> HostEvidence:
        from lockd.model.host import HostEvidence

        image_id = str(attrs["Image"])
        repo_digests, repo_tags = _image_names(self._docker, image_id)
        changes = _changes(attrs, self._changes_from_api)
        host_config = attrs.get("HostConfig") or {}
        return HostEvidence(
            image_id=image_id,
            repo_digests=repo_digests,
            repo_tags=repo_tags,
            container_id=str(attrs.get("Id", self.id)),
            **changes.evidence(),
            mounts=_mounts(attrs),
            config_env=_parse_env((attrs.get("Config") or {}).get("Env")),
            kernel=kernel.evidence(kernel.read_view(attrs, self._source)),
            privileged=bool(host_config.get("Privileged")),
            cap_add=sorted(str(c) for c in host_config.get("CapAdd") or [])[:64],
        )

    def _changes_from_api(self, volatile: Volatile, limit: int) -> list[FileChange]:
        return changes_from_api(self._docker, self.id, volatile, limit, source=self._source)

    def _probe(
        self,
        pythons: tuple[str, ...],
        started: tuple[str, Stream],
        state: dict[str, Any],
        deadline: float,
        timeout: float,
        options: ProbeOptions,
    ) -> tuple[bytes, str] | None:
        """(the probe's output, the interpreter that ran it) from the first of ``pythons``
        the container has (``started`` already runs it); None when it has none."""
        for tried, python in enumerate(pythons):
            if tried:
                started = self._start(self._probe_argv(python, options), "the probe", self._source)
            stdout, stderr, code = self._finish(
                started, "the probe", self._source, deadline, timeout, self.max_output, state
            )
            if code is None:
                raise ProbeError(
                    f"{self._source}: probe ({python}) closed its output but did not exit; "
                    "inspect the container"
                )
            if code in _NOT_FOUND_EXIT_CODES:
                continue
            if code != 0:
                raise _exited(self._source, python, code, stderr)
            return stdout, python
        return None

    def run_script(
        self,
        argv: Sequence[str],
        *,
        what: str,
        source: str,
        timeout: float,
        max_output: int,
        gpus: Gpus = "none",
    ) -> bytes:
        """Run ``argv`` (``[python, ...]``) in the container with ``docker exec`` to
        completion, bounded like the probe, and return its stdout (Target.run_script; the
        container has the GPUs it was started with). ``what`` names the script in errors
        ("the GPU suite"), ``source`` starts every message.

        Raises:
            TargetError: the container is gone, or the daemon failed.
            ProbeError: the script exits non-zero, outlives ``timeout`` seconds or prints more
                than ``max_output`` bytes (it is killed then).
        """
        deadline = time.monotonic() + timeout
        state = self.inspect().get("State") or {}
        started = self._start(argv, what, source)
        stdout, stderr, code = self._finish(
            started, what, source, deadline, timeout, max_output, state
        )
        if code != 0:
            raise _exited(source, argv[0], -1 if code is None else code, stderr)
        return stdout

    def _start(self, argv: Sequence[str], what: str, source: str) -> tuple[str, Stream]:
        """Create and start ``argv`` as an exec: (its ID, the stream of its output)."""
        with failing(f"{source}: cannot run {what}"):
            try:
                exec_id = self._docker.exec_create(self.id, argv)
            except NotFoundError as e:
                raise self._gone() from e
            return exec_id, self._docker.exec_start(exec_id)

    def _finish(
        self,
        started: tuple[str, Stream],
        what: str,
        source: str,
        deadline: float,
        timeout: float,
        max_output: int,
        state: dict[str, Any],
    ) -> tuple[bytes, bytes, int | None]:
        """(stdout, stderr tail, exit status) of a started exec; the status is None when it
        closed its output but did not exit (it is killed).

        Raises:
            ProbeError: it outlived the deadline or printed more than ``max_output`` bytes
                (it is killed).
        """
        exec_id, stream = started
        try:
            with failing(f"{source}: lost the output of {what}"):
                stdout, stderr, end = read_frames(stream, deadline, max_output)
        finally:
            stream.close()
        if end != "eof":
            self._kill(exec_id, state)
            raise _stopped(source, end, timeout, max_output)
        code = self._exit_code(exec_id)
        if code is None:
            self._kill(exec_id, state)
        return stdout, stderr, code

    def _exit_code(self, exec_id: str) -> int | None:
        give_up = time.monotonic() + _EXIT_WAIT
        with failing(f"{self._source}: cannot read the exit status of {exec_id[:12]}"):
            while True:
                details = self._docker.exec_inspect(exec_id)
                if not details.get("Running") or time.monotonic() > give_up:
                    code = details.get("ExitCode")
                    return int(code) if code is not None else None
                time.sleep(0.02)

    def _kill(self, exec_id: str, state: dict[str, Any]) -> None:
        """Kill the exec'd process by its host pid, when it provably lives in this container
        on this host (same mount namespace as the container's init, not ours); else leave it."""
        pid = self._exec_pid(exec_id)
        init_pid = int(state.get("Pid") or 0)
        if pid <= 0 or init_pid <= 0:
            return
        namespace = _mount_namespace(pid)
        if namespace is None or namespace != _mount_namespace(init_pid):
            return
        if namespace == _mount_namespace("self"):
            return
        with suppress(OSError):
            os.kill(pid, signal.SIGKILL)
            _wait_dead(pid)

    def _exec_pid(self, exec_id: str) -> int:
        """The host pid of a running exec, 0 when it has none (it ended, or the daemon cannot
        say). The daemon reports Pid 0 for a while after an exec started, even while it is
        running and printing: ask again until it names one."""
        give_up = time.monotonic() + _EXIT_WAIT
        while True:
            try:
                details = self._docker.exec_inspect(exec_id)
                pid = int(details.get("Pid") or 0)
            except (DaemonError, ValueError):
                return 0
            if pid > 0 or not details.get("Running") or time.monotonic() > give_up:
                return pid
            time.sleep(0.02)

    def overlay_storage(self) -> tuple[str, str] | None:
        """(merged directory, upper directory) of the container's overlay2 storage, when this
        host can read them: lockd runs beside the daemon, as root, and the container's root
        filesystem is mounted there. The upper directory holds what the container wrote."""
        merged, layers = overlay_dirs(self.attrs)
        if (
            merged is None
            or not layers
            or not _readable_dir(merged)
            or not _readable_dir(layers[0])
        ):
            return None
        return (merged, layers[0]) if os.path.ismount(merged) else None

    def image_attrs(self) -> dict[str, Any] | None:
        """The daemon's inspect answer for the container's image (its layers, for the layer
        cache of --deep); None when the daemon cannot give it."""
        try:
            return self._docker.inspect_image(str(self.attrs.get("Image") or ""))
        except (DaemonError, OSError):  # the cache is an optimisation: hash everything
            return None

    def mount_sources(self) -> list[tuple[str, str]] | None:
        """(destination, host path) of each of the container's bind mounts and volumes: the
        merged directory does not show them, so what the container sees there is read from
        the source. None when a mount's content is not a path on this host (tmpfs, a volume
        driver's)."""
        found = []
        for mount in self.attrs.get("Mounts") or []:
            source = str(mount.get("Source") or "")
            destination = str(mount.get("Destination") or "")
            if mount.get("Type") not in ("bind", "volume") or not os.path.exists(source):
                return None
            found.append((destination, source))
        return found

    def fetch_archive(self, path: str) -> Archive | None:
        """``path`` in the container as the daemon's tar stream, None when nothing is there.

        Raises:
            TargetError: the daemon failed (also while the stream arrives).
        """
        what = f"{self._source}: cannot read {path} through the Docker API"
        return fetch_archive(self._docker, self.id, path, what)

    @contextmanager
    def _archive(self) -> Iterator[Fetch]:
        """``fetch_archive``, once the container is known to be there (a container gone is a
        TargetError, not its files missing)."""
        self.inspect()
        yield self.fetch_archive

    def files(self) -> Files:
        """The merged directory on this host when lockd can read it there (and every mount's
        source), else the daemon's archive API (Target.files)."""
        storage = self.overlay_storage()
        mounts = self.mount_sources()
        host = None
        if storage is not None and mounts is not None:
            _, layers = overlay_dirs(self.attrs)
            host = HostFiles(
                kind="overlay",
                roots=(storage[0],),
                description=f"the merged directory of container {self.name}",
                upper=storage[1],
                layers=tuple(layers),
                mounts=tuple(mounts),
                image=self.image_attrs,
            )
        return Files(
            host=host,
            archive=self._archive,
            archive_description=f"container {self.name} (Docker API)",
        )

    def running(self) -> ContainerTarget:
        """This container (Target.running)."""
        return self


# --- an image -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Bounds:
    """What runs in a throw-away container (named in errors), the ``source`` that starts each
    message, its time and output limits, and the monotonic deadline."""

    purpose: str
    source: str
    timeout: float
    max_output: int
    deadline: float


class ImageTarget:
    """An image: host evidence from the daemon, the probe as the only process of a throw-away
    container (no network, removed in every case)."""

    def __init__(
        self,
        docker: Docker,
        image_ref: str,
        python: str | None = None,
        timeout: float = PROBE_TIMEOUT,
        max_output: int = MAX_PROBE_OUTPUT,
    ) -> None:
        """Raises TargetError when there is no such image (exit 3)."""
        from lockd.model.host import TargetInfo

        self._docker = docker
        self.image_ref = image_ref
        self.python = python
        self.timeout = timeout
        self.max_output = max_output
        self.info = TargetInfo(kind="image", ref=image_ref)
        self._source = f"image {image_ref}"
        attrs = _find_image(docker, image_ref)
        if attrs is None:
            raise TargetError(
                f"no image named {image_ref!r}; list images with `docker images`, or pull or "
                "build it first"
            )
        self.attrs = attrs
        """The daemon's inspect answer for the image."""
        self.image_id = str(attrs["Id"])

    def observe(self, options: ProbeOptions = PLAIN) -> Observation:
        """Host evidence from the image, then the probe's report (or why there is none).

        Raises:
            TargetError: the daemon failed, or the throw-away container could not be removed.
            ProbeError: the probe failed, hung, flooded its output or printed garbage.
        """
        from lockd.model.host import HostEvidence
        from lockd.model.manifest import Observation

        attrs = self.attrs
        host = HostEvidence(
            image_id=self.image_id,
            repo_digests=sorted(attrs.get("RepoDigests") or []),
            repo_tags=sorted(attrs.get("RepoTags") or []),
            changes=[],
            changes_source="none",
            mounts=[],
            config_env=_parse_env((attrs.get("Config") or {}).get("Env")),
        )
        timeout = self.timeout + options.extra_time
        deadline = time.monotonic() + timeout
        bounds = _Bounds("the probe", self._source, timeout, self.max_output, deadline)
        for python in _candidates(self.python):
            stdout = self._run_throwaway(python, probe_arguments(options), bounds, gpus=False)
            if stdout is not None:
                probe, imports = parse_probe_document(
                    stdout, self._source, family_imports=options.family_imports
                )
                return Observation(target=self.info, host=host, probe=probe, family_imports=imports)
        return Observation(
            target=self.info, host=host, probe_error=_no_python("image", self._source, self.python)
        )

    def run_script(
        self,
        argv: Sequence[str],
        *,
        what: str,
        source: str,
        timeout: float,
        max_output: int,
        gpus: Gpus = "none",
    ) -> bytes:
        """Run ``argv`` (``[python, ...]``) as the only process of a throw-away container of
        the image (no network; ``gpus`` as lockd.evidence.targets.base.Gpus says) to completion,
        bounded like the probe, and return its stdout; the container is removed in every case.

        Raises:
            TargetError: the daemon failed, or the container could not be removed.
            ProbeError: there is no such interpreter, or the script exits non-zero, outlives
                ``timeout`` seconds or prints more than ``max_output`` bytes.
        """
        wanted = self._wants_gpus(gpus, source)
        python = argv[0]
        bounds = _Bounds(what, source, timeout, max_output, time.monotonic() + timeout)
        stdout = self._run_throwaway(python, list(argv[1:]), bounds, gpus=wanted)
        if stdout is None:
            raise ProbeError(f"{source}: there is no interpreter {python} in the image")
        return stdout

    def _wants_gpus(self, gpus: Gpus, source: str) -> bool:
        if gpus != "auto":
            return gpus == "all"
        with failing(f"{source}: cannot ask the daemon for its runtimes"):
            runtimes = self._docker.info().get("Runtimes") or {}
        return "nvidia" in runtimes

    def _run_throwaway(
        self, python: str, arguments: list[str], bounds: _Bounds, *, gpus: bool
    ) -> bytes | None:
        """Run ``python arguments`` in a throw-away container, removed in every case; its
        stdout, or None when the image has no ``python``."""
        container_id = self._create_throwaway(
            f"to run {bounds.purpose}",
            entrypoint=[python],
            command=arguments,
            runs=True,
            gpus=gpus,
        )
        try:
            result = self._run_in(container_id, python, bounds)
        except BaseException:
            self._remove(container_id, quiet=True)
            raise
        self._remove(container_id, quiet=False)
        return result

    def _run_in(self, container_id: str, python: str, bounds: _Bounds) -> bytes | None:
        docker = self._docker
        purpose, source, deadline = bounds.purpose, bounds.source, bounds.deadline
        what = f"{source}: cannot run {purpose}"
        with failing(what):
            stream = docker.attach(container_id)
        try:
            with failing(what):
                try:
                    docker.start(container_id)
                except DaemonError as e:
                    if e.status is None:  # no answer from the daemon: nothing to ask it
                        raise
                    state = docker.inspect_container(container_id).get("State") or {}
                    if state.get("ExitCode") in _NOT_FOUND_EXIT_CODES:
                        return None
                    raise TargetError(f"{what}: {cause(e)}") from e
            with failing(f"{source}: lost the output of {purpose}"):
                stdout, stderr, end = read_frames(stream, deadline, bounds.max_output)
        finally:
            stream.close()
        if end != "eof":
            raise _stopped(source, end, bounds.timeout, bounds.max_output)
        with failing(f"{source}: {purpose} did not exit"):
            code = docker.wait(container_id, timeout=max(deadline - time.monotonic(), 1.0))
        if code in _NOT_FOUND_EXIT_CODES:
            return None
        if code != 0:
            raise _exited(source, python, code, stderr)
        return stdout

    def files(self) -> Files:
        """The image's layer directories on this host when lockd can read them there, else
        the daemon's archive API through a throw-away container (Target.files)."""
        layers = self.layer_dirs()
        host = None
        if layers:
            host = HostFiles(
                kind="layers",
                roots=tuple(layers),
                description=f"the layers of image {self.image_ref}",
                image=lambda: self.attrs,
            )
        return Files(
            host=host,
            archive=self.archive_container,
            archive_description=f"image {self.image_ref} (Docker API)",
        )

    def running(self) -> None:
        """An image is no running container: nothing is kept for it."""

    def layer_dirs(self) -> list[str] | None:
        """The image's overlay2 layer directories, top first, when this host can read them
        (lockd runs beside the daemon, as root); else None."""
        _, layers = overlay_dirs(self.attrs)
        if not layers or not all(_readable_dir(layer) for layer in layers):
            return None
        return layers

    @contextmanager
    def archive_container(self) -> Iterator[Fetch]:
        """A throw-away container of the image, created and never started, to read files
        from through the daemon's archive API: yields ``fetch(path)``; always removed.

        Raises:
            TargetError: the daemon failed.
        """
        container_id = self._create_throwaway(
            "to read its files", entrypoint=["/lockd-reads-files-never-runs"]
        )

        def fetch(path: str) -> Archive | None:
            what = f"{self._source}: cannot read {path} through the Docker API"
            return fetch_archive(self._docker, container_id, path, what)

        try:
            yield fetch
        except BaseException:
            self._remove(container_id, quiet=True)
            raise
        self._remove(container_id, quiet=False)

    def _create_throwaway(
        self,
        purpose: str,
        *,
        entrypoint: list[str],
        command: list[str] | None = None,
        runs: bool = False,
        gpus: bool = False,
    ) -> str:
        """Create (not start) a throw-away container of the image, without a network; its ID.

        It is named before it exists: an interrupt while the daemon answers (the container made,
        its ID not yet known here) still removes it by that name."""
        name = f"lockd-throwaway-{os.urandom(8).hex()}"
        with failing(f"{self._source}: cannot create a container {purpose}"):
            try:
                return self._docker.create_container(
                    self.image_id,
                    name=name,
                    labels={THROWAWAY_LABEL: "1"},
                    entrypoint=entrypoint,
                    command=command,
                    runs=runs,
                    gpus=gpus,
                )
            except BaseException:
                self._remove(name, quiet=True)
                raise

    def _remove(self, container_id: str, *, quiet: bool) -> None:
        try:
            self._docker.remove_container(container_id)
        except NotFoundError:
            pass
        except (DaemonError, OSError) as e:
            if not quiet:
                raise TargetError(
                    f"{self._source}: cannot remove the throw-away container "
                    f"{container_id[:12]}: {cause(e)}; remove it with "
                    f"`docker rm -f {container_id[:12]}`"
                ) from e
