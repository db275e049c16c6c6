"""The result of a verification: checks, their findings, the verdict."""

from typing import Literal

from lockd.model.base import Frozen, Str

# --- the result of a verification --------------------------------------------------------

Status = Literal["pass", "fail", "warn", "skip"]
Evidence = Literal["host", "inside", "host+inside", "signature"]


class Finding(Frozen):
    kind: Str
    name: Str | None = None
    path: Str | None = None
    expected: Str | None = None
    observed: Str | None = None
    message: Str | None = None


class Check(Frozen):
    id: Str
    status: Status
    evidence: Evidence
    message: Str = ""
    expected: Str | None = None
    observed: Str | None = None
    findings: list[Finding] = []


class ReportManifest(Frozen):
    path: Str | None = None
    subject: list[dict[str, object]] = []
    keyid: Str | None = None


class Report(Frozen):
    verified: bool
    target: dict[str, object]
    manifest: ReportManifest
    checks: list[Check]
