"""``/v1/audit``: the append-only, hash-chained log of every write and decision."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from lockd.server.deps import ReaderDep, ServiceDep
from lockd.server.routes import problems
from lockd.server.schemas import AuditEntryOut, AuditVerifyOut

router = APIRouter(prefix="/v1/audit", tags=["audit"])


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
    """Re-hash the whole chain: ``first_bad`` is the seq of the first entry that does not hold."""
    check = service.store.verify_audit()
    return AuditVerifyOut(
        ok=check.ok, entries=check.entries, first_bad=check.first_bad, reason=check.reason
    )
