"""One router per resource: manifests, verifications, audit, tokens, health (and metrics)."""

from __future__ import annotations

from typing import Any

from lockd.server.schemas import Problem

_WHY = {
    400: "malformed request (not JSON, bad Content-Length)",
    401: "no bearer token, or an unknown one",
    403: "the token's role is too weak",
    404: "not stored",
    413: "the body is larger than the limit (5 MiB)",
    422: "the body or a parameter is not acceptable (the detail says why)",
}


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, each a :class:`Problem`."""
    return {code: {"model": Problem, "description": _WHY[code]} for code in codes}
