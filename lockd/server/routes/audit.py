"""``/v1/audit``: the append-only, hash-chained log of every write and decision, and its Merkle
tree: signed checkpoints, the log's key, inclusion and consistency proofs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse

from lockd.server.deps import ReaderDep, ServiceDep
from lockd.server.routes import problems
from lockd.server.schemas import (
    AuditEntryOut,
    AuditVerifyOut,
    ConsistencyProofOut,
    InclusionProofOut,
)
from lockd.trust.merkle import MAX_SIZE

router = APIRouter(prefix="/v1/audit", tags=["audit"])
NOTE = "text/plain; charset=utf-8"
Size = Annotated[int, Query(ge=0, le=MAX_SIZE, description="a tree size (entries)")]


@router.get("", response_model=list[AuditEntryOut], responses=problems(401, 403, 422))
def audit_entries(
    service: ServiceDep,
    _: ReaderDep,
    after: Annotated[int, Query(ge=0, le=2**31 - 1, description="entries with seq > after")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
) -> list[AuditEntryOut]:
    """Entries in seq order; page with ``after`` = the last seq seen."""
    return [
        AuditEntryOut(**e.as_dict()) for e in service.store.audit_entries(after=after, limit=limit)
    ]


@router.get("/verify", response_model=AuditVerifyOut, responses=problems(401, 403))
def audit_verify(service: ServiceDep, _: ReaderDep) -> AuditVerifyOut:
    """Re-hash the whole chain and tree: ``first_bad`` is the seq of the first entry that does
    not hold. Whoever can write the database can rewrite both consistently: compare signed
    checkpoints (``lockd audit verify --checkpoint``) to see that."""
    check = service.store.verify_audit()
    return AuditVerifyOut(
        ok=check.ok, entries=check.entries, first_bad=check.first_bad, reason=check.reason
    )


def _text_answers() -> dict[int | str, dict[str, Any]]:
    """OpenAPI for a route that answers text, and JSON problems (named explicitly: FastAPI
    would give them the route's text media type)."""
    problem = {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    answers: dict[int | str, dict[str, Any]] = {200: {"description": "text"}}
    for code, doc in problems(401, 403).items():
        answers[code] = {"description": doc["description"], "content": problem}
    answers[404] = {"description": "the service has no log key", "content": problem}
    return answers


@router.get("/checkpoint", response_class=PlainTextResponse, responses=_text_answers())
def audit_checkpoint(service: ServiceDep, _: ReaderDep) -> PlainTextResponse:
    """The log's Merkle tree now, a C2SP tlog-checkpoint in a signed note (Ed25519): origin,
    size, root hash (base64), a blank line, the signature line. Save it; a later checkpoint
    must be a consistent extension of it (``lockd audit verify --checkpoint FILE``)."""
    return PlainTextResponse(service.checkpoint(), media_type=NOTE)


@router.get("/log-key", response_class=PlainTextResponse, responses=_text_answers())
def audit_log_key(service: ServiceDep, _: ReaderDep) -> PlainTextResponse:
    """The key that signs checkpoints, as a signed-note verifier key
    ``<name>+<key ID>+<base64(0x01 || Ed25519 key)>``: pin it (``--log-key``), do not fetch
    it each time."""
    return PlainTextResponse(f"{service.log_key()}\n", media_type=NOTE)


@router.get("/proof/inclusion", response_model=InclusionProofOut, responses=problems(401, 403, 422))
def audit_inclusion(
    service: ServiceDep,
    _: ReaderDep,
    index: Annotated[int, Query(ge=0, le=MAX_SIZE, description="the leaf: the entry's seq - 1")],
    size: Size,
) -> InclusionProofOut:
    """The proof that leaf ``index`` is in the tree of ``size`` leaves (index < size <= the
    log's size)."""
    hashes = service.store.inclusion_proof(index, size)
    return InclusionProofOut(index=index, size=size, hashes=[h.hex() for h in hashes])


@router.get(
    "/proof/consistency", response_model=ConsistencyProofOut, responses=problems(401, 403, 422)
)
def audit_consistency(
    service: ServiceDep,
    _: ReaderDep,
    first: Annotated[int, Query(alias="from", ge=0, le=MAX_SIZE, description="the older size")],
    second: Annotated[int, Query(alias="to", ge=0, le=MAX_SIZE, description="the newer size")],
) -> ConsistencyProofOut:
    """The proof that the tree of ``from`` leaves is a prefix of the tree of ``to`` leaves
    (from <= to <= the log's size)."""
    hashes = service.store.consistency_proof(first, second)
    return ConsistencyProofOut(first=first, second=second, hashes=[h.hex() for h in hashes])
