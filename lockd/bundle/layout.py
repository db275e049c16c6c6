"""What every audit bundle is named and indexed by, shared by building and checking."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from lockd.trust.statement import canonical_json

__all__ = ["FORMAT", "INDEX", "index_of", "sha256_hex"]

FORMAT = "lockd-audit-bundle/1"
INDEX = "index.json"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def index_of(files: Mapping[str, bytes]) -> bytes:
    """``index.json``: canonical JSON of the sha256 of every file but itself."""
    listed = {n: sha256_hex(d) for n, d in sorted(files.items()) if n != INDEX}
    return canonical_json({"algorithm": "sha256", "files": listed}) + b"\n"
