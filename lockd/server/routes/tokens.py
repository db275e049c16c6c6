"""``/v1/tokens``: an admin makes tokens (each shown once; only its hash is kept)."""

from __future__ import annotations

from fastapi import APIRouter, status

from lockd.server.deps import AdminDep, ServiceDep
from lockd.server.routes import problems
from lockd.server.schemas import TokenCreate, TokenCreated

router = APIRouter(prefix="/v1/tokens", tags=["tokens"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=TokenCreated,
    responses=problems(400, 401, 403, 413, 422),
)
def create_token(body: TokenCreate, service: ServiceDep, principal: AdminDep) -> TokenCreated:
    """A new token; the answer is the only place it is ever shown."""
    token = service.store.create_token(body.name, body.role, actor=principal.name)
    return TokenCreated(name=body.name, role=body.role, token=token)
