"""What the host says about a target (trusted): its filesystem changes, mounts, the kernel's
view and the integrity of its installed files."""

from typing import Annotated, Literal

from pydantic import Field

from lockd.model.base import Digest, Frozen, Hex64, Name, Str
from lockd.model.report import Finding

# --- what the host says (trusted) --------------------------------------------------------

ChangeKind = Literal["added", "changed", "deleted"]

MAX_CHANGES = 100_000
"""The most filesystem changes an Observation holds: past it the walk stops and `record`
refuses (exit 2); `verify` fails the `filesystem` check."""


FileType = Literal["file", "dir", "symlink", "char", "block", "fifo", "socket"]

EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


class FileChange(Frozen):
    """One path the container changed, added or deleted relative to its image.

    What it holds, read on the host from the overlay upper directory (predicate v2 onwards):
    the entry's ``type``, ``mode`` (permission bits, with setuid/setgid/sticky), ``uid`` and
    ``gid``; a regular file's ``size`` and ``sha256``; a symbolic link's ``target``. A
    deletion (a whiteout) has none of them. All are None where the content could not be read
    (the daemon's changes API, a manifest of predicate v1): see HostEvidence.changes_content.
    """

    path: Str
    kind: ChangeKind
    type: FileType | None = None
    mode: Annotated[int, Field(ge=0, le=0o7777)] | None = None
    uid: Annotated[int, Field(ge=0)] | None = None
    gid: Annotated[int, Field(ge=0)] | None = None
    size: Annotated[int, Field(ge=0)] | None = None
    sha256: Hex64 | None = None
    target: Str | None = None  # a symbolic link's target, as written
    # /etc/ld.so.cache: the folders its entries point the loader to (None: not parsed)
    cache_dirs: Annotated[list[Str], Field(max_length=1024)] | None = None


class Mount(Frozen):
    destination: Str
    source: Str
    type: Str
    rw: bool


class KernelMount(Frozen):
    """A mount in one of the container's mount namespaces, as the kernel lists it on the host
    (/proc/PID/mountinfo): lockd.evidence.kernel. ``declared``: why it is expected (``daemon``,
    ``runtime``, ``masked``, ``gpu``...), None for a mount nobody asked the daemon for."""

    mount_point: Str
    fstype: Str
    source: Str
    root: Str  # the directory of the mounted filesystem that shows at mount_point
    declared: Str | None = None


class ForeignRoot(Frozen):
    """A process of the container whose root directory is not the container's (chroot,
    pivot_root): lockd.evidence.kernel."""

    pid: Annotated[int, Field(ge=0)]
    command: Str
    root: Str
    why: Str


class KernelView(Frozen):
    """The kernel's view of the container's processes, read on the host (lockd.evidence.kernel)."""

    processes: Annotated[int, Field(ge=0)] = 0
    namespaces: Annotated[int, Field(ge=0)] = 0  # distinct mount namespaces among them
    mounts: Annotated[list[KernelMount], Field(max_length=8192)] = []
    foreign_roots: Annotated[list[ForeignRoot], Field(max_length=1024)] = []
    incomplete: Str | None = None  # what the host could not read


class HostEvidence(Frozen):
    """What the Docker daemon and the host filesystem say about a container."""

    image_id: Digest
    repo_digests: list[Str] = []
    repo_tags: list[Str] = []
    container_id: Str | None = None
    changes: Annotated[list[FileChange], Field(max_length=MAX_CHANGES)] = []
    changes_source: Literal["overlay", "api", "none"] = "none"
    # True: each change carries its content (type, mode, owner, sha256 or link target), read on
    # the host; False: names and kinds only (the daemon's changes API, a manifest of predicate
    # v1, recorded before lockd kept content)
    changes_content: bool = False
    # more changes than MAX_CHANGES: the walk stopped, ``changes`` is incomplete
    changes_truncated: bool = False
    # the volatile patterns the walk did not descend into (lockd.evidence.targets.changes): changes
    # there are not in ``changes``
    changes_skipped: Annotated[list[Str], Field(max_length=256)] = []
    # the container asked for GPUs (--gpus, a CDI device, the nvidia runtime): the NVIDIA
    # container toolkit's injections are expected (lockd.judgement.filechanges.runtime_change)
    gpus_requested: bool = False
    mounts: list[Mount] = []
    config_env: dict[Str, Str] = {}
    # the kernel's view (lockd.evidence.kernel): None where the host could not read it, or lockd is
    # older
    kernel: KernelView | None = None
    privileged: bool = False  # HostConfig.Privileged
    cap_add: Annotated[list[Str], Field(max_length=64)] = []  # HostConfig.CapAdd


TargetKind = Literal["local", "container", "image", "process"]


class TargetInfo(Frozen):
    kind: TargetKind
    ref: Str


IntegritySource = Literal["overlay", "layers", "api", "local"]


class Integrity(Frozen):
    """What ``--deep`` found: every file the target's RECORDs list, hashed again where lockd
    read it (lockd.evidence.integrity). ``findings``: modified, missing, unlisted, unstable,
    unreadable,
    record-malformed, record-missing, record-mismatch (at most 1000; ``omitted`` counts more)."""

    source: IntegritySource  # a container's merged dir, an image's layers, the Docker API, local
    evidence: Literal["host", "inside"]
    distributions: Annotated[int, Field(ge=0)]  # distributions whose RECORD was read
    files: Annotated[int, Field(ge=0)]  # files hashed
    bytes: Annotated[int, Field(ge=0)]
    cached: Annotated[int, Field(ge=0)] = 0  # of files: digests from the layer cache
    unhashed: Annotated[int, Field(ge=0)] = 0  # rows without a hash (RECORD itself, .pyc)
    without_record: Annotated[list[Name], Field(max_length=20000)] = []
    findings: Annotated[list["Finding"], Field(max_length=1000)] = []
    omitted: Annotated[int, Field(ge=0)] = 0
    # the integrity cache's result (lockd.evidence.cache.integrity): when it was found
    reused_from: Str | None = None
