"""The probe cache: a container's probe report, asked for once and taken again while nothing
the probe can see has changed.

The probe imports torch (and, for --deep, the PyTorch family) inside the container: 2-3
CPU-seconds on every verification, most of what ``lockd verify <container>`` costs. What it
reports is a function of what its process sees, and lockd reads all of that on the host side
(trusted evidence) into one fingerprint:

* the container's root filesystem: the image's layers never change once extracted
  (lockd.layercache), and every write the container makes lands in its overlay upper
  directory;
* what it may write outside that: its /dev (with /dev/shm) and every mount (volumes, bind
  mounts, tmpfs), walked through its init process's root (/proc/PID/root); the files Docker
  bind-mounts (/etc/hosts, hostname, resolv.conf);
  of each entry its path, mode, size, mtime, ctime and inode number (a process in the
  container can set an mtime back, not a ctime);
* the daemon's inspect answer: the image, Config (environment, user, working directory),
  HostConfig (devices, GPUs, runtime, IPC and PID namespaces), the start time and init pid;
* the probe's command lines (its source included, so lockd's version);
* the host kernel and the NVIDIA driver's /proc files (its version, its GPUs).

An identical container of the same image shares a second fingerprint (``sibling_fingerprint``):
the image, Config but for its hostname and labels, the same HostConfig, inputs and host, and the
*content* of its upper directory and /dev (hashed: a fresh container has next to nothing
there). A fresh container (a CI job's, a fleet's replica) then takes the report a sibling's
probe made; a container with mounts never does (their content is not compared).

A container whose files lockd cannot read on the host side (another storage driver, a remote
daemon, not root), or with more than ``MAX_ENTRIES`` entries in one of those trees (a large data
volume), is probed every time. The walks are lockd.fstree's, as the watch agent's.

The report's bytes are kept under the fingerprint taken before the probe ran, and only when the
one taken after it ran is the same (a change while it ran keeps nothing). A later verification
takes them again when the fingerprint is still the same, and says so: the report's checks rest
on inside evidence either way, what the container said about itself, and reusing it adds
nothing the container could steer (the decision rests on host evidence only). ``--no-cache``
asks the probe again. One JSON file per container (or sibling fingerprint) and probe command
line (``variant``) under ``cache_root()/probe``, at most
``MAX_FILES``, trusted only when this user owns it and nobody else can write it.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from lockd.cachefiles import cache_root, load_entry, store_entry
from lockd.fstree import MAX_ENTRIES, tree_digest

__all__ = [
    "FORMAT",
    "MAX_ENTRIES",
    "MAX_FILES",
    "CachedProbe",
    "Keys",
    "cache_dir",
    "fingerprint",
    "first_kept",
    "keys",
    "load",
    "sibling_fingerprint",
    "still_standing",
    "store",
    "variant",
]

FORMAT = "lockd-probe-cache/1"
MAX_FILES = 256
"""Containers whose last report is kept."""
MAX_FILE_BYTES = 32 * 1024 * 1024  # the probe's output is capped at 16 MiB
T = TypeVar("T")

DRIVER_DIR = "/proc/driver/nvidia"

_HOST_CONFIG_KEYS = (
    "Binds",
    "CapAdd",
    "Devices",
    "DeviceRequests",
    "IpcMode",
    "Mounts",
    "PidMode",
    "Privileged",
    "Runtime",
    "ShmSize",
    "Tmpfs",
    "UsernsMode",
)
"""What of the HostConfig can change what a process in the container sees."""


@dataclass(frozen=True)
class CachedProbe:
    stdout: bytes
    python: str  # the interpreter that ran it
    observed_at: str


def cache_dir() -> Path:
    """``probe`` under lockd.cachefiles' ``cache_root()``."""
    return cache_root() / "probe"


# --- what the probe can see (host side) ---------------------------------------------------------


def _container_dirs(attrs: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, host path) of each directory tree whose content the container's processes see
    and may change, read on the host side: the overlay upper directory, and through the init
    process's root (/proc/PID/root: resolved inside the container) its /dev (with /dev/shm) and
    every mount."""
    upper = str(((attrs.get("GraphDriver") or {}).get("Data") or {}).get("UpperDir") or "")
    root = f"/proc/{int((attrs.get('State') or {}).get('Pid') or 0)}/root"
    destinations = {str(m.get("Destination") or "") for m in attrs.get("Mounts") or []}
    destinations |= set((attrs.get("HostConfig") or {}).get("Tmpfs") or {})
    found = [("upper", upper), ("/dev", root + "/dev")]
    found += [(d, root + d) for d in sorted(destinations) if d.startswith("/")]
    return found


def _readable(attrs: dict[str, Any]) -> bool:
    """Whether the container's files can be read on the host side: overlay2 storage, a
    running init process."""
    driver = attrs.get("GraphDriver") or {}
    return (
        driver.get("Name") == "overlay2"
        and bool((driver.get("Data") or {}).get("UpperDir"))
        and int((attrs.get("State") or {}).get("Pid") or 0) > 0
    )


def _entry_digest(path: str) -> str | None:
    """``tree_digest`` of a directory; of anything else (a file bind-mounted over a path) its
    lstat numbers; None when it cannot be read or is too large a tree."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if stat.S_ISDIR(st.st_mode):
        return tree_digest(path, MAX_ENTRIES)
    return repr((st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))


def _host_state(attrs: dict[str, Any]) -> dict[str, Any]:
    """The host kernel; the NVIDIA driver's version and GPUs where it is loaded; the files
    Docker bind-mounts into the container (/etc/hosts, hostname, resolv.conf: writable from
    inside), as stat numbers."""
    uname = os.uname()
    state: dict[str, Any] = {"kernel": [uname.release, uname.version, uname.machine]}
    try:
        with open(os.path.join(DRIVER_DIR, "version"), "rb") as f:
            state["driver"] = f.read(65536).decode("utf-8", "replace")
        state["gpus"] = sorted(os.listdir(os.path.join(DRIVER_DIR, "gpus")))
    except OSError:
        state["driver"] = None
    for key in ("HostsPath", "HostnamePath", "ResolvConfPath"):
        path = str(attrs.get(key) or "")
        try:
            st = os.lstat(path) if path else None
        except OSError:
            st = None
        state[key] = None if st is None else [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    return state


def fingerprint(attrs: dict[str, Any], inputs: Sequence[Sequence[str]]) -> str | None:
    """The fingerprint of what a process in the container (``attrs``: the daemon's inspect
    answer) can see, with ``inputs`` (the probe's command lines: what else its answer depends
    on); None when the host cannot read all of it (another storage driver, not root, the
    container stopped) or one of its trees holds more than ``MAX_ENTRIES`` entries."""
    if not _readable(attrs):
        return None
    state = attrs.get("State") or {}
    host_config = attrs.get("HostConfig") or {}
    settings = {
        "format": FORMAT,
        "id": attrs.get("Id"),
        "image": attrs.get("Image"),
        "config": attrs.get("Config"),
        "host_config": {key: host_config.get(key) for key in _HOST_CONFIG_KEYS},
        "started": [state.get("StartedAt"), state.get("Pid")],
        "inputs": [list(argv) for argv in inputs],
        "host": _host_state(attrs),
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for label, top in _container_dirs(attrs):
        found = _entry_digest(top)
        if found is None:
            return None
        digest.update(f"\0{label}\0{found}".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


# --- an identical container of the same image --------------------------------------------------

MAX_CONTENT_BYTES = 64 * 1024 * 1024
"""A container whose own files (upper directory, /dev) hold more than this is not compared by
content with its siblings: hashing them would cost what the probe costs."""

_PER_CONTAINER = ("Hostname", "Domainname", "Labels")
"""What of Config differs between otherwise identical containers and no process's view of the
environment depends on (Docker writes the hostname into /etc/hostname, which the probe does not
read)."""


def _content_digest(top: str, budget: list[int]) -> str | None:
    """A digest of the content of the tree below ``top``: each entry's path, type and mode,
    owner, overlayfs attributes, and a regular file's bytes, a link's target, a device's number
    (never opened);
    ``budget[0]``: bytes still to read. None when it cannot all be read or the budget runs
    out."""
    digest = hashlib.sha256()
    pending = [""]
    count = 0
    while pending:
        rel_dir = pending.pop()
        try:
            with os.scandir(os.path.join(top, rel_dir) if rel_dir else top) as scan:
                entries = sorted(scan, key=lambda entry: entry.name)
        except OSError:
            return None
        for entry in entries:
            count += 1
            if count > MAX_ENTRIES:
                return None
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            try:
                st = entry.stat(follow_symlinks=False)
                extra = _content_of(entry.path, st, budget)
                overlay = _overlay_xattrs(entry.path)
            except OSError:
                return None
            if extra is None:
                return None
            head = b"%s\0%o %d %d " % (os.fsencode(rel), st.st_mode, st.st_uid, st.st_gid)
            digest.update(head + extra + b" " + overlay + b"\n")
            if stat.S_ISDIR(st.st_mode):
                pending.append(rel)
    return digest.hexdigest()


def _overlay_xattrs(path: str) -> bytes:
    """overlayfs's own attributes of an upper entry (opaque, redirect, metacopy; trusted. or
    user.), which change what the merged view shows without changing the entry's content: a
    directory removed and made again is opaque (hides the image's copy), one copied up is not.

    Raises:
        OSError: they cannot be listed or read.
    """
    try:
        listed = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return b""  # a filesystem without attributes (not overlayfs's upper)
        raise
    names = sorted(n for n in listed if ".overlay." in n)
    return b";".join(
        os.fsencode(n) + b"=" + os.getxattr(path, n, follow_symlinks=False) for n in names
    )


def _content_of(path: str, st: os.stat_result, budget: list[int]) -> bytes | None:
    """What of one entry's content goes into ``_content_digest``; None past the budget.

    Raises:
        OSError: it cannot be read, or a file was swapped for something else meanwhile.
    """
    if stat.S_ISLNK(st.st_mode):
        return os.fsencode(os.readlink(path))
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        return b"%d" % st.st_rdev
    if not stat.S_ISREG(st.st_mode):
        return b""
    budget[0] -= st.st_size
    if budget[0] < 0:
        return None
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is no longer a regular file")
        digest = hashlib.sha256()
        while chunk := os.read(fd, 1024 * 1024):
            digest.update(chunk)
    finally:
        os.close(fd)
    return digest.hexdigest().encode()


def sibling_fingerprint(attrs: dict[str, Any], inputs: Sequence[Sequence[str]]) -> str | None:
    """The fingerprint every identical container of the same image shares: the image, Config
    but for the hostname and labels, the HostConfig that shapes a process, ``inputs``, the host
    kernel and driver, and the *content* of the container's upper directory and /dev. A fresh
    container (a CI job's, a fleet's replica) sees what a sibling verified before saw, so the
    sibling's report stands for it. None for a container with mounts (their content is not
    compared), whose files cannot be read on the host, or that wrote more than
    ``MAX_CONTENT_BYTES``."""
    host_config = attrs.get("HostConfig") or {}
    if not _readable(attrs) or attrs.get("Mounts") or host_config.get("Tmpfs"):
        return None
    config = {k: v for k, v in (attrs.get("Config") or {}).items() if k not in _PER_CONTAINER}
    host = {k: v for k, v in _host_state(attrs).items() if k in ("kernel", "driver", "gpus")}
    settings = {
        "format": FORMAT,
        "sibling": True,
        "image": attrs.get("Image"),
        "config": config,
        "host_config": {key: host_config.get(key) for key in _HOST_CONFIG_KEYS},
        "inputs": [list(argv) for argv in inputs],
        "host": host,
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    budget = [MAX_CONTENT_BYTES]
    for label, top in _container_dirs(attrs)[:2]:  # the upper directory, /dev
        found = _content_digest(top, budget)
        if found is None:
            return None
        digest.update(f"\0{label}\0{found}".encode())
    return digest.hexdigest()


# --- where a kept answer is looked for, and kept ------------------------------------------------

Keys = tuple[str | None, str | None]
"""A container's fingerprints for some inputs: its own (``fingerprint``) and the one identical
containers of its image share (``sibling_fingerprint``); None where there is none."""


def keys(attrs: dict[str, Any], inputs: Sequence[Sequence[str]]) -> Keys:
    return fingerprint(attrs, inputs), sibling_fingerprint(attrs, inputs)


def first_kept(
    container_id: str,
    attrs: dict[str, Any],
    inputs: Sequence[Sequence[str]],
    load: Callable[[str, str], T | None],
) -> tuple[T | None, Keys]:
    """(what ``load(name, key)`` finds or None, the fingerprints looked under). The container's
    own fingerprint (kept as its ID) is tried first; the sibling one (kept as itself; taking it
    hashes the content of the container's own files) only when that finds nothing."""
    own = fingerprint(attrs, inputs)
    found = None if own is None else load(container_id, own)
    if found is not None:
        return found, (own, None)
    sibling = sibling_fingerprint(attrs, inputs)
    return (None if sibling is None else load(sibling, sibling)), (own, sibling)


def still_standing(container_id: str, before: Keys, after: Keys) -> list[tuple[str, str]]:
    """(name, fingerprint) to keep an answer under: each fingerprint taken before lockd worked
    that is the same after (a change meanwhile keeps nothing under it)."""
    own, sibling = (b if b == a else None for b, a in zip(before, after, strict=True))
    found = [] if own is None else [(container_id, own)]
    return found if sibling is None else [*found, (sibling, sibling)]


# --- the files ----------------------------------------------------------------------------------


def variant(inputs: Sequence[Sequence[str]]) -> str:
    """A short name for the probe's command lines: a container's reports for different ones
    (``verify`` and ``verify --deep``) are kept side by side."""
    return hashlib.sha256(json.dumps([list(argv) for argv in inputs]).encode()).hexdigest()[:16]


def load(
    container_id: str, key: str, *, kind: str = "", directory: Path | None = None
) -> CachedProbe | None:
    """The report kept for the container under fingerprint ``key``; None when there is none,
    it was kept under another fingerprint, or the file is not trusted or not in the format."""
    document = load_entry(
        directory or cache_dir(), container_id, FORMAT, key, MAX_FILE_BYTES, kind=kind
    )
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
    *,
    kind: str = "",
    directory: Path | None = None,
    now: dt.datetime | None = None,
) -> None:
    """Keep the report (the probe's stdout) for the container under fingerprint ``key``;
    ``kind``: the probe's ``variant``.
    Failing to write is not an error: the cache is an optimisation."""
    try:
        text = stdout.decode("utf-8")
    except UnicodeDecodeError:
        return  # the probe prints JSON with ASCII escapes: this is no report to keep
    store_entry(
        directory or cache_dir(),
        container_id,
        FORMAT,
        key,
        {"python": python, "stdout": text},
        MAX_FILE_BYTES,
        MAX_FILES,
        kind=kind,
        now=now,
    )
