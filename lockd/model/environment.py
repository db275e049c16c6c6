"""What the probe prints from inside a target (untrusted): validated strictly (types, sizes, no
unknown keys) before anything else reads it."""

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from lockd.model.base import Frozen, Hex64, Name, Str

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


# What the process loaded and the CUDA code of the installed extensions (lockd/probe/fatbin.py, run
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
