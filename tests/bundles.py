"""Audit bundles for tests and benches: a sample bundle built from parts (no service), and
tar archives written byte by byte, hostile ones included (headers lockd's reader must bound)."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
from typing import Any

from reference_manifests import manifest_a

from lockd.bundle import ReportItem, bundle_files
from lockd.bundle.logproof import LogProof
from lockd.model.report import Check, Report, ReportManifest
from lockd.trust import dsse, keys
from lockd.trust.auditlog import entry_hash
from lockd.trust.checkpoint import Checkpoint, LogSigner
from lockd.trust.merkle import MemoryTree, inclusion_proof, tree_root
from lockd.trust.statement import PAYLOAD_TYPE, make_statement

KEY = keys.generate_private_key()
ENVELOPE = dsse.sign(make_statement(manifest_a()), PAYLOAD_TYPE, KEY).to_json()
DIGEST = "sha256:" + hashlib.sha256(dsse.parse_envelope(ENVELOPE, "t").payload_bytes()).hexdigest()


def _report(verified: bool) -> str:
    return Report(
        verified=verified,
        target={"kind": "container", "ref": "train-1"},
        manifest=ReportManifest(path=f"/v1/manifests/{DIGEST}"),
        checks=[Check(id="signature", status="pass", evidence="signature", message="ok")],
    ).model_dump_json(exclude_none=True)


REPORTS = [
    ReportItem(7, "2026-11-20T10:00:00Z", "ci", "server", "default", True, _report(True)),
    ReportItem(9, "2026-11-21T10:00:00Z", "ci", "client", None, False, _report(False)),
]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def chain(stored: bytes = ENVELOPE) -> list[dict[str, Any]]:
    """Entries 5..9 of a chain (the first four are not in the bundle); ``stored``: the
    manifest's text as the service stored it."""
    bodies = [
        ("manifest.create", DIGEST, "sha256:" + hashlib.sha256(stored).hexdigest()),
        ("token.create:reader", "bob", None),
        ("verification.create", "sha256:" + "1a" * 32, "sha256:" + sha(REPORTS[0].text)),
        ("verification.create", "sha256:" + "3c" * 32, "sha256:" + "0" * 64),
        ("verification.create", "sha256:" + "1a" * 32, "sha256:" + sha(REPORTS[1].text)),
    ]
    return chained(bodies, 5, hashlib.sha256(b"entry 4").hexdigest())


def chained(
    bodies: list[tuple[str, str, str | None]], first: int, prev: str
) -> list[dict[str, Any]]:
    """Audit entries ``first``.. of (action, subject, body_digest), each holding the hash of
    the one before (``prev``: the hash of entry ``first - 1``)."""
    entries: list[dict[str, Any]] = []
    for seq, (action, subject, body) in enumerate(bodies, start=first):
        entry: dict[str, Any] = {
            "seq": seq,
            "time": f"2026-11-2{seq - first}T10:00:00Z",
            "actor": "ci",
            "action": action,
            "subject": subject,
            "body_digest": body,
            "prev_hash": prev,
        }
        entry["hash"] = prev = entry_hash(entry)
        entries.append(entry)
    return entries


def sample_files(**overrides: Any) -> dict[str, bytes]:
    """Every file of the sample bundle (manifest_a signed by KEY, two reports, entries 5..9)."""
    parts: dict[str, Any] = {
        "digest": DIGEST,
        "name": "train:2026.11",
        "labels": {"doi": "10.5281/zenodo.1"},
        "server": "http://127.0.0.1:8080",
        "exported_at": "2026-11-28T09:00:00Z",
        "envelope": ENVELOPE,
        "public_keys": [KEY.public_key()],
        "reports": REPORTS,
        "entries": chain(),
    }
    return bundle_files(**{**parts, **overrides})


# --- the transparency log -----------------------------------------------------------------------

LOG_SIGNER = LogSigner.generate("lockd.test/audit")
RELIED_ON = (5, 7, 9)  # the sample bundle's manifest entry and its two reports' entries


def leaf(entry: dict[str, Any]) -> bytes:
    """RFC 9162's leaf hash of an audit entry, written out here (not lockd's code):
    SHA-256(0x00 || the canonical JSON of its hashed fields)."""
    fields = ("seq", "time", "actor", "action", "subject", "body_digest", "prev_hash")
    data = json.dumps(
        {k: entry[k] for k in fields}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(b"\0" + data.encode()).digest()


def log_entries(segment: list[dict[str, Any]], size: int = 12) -> list[dict[str, Any]]:
    """A log of ``size`` entries holding ``segment`` at its seqs (the others are fillers)."""
    by_seq = {e["seq"]: e for e in segment}
    return [
        by_seq.get(seq)
        or {
            "seq": seq,
            "time": "2026-11-01T00:00:00Z",
            "actor": "svc",
            "action": "token.create:reader",
            "subject": f"filler {seq}",
            "body_digest": None,
            "prev_hash": "0" * 64,
        }
        for seq in range(1, size + 1)
    ]


def log_proof(
    log: list[dict[str, Any]],
    signer: LogSigner = LOG_SIGNER,
    seqs: tuple[int, ...] = RELIED_ON,
) -> LogProof:
    """What export fetches from a service whose log is ``log``: its checkpoint signed by
    ``signer``, the signer's verifier key, the proofs of ``seqs``."""
    tree = MemoryTree(tuple(leaf(e) for e in log))
    size = len(log)
    note = Checkpoint(signer.name, size, tree_root(size, tree)).sign(signer)
    proofs = {seq: inclusion_proof(seq - 1, size, tree) for seq in seqs}
    return LogProof(note.encode(), signer.verifier(), size, proofs)


# --- tar archives byte by byte ----------------------------------------------------------------

BLOCK = 512
END = b"\0" * (2 * BLOCK)


def header(
    name: bytes,
    *,
    kind: bytes = b"0",
    size: int = 0,
    size_field: bytes | None = None,
    magic: bytes = b"ustar\x0000",
    prefix: bytes = b"",
    checksum: bytes | None = None,
    sparse_extended: bool = False,
) -> bytes:
    """One 512-byte ustar header, its checksum computed unless ``checksum`` is given."""
    block = bytearray(BLOCK)
    block[0 : min(len(name), 100)] = name[:100]
    block[100:108] = b"0000644\0"
    block[108:116] = block[116:124] = b"0000000\0"
    block[124:136] = size_field if size_field is not None else b"%011o\0" % size
    block[136:148] = b"00000000000\0"
    block[156:157] = kind
    block[257:265] = magic
    block[345 : 345 + len(prefix)] = prefix
    if sparse_extended:
        block[482] = 1
    block[148:156] = b" " * 8
    block[148:156] = checksum if checksum is not None else b"%06o\0 " % sum(block)
    return bytes(block)


def padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % BLOCK)


def member(name: bytes, data: bytes = b"x", *, kind: bytes = b"0") -> bytes:
    """A header and its data, padded to the block."""
    return header(name, kind=kind, size=len(data)) + padded(data)


def pax_record(key: bytes, value: bytes) -> bytes:
    """One ``"%d key=value\\n"`` record (its length counts its own digits)."""
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length += 1
    return str(length).encode() + body


def extended(kind: bytes, data: bytes) -> bytes:
    """A PAX (``x``/``g``) or GNU long name/link (``L``/``K``) header with its data."""
    return header(b"././@PaxHeader", kind=kind, size=len(data)) + padded(data)


def tar_gz(*parts: bytes, end: bool = True) -> bytes:
    return gzip.compress(b"".join(parts) + (END if end else b""), mtime=0)


def huge_extended_header(kind: bytes = b"x", declared: int = 1 << 30) -> bytes:
    """A .tar.gz of about 1 MB whose first header is a PAX header declaring ``declared`` bytes,
    all of them present (zeros): tarfile reads them whole. Built from concatenated gzip
    members (one per MiB: valid gzip, and no GiB ever held here)."""
    mib = 1 << 20
    assert declared % mib == 0
    zeros = gzip.compress(bytes(mib), mtime=0)
    return gzip.compress(header(b"././@PaxHeader", kind=kind, size=declared), mtime=0) + (
        zeros * (declared // mib)
    )


def run_lockd(*args: object, address_space: int | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m lockd ARGS`` in a child, under an address-space limit (RLIMIT_AS) if given."""

    def limit() -> None:
        import resource

        assert address_space is not None
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    return subprocess.run(
        [sys.executable, "-m", "lockd", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        preexec_fn=None if address_space is None else limit,
    )
