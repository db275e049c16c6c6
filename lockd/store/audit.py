"""The audit log's reads: its entries, the re-check of its chain and Merkle tree, the tree's
head and proofs. Functions of a connection (the store opens it: a snapshot, so a proof and the
head it is checked against come from one state of the database)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Connection, select

from lockd.errors import InputError, LockdError
from lockd.store import tables as t
from lockd.trust import merkle
from lockd.trust.auditlog import ChainCheck, ChainChecker, entry_bytes
from lockd.trust.merkle import Frontier, Node, leaf_hash

__all__ = [
    "AuditEntry",
    "TreeDamagedError",
    "TreeNodes",
    "check_log",
    "consistency_proof",
    "inclusion_proof",
    "parse_frontier",
    "read_entries",
    "tree_head",
]


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    time: str
    actor: str
    action: str
    subject: str | None
    body_digest: str | None
    prev_hash: str
    hash: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


COLUMNS = (
    t.audit_log.c.seq,
    t.audit_log.c.time,
    t.audit_log.c.actor,
    t.audit_log.c.action,
    t.audit_log.c.subject,
    t.audit_log.c.body_digest,
    t.audit_log.c.prev_hash,
    t.audit_log.c.hash,
)


class TreeDamagedError(LockdError):
    """The stored tree lacks a node or holds a malformed one: the database was edited (the
    service answers 500: the fault is its own, not the request's)."""


def parse_frontier(seq: int, text: str) -> Frontier:
    """The head's frontier column (hex hashes, largest subtree first) as a Frontier of size
    ``seq``.

    Raises:
        TreeDamagedError: it does not hold the hashes a tree of that size has.
    """
    try:
        hashes = [bytes.fromhex(text[i : i + 64]) for i in range(0, len(text), 64)]
    except ValueError:
        hashes = []
    if len(text) != 64 * seq.bit_count() or len(hashes) != seq.bit_count():
        raise TreeDamagedError(
            f"the audit head's Merkle frontier does not fit a log of {seq} entries: the "
            "database was edited or not migrated (lockd serve migrates)"
        )
    return Frontier(seq, hashes)


def read_entries(conn: Connection, *, after: int = 0, limit: int = 1000) -> list[AuditEntry]:
    rows = conn.execute(
        select(*COLUMNS).where(t.audit_log.c.seq > after).order_by(t.audit_log.c.seq).limit(limit)
    ).all()
    return [AuditEntry(*row) for row in rows]


def check_log(conn: Connection, *, batch: int = 5000) -> ChainCheck:
    """Re-hash the whole log, in seq order, against itself and the head: the chain, then each
    entry's stored leaf hash and the head's frontier against the tree of the entries."""
    checker = ChainChecker()
    head = conn.execute(
        select(t.audit_head.c.seq, t.audit_head.c.hash, t.audit_head.c.frontier).where(
            t.audit_head.c.id == 1
        )
    ).one()
    tree = Frontier()
    tree_fault: tuple[int, str] | None = None
    last = 0
    while True:
        query = (
            select(*COLUMNS, t.audit_log.c.tree_nodes)
            .where(t.audit_log.c.seq > last)
            .order_by(t.audit_log.c.seq)
            .limit(batch)
        )
        rows = conn.execute(query).mappings().all()
        for row in rows:
            entry = dict(row)
            try:
                data = entry_bytes(entry)  # every hashed field is selected
            except ValueError:  # text that is no Unicode: the chain's check names the entry
                checker.add(entry)
                continue
            checker.add(entry, data)
            leaf = leaf_hash(data)
            ended = [leaf, *(value for _, value in tree.append(leaf))]
            if tree_fault is None and row["tree_nodes"] != b"".join(ended).hex():
                tree_fault = (
                    row["seq"],
                    f"entry {row['seq']}'s Merkle tree hashes do not match its content and the "
                    "entries before it: the entry or its tree hashes were edited",
                )
        if len(rows) < batch:
            break
        last = rows[-1]["seq"]
    chain = checker.result((head.seq, head.hash))
    if not chain.ok:
        return chain
    if tree_fault is None and head.frontier != "".join(h.hex() for h in tree.hashes):
        tree_fault = (
            max(head.seq, 1),
            f"the audit head's Merkle frontier is not the tree of the log's {head.seq} "
            "entries: the head was edited",
        )
    if tree_fault is not None:
        return ChainCheck(
            ok=False, entries=chain.entries, first_bad=tree_fault[0], reason=tree_fault[1]
        )
    return chain


class TreeNodes:
    """The stored tree's perfect subtrees (a :class:`lockd.trust.merkle.NodeSource`), each kept
    on the row of the entry that ends it (``tree_nodes``): one query for all a proof needs."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def nodes(self, wanted: Sequence[Node]) -> Mapping[Node, bytes]:
        rows = {(index + 1) << level for level, index in wanted}
        found: dict[int, str] = {}
        if rows:
            query = select(t.audit_log.c.seq, t.audit_log.c.tree_nodes).where(
                t.audit_log.c.seq.in_(sorted(rows))
            )
            found = {row.seq: row.tree_nodes for row in self._conn.execute(query)}
        result: dict[Node, bytes] = {}
        for level, index in wanted:
            text = found.get((index + 1) << level, "")[64 * level : 64 * (level + 1)]
            try:
                result[(level, index)] = bytes.fromhex(text)
            except ValueError:
                result[(level, index)] = b""
            if len(result[(level, index)]) != merkle.HASH_SIZE:
                raise TreeDamagedError(
                    f"the audit log's Merkle tree lacks the node over entries "
                    f"{(index << level) + 1} to {(index + 1) << level} (or it is malformed): "
                    "the database was edited"
                )
        return result


def tree_head(conn: Connection) -> tuple[int, bytes]:
    """The tree's size and root hash now (from the head's frontier: one read)."""
    head = conn.execute(
        select(t.audit_head.c.seq, t.audit_head.c.frontier).where(t.audit_head.c.id == 1)
    ).one()
    return head.seq, parse_frontier(head.seq, head.frontier).root()


def _within(conn: Connection, size: int) -> None:
    current, _ = tree_head(conn)
    if size > current:
        raise InputError(f"size {size}: the log has {current} entries")


def inclusion_proof(conn: Connection, index: int, size: int) -> list[bytes]:
    """Leaf ``index``'s inclusion proof in the tree of ``size`` entries.

    Raises:
        InputError: ``index`` is not below ``size``, or ``size`` is beyond the log.
        TreeDamagedError: a node the proof needs is missing.
    """
    merkle.inclusion_nodes(index, size)  # the arguments' checks, before any read
    _within(conn, size)
    return merkle.inclusion_proof(index, size, TreeNodes(conn))


def consistency_proof(conn: Connection, first: int, second: int) -> list[bytes]:
    """The proof that the tree of ``first`` entries is a prefix of the tree of ``second``.

    Raises:
        InputError: ``first`` > ``second``, or ``second`` is beyond the log.
        TreeDamagedError: a node the proof needs is missing.
    """
    merkle.consistency_nodes(first, second)
    _within(conn, second)
    return merkle.consistency_proof(first, second, TreeNodes(conn))
