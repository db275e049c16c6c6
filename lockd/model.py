"""The objects lockd passes around: Observation, Manifest, Report.

The probe's output is untrusted input: ProbeReport validates it strictly (types, sizes,
no unknown keys) before anything else reads it.
"""

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Str = Annotated[str, StringConstraints(max_length=4096)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Hex64 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Digest = Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-f]{64}$")]

_NORMALISE = re.compile(r"[-_.]+")


def normalise_name(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return _NORMALISE.sub("-", name).lower()


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- what the probe prints (from inside the target: untrusted) -------------------------


class PythonInfo(Frozen):
    version: Str
    implementation: Str
    executable: Str
    prefix: Str
    base_prefix: Str
    path: Annotated[list[Str], Field(max_length=256)]
    platform: Str


class Distribution(Frozen):
    name: Name  # PEP 503 normalised
    version: Name
    installer: Str | None = None
    location: Str
    record_sha256: Hex64 | None = None  # None: the distribution has no RECORD
    files: Annotated[int, Field(ge=0)]


class OsInfo(Frozen):
    id: Str | None = None
    version_id: Str | None = None
    pretty_name: Str | None = None
    glibc: Str | None = None
    machine: Str


class TorchInfo(Frozen):
    version: Str
    git_version: Str | None = None
    cuda: Str | None = None
    cudnn: Str | None = None
    nccl: Str | None = None
    arch_flags: Str | None = None
    error: Str | None = None  # torch is installed but failed to import: the exception
    cublas: Str | None = None  # cuBLAS as loaded (cublasGetProperty of the mapped libcublas)


class DriverInfo(Frozen):
    """The NVIDIA driver the target sees (NVML, else /proc/driver/nvidia/version)."""

    version: Str  # the driver release, e.g. 580.159.04
    cuda: Str | None = None  # the newest CUDA the driver supports (NVML), e.g. 13.0
    source: Literal["nvml", "proc"]


class GpuInfo(Frozen):
    """One GPU visible in the target (through torch, else NVML: then no SM count)."""

    index: Annotated[int, Field(ge=0, le=1024)]
    name: Str
    compute_capability: Annotated[str, StringConstraints(pattern=r"^\d{1,2}\.\d{1,2}$")]
    sm_count: Annotated[int, Field(ge=0)] | None = None
    memory_bytes: Annotated[int, Field(ge=0)] | None = None
    uuid_sha256: Hex64 | None = None  # sha256 of the UUID (never the UUID itself)


class PipArchive(Frozen):
    """One distribution pip installed, as its installation report (`pip install --report`)
    records it: the archive's sha256, or None when it was not installed from an archive."""

    name: Name  # PEP 503 normalised
    version: Name
    sha256: Hex64 | None = None


class PipReport(Frozen):
    path: Str
    archives: Annotated[list[PipArchive], Field(max_length=20000)] = []
    error: Str | None = None  # the report exists but could not be read


# What the process loaded and the CUDA code of the installed extensions (lockd/fatbin.py, run
# inside the target after `import torch`; docs/libraries.md).

LibraryRole = Literal["cuda", "driver", "extension", "library-path"]


class LibraryOwner(Frozen):
    """Who installed a library file: a distribution's RECORD lists it, or dpkg's or conda's
    file list of a package."""

    kind: Literal["distribution", "dpkg", "conda"]
    name: Name
    version: Str | None = None
    path: Str | None = None  # the path as the RECORD lists it (distribution)
    record_sha256: Hex64 | None = None  # the file's sha256 as the RECORD lists it


class MappedLibrary(Frozen):
    """One shared object the process mapped (/proc/self/maps), symbolic links resolved."""

    path: Str
    role: LibraryRole
    size: Annotated[int, Field(ge=0)] | None = None
    sha256: Hex64 | None = None  # None: deleted or unreadable (see error)
    soname: Str | None = None
    version: Str | None = None
    version_source: Literal["runtime", "file"] | None = None  # the library's getter, its name
    owner: LibraryOwner | None = None
    shadows: Annotated[list[Str], Field(max_length=16)] = []  # wheel files it was loaded over
    deleted: bool = False  # the file was deleted or replaced after it was mapped
    error: Str | None = None


class LoadedLibraries(Frozen):
    scope: Literal["probe", "suite"]  # after `import torch` (probe), after the GPU suite
    libraries: Annotated[list[MappedLibrary], Field(max_length=4096)] = []
    system: Annotated[int, Field(ge=0)] = 0  # other mapped objects (libc...), not recorded
    bytes: Annotated[int, Field(ge=0)] = 0  # hashed
    threads: Annotated[int, Field(ge=0)] = 0
    seconds: Annotated[float, Field(ge=0)] = 0.0
    env_versions: Annotated[dict[Name, Str], Field(max_length=64)] = {}  # NCCL_VERSION...
    error: Str | None = None  # the record could not be made: why


class FatbinGroup(Frozen):
    """Containers (translation units) of one fat binary section that carry the same targets."""

    sass: Annotated[list[Str], Field(max_length=64)] = []  # sm_80, sm_90a
    ptx: Annotated[list[Str], Field(max_length=64)] = []  # compute_50
    containers: Annotated[int, Field(ge=0)]


class CudaBinary(Frozen):
    """The CUDA code one shared object carries (its .nv_fatbin / __nv_relfatbin sections)."""

    path: Str
    name: Str  # as its distribution's RECORD lists it, else the file name
    distribution: Name | None = None
    size: Annotated[int, Field(ge=0)]
    soname: Str | None = None
    sections: Annotated[list[Str], Field(max_length=8)] = []
    containers: Annotated[int, Field(ge=0)] = 0
    entries: Annotated[int, Field(ge=0)] = 0
    compressed: Annotated[int, Field(ge=0)] = 0
    other: Annotated[int, Field(ge=0)] = 0  # entries neither PTX nor cubin
    skipped: Annotated[int, Field(ge=0)] = 0  # bytes of padding between containers
    relocatable: Annotated[int, Field(ge=0)] = 0  # containers in __nv_relfatbin (-rdc code)
    sass: Annotated[list[Str], Field(max_length=64)] = []
    ptx: Annotated[list[Str], Field(max_length=64)] = []
    ptx_isa: Annotated[list[Str], Field(max_length=64)] = []
    groups: Annotated[list[FatbinGroup], Field(max_length=256)] = []
    error: Str | None = None  # the section is inconsistent past some point


class ExtensionArchs(Frozen):
    files: Annotated[int, Field(ge=0)] = 0  # shared objects read
    binaries: Annotated[list[CudaBinary], Field(max_length=4096)] = []
    errors: Annotated[int, Field(ge=0)] = 0  # files that could not be read as ELF
    seconds: Annotated[float, Field(ge=0)] = 0.0


class ProbeReport(Frozen):
    probe_version: Literal[1]
    python: PythonInfo
    distributions: Annotated[list[Distribution], Field(max_length=20000)]
    os: OsInfo
    env: Annotated[dict[Name, Str], Field(max_length=512)]
    torch: TorchInfo | None = None
    pip_report: PipReport | None = None  # pip's installation report kept in the image
    driver: DriverInfo | None = None
    gpus: Annotated[list[GpuInfo], Field(max_length=256)] = []
    libraries: LoadedLibraries | None = None  # what the process mapped after `import torch`
    extensions: ExtensionArchs | None = None  # CUDA architectures of the installed .so files


# --- what the GPU validation suite prints (from inside the target: untrusted) ---------------


class GpuSuiteSettings(Frozen):
    """The deterministic settings the suite ran under, as torch read them back."""

    deterministic_algorithms: bool
    cudnn_deterministic: bool
    cudnn_benchmark: bool
    cublas_workspace_config: Str
    matmul_allow_tf32: bool
    cudnn_allow_tf32: bool
    float32_matmul_precision: Str
    fp16_reduced_precision_reduction: bool  # torch.backends.cuda.matmul.allow_fp16_reduced…
    bf16_reduced_precision_reduction: bool
    seed: int
    threads: int | None = None  # CPU runs: intra-op threads (1)


class GpuSuiteKey(Frozen):
    """What must match for two suite runs to be compared bit for bit."""

    device: Literal["cuda", "cpu"]
    torch: Str
    torch_git: Str | None = None
    cuda: Str | None = None
    cudnn: Str | None = None
    cublas: Str | None = None
    compute_capability: Str | None = None
    sm_count: int | None = None
    cpu_capability: Str | None = None  # CPU runs: the kernels' instruction set (AVX2…)
    machine: Str
    settings: GpuSuiteSettings


class GpuTestStats(Frozen):
    numel: Annotated[int, Field(ge=0)]
    nonfinite: Annotated[int, Field(ge=0)]
    sum: float
    mean: float
    l1: float
    l2: float
    absmax: float
    samples: Annotated[list[float | None], Field(max_length=16)]


GpuTestStatus = Literal["ok", "skipped", "n/a", "error"]


class GpuTestResult(Frozen):
    name: Name
    status: GpuTestStatus
    reason: Str | None = None  # why it did not run, or the error
    dtype: Str | None = None
    shape: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=8)] | None = None
    sha256: Hex64 | None = None  # of the output's dtype, shape and bits
    stats: GpuTestStats | None = None
    seconds: Annotated[float, Field(ge=0)]


class GpuSuiteTiming(Frozen):
    import_torch: float
    suite: float  # the tests without torch.compile and the all-reduce
    compile: float | None = None
    allreduce: float | None = None
    total: float


class GpuSuiteResult(Frozen):
    """One run of the GPU validation suite (lockd/probe/gpu.py) on one GPU model, or the CPU."""

    suite_version: Literal[1]
    device: Literal["cuda", "cpu"]
    gpu_name: Str | None = None
    gpu_uuid_sha256: Hex64 | None = None
    gpu_count: Annotated[int, Field(ge=0)]
    key: GpuSuiteKey
    overrides: Annotated[list[Name], Field(max_length=16)] = []
    tests: Annotated[list[GpuTestResult], Field(max_length=64)]
    signature: Hex64
    timing: GpuSuiteTiming
    recorded_at: Str | None = None  # set by lockd on the host when it records the result
    libraries: LoadedLibraries | None = None  # what the suite's process mapped after the tests


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
    (/proc/PID/mountinfo): lockd.kernel. ``declared``: why it is expected (``daemon``,
    ``runtime``, ``masked``, ``gpu``...), None for a mount nobody asked the daemon for."""

    mount_point: Str
    fstype: Str
    source: Str
    root: Str  # the directory of the mounted filesystem that shows at mount_point
    declared: Str | None = None


class ForeignRoot(Frozen):
    """A process of the container whose root directory is not the container's (chroot,
    pivot_root): lockd.kernel."""

    pid: Annotated[int, Field(ge=0)]
    command: Str
    root: Str
    why: Str


class KernelView(Frozen):
    """The kernel's view of the container's processes, read on the host (lockd.kernel)."""

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
    # the volatile patterns the walk did not descend into (lockd.targets.docker): changes
    # there are not in ``changes``
    changes_skipped: Annotated[list[Str], Field(max_length=256)] = []
    # the container asked for GPUs (--gpus, a CDI device, the nvidia runtime): the NVIDIA
    # container toolkit's injections are expected (lockd.filechanges.runtime_change)
    gpus_requested: bool = False
    mounts: list[Mount] = []
    config_env: dict[Str, Str] = {}
    # the kernel's view (lockd.kernel): None where the host could not read it, or lockd is older
    kernel: KernelView | None = None
    privileged: bool = False  # HostConfig.Privileged
    cap_add: Annotated[list[Str], Field(max_length=64)] = []  # HostConfig.CapAdd


TargetKind = Literal["local", "container", "image"]


class TargetInfo(Frozen):
    kind: TargetKind
    ref: Str


IntegritySource = Literal["overlay", "layers", "api", "local"]


class Integrity(Frozen):
    """What ``--deep`` found: every file the target's RECORDs list, hashed again where lockd
    read it (lockd.integrity). ``findings``: modified, missing, unlisted, unstable, unreadable,
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
    # the integrity cache's result (lockd.integritycache): when it was found
    reused_from: Str | None = None


class FamilyImport(Frozen):
    """One PyTorch-family distribution imported inside the target, a compiled op touched."""

    name: Name  # the distribution (PEP 503 normalised)
    version: Name
    module: Str  # what was imported
    op: Str | None = None  # the compiled op touched, e.g. torchvision.ops.nms
    ok: bool
    error: Str | None = None  # the exception, its causes and warnings, as the target raised it


class FamilyImports(Frozen):
    """The import smoke test (``--deep``): lockd/probe/environment.py --family-imports."""

    python: Str  # the interpreter it ran with
    results: Annotated[list[FamilyImport], Field(max_length=64)] = []
    error: Str | None = None  # the smoke test itself failed (crashed, timed out): why


class Observation(Frozen):
    """Everything lockd saw in one target."""

    target: TargetInfo
    host: HostEvidence | None = None
    probe: ProbeReport | None = None
    probe_error: Str | None = None  # why there is no probe report (no Python in the target…)
    gpu_suite: GpuSuiteResult | None = None  # this run of the GPU validation suite (--gpu)
    integrity: Integrity | None = None  # installed files against their RECORDs (--deep)
    family_imports: FamilyImports | None = None  # the PyTorch family imported (--deep)
    # the probe report came from the probe cache (lockd.probecache): when it was observed
    probe_reused_from: Str | None = None


# --- the signed record -------------------------------------------------------------------

PREDICATE_TYPE = "https://lockd.dev/manifest/v2"
"""v2: FileChange carries content (type, mode, owner, sha256, link target)."""
PREDICATE_TYPES = (PREDICATE_TYPE, "https://lockd.dev/manifest/v1")
"""The predicate types lockd reads: v1 manifests hold changes by name only (compare says so)."""


class LockPin(Frozen):
    name: Name  # PEP 503 normalised
    version: Name
    hashes: Annotated[list[Hex64], Field(max_length=4096)] = []  # allowed archive sha256s


class LockInfo(Frozen):
    """A lock (pinned, hashed requirements.txt) as it applies to the recorded target: pins whose
    environment markers do not hold for the target are left out."""

    path: Str  # the file's name
    sha256: Hex64  # of the whole file
    python: Str | None = None  # the target the lock was compiled for (lockd's header), if known
    platform: Str | None = None
    pins: Annotated[list[LockPin], Field(max_length=20000)] = []


class Manifest(Frozen):
    """The predicate of lockd's in-toto Statement: an Observation plus metadata."""

    lockd_version: Str
    recorded_at: Str  # RFC 3339, UTC
    observation: Observation
    lock: LockInfo | None = None  # the lock the environment was recorded against (--lock)
    # GPU validation suite results, one per GPU model (comparison key): record --gpu [--append]
    gpu_suites: Annotated[list[GpuSuiteResult], Field(max_length=64)] = []


# --- the result of a verification --------------------------------------------------------

Status = Literal["pass", "fail", "warn", "skip"]
Evidence = Literal["host", "inside", "host+inside", "signature"]


class Finding(Frozen):
    kind: Str
    name: Str | None = None
    path: Str | None = None
    expected: Str | None = None
    observed: Str | None = None
    message: Str | None = None


class Check(Frozen):
    id: Str
    status: Status
    evidence: Evidence
    message: Str = ""
    expected: Str | None = None
    observed: Str | None = None
    findings: list[Finding] = []


class ReportManifest(Frozen):
    path: Str | None = None
    subject: list[dict[str, object]] = []
    keyid: Str | None = None


class Report(Frozen):
    verified: bool
    target: dict[str, object]
    manifest: ReportManifest
    checks: list[Check]
