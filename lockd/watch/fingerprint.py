"""What must change before a container is probed again.

A container's fingerprint digests its configuration (inspect: environment, command, mounts,
start time), the ``lstat`` of every entry of its overlay upper directory (what it wrote: a
``pip install`` inside adds files there, a copy-up of a lower file too), the same of the host
side of the mounts that may hide watched paths (a volume over site-packages), the kernel's view
of its processes (their mount namespaces, mountinfo and roots: a mount made inside, a chroot),
and the host's NVIDIA driver version. Every input is read on the host, none through
/proc/PID/root; every stat guard holds mode, size, mtime, ctime and inode.
Stat-walking a few hundred entries costs microseconds; the probe costs a Python start-up inside
the container. When any part cannot be read (another storage driver, a tmpfs over a watched
path, a tree too large) there is no fingerprint and the container is probed every interval.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lockd.errors import TargetError
from lockd.evidence import kernel
from lockd.evidence.cache.guard import MAX_ENTRIES, entry_digest, tree_digest
from lockd.judgement.policy import Policy, python_places, shadows_code
from lockd.model.manifest import Observation

DRIVER_VERSION = Path("/proc/driver/nvidia/version")

__all__ = ["combine", "host_key", "kernel_key", "tree_digest", "watched_mounts"]


def ignorable(policy: Policy, observation: Observation | None) -> Callable[[str, bool], bool]:
    """``skip`` for a container's upper directory: what the policy's filesystem check ignores
    (``/tmp``, logs, caches, ``__pycache__``...) cannot change a verdict, so writing there does
    not make a container due for a probe; except on the way to, or inside, a place the last
    probe found Python or its distributions in that the policy ignores as a whole (a
    ``sys.path`` entry under ``/tmp`` still counts)."""
    env = observation.host.config_env if observation and observation.host else {}
    volatile = policy.filesystem.places(env, [*_places(observation), *python_places(env)])

    def skip(path: str, is_dir: bool) -> bool:
        return volatile.skips(path) if is_dir else path in volatile

    return skip


def _places(observation: Observation | None) -> list[str]:
    probe = observation.probe if observation is not None else None
    if probe is None:
        return []
    places = [probe.python.prefix, probe.python.base_prefix, *probe.python.path]
    return [p.rstrip("/") for p in places + sorted({d.location for d in probe.distributions}) if p]


def watched_mounts(
    mounts: Iterable[tuple[str, str, str, bool]], observation: Observation | None, policy: Policy
) -> list[tuple[str, str, str, bool]]:
    """The mounts whose content can change what the probe sees: over a path the policy watches,
    or at or above a place the last probe found Python or its distributions in."""
    places = _places(observation)
    found = []
    for mount in mounts:
        destination = mount[0].rstrip("/") or "/"
        prefix = destination.rstrip("/") + "/"
        if shadows_code(destination, policy.filesystem) or any(
            p == destination or p.startswith(prefix) for p in places
        ):
            found.append(mount)
    return found


def mount_digest(mount: tuple[str, str, str, bool], limit: int = MAX_ENTRIES) -> str | None:
    """A digest of a watched mount's content on this host (a file bind-mounted: its mode,
    size, mtime, ctime and inode); None for one that is not a path here (tmpfs, a volume
    driver's) or cannot be read."""
    _, source, kind, _ = mount
    if kind not in ("bind", "volume") or not source.startswith("/"):
        return None
    return entry_digest(source, limit)


def kernel_key(attrs: Mapping[str, Any]) -> str | None:
    """The kernel's view of the container's processes, read on the host (lockd.evidence.kernel): the
    distinct mount namespaces, roots and mountinfo among them. A mount made inside the
    container, a chroot or pivot_root changes it; the agent's own probe (a ``docker exec``
    sharing init's namespace and root) does not. None when it cannot all be read: probed every
    interval. Nothing is read through /proc/PID/root (the container's choice)."""
    try:
        return kernel.read_view(attrs, "the container", judge=False).digest()
    except TargetError:
        return None  # stopped: the daemon's events say so


def host_key(driver_version: Path = DRIVER_VERSION) -> str:
    """What of the host every container's probe sees: the NVIDIA driver's version line."""
    try:
        return driver_version.read_text(encoding="utf-8", errors="replace")[:4096]
    except OSError:
        return "no driver"


def combine(parts: Sequence[str | None]) -> str | None:
    """One fingerprint of its parts; None when any part is unknown."""
    if any(part is None for part in parts):
        return None
    digest = hashlib.sha256()
    for part in parts:
        assert part is not None
        digest.update(part.encode("utf-8", "surrogateescape") + b"\0")
    return digest.hexdigest()
