"""Verdicts: the manifest the service holds for an image, kept on disk so verdicts go on while
the service is away, and :func:`judge` (pure) — the signature, then ``lockd.judgement.compare``
under the policy, as ``lockd verify --server`` does.

Without ``--key`` the agent takes the service's word for the signature (the service only stores
envelopes that verify against a key it trusts); with ``--key`` it checks every envelope here.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from lockd.errors import LockdError, ServerError
from lockd.evidence.cache.store import UntrustedFileError, read_own_file, untrusted_directory
from lockd.fileio import write_atomic
from lockd.judgement.reporting import build_report, manifest_reference, target_summary
from lockd.model.fleet import MAX_FINDINGS, Verdict
from lockd.model.manifest import Manifest, Observation
from lockd.model.report import Check, Finding, Report, ReportManifest
from lockd.trust.dsse import Envelope
from lockd.trust.statement import Subject, parse_statement
from lockd.verify import check_signature

if TYPE_CHECKING:
    from lockd.client import Client
    from lockd.judgement.policy import Policy
    from lockd.trust.keys import PublicKey

log = logging.getLogger("lockd.watch")

FINDING_CHARS = 200
MAX_CACHE_BYTES = 64 * 1024 * 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")

__all__ = [
    "Judgement",
    "Known",
    "ManifestCache",
    "Opened",
    "ServiceDownError",
    "finding_lines",
    "judge",
    "open_known",
]


class ServiceDownError(Exception):
    """The service could not be asked (transport failure, 5xx): use what is cached."""


@dataclass(frozen=True)
class Known:
    """What the agent knows of the manifest for an image: its digest and envelope, or that the
    service holds none (``digest`` None)."""

    image_id: str
    digest: str | None
    envelope: Envelope | None
    fetched_at: str


@dataclass(frozen=True)
class Opened:
    """A known manifest with its signature checked and, when trusted, its Statement parsed."""

    digest: str
    source: str
    signature: Check
    keyids: tuple[str, ...]
    statement: tuple[list[Subject], Manifest] | None


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    manifest_digest: str | None
    findings: tuple[str, ...]
    report: Report | None
    error: str | None


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


@contextmanager
def _asking() -> Iterator[None]:
    """A ServerError of a service that could not be asked (no answer, a 5xx, 408 or 429) as
    a ServiceDownError; one that answered no (a 4xx: a bad token) as it is."""
    try:
        yield
    except ServerError as e:
        if e.status is None or e.status >= 500 or e.status in (408, 429):
            raise ServiceDownError(str(e)) from e
        raise


def open_known(known: Known, trusted: Sequence[PublicKey], source: str) -> Opened:
    """Check the signature (against ``trusted``; none: the service's word) and parse.

    Raises:
        ManifestError: the payload is not a lockd Statement.
    """
    assert known.digest is not None and known.envelope is not None
    if trusted:
        signature, keyids = check_signature(known.envelope, trusted)
    else:
        signature = Check(
            id="signature",
            status="pass",
            evidence="signature",
            message="not checked here (no --key): the service checked it against its trusted "
            "keys when it was pushed",
        )
        keyids = [s.keyid for s in known.envelope.signatures if s.keyid]
    statement = None
    if signature.status == "pass":
        statement = parse_statement(known.envelope.payload_bytes(), source)
    return Opened(known.digest, source, signature, tuple(keyids), statement)


def judge(
    observation: Observation, opened: Opened | None, policy: Policy, *, image_id: str
) -> Judgement:
    """The verdict on ``observation`` against ``opened`` (None: the service holds no manifest
    for the image, so ``unrecorded``). Pure."""
    if opened is None:
        return Judgement("unrecorded", None, (f"no manifest for image {image_id}",), None, None)
    target = target_summary(observation.target, observation)
    reference = ReportManifest(path=opened.source)
    compared = None
    if opened.statement is not None:
        subjects, manifest = opened.statement
        reference = manifest_reference(opened.source, subjects, opened.keyids)
        compared = (manifest, observation)
    report = build_report(target, opened.signature, reference, compared, policy)
    return Judgement(
        "pass" if report.verified else "fail",
        opened.digest,
        finding_lines(report.checks),
        report,
        None,
    )


def failed(error: str) -> Judgement:
    return Judgement("error", None, (), None, _clip(error, 4096))


def _clip(text: str, limit: int) -> str:
    text = _CONTROL.sub(" ", text).strip() or "?"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _finding_line(check_id: str, f: Finding) -> str:
    what = f.name or f.path or f.kind
    if f.expected is not None and f.observed is not None:
        detail = f" {f.expected} → {f.observed}"
    elif f.observed is not None:
        detail = f" {f.observed}"
    elif f.expected is not None:
        detail = f" {f.expected}"
    else:
        detail = ""
    kind = f" ({f.kind})" if f.kind != what else ""
    return f"{check_id}: {what}{detail}{kind}"


def finding_lines(checks: Sequence[Check], limit: int = MAX_FINDINGS) -> tuple[str, ...]:
    """Short lines (at most 200 characters, at most ``limit``) for the checks that failed:
    ``packages: numpy 1.26.4 → 2.0.0 (changed)``."""
    lines: list[str] = []
    for check in checks:
        if check.status != "fail":
            continue
        if not check.findings:
            lines.append(f"{check.id}: {check.message or 'failed'}")
        lines += [_finding_line(check.id, f) for f in check.findings]
    lines = [_clip(line, FINDING_CHARS) for line in lines]
    if len(lines) > limit:
        lines = [*lines[: limit - 1], f"… and {len(lines) - limit + 1} more"]
    return tuple(lines)


class ManifestCache:
    """The newest manifest the service holds per image id, in memory and on disk
    (``DIR/<image hex>.json``), with signatures checked once per manifest."""

    def __init__(
        self, directory: Path, client: Client, trusted: Sequence[PublicKey], server: str
    ) -> None:
        self.directory = directory
        self._client = client
        self._trusted = list(trusted)
        self._server = server.rstrip("/")
        self._known: dict[str, Known] = {}
        self._opened: dict[str, Opened] = {}
        self._lock = threading.Lock()
        self._distrust_said = False

    def _path(self, image_id: str) -> Path:
        return self.directory / f"{image_id.removeprefix('sha256:')}.json"

    def get(self, image_id: str) -> Known | None:
        """What is known without asking the service (memory, else disk); None: nothing."""
        with self._lock:
            known = self._known.get(image_id)
        if known is not None:
            return known
        known = self._load(image_id)
        if known is not None:
            with self._lock:
                self._known.setdefault(image_id, known)
        return known

    def _load(self, image_id: str) -> Known | None:
        path = self._path(image_id)
        if not os.path.lexists(path) or not self._trusted_directory():
            return None
        try:
            data = read_own_file(path, MAX_CACHE_BYTES)
        except UntrustedFileError as e:
            log.warning("%s: the cached manifest is not read (%s); asking the service", path, e.why)
            return None
        if data is None:
            return None
        try:
            doc = json.loads(data)
            digest = doc["digest"]
            envelope = None if doc["envelope"] is None else Envelope.model_validate(doc["envelope"])
            if doc["image_id"] != image_id or (digest is None) != (envelope is None):
                raise ValueError("inconsistent entry")
            if digest is not None and not _DIGEST.match(digest):
                raise ValueError(f"bad digest {digest!r}")
            return Known(image_id, digest, envelope, str(doc["fetched_at"]))
        except (ValueError, KeyError, TypeError, ValidationError) as e:
            log.warning(
                "%s: the cached manifest is corrupt (%s); removed, asking the service", path, e
            )
            path.unlink(missing_ok=True)
            return None

    def _trusted_directory(self) -> bool:
        """Whether the directory (and the one above it) may hold this cache: an entry planted
        there could hide an image's manifest or put back an older one. Said once."""
        distrust = untrusted_directory(self.directory)
        if distrust is not None and not self._distrust_said:
            self._distrust_said = True
            where, why = distrust
            log.warning(
                "%s: the manifest cache is not used (%s); asking the service each time: make "
                "it this user's, writable by nobody else and no symbolic link",
                where,
                why,
            )
        return distrust is None

    def refresh(self, image_id: str) -> Known:
        """Ask the service for the newest manifest of ``image_id`` and remember it.

        Raises:
            ServiceDownError: the service could not be asked.
            ServerError: the service refused (a 4xx: a bad token); the caller reports it.
        """
        with _asking():
            found = self._client.manifests_for(image_id)
        previous = self.get(image_id)
        if not found:
            known = Known(image_id, None, None, _now())
        else:
            digest = str(found[0].get("digest", ""))
            if previous is not None and previous.digest == digest:
                return previous
            with _asking():
                detail = self._client.manifest(digest)
            try:
                envelope = Envelope.model_validate(detail["envelope"])
            except (KeyError, TypeError, ValidationError) as e:
                raise ServerError(
                    f"{self._server}/v1/manifests/{digest}: the answer carries no valid envelope"
                ) from e
            known = Known(image_id, digest, envelope, _now())
        if previous is None or previous.digest != known.digest:
            self._store(known)
        with self._lock:
            self._known[image_id] = known
        return known

    def _store(self, known: Known) -> None:
        document = {
            "image_id": known.image_id,
            "digest": known.digest,
            "envelope": None if known.envelope is None else json.loads(known.envelope.to_json()),
            "fetched_at": known.fetched_at,
        }
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not self._trusted_directory():
                return
            write_atomic(
                self._path(known.image_id),
                json.dumps(document, sort_keys=True).encode(),
                force=True,
                mode=0o600,
            )
        except (OSError, LockdError) as e:
            log.warning("cannot cache the manifest of %s on disk: %s", known.image_id, e)

    def opened(self, known: Known) -> Opened | None:
        """``known`` with its signature checked (once per manifest); None when the service
        holds no manifest for the image.

        Raises:
            ManifestError: the stored payload is not a lockd Statement.
        """
        if known.digest is None:
            return None
        with self._lock:
            cached = self._opened.get(known.digest)
        if cached is not None:
            return cached
        source = f"{self._server}/v1/manifests/{known.digest}"
        opened = open_known(known, self._trusted, source)
        with self._lock:
            self._opened[known.digest] = opened
        return opened
