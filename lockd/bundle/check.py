"""Reading an audit bundle (bounded: lockd.bundle.archive) and checking it offline (pure)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lockd.bundle.layout import FORMAT, INDEX, ReliedOn, audit_seq, relied_on, sha256_hex
from lockd.errors import LockdError
from lockd.trust.statement import canonical_json

if TYPE_CHECKING:
    from lockd.bundle.logproof import LogCheck
    from lockd.trust.checkpoint import LogVerifier
    from lockd.trust.keys import PublicKey
    from lockd.trust.signed import Trust

__all__ = [
    "BundleCheck",
    "BundleVerdict",
    "check_files",
    "read_bundle",
    "render_verdict",
    "verify_bundle",
]


# --- reading (I/O, refusing unsafe archives) ---------------------------------------------------


def read_bundle(path: Path) -> tuple[dict[str, bytes], list[str]]:
    """The files of a bundle (nothing is written to disk) and the members refused as unsafe,
    every header's declared size bounded before it is read (:mod:`lockd.bundle.archive`).

    Raises:
        InputError: the file cannot be read, is not a gzip-compressed tar archive, is truncated
            or malformed, or declares a header or member past the limits.
    """
    from lockd.bundle.archive import read_tar_gz

    return read_tar_gz(path)


# --- checking (pure) -------------------------------------------------------------------------


@dataclass(frozen=True)
class BundleCheck:
    id: str
    ok: bool
    message: str


@dataclass(frozen=True)
class BundleVerdict:
    digest: str | None
    keyids: list[str]
    checks: list[BundleCheck] = field(default_factory=list)
    log_key: str | None = None  # the key that checked the log's checkpoint; None: no log check
    log_key_pinned: bool = False  # given by the person checking (--log-key)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failed(self) -> list[BundleCheck]:
        return [c for c in self.checks if not c.ok]


def _load_json(files: Mapping[str, bytes], name: str) -> Any:
    try:
        return json.loads(files[name])
    except KeyError:
        raise _CheckFailedError(f"{name} is missing from the bundle") from None
    except (ValueError, RecursionError) as e:  # not UTF-8 or JSON, too deep, a huge number
        raise _CheckFailedError(f"{name} is not JSON ({e})") from e


class _CheckFailedError(Exception):
    """One check failed: its message."""


def _check_index(files: Mapping[str, bytes], refused: Sequence[str]) -> str:
    if refused:
        raise _CheckFailedError("unsafe archive members refused: " + "; ".join(refused))
    index = _load_json(files, INDEX)
    listed = index.get("files") if isinstance(index, dict) else None
    if not isinstance(listed, dict) or index.get("algorithm") != "sha256":
        raise _CheckFailedError(f"{INDEX} is not a lockd bundle index (algorithm sha256, files)")
    problems = []
    for name, data in sorted(files.items()):
        if name == INDEX:
            continue
        want = listed.get(name)
        if want is None:
            problems.append(f"{name} is not listed in {INDEX} (added)")
        elif sha256_hex(data) != want:
            problems.append(f"{name} was altered: its sha256 differs from the one {INDEX} lists")
    problems += [f"{n} is listed in {INDEX} but missing" for n in sorted(listed) if n not in files]
    if files[INDEX] != canonical_json(index) + b"\n":
        problems.append(f"{INDEX} was altered: it is not the canonical JSON lockd writes")
    if problems:
        raise _CheckFailedError("; ".join(problems))
    return f"{len(listed)} files match {INDEX}"


KEYLESS_FLAGS = (
    "--certificate-identity (or --certificate-identity-regexp) and --certificate-oidc-issuer, "
    "and --trusted-root for a private Sigstore instance"
)


def _check_signature(
    files: Mapping[str, bytes], meta: Mapping[str, Any], keyless: Trust | None
) -> tuple[str, list[str]]:
    """A keyless Sigstore bundle is checked against the identities (and trusted root) the
    verifier gives, never against a key; an envelope or a key-based bundle against the
    bundled keys (its keyid printed to compare). Which is which is the signed file's own
    content (a certificate or not), the one reading of it: lockd.trust.signed."""
    from lockd.trust.signed import Trust, parse_signed, verify_signed
    from lockd.trust.sigstore_bundle import SigstoreBundle

    try:
        signed = parse_signed(files["envelope.dsse.json"], "envelope.dsse.json")
    except KeyError:
        raise _CheckFailedError("envelope.dsse.json is missing from the bundle") from None
    except LockdError as e:
        raise _CheckFailedError(str(e)) from e
    bundled = sorted(n for n in files if n.startswith("keys/"))
    certified = isinstance(signed, SigstoreBundle) and signed.signer == "certificate"
    if certified:
        if bundled:
            raise _CheckFailedError(
                f"{', '.join(bundled)}: keys bundled beside a keyless signature (lockd bundles "
                "none: the certificate names the signer)"
            )
        if keyless is None or not keyless.identities:
            raise _CheckFailedError(
                "envelope.dsse.json is a keyless Sigstore bundle: its signature was not checked "
                f"against any identity; give {KEYLESS_FLAGS}"
            )
        trust = keyless
        how = "keyless: its certificate checked against the trusted root and the identity given"
    else:
        trust = Trust(keys=tuple(_bundled_keys(files, bundled)))
        how = "bundled key"
    try:
        signers = verify_signed(signed, trust, source="envelope.dsse.json")
    except LockdError as e:
        raise _CheckFailedError(str(e)) from e
    digest = "sha256:" + sha256_hex(signed.payload_bytes())
    if digest != meta.get("digest"):
        raise _CheckFailedError(
            f"envelope.dsse.json's payload is {digest}, not the {meta.get('digest')} "
            "bundle.json names"
        )
    if certified:
        return f"envelope.dsse.json is signed by {', '.join(signers)} ({how})", signers
    return f"envelope.dsse.json is signed by keyid {', '.join(signers)} ({how})", signers


def _bundled_keys(files: Mapping[str, bytes], names: Sequence[str]) -> list[PublicKey]:
    from lockd.trust import keys

    found: list[PublicKey] = []
    for name in names:
        try:
            key = keys.parse_public_key(files[name], name)
        except LockdError as e:
            raise _CheckFailedError(str(e)) from e
        keyid = keys.keyid(key)
        if name != f"keys/{keyid}.pub":
            raise _CheckFailedError(
                f"{name}: the key's keyid is {keyid}, not the one its name says"
            )
        found.append(key)
    if not found:
        raise _CheckFailedError("the bundle holds no public key (keys/<keyid>.pub)")
    return found


def _check_sbom(files: Mapping[str, bytes]) -> str:
    from lockd.sbom import sbom_json
    from lockd.trust.signed import parse_signed
    from lockd.trust.statement import parse_statement

    envelope = parse_signed(files["envelope.dsse.json"], "envelope.dsse.json")
    subjects, manifest = parse_statement(envelope.payload_bytes(), "envelope.dsse.json")
    bundled = _load_json(files, "sbom.cdx.json")
    expected = json.loads(sbom_json(manifest, subjects))

    def essence(doc: Any) -> Any:
        if not isinstance(doc, dict):
            return None
        metadata = doc.get("metadata") or {}
        return (doc.get("serialNumber"), metadata.get("component"), doc.get("components"))

    older = ""
    if essence(bundled) != essence(expected):
        older = _older_sbom(bundled, expected)
    lock = manifest.lock
    if lock is None:
        if "lock.json" in files:
            raise _CheckFailedError("lock.json is bundled but the signed manifest has no lock")
    elif _load_json(files, "lock.json") != lock.model_dump(mode="json"):
        raise _CheckFailedError("lock.json does not match the signed manifest's lock")
    components = len(bundled.get("components") or [])
    return f"sbom.cdx.json ({components} components) and the lock match the signed manifest{older}"


# Components an SBOM derives from facts of the manifest (not its distributions): a newer lockd
# may derive more of them, or more about them, than the lockd that wrote a bundle's SBOM.
_DERIVED = "lockd:cuda:"


def _older_sbom(bundled: Any, expected: Mapping[str, Any]) -> str:
    """Whether an SBOM that is not this lockd's for the manifest is an older lockd's that
    agrees with it: the same serial number and subject; each component it lists is one this
    lockd derives, with the same name, version, group, type (and purl where it gives one); it
    leaves out none of the manifest's distributions. The note to add; raises when not."""

    def components(doc: Any) -> dict[str, dict[str, Any]]:
        listed = doc.get("components") if isinstance(doc, dict) else None
        found = [
            c for c in listed or [] if isinstance(c, dict) and isinstance(c.get("bom-ref"), str)
        ]
        return {c["bom-ref"]: c for c in found}

    def identity(c: Mapping[str, Any]) -> tuple[Any, ...]:
        return (c.get("name"), c.get("version"), c.get("group"), c.get("type"))

    mismatch = "sbom.cdx.json does not match the signed manifest's components"
    if not isinstance(bundled, dict) or (
        bundled.get("serialNumber"),
        (bundled.get("metadata") or {}).get("component"),
    ) != (expected.get("serialNumber"), expected["metadata"]["component"]):
        raise _CheckFailedError(mismatch)
    have, want = components(bundled), components(expected)
    if len(have) != len(bundled.get("components") or []):
        raise _CheckFailedError(mismatch + ": a component without a bom-ref")
    for ref, component in sorted(have.items()):
        derived = want.get(ref)
        if derived is None:
            raise _CheckFailedError(f"{mismatch}: it lists {ref}, which the manifest does not hold")
        purl = component.get("purl")
        if identity(component) != identity(derived) or (purl and purl != derived.get("purl")):
            raise _CheckFailedError(f"{mismatch}: {ref} is not the manifest's")
    left_out = sorted(ref for ref in want if ref not in have)
    hidden = [ref for ref in left_out if not ref.startswith(_DERIVED)]
    if hidden:
        raise _CheckFailedError(f"{mismatch}: it leaves out {', '.join(hidden)}")
    return (
        " (an older lockd's SBOM: it agrees on every component it lists"
        + (f", and leaves out {', '.join(left_out)}, which this lockd derives" if left_out else "")
        + "; their properties were not compared)"
    )


def _audit_entries(files: Mapping[str, bytes]) -> dict[int, Mapping[str, Any]]:
    """audit.json's entries by seq, in order, each seq an integer (:func:`audit_seq`)."""
    entries = _load_json(files, "audit.json")
    if not isinstance(entries, list) or not entries:
        raise _CheckFailedError("audit.json holds no entries")
    by_seq: dict[int, Mapping[str, Any]] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise _CheckFailedError(f"audit.json: entry [{i}] is not an object")
        try:
            by_seq[audit_seq(entry.get("seq"), f"audit.json: entry [{i}]'s seq")] = entry
        except LockdError as e:
            raise _CheckFailedError(str(e)) from e
    if len(by_seq) != len(entries):
        raise _CheckFailedError("audit.json: two entries hold the same seq")
    return by_seq


def _check_chain(files: Mapping[str, bytes], meta: Mapping[str, Any], relied: ReliedOn) -> str:
    from lockd.trust.auditlog import entry_hash

    by_seq = _audit_entries(files)
    previous: Mapping[str, Any] | None = None
    for seq, entry in by_seq.items():
        try:
            computed = entry_hash(entry)
        except KeyError as e:
            raise _CheckFailedError(f"audit.json: entry {seq} lacks the field {e.args[0]}") from e
        if entry.get("hash") != computed:
            raise _CheckFailedError(
                f"audit.json: entry {seq} was edited: its content no longer matches its hash"
            )
        if previous is not None:
            if seq != previous["seq"] + 1:
                raise _CheckFailedError(
                    f"audit.json: entry {previous['seq'] + 1} is missing (next is {seq})"
                )
            if entry.get("prev_hash") != previous["hash"]:
                raise _CheckFailedError(
                    f"audit.json: entry {seq} does not hold the hash of entry {seq - 1}"
                )
        previous = entry
    envelope_body = "sha256:" + sha256_hex(files["envelope.dsse.json"])
    own = by_seq.get(relied.manifest)
    if (
        own is None
        or own.get("action") != "manifest.create"
        or own.get("subject") != meta.get("digest")
        or own.get("body_digest") != envelope_body
    ):
        raise _CheckFailedError(
            "envelope.dsse.json: no audit entry records its creation (audit.json)"
        )
    listed = {name for name, _ in relied.reports}
    unlisted = sorted(n for n in files if n.startswith("reports/") and n not in listed)
    if unlisted:
        raise _CheckFailedError(f"{', '.join(unlisted)}: not listed in bundle.json")
    for name, seq in relied.reports:
        if name not in files:
            raise _CheckFailedError(f"{name} is missing from the bundle")
        covering = by_seq.get(seq)
        body = "sha256:" + sha256_hex(files[name])
        if covering is None or covering.get("action") != "verification.create":
            raise _CheckFailedError(f"{name}: its audit entry {seq} is not in audit.json")
        if covering.get("body_digest") != body:
            raise _CheckFailedError(f"{name}: its digest is not the one audit entry {seq} holds")
    first, last = min(by_seq), max(by_seq)
    return (
        f"audit.json entries {first}-{last} chain correctly; they cover the manifest (entry "
        f"{relied.manifest}) and {len(relied.reports)} report(s); last hash "
        f"{by_seq[last]['hash']}"
    )


def check_files(
    files: Mapping[str, bytes],
    refused: Sequence[str] = (),
    log_key: LogVerifier | None = None,
    keyless: Trust | None = None,
) -> BundleVerdict:
    """Check a bundle's files offline: index, signature (against the bundled key; a keyless
    one against ``keyless``'s identities and trusted root, failing without them), SBOM and
    lock, audit chain and reports, and the transparency log's proof when the bundle carries
    one or ``log_key`` is given (which it then must be signed by). Every check runs; each
    failure names its file."""
    from lockd.bundle.logproof import LOG_FILES

    checks: list[BundleCheck] = []
    keyids: list[str] = []
    digest: str | None = None
    log: list[LogCheck] = []

    def run(check_id: str, step: Any) -> None:
        try:
            checks.append(BundleCheck(check_id, True, step()))
        except _CheckFailedError as e:
            checks.append(BundleCheck(check_id, False, str(e)))
        except LockdError as e:
            checks.append(BundleCheck(check_id, False, e.diagnostics()))

    pinned = None if log_key is None else str(log_key)
    run("files", lambda: _check_index(files, refused))
    try:
        meta = _load_json(files, "bundle.json")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise _CheckFailedError(f"bundle.json: not a {FORMAT} description")
        digest = str(meta.get("digest"))
        relied = relied_on(meta)
    except (_CheckFailedError, LockdError) as e:  # nothing else can be checked without it
        checks.append(BundleCheck("bundle", False, str(e)))
        return BundleVerdict(digest, keyids, checks, pinned, log_key is not None)

    def signature() -> str:
        message, signers = _check_signature(files, meta, keyless)
        keyids.extend(signers)
        return message

    def transparency_log() -> str:
        log.append(_check_log(files, relied, log_key))
        return log[0].message

    run("signature", signature)
    if "envelope.dsse.json" in files:
        run("sbom", lambda: _check_sbom(files))
        run("audit", lambda: _check_chain(files, meta, relied))
    if log_key is not None or any(name in files for name in LOG_FILES):
        run("log", transparency_log)
    return BundleVerdict(
        digest,
        keyids,
        checks,
        # the pinned key even where the log check failed: the verdict says what it was held to
        log_key=log[0].key if log else pinned,
        log_key_pinned=log_key is not None,
    )


def _check_log(
    files: Mapping[str, bytes], relied: ReliedOn, log_key: LogVerifier | None
) -> LogCheck:
    from lockd.bundle.logproof import check_log

    return check_log(files, _audit_entries(files), relied.seqs, log_key)


def verify_bundle(
    path: Path, log_key: LogVerifier | None = None, keyless: Trust | None = None
) -> BundleVerdict:
    """Read and check a bundle file offline (``log_key``: the log's key, pinned; ``keyless``:
    the identities and trusted root a keyless signature is checked against).

    Raises:
        InputError: the file cannot be read, is not a gzip-compressed tar archive, is truncated
            or malformed, or declares a header or member past the limits.
    """
    files, refused = read_bundle(path)
    return check_files(files, refused, log_key, keyless)


def _is_keyid(signer: str) -> bool:
    return len(signer) == 64 and all(c in "0123456789abcdef" for c in signer)


def render_verdict(verdict: BundleVerdict, source: str) -> str:
    lines = [f"{source}: audit bundle of {verdict.digest or '(unknown manifest)'}"]
    for check in verdict.checks:
        lines.append(f"  {'ok  ' if check.ok else 'FAIL'} {check.id:<9} {check.message}")
    if not verdict.ok:
        lines.append(f"the bundle does NOT hold: {', '.join(c.id for c in verdict.failed)} failed")
        return "\n".join(lines) + "\n"
    from lockd.trust.signed import signers_text

    lines.append(
        f"the bundle holds: signed by {signers_text(verdict.keyids, width=64)}; "
        + (
            "compare it with the signer's published keyid"
            if all(_is_keyid(s) for s in verdict.keyids)
            else "the identity given"
        )
    )
    if verdict.log_key is None:
        lines.append(
            "no transparency-log proof in it (exported before lockd's log was signed, or from "
            "a service without a log key): its entries are checked against their chain only"
        )
    elif verdict.log_key_pinned:
        lines.append(f"its audit entries are in the log signed by the pinned key {verdict.log_key}")
    else:
        lines.append(
            f"its audit entries are in a log signed by {verdict.log_key}, the key the bundle "
            "carries, NOT pinned: compare it with the log's published key, or give --log-key"
        )
    return "\n".join(lines) + "\n"
