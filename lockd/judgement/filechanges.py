"""The `filesystem` check's judgement of a container's file changes. Pure: no I/O.

Deny by default: every change relative to the image is drift unless it is under a volatile place
of the policy (lockd.judgement.policy.volatile_places) or the manifest recorded it with the same
content.
Content, not names: a recorded change carries its type, mode, owner, sha256 or link target, and
the same path with other bytes is ``changed``. What the container runtime itself makes (Docker's
mount points, the NVIDIA container toolkit's injections) is evidence of the runtime, listed at a
non-failing level (``runtime``), never dropped silently; it is classified narrowly enough that a
real change cannot hide behind it (:func:`runtime_change`).

Finding kinds, failing: ``added``, ``changed``, ``deleted`` (a change the manifest does not
have, or has with other content), ``reverted`` (a recorded change is gone: the image's file is
back, or an added file removed), ``unverified`` (the manifest recorded content the observation
cannot show, or recorded none: the daemon's changes API, a manifest of predicate v1),
``truncated`` (more changes than lockd reads), ``unread`` (a place Python imports from lies
below a default volatile place, which lockd does not read), ``unchecked`` (a place lockd does
not read that the policy does not call volatile). Not failing: ``runtime``, ``narrowed`` (the
policy's ``watch`` leaves changes out of the check).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from lockd.judgement.policy import (
    DEFAULT_VOLATILE,
    Policy,
    Volatile,
    narrowed,
    python_places,
    volatile_places,
)
from lockd.model.host import EMPTY_SHA256, MAX_CHANGES, FileChange, HostEvidence
from lockd.model.manifest import Manifest
from lockd.model.report import Finding

MAX_LISTED = 1000
"""The most findings the `filesystem` check lists; its message counts the rest by kind."""

DOCKER_POINTS = frozenset(
    {
        "/.dockerenv",
        "/etc/hostname",
        "/etc/hosts",
        "/etc/resolv.conf",
        "/etc/mtab",
        "/dev/console",
        "/dev/pts",
        "/dev/shm",  # noqa: S108 (a name, not a place lockd writes to)
        "/dev/mqueue",
        "/proc",
        "/sys",
    }
)
"""What Docker mounts (or links) in every container: its mount points may show in the upper
directory as empty files or directories."""

_LIB_DIR = r"/(?:usr/)?lib(?:32|64)?(?:/[^/]+)?"
_NVIDIA_LIB = (
    r"lib(?:cuda|cudadebugger|nvcuvid|nvoptix|nvidia-[^/]+|GLX_nvidia|EGL_nvidia"
    r"|GLESv[12][^/]*_nvidia|vdpau_nvidia|nvrtc|nvrtc-builtins|nvos)\.so[^/]*"
)
NVIDIA_LIBRARY = re.compile(rf"^{_LIB_DIR}/(?:vdpau/)?{_NVIDIA_LIB}$")
NVIDIA_MOUNTS = (
    NVIDIA_LIBRARY,
    re.compile(r"^/(?:usr/)?(?:local/)?s?bin/nvidia-[^/]+$"),
    re.compile(r"^/(?:usr/)?lib/firmware/nvidia/.+$"),
    re.compile(r"^/dev/nvidia[^/]*$"),
    re.compile(r"^/dev/nvidia-caps/[^/]+$"),
    re.compile(r"^/dev/dri/[^/]+$"),
    re.compile(r"^/usr/share/nvidia/.+$"),
    re.compile(r"^/etc/vulkan/icd\.d/nvidia_icd\.json$"),
    re.compile(r"^/usr/share/(?:glvnd/egl_vendor\.d|egl/egl_external_platform\.d)/[^/]+\.json$"),
)
"""Where the NVIDIA container toolkit bind-mounts driver files (read-only): their mount points
show in the upper directory as empty files."""
LDCONFIG_OUTPUTS = frozenset({"/etc/ld.so.cache", "/var/cache/ldconfig/aux-cache"})
"""What the toolkit's ldconfig hook rewrites in a container that asked for GPUs."""


def describe(change: FileChange) -> str:
    """A change's content in one line: ``file 0644 0:0 12 bytes sha256:…``, ``symlink 0777
    0:0 -> target``, ``deleted``, ``content not read``."""
    if change.kind == "deleted":
        return "deleted"
    if change.type is None:
        return "content not read"
    mode = f"{change.mode:04o}" if change.mode is not None else "?"
    head = f"{change.type} {mode} {change.uid}:{change.gid}"
    if change.type == "file":
        digest = f"sha256:{change.sha256}" if change.sha256 else "unreadable"
        return f"{head} {change.size} bytes {digest}"
    if change.type == "symlink":
        return f"{head} -> {change.target}"
    return head


def _content(change: FileChange) -> tuple[object, ...]:
    return (change.type, change.mode, change.uid, change.gid, change.size, change.sha256,
            change.target)  # fmt: skip


def _empty(change: FileChange) -> bool:
    """A mount point as a runtime leaves it: an empty file or a directory (or unknown content:
    the daemon's changes API, whose source the daemon says it mounted)."""
    if change.type is None:
        return change.kind != "deleted"
    if change.type == "dir":
        return True
    return change.type == "file" and change.size == 0 and change.sha256 in (None, EMPTY_SHA256)


def _kernel_points(host: HostEvidence) -> set[str] | None:
    """Where the kernel lists an expected mount in the container's namespaces
    (lockd.evidence.kernel:
    declared by the daemon, the runtime or the NVIDIA toolkit); None where that view is absent
    (lockd not root, or a manifest recorded before it was kept)."""
    if host.kernel is None:
        return None
    return {m.mount_point for m in host.kernel.mounts if m.declared is not None}


def runtime_change(
    change: FileChange,
    host: HostEvidence,
    points: set[str] | None = None,
    volatile: Volatile | None = None,
) -> str | None:
    """Why ``change`` is the container runtime's doing rather than the container's, or None.

    Docker's mount points (DOCKER_POINTS and every declared mount's destination) and, in a
    container that asked for GPUs, the NVIDIA toolkit's (NVIDIA_MOUNTS), count only as
    an empty file or a directory, and, where the kernel's view of the container's mounts is
    there, only where something is mounted. A symbolic link counts when the toolkit's
    ldconfig made it: an NVIDIA library's name, in the same folder as the NVIDIA library it
    points to, which is itself one of the toolkit's mount points. /etc/ld.so.cache and
    ldconfig's aux-cache count only in a container that asked for GPUs, the cache only when
    lockd read it and none of its entries is in a ``volatile`` place. Anything else,
    including a mount point with content, is the container's change."""
    path = change.path
    if points is None:
        points = _kernel_points(host)
    if change.kind == "deleted":
        return None
    declared = {m.destination.rstrip("/") or "/" for m in host.mounts}
    if path in DOCKER_POINTS or path in declared:
        if path == "/etc/mtab" and change.type == "symlink":
            return "Docker's /etc/mtab link" if change.target == "/proc/mounts" else None
        if path.startswith("/dev/") and change.type == "char":
            return "a device node Docker makes"
        if _empty(change) and (points is None or path in points):
            return "the mount point of a mount Docker makes"
        return None
    if not host.gpus_requested:
        return None
    if path == "/etc/ld.so.cache":
        return _ld_cache(change, volatile)
    if path in LDCONFIG_OUTPUTS:
        return (
            "rewritten by the NVIDIA container toolkit's ldconfig hook"
            if change.type in (None, "file")
            else None
        )
    if any(p.match(path) for p in NVIDIA_MOUNTS):
        if path.startswith("/dev/") and change.type == "char":
            return "a device node of the NVIDIA container toolkit"
        if change.type == "symlink":
            return _toolkit_link(change, host, points)
        if _empty(change) and (points is None or path in points):
            return "the mount point of a driver file the NVIDIA container toolkit mounts"
    return None


def _ld_cache(change: FileChange, volatile: Volatile | None) -> str | None:
    """/etc/ld.so.cache as the toolkit's ldconfig leaves it: read on the host, every entry in
    a folder that is not volatile (so each library it names is the image's, or a change of its
    own that is judged). Unread (the daemon's API) or pointing into /tmp: the container's."""
    folders = change.cache_dirs
    if change.type != "file" or folders is None:
        return None
    if volatile is not None and any(f.rstrip("/") + "/lib.so" in volatile for f in folders):
        return None
    return "rewritten by the NVIDIA container toolkit's ldconfig hook"


def _toolkit_link(
    change: FileChange, host: HostEvidence, points: set[str] | None, depth: int = 0
) -> str | None:
    """A link the toolkit makes: an NVIDIA library's name to an NVIDIA library in the same
    folder that is one of its mount points (libcuda.so.1 -> libcuda.so.550.54.15), or to such
    a link (libcuda.so -> libcuda.so.1, the create-symlinks hook); two links at most."""
    target = change.target or ""
    folder = posixpath.dirname(change.path)
    resolved = posixpath.normpath(posixpath.join(folder, target))
    if (
        depth > 1
        or posixpath.dirname(resolved) != folder
        or not NVIDIA_LIBRARY.match(resolved)
        or not NVIDIA_LIBRARY.match(change.path)
    ):
        return None
    for other in host.changes:
        if other.path != resolved or other.kind == "deleted":
            continue
        if other.type == "symlink" and _toolkit_link(other, host, points, depth + 1):
            return f"a link the NVIDIA container toolkit makes to {target}"
        mounted = points is None or resolved in points
        if other.type in (None, "file") and _empty(other) and mounted:
            return f"a link the NVIDIA container toolkit's ldconfig makes to {target}"
    return None


@dataclass
class Judged:
    """The file-change part of the `filesystem` check."""

    failing: list[Finding] = field(default_factory=list)
    notes: list[Finding] = field(default_factory=list)  # runtime, narrowed
    volatile: int = 0  # observed changes under a volatile place
    refused: list[str] = field(default_factory=list)  # variables not taken as volatile places

    def listed(self, others: list[Finding]) -> list[Finding]:
        """At most MAX_LISTED findings: the failing ones (with ``others``) first."""
        return (self.failing + others + self.notes)[:MAX_LISTED]


def _guarded(manifest: Manifest, observed: HostEvidence) -> list[str]:
    """The places Python imports from: nothing below them is volatile but ``__pycache__``."""
    places = python_places(observed.config_env)
    recorded = manifest.observation.host
    if recorded is not None:
        places += python_places(recorded.config_env)
    probe = manifest.observation.probe
    if probe is not None:
        places += [probe.python.prefix, probe.python.base_prefix, *probe.python.path]
        places += [d.location for d in probe.distributions]
    return places


def _index(
    changes: Iterable[FileChange], host: HostEvidence, volatile: Volatile
) -> tuple[dict[str, FileChange], list[tuple[FileChange, str]], int]:
    """(the changes that count by path, the runtime's with why, how many were volatile)."""
    points = _kernel_points(host)
    counted: dict[str, FileChange] = {}
    runtime: list[tuple[FileChange, str]] = []
    skipped = 0
    for change in changes:
        if change.path in volatile:
            skipped += 1
            continue
        why = runtime_change(change, host, points, volatile)
        if why is not None:
            runtime.append((change, why))
        else:
            counted[change.path] = change
    return counted, runtime, skipped


def judge_changes(manifest: Manifest, observed: HostEvidence, policy: Policy) -> Judged:
    """Every observed change against the manifest's record of the container's changes."""
    fs = policy.filesystem
    volatile = fs.places(observed.config_env, _guarded(manifest, observed))
    recorded_host = manifest.observation.host
    judged = Judged(refused=volatile.refused)
    seen, runtime, judged.volatile = _index(observed.changes, observed, volatile)
    want: dict[str, FileChange] = {}
    if recorded_host is not None:
        want, _, _ = _index(recorded_host.changes, recorded_host, volatile)
    with_content = recorded_host is not None and recorded_host.changes_content
    for path in sorted(seen.keys() | want.keys()):
        if narrowed(fs, path):
            continue
        have, had = seen.get(path), want.get(path)
        finding = _compare(path, had, have, with_content, observed.changes_content)
        if finding is not None:
            judged.failing.append(finding)
    if observed.changes_truncated:
        judged.failing.append(
            Finding(
                kind="truncated",
                message=f"more than {MAX_CHANGES} changes outside the volatile places: lockd "
                "read the first ones only, the rest is not compared",
            )
        )
    judged.notes += [
        Finding(kind="runtime", path=c.path, observed=describe(c), message=why)
        for c, why in runtime
    ]
    if fs.watch is not None:
        judged.notes.append(
            Finding(
                kind="narrowed",
                message=f"this policy watches only {len(fs.watch)} pattern(s) "
                f"({', '.join(fs.watch[:5])}{', ...' if len(fs.watch) > 5 else ''}): "
                "changes elsewhere are not checked",
            )
        )
    judged.failing += _unread_python(manifest, observed)
    mine = set(fs.volatile + fs.ignore)
    judged.failing += [
        Finding(
            kind="unchecked",
            path=pattern,
            message="lockd does not read changes here (volatile by default) and this policy "
            "does not call it volatile: what lockd did not read cannot pass; add it to "
            "filesystem.volatile or filesystem.ignore",
        )
        for pattern in observed.changes_skipped
        if pattern not in mine
    ]
    return judged


def _unread_python(manifest: Manifest, observed: HostEvidence) -> list[Finding]:
    """A place Python imports from that lies where the walk did not go (a virtualenv under
    ~/.cache, as Poetry makes them): its changes were never read, which must not pass."""
    if not observed.changes_skipped or manifest.observation.probe is None:
        return []
    probe = manifest.observation.probe
    never = [p for p in DEFAULT_VOLATILE if p.startswith("!")]
    env = observed.config_env
    walk = volatile_places(observed.changes_skipped + never, env, python_places(env))
    places = {probe.python.prefix, *probe.python.path, *(d.location for d in probe.distributions)}
    findings = []
    for place in sorted(p.rstrip("/") for p in places if p.startswith("/")):
        parts = place.strip("/").split("/")
        for depth in range(1, len(parts) + 1):
            above = "/" + "/".join(parts[:depth])
            if walk.skips(above):
                findings.append(
                    Finding(
                        kind="unread",
                        path=place,
                        message=f"Python imports from here, but lockd does not read changes "
                        f"below {above} (volatile by default): they cannot be checked; keep "
                        "Python environments out of the volatile places",
                    )
                )
                break
    return findings


def _compare(
    path: str,
    had: FileChange | None,
    have: FileChange | None,
    recorded_content: bool,
    observed_content: bool,
) -> Finding | None:
    if had is None and have is not None:
        return Finding(kind=have.kind, path=path)
    if have is None and had is not None:
        return Finding(
            kind="reverted",
            path=path,
            expected=f"{had.kind}: {describe(had)}",
            message=f"recorded as {had.kind}, no longer changed: the image's content is back",
        )
    if had is None or have is None:
        return None
    if had.kind != have.kind:
        return Finding(
            kind=have.kind,
            path=path,
            expected=f"{had.kind}: {describe(had)}",
            observed=f"{have.kind}: {describe(have)}",
        )
    if have.kind == "deleted":
        return None
    if recorded_content and had.type is not None:
        if not observed_content or have.type is None:
            return Finding(
                kind="unverified",
                path=path,
                expected=describe(had),
                message="content unverified: recorded with content, but lockd could not read "
                "this container's (not root, or a storage driver without an upper directory)",
            )
        if _content(had) != _content(have):
            return Finding(
                kind="changed",
                path=path,
                expected=describe(had),
                observed=describe(have),
                message="recorded with other content",
            )
        return None
    return Finding(
        kind="unverified",
        path=path,
        observed=describe(have),
        message="content unverified: the manifest recorded this change by name only "
        "(predicate v1, or recorded through the daemon's changes API); record it again",
    )


def summary(judged: Judged, others: list[Finding], source: str) -> tuple[str, str]:
    """(the check's message when it passes, when it fails); ``others``: the check's other
    failing findings (mounts)."""
    notes: list[str] = []
    runtime = sum(f.kind == "runtime" for f in judged.notes)
    if runtime:
        notes.append(f"{runtime} made by the container runtime (listed, not drift)")
    if judged.volatile:
        notes.append(f"{judged.volatile} under volatile places")
    if judged.refused:
        notes.append("not taken as volatile: " + "; ".join(judged.refused))
    if any(f.kind == "narrowed" for f in judged.notes):
        notes.append("this policy watches only some paths (filesystem.watch)")
    failing = judged.failing + others
    unlisted = len(failing) + len(judged.notes) - MAX_LISTED
    if unlisted > 0:
        notes.append(f"{unlisted} more finding(s) not listed")
    kinds: dict[str, int] = {}
    for f in failing:
        kinds[f.kind] = kinds.get(f.kind, 0) + 1
    counted = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    tail = f" (read from {source}" + "".join(f"; {n}" for n in notes) + ")"
    ok = "no changes outside the volatile places but those recorded, with the same content"
    return ok + tail, f"{len(failing)} finding(s): {counted}" + tail
