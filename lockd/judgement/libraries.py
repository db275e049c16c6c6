"""What a process really loaded, on the host side: the records the probe and the GPU suite make
inside the target (lockd/probe/fatbin.py), compared with a manifest and judged on their own.

Pure, except ``read_binary`` (one file) and ``embed_reader`` (lockd's own source).

Findings on one observation (``library_findings``), whatever the manifest says:

* ``shadowed``: a library no distribution installed was loaded in place of a wheel's file of the
  same name (LD_LIBRARY_PATH, LD_PRELOAD or a system copy came first);
* ``unowned``: a CUDA library or an extension that belongs to no distribution, dpkg or conda
  package;
* ``duplicate``: two files of one library are mapped (two cuDNNs, two OpenMP runtimes);
* ``modified``: a mapped file's sha256 is not the one its distribution's RECORD lists;
* ``deleted``: a mapped file was deleted or replaced on disk after it was loaded;
* ``env-version``: a library reports another version than its ``*_VERSION`` variable says
  (NCCL_VERSION=2.15.5 while NCCL 2.19.3 is loaded: pytorch issue 122571);
* ``pin-version``: a library reports another version than the pinned distribution of it (the
  manifest's lock, else the installed ``nvidia-*`` wheel).

Against a manifest (``compare_records``): ``added``, ``missing``, ``moved`` (the same file at
another path) and ``changed`` (the same path, another sha256: "a library file changed under the
same version"). Driver libraries (libcuda, libnvidia-*) come from the host's driver and are
judged by the ``driver`` check, not here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lockd.errors import InputError
from lockd.model.environment import CudaBinary, LoadedLibraries, MappedLibrary
from lockd.model.report import Finding
from lockd.probe import embed_reader, reader_source  # re-exported: they live there

if TYPE_CHECKING:
    from lockd.model.environment import ProbeReport
    from lockd.model.gpusuite import GpuSuiteResult
    from lockd.model.manifest import LockInfo, Manifest, Observation

__all__ = [
    "ENV_LIBRARIES",
    "NVIDIA_WHEELS",
    "compare_records",
    "compare_with_manifest",
    "embed_reader",
    "finding_key",
    "identity",
    "intrinsic_findings",
    "is_wheel_of",
    "leads",
    "library_findings",
    "manifest_differences",
    "manifest_records",
    "read_binary",
    "reader_source",
    "records",
]


ENV_LIBRARIES = {
    "CUDNN_VERSION": "libcudnn",
    "NCCL_VERSION": "libnccl",
    "CUBLAS_VERSION": "libcublas",
    "CUDA_VERSION": "libcudart",
}
"""``*_VERSION`` variables and the library whose reported version they claim to give."""

NVIDIA_WHEELS = {
    "libcudnn": "nvidia-cudnn",
    "libnccl": "nvidia-nccl",
    "libcublas": "nvidia-cublas",
    "libcublasLt": "nvidia-cublas",
    "libcudart": "nvidia-cuda-runtime",
}
"""Libraries that report their version, and the stem of the nvidia-* wheel that ships them."""


def is_wheel_of(name: str, stem: str) -> bool:
    """Whether distribution ``name`` is the nvidia-* wheel of ``stem`` (NVIDIA_WHEELS' values):
    ``nvidia-cudnn-cu12`` for CUDA 12, ``nvidia-cublas`` for CUDA 13..."""
    return name == stem or name.startswith(stem + "-cu")


# --- the reader inside targets ----------------------------------------------------------------


def read_binary(path: Path) -> CudaBinary | None:
    """The CUDA code in one shared object on this machine, or None when it carries none.

    Raises:
        InputError: the file cannot be read, or is not an ELF object.
    """
    from lockd.probe import fatbin

    try:
        found = fatbin.scan_binary(str(path))
    except fatbin.NotElfError as e:
        raise InputError(f"{path}: {e}; give a shared object (.so)") from e
    except OSError as e:
        raise InputError(f"{path}: cannot read it: {e.strerror or e}") from e
    if found is None:
        return None
    return CudaBinary.model_validate({**found, "name": path.name, "distribution": None})


# --- one observation on its own ---------------------------------------------------------------


def records(observation: Observation) -> list[LoadedLibraries]:
    """The observation's mapped-library records: the probe's, then the GPU suite's."""
    found = []
    probe = observation.probe
    if probe is not None and probe.libraries is not None:
        found.append(probe.libraries)
    suite = observation.gpu_suite
    if suite is not None and suite.libraries is not None:
        found.append(suite.libraries)
    return found


def _suites(manifest: Manifest) -> list[GpuSuiteResult]:
    found = list(manifest.gpu_suites)
    if manifest.observation.gpu_suite is not None:
        found.append(manifest.observation.gpu_suite)
    return [s for s in found if s.libraries is not None]


def manifest_records(
    manifest: Manifest, suite: GpuSuiteResult | None = None
) -> list[LoadedLibraries]:
    """The manifest's records: the probe's and, for a GPU suite run, the record of the recorded
    run of the same comparison key (else the last of the same device); without ``suite``, the
    last recorded suite's."""
    found = []
    probe = manifest.observation.probe
    if probe is not None and probe.libraries is not None:
        found.append(probe.libraries)
    recorded = _suites(manifest)
    if suite is not None:
        same_key = [r for r in recorded if r.key == suite.key]
        same_device = [r for r in recorded if r.device == suite.device]
        recorded = same_key or same_device
    if recorded and recorded[-1].libraries is not None:
        found.append(recorded[-1].libraries)
    return found


_HASHED_NAME = re.compile(r"-[0-9a-f]{8}(?=\.so)")


def identity(library: MappedLibrary) -> str:
    """The library a file is a copy of, whatever its version or vendoring: libcudnn.so.9.1.0,
    libcudnn.so.8 -> libcudnn; libgomp-a34b3233.so.1 (auditwheel's rename) -> libgomp."""
    name = library.soname or os.path.basename(library.path)
    if not name.startswith("lib"):  # a Python extension module: _C.cpython-311-...so -> _C
        return name.split(".", 1)[0]
    name = _HASHED_NAME.sub("", name)
    return name.split(".so", 1)[0]


def _label(library: MappedLibrary) -> str:
    owner = library.owner
    if owner is None:
        return "no distribution or package"
    return f"{owner.kind} {owner.name} {owner.version or ''}".rstrip()


def leads(reported: str, version: str) -> bool:
    """Whether a reported version (9.1.0, 12.4) is the start of another (9.1.0.70, 12.4.1; a
    package revision or local label is ignored: 2.28.3-1, 2.6.0+cu124)."""
    head = re.split(r"[-+~]", reported, maxsplit=1)[0].split(".")
    tail = re.split(r"[-+~]", version, maxsplit=1)[0].split(".")
    return tail[: len(head)] == head


def _merged(found: Sequence[LoadedLibraries]) -> list[MappedLibrary]:
    by_path: dict[str, MappedLibrary] = {}
    for record in found:
        for library in record.libraries:
            by_path.setdefault(library.path, library)
    return [by_path[path] for path in sorted(by_path)]


def _ownership(library: MappedLibrary) -> list[Finding]:
    if library.owner is not None or library.role == "driver":
        return []
    if library.shadows and os.path.basename(library.path).startswith("lib"):
        return [
            Finding(
                kind="shadowed",
                name=identity(library),
                path=library.path,
                expected=", ".join(library.shadows),
                observed=library.path,
                message="loaded from a file no distribution or package installed, in place of "
                "the installed distribution's file of the same name (LD_LIBRARY_PATH, "
                "LD_PRELOAD or a copy on the system library path came first)",
            )
        ]
    return [
        Finding(
            kind="unowned",
            name=identity(library),
            path=library.path,
            observed=library.version,
            message=f"a mapped {library.role} library that no distribution's RECORD, dpkg "
            "or conda package lists",
        )
    ]


def _file_findings(library: MappedLibrary) -> list[Finding]:
    findings = _ownership(library)
    owner = library.owner
    if (
        owner is not None
        and owner.record_sha256 is not None
        and library.sha256 is not None
        and owner.record_sha256 != library.sha256
    ):
        findings.append(
            Finding(
                kind="modified",
                name=identity(library),
                path=library.path,
                expected=f"sha256:{owner.record_sha256}",
                observed=f"sha256:{library.sha256}",
                message=f"the mapped file is not the one {owner.name} {owner.version} installed "
                "(its RECORD lists another sha256)",
            )
        )
    if library.deleted:
        findings.append(
            Finding(
                kind="deleted",
                name=identity(library),
                path=library.path,
                message="the file was deleted or replaced on disk after the process loaded it: "
                "the process runs code that is no longer there",
            )
        )
    return findings


def _duplicates(libraries: Sequence[MappedLibrary]) -> list[Finding]:
    copies: dict[str, list[MappedLibrary]] = {}
    for library in libraries:  # shared libraries: modules of one name in two packages differ
        if os.path.basename(library.path).startswith("lib"):
            copies.setdefault(identity(library), []).append(library)
    findings = []
    for name, mapped in sorted(copies.items()):
        if len(mapped) < 2:
            continue
        files = sorted(mapped, key=lambda f: f.path)  # map order varies with load addresses
        described = "; ".join(
            f"{f.path} ({f.version or 'version unknown'}, {_label(f)})" for f in files
        )
        findings.append(
            Finding(
                kind="duplicate",
                name=name,
                observed=", ".join(f.path for f in files),
                message=f"{len(files)} files of {name} are mapped into one process: {described}",
            )
        )
    return findings


def _reported(libraries: Sequence[MappedLibrary], stem: str) -> list[MappedLibrary]:
    return [
        lib
        for lib in libraries
        if lib.version_source == "runtime" and identity(lib) == stem and lib.version
    ]


def _env_findings(libraries: Sequence[MappedLibrary], variables: dict[str, str]) -> list[Finding]:
    findings = []
    for variable, stem in ENV_LIBRARIES.items():
        claimed = variables.get(variable)
        if not claimed:
            continue
        for library in _reported(libraries, stem):
            assert library.version is not None
            reported = library.version
            if stem == "libcudart":  # cudart reports major.minor; CUDA_VERSION=12.4.1
                agree = leads(reported, claimed)
            else:
                agree = leads(reported, claimed) or leads(claimed, reported)
            if not agree:
                findings.append(
                    Finding(
                        kind="env-version",
                        name=variable,
                        path=library.path,
                        expected=claimed,
                        observed=reported,
                        message=f"{variable}={claimed}, but the process loaded {stem} "
                        f"{reported} ({library.path}): the variable describes another copy",
                    )
                )
    return findings


def _pins(probe: ProbeReport, lock: LockInfo | None) -> dict[str, tuple[str, str, str]]:
    """nvidia-* stem -> (distribution, version, where the pin comes from)."""
    pins: dict[str, tuple[str, str, str]] = {}
    sources: list[tuple[str, str, str]] = [
        (d.name, d.version, "installed") for d in probe.distributions
    ]
    if lock is not None:
        sources += [(p.name, p.version, f"pinned in {lock.path}") for p in lock.pins]
    for name, version, where in sources:  # the lock's pins, listed last, win
        for stem in set(NVIDIA_WHEELS.values()):
            if is_wheel_of(name, stem):
                pins[stem] = (name, version, where)
    return pins


def _pin_findings(
    libraries: Sequence[MappedLibrary], probe: ProbeReport, lock: LockInfo | None
) -> list[Finding]:
    pins = _pins(probe, lock)
    findings = []
    for library in libraries:
        if library.version_source != "runtime" or library.version is None:
            continue
        stem = NVIDIA_WHEELS.get(identity(library))
        if stem is None or stem not in pins:
            continue
        name, version, where = pins[stem]
        if leads(library.version, version):
            continue
        findings.append(
            Finding(
                kind="pin-version",
                name=identity(library),
                path=library.path,
                expected=f"{name} {version}",
                observed=library.version,
                message=f"the process loaded {identity(library)} {library.version} from "
                f"{library.path} ({_label(library)}), not {name} {version} ({where})",
            )
        )
    return findings


def library_findings(observation: Observation, lock: LockInfo | None = None) -> list[Finding]:
    """Every finding on what the target's processes loaded (see the module's docstring)."""
    if observation.probe is None:
        return []
    return intrinsic_findings(observation.probe, records(observation), lock)


def intrinsic_findings(
    probe: ProbeReport, found: Sequence[LoadedLibraries], lock: LockInfo | None = None
) -> list[Finding]:
    """The findings of ``library_findings`` on given records (the manifest's own, say)."""
    if not found:
        return []
    libraries = _merged(found)
    findings: list[Finding] = []
    for library in libraries:
        findings += _file_findings(library)
    findings += _duplicates([lib for lib in libraries if not lib.deleted])
    variables: dict[str, str] = {}
    for record in found:
        variables.update(record.env_versions)
    findings += _env_findings(libraries, variables)
    findings += _pin_findings(libraries, probe, lock)
    return findings


# --- against the manifest -----------------------------------------------------------------------


def _comparable(record: LoadedLibraries) -> dict[str, MappedLibrary]:
    return {lib.path: lib for lib in record.libraries if lib.role != "driver"}


def compare_records(expected: LoadedLibraries, observed: LoadedLibraries) -> list[Finding]:
    """The mapped set against the recorded one: added, missing, moved, changed."""
    want, have = _comparable(expected), _comparable(observed)
    findings: list[Finding] = []
    gone = {p: lib for p, lib in want.items() if p not in have}
    new = {p: lib for p, lib in have.items() if p not in want}
    by_digest = {lib.sha256: p for p, lib in new.items() if lib.sha256}
    for path, library in sorted(gone.items()):
        moved_to = by_digest.get(library.sha256) if library.sha256 else None
        if moved_to is not None:
            new.pop(moved_to)
            findings.append(
                Finding(
                    kind="moved",
                    name=identity(library),
                    path=moved_to,
                    expected=path,
                    observed=moved_to,
                    message="the same file (sha256) is mapped from another path",
                )
            )
            continue
        findings.append(
            Finding(
                kind="missing",
                name=identity(library),
                path=path,
                expected=library.version,
                message=f"recorded as mapped ({_label(library)}), not mapped here",
            )
        )
    for path, library in sorted(new.items()):
        findings.append(
            Finding(
                kind="added",
                name=identity(library),
                path=path,
                observed=library.version,
                message=f"mapped here ({_label(library)}), not in the manifest",
            )
        )
    for path in sorted(want.keys() & have.keys()):
        findings += _changed(want[path], have[path])
    return findings


def _changed(want: MappedLibrary, have: MappedLibrary) -> list[Finding]:
    if want.sha256 == have.sha256 or want.sha256 is None or have.sha256 is None:
        return []
    same_version = want.version == have.version and _label(want) == _label(have)
    version = have.version or "unknown"
    if same_version:
        note = f"a different file under the same version ({version}, {_label(have)})"
    else:
        note = f"version {want.version or '-'} -> {have.version or '-'}; {_label(have)}"
    return [
        Finding(
            kind="changed",
            name=identity(have),
            path=have.path,
            expected=f"sha256:{want.sha256}",
            observed=f"sha256:{have.sha256}",
            message=note,
        )
    ]


def compare_with_manifest(manifest: Manifest, observed: Observation) -> list[Finding]:
    """Each record of ``observed`` against the manifest's record of the same scope (for the GPU
    suite's, the recorded run of the same comparison key)."""
    want = {r.scope: r for r in manifest_records(manifest, observed.gpu_suite)}
    findings: list[Finding] = []
    seen: set[tuple[str, str | None]] = set()
    for record in records(observed):
        recorded = want.get(record.scope)
        if recorded is None:
            continue
        for finding in compare_records(recorded, record):
            key = (finding.kind, finding.path)
            if key not in seen:
                seen.add(key)
                findings.append(finding)
    return findings


def manifest_differences(a: Manifest, b: Manifest) -> list[Finding]:
    """What ``lockd diff A B`` should say about the libraries: B's records against A's (added,
    missing, moved, and ``changed``, a library file that changed under the same version)."""
    mine = {r.scope: r for r in manifest_records(a)}
    findings: list[Finding] = []
    for record in manifest_records(b):
        if record.scope in mine:
            findings += compare_records(mine[record.scope], record)
    return findings


def finding_key(finding: Finding) -> tuple[str | None, ...]:
    return (finding.kind, finding.name, finding.path, finding.expected, finding.observed)


def summary(record: LoadedLibraries) -> str:
    """One line: how many libraries, of which roles, how much was hashed in what time."""
    roles: dict[str, int] = {}
    for library in record.libraries:
        roles[library.role] = roles.get(library.role, 0) + 1
    parts = ", ".join(f"{n} {role}" for role, n in sorted(roles.items()))
    return (
        f"{len(record.libraries)} libraries mapped ({parts or 'none'}) after "
        f"{'import torch' if record.scope == 'probe' else 'the GPU suite'}; "
        f"{record.bytes / 1e6:.0f} MB hashed in {record.seconds:.2f} s ({record.threads} threads)"
    )


def short_targets(targets: Iterable[str]) -> str:
    """sm_50 sm_60 ... as one string, or '-'."""
    listed = " ".join(targets)
    return listed or "-"
