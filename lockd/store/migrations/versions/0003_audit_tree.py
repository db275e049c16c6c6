"""The audit log's Merkle tree (#18): on each entry's row the hashes of the perfect subtrees its
leaf ends (its own leaf hash first), and on the head the tree's frontier (the compact range: the
tree's root without a read). The existing chain is converted: its entries, unchanged, become the
tree's leaves in seq order, so every entry hash, and every bundle exported before, still
verifies.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from lockd.trust.auditlog import HASHED_FIELDS, entry_leaf_hash
from lockd.trust.merkle import Frontier

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BATCH = 5000

_log = sa.table(
    "audit_log",
    *(sa.column(name) for name in HASHED_FIELDS),
    sa.column("tree_nodes"),
)
_head = sa.table("audit_head", sa.column("id"), sa.column("seq"), sa.column("frontier"))


def upgrade() -> None:
    op.add_column("audit_log", sa.Column("tree_nodes", sa.Text, nullable=True))
    op.add_column("audit_head", sa.Column("frontier", sa.Text, nullable=False, server_default=""))
    _convert(op.get_bind())
    with op.batch_alter_table("audit_log") as batch:
        batch.alter_column("tree_nodes", existing_type=sa.Text, nullable=False)


def _convert(connection: sa.Connection) -> None:
    """Every stored entry becomes a leaf, in seq order. A log whose seqs are not 1..head
    (entries deleted) is not converted: its tree would not be the log the head describes."""
    head_seq = connection.execute(sa.select(_head.c.seq).where(_head.c.id == 1)).scalar_one()
    frontier = Frontier()
    last = 0
    while True:
        rows = (
            connection.execute(
                sa.select(*(_log.c[name] for name in HASHED_FIELDS))
                .where(_log.c.seq > last)
                .order_by(_log.c.seq)
                .limit(BATCH)
            )
            .mappings()
            .all()
        )
        if not rows:
            break
        trees = []
        for row in rows:
            if row["seq"] != frontier.size + 1:
                raise RuntimeError(
                    f"the audit log lacks entry {frontier.size + 1} (the next is {row['seq']}): "
                    "lockd cannot build its Merkle tree; check it with GET /v1/audit/verify "
                    "before upgrading"
                )
            leaf = entry_leaf_hash(dict(row))
            ended = [leaf, *(value for _, value in frontier.append(leaf))]
            trees.append({"key": row["seq"], "nodes": b"".join(ended).hex()})
        connection.execute(
            sa.update(_log)
            .where(_log.c.seq == sa.bindparam("key"))
            .values(tree_nodes=sa.bindparam("nodes")),
            trees,
        )
        last = rows[-1]["seq"]
    if frontier.size != head_seq:
        raise RuntimeError(
            f"the audit log ends at entry {frontier.size} but its head is entry {head_seq}: "
            "lockd cannot build its Merkle tree; check it with GET /v1/audit/verify before "
            "upgrading"
        )
    connection.execute(
        sa.update(_head)
        .where(_head.c.id == 1)
        .values(frontier="".join(h.hex() for h in frontier.hashes))
    )


def downgrade() -> None:
    with op.batch_alter_table("audit_head") as batch:
        batch.drop_column("frontier")
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("tree_nodes")
