"""The probe cache: a container's probe report, asked for once and taken again while nothing
the probe can see has changed.

The probe imports torch (and, for --deep, the PyTorch family) inside the container: 2-3
CPU-seconds on every verification, most of what ``lockd verify <container>`` costs. What it
reports is a function of what its process sees, and lockd reads all of that on the host side
(trusted evidence), from places the container cannot redirect, into one fingerprint:

* the container's root filesystem: the image's layers never change once extracted
  (lockd.evidence.cache.layers), and every write the container makes lands in its overlay upper
  directory;
* the kernel's view of its processes (lockd.evidence.kernel): the distinct mount namespaces, roots
and   /proc/PID/mountinfo among every process of its cgroup. A mount made inside the container, a
  chroot or pivot_root changes it; lockd's own ``docker exec`` probe (init's namespace and
  root) does not;
* the host side of each declared mount (a bind mount's or volume's source) that overlaps a
  place the report rests on (``places``: Python's prefixes and ``sys.path``, the distributions'
  locations, the library search path, the dynamic loader's configuration); a dataset volume
  elsewhere is not walked. A declared tmpfs (or the runtime's /dev, /dev/shm) over such a place
  cannot be read on the host: nothing is reused;
* the files Docker bind-mounts (/etc/hosts, hostname, resolv.conf: writable from inside);
* of each entry its path, mode, size, mtime, ctime and inode number (a process in the
  container can set an mtime back, not a ctime);
* the daemon's inspect answer: the image, Config (environment, user, working directory),
  HostConfig (devices, GPUs, runtime, IPC and PID namespaces), Mounts, the start time and init
  pid;
* the probe's command lines (its source included, so lockd's version);
* the host kernel and the NVIDIA driver's /proc files (its version, its GPUs).

Nothing is read through /proc/PID/root: it is the container's choice (an init that called
chroot() points it at a decoy, and a walk through it would see the decoy unchanged).

An identical container of the same image shares a second fingerprint (``sibling_fingerprint``):
the image, Config but for its hostname and labels, the same HostConfig, inputs and host, the
same declared mounts in the kernel's view, and the *content* of its upper directory (hashed: a
fresh container has next to nothing there). A fresh container (a CI job's, a fleet's replica)
then takes the report a sibling's probe made; a container with mounts of its own never does
(their content is not compared).

A container whose files or processes lockd cannot read on the host side (another storage
driver, a remote daemon, not root, a namespace only a chroot'd process shows), or with more
than ``MAX_ENTRIES`` entries in one of those trees, is probed every time. The walks are
lockd.evidence.cache.guard's, as the watch agent's.

The report's bytes are kept, with the places it rests on, under the fingerprint taken before
the probe ran, and only when the one taken after it ran is the same and no entry of an
overlapping mount has a ctime from the moment lockd started (a change while it ran keeps
nothing). A later verification takes them again when the fingerprint is still the same, and
says so: the report's checks rest on inside evidence either way, what the container said about
itself, and reusing it adds nothing the container could steer (the decision rests on host
evidence only). ``--no-cache`` asks the probe again. One JSON file per container (or sibling
fingerprint) and probe command line (``variant``) in the kept-store ``cache_root()/probe``
(lockd.evidence.cache.store), at most ``MAX_FILES``.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import os
import posixpath
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from lockd.evidence import kernel
from lockd.evidence.cache.guard import MAX_ENTRIES, StatGuard, entry_digest
from lockd.evidence.cache.store import Store, cache_root

if TYPE_CHECKING:
    from lockd.model.environment import ProbeReport

__all__ = [
    "FORMAT",
    "MAX_ENTRIES",
    "MAX_FILES",
    "CachedProbe",
    "Keys",
    "base_fingerprint",
    "cache_dir",
    "fingerprint",
    "first_kept",
    "kernel_digest",
    "keys",
    "load",
    "places",
    "sibling_fingerprint",
    "still_standing",
    "store",
    "variant",
    "with_mounts",
]

FORMAT = "lockd-probe-cache/2"
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
    """``probe`` under lockd.evidence.cache.store's ``cache_root()``."""
    return cache_root() / "probe"


def _store(directory: Path | None) -> Store:
    return Store(directory or cache_dir(), FORMAT, MAX_FILE_BYTES, MAX_FILES)


# --- what the probe can see (host side) ---------------------------------------------------------


def _upper(attrs: Mapping[str, Any]) -> str:
    return str(((attrs.get("GraphDriver") or {}).get("Data") or {}).get("UpperDir") or "")


def _readable(attrs: Mapping[str, Any]) -> bool:
    """Whether the container's files can be read on the host side: overlay2 storage, a
    running init process."""
    driver = attrs.get("GraphDriver") or {}
    return (
        driver.get("Name") == "overlay2"
        and bool((driver.get("Data") or {}).get("UpperDir"))
        and int((attrs.get("State") or {}).get("Pid") or 0) > 0
    )


def kernel_digest(attrs: Mapping[str, Any]) -> str | None:
    """lockd.evidence.kernel's digest of the distinct (mount namespace, root, mountinfo) of the
    container's processes, read on the host; None when any of it cannot be read (a process
    whose root is not the container's in a namespace no other process shows whole, not root,
    another host's daemon)."""
    from lockd.errors import TargetError

    try:
        return kernel.read_view(attrs, "the container", judge=False).digest()
    except TargetError:
        return None  # it stopped: the verification says so


def _entry_digest(path: str, newest: list[int] | None = None) -> str | None:
    return entry_digest(path, MAX_ENTRIES, newest)


_LOADER = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/ld.so.preload",
    "/etc/os-release",
    "/usr/lib/os-release",
    "/lib",
    "/lib64",
    "/usr/lib",
    "/usr/lib64",
    "/usr/local/lib",
)
"""What every probe report rests on besides Python's own places: the dynamic loader's
configuration and system library directories, the OS release."""


def places(probe: ProbeReport | None, config_env: Sequence[str] = ()) -> list[str]:
    """Where a probe's report rests (sorted): the interpreter's prefixes and ``sys.path``, the
    distributions' locations, the library search path (LD_LIBRARY_PATH of the report's and the
    container's environment, the directories of the libraries the process mapped), the dynamic
    loader's configuration and system library directories. A mount that overlaps one of these is
    walked on its host side; any other (a dataset volume) is not."""
    found = set(_LOADER)
    env = [e.partition("=") for e in config_env]
    search = [value for name, _, value in env if name == "LD_LIBRARY_PATH"]
    if probe is not None:
        python = probe.python
        found.update([python.prefix, python.base_prefix, *python.path])
        found.update(d.location for d in probe.distributions)
        search.append(probe.env.get("LD_LIBRARY_PATH", ""))
        if probe.libraries is not None:
            found.update(posixpath.dirname(lib.path) for lib in probe.libraries.libraries)
    found.update(p for value in search for p in value.split(":"))
    normal = {posixpath.normpath(p) for p in found if p.startswith("/")}
    return sorted(normal)


def _overlaps(destination: str, found: Sequence[str]) -> bool:
    top = destination.rstrip("/") or "/"
    below = top.rstrip("/") + "/"
    return any(
        p == top or p.startswith(below) or top.startswith(p.rstrip("/") + "/") for p in found
    )


def mounts_digest(
    attrs: Mapping[str, Any], found: Sequence[str], newest: list[int] | None = None
) -> str | None:
    """A digest of the host side of every declared mount (the daemon's ``Mounts`` and
    ``--tmpfs``, the runtime's /dev and /dev/shm) that overlaps ``found`` (``places``): a bind
    mount's or volume's host source, walked; None when one of them has none this host can read
    (a tmpfs, a volume driver's, a source too large). Mounts made inside the container are in
    ``kernel_digest``, and their content is not readable on the host: a verification that
    finds one fails (lockd.judgement.compare's filesystem check)."""
    digest = hashlib.sha256()
    host_config = attrs.get("HostConfig") or {}
    runtime = ("/dev", "/dev/shm")  # noqa: S108  the runtime's tmpfs mounts
    tmpfs = {*runtime, *(str(d) for d in host_config.get("Tmpfs") or {})}
    for destination in sorted(tmpfs):
        if _overlaps(destination, found):
            return None
    for mount in sorted(attrs.get("Mounts") or [], key=lambda m: str(m.get("Destination"))):
        destination = str(mount.get("Destination") or "")
        if not _overlaps(destination, found):
            continue
        source = str(mount.get("Source") or "")
        if mount.get("Type") not in ("bind", "volume") or not source.startswith("/"):
            return None
        entry = _entry_digest(source, newest)
        if entry is None:
            return None
        digest.update(f"\0{destination}\0{source}\0{entry}".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _host_state(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The host kernel; the NVIDIA driver's version and GPUs where it is loaded; the files
    Docker bind-mounts into the container (/etc/hosts, hostname, resolv.conf: writable from
    inside), as guards (lockd.evidence.cache.guard)."""
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
        state[key] = StatGuard.at(path) if path else None
    return state


def base_fingerprint(attrs: Mapping[str, Any], inputs: Sequence[Sequence[str]]) -> str | None:
    """The fingerprint of what a process in the container (``attrs``: the daemon's inspect
    answer) can see but the content of its mounts, with ``inputs`` (the probe's command lines:
    what else its answer depends on): the upper directory, the kernel's view of its processes
    (lockd.evidence.kernel: mountinfo and roots, read on the host), the inspect answer, the host.
    None when the host cannot read all of it (another storage driver, not root, the container
    stopped, a namespace only a chroot'd process shows) or the upper directory holds more than
    ``MAX_ENTRIES`` entries. Nothing is read through /proc/PID/root: that is the container's
    choice (a chroot'd init points it at a decoy)."""
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
        # the daemon lists Mounts in Go map order: another order on every inspect
        "mounts": sorted(
            (json.dumps(m, sort_keys=True, default=str) for m in attrs.get("Mounts") or []),
        ),
        "started": [state.get("StartedAt"), state.get("Pid")],
        "inputs": [list(argv) for argv in inputs],
        "host": _host_state(attrs),
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    upper = _entry_digest(_upper(attrs))
    if upper is None:
        return None
    view = kernel_digest(attrs)
    if view is None:
        return None
    digest.update(f"\0upper\0{upper}\0kernel\0{view}".encode())
    return digest.hexdigest()


def fingerprint(
    attrs: Mapping[str, Any], inputs: Sequence[Sequence[str]], found: Sequence[str]
) -> str | None:
    """``base_fingerprint`` with the host side of the mounts that overlap ``found`` (where the
    answer rests: ``places``) and ``found`` itself; None when any of it cannot be read."""
    base = base_fingerprint(attrs, inputs)
    return None if base is None else with_mounts(base, attrs, found)


def with_mounts(
    base: str, attrs: Mapping[str, Any], found: Sequence[str], newest: list[int] | None = None
) -> str | None:
    """``fingerprint`` from a ``base_fingerprint`` already taken."""
    mounts = mounts_digest(attrs, found, newest)
    if mounts is None:
        return None
    digest = hashlib.sha256(f"{base}\0{mounts}\0".encode())
    digest.update(json.dumps(list(found)).encode("utf-8", "surrogateescape"))
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


def kernel_shape(attrs: Mapping[str, Any]) -> str | None:
    """What of the kernel's view identical containers share: the mounts of their one mount
    namespace (mount point, filesystem type, why declared). None when the view is incomplete,
    a process's root is not the container's, a mount was made inside it, or its processes
    hold several namespaces: such a container takes no sibling's answer."""
    from lockd.errors import TargetError

    try:
        view = kernel.read_view(attrs, "the container")
    except TargetError:
        return None
    if view.incomplete is not None or view.foreign or len(view.mounts) != 1:
        return None
    [mounts] = view.mounts.values()
    if any(why is None for _, why in mounts):
        return None
    shape = [[e.mount_point, e.fstype, why] for e, why in mounts]
    return hashlib.sha256(json.dumps(shape).encode("utf-8", "surrogateescape")).hexdigest()


def sibling_fingerprint(attrs: Mapping[str, Any], inputs: Sequence[Sequence[str]]) -> str | None:
    """The fingerprint every identical container of the same image shares: the image, Config
    but for the hostname and labels, the HostConfig that shapes a process, ``inputs``, the host
    kernel and driver, the shape of the kernel's view (``kernel_shape``) and the *content* of
    the container's upper directory. A fresh container (a CI job's, a fleet's replica) sees
    what a sibling verified before saw, so the sibling's report stands for it. None for a
    container with mounts of its own (their content is not compared), whose files or
    processes cannot be read on the host, or that wrote more than ``MAX_CONTENT_BYTES``."""
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
    shape = kernel_shape(attrs)
    if shape is None:
        return None
    content = _content_digest(_upper(attrs), [MAX_CONTENT_BYTES])
    if content is None:
        return None
    digest.update(f"\0kernel\0{shape}\0upper\0{content}".encode())
    return digest.hexdigest()


# --- where a kept answer is looked for, and kept ------------------------------------------------

SETTLE_NS = 1_000_000_000
"""A mount entry whose ctime is within this of the moment lockd took its fingerprints (or
later) may have changed while the probe ran: nothing is kept. File times come from the
kernel's coarse clock, a tick behind the one lockd reads."""


class Keys(NamedTuple):
    """A container's fingerprints for some inputs, taken at ``since`` (ns, the host's clock):
    its own without its mounts' content (``base_fingerprint``), and the one identical
    containers of its image share (``sibling_fingerprint``); None where there is none."""

    own: str | None
    sibling: str | None
    since: int = 0


def keys(attrs: Mapping[str, Any], inputs: Sequence[Sequence[str]]) -> Keys:
    since = time.time_ns()
    return Keys(base_fingerprint(attrs, inputs), sibling_fingerprint(attrs, inputs), since)


KeyFor = Callable[[Mapping[str, Any]], "str | None"]
"""The fingerprint a kept document must have been kept under, from what it says it rests on
(its ``places``)."""


def kept_places(document: Mapping[str, Any]) -> list[str] | None:
    """The ``places`` a kept document rests on; None when it names none."""
    found = document.get("places")
    if not isinstance(found, list) or not all(isinstance(p, str) for p in found):
        return None
    return found


def first_kept(
    container_id: str,
    attrs: Mapping[str, Any],
    inputs: Sequence[Sequence[str]],
    load: Callable[[str, KeyFor], T | None],
) -> tuple[T | None, Keys]:
    """(what ``load(name, key_for)`` finds or None, the fingerprints looked under). The
    container's own fingerprint (kept as its ID; with the host side of the mounts that overlap
    the places the kept answer rests on) is tried first; the sibling one (kept as itself;
    taking it hashes the content of the container's own files) only when that finds
    nothing."""
    since = time.time_ns()
    base = base_fingerprint(attrs, inputs)
    if base is not None:

        def own(document: Mapping[str, Any]) -> str | None:
            found = kept_places(document)
            return None if found is None else with_mounts(base, attrs, found)

        kept = load(container_id, own)
        if kept is not None:
            return kept, Keys(base, None, since)
    sibling = sibling_fingerprint(attrs, inputs)
    kept = None if sibling is None else load(sibling, lambda _: sibling)
    return kept, Keys(base, sibling, since)


def still_standing(
    container_id: str,
    before: Keys,
    after: Keys,
    attrs: Mapping[str, Any],
    found: Sequence[str],
) -> list[tuple[str, str]]:
    """(name, fingerprint) to keep an answer resting on ``found`` (``places``) under: the
    container's own when its base fingerprint is the same after lockd worked as before and no
    entry of a mount that overlaps ``found`` changed since (its ctime: a container can set an
    mtime back, not a ctime); the sibling one when it is the same after as before. A change
    meanwhile keeps nothing under it."""
    kept = []
    if before.own is not None and before.own == after.own:
        newest = [0]
        own = with_mounts(after.own, attrs, found, newest)
        if own is not None and newest[0] < before.since - SETTLE_NS:
            kept.append((container_id, own))
    if before.sibling is not None and before.sibling == after.sibling:
        kept.append((before.sibling, before.sibling))
    return kept


# --- the files ----------------------------------------------------------------------------------


def variant(inputs: Sequence[Sequence[str]]) -> str:
    """A short name for the probe's command lines: a container's reports for different ones
    (``verify`` and ``verify --deep``) are kept side by side."""
    return hashlib.sha256(json.dumps([list(argv) for argv in inputs]).encode()).hexdigest()[:16]


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
