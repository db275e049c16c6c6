"""The kernel's view of a running container, read on the host: its processes (every member of
its cgroup), the mounts of each one's mount namespace (``/proc/PID/mountinfo``) and each one's
root directory (``/proc/PID/root`` read as a link, never walked).

This is evidence of the first level (ARCHITECTURE.md): the kernel writes these files, and a
process in the container can change what they say only by doing what they report (mounting,
calling chroot). The daemon's inspect answer (level 2) says which mounts were *asked for*; a
mount made inside the container (``mount -t tmpfs`` with CAP_SYS_ADMIN, a launcher's
``unshare -m``) is in the kernel's list only. So:

* ``classify`` (pure) names, of each mount a namespace holds, why it is expected: the
  daemon's ``Mounts`` and ``--tmpfs``, the runtime's standard set (/proc, /dev and its
  submounts, /sys and the cgroup tree, /etc/hosts, hostname, resolv.conf, the masked and
  read-only paths of ``HostConfig``, ``--init``, ``--device``), the NVIDIA container toolkit's
  injections (read-only binds of driver libraries and binaries, /dev/nvidia*, firmware) for a
  container that asked for GPUs, the submounts a recursive bind brings from the host; any
  other mount is reported (``declared`` None).
* a process whose root is not the container's root (chroot, pivot_root) is reported: its
  ``/proc/PID/root`` link is not "/", or the "/" of its namespace is not the container's
  overlay (the super options carry ``upperdir=`` the daemon's UpperDir).

Parsers are pure and unit-tested (``parse_mountinfo``, ``parse_cgroup``, ``procs_files``);
``read_view`` reads at the edge. Processes that exit while lockd reads are skipped; the
container's init process vanishing is a TargetError naming the container (it stopped).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from functools import cache
from typing import Any, NamedTuple

from lockd.errors import TargetError

__all__ = [
    "CGROUP_ROOT",
    "MAX_PROCESSES",
    "MountEntry",
    "MountinfoError",
    "Process",
    "View",
    "classify",
    "gpu_requested",
    "host_namespaces",
    "member_pids",
    "parse_cgroup",
    "parse_mountinfo",
    "procs_files",
    "read_view",
    "unescape",
]

CGROUP_ROOT = "/sys/fs/cgroup"
MAX_PROCESSES = 4096
"""A container with more processes is read up to this many (the view says it is incomplete)."""
MAX_MOUNTINFO_BYTES = 4 * 1024 * 1024

_OCTAL = re.compile(rb"\\([0-7]{3})")


class MountinfoError(ValueError):
    """A line of /proc/PID/mountinfo that is not in the kernel's format."""


class MountEntry(NamedTuple):
    """One line of /proc/PID/mountinfo (proc(5)), its paths unescaped."""

    mount_id: int
    parent_id: int
    device: str  # major:minor
    root: str  # the directory of the filesystem that is mounted here
    mount_point: str  # relative to the reading process's root
    options: tuple[str, ...]  # per-mount options (ro, nosuid...)
    optional: tuple[str, ...]  # shared:N, master:N...
    fstype: str
    source: str
    super_options: tuple[str, ...]

    @property
    def read_only(self) -> bool:
        return "ro" in self.options


def unescape(field_bytes: bytes) -> str:
    """A mountinfo field with the kernel's octal escapes (``\\040`` space, ``\\011`` tab,
    ``\\012`` newline, ``\\134`` backslash) undone; bytes that are not UTF-8 kept as
    surrogates."""
    if b"\\" in field_bytes:
        field_bytes = _OCTAL.sub(lambda m: bytes([int(m.group(1), 8) & 0xFF]), field_bytes)
    return field_bytes.decode("utf-8", "surrogateescape")


def _split_options(text: bytes) -> tuple[str, ...]:
    return tuple(unescape(o) for o in text.split(b",") if o)


def parse_mountinfo(data: bytes) -> list[MountEntry]:
    """Every line of /proc/PID/mountinfo, in order.

    Raises:
        MountinfoError: a line is not in the format (too few fields, no ``-`` separator, a
            number that is none); the message names the line.
    """
    found = []
    for number, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        fields = line.split(b" ")
        try:
            separator = fields.index(b"-", 6)
        except ValueError:
            raise MountinfoError(f"line {number}: no '-' separator after six fields") from None
        if len(fields) < separator + 3 or separator < 6:
            raise MountinfoError(f"line {number}: {len(fields)} fields, too few")
        try:
            mount_id, parent_id = int(fields[0]), int(fields[1])
        except ValueError:
            raise MountinfoError(f"line {number}: the mount IDs are not numbers") from None
        if b":" not in fields[2] or not fields[3] or not fields[4].startswith(b"/"):
            # (a root need not be a path: an nsfs mount's is "net:[4026532...]")
            raise MountinfoError(f"line {number}: no major:minor, root and mount point")
        found.append(
            MountEntry(
                mount_id=mount_id,
                parent_id=parent_id,
                device=fields[2].decode("ascii", "replace"),
                root=unescape(fields[3]),
                mount_point=unescape(fields[4]),
                options=_split_options(fields[5]),
                optional=tuple(f.decode("ascii", "replace") for f in fields[6:separator]),
                fstype=unescape(fields[separator + 1]),
                source=unescape(fields[separator + 2]),
                super_options=_split_options(b" ".join(fields[separator + 3 :])),
            )
        )
    return found


# --- a container's processes --------------------------------------------------------------------


def parse_cgroup(data: bytes) -> list[tuple[str, tuple[str, ...], str]]:
    """(hierarchy ID, controllers, path) of each line of /proc/PID/cgroup: ``0::/path`` is
    cgroup v2's (controllers empty), ``4:memory:/path`` v1's, ``9:name=systemd:/path`` a named
    v1 hierarchy. Lines not in the format are left out."""
    found = []
    for line in data.decode("utf-8", "surrogateescape").splitlines():
        hierarchy, sep, rest = line.partition(":")
        controllers, sep2, path = rest.partition(":")
        if not (sep and sep2 and hierarchy.isdigit() and path.startswith("/")):
            continue
        found.append((hierarchy, tuple(c for c in controllers.split(",") if c), path))
    return found


def procs_files(
    lines: Sequence[tuple[str, tuple[str, ...], str]], unified: bool, root: str = CGROUP_ROOT
) -> list[str]:
    """Where the members of the cgroup that ``lines`` (``parse_cgroup``) name are listed, in
    the order to try: with cgroup v2 (``unified``: /sys/fs/cgroup is a cgroup2 mount) the
    ``0::`` path's cgroup.procs; with v1 the pids, then memory, then cpu hierarchy's, then the
    hybrid layout's unified one."""
    found = []
    if unified:
        found += [f"{root}{path.rstrip('/')}/cgroup.procs" for h, c, path in lines if h == "0"]
        return found
    for wanted in ("pids", "memory", "cpu"):
        found += [
            f"{root}/{wanted}{path.rstrip('/')}/cgroup.procs" for _, c, path in lines if wanted in c
        ]
    found += [f"{root}/unified{path.rstrip('/')}/cgroup.procs" for h, _, path in lines if h == "0"]
    return found


# --- which mounts the container was given -------------------------------------------------------

_RUNTIME = {
    "/proc": ("proc",),
    "/dev": ("tmpfs", "devtmpfs"),
    "/dev/pts": ("devpts",),
    "/dev/mqueue": ("mqueue",),
    "/dev/shm": (),  # noqa: S108  tmpfs, or a bind of the host's or another container's (--ipc)
    "/sys": ("sysfs",),
    "/sys/fs/cgroup": ("tmpfs", "cgroup2"),
    "/etc/resolv.conf": (),
    "/etc/hostname": (),
    "/etc/hosts": (),
}
"""The mounts the runtime (runc, as Docker asks it) makes in every container, with the
filesystem types it makes them with (empty: a bind of a host file, any type)."""

_GPU_PATTERNS: tuple[str, ...] = (
    r"/dev/nvidia[^/]*",
    r"/dev/nvidia-caps(/.*)?",
    r"/dev/dri(/.*)?",
    r"/proc/driver/nvidia(/.*)?",
    r"/(usr/)?(local/)?s?bin/nvidia-[^/]+",
    (
        r"/(usr/)?lib(32|64)?(/[^/]+)*/lib(cuda|cudadebugger|nvcuvid|nvoptix|nvidia-[^/]+|"
        r"GLX_nvidia|EGL_nvidia|GLESv[12][^/]*_nvidia|vdpau_nvidia|glxserver_nvidia|nvrtc|"
        r"nvrtc-builtins|nvos)[^/]*\.so[^/]*"
    ),
    r"/(usr/)?lib(32|64)?(/[^/]+)*/(nvidia_drv|nvidia-drm_gbm)\.so[^/]*",  # Xorg, GBM
    r"/tmp/nvidia-mps",  # noqa: S108  the MPS pipe directory
    r"/(usr/)?lib(/[^/]+)*/firmware/nvidia(/.*)?",
    r"/run/nvidia-(persistenced|fabricmanager)/socket",
    r"/(etc|usr/share)/(vulkan|glvnd|egl|OpenCL)(/.*)?",
    r"/usr/share/nvidia(/.*)?",
)
"""Where the NVIDIA container toolkit (nvidia-container-cli, or its CDI specification) mounts
the host's driver into a container that asked for GPUs (compiled on first use: most
verifications have no GPU)."""


_GPU_WRITABLE = ("/dev/", "/proc/driver/nvidia", "/run/", "/tmp/nvidia-mps")  # noqa: S108
"""Where the toolkit's mounts are not read-only binds: devices, its /proc tmpfs, sockets, the
MPS pipe directory."""


@cache
def _gpu_pattern() -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{p})" for p in _GPU_PATTERNS))


def gpu_requested(attrs: Mapping[str, Any]) -> bool:
    """Whether the container asked for GPUs: ``--gpus`` or a CDI device (DeviceRequests), the
    nvidia runtime."""
    host_config = attrs.get("HostConfig") or {}
    runtime = str(host_config.get("Runtime") or "")
    return bool(host_config.get("DeviceRequests")) or "nvidia" in runtime


def _upper_dir(attrs: Mapping[str, Any]) -> str:
    return str(((attrs.get("GraphDriver") or {}).get("Data") or {}).get("UpperDir") or "")


def is_container_root(entry: MountEntry, attrs: Mapping[str, Any]) -> bool:
    """Whether ``entry`` is the container's own root filesystem: its overlay, whose upper
    directory is the one the daemon names (when it names one)."""
    if entry.root != "/":
        return False
    upper = _upper_dir(attrs)
    if not upper:
        return True  # another storage driver: nothing to hold it against
    return entry.fstype == "overlay" and f"upperdir={upper}" in entry.super_options


def classify(
    entries: Sequence[MountEntry],
    attrs: Mapping[str, Any],
    host_mount_points: Iterable[str] = (),
) -> list[tuple[MountEntry, str | None]]:
    """Each mount of one namespace (as a process whose root is the container's sees them)
    with why it is expected (``daemon``, ``tmpfs``, ``runtime``, ``masked``, ``read-only``,
    ``init``, ``device``, ``gpu``, ``recursive-bind``, ``root``), None for one nobody asked for:
    made inside the container. A second mount over a point already declared is not declared
    (it hides the first). ``host_mount_points``: the host's own mounts, for the submounts a
    recursive bind of a host directory brings along."""
    host_config = attrs.get("HostConfig") or {}
    daemon: dict[str, str] = {}
    binds: list[tuple[str, str]] = []
    for mount in attrs.get("Mounts") or []:
        destination = str(mount.get("Destination") or "")
        kind = str(mount.get("Type") or "")
        daemon[destination] = kind
        if kind in ("bind", "volume"):
            binds.append((destination, str(mount.get("Source") or "")))
    for destination in host_config.get("Tmpfs") or {}:
        daemon[str(destination)] = "tmpfs"
    masked = {str(p) for p in host_config.get("MaskedPaths") or []}
    readonly = {str(p) for p in host_config.get("ReadonlyPaths") or []}
    devices = {str(d.get("PathInContainer") or "") for d in host_config.get("Devices") or []}
    gpus = gpu_requested(attrs)
    host_points = set(host_mount_points)
    seen: set[str] = set()
    found: list[tuple[MountEntry, str | None]] = []
    for entry in entries:
        point = entry.mount_point
        why = _declared(entry, attrs, daemon, masked, readonly, devices, gpus)
        if why is None:
            why = _recursive_bind(point, binds, host_points)
        if point in seen and why != "recursive-bind":
            why = None  # stacked over an expected mount: hides it
        seen.add(point)
        found.append((entry, why))
    return found


def _declared(
    entry: MountEntry,
    attrs: Mapping[str, Any],
    daemon: Mapping[str, str],
    masked: set[str],
    readonly: set[str],
    devices: set[str],
    gpus: bool,
) -> str | None:
    point = entry.mount_point
    if point == "/":
        return "root" if is_container_root(entry, attrs) else None
    if point in daemon:
        if daemon[point] == "tmpfs" and entry.fstype != "tmpfs":
            return None
        return "tmpfs" if daemon[point] == "tmpfs" else "daemon"
    if point in _RUNTIME:
        types = _RUNTIME[point]
        return "runtime" if not types or entry.fstype in types else None
    if point.startswith("/sys/fs/cgroup/") and "/" not in point[len("/sys/fs/cgroup/") :]:
        return "runtime" if entry.fstype in ("cgroup", "cgroup2") else None
    if point in masked:
        return "masked"
    if point in readonly and entry.fstype == "proc":
        return "read-only"
    if point == "/dev/console" and entry.fstype == "devpts":
        return "runtime"  # docker run -t
    if point in ("/sbin/docker-init", "/dev/init") and (attrs.get("HostConfig") or {}).get("Init"):
        return "init"
    if point in devices:
        return "device"
    # the toolkit binds files read-only; devices and its /proc/driver/nvidia tmpfs are not
    if (
        gpus
        and _gpu_pattern().fullmatch(point)
        and (entry.read_only or point.startswith(_GPU_WRITABLE))
    ):
        return "gpu"
    return None


def _recursive_bind(
    point: str, binds: Sequence[tuple[str, str]], host_points: set[str]
) -> str | None:
    """``recursive-bind`` when ``point`` is below a declared bind mount whose host source has a
    mount at the same place (Docker binds recursively: a host directory's submounts come
    along)."""
    for destination, source in binds:
        below = destination.rstrip("/") + "/"
        if (
            source
            and point.startswith(below)
            and source.rstrip("/") + point[len(below) - 1 :] in (host_points)
        ):
            return "recursive-bind"
    return None


# --- reading it (the edge) ----------------------------------------------------------------------


class Process(NamedTuple):
    pid: int
    namespace: str  # /proc/PID/ns/mnt as a link: "mnt:[4026532...]"
    root: str  # /proc/PID/root as a link: "/" unless it called chroot
    command: str


class View:
    """What the host read of one container's processes. ``mounts``: per mount namespace, its
    mounts as a process whose root is the container's sees them (classified); ``foreign``:
    (process, why) whose root is not the container's; ``incomplete``: what could not be read
    (nothing read from such a view is a reason to reuse a kept answer). A plain class, as the
    others here are tuples: lockd.evidence.kernel is imported on every verification."""

    def __init__(self) -> None:
        self.processes: list[Process] = []
        self.mountinfo: dict[tuple[str, str], bytes] = {}
        self.mounts: dict[str, list[tuple[MountEntry, str | None]]] = {}
        self.foreign: list[tuple[Process, str]] = []
        self.incomplete: str | None = None

    def digest(self) -> str | None:
        """One digest of the distinct (namespace, root, mountinfo) of the container's
        processes (a process that comes or goes in a namespace and root already seen changes
        nothing: lockd's own ``docker exec`` probe shares its init's); None when incomplete."""
        if self.incomplete is not None:
            return None
        digest = hashlib.sha256()
        for (namespace, root), text in sorted(self.mountinfo.items()):
            digest.update(b"%s\0%s\0%s\n" % (os.fsencode(namespace), os.fsencode(root), text))
        return digest.hexdigest()


def _read(path: str, limit: int = MAX_MOUNTINFO_BYTES) -> bytes:
    """Up to ``limit + 1`` bytes of a /proc or cgroup file, read in small pieces (asking for a
    buffer of ``limit`` at once costs more than reading the file: most are under 4 KiB)."""
    chunks = []
    size = 0
    with open(path, "rb", buffering=0) as handle:
        while size <= limit:
            chunk = handle.read(min(65536, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    return b"".join(chunks)


@cache
def _unified(root: str = CGROUP_ROOT) -> bool:
    return os.path.exists(os.path.join(root, "cgroup.controllers"))


def _member_pids(init_pid: int, container_id: str) -> tuple[list[int], str | None]:
    """(the pids of the container's cgroup, init first; why that list may be incomplete).

    Raises:
        ProcessLookupError: the init process is gone.
    """
    try:
        lines = parse_cgroup(_read(f"/proc/{init_pid}/cgroup", 65536))
    except FileNotFoundError:
        raise ProcessLookupError(init_pid) from None
    except OSError as e:
        return [init_pid], f"cannot read /proc/{init_pid}/cgroup: {e.strerror}"
    if not any(container_id[:12] in path for _, _, path in lines):
        return [init_pid], f"pid {init_pid} is in no cgroup of the container's"
    for path in procs_files(lines, _unified()):
        try:
            text = _read(path, 1024 * 1024)
        except OSError:
            continue
        pids = [int(p) for p in text.split() if p.isdigit()]
        others = sorted(p for p in pids if p != init_pid)
        if len(others) + 1 > MAX_PROCESSES:
            return [init_pid, *others[: MAX_PROCESSES - 1]], f"more than {MAX_PROCESSES} processes"
        return [init_pid, *others], None
    return [init_pid], "cannot list the processes of its cgroup"


def member_pids(init_pid: int, container_id: str) -> tuple[list[int], str | None]:
    """(the pids of the container's cgroup, cgroup v1 or v2, init first; why that list may be
    incomplete): what lockd.evidence.workload reads the workload of.

    Raises:
        ProcessLookupError: the init process is gone.
    """
    return _member_pids(init_pid, container_id)


def _process(pid: int, named: bool) -> Process:
    """``named``: read its command too (for a report; a fingerprint needs none).

    Raises: OSError (FileNotFoundError / ProcessLookupError when it exited)."""
    namespace = os.readlink(f"/proc/{pid}/ns/mnt")
    root = os.readlink(f"/proc/{pid}/root")
    command = "?"
    if named:
        with suppress(OSError):
            command = _read(f"/proc/{pid}/comm", 64).decode("utf-8", "replace").strip()
    return Process(pid, namespace, root, command)


@cache
def _host_namespaces() -> frozenset[str]:
    """The host's mount namespaces as lockd sees them: its own and PID 1's."""
    found = set()
    for pid in ("self", "1"):
        with suppress(OSError):
            found.add(os.readlink(f"/proc/{pid}/ns/mnt"))
    return frozenset(found)


def host_namespaces() -> frozenset[str]:
    """The host's mount namespaces as lockd sees them (its own and PID 1's): a member of a
    container's cgroup in one of them is a ``docker exec`` in transit."""
    return _host_namespaces()


def host_mount_points(pid: int = 1) -> set[str]:
    """The mount points of the host's (PID 1's) mount namespace; empty when unreadable."""
    try:
        return {e.mount_point for e in parse_mountinfo(_read(f"/proc/{pid}/mountinfo"))}
    except (OSError, MountinfoError):
        return set()


def read_view(attrs: Mapping[str, Any], source: str, *, judge: bool = True) -> View:
    """The kernel's view of the container (``attrs``: the daemon's inspect answer; ``source``:
    "container NAME", for messages). ``judge=False`` reads only what a fingerprint needs (the
    mountinfo of each distinct namespace and root, unparsed: ``View.digest``).

    Raises:
        TargetError: the container's init process exited while lockd read it (it stopped), or a
            mountinfo is not in the kernel's format.
    """
    init_pid = int((attrs.get("State") or {}).get("Pid") or 0)
    container_id = str(attrs.get("Id") or "")
    view = View()
    if init_pid <= 0 or not container_id:
        view.incomplete = "the daemon names no running process"
        return view
    try:
        pids, view.incomplete = _member_pids(init_pid, container_id)
    except ProcessLookupError:
        upper = _upper_dir(attrs)
        if upper and os.path.isdir(upper):  # its files are on this host: it stopped
            raise TargetError(
                f"{source} stopped while lockd read its processes (pid {init_pid})"
            ) from None
        view.incomplete = f"pid {init_pid} is not on this host (is the daemon remote?)"
        return view
    hosts = _host_namespaces()
    for pid in pids:
        try:
            process = _process(pid, judge)
            if process.namespace in hosts and pid != init_pid:
                continue  # a `docker exec` in transit (runc init joins the namespace after it
                # joins the cgroup); no process of a container lives in the host's namespace
            view.processes.append(process)
        except (FileNotFoundError, ProcessLookupError):
            if pid == init_pid:
                raise TargetError(
                    f"{source} stopped while lockd read its processes (pid {init_pid})"
                ) from None
            continue  # exited meanwhile
        except OSError as e:
            view.incomplete = f"cannot read /proc/{pid}: {e.strerror}"
            if pid == init_pid:
                return view
    by_pair: dict[tuple[str, str], Process] = {}
    for process in view.processes:
        by_pair.setdefault((process.namespace, process.root), process)
    for pair, process in sorted(by_pair.items()):
        try:
            text = _read(f"/proc/{process.pid}/mountinfo")
        except (FileNotFoundError, ProcessLookupError):
            if process.pid == init_pid:
                raise TargetError(
                    f"{source} stopped while lockd read its processes (pid {init_pid})"
                ) from None
            view.incomplete = view.incomplete or f"pid {process.pid} exited while lockd read it"
            continue
        except OSError as e:
            view.incomplete = f"cannot read /proc/{process.pid}/mountinfo: {e.strerror}"
            continue
        if len(text) > MAX_MOUNTINFO_BYTES:
            view.incomplete = f"/proc/{process.pid}/mountinfo is larger than {MAX_MOUNTINFO_BYTES}"
            continue
        view.mountinfo[pair] = text
    whole = {namespace for namespace, root in view.mountinfo if root == "/"}
    blind = {p.namespace for p in view.processes} - whole
    if blind and view.incomplete is None:
        view.incomplete = (
            f"{len(blind)} mount namespace(s) with no process whose root is its own: their "
            "mounts outside the chroot cannot be listed"
        )
    if judge:
        _judge(view, attrs, source)
    return view


def _judge(view: View, attrs: Mapping[str, Any], source: str) -> None:
    """Fill ``view.mounts`` (per namespace, from a process whose root is "/") and
    ``view.foreign``."""
    parsed: dict[tuple[str, str], list[MountEntry]] = {}
    for pair, text in view.mountinfo.items():
        try:
            parsed[pair] = parse_mountinfo(text)
        except MountinfoError as e:
            raise TargetError(f"{source}: cannot read its mounts: mountinfo {e}") from e
    binds = any((m.get("Type") or "") in ("bind", "volume") for m in attrs.get("Mounts") or [])
    host_points = host_mount_points() if binds else set()
    for (namespace, root), entries in sorted(parsed.items()):
        if root == "/" and namespace not in view.mounts:
            view.mounts[namespace] = classify(entries, attrs, host_points)
    for process in view.processes:
        own = parsed.get((process.namespace, process.root))
        if process.root != "/":
            view.foreign.append((process, f"its root is {process.root} (chroot)"))
        elif own is not None:
            tops = [e for e in own if e.mount_point == "/"]
            if not tops or not is_container_root(tops[-1], attrs):
                fstype = tops[-1].fstype if tops else "nothing"
                view.foreign.append(
                    (process, f"its / is a {fstype} mount, not the container's (pivot_root)")
                )


def evidence(view: View) -> Any:
    """``view`` as the model's ``KernelView`` (what a manifest and a report carry)."""
    from lockd.model.host import ForeignRoot, KernelMount, KernelView

    mounts = [
        KernelMount(
            mount_point=entry.mount_point[:4096],
            fstype=entry.fstype[:4096],
            source=entry.source[:4096],
            root=entry.root[:4096],
            declared=why,
        )
        for _, classified in sorted(view.mounts.items())
        for entry, why in classified
    ]
    foreign = [
        ForeignRoot(pid=p.pid, command=p.command[:4096], root=p.root[:4096], why=why)
        for p, why in view.foreign
    ]
    return KernelView(
        processes=len(view.processes),
        namespaces=len({p.namespace for p in view.processes}),
        mounts=mounts[:8192],
        foreign_roots=foreign[:1024],
        incomplete=view.incomplete,
    )
