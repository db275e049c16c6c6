"""A container's fingerprint: one digest of everything a process in it can see, read on the host,
that must change before lockd asks the container again.

Three named strategies share every reader below:

* ``exact`` (the probe and integrity caches: a container's own kept answer): the inspect
  answer, the upper directory (an ``lstat`` walk), the kernel's view of its processes, the host
  side of the mounts over the places the answer rests on, the host;
* ``sibling`` (the same caches: an identical container's answer): the inspect answer but for
  what differs between identical containers, the *content* of the upper directory, the shape of
  the kernel's view; no mounts of its own;
* ``watch`` (the watch agent: whether a container is due for a probe): lockd.watch.discovery's
  digest of the configuration, the upper directory less what the policy ignores, the kernel's
  view, the workload's shape (the code each process maps, what it runs, its tracked variables:
  a library mapped mid-run makes the container due), the host side of the mounts the policy
  watches, the NVIDIA driver.

What goes in, each read on the host from places the container cannot redirect:

* the container's root filesystem: the image's layers never change once extracted
  (lockd.evidence.cache.layers), and every write the container makes lands in its overlay upper
  directory;
* the kernel's view of its processes (lockd.evidence.kernel): the distinct mount namespaces,
  roots and /proc/PID/mountinfo among every process of its cgroup. A mount made inside the
  container, a chroot or pivot_root changes it; lockd's own ``docker exec`` probe (init's
  namespace and root) does not;
* the host side of each declared mount (a bind mount's or volume's source) that overlaps a
  place the answer rests on (``places``: Python's prefixes and ``sys.path``, the distributions'
  locations, the library search path, the dynamic loader's configuration); a dataset volume
  elsewhere is not walked. A declared tmpfs (or the runtime's /dev, /dev/shm) over such a place
  cannot be read on the host: no fingerprint;
* the files Docker bind-mounts (/etc/hosts, hostname, resolv.conf: writable from inside);
* of each entry its guard (lockd.evidence.cache.guard: size, mtime, ctime, inode, mode);
* the daemon's inspect answer: the image, Config (environment, user, working directory),
  HostConfig (devices, GPUs, runtime, IPC and PID namespaces), Mounts, the start time and init
  pid;
* the command lines asked (the probe's source included, so lockd's version);
* the host kernel and the NVIDIA driver's /proc files (its version, its GPUs).

Nothing is read through /proc/PID/root: it is the container's choice (an init that called
chroot() points it at a decoy, and a walk through it would see the decoy unchanged). A container
whose files or processes lockd cannot read on the host side (another storage driver, a remote
daemon, not root, a namespace only a chroot'd process shows), or with more than
``MAX_ENTRIES`` entries in one of those trees, has no fingerprint: it is asked every time.

An answer is kept (``still_standing``) only under a fingerprint that is the same after lockd
asked as before, and, for ``exact``, when no entry of an overlapping mount has a ctime from the
moment lockd started: a change while it worked keeps nothing.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import posixpath
import stat
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from lockd.errors import TargetError
from lockd.evidence import kernel
from lockd.evidence.cache.guard import MAX_ENTRIES, StatGuard, entry_digest, tree_digest
from lockd.evidence.hashing import combine, host_file_sha256, json_sha256

if TYPE_CHECKING:
    from lockd.judgement.policy import Policy
    from lockd.model.environment import ProbeReport
    from lockd.model.manifest import Observation

__all__ = [
    "MAX_CONTENT_BYTES",
    "MAX_ENTRIES",
    "SETTLE_NS",
    "KeyFor",
    "Keys",
    "exact",
    "exact_base",
    "first_kept",
    "host_key",
    "ignorable",
    "kernel_digest",
    "keys",
    "mount_digest",
    "places",
    "sibling",
    "still_standing",
    "watch",
    "watched_mounts",
    "with_mounts",
]

FORMAT = "lockd-fingerprint/1"
"""Enters every ``exact`` and ``sibling`` fingerprint: another lockd's never match."""
DRIVER_DIR = "/proc/driver/nvidia"
DRIVER_VERSION = Path(DRIVER_DIR, "version")
T = TypeVar("T")

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


# --- what every strategy reads --------------------------------------------------------------------


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
    container's processes, read on the host. A mount made inside the container, a chroot or
    pivot_root changes it; lockd's own probe (a ``docker exec`` sharing init's namespace and
    root) does not. None when any of it cannot be read (a process whose root is not the
    container's in a namespace no other process shows whole, not root, another host's daemon,
    the container stopped). Nothing is read through /proc/PID/root (the container's choice)."""
    try:
        return kernel.read_view(attrs, "the container", judge=False).digest()
    except TargetError:
        return None


def mount_digest(kind: str, source: str, newest: list[int] | None = None) -> str | None:
    """A digest of a mount's content on this host: its source walked (a file bind-mounted: its
    guard); None for a mount that is not a path here (a tmpfs, a volume driver's) or cannot be
    read. ``newest``: as lockd.evidence.cache.guard.tree_digest's."""
    if kind not in ("bind", "volume") or not source.startswith("/"):
        return None
    return entry_digest(source, MAX_ENTRIES, newest)


def _driver_version(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read(65536).decode("utf-8", "replace")
    except OSError:
        return None


def _host_state(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The host kernel; the NVIDIA driver's version and GPUs where it is loaded; the files
    Docker bind-mounts into the container (/etc/hosts, hostname, resolv.conf: writable from
    inside), as guards."""
    uname = os.uname()
    state: dict[str, Any] = {"kernel": [uname.release, uname.version, uname.machine]}
    state["driver"] = _driver_version(DRIVER_VERSION)
    try:
        state["gpus"] = sorted(os.listdir(os.path.join(DRIVER_DIR, "gpus")))
    except OSError:
        state["gpus"] = None
    for key in ("HostsPath", "HostnamePath", "ResolvConfPath"):
        path = str(attrs.get(key) or "")
        state[key] = StatGuard.at(path) if path else None
    return state


# --- exact: this container, as it is --------------------------------------------------------------


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
    host_config = attrs.get("HostConfig") or {}
    runtime = ("/dev", "/dev/shm")  # noqa: S108  the runtime's tmpfs mounts
    tmpfs = {*runtime, *(str(d) for d in host_config.get("Tmpfs") or {})}
    if any(_overlaps(destination, found) for destination in tmpfs):
        return None
    parts: list[str | None] = []
    for mount in sorted(attrs.get("Mounts") or [], key=lambda m: str(m.get("Destination"))):
        destination = str(mount.get("Destination") or "")
        if not _overlaps(destination, found):
            continue
        source = str(mount.get("Source") or "")
        entry = mount_digest(str(mount.get("Type")), source, newest)
        if entry is None:
            return None
        parts += [destination, source, entry]
    return combine(parts)


def exact_base(attrs: Mapping[str, Any], inputs: Sequence[Sequence[str]]) -> str | None:
    """The ``exact`` fingerprint of what a process in the container (``attrs``: the daemon's
    inspect answer) can see but the content of its mounts, with ``inputs`` (the command lines
    asked: what else the answer depends on): the upper directory, the kernel's view of its
    processes, the inspect answer, the host. None when the host cannot read all of it (another
    storage driver, not root, the container stopped, a namespace only a chroot'd process shows)
    or the upper directory holds more than ``MAX_ENTRIES`` entries."""
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
            json.dumps(m, sort_keys=True, default=str) for m in attrs.get("Mounts") or []
        ),
        "started": [state.get("StartedAt"), state.get("Pid")],
        "inputs": [list(argv) for argv in inputs],
        "host": _host_state(attrs),
    }
    upper = entry_digest(_upper(attrs), MAX_ENTRIES)
    if upper is None:
        return None
    return combine([json_sha256(settings), upper, kernel_digest(attrs)])


def with_mounts(
    base: str, attrs: Mapping[str, Any], found: Sequence[str], newest: list[int] | None = None
) -> str | None:
    """``exact`` from an ``exact_base`` already taken."""
    return combine([base, mounts_digest(attrs, found, newest), json_sha256(list(found))])


def exact(
    attrs: Mapping[str, Any], inputs: Sequence[Sequence[str]], found: Sequence[str]
) -> str | None:
    """``exact_base`` with the host side of the mounts that overlap ``found`` (where the
    answer rests: ``places``) and ``found`` itself; None when any of it cannot be read."""
    base = exact_base(attrs, inputs)
    return None if base is None else with_mounts(base, attrs, found)


# --- sibling: an identical container of the same image --------------------------------------------

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
    (never opened); ``budget[0]``: bytes still to read. None when it cannot all be read or the
    budget runs out."""
    digest = hashlib.sha256()
    pending = [""]
    count = 0
    while pending:
        rel_dir = pending.pop()
        try:
            with os.scandir(os.path.join(top, rel_dir) if rel_dir else top) as scan:
                entries = sorted(scan, key=lambda entry: entry.name)
        except (OSError, ValueError):  # ValueError: no path at all (a NUL)
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
    digest = host_file_sha256(path, st)
    if digest is None:
        raise OSError(f"{path} cannot be read, or is no longer the file listed")
    return digest.encode()


def kernel_shape(attrs: Mapping[str, Any]) -> str | None:
    """What of the kernel's view identical containers share: the mounts of their one mount
    namespace (mount point, filesystem type, why declared). None when the view is incomplete,
    a process's root is not the container's, a mount was made inside it, or its processes
    hold several namespaces: such a container takes no sibling's answer."""
    try:
        view = kernel.read_view(attrs, "the container")
    except TargetError:
        return None
    if view.incomplete is not None or view.foreign or len(view.mounts) != 1:
        return None
    [mounts] = view.mounts.values()
    if any(why is None for _, why in mounts):
        return None
    return json_sha256([[e.mount_point, e.fstype, why] for e, why in mounts])


def sibling(attrs: Mapping[str, Any], inputs: Sequence[Sequence[str]]) -> str | None:
    """The fingerprint every identical container of the same image shares: the image, Config
    but for the hostname and labels, the HostConfig that shapes a process, ``inputs``, the host
    kernel and driver, the shape of the kernel's view (``kernel_shape``) and the *content* of
    the container's upper directory. A fresh container (a CI job's, a fleet's replica) sees
    what a sibling verified before saw, so the sibling's answer stands for it. None for a
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
    shape = kernel_shape(attrs)
    if shape is None:
        return None
    content = _content_digest(_upper(attrs), [MAX_CONTENT_BYTES])
    return combine([json_sha256(settings), shape, content])


# --- watch: whether the agent probes a container again --------------------------------------------


def _probe_places(observation: Observation | None) -> list[str]:
    probe = observation.probe if observation is not None else None
    if probe is None:
        return []
    found = [probe.python.prefix, probe.python.base_prefix, *probe.python.path]
    return [p.rstrip("/") for p in found + sorted({d.location for d in probe.distributions}) if p]


def ignorable(policy: Policy, observation: Observation | None) -> Callable[[str, bool], bool]:
    """``skip`` for a container's upper directory: what the policy's filesystem check ignores
    (``/tmp``, logs, caches, ``__pycache__``...) cannot change a verdict, so writing there does
    not make a container due for a probe; except on the way to, or inside, a place the last
    probe found Python or its distributions in that the policy ignores as a whole (a
    ``sys.path`` entry under ``/tmp`` still counts)."""
    from lockd.judgement.policy import python_places

    env = observation.host.config_env if observation and observation.host else {}
    volatile = policy.filesystem.places(env, [*_probe_places(observation), *python_places(env)])

    def skip(path: str, is_dir: bool) -> bool:
        return volatile.skips(path) if is_dir else path in volatile

    return skip


def watched_mounts(
    mounts: Iterable[tuple[str, str, str, bool]], observation: Observation | None, policy: Policy
) -> list[tuple[str, str, str, bool]]:
    """The mounts (destination, source, type, rw) whose content can change what the probe sees:
    over a path the policy watches, or at or above a place the last probe found Python or its
    distributions in."""
    from lockd.judgement.policy import shadows_code

    found_places = _probe_places(observation)
    found = []
    for mount in mounts:
        destination = mount[0].rstrip("/") or "/"
        prefix = destination.rstrip("/") + "/"
        if shadows_code(destination, policy.filesystem) or any(
            p == destination or p.startswith(prefix) for p in found_places
        ):
            found.append(mount)
    return found


def host_key(driver_version: Path = DRIVER_VERSION) -> str:
    """What of the host every container's probe sees: the NVIDIA driver's version."""
    return _driver_version(driver_version) or "no driver"


def watch(
    config_key: str,
    upper_dir: str | None,
    attrs: Mapping[str, Any],
    mounts: Iterable[tuple[str, str, str, bool]],
    host: str,
    policy: Policy,
    observation: Observation | None,
) -> str | None:
    """The watch agent's fingerprint of a container: its configuration (``config_key``:
    lockd.watch.discovery's), its upper directory less what ``policy`` ignores
    (``ignorable``), the kernel's view of its processes, its running workload's shape
    (lockd.evidence.workload.workload_key: what each process runs and the code it maps, #17),
    the host (``host``: ``host_key``) and the host side of the ``mounts`` that can hide what
    the probe sees (``watched_mounts``), given the container's last ``observation``. None when
    any of it cannot be read: the container is probed every interval."""
    from lockd.evidence.workload import workload_key

    skip = ignorable(policy, observation)
    upper = tree_digest(upper_dir, skip=skip) if upper_dir else None
    watched = watched_mounts(mounts, observation, policy)
    parts = [config_key, upper, kernel_digest(attrs), workload_key(attrs), host]
    return combine(parts + [mount_digest(kind, source) for _, source, kind, _ in watched])


# --- a kept answer, looked for and kept -----------------------------------------------------------

SETTLE_NS = 1_000_000_000
"""A mount entry whose ctime is within this of the moment lockd took its fingerprints (or
later) may have changed while lockd worked: nothing is kept. File times come from the
kernel's coarse clock, a tick behind the one lockd reads."""


class Keys(NamedTuple):
    """A container's fingerprints for some inputs, taken at ``since`` (ns, the host's clock):
    its own without its mounts' content (``exact_base``), and the one identical containers of
    its image share (``sibling``); None where there is none."""

    own: str | None
    sibling: str | None
    since: int = 0


def keys(attrs: Mapping[str, Any], inputs: Sequence[Sequence[str]]) -> Keys:
    since = time.time_ns()
    return Keys(exact_base(attrs, inputs), sibling(attrs, inputs), since)


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
    container's own fingerprint (``exact``, kept as its ID; with the host side of the mounts
    that overlap the places the kept answer rests on) is tried first; the ``sibling`` one
    (kept as itself; taking it hashes the content of the container's own files) only when
    that finds nothing."""
    since = time.time_ns()
    base = exact_base(attrs, inputs)
    if base is not None:

        def own(document: Mapping[str, Any]) -> str | None:
            found = kept_places(document)
            return None if found is None else with_mounts(base, attrs, found)

        kept = load(container_id, own)
        if kept is not None:
            return kept, Keys(base, None, since)
    shared = sibling(attrs, inputs)
    kept = None if shared is None else load(shared, lambda _: shared)
    return kept, Keys(base, shared, since)


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
