"""What every audit bundle is named and indexed by, shared by building and checking; the audit
seqs ``bundle.json`` says it relies on, read in one place."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lockd.errors import InputError
from lockd.trust.statement import canonical_json

__all__ = [
    "FORMAT",
    "INDEX",
    "MAX_SEQ",
    "ReliedOn",
    "audit_seq",
    "index_of",
    "relied_on",
    "sha256_hex",
]

FORMAT = "lockd-audit-bundle/1"
INDEX = "index.json"
MAX_SEQ = 2**63 - 1  # an audit entry's seq is a SQL BIGINT


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def index_of(files: Mapping[str, bytes]) -> bytes:
    """``index.json``: canonical JSON of the sha256 of every file but itself."""
    listed = {n: sha256_hex(d) for n, d in sorted(files.items()) if n != INDEX}
    return canonical_json({"algorithm": "sha256", "files": listed}) + b"\n"


def _shown(value: object) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, str):
        return json.dumps(value[:40]) + ("..." if len(value) > 40 else "")
    text = json.dumps(value) if isinstance(value, int | float) or value is None else repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def audit_seq(value: object, what: str) -> int:
    """``value`` as an audit entry's seq: an integer from 1 to :data:`MAX_SEQ`, never a bool, a
    float or anything else (a dict lookup would take ``true`` or ``1.0`` for entry 1, while a
    check that skips them would prove nothing of it).

    Raises:
        InputError: it is not one, naming ``what``.
    """
    if type(value) is not int or not 1 <= value <= MAX_SEQ:
        raise InputError(
            f"{what} is {_shown(value)}, not an audit entry's seq (an integer from 1 to {MAX_SEQ})"
        )
    return value


@dataclass(frozen=True)
class ReliedOn:
    """The audit entries a bundle relies on, as its ``bundle.json`` names them."""

    manifest: int  # the manifest's own entry (manifest.create)
    reports: tuple[tuple[str, int], ...]  # each report's file and its entry (verification.create)

    @property
    def seqs(self) -> list[int]:
        return sorted({self.manifest, *(seq for _, seq in self.reports)})


def relied_on(meta: Mapping[str, Any]) -> ReliedOn:
    """The entries ``bundle.json`` (``meta``) relies on: the manifest's own and each report's,
    each seq an integer (:func:`audit_seq`), each report a file under ``reports/``. The one
    reading of them: the audit chain's check and the log's prove the same entries.

    Raises:
        InputError: a seq, the reports list or a report is not what lockd writes, named.
    """
    manifest = audit_seq(meta.get("manifest_audit_seq"), "bundle.json: manifest_audit_seq")
    listed = meta.get("reports")
    if not isinstance(listed, list):
        raise InputError(f"bundle.json: reports is {_shown(listed)}, not a list")
    reports = []
    for i, report in enumerate(listed):
        name = report.get("file") if isinstance(report, dict) else None
        if not isinstance(name, str) or not name.startswith("reports/"):
            raise InputError(f"bundle.json: reports[{i}] names no file under reports/")
        seq = report.get("audit_seq")
        reports.append((name, audit_seq(seq, f"bundle.json: reports[{i}].audit_seq")))
    return ReliedOn(manifest, tuple(reports))
