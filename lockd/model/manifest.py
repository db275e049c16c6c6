"""Everything lockd saw in one target (Observation), and the signed record of it (Manifest)."""

from typing import Annotated

from pydantic import Field

from lockd.model.base import Frozen, Hex64, Name, Str
from lockd.model.environment import FamilyImports, ProbeReport
from lockd.model.gpusuite import GpuSuiteResult
from lockd.model.host import HostEvidence, Integrity, TargetInfo
from lockd.model.workload import Workload


class Observation(Frozen):
    """Everything lockd saw in one target."""

    target: TargetInfo
    host: HostEvidence | None = None
    probe: ProbeReport | None = None
    probe_error: Str | None = None  # why there is no probe report (no Python in the target…)
    gpu_suite: GpuSuiteResult | None = None  # this run of the GPU validation suite (--gpu)
    integrity: Integrity | None = None  # installed files against their RECORDs (--deep)
    family_imports: FamilyImports | None = None  # the PyTorch family imported (--deep)
    # the probe report came from the probe cache (lockd.evidence.cache.probe): when it was observed
    probe_reused_from: Str | None = None
    # the running workload, read on the host before the probe started (lockd.evidence.workload;
    # #17): None where lockd did not read one (an image, local, or a lockd that did not)
    workload: Workload | None = None


# --- the signed record -------------------------------------------------------------------

PREDICATE_TYPE = "https://lockd.dev/manifest/v3"
"""v3: the Observation carries the running workload (``workload``, #17); v2: FileChange carries
content (type, mode, owner, sha256, link target)."""
PREDICATE_SCHEMA = "schemas/predicate-v3.json"
"""The JSON Schema of the predicate of PREDICATE_TYPE, a file of the package (written from these
models by scripts/predicate-schema; a new predicate type, a new file)."""
PREDICATE_TYPES = (
    PREDICATE_TYPE,
    "https://lockd.dev/manifest/v2",
    "https://lockd.dev/manifest/v1",
)
"""The predicate types lockd reads: v2 and v1 manifests hold no workload (the ``workload``
check judges only what needs none, and says so), v1 manifests hold changes by name only
(compare says so). A lockd before v3 refuses a v3 manifest by its type, rather than by the
key it does not know."""


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
