"""Audit bundles: one ``.tar.gz`` that lets anyone check, offline and years later, the
environment behind a published experiment with nothing but lockd.

A bundle holds the signed manifest (the DSSE envelope exactly as the service stored it), the
public key(s) that verified it, the manifest's lock, a CycloneDX SBOM, the verification reports
made against the manifest, the audit-chain entries that cover all of them (a contiguous segment
of the service's hash chain), a README, ``bundle.json`` (what is where) and ``index.json`` (the
sha256 of every other file, canonical JSON).

With a log key, the service's signed checkpoint and the inclusion proofs of the entries the
bundle relies on (:mod:`lockd.bundle.logproof`).

:func:`export_bundle` fetches it all from a service (I/O); :func:`bundle_files` and
:func:`pack` build it (pure); :func:`read_bundle` opens one safely (every header's declared size
bounded before it is read, :mod:`lockd.bundle.archive`; no absolute paths, ``..``, links or
oversized members; nothing is extracted); :func:`check_files` checks it (pure; both in
:mod:`lockd.bundle.check`).
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lockd import __version__
from lockd.bundle.check import (
    BundleCheck,
    BundleVerdict,
    check_files,
    read_bundle,
    render_verdict,
    verify_bundle,
)
from lockd.bundle.layout import FORMAT, INDEX, index_of, sha256_hex
from lockd.errors import InputError, ServerError

if TYPE_CHECKING:
    from lockd.bundle.logproof import LogProof
    from lockd.client import Client
    from lockd.trust.checkpoint import LogVerifier
    from lockd.trust.keys import PublicKey

__all__ = [
    "FORMAT",
    "BundleCheck",
    "BundleVerdict",
    "Exported",
    "ReportItem",
    "bundle_files",
    "check_files",
    "export_bundle",
    "index_of",
    "pack",
    "read_bundle",
    "render_verdict",
    "verify_bundle",
]


def _utc_now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- building (pure) ------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportItem:
    """One stored verification report: its metadata and its exact stored text."""

    id: int
    created_at: str
    actor: str
    source: str
    policy: str | None
    verified: bool
    text: str  # exactly as stored: its sha256 is its audit entry's body_digest


README = """\
# lockd audit bundle

The environment behind `{name}`: the signed lockd manifest `{digest}`,
exported from {server} at {exported_at} by lockd {version}.

| file | what it is |
| --- | --- |
| `envelope.dsse.json` | the signed manifest: a DSSE envelope of an in-toto Statement v1 |
| `keys/<keyid>.pub` | the public key(s) that verified the envelope: compare the keyid |
| `lock.json` | the lock the environment was recorded against (pins, allowed hashes), if any |
| `sbom.cdx.json` | a CycloneDX 1.6 SBOM of the recorded environment |
| `reports/<id>.json` | the verification reports made against the manifest, as stored |
| `audit.json` | the audit hash chain's segment covering the manifest and the reports |
| `bundle.json` | what is where: the digest, the reports and their audit entries |
| `index.json` | the sha256 of every other file (canonical JSON) |

## How to check it

With lockd installed (no network needed):

    lockd audit verify {filename}

It checks that every file matches `index.json`, that the envelope's signature verifies against
the bundled key (and prints its keyid: compare it with the one the signer published), that the
SBOM and the lock match the signed manifest, and that each report's audit entry hashes and
chains correctly. It exits 0 when everything holds and 1 naming what failed.

By hand: `sha256sum` every file against `index.json`; the envelope verifies with cosign
(`cosign verify-blob-attestation --key keys/<keyid>.pub --type custom --signature
envelope.dsse.json ...`) or any DSSE verifier (ECDSA P-256, SHA-256); an audit entry's `hash`
is the sha256 of the canonical JSON (sorted keys, no spaces) of its fields `seq`, `time`,
`actor`, `action`, `subject`, `body_digest` and `prev_hash`, and each entry's `prev_hash` is the
hash of the entry before it. A report's `body_digest` is `sha256:` and the sha256 of its file.

To check that this segment still belongs to the service's chain, compare the last entry's
`hash` (seq {head_seq}: `{head_hash}`) with the service's log (`lockd audit verify --server URL`).
"""

README_LOG = """
## The transparency log

The service's audit log is also a Merkle tree (RFC 9162) whose tree heads its log key signs.
`log/checkpoint.note` is the checkpoint it served at export (C2SP tlog-checkpoint in a signed
note: {size} entries), `log/log.vkey` the key it named, and `log/inclusion.json` the inclusion
proofs of audit entries {seqs} in that tree (entry `seq` is leaf `seq - 1`; a leaf hash is
SHA-256 of a 0x00 byte and the canonical JSON of the entry's hashed fields). Check them against
the log key the service's operator published, not only the bundled one:

    lockd audit verify {filename} --log-key KEY
"""

README_KEYLESS = """
## A keyless signature

`envelope.dsse.json` is a keyless Sigstore bundle: a short-lived certificate names its signer
(an OIDC identity), and a transparency-log entry proves when it signed. No key is bundled. Check
it for the identity you expect (the Sigstore trusted root: the public-good one, or give
`--trusted-root`):

    lockd audit verify {filename} --certificate-identity WHO --certificate-oidc-issuer ISSUER
"""


def _json(value: object) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode("utf-8")


def bundle_files(
    *,
    digest: str,
    name: str,
    labels: Mapping[str, str],
    server: str,
    exported_at: str,
    envelope: bytes,
    public_keys: Sequence[PublicKey],
    reports: Sequence[ReportItem],
    entries: Sequence[Mapping[str, Any]],
    filename: str = "bundle.tar.gz",
    log: LogProof | None = None,
) -> dict[str, bytes]:
    """Every file of a bundle, ``index.json`` included (pure: the caller fetched the parts).

    ``envelope`` is the envelope's JSON exactly as the service stored it; ``entries`` the audit
    entries from the manifest's own entry to the last report's, contiguous; ``log`` the
    transparency log's checkpoint, key and proofs of the relied-on entries (none from a
    service without a log key).

    Raises:
        ManifestError: the envelope does not carry a lockd Statement.
        InputError: an entry covering the manifest or a report is missing from ``entries``.
    """
    from lockd.sbom import sbom_json
    from lockd.trust import keys
    from lockd.trust.signed import parse_signed
    from lockd.trust.sigstore_bundle import SigstoreBundle
    from lockd.trust.statement import parse_statement

    parsed = parse_signed(envelope, f"manifest {digest}")  # as pushed: envelope or bundle
    subjects, manifest = parse_statement(parsed.payload_bytes(), f"manifest {digest}")
    manifest_seq = _entry_for(entries, "manifest.create", digest, "sha256:" + sha256_hex(envelope))
    if manifest_seq is None:
        raise InputError(
            f"manifest {digest}: no audit entry in the segment records its creation; export "
            "the segment from the manifest's own entry"
        )
    files: dict[str, bytes] = {"envelope.dsse.json": envelope}
    keyids = []
    for key in public_keys:
        keyid = keys.keyid(key)
        keyids.append(keyid)
        files[f"keys/{keyid}.pub"] = keys.public_pem(key)
    if manifest.lock is not None:
        files["lock.json"] = _json(manifest.lock.model_dump(mode="json"))
    files["sbom.cdx.json"] = sbom_json(manifest, subjects).encode("utf-8")
    listed = []
    for report in sorted(reports, key=lambda r: r.id):
        data = report.text.encode("utf-8")
        seq = _entry_for(entries, "verification.create", None, "sha256:" + sha256_hex(data))
        if seq is None:
            raise InputError(
                f"report {report.id}: no audit entry in the segment holds its digest; the "
                "service's stored report and its audit entry disagree"
            )
        path = f"reports/{report.id}.json"
        files[path] = data
        listed.append(
            {
                "file": path,
                "id": report.id,
                "created_at": report.created_at,
                "actor": report.actor,
                "source": report.source,
                "policy": report.policy,
                "verified": report.verified,
                "audit_seq": seq,
            }
        )
    files["audit.json"] = _json([dict(e) for e in entries])
    if log is not None:
        from lockd.bundle.logproof import log_files

        files.update(log_files(log))
    head = entries[-1]
    files["bundle.json"] = _json(
        {
            "format": FORMAT,
            "digest": digest,
            "name": name,
            "labels": dict(labels),
            "subjects": [f"{s.name} sha256:{s.digest['sha256']}" for s in subjects],
            "server": server,
            "exported_at": exported_at,
            "exported_by": f"lockd {__version__}",
            "keyids": keyids,
            "manifest_audit_seq": manifest_seq,
            "reports": listed,
        }
    )
    readme = README.format(
        name=name,
        digest=digest,
        server=server,
        exported_at=exported_at,
        version=__version__,
        filename=filename,
        head_seq=head["seq"],
        head_hash=head["hash"],
    )
    if isinstance(parsed, SigstoreBundle) and parsed.signer == "certificate":
        readme += README_KEYLESS.format(filename=filename)
    if log is not None:
        readme += README_LOG.format(
            size=log.size, seqs=", ".join(map(str, sorted(log.proofs))), filename=filename
        )
    files["README.md"] = readme.encode("utf-8")
    files[INDEX] = index_of(files)
    return files


def _entry_for(
    entries: Sequence[Mapping[str, Any]], action: str, subject: str | None, body: str
) -> int | None:
    for entry in entries:
        if entry.get("action") != action or entry.get("body_digest") != body:
            continue
        if subject is None or entry.get("subject") == subject:
            seq = entry.get("seq")
            return seq if isinstance(seq, int) else None
    return None


def pack(files: Mapping[str, bytes]) -> bytes:
    """A deterministic ``.tar.gz`` of ``files`` (sorted, mtime 0, owner 0, mode 0644)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            data = files[name]
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


# --- exporting (I/O) --------------------------------------------------------------------------


@dataclass(frozen=True)
class Exported:
    path: Path
    digest: str
    files: int
    reports: int
    keyids: list[str]  # none: a keyless signature (its certificate names the signer)
    log: tuple[int, str] | None = None  # the log checkpoint's size and key; None: no log key


def _report_text(report: Mapping[str, Any], source: str) -> str:
    from pydantic import ValidationError

    from lockd.model.report import Report

    try:
        return Report.model_validate(report).model_dump_json(exclude_none=True)
    except ValidationError as e:
        raise ServerError(f"{source}: the answer carries no valid report ({e})") from e


def export_bundle(
    client: Client,
    digest: str,
    output: Path,
    *,
    extra_keys: Sequence[PublicKey] = (),
    force: bool = False,
    log_key: LogVerifier | None = None,
) -> Exported:
    """Fetch manifest ``digest``, its signing keys, its reports and the audit entries covering
    them from the service, check them here, and write the bundle to ``output``; with the
    log's checkpoint and the inclusion proofs of the entries it relies on when the service
    has a log key (checked against ``log_key`` when given, else the one it names).

    Raises:
        ServerError: the service cannot be reached, holds no such manifest, its audit
            chain does not hold, or its log's checkpoint or proofs do not (a bundle of it
            would not verify).
        SignatureError: the envelope does not verify against the service's keys.
        OutputExistsError: ``output`` exists and ``force`` is false.
    """
    from lockd.bundle.layout import relied_on
    from lockd.bundle.logproof import fetch_log_proof
    from lockd.client import signed_of
    from lockd.fileio import refuse_existing, write_atomic
    from lockd.trust import dsse, keys
    from lockd.trust.signed import envelope_of
    from lockd.trust.sigstore_bundle import SigstoreBundle

    refuse_existing(output, force=force)
    where = f"{client.base_url}/v1/manifests/{digest}"
    detail = client.manifest(digest)
    signed = signed_of(detail, where)  # a Sigstore bundle when pushed as one
    envelope = envelope_of(signed)
    stored = signed.to_json()
    signing: list[PublicKey] = []
    if not (isinstance(signed, SigstoreBundle) and signed.signer == "certificate"):
        # A keyless bundle carries its certificate and log entry (the service lists the
        # identity among its signers: no key to fetch); audit verify checks it under the
        # identity policy its verifier gives.
        found = list(extra_keys)
        for keyid in detail.get("keyids") or []:
            if any(keys.keyid(k) == keyid for k in found):
                continue
            answer = client.public_key(str(keyid))
            pem = str(answer.get("pem", "")).encode()
            found.append(keys.parse_public_key(pem, f"key {keyid}"))
        signers = dsse.verify(envelope, found, source=where)
        signing = [k for k in found if keys.keyid(k) in signers]
    subjects = [s["digest"]["sha256"] for s in detail.get("subjects") or []]
    reports: dict[int, ReportItem] = {}
    for subject in subjects:
        for v in client.verifications("sha256:" + subject):
            report = v.get("report") or {}
            path = str((report.get("manifest") or {}).get("path") or "")
            if v.get("manifest_digest") != digest and not path.endswith("/" + digest):
                continue
            reports[int(v["id"])] = ReportItem(
                id=int(v["id"]),
                created_at=str(v["created_at"]),
                actor=str(v["actor"]),
                source=str(v["source"]),
                policy=v.get("policy"),
                verified=bool(v["verified"]),
                text=_report_text(report, f"{client.base_url}/v1/verifications/{v['id']}"),
            )
    entries = _covering_entries(client, digest, stored, reports.values())
    parts: dict[str, Any] = {
        "digest": digest,
        "name": str(detail.get("name", "")),
        "labels": dict(detail.get("labels") or {}),
        "server": client.base_url,
        "exported_at": _utc_now(),
        "envelope": stored,
        "public_keys": signing,
        "reports": list(reports.values()),
        "entries": entries,
        "filename": output.name,
    }
    files = bundle_files(**parts)
    seqs = relied_on(json.loads(files["bundle.json"])).seqs
    log = fetch_log_proof(client, {e["seq"]: e for e in entries}, seqs, log_key)
    if log is not None:
        files = bundle_files(**parts, log=log)
    write_atomic(output, pack(files), force=force)
    return Exported(
        output,
        digest,
        len(files),
        len(reports),
        [keys.keyid(k) for k in signing],
        None if log is None else (log.size, str(log.key)),
    )


def _covering_entries(
    client: Client, digest: str, envelope: bytes, reports: Iterable[ReportItem]
) -> list[dict[str, Any]]:
    """The whole chain is fetched and checked; the segment from the manifest's entry to the
    newest report's entry is kept."""
    from lockd.trust.auditlog import ChainChecker

    checker = ChainChecker()
    chain: list[dict[str, Any]] = []
    for entry in client.audit_entries():
        checker.add(entry)
        chain.append(dict(entry))
    verdict = checker.result()
    if not verdict.ok:
        raise ServerError(
            f"{client.base_url}: the audit chain does not hold at entry {verdict.first_bad} "
            f"({verdict.reason}); a bundle of it would not verify"
        )
    bodies = {"sha256:" + sha256_hex(r.text.encode("utf-8")): r for r in reports}
    envelope_body = "sha256:" + sha256_hex(envelope)
    first = next(
        (
            i
            for i, e in enumerate(chain)
            if e.get("action") == "manifest.create"
            and e.get("subject") == digest
            and e.get("body_digest") == envelope_body
        ),
        None,
    )
    if first is None:
        raise ServerError(
            f"{client.base_url}: no audit entry records the creation of {digest} with the "
            "stored envelope's digest"
        )
    last = first
    for i, e in enumerate(chain):
        if e.get("action") == "verification.create" and e.get("body_digest") in bodies:
            last = max(last, i)
    return chain[first : last + 1]
