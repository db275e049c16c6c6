"""Talking to a lockd service (``--server URL``): push envelopes, fetch manifests, push reports,
and re-check the audit chain from outside. Standard library HTTP only, so ``lockd verify
--server`` stays quick to start; the token comes from ``LOCKD_TOKEN``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from lockd.errors import ServerError
from lockd.model.base import storable_json

if TYPE_CHECKING:
    from pydantic import BaseModel

    from lockd.judgement.policy import Policy
    from lockd.model.fleet import FleetAck, FleetBatch, FleetView
    from lockd.model.manifest import Observation
    from lockd.model.report import Report
    from lockd.trust.auditlog import ChainCheck
    from lockd.trust.checkpoint import Checkpoint, LogVerifier
    from lockd.trust.keys import PublicKey
    from lockd.trust.signed import Signed, Trust

M = TypeVar("M", bound="BaseModel")
T = TypeVar("T", list[Any], dict[str, Any])
TIMEOUT_S = 30.0
MAX_ANSWER_BYTES = 64 * 1024 * 1024
AUDIT_PAGE = 1000

__all__ = ["Client", "LogVerdict", "check_remote_audit", "follow_log", "verify_remote"]


class Client:
    """One lockd service at ``base_url``; ``token`` is sent as a bearer token (never printed)."""

    def __init__(self, base_url: str, token: str | None = None, *, timeout: float = TIMEOUT_S):
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ServerError(
                f"--server {base_url!r}: give the service's URL, e.g. http://127.0.0.1:8080"
            )
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout = timeout
        self._opener = urllib.request.build_opener(_TokenStaysHome)

    @classmethod
    def from_env(cls, base_url: str) -> Client:
        """A client with the token from ``LOCKD_TOKEN`` (none when unset)."""
        return cls(base_url, os.environ.get("LOCKD_TOKEN") or None)

    def _fetch(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: bytes | None = None,
        accept: str = "application/json",
        limit: int = MAX_ANSWER_BYTES,
    ) -> tuple[int, bytes]:
        """One request: the status and the answer's bytes (at most ``limit``).

        Raises:
            ServerError: the service cannot be reached, answers an error status (with its
                detail), breaks the connection, or answers more than ``limit`` bytes.
        """
        url = self.base_url + path
        if query:
            url += "?" + urllib.parse.urlencode(list(query))
        headers = {"Accept": accept}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(url, data=body, method=method, headers=headers)  # noqa: S310 (scheme checked)
        where = f"{method} {self.base_url}{path}"
        try:
            with self._opener.open(request, timeout=self.timeout) as answer:
                status = answer.status
                data = answer.read(limit + 1)
        except urllib.error.HTTPError as e:
            try:
                detail = _detail(e.read(64 * 1024), e.reason)
            except (OSError, http.client.HTTPException):
                detail = str(e.reason)
            raise ServerError(f"{where}: {e.code} {detail}", status=e.code) from e
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
            reason = getattr(e, "reason", None) or f"{type(e).__name__}: {e}"
            raise ServerError(
                f"{where}: cannot reach the lockd service ({reason}); check --server and that "
                "the service is running"
            ) from e
        if len(data) > limit:
            size = f"{limit // (1024 * 1024)} MiB" if limit >= 1024 * 1024 else f"{limit} bytes"
            raise ServerError(f"{where}: the answer is larger than {size}")
        return status, data

    def _request(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: bytes | None = None,
    ) -> tuple[int, Any]:
        status, data = self._fetch(method, path, query=query, body=body)
        try:
            return status, json.loads(data) if data else None
        except ValueError as e:  # not JSON, or not UTF-8
            why = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8"
            raise ServerError(
                f"{method} {self.base_url}{path}: the answer is not JSON ({why}); is --server "
                "a lockd service?"
            ) from e

    # --- manifests --------------------------------------------------------------------------

    def push(
        self, envelope: bytes, *, name: str | None = None, labels: Sequence[str] = ()
    ) -> tuple[dict[str, Any], bool]:
        """Store an envelope: ``(summary, created)``."""
        query = [("name", name)] if name else []
        query += [("label", label) for label in labels]
        status, answer = self._request("POST", "/v1/manifests", query=query, body=envelope)
        return answer, status == 201

    def manifests_for(self, subject: str) -> list[dict[str, Any]]:
        _, answer = self._request("GET", "/v1/manifests", query=[("subject", subject)])
        return _shaped(answer, list, f"{self.base_url}/v1/manifests", "a list of manifests")

    def manifest(self, digest: str) -> dict[str, Any]:
        _, answer = self._request("GET", f"/v1/manifests/{urllib.parse.quote(digest)}")
        return _shaped(answer, dict, f"{self.base_url}/v1/manifests/{digest}", "a manifest")

    def signed_manifest(self, digest: str, where: str) -> Signed:
        """The stored manifest as it was pushed (see :func:`signed_of`).

        Raises:
            ServerError: the service cannot be reached or the answer carries neither.
        """
        return signed_of(self.manifest(digest), where)

    def public_key(self, keyid: str) -> dict[str, Any]:
        """``{"keyid", "pem"}``: a key the service trusts (``GET /keys/{keyid}``)."""
        _, answer = self._request("GET", f"/keys/{urllib.parse.quote(keyid)}")
        return dict(answer)

    # --- verifications ----------------------------------------------------------------------

    def verifications(self, subject: str, limit: int = 1000) -> list[dict[str, Any]]:
        """Stored reports for an image digest, newest first."""
        _, answer = self._request(
            "GET", "/v1/verifications", query=[("subject", subject), ("limit", str(limit))]
        )
        return list(answer)

    def push_report(self, report: Report) -> None:
        body = b'{"report":' + storable_json(report) + b"}"
        self._request("POST", "/v1/verifications", body=body)

    # --- fleet ------------------------------------------------------------------------------

    def push_fleet(self, batch: FleetBatch) -> FleetAck:
        """Deliver one agent batch (``POST /v1/fleet/reports``); a redelivered one is
        acknowledged with ``applied: false``."""
        from lockd.model.fleet import FleetAck

        body = storable_json(batch)
        _, answer = self._request("POST", "/v1/fleet/reports", body=body)
        return _parsed(FleetAck, answer, f"{self.base_url}/v1/fleet/reports")

    def fleet(self, *, host: str | None = None, verdict: str | None = None) -> FleetView:
        """The fleet view (``GET /v1/fleet``), optionally of one host or one verdict."""
        from lockd.model.fleet import FleetView

        query = [("host", host)] if host else []
        query += [("verdict", verdict)] if verdict else []
        _, answer = self._request("GET", "/v1/fleet", query=query)
        return _parsed(FleetView, answer, f"{self.base_url}/v1/fleet")

    def forget_host(self, host: str) -> None:
        """Remove a host and its containers from the fleet view (``DELETE
        /v1/fleet/hosts/{host}``, an admin token); a host the service does not list is a
        ServerError with status 404."""
        self._request("DELETE", f"/v1/fleet/hosts/{urllib.parse.quote(host, safe='')}")

    # --- audit ------------------------------------------------------------------------------

    def audit_entries(self, page: int = AUDIT_PAGE) -> Iterator[dict[str, Any]]:
        """Every audit entry, in seq order, page by page.

        Raises:
            ServerError: a page is not a list of entries (JSON objects with an integer seq)
                in seq order.
        """
        after = 0
        where = f"{self.base_url}/v1/audit"
        while True:
            _, entries = self._request(
                "GET", "/v1/audit", query=[("after", str(after)), ("limit", str(page))]
            )
            if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
                raise ServerError(
                    f"{where}: the answer is not a list of audit entries (JSON objects); is "
                    "--server a lockd service?"
                )
            if not entries:
                return
            yield from entries
            last = entries[-1].get("seq")
            if not isinstance(last, int) or isinstance(last, bool) or last <= after:
                raise ServerError(f"{where}: entries are not in seq order")
            after = last

    def audit_verdict(self) -> dict[str, Any]:
        _, answer = self._request("GET", "/v1/audit/verify")
        return dict(answer)

    def audit_checkpoint(self) -> bytes:
        """The service's signed checkpoint, as served (``GET /v1/audit/checkpoint``)."""
        from lockd.trust.checkpoint import MAX_NOTE_BYTES

        _, note = self._fetch(
            "GET", "/v1/audit/checkpoint", accept="text/plain", limit=MAX_NOTE_BYTES
        )
        return note

    def audit_log_key(self) -> LogVerifier:
        """The key the service says signs its checkpoints (``GET /v1/audit/log-key``): pin
        it instead where it matters.

        Raises:
            ServerError: the answer is not a verifier key.
        """
        from lockd.trust.checkpoint import LogVerifier, NoteError

        _, data = self._fetch("GET", "/v1/audit/log-key", accept="text/plain", limit=4096)
        try:
            return LogVerifier.parse(data.decode("utf-8"))
        except (NoteError, UnicodeDecodeError) as e:
            raise ServerError(
                f"{self.base_url}/v1/audit/log-key: the answer is not a log verifier key ({e})"
            ) from e

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """Leaf ``index``'s inclusion proof in the tree of ``size`` (the hashes, unverified)."""
        query = [("index", str(index)), ("size", str(size))]
        _, answer = self._request("GET", "/v1/audit/proof/inclusion", query=query)
        return _proof_hashes(answer, f"{self.base_url}/v1/audit/proof/inclusion")

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        """The consistency proof between two sizes (the hashes, unverified)."""
        query = [("from", str(first)), ("to", str(second))]
        _, answer = self._request("GET", "/v1/audit/proof/consistency", query=query)
        return _proof_hashes(answer, f"{self.base_url}/v1/audit/proof/consistency")


MAX_PROOF_HASHES = 128  # a proof of a tree of 2**63 leaves has at most 126


def _proof_hashes(answer: Any, where: str) -> list[bytes]:
    hashes = answer.get("hashes") if isinstance(answer, dict) else None
    if (
        not isinstance(hashes, list)
        or len(hashes) > MAX_PROOF_HASHES
        or not all(isinstance(h, str) and re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes)
    ):
        raise ServerError(
            f"{where}: the answer is not a proof (a JSON object whose 'hashes' is a list of at "
            f"most {MAX_PROOF_HASHES} hex SHA-256 hashes)"
        )
    return [bytes.fromhex(h) for h in hashes]


def origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port of ``url`` (the default port filled in)."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port


class _TokenStaysHome(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but send the bearer token to the origin it was given for only: a
    redirect to another scheme, host or port goes there without ``Authorization``."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and origin(newurl) != origin(req.full_url):
            new.remove_header("Authorization")
        return new


def _parsed(model: type[M], answer: Any, where: str) -> M:
    from pydantic import ValidationError

    try:
        return model.model_validate(answer)
    except ValidationError as e:
        raise ServerError(
            f"{where}: the answer is not a {model.__name__} ({e.errors()[0]['msg']})"
        ) from e


def _shaped(answer: Any, kind: type[T], where: str, what: str) -> T:
    """``answer`` when it is a ``kind`` (a list: of JSON objects), else the service said
    something no lockd service says.

    Raises:
        ServerError: naming ``where`` and ``what`` was expected.
    """
    if not isinstance(answer, kind) or (
        isinstance(answer, list) and not all(isinstance(item, dict) for item in answer)
    ):
        raise ServerError(f"{where}: the answer is not {what}; is --server a lockd service?")
    return answer


def signed_of(detail: dict[str, Any], where: str) -> Signed:
    """A stored manifest's answer as it was pushed: its Sigstore bundle when it came as one (a
    keyless one cannot be checked without it), else its envelope.

    Raises:
        ServerError: the answer carries neither.
    """
    from lockd.errors import ManifestError
    from lockd.trust.signed import signed_from

    doc = detail.get("bundle") or detail.get("envelope")
    try:
        return signed_from(doc, where)
    except ManifestError as e:
        raise ServerError(f"{where}: the answer carries no valid envelope ({e})") from e


def _detail(data: bytes, reason: str) -> str:
    try:
        detail = json.loads(data).get("detail")
    except (ValueError, AttributeError):
        detail = None
    return str(detail) if detail else reason


def verify_remote(
    client: Client,
    observation: Observation,
    trusted: Trust | Sequence[PublicKey],
    policy: Policy,
) -> Report:
    """Fetch the newest manifest the service holds for the observed target's image, check its
    signature here against ``trusted`` (the service is not trusted for that), compare, and push
    the report to the service.

    Raises:
        ServerError: the service cannot be reached or holds no manifest for the target.
    """
    from lockd.judgement.reporting import build_report, manifest_reference, target_summary
    from lockd.model.report import ReportManifest
    from lockd.trust.statement import parse_statement, subjects_for
    from lockd.verify import check_signature

    info = observation.target
    digests = ["sha256:" + s.digest["sha256"] for s in subjects_for(observation)]
    found = next((m for d in digests if (m := client.manifests_for(d))), None)
    if not found:
        raise ServerError(
            f"{client.base_url}: no manifest for {info.ref} ({digests[0]}); record it "
            "and push the envelope first (lockd push)"
        )
    digest = found[0]["digest"]
    source = f"{client.base_url}/v1/manifests/{digest}"
    envelope = client.signed_manifest(digest, source)
    signature, keyids = check_signature(envelope, trusted)
    reference = ReportManifest(path=source)
    compared = None
    if signature.status != "fail":
        subjects, manifest = parse_statement(envelope.payload_bytes(), source)
        reference = manifest_reference(source, subjects, keyids)
        compared = (manifest, observation)
    report = build_report(target_summary(info, observation), signature, reference, compared, policy)
    client.push_report(report)
    return report


def check_remote_audit(client: Client, checkpoint: Checkpoint | None = None) -> ChainCheck:
    """Re-hash the service's whole audit log here, independently of the service's own verdict
    (entries are checked as they are fetched, page by page); with a signed ``checkpoint``, the
    first ``checkpoint.size`` entries must also make its root (the entries served are the log
    the service signed).

    Raises:
        ServerError: the service cannot be reached or answers something that is not entries.
    """
    from lockd.trust.auditlog import ChainCheck, ChainChecker, entry_leaf_hash
    from lockd.trust.merkle import Frontier

    checker = ChainChecker()
    tree = Frontier()
    for entry in client.audit_entries():
        checker.add(entry)
        if checkpoint is not None and tree.size < checkpoint.size:
            with contextlib.suppress(KeyError, ValueError):  # the chain's check names it
                tree.append(entry_leaf_hash(entry))
    chain = checker.result()
    if not chain.ok or checkpoint is None:
        return chain
    if tree.size < checkpoint.size:
        reason = (
            f"the service serves {checker.entries} entries but its checkpoint signs "
            f"{checkpoint.size}: entries were removed"
        )
    elif tree.root() != checkpoint.root:
        reason = (
            f"the first {checkpoint.size} entries served do not make the root of the service's "
            "signed checkpoint: the entries served are not the log it signed"
        )
    else:
        return chain
    return ChainCheck(ok=False, entries=chain.entries, first_bad=checkpoint.size, reason=reason)


@dataclass(frozen=True)
class LogVerdict:
    """What ``lockd audit verify --checkpoint`` found: the service's signed checkpoint now, the
    saved one it was checked against (None on the first run), the note to save when it holds;
    ``failed_at``, the size at which consistency fails."""

    ok: bool
    key: str  # the verifier key that checked the signatures
    pinned: bool  # the key was given (--log-key), not taken from the service
    checkpoint: Checkpoint
    note: bytes
    saved: Checkpoint | None
    failed_at: int | None = None
    reason: str | None = None


def follow_log(client: Client, saved: bytes | None, key: LogVerifier | None) -> LogVerdict:
    """Fetch the service's checkpoint, check its signature with ``key`` (else the key the
    service serves), and check that the log is a consistent extension of the ``saved``
    checkpoint (a signed note, as a previous run saved it).

    Raises:
        ServerError: the service cannot be reached, or its checkpoint or proof is malformed.
        NoteError: the saved checkpoint is malformed.
        NoteVerificationError: a checkpoint is not signed by the key, or with a ``saved``
            checkpoint the service serves none (exit 1).
    """
    from lockd.trust.checkpoint import (
        LogRewrittenError,
        NoteError,
        NoteVerificationError,
        check_extension,
        open_checkpoint,
    )

    try:
        verifier = key if key is not None else client.audit_log_key()
        note = client.audit_checkpoint()
    except ServerError as e:
        if saved is None or e.status != 404:
            raise
        # A log that was checkpointed is now served by a service that signs nothing: it may
        # have been swapped for another; that is a verdict on the log, not a setup error.
        raise NoteVerificationError(
            f"{e}; the log whose checkpoint was saved can no longer be verified here: it was "
            "signed, this service serves no checkpoint"
        ) from e
    where = f"{client.base_url}/v1/audit/checkpoint"
    try:
        now = open_checkpoint(note, verifier)
    except NoteError as e:
        raise ServerError(f"{where}: the answer is not a signed checkpoint ({e})") from e
    except NoteVerificationError as e:
        raise NoteVerificationError(f"{where}: {e}") from e
    verdict = LogVerdict(True, str(verifier), key is not None, now, note, None)
    if saved is None:
        return verdict
    try:
        before = open_checkpoint(saved, verifier)
    except NoteVerificationError as e:
        raise NoteVerificationError(
            f"the saved checkpoint is not signed by the log key {verifier.name}+"
            f"{verifier.id.hex()} ({e}); the log's key changed: another log answers, or the "
            "key was replaced"
        ) from e
    proof: list[bytes] = []
    if 0 < before.size < now.size:
        proof = client.consistency_proof(before.size, now.size)
    try:
        check_extension(before, now, proof)
    except LogRewrittenError as e:
        return LogVerdict(False, str(verifier), key is not None, now, note, before, e.size, str(e))
    return LogVerdict(True, str(verifier), key is not None, now, note, before)
