"""The audit chain: every write and decision of the service, each entry holding the hash of the
one before it, so editing or deleting an entry breaks the chain from that entry on. The same
entries are the leaves of the log's Merkle tree (:func:`entry_leaf_hash`), whose signed
checkpoints make a rewrite of the whole chain visible too (lockd.trust.merkle, .checkpoint).

An entry is ``{seq, time, actor, action, subject, body_digest, prev_hash}``; its ``hash`` is the
sha256 of the canonical JSON of those fields (``prev_hash`` included). The first entry's
``prev_hash`` is :data:`GENESIS`. Pure: the server and the command line check a chain with the
same function, from the database or from ``GET /v1/audit``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from lockd.trust.merkle import leaf_hash
from lockd.trust.statement import canonical_json

GENESIS = "0" * 64
HASHED_FIELDS = ("seq", "time", "actor", "action", "subject", "body_digest", "prev_hash")

__all__ = [
    "GENESIS",
    "HASHED_FIELDS",
    "ChainCheck",
    "ChainChecker",
    "check_chain",
    "entry_bytes",
    "entry_hash",
    "entry_leaf_hash",
]


def entry_bytes(entry: Mapping[str, object]) -> bytes:
    """The canonical JSON of the entry's hashed fields: what its chain hash covers, and its
    leaf's data in the log's Merkle tree (lockd.trust.merkle).

    Raises:
        KeyError: the entry lacks one of :data:`HASHED_FIELDS`.
    """
    return canonical_json({k: entry[k] for k in HASHED_FIELDS})


def entry_hash(entry: Mapping[str, object]) -> str:
    """The hex sha256 of :func:`entry_bytes` (the chain's hash).

    Raises:
        KeyError: the entry lacks one of :data:`HASHED_FIELDS`.
    """
    return hashlib.sha256(entry_bytes(entry)).hexdigest()


def entry_leaf_hash(entry: Mapping[str, object]) -> bytes:
    """The entry's leaf hash in the log's Merkle tree: RFC 9162's ``SHA-256(0x00 ||
    entry_bytes)``; entry ``seq`` is leaf ``seq - 1``.

    Raises:
        KeyError: the entry lacks one of :data:`HASHED_FIELDS`.
    """
    return leaf_hash(entry_bytes(entry))


@dataclass(frozen=True)
class ChainCheck:
    """The verdict on a chain: ``first_bad`` is the seq of the first entry that does not hold
    (``None`` when the chain is whole); ``reason`` says why in words."""

    ok: bool
    entries: int
    first_bad: int | None = None
    reason: str | None = None


class ChainChecker:
    """Checks a chain one entry at a time (so a long log is never held in memory at once)."""

    def __init__(self) -> None:
        self.entries = 0
        self._prev_seq = 0
        self._prev_hash = GENESIS
        self._bad: tuple[int, str] | None = None

    def add(self, entry: Mapping[str, object], data: bytes | None = None) -> None:
        """Take the next entry (in seq order); the first fault found is kept. ``data``: its
        :func:`entry_bytes`, when the caller computed them already (for its Merkle leaf)."""
        self.entries += 1
        if self._bad is not None:
            return
        seq = entry.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool):
            self._bad = (self._prev_seq + 1, f"entry {self._prev_seq + 1} has no integer seq")
            return
        expected = self._prev_seq + 1
        if seq != expected:
            self._bad = (
                expected,
                f"entry {expected} is missing (the next entry is {seq}): an entry was deleted",
            )
            return
        if entry.get("prev_hash") != self._prev_hash:
            # Entry seq-1 hashes to itself but not to what entry seq holds: it was edited and
            # re-hashed (or seq's link was forged); the chain stops holding at seq-1.
            self._bad = (
                max(seq - 1, 1),
                f"entry {seq} does not hold the hash of entry {seq - 1}: entry {seq - 1} was "
                f"edited and re-hashed, or the link in entry {seq} was changed",
            )
            return
        try:
            computed = entry_hash(entry) if data is None else hashlib.sha256(data).hexdigest()
        except KeyError as e:
            self._bad = (seq, f"entry {seq} lacks the field {e.args[0]}")
            return
        except ValueError:  # text that is no Unicode (a lone surrogate): it hashes to nothing
            self._bad = (seq, f"entry {seq} holds text that is not Unicode")
            return
        if entry.get("hash") != computed:
            self._bad = (seq, f"entry {seq} was edited: its content no longer matches its hash")
            return
        self._prev_seq = seq
        self._prev_hash = computed

    def result(self, head: tuple[int, str] | None = None) -> ChainCheck:
        """The verdict; ``head`` (last seq, last hash), when known, also catches the deletion of
        the newest entries, which leaves no gap behind."""
        if self._bad is None and head is not None and head != (self._prev_seq, self._prev_hash):
            head_seq, _ = head
            if head_seq > self._prev_seq:
                self._bad = (
                    self._prev_seq + 1,
                    f"the log ends at entry {self._prev_seq} but its head is entry {head_seq}: "
                    "the newest entries were deleted",
                )
            else:
                self._bad = (
                    head_seq if head_seq > 0 else 1,
                    f"the log's head (entry {head_seq}) does not match its last entry "
                    f"({self._prev_seq}): the head or the log was edited",
                )
        if self._bad is None:
            return ChainCheck(ok=True, entries=self.entries)
        first_bad, reason = self._bad
        return ChainCheck(ok=False, entries=self.entries, first_bad=first_bad, reason=reason)


def check_chain(
    entries: Iterable[Mapping[str, object]], head: tuple[int, str] | None = None
) -> ChainCheck:
    """Check entries given in seq order (see :class:`ChainChecker`)."""
    checker = ChainChecker()
    for entry in entries:
        checker.add(entry)
    return checker.result(head)
