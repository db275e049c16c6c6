"""What the service does, apart from HTTP: accept trusted envelopes, compare observations with
them, keep reports, answer who a token is. Raises LockdError subclasses; the routes turn them
into HTTP answers.

The hot path (``POST /v1/verifications`` with an observation) parses and checks a stored
envelope once per process: trusted manifests are cached by payload digest (content-addressed,
so an entry never goes stale), policies by file modification time, tokens' principals briefly.
Its reports are stored by group commit (lockd.server.groupcommit): the requests that arrive
together share one transaction, and each is answered after that transaction commits.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from starlette.concurrency import run_in_threadpool

from lockd.errors import InputError, LockdError, PolicyError, SignatureError
from lockd.fileio import untrusted_directory
from lockd.judgement.policy import POLICY_NAME, Policy, default_policy, find_policy, parse_policy
from lockd.judgement.reporting import build_report, manifest_reference, target_summary
from lockd.model.manifest import Manifest, Observation
from lockd.model.report import Check, Report, ReportManifest
from lockd.server.groupcommit import GroupCommit
from lockd.server.metrics import Metrics
from lockd.store.engine import is_sqlite
from lockd.store.repository import NewVerification, VerificationRecord
from lockd.trust.checkpoint import Checkpoint, LogSigner, LogVerifier
from lockd.trust.logkey import load_log_signer, log_signer_at
from lockd.trust.signed import (
    Signed,
    Trust,
    envelope_of,
    parse_signed,
    payload_digest,
    signers_text,
    verify_signed,
)
from lockd.trust.statement import Subject, parse_statement, subjects_for

if TYPE_CHECKING:
    from lockd.server.settings import Settings
    from lockd.store.repository import ManifestRecord, Principal, Store
    from lockd.trust.keys import PublicKey

P = ParamSpec("P")
T = TypeVar("T")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MANIFEST_CACHE = 1024
TOKEN_TTL_S = 30.0
POLICY_RECHECK_S = 1.0


class NotFoundError(LockdError):
    """What a request names is not stored (HTTP 404)."""


@dataclass(frozen=True)
class TrustedManifest:
    """A stored envelope whose signature verified in this process, parsed."""

    digest: str
    subjects: list[Subject]
    manifest: Manifest
    keyids: list[str]

    @cached_property
    def signature(self) -> Check:
        """The signature check of every report on this manifest."""
        signers = signers_text(self.keyids, width=64)
        return Check(
            id="signature", status="pass", evidence="signature", message=f"signed by {signers}"
        )

    @cached_property
    def reference(self) -> ReportManifest:
        """How every report on this manifest names it."""
        return manifest_reference(f"/v1/manifests/{self.digest}", self.subjects, self.keyids)


def check_name(name: str) -> str:
    """A manifest name: printable, at most 256 characters, and no path tricks.

    Raises:
        InputError: naming what is wrong.
    """
    if not 0 < len(name) <= 256:
        raise InputError(f"name {name[:40]!r}: give 1 to 256 characters")
    if _CONTROL.search(name) or "\\" in name:
        raise InputError(f"name {name!r}: control characters and backslashes are not allowed")
    if name.startswith("/") or any(part in ("", ".", "..") for part in name.split("/")):
        raise InputError(
            f"name {name!r}: no leading '/', empty, '.' or '..' path segments (names are not paths)"
        )
    return name


def parse_labels(raw: Sequence[str], *, need_value: bool) -> dict[str, str | None]:
    """``key=value`` items (``key`` alone matches any value, when searching).

    Raises:
        InputError: a malformed key or value, a missing value, or a key given twice.
    """
    labels: dict[str, str | None] = {}
    for item in raw:
        key, sep, value = item.partition("=")
        if not _LABEL_KEY.match(key) or ".." in key.split("/"):
            raise InputError(
                f"label {item!r}: the key must be 1-64 of A-Z a-z 0-9 . _ / - (starting with a "
                "letter or digit), then '=value'"
            )
        if not sep:
            if need_value:
                raise InputError(f"label {item!r}: give key=value (e.g. experiment=42)")
            labels[key] = None
            continue
        if len(value) > 256 or _CONTROL.search(value):
            raise InputError(f"label {key!r}: the value must be printable, at most 256 chars")
        if key in labels:
            raise InputError(f"label {key!r} is given twice")
        labels[key] = value
    return labels


class Service:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        trusted: Sequence[PublicKey],
        *,
        trusted_root: bytes | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.trusted = list(trusted)
        # what signatures are checked against: the keys, and keyless identities (settings)
        self.trust = Trust(tuple(trusted), settings.trusted_identities, trusted_root)
        self.metrics = Metrics()
        self._inline = is_sqlite(store.engine)
        self._manifests: OrderedDict[str, TrustedManifest] = OrderedDict()
        self._manifests_lock = threading.Lock()
        # name: (look at the file again after, its mtime (None: no file), the policy)
        self._policies: dict[str, tuple[float, tuple[str, int] | None, Policy]] = {}
        self._tokens: dict[str, tuple[float, Principal]] = {}
        # Reports are stored by group commit: one transaction for the requests that arrive
        # together, each answered after its commit (lockd.server.groupcommit).
        self.commits: GroupCommit[NewVerification, VerificationRecord] = GroupCommit(
            store.add_verifications, self.run
        )
        self.log_signer, self._no_log_key = log_signer_for(settings, store)
        self._checkpoint: tuple[int, bytes, str] | None = None  # size, root, signed note

    async def run(self, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run blocking database work from an async route. On SQLite it runs right here on the
        event loop: writes are serialized by one lock anyway, and a request is a fraction of a
        millisecond of SQLite work, far less than the hop to a worker thread and the GIL
        contention it brings. On PostgreSQL (network round trips) it goes to a worker thread."""
        if self._inline:
            return work(*args, **kwargs)
        return await run_in_threadpool(work, *args, **kwargs)

    # --- trust ------------------------------------------------------------------------------

    def _verify_envelope(self, envelope: Signed, source: str) -> list[str]:
        if not self.trust.keys and not self.trust.identities:
            raise SignatureError(
                f"{source}: this service trusts no keys yet; start it with LOCKD_TRUSTED_KEYS "
                "naming the signers' public key files (or LOCKD_TRUSTED_IDENTITIES)"
            )
        return verify_signed(envelope, self.trust, source=source)

    def accept_manifest(
        self,
        envelope: Signed,
        *,
        name: str | None,
        labels: Mapping[str, str],
        actor: str,
    ) -> tuple[ManifestRecord, bool]:
        """Store an envelope or Sigstore bundle (as it came) that verifies against a trusted key
        or identity and carries a lockd Statement; ``(record, created)``.

        Raises:
            SignatureError: no trusted key signed it.
            ManifestError: the payload is not a lockd in-toto Statement.
            InputError: a bad name.
        """
        digest = payload_digest(envelope)
        keyids = self._verify_envelope(envelope, "the envelope")
        subjects, manifest = parse_statement(envelope.payload_bytes(), "the envelope's payload")
        chosen = check_name(name if name is not None else subjects[0].name[:256])
        record, created = self.store.add_manifest(
            digest=digest,
            name=chosen,
            payload_type=envelope_of(envelope).payloadType,
            envelope=envelope.to_json().decode("utf-8"),
            keyids=keyids,
            subjects=[(s.name, "sha256:" + s.digest["sha256"]) for s in subjects],
            labels=labels,
            actor=actor,
        )
        if created:
            self._remember(TrustedManifest(digest, subjects, manifest, keyids))
        return record, created

    def _remember(self, trusted: TrustedManifest) -> None:
        with self._manifests_lock:
            self._manifests[trusted.digest] = trusted
            self._manifests.move_to_end(trusted.digest)
            while len(self._manifests) > MANIFEST_CACHE:
                self._manifests.popitem(last=False)

    def _cached_manifest(self, digest: str) -> TrustedManifest | None:
        with self._manifests_lock:
            return self._manifests.get(digest)

    def trusted_manifest(self, digest: str) -> TrustedManifest:
        """The stored envelope with this payload digest, checked against today's trusted keys
        (once per process).

        Raises:
            NotFoundError: nothing stored under the digest.
            SignatureError: it no longer verifies (its key is no longer trusted).
        """
        cached = self._cached_manifest(digest)
        if cached is not None:
            return cached
        text = self.store.envelope_of(digest)
        if text is None:
            raise NotFoundError(f"no manifest {digest} is stored")
        source = f"stored manifest {digest}"
        envelope = parse_signed(text.encode("utf-8"), source)
        keyids = self._verify_envelope(envelope, source)
        subjects, manifest = parse_statement(envelope.payload_bytes(), source)
        trusted = TrustedManifest(digest, subjects, manifest, keyids)
        self._remember(trusted)
        return trusted

    # --- policies ---------------------------------------------------------------------------

    def policy(self, name: str) -> Policy:
        """A policy by name: the first of the service's policy folders ($LOCKD_POLICIES) that
        has it, else the shipped one (``default`` falls back to the strict built-in one).
        Reread when its file changes (looked at once a second at most).

        Raises:
            PolicyError: a bad name, no such policy, or a malformed policy file.
        """
        now = time.monotonic()
        cached = self._policies.get(name)
        if cached is not None and now < cached[0]:
            return cached[2]
        if not POLICY_NAME.match(name):
            raise PolicyError(f"policy {name!r}: a policy name is 1-64 of A-Z a-z 0-9 _ -")
        path = find_policy(name, self.settings.policies)
        try:
            stamp = (str(path), path.stat().st_mtime_ns) if path is not None else None
        except FileNotFoundError:
            path, stamp = None, None  # removed since it was found: as if never there
        if path is None and name != "default":
            raise PolicyError(f"no policy named {name!r} among the service's policies")
        if cached is not None and cached[1] == stamp:
            policy = cached[2]
        elif path is None:
            policy = default_policy()
        else:
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise PolicyError(f"policy {name!r}: cannot read {path}: {e}") from e
            policy = parse_policy(text, f"policy {name!r}")
        self._policies[name] = (now + POLICY_RECHECK_S, stamp, policy)
        return policy

    # --- verifications ----------------------------------------------------------------------

    async def judge_observation(
        self, observation: Observation, policy_name: str | None, *, actor: str
    ) -> NewVerification:
        """Compare an observation with the newest trusted manifest for its image: the report,
        as the row to store (nothing is stored here; the caller hands it to :attr:`commits`).
        The database is read on a worker thread on PostgreSQL (see :meth:`run`); the
        comparison runs on the event loop.

        Raises:
            NotFoundError: no manifest is stored for the observation's subjects.
            PolicyError: no such policy.
        """
        chosen = policy_name or "default"
        policy = self.policy(chosen)
        subjects = ["sha256:" + s.digest["sha256"] for s in subjects_for(observation)]
        digest = await self.run(self.store.latest_manifest_digest, subjects)
        if digest is None:
            raise NotFoundError(
                f"no manifest is stored for {subjects[0]} (the observation's "
                f"{'image' if observation.host else 'environment'}); record one and push it "
                "first (lockd push)"
            )
        trusted: TrustedManifest | SignatureError | None = self._cached_manifest(digest)
        if trusted is None:
            try:
                trusted = await self.run(self.trusted_manifest, digest)
            except SignatureError as e:
                trusted = e
        report = self._judge(digest, trusted, observation, policy)
        return NewVerification(
            actor=actor,
            source="server",
            subject=subjects[0],
            manifest_digest=digest,
            policy=chosen,
            verified=report.verified,
            report=report.model_dump_json(exclude_none=True),
        )

    def _judge(
        self,
        digest: str,
        trusted: TrustedManifest | SignatureError,
        observation: Observation,
        policy: Policy,
    ) -> Report:
        target = target_summary(observation.target, observation)
        if isinstance(trusted, SignatureError):
            signature = Check(
                id="signature", status="fail", evidence="signature", message=str(trusted)
            )
            reference = ReportManifest(path=f"/v1/manifests/{digest}")
            return build_report(target, signature, reference, None, policy)
        compared = (trusted.manifest, observation)
        return build_report(target, trusted.signature, trusted.reference, compared, policy)

    def client_report(self, report: Report, *, actor: str) -> NewVerification:
        """The row to store a report a client made (``lockd verify --server``) as, that
        client's claim."""
        image = report.target.get("image_id")
        subject: str | None = image if isinstance(image, str) else None
        if subject is None and report.manifest.subject:
            digest = report.manifest.subject[0].get("digest")
            if isinstance(digest, dict) and isinstance(digest.get("sha256"), str):
                subject = "sha256:" + digest["sha256"]
        if subject is not None and len(subject) > 71:
            subject = None
        return NewVerification(
            actor=actor,
            source="client",
            subject=subject,
            manifest_digest=None,
            policy=None,
            verified=report.verified,
            report=report.model_dump_json(exclude_none=True),
        )

    # --- tokens -----------------------------------------------------------------------------

    def principal(self, token: str) -> Principal | None:
        """Who holds ``token`` (None: nobody). Known tokens are remembered for a few seconds;
        the cache is keyed by the token's hash, never the token."""
        from lockd.store.repository import hash_token

        key = hash_token(token)
        now = time.monotonic()
        cached = self._tokens.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        principal = self.store.principal_for(token)
        if principal is not None:
            if len(self._tokens) > 10_000:
                self._tokens.clear()
            self._tokens[key] = (now + TOKEN_TTL_S, principal)
        return principal

    # --- the audit log's checkpoints ---------------------------------------------------------

    def log_key(self) -> LogVerifier:
        """The log's public key.

        Raises:
            NotFoundError: the service has no log key.
        """
        if self.log_signer is None:
            raise NotFoundError(self._no_log_key)
        return self.log_signer.verifier()

    def checkpoint(self) -> str:
        """The audit log's Merkle tree now, as a signed checkpoint (C2SP tlog-checkpoint). The
        signature is deterministic (Ed25519): a size and root always give the same note.

        Raises:
            NotFoundError: the service has no log key.
        """
        if self.log_signer is None:
            raise NotFoundError(self._no_log_key)
        size, root = self.store.tree_head()
        cached = self._checkpoint
        if cached is not None and cached[:2] == (size, root):
            return cached[2]
        note = Checkpoint(self.log_signer.name, size, root).sign(self.log_signer)
        self._checkpoint = (size, root, note)
        return note


NO_LOG_KEY = "this service signs no audit checkpoints: it has no log key"
SET_LOG_KEY = "Set LOCKD_LOG_KEY to a key file made by `lockd keygen --log-key NAME`"
LOG_KEY_FILE = "lockd-log.key"


def log_signer_for(settings: Settings, store: Store) -> tuple[LogSigner | None, str]:
    """The key the service signs checkpoints with, else why it has none: LOCKD_LOG_KEY's; else,
    for a SQLite file in a directory only this user may write, the one kept beside it (made on
    first start); else none: PostgreSQL's replicas must share one key, which only the operator
    can hand out, and a key in a directory others may write could be theirs.

    Raises:
        KeyFileError: the key file cannot be read, or made.
    """
    if settings.log_key is not None:
        return load_log_signer(settings.log_key), ""
    database = store.engine.url.database
    if not is_sqlite(store.engine) or not database or database == ":memory:":
        return None, (
            f"{NO_LOG_KEY}. {SET_LOG_KEY} (a service on PostgreSQL never makes one itself: its "
            "replicas must share one key)"
        )
    directory = Path(database).parent
    untrusted = untrusted_directory(directory)
    if untrusted is not None:
        return None, (
            f"{NO_LOG_KEY}, and keeps none beside its database: {untrusted[1]}. {SET_LOG_KEY}"
        )
    return log_signer_at(directory / LOG_KEY_FILE), ""
