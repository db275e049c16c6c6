"""The audit log's Merkle tree (#18): each entry's leaf hash, the tree's perfect subtrees above
the leaves, and the head's frontier (the compact range: the tree's root without a read). The
existing chain is converted: its entries, unchanged, become the tree's leaves in seq order, so
every entry hash, and every bundle exported before, still verifies.

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
    sa.column("leaf_hash"),
)
_head = sa.table("audit_head", sa.column("id"), sa.column("seq"), sa.column("frontier"))
_nodes = sa.table("audit_nodes", sa.column("level"), sa.column("idx"), sa.column("hash"))


def upgrade() -> None:
    op.add_column("audit_log", sa.Column("leaf_hash", sa.String(64), nullable=True))
    op.add_column("audit_head", sa.Column("frontier", sa.Text, nullable=False, server_default=""))
    op.create_table(
        "audit_nodes",
        sa.Column("level", sa.SmallInteger, autoincrement=False, nullable=False),
        sa.Column("idx", sa.BigInteger, autoincrement=False, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("level", "idx", name="pk_audit_nodes"),
    )
    _convert(op.get_bind())
    with op.batch_alter_table("audit_log") as batch:
        batch.alter_column("leaf_hash", existing_type=sa.String(64), nullable=False)


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
        leaves, nodes = [], []
        for row in rows:
            if row["seq"] != frontier.size + 1:
                raise RuntimeError(
                    f"the audit log lacks entry {frontier.size + 1} (the next is {row['seq']}): "
                    "lockd cannot build its Merkle tree; check it with GET /v1/audit/verify "
                    "before upgrading"
                )
            leaf = entry_leaf_hash(dict(row))
            leaves.append({"key": row["seq"], "leaf": leaf.hex()})
            nodes += [
                {"level": level, "idx": index, "hash": value.hex()}
                for (level, index), value in frontier.append(leaf)
            ]
        connection.execute(
            sa.update(_log)
            .where(_log.c.seq == sa.bindparam("key"))
            .values(leaf_hash=sa.bindparam("leaf")),
            leaves,
        )
        if nodes:
            connection.execute(sa.insert(_nodes), nodes)
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
    op.drop_table("audit_nodes")
    with op.batch_alter_table("audit_head") as batch:
        batch.drop_column("frontier")
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("leaf_hash")
