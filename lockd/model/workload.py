"""What the running workload of a target is, read on the host from the kernel's files of each of
its processes (lockd.evidence.workload): the executable, the command line, the start time, the
tracked environment variables and every mapping (#17).

Trust (ARCHITECTURE.md): the executable, the mappings and the hashes of the mapped files are the
kernel's view (``/proc/PID/{exe,maps,map_files}``, read on the host, never through
``/proc/PID/root``). The command line and the environment are read from the process's own memory
(``/proc/PID/{cmdline,environ}``): evidence the process could have rewritten, and labelled so
(``WorkloadProcess.env_source``). So is the group a process is judged in, which is derived
from its command line.

Files are listed once per workload (``Workload.files``, in path order) and each process names
the ones it maps by index: twenty workers of one job map the same few hundred files.
"""

from typing import Annotated, Literal

from pydantic import Field, model_validator

from lockd.model.base import Frozen, Hex64, Name, Str

MAX_PROCESSES = 4096
"""The most processes a workload holds (as lockd.evidence.kernel reads a container)."""
MAX_FILES = 65536
"""The most distinct mapped files a workload holds; past it the read says it is incomplete."""
MAX_ARGS = 256
"""The most command-line arguments kept per process (``command_truncated`` says when more)."""
MAX_ENV = 512
"""The most tracked variables kept per process."""
MAX_SPECIALS = 1024
"""The most distinct non-file mappings (kind and name) kept per process."""

SpecialKind = Literal["device", "shm", "memfd", "sysv", "anon", "heap", "stack", "vdso", "other"]
"""A mapping that is not a file lockd reads: a device node (``/dev/nvidia*``), shared memory
(``/dev/shm/*``, ``[anon_shmem:...]``, a shared anonymous mapping), a memfd, System V shared
memory, anonymous memory (``[anon:name]`` too), the heap, a stack, the kernel's pages
(``[vdso]``, ``[vvar]``, ``[vsyscall]``), anything else (``anon_inode:...``)."""

FileKind = Literal["file", "memfd", "shm"]
"""A regular file on a filesystem; a memfd or a shared-memory file that is mapped executable (so
read and judged as code)."""

Origin = Literal["init", "exec", "unknown"]
"""Where a process comes from: the target's init process and its descendants; a tree started
beside it (``docker exec``: an operator's shell, another tool); not determinable."""

SkipReason = Literal["excluded", "transit", "vanished", "zombie", "unreadable", "limit"]
"""Why a process is not in ``Workload.processes``: the caller left it out (lockd's own exec and
its children); a ``docker exec`` in transit (still in the host's mount namespace); it exited
while lockd read it (or its pid was reused); a zombie (nothing mapped, nothing to run); the host
may not read it (another user's process without root); past MAX_PROCESSES."""


class MappedFile(Frozen):
    """One distinct file mapped by the workload, read through ``/proc/PID/map_files/RANGE`` (so
    a file deleted or replaced after it was mapped is still the bytes the process runs)."""

    path: Str  # as the kernel prints it in /proc/PID/maps, " (deleted)" taken off
    deleted: bool = False  # the kernel printed " (deleted)": removed or replaced on disk
    kind: FileKind = "file"
    executable: bool = False  # mapped executable by at least one process: code
    sha256: Hex64 | None = None  # None: not read (see ``unread``)
    size: Annotated[int, Field(ge=0)] | None = None
    device: Str | None = None  # major:minor of the file's device (stat through map_files)
    inode: Annotated[int, Field(ge=0)] | None = None
    soname: Str | None = None  # DT_SONAME of an ELF shared object
    # a CUDA library (libcudart, libcudnn_cnn, libnccl...) or a driver library (libcuda,
    # libnvidia-*): its name, and its version where the file's name (or soname) says it
    library: Name | None = None
    library_role: Literal["cuda", "driver"] | None = None
    library_version: Str | None = None
    unread: Str | None = None  # why the content was not read


class Special(Frozen):
    """Mappings that are not files lockd reads, by kind (never read): how many of this kind and
    name one process has."""

    kind: SpecialKind
    name: Str | None = None  # /dev/nvidia0, /dev/shm/torch_1_2, a memfd's or [anon:...]'s name
    count: Annotated[int, Field(ge=1)] = 1


class WorkloadProcess(Frozen):
    """One process of the workload."""

    pid: Annotated[int, Field(ge=1)]
    ppid: Annotated[int, Field(ge=0)] = 0
    origin: Origin = "unknown"
    started: Annotated[int, Field(ge=0)]  # /proc/PID/stat field 22: clock ticks after boot
    uid: Annotated[int, Field(ge=0)] | None = None  # the real user ID (/proc/PID/status)
    executable: Str  # /proc/PID/exe as the kernel names it, " (deleted)" taken off
    executable_deleted: bool = False
    executable_sha256: Hex64 | None = None  # read through /proc/PID/exe
    # the command line (from the process's own memory), at most MAX_ARGS arguments
    command: Annotated[list[Str], Field(max_length=MAX_ARGS)] = []
    command_truncated: bool = False
    # what it is judged as: its executable and the script or module it runs (lockd.evidence.
    # workload.group_key), never its pid or its whole command line
    group: Str
    # the variables lockd tracks (lockd.judgement.checks.workload.tracked_env), read from the
    # process's own memory: evidence it could have rewritten
    env: Annotated[dict[Str, Str], Field(max_length=MAX_ENV)] = {}
    env_source: Literal["process-memory"] = "process-memory"
    files: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=MAX_FILES)] = []
    specials: Annotated[list[Special], Field(max_length=MAX_SPECIALS)] = []
    mappings: Annotated[int, Field(ge=0)] = 0  # lines of /proc/PID/maps
    unread: Str | None = None  # what of it could not be read (environ, part of its maps...)


class SkippedProcess(Frozen):
    """A process of the target that is not in the workload, and why (never left out silently)."""

    pid: Annotated[int, Field(ge=1)]
    reason: SkipReason
    message: Str = ""


class Workload(Frozen):
    """The running workload of a target, read on the host before lockd's own probe started."""

    # why the mapped files could not be examined (not root, a kernel without map_files): then no
    # process lists files, and the check says the workload was not examined
    not_examined: Str | None = None
    processes: Annotated[list[WorkloadProcess], Field(max_length=MAX_PROCESSES)] = []
    files: Annotated[list[MappedFile], Field(max_length=MAX_FILES)] = []
    skipped: Annotated[list[SkippedProcess], Field(max_length=MAX_PROCESSES)] = []
    incomplete: Str | None = None  # what else could not be read (more processes or files...)
    hashed: Annotated[int, Field(ge=0)] = 0  # files read now
    reused: Annotated[int, Field(ge=0)] = 0  # digests taken from the hash cache (guards held)
    bytes: Annotated[int, Field(ge=0)] = 0  # read now

    @model_validator(mode="after")
    def _indexes_name_files(self) -> "Workload":
        count = len(self.files)
        for process in self.processes:
            if any(index >= count for index in process.files):
                raise ValueError(f"pid {process.pid} names a file index past {count}")
        return self

    def files_of(self, process: WorkloadProcess) -> list[MappedFile]:
        return [self.files[index] for index in process.files]

    def groups(self) -> dict[str, list[WorkloadProcess]]:
        """The processes by group, groups in order."""
        found: dict[str, list[WorkloadProcess]] = {}
        for process in self.processes:
            found.setdefault(process.group, []).append(process)
        return dict(sorted(found.items()))
