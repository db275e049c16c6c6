"""Verdicts: the manifest the service holds for an image (its DSSE envelope, or the Sigstore
bundle it was pushed as), kept on disk so verdicts go on while the service is away, and
:func:`judge` (pure) — the signature, then ``lockd.judgement.compare`` under the policy, as
``lockd verify --server`` does.

Without ``--key`` or a keyless identity the agent takes the service's word for the signature
(the service only stores manifests that verify against a key or identity it trusts); with
them it checks every manifest here (lockd.trust.signed.verify_signed: keys, or a keyless
bundle's certificate, log entry and identity).
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

from lockd.errors import LockdError, ManifestError, ServerError
from lockd.fileio import UntrustedFileError, read_own_file, untrusted_directory, write_atomic
from lockd.judgement.reporting import build_report, manifest_reference, target_summary
from lockd.model.fleet import MAX_FINDINGS, Verdict
from lockd.model.manifest import Manifest, Observation
from lockd.model.report import Check, Finding, Report, ReportManifest
from lockd.trust.signed import (
    Signed,
    Trust,
    envelope_of,
    parse_signed,
    payload_digest,
    signed_from,
)
from lockd.trust.statement import Subject, parse_statement
from lockd.verify import check_signature

if TYPE_CHECKING:
    from lockd.client import Client
    from lockd.judgement.policy import Policy

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
    """What the agent knows of the manifest for an image: its digest (of the payload) and the
    envelope or bundle the service stores, or that the service holds none (``digest`` None)."""

    image_id: str
    digest: str | None
    signed: Signed | None
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


def _cached_signed(doc: dict[str, object], source: str) -> Signed | None:
    """The manifest of a cache entry: ``signed``, its JSON text as the service stored it (an
    entry written before bundles were read here has ``envelope``, a JSON object).

    Raises:
        ManifestError, KeyError, TypeError: not a well-formed envelope or bundle.
    """
    if "signed" not in doc:
        return None if doc["envelope"] is None else signed_from(doc["envelope"], source)
    text = doc["signed"]
    if text is None:
        return None
    if not isinstance(text, str):
        raise TypeError("signed is not JSON text")
    return parse_signed(text.encode("utf-8"), source)


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


def open_known(known: Known, trusted: Trust, source: str) -> Opened:
    """Check the signature (against ``trusted``'s keys and identities; none: the service's
    word) and parse. A signature not by what is trusted (an unknown key, a keyless identity
    the policy does not name) is a failed signature check, as for ``lockd verify``.

    Raises:
        ManifestError: the payload is not a lockd Statement.
        InputError: keyless, and the sigstore package is missing.
    """
    assert known.digest is not None and known.signed is not None
    if trusted.keys or trusted.identities:
        signature, keyids = check_signature(known.signed, trusted)
    else:
        signature = Check(
            id="signature",
            status="pass",
            evidence="signature",
            message="not checked here (no --key or keyless identity): the service checked it "
            "against its trusted keys and identities when it was pushed",
        )
        keyids = [s.keyid for s in envelope_of(known.signed).signatures if s.keyid]
    statement = None
    if signature.status == "pass":
        statement = parse_statement(known.signed.payload_bytes(), source)
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
    (``DIR/<image hex>.json``: the envelope or bundle as the service stores it), with
    signatures checked once per manifest."""

    def __init__(self, directory: Path, client: Client, trusted: Trust, server: str) -> None:
        self.directory = directory
        self._client = client
        self._trusted = trusted
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
            signed = _cached_signed(doc, str(path))
            if doc["image_id"] != image_id or (digest is None) != (signed is None):
                raise ValueError("inconsistent entry")
            if digest is not None and not _DIGEST.match(digest):
                raise ValueError(f"bad digest {digest!r}")
            if signed is not None and payload_digest(signed) != digest:
                raise ValueError(f"the payload is not {digest}")
            return Known(image_id, digest, signed, str(doc["fetched_at"]))
        except (ValueError, KeyError, TypeError, ManifestError) as e:
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
            where = f"{self._server}/v1/manifests/{digest}"
            with _asking():
                signed = self._client.signed_manifest(digest, where)
            if payload_digest(signed) != digest:
                raise ServerError(f"{where}: the answer's payload is not {digest}")
            known = Known(image_id, digest, signed, _now())
        if previous is None or previous.digest != known.digest:
            self._store(known)
        with self._lock:
            self._known[image_id] = known
        return known

    def _store(self, known: Known) -> None:
        document = {
            "image_id": known.image_id,
            "digest": known.digest,
            "signed": None if known.signed is None else known.signed.to_json().decode("utf-8"),
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
