"""The fleet: hosts, agents' last applied batch, containers' verdicts, transition events with
their webhook deliveries.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fleet_hosts",
        sa.Column("host", sa.String(253), nullable=False),
        sa.Column("agent", sa.String(32), nullable=False),
        sa.Column("last_seen", sa.String(32), nullable=False),
        sa.Column("interval_s", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("host", name="pk_fleet_hosts"),
    )
    op.create_table(
        "fleet_agents",
        sa.Column("host", sa.String(253), nullable=False),
        sa.Column("agent", sa.String(32), nullable=False),
        sa.Column("sequence", sa.BigInteger, nullable=False),
        sa.Column("applied_at", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("host", "agent", name="pk_fleet_agents"),
    )
    op.create_table(
        "fleet_containers",
        sa.Column("host", sa.String(253), nullable=False),
        sa.Column("container_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("image", sa.Text, nullable=False),
        sa.Column("image_id", sa.String(71), nullable=False),
        sa.Column("labels", sa.Text, nullable=False),
        sa.Column("manifest_digest", sa.String(71), nullable=True),
        sa.Column("policy", sa.String(256), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("since", sa.String(32), nullable=False),
        sa.Column("checked_at", sa.String(32), nullable=False),
        sa.Column("findings", sa.Text, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("verification_id", sa.Integer, nullable=True),
        sa.PrimaryKeyConstraint("host", "container_id", name="pk_fleet_containers"),
    )
    op.create_index("ix_fleet_containers_verdict", "fleet_containers", ["verdict"])
    op.create_table(
        "fleet_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("host", sa.String(253), nullable=False),
        sa.Column("container_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("image", sa.Text, nullable=False),
        sa.Column("image_id", sa.String(71), nullable=False),
        sa.Column("from_verdict", sa.String(16), nullable=False),
        sa.Column("to_verdict", sa.String(16), nullable=False),
        sa.Column("findings", sa.Text, nullable=False),
        sa.Column("manifest_digest", sa.String(71), nullable=True),
        sa.Column("verification_id", sa.Integer, nullable=True),
        sa.Column("at", sa.String(32), nullable=False),
        sa.Column("notify", sa.Boolean, nullable=False),
        sa.Column("delivered", sa.Boolean, nullable=False),
        sa.Column("gave_up", sa.Boolean, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.String(32), nullable=True),
        sa.Column("lease_until", sa.String(32), nullable=True),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("delivered_at", sa.String(32), nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_fleet_events"),
    )
    op.create_index(
        "ix_fleet_events_pending",
        "fleet_events",
        ["notify", "delivered", "gave_up", "next_attempt_at"],
    )


def downgrade() -> None:
    op.drop_index("ix_fleet_events_pending", table_name="fleet_events")
    op.drop_table("fleet_events")
    op.drop_index("ix_fleet_containers_verdict", table_name="fleet_containers")
    for table in ("fleet_containers", "fleet_agents", "fleet_hosts"):
        op.drop_table(table)
