"""A CycloneDX 1.6 SBOM of a recorded environment (cyclonedx-python-lib).

Every installed distribution is a ``library`` component with a ``pkg:pypi`` purl, its version and
the sha256 of the archive it was installed from where lockd knows it: the one pip's installation
report kept (exact). Where it does not, the component has no hash and says why (the property
``lockd:installed-archive``): the archives a lock allows are what may be installed, not what was.
The CUDA runtime, cuDNN, NCCL and cuBLAS that torch reported are components too, each with the
purl of where it came from: the ``nvidia-*`` wheel whose RECORD lists the library the process
loaded (``pkg:pypi``), else ``pkg:generic/nvidia/<name>@<version>``. The image (or the local
environment) is the metadata component, with its digest. The same manifest always gives the
same bytes: the serial number derives from the manifest, the timestamp is when it was recorded.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

from lockd import __version__
from lockd.model.environment import (
    Distribution,
    MappedLibrary,
    PipArchive,
    PipReport,
    ProbeReport,
    TorchInfo,
)
from lockd.model.manifest import LockPin, Manifest

if TYPE_CHECKING:
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component
    from packageurl import PackageURL

    from lockd.trust.statement import Subject

SBOM_NAMESPACE = uuid.UUID("5f0c1d0e-7a9b-4f3e-9a43-6c0c4b1d2e61")
"""uuid5 namespace of lockd's SBOM serial numbers (fixed: the same manifest, the same serial)."""


def _installed_archive(
    dist: Distribution, archive: PipArchive | None, report: PipReport | None, pin: LockPin | None
) -> tuple[list[str], str]:
    """The sha256 of the archive ``dist`` was installed from and how lockd knows it, or no hash
    and why it is unknown."""
    if report is not None and archive is not None and archive.version == dist.version:
        if archive.sha256:
            return [archive.sha256], f"sha256 from pip's installation report ({report.path})"
        why = "pip's installation report names no archive (a directory or a VCS checkout)"
    elif report is not None and archive is not None:
        why = f"pip's installation report names {archive.version}, not {dist.version}"
    elif report is not None and report.error:
        why = f"pip's installation report ({report.path}) could not be read"
    elif report is not None:
        why = f"pip's installation report ({report.path}) does not name it"
    else:
        why = "the target keeps no pip installation report"
    allowed = len(pin.hashes) if pin is not None and pin.version == dist.version else 0
    if allowed:
        why += f"; the lock allows {allowed} archive{'s' if allowed > 1 else ''} for this version"
    return [], f"unknown: {why}"


def _distribution(
    dist: Distribution, archive: PipArchive | None, report: PipReport | None, pin: LockPin | None
) -> Component:
    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.component import Component, ComponentType
    from packageurl import PackageURL

    purl = PackageURL(type="pypi", name=dist.name, version=dist.version)
    hashes, source = _installed_archive(dist, archive, report, pin)
    properties = [Property(name="lockd:location", value=dist.location)]
    if dist.installer:
        properties.append(Property(name="lockd:installer", value=dist.installer))
    if dist.record_sha256:
        properties.append(Property(name="lockd:record-sha256", value=dist.record_sha256))
    properties.append(Property(name="lockd:installed-archive", value=source))
    return Component(
        type=ComponentType.LIBRARY,
        name=dist.name,
        version=dist.version,
        purl=purl,
        bom_ref=purl.to_string(),
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=h) for h in hashes],
        properties=properties,
    )


_CUDA_STACK = (
    # the component, the TorchInfo field, the library (judgement.libraries.identity), how
    (
        "cuda-runtime",
        "cuda",
        "libcudart",
        "the CUDA runtime torch was built for (torch.version.cuda)",
    ),
    ("cudnn", "cudnn", "libcudnn", "cuDNN as loaded (torch.backends.cudnn.version())"),
    ("nccl", "nccl", "libnccl", "NCCL as loaded (torch.cuda.nccl.version())"),
    (
        "cublas",
        "cublas",
        "libcublas",
        "cuBLAS as loaded (cublasGetProperty of the mapped libcublas)",
    ),
)


def _cuda_origin(
    name: str,
    version: str,
    stem: str,
    files: Sequence[MappedLibrary],
    installed: Sequence[Distribution],
) -> tuple[PackageURL, str]:
    """The purl of a CUDA library torch reported and why: the wheel whose RECORD lists the file
    the process loaded; without a record of the loaded files, the installed nvidia-* wheel of the
    same library and version; else a generic NVIDIA purl."""
    from packageurl import PackageURL

    from lockd.judgement.libraries import NVIDIA_WHEELS, is_wheel_of, leads

    generic = PackageURL(type="generic", namespace="nvidia", name=name, version=version)
    if files:  # the loaded files are the lockd:loaded-file properties
        owners = sorted({(f.owner.kind, f.owner.name, f.owner.version) for f in files if f.owner})
        unowned = ["none"] if any(f.owner is None for f in files) else []
        if len(owners) + len(unowned) > 1:
            named = ", ".join([f"{kind} {owner}" for kind, owner, _ in owners] + unowned)
            return generic, f"the loaded copies have different owners: {named}"
        if not owners:
            return generic, "the loaded file belongs to no distribution or package"
        kind, owner, owner_version = owners[0]
        owner_version = owner_version or {d.name: d.version for d in installed}.get(owner)
        if kind != "distribution":
            return generic, f"the loaded file belongs to the {kind} package {owner}, no wheel"
        if owner_version is None:
            return generic, f"the loaded file belongs to {owner}, of no known version"
        purl = PackageURL(type="pypi", name=owner, version=owner_version)
        return purl, "the wheel whose RECORD lists the loaded file"
    wheels = [
        d
        for d in installed
        if is_wheel_of(d.name, NVIDIA_WHEELS[stem]) and leads(version, d.version)
    ]
    if len(wheels) == 1:
        wheel = wheels[0]
        purl = PackageURL(type="pypi", name=wheel.name, version=wheel.version)
        return purl, f"the installed {wheel.name} {wheel.version} (no record of the loaded {stem})"
    return generic, f"no record of the loaded {stem}, no installed wheel of {name} {version}"


def _cuda_components(manifest: Manifest, probe: ProbeReport, torch: TorchInfo) -> list[Component]:
    """The CUDA stack as the torch process reported it (what it loaded, not what is on disk)."""
    from cyclonedx.model import Property
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.model.contact import OrganizationalEntity

    from lockd.judgement.libraries import identity, manifest_records

    mapped = {lib.path: lib for record in manifest_records(manifest) for lib in record.libraries}
    nvidia = OrganizationalEntity(name="NVIDIA")
    components = []
    for name, field, stem, how in _CUDA_STACK:
        version = getattr(torch, field)
        if not version:
            continue
        files = [mapped[path] for path in sorted(mapped) if identity(mapped[path]) == stem]
        purl, origin = _cuda_origin(name, version, stem, files, probe.distributions)
        properties = [Property(name="lockd:source", value=how)]
        if name == "cuda-runtime" and torch.arch_flags:
            properties.append(Property(name="lockd:arch-flags", value=torch.arch_flags))
        properties.append(Property(name="lockd:purl-source", value=origin))
        properties += [
            Property(name="lockd:loaded-file", value=f"{f.path} sha256:{f.sha256}")
            for f in files
            if f.sha256
        ]
        components.append(
            Component(
                type=ComponentType.LIBRARY,
                name=name,
                group="nvidia",
                supplier=nvidia,
                version=version,
                purl=purl,
                bom_ref=f"lockd:cuda:{name}@{version}",
                properties=properties,
            )
        )
    return components


def _subject_component(manifest: Manifest, subjects: Sequence[Subject]) -> Component:
    """The recorded image (its digest), or the local environment (its distribution digest)."""
    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.component import Component, ComponentType
    from packageurl import PackageURL

    observation = manifest.observation
    host = observation.host
    hashes = [HashType(alg=HashAlgorithm.SHA_256, content=s.digest["sha256"]) for s in subjects[:1]]
    if host is None:
        return Component(
            type=ComponentType.APPLICATION,
            name=subjects[0].name if subjects else f"python:{observation.target.ref}",
            bom_ref="lockd:subject",
            hashes=hashes,
            properties=[Property(name="lockd:target", value=f"local:{observation.target.ref}")],
        )
    reference = host.repo_tags[0] if host.repo_tags else observation.target.ref
    repository, _, tag = reference.rpartition(":")
    if not repository or "/" in tag:  # no tag (or a registry port): the whole reference
        repository, tag = reference, ""
    properties = [
        Property(name="lockd:target", value=f"{observation.target.kind}:{observation.target.ref}"),
        Property(name="lockd:image-id", value=host.image_id),
    ]
    properties += [Property(name="lockd:repo-digest", value=d) for d in sorted(host.repo_digests)]
    purl = None
    for repo_digest in sorted(host.repo_digests):
        repo, _, digest = repo_digest.partition("@")
        if digest.startswith("sha256:"):
            qualifiers = {"repository_url": repo} if "/" in repo else {}
            if tag:
                qualifiers["tag"] = tag
            purl = PackageURL(
                type="oci", name=repo.rsplit("/", 1)[-1], version=digest, qualifiers=qualifiers
            )
            break
    return Component(
        type=ComponentType.CONTAINER,
        name=repository,
        version=host.image_id,
        bom_ref="lockd:subject",
        purl=purl,
        hashes=hashes,
        properties=properties,
    )


def build_bom(manifest: Manifest, subjects: Sequence[Subject]) -> Bom:
    """The BOM of a manifest whose Statement had `subjects`."""
    from cyclonedx.model import Property
    from cyclonedx.model.bom import Bom, BomMetaData
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.model.tool import ToolRepository

    from lockd.trust.statement import canonical_json

    observation = manifest.observation
    probe = observation.probe
    lock = manifest.lock
    pins = {p.name: p for p in lock.pins} if lock else {}
    report = probe.pip_report if probe else None
    archives = {a.name: a for a in report.archives} if report else {}
    components = [
        _distribution(d, archives.get(d.name), report, pins.get(d.name))
        for d in (probe.distributions if probe else [])
    ]
    cuda = _cuda_components(manifest, probe, probe.torch) if probe and probe.torch else []
    subject = _subject_component(manifest, subjects)
    properties = [
        Property(name="lockd:recorded-at", value=manifest.recorded_at),
        Property(name="lockd:recorded-by", value=f"lockd {manifest.lockd_version}"),
    ]
    if probe is not None:
        python = probe.python
        properties.append(
            Property(name="lockd:python", value=f"{python.implementation} {python.version}")
        )
        properties.append(
            Property(
                name="lockd:os",
                value=f"{probe.os.pretty_name or probe.os.id} glibc {probe.os.glibc} "
                f"{probe.os.machine}",
            )
        )
    if lock is not None:
        properties.append(Property(name="lockd:lock", value=f"{lock.path} sha256:{lock.sha256}"))
    recorded = dt.datetime.fromisoformat(manifest.recorded_at.replace("Z", "+00:00"))
    fingerprint = hashlib.sha256(canonical_json(manifest.model_dump(mode="json"))).hexdigest()
    lockd = Component(type=ComponentType.APPLICATION, name="lockd", version=__version__)
    bom = Bom(
        serial_number=uuid.uuid5(SBOM_NAMESPACE, fingerprint),
        metadata=BomMetaData(
            component=subject,
            timestamp=recorded,
            tools=ToolRepository(components=[lockd]),
            properties=properties,
        ),
        components=[*components, *cuda],
    )
    bom.register_dependency(subject, [*components, *cuda])
    torch = next((c for c in components if c.name == "torch"), None)
    if torch is not None and cuda:
        bom.register_dependency(torch, cuda)
    return bom


def sbom_json(manifest: Manifest, subjects: Sequence[Subject]) -> str:
    """The CycloneDX 1.6 JSON document, ending with a newline."""
    from cyclonedx.output.json import JsonV1Dot6

    return JsonV1Dot6(build_bom(manifest, subjects)).output_as_string(indent=2) + "\n"


def validation_error(document: str) -> str | None:
    """What makes `document` invalid CycloneDX 1.6 JSON (the library's strict validator), or
    None when it is valid. Needs cyclonedx-python-lib's JSON validation extra (jsonschema)."""
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(document)
    return None if error is None else str(error)
