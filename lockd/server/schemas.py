"""The API's request and response bodies (kept apart from the tables in lockd.store.tables)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from lockd.model.base import Digest
from lockd.model.manifest import Manifest, Observation
from lockd.model.report import Report
from lockd.trust.dsse import Envelope

PolicyName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
TokenName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")]
RoleName = Literal["reader", "recorder", "admin"]


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class _In(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Problem(_Out):
    """Every 4xx and 5xx answer: what went wrong and what to do next."""

    detail: str


class SubjectOut(_Out):
    name: str
    digest: dict[str, str]


class ManifestSummary(_Out):
    digest: Digest = Field(description="sha256 of the envelope's payload")
    name: str
    subjects: list[SubjectOut]
    labels: dict[str, str]
    keyids: list[str] = Field(description="the trusted keys whose signatures verified")
    created_at: str
    created_by: str


class ManifestDetail(ManifestSummary):
    envelope: Envelope
    bundle: dict[str, Any] | None = Field(
        default=None, description="the Sigstore bundle, when the manifest was pushed as one"
    )
    manifest: Manifest = Field(description="the envelope's payload, decoded")


class VerificationRequest(_In):
    """Either an observation for the service to compare (with a policy name), or a report a
    client made with ``lockd verify`` to store."""

    observation: Observation | None = Field(default=None, description="what `lockd observe` prints")
    policy: PolicyName | None = Field(
        default=None, description="a policy of the service's LOCKD_POLICIES (default: default)"
    )
    report: Report | None = Field(default=None, description="what `lockd verify --json` prints")

    @model_validator(mode="after")
    def _one_form(self) -> VerificationRequest:
        if (self.observation is None) == (self.report is None):
            raise ValueError("give exactly one of 'observation' (with 'policy') or 'report'")
        if self.report is not None and self.policy is not None:
            raise ValueError("'policy' goes with 'observation'; a report was judged already")
        return self


class VerificationOut(_Out):
    id: int
    created_at: str
    actor: str
    source: Literal["server", "client"]
    subject: str | None
    manifest_digest: str | None
    policy: str | None
    verified: bool
    report: Report


class AuditEntryOut(_Out):
    seq: int
    time: str
    actor: str = Field(description="the name of the token that acted (never the token)")
    action: str
    subject: str | None
    body_digest: str | None = Field(description="sha256 of the stored record's body")
    prev_hash: str
    hash: str = Field(description="sha256 of the canonical JSON of the other fields")


class AuditVerifyOut(_Out):
    ok: bool
    entries: int
    first_bad: int | None
    reason: str | None = None


class InclusionProofOut(_Out):
    """RFC 9162 inclusion proof: leaf ``index`` (the entry of seq ``index + 1``) is in the tree
    of ``size`` leaves; check it against a signed checkpoint of that size."""

    index: int
    size: int
    hashes: list[str] = Field(description="the audit path, hex SHA-256, the leaf's sibling first")


class ConsistencyProofOut(_Out):
    """RFC 9162 consistency proof: the tree of ``first`` leaves is a prefix of the tree of
    ``second``; check it against two signed checkpoints."""

    first: int
    second: int
    hashes: list[str] = Field(description="hex SHA-256, as RFC 9162 section 2.1.4.1 orders them")


class TokenCreate(_In):
    name: TokenName
    role: RoleName


class TokenCreated(_Out):
    name: str
    role: RoleName
    token: str = Field(description="shown this once: only its hash is kept")


class Health(_Out):
    status: Literal["ok"]


class Ready(_Out):
    status: Literal["ready", "not ready"]
    database: bool
    revision: str | None
    head: str
