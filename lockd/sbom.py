"""A CycloneDX 1.6 SBOM of a recorded environment (cyclonedx-python-lib).

Every installed distribution is a ``library`` component with a ``pkg:pypi`` purl, its version and
the archive hashes lockd knows: the sha256 pip's installation report kept for the archive it
installed (exact), else the sha256s the manifest's lock allows for that version (one of them was
installed). The CUDA runtime, cuDNN and NCCL that torch reported are components too, and the
image (or the local environment) is the metadata component, with its digest. The same manifest
always gives the same bytes: the serial number derives from the manifest, the timestamp is when
it was recorded.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

from lockd import __version__
from lockd.model.environment import Distribution, PipArchive, TorchInfo
from lockd.model.manifest import LockPin, Manifest

if TYPE_CHECKING:
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component

    from lockd.trust.statement import Subject

SBOM_NAMESPACE = uuid.UUID("5f0c1d0e-7a9b-4f3e-9a43-6c0c4b1d2e61")
"""uuid5 namespace of lockd's SBOM serial numbers (fixed: the same manifest, the same serial)."""


def _hashes(dist: Distribution, archive: PipArchive | None, pin: LockPin | None) -> list[str]:
    if archive is not None and archive.sha256 and archive.version == dist.version:
        return [archive.sha256]
    if pin is not None and pin.version == dist.version:
        return list(pin.hashes)
    return []


def _distribution(dist: Distribution, archive: PipArchive | None, pin: LockPin | None) -> Component:
    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.component import Component, ComponentType
    from packageurl import PackageURL

    purl = PackageURL(type="pypi", name=dist.name, version=dist.version)
    hashes = _hashes(dist, archive, pin)
    properties = [Property(name="lockd:location", value=dist.location)]
    if dist.installer:
        properties.append(Property(name="lockd:installer", value=dist.installer))
    if dist.record_sha256:
        properties.append(Property(name="lockd:record-sha256", value=dist.record_sha256))
    if hashes:
        source = "installed archive (pip report)" if len(hashes) == 1 and archive else "lock"
        properties.append(Property(name="lockd:hashes-source", value=source))
    return Component(
        type=ComponentType.LIBRARY,
        name=dist.name,
        version=dist.version,
        purl=purl,
        bom_ref=purl.to_string(),
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=h) for h in hashes],
        properties=properties,
    )


def _cuda_components(torch: TorchInfo) -> list[Component]:
    """The CUDA stack as the torch process reported it (what it loaded, not what is on disk)."""
    from cyclonedx.model import Property
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.model.contact import OrganizationalEntity

    nvidia = OrganizationalEntity(name="NVIDIA")
    stack = (
        ("cuda-runtime", torch.cuda, "the CUDA runtime torch was built for (torch.version.cuda)"),
        ("cudnn", torch.cudnn, "cuDNN as loaded (torch.backends.cudnn.version())"),
        ("nccl", torch.nccl, "NCCL as loaded (torch.cuda.nccl.version())"),
    )
    components = []
    for name, version, how in stack:
        if not version:
            continue
        properties = [Property(name="lockd:source", value=how)]
        if name == "cuda-runtime" and torch.arch_flags:
            properties.append(Property(name="lockd:arch-flags", value=torch.arch_flags))
        components.append(
            Component(
                type=ComponentType.LIBRARY,
                name=name,
                group="nvidia",
                supplier=nvidia,
                version=version,
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
    archives = {a.name: a for a in probe.pip_report.archives} if probe and probe.pip_report else {}
    components = [
        _distribution(d, archives.get(d.name), pins.get(d.name))
        for d in (probe.distributions if probe else [])
    ]
    cuda = _cuda_components(probe.torch) if probe and probe.torch else []
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
