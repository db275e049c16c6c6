"""The transparency log's part of an audit bundle, checked offline.

An audit entry the bundle relies on (the manifest's own, each report's) is a leaf of the
service's log: its Merkle tree (RFC 9162, lockd.trust.merkle) whose tree heads the log key signs
as C2SP checkpoints (lockd.trust.checkpoint). A bundle carries, beside ``audit.json``:

- ``log/checkpoint.note``: the signed checkpoint the service served at export, as served;
- ``log/log.vkey``: the log's verifier key (``<name>+<key ID>+<base64 key>``) the service
  named at export;
- ``log/inclusion.json``: for each relied-on entry, its inclusion proof in that checkpoint's
  tree (``{"size": N, "proofs": {"<seq>": [hex hashes]}}``; entry ``seq`` is leaf ``seq - 1``,
  its leaf data the canonical JSON of its hashed fields, as the chain hashes it).

:func:`check_log` checks that the checkpoint is signed by the key it is given (``--log-key``:
*pinned*), else by the key the bundle carries (said to be *not pinned*: whoever re-made the
bundle could have made that key too), and that each relied-on entry is in the signed tree.
Pure: no I/O, but for :func:`fetch_log_proof` (export's, through the client).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lockd.errors import InputError, LockdError, ServerError
from lockd.trust.auditlog import entry_leaf_hash
from lockd.trust.checkpoint import LogVerifier, NoteError, open_checkpoint
from lockd.trust.merkle import verify_inclusion

if TYPE_CHECKING:
    from lockd.client import Client

__all__ = [
    "CHECKPOINT",
    "INCLUSION",
    "KEY",
    "LOG_FILES",
    "LogCheck",
    "LogProof",
    "LogProofFailedError",
    "check_log",
    "fetch_log_proof",
    "log_files",
]

CHECKPOINT = "log/checkpoint.note"
KEY = "log/log.vkey"
INCLUSION = "log/inclusion.json"
LOG_FILES = (CHECKPOINT, KEY, INCLUSION)
MAX_PROOF_HASHES = 128  # a tree of 2**63 leaves needs at most 63
_HEX = re.compile("[0-9a-f]{64}")


class LogProofFailedError(LockdError):
    """The bundle's transparency-log proof does not hold (exit 1: the bundle is refused)."""

    exit_code = 1


@dataclass(frozen=True)
class LogProof:
    """What export fetched: the signed checkpoint as served, the key the service named, and
    the proofs (hashes) of the relied-on entries in the checkpoint's tree, by seq."""

    note: bytes
    key: LogVerifier
    size: int
    proofs: Mapping[int, Sequence[bytes]]


def log_files(proof: LogProof) -> dict[str, bytes]:
    """The bundle's log files (pure)."""
    inclusion = {
        "size": proof.size,
        "proofs": {str(seq): [h.hex() for h in hashes] for seq, hashes in proof.proofs.items()},
    }
    return {
        CHECKPOINT: proof.note,
        KEY: f"{proof.key}\n".encode(),
        INCLUSION: (json.dumps(inclusion, indent=2, sort_keys=True) + "\n").encode(),
    }


@dataclass(frozen=True)
class LogCheck:
    message: str
    key: str  # the verifier key that checked the checkpoint's signature
    pinned: bool  # given by the person checking (--log-key), not taken from the bundle


def _bundled_key(files: Mapping[str, bytes]) -> LogVerifier:
    try:
        return LogVerifier.parse(files[KEY].decode("utf-8").strip())
    except UnicodeDecodeError:
        raise InputError(f"{KEY} is not a log verifier key (not UTF-8)") from None
    except NoteError as e:
        raise InputError(f"{KEY}: {e}") from e


def _proofs(files: Mapping[str, bytes], size: int) -> dict[int, list[bytes]]:
    try:
        doc = json.loads(files[INCLUSION])
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise InputError(f"{INCLUSION} is not JSON ({e})") from e
    proofs = doc.get("proofs") if isinstance(doc, dict) else None
    if not isinstance(proofs, dict) or doc.get("size") != size:
        raise InputError(
            f"{INCLUSION} does not hold proofs in the checkpoint's tree of size {size} "
            '({"size": N, "proofs": {"<seq>": [hex hashes]}})'
        )
    found: dict[int, list[bytes]] = {}
    for seq, hashes in proofs.items():
        if (
            not re.fullmatch("[1-9][0-9]{0,18}", seq)
            or not isinstance(hashes, list)
            or len(hashes) > MAX_PROOF_HASHES
            or not all(isinstance(h, str) and _HEX.fullmatch(h) for h in hashes)
        ):
            raise InputError(
                f"{INCLUSION}: the proof of {seq[:40]!r} is not a list of at most "
                f"{MAX_PROOF_HASHES} hex SHA-256 hashes under an entry's seq"
            )
        found[int(seq)] = [bytes.fromhex(h) for h in hashes]
    return found


def check_log(
    files: Mapping[str, bytes],
    entries: Mapping[int, Mapping[str, Any]],
    seqs: Sequence[int],
    pinned: LogVerifier | None,
) -> LogCheck:
    """Check the bundle's log files: the checkpoint is signed by ``pinned`` (else by the key
    the bundle carries) and each entry of ``seqs`` (from ``entries``, by seq) is in its tree.

    Raises:
        LockdError: what does not hold, naming the file or entry (an InputError for a
            malformed file, NoteVerificationError for a signature, ProofError for a proof).
    """
    if not seqs:  # a check that proves nothing must not read as one that holds
        raise InputError("no audit entry to prove in the log: the bundle relies on none")
    missing = [name for name in LOG_FILES if name not in files]
    if missing:
        raise InputError(
            f"{', '.join(missing)} missing: the bundle carries no whole transparency-log proof"
        )
    bundled = _bundled_key(files)
    key = pinned or bundled
    try:
        checkpoint = open_checkpoint(files[CHECKPOINT], key)
    except LockdError as e:
        raise LogProofFailedError(f"{CHECKPOINT}: {e}") from e
    proofs = _proofs(files, checkpoint.size)
    for seq in seqs:
        entry = entries.get(seq)
        if entry is None:
            raise InputError(f"audit entry {seq} is not in audit.json: nothing to prove")
        if seq not in proofs:
            raise InputError(f"{INCLUSION} holds no proof for audit entry {seq}")
        if seq > checkpoint.size:
            raise LogProofFailedError(
                f"audit entry {seq} is past the checkpoint's tree of {checkpoint.size} entries"
            )
        try:
            leaf = entry_leaf_hash(entry)
        except KeyError as e:
            raise InputError(f"audit.json: entry {seq} lacks the field {e.args[0]}") from e
        except ValueError as e:  # text that is no Unicode
            raise InputError(f"audit.json: entry {seq} cannot be hashed ({e})") from e
        try:
            verify_inclusion(seq - 1, checkpoint.size, leaf, proofs[seq], checkpoint.root)
        except LockdError as e:
            raise LogProofFailedError(f"audit entry {seq}: {e}") from e
    listed = ", ".join(map(str, seqs))
    if pinned is not None:
        signer = f"signed by the pinned key {pinned}"
        if str(bundled) != str(pinned):
            signer += f" (the bundle names another key, {bundled}: ignored)"
    else:
        signer = (
            f"signed by {bundled}, the key the bundle carries, NOT pinned: compare it with the "
            "log's published key, or give --log-key"
        )
    message = (
        f"audit entries {listed} are in the log {checkpoint.origin!r} of {checkpoint.size} "
        f"entries (root {checkpoint.root.hex()}), its checkpoint {signer}"
    )
    return LogCheck(message, str(key), pinned is not None)


def fetch_log_proof(
    client: Client,
    entries: Mapping[int, Mapping[str, Any]],
    seqs: Sequence[int],
    pinned: LogVerifier | None = None,
) -> LogProof | None:
    """The service's checkpoint and the proofs of ``seqs`` in its tree, each checked here
    against ``pinned`` (else the key the service names) and the entries fetched; None from a
    service without a log key (it answers 404).

    Raises:
        ServerError: the service cannot be reached or answers something unusable, its
            checkpoint is not signed by the key, does not cover an entry yet, or a proof does
            not verify (a bundle of it would not).
    """
    where = f"{client.base_url}/v1/audit"
    try:
        served = client.audit_log_key()
    except ServerError as e:
        if e.status == 404:
            return None
        raise
    key = pinned or served
    note = client.audit_checkpoint()
    try:
        checkpoint = open_checkpoint(note, key)
    except LockdError as e:
        raise ServerError(f"{where}/checkpoint: {e}; a bundle of it would not verify") from e
    proofs: dict[int, list[bytes]] = {}
    for seq in seqs:
        if seq > checkpoint.size:
            raise ServerError(
                f"{where}/checkpoint: the log's checkpoint of {checkpoint.size} entries does not "
                f"cover audit entry {seq} yet; export again in a moment"
            )
        proofs[seq] = client.inclusion_proof(seq - 1, checkpoint.size)
        try:
            verify_inclusion(
                seq - 1,
                checkpoint.size,
                entry_leaf_hash(entries[seq]),
                proofs[seq],
                checkpoint.root,
            )
        except (LockdError, KeyError, ValueError) as e:
            raise ServerError(
                f"{where}/proof/inclusion: the proof of audit entry {seq} does not verify "
                f"({e}); a bundle of it would not"
            ) from e
    return LogProof(note, key, checkpoint.size, proofs)
