"""The audit log's Merkle tree (#18): on each entry's row the hashes of the perfect subtrees its
leaf ends (its own leaf hash first), and on the head the tree's frontier (the compact range: the
tree's root without a read). The existing chain is converted: its entries, unchanged, become the
tree's leaves in seq order, so every entry hash, and every bundle exported before, still
verifies. The chain is checked first: a tree built over a chain already broken would make it
look whole (every later checkpoint would sign the edited history), so a broken chain stops the
upgrade, naming the first entry that does not hold.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from alembic import op

from lockd.errors import LockdError
from lockd.trust.auditlog import HASHED_FIELDS, ChainChecker, entry_leaf_hash
from lockd.trust.merkle import Frontier

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BATCH = 5000

_log = sa.table(
    "audit_log",
    *(sa.column(name) for name in HASHED_FIELDS),
    sa.column("hash"),
    sa.column("tree_nodes"),
)
_head = sa.table(
    "audit_head", sa.column("id"), sa.column("seq"), sa.column("hash"), sa.column("frontier")
)


class BrokenChainError(LockdError):
    """The audit chain does not hold before the upgrade: no tree is built over it (exit 1, as
    `lockd audit verify` exits on a broken chain)."""

    exit_code = 1


def upgrade() -> None:
    _check_chain(op.get_bind())
    op.add_column("audit_log", sa.Column("tree_nodes", sa.Text, nullable=True))
    op.add_column("audit_head", sa.Column("frontier", sa.Text, nullable=False, server_default=""))
    _convert(op.get_bind())
    with op.batch_alter_table("audit_log") as batch:
        batch.alter_column("tree_nodes", existing_type=sa.Text, nullable=False)


def _entries(connection: sa.Connection, *columns: str) -> Iterator[dict[str, Any]]:
    """The stored entries' ``columns``, in seq order, a batch at a time."""
    last = 0
    while True:
        rows = (
            connection.execute(
                sa.select(*(_log.c[name] for name in columns))
                .where(_log.c.seq > last)
                .order_by(_log.c.seq)
                .limit(BATCH)
            )
            .mappings()
            .all()
        )
        if not rows:
            return
        yield from (dict(row) for row in rows)
        last = rows[-1]["seq"]


def _check_chain(connection: sa.Connection) -> None:
    """Raises BrokenChainError naming the first entry that does not hold."""
    head = connection.execute(sa.select(_head.c.seq, _head.c.hash).where(_head.c.id == 1)).one()
    checker = ChainChecker()
    for entry in _entries(connection, *HASHED_FIELDS, "hash"):
        checker.add(entry)
    chain = checker.result((head.seq, head.hash))
    if not chain.ok:
        raise BrokenChainError(
            f"the audit chain is broken at entry {chain.first_bad}: {chain.reason}. lockd will "
            "not build the Merkle tree over it (its checkpoints would sign the broken history "
            "as whole); the database is left as it was: restore it from a backup taken "
            "before the break"
        )


def _convert(connection: sa.Connection) -> None:
    """Every stored entry becomes a leaf, in seq order (the chain checked: seqs 1..head)."""
    frontier = Frontier()
    trees: list[dict[str, Any]] = []
    for row in _entries(connection, *HASHED_FIELDS):
        leaf = entry_leaf_hash(row)
        ended = [leaf, *(value for _, value in frontier.append(leaf))]
        trees.append({"key": row["seq"], "nodes": b"".join(ended).hex()})
        if len(trees) == BATCH:
            _write_nodes(connection, trees)
            trees = []
    if trees:
        _write_nodes(connection, trees)
    connection.execute(
        sa.update(_head)
        .where(_head.c.id == 1)
        .values(frontier="".join(h.hex() for h in frontier.hashes))
    )


def _write_nodes(connection: sa.Connection, trees: list[dict[str, Any]]) -> None:
    connection.execute(
        sa.update(_log)
        .where(_log.c.seq == sa.bindparam("key"))
        .values(tree_nodes=sa.bindparam("nodes")),
        trees,
    )


def downgrade() -> None:
    with op.batch_alter_table("audit_head") as batch:
        batch.drop_column("frontier")
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("tree_nodes")
