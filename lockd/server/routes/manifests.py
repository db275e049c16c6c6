"""``/v1/manifests``: signed environments (DSSE envelopes or Sigstore bundles) that verify
against a trusted key or keyless identity."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Response, status

from lockd.server.deps import ReaderDep, RecorderDep, ServiceDep
from lockd.server.routes import problems
from lockd.server.schemas import ManifestDetail, ManifestSummary, SubjectOut
from lockd.server.service import NotFoundError, check_name, parse_labels
from lockd.store.repository import ManifestRecord
from lockd.trust.signed import envelope_of, parse_signed, signed_from
from lockd.trust.sigstore_bundle import SigstoreBundle
from lockd.trust.statement import parse_statement

router = APIRouter(prefix="/v1/manifests", tags=["manifests"])

DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
DigestQuery = Annotated[
    str | None, Query(pattern=DIGEST_PATTERN, description="a subject digest, sha256:<hex>")
]
LabelQuery = Annotated[
    list[str] | None,
    Query(max_length=32, description="key=value (repeat for several)"),
]


def summary(record: ManifestRecord) -> ManifestSummary:
    return ManifestSummary(
        digest=record.digest,
        name=record.name,
        subjects=[
            SubjectOut(name=name, digest={"sha256": digest.removeprefix("sha256:")})
            for name, digest in record.subjects
        ],
        labels=record.labels,
        keyids=record.keyids,
        created_at=record.created_at,
        created_by=record.created_by,
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ManifestSummary,
    responses={
        200: {"model": ManifestSummary, "description": "the same envelope is stored already"},
        **problems(400, 401, 403, 413, 422),
    },
)
def push_manifest(
    body: Annotated[
        dict[str, Any],
        Body(description="a DSSE envelope, or a Sigstore bundle (mediaType) carrying one"),
    ],
    service: ServiceDep,
    principal: RecorderDep,
    response: Response,
    name: Annotated[
        str | None,
        Query(max_length=256, description="default: the Statement's first subject name"),
    ] = None,
    label: LabelQuery = None,
) -> ManifestSummary:
    """Store a DSSE envelope (a lockd in-toto Statement), or a Sigstore bundle of one, that
    verifies against a trusted key or keyless identity. The same payload again answers 200 and
    stores nothing new."""
    envelope = signed_from(body, "the request body")
    labels = {k: v for k, v in parse_labels(label or [], need_value=True).items() if v}
    record, created = service.accept_manifest(
        envelope, name=name, labels=labels, actor=principal.name
    )
    if created:
        service.metrics.manifests.inc()
    else:
        response.status_code = status.HTTP_200_OK
    return summary(record)


@router.get("", response_model=list[ManifestSummary], responses=problems(401, 403, 422))
def find_manifests(
    service: ServiceDep,
    _: ReaderDep,
    subject: DigestQuery = None,
    name: Annotated[str | None, Query(max_length=256)] = None,
    label: LabelQuery = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[ManifestSummary]:
    """Stored manifests, newest first; ``label=key`` matches any value of the key."""
    if name is not None:
        check_name(name)
    records = service.store.find_manifests(
        subject=subject,
        name=name,
        labels=parse_labels(label or [], need_value=False),
        limit=limit,
    )
    return [summary(r) for r in records]


@router.get("/{digest}", response_model=ManifestDetail, responses=problems(401, 403, 404, 422))
def get_manifest(
    digest: Annotated[str, Path(pattern=DIGEST_PATTERN, description="sha256:<hex> of the payload")],
    service: ServiceDep,
    _: ReaderDep,
) -> ManifestDetail:
    """The envelope and its decoded manifest."""
    record = service.store.get_manifest(digest)
    if record is None:
        raise NotFoundError(f"no manifest {digest} is stored")
    signed = parse_signed(record.envelope.encode("utf-8"), f"stored manifest {digest}")
    _subjects, manifest = parse_statement(signed.payload_bytes(), f"stored manifest {digest}")
    bundle = json.loads(signed.raw) if isinstance(signed, SigstoreBundle) else None
    return ManifestDetail(
        **summary(record).model_dump(),
        envelope=envelope_of(signed),
        bundle=bundle,
        manifest=manifest,
    )
