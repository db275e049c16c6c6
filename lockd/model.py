"""The objects lockd passes around: Observation, Manifest, Report.

The probe's output is untrusted input: ProbeReport validates it strictly (types, sizes,
no unknown keys) before anything else reads it.
"""

from __future__ import annotations

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


class ProbeReport(Frozen):
    probe_version: Literal[1]
    python: PythonInfo
    distributions: Annotated[list[Distribution], Field(max_length=20000)]
    os: OsInfo
    env: Annotated[dict[Name, Str], Field(max_length=512)]
    torch: TorchInfo | None = None
    pip_report: PipReport | None = None  # pip's installation report kept in the image


# --- what the host says (trusted) --------------------------------------------------------

ChangeKind = Literal["added", "changed", "deleted"]


class FileChange(Frozen):
    path: Str
    kind: ChangeKind


class Mount(Frozen):
    destination: Str
    source: Str
    type: Str
    rw: bool


class HostEvidence(Frozen):
    """What the Docker daemon and the host filesystem say about a container."""

    image_id: Digest
    repo_digests: list[Str] = []
    repo_tags: list[Str] = []
    container_id: Str | None = None
    changes: list[FileChange] = []
    changes_source: Literal["overlay", "api", "none"] = "none"
    mounts: list[Mount] = []
    config_env: dict[Str, Str] = {}


TargetKind = Literal["local", "container", "image"]


class TargetInfo(Frozen):
    kind: TargetKind
    ref: Str


class Observation(Frozen):
    """Everything lockd saw in one target."""

    target: TargetInfo
    host: HostEvidence | None = None
    probe: ProbeReport | None = None
    probe_error: Str | None = None  # why there is no probe report (no Python in the target…)


# --- the signed record -------------------------------------------------------------------

PREDICATE_TYPE = "https://lockd.dev/manifest/v1"


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
