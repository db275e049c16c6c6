"""The service's tables (SQLAlchemy Core). The API's schemas live apart, in lockd.server.schemas.

Times are kept as RFC 3339 text (UTC, microseconds) so an audit entry hashes to the same value
on every database. Digests are ``sha256:<hex>``.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)

DIGEST = 71  # len("sha256:") + 64
TIME = 32

manifests = Table(
    "manifests",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("digest", String(DIGEST), nullable=False, unique=True),  # sha256 of the payload
    Column("name", String(256), nullable=False),
    Column("payload_type", String(256), nullable=False),
    Column("envelope", Text, nullable=False),  # the envelope's JSON (sorted keys)
    Column("keyids", Text, nullable=False),  # JSON list: the trusted keys that signed
    Column("created_at", String(TIME), nullable=False),
    Column("created_by", String(64), nullable=False),
)
Index("ix_manifests_name", manifests.c.name)

manifest_subjects = Table(
    "manifest_subjects",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("manifest_id", Integer, ForeignKey("manifests.id"), nullable=False),
    Column("digest", String(DIGEST), nullable=False),
    Column("name", Text, nullable=False),
)
Index("ix_manifest_subjects_digest", manifest_subjects.c.digest, manifest_subjects.c.manifest_id)

manifest_labels = Table(
    "manifest_labels",
    metadata,
    Column("manifest_id", Integer, ForeignKey("manifests.id"), primary_key=True),
    Column("key", String(64), primary_key=True),
    Column("value", String(256), nullable=False),
)
Index("ix_manifest_labels_key_value", manifest_labels.c.key, manifest_labels.c.value)

verifications = Table(
    "verifications",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created_at", String(TIME), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("source", String(16), nullable=False),  # "server" (compared here) or "client"
    Column("subject", String(DIGEST), nullable=True),  # the target's image digest
    Column("manifest_digest", String(DIGEST), nullable=True),
    Column("policy", String(64), nullable=True),
    Column("verified", Boolean, nullable=False),
    Column("report", Text, nullable=False),  # the Report's JSON
)
Index("ix_verifications_subject", verifications.c.subject, verifications.c.id)

tokens = Table(
    "tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),  # sha256 hex of the token
    Column("created_at", String(TIME), nullable=False),
    Column("created_by", String(64), nullable=False),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("time", String(TIME), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("action", String(64), nullable=False),
    Column("subject", String(256), nullable=True),
    Column("body_digest", String(DIGEST), nullable=True),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    # The Merkle tree (lockd.trust.merkle; entry seq is leaf seq - 1): the hex hashes of the
    # perfect subtrees this entry's leaf ends, its own leaf hash (of the entry's canonical bytes)
    # first, then each subtree it completes, lowest first. The subtree of 2**level leaves ending
    # at entry seq is at [64 * level, 64 * (level + 1)): any root or proof is one read.
    Column("tree_nodes", Text, nullable=False),
)

# One row (id 1): the last entry's seq and hash, and the Merkle tree's frontier. Appends lock
# it (SELECT ... FOR UPDATE on PostgreSQL; SQLite has one writer at a time), so concurrent
# writers, replicas included, never fork the chain or the tree; it also shows when the newest
# entries were deleted.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", Integer, nullable=False),
    Column("hash", String(64), nullable=False),
    # the tree's frontier at size seq: its perfect subtrees' hashes, hex, largest first
    Column("frontier", Text, nullable=False, server_default=""),
)

# --- the fleet (lockd.model.fleet): what the watch agents report --------------------------------

HOST = 253

# One row per host: the agent that reported last, and when the service received it.
fleet_hosts = Table(
    "fleet_hosts",
    metadata,
    Column("host", String(HOST), primary_key=True),
    Column("agent", String(32), nullable=False),
    Column("last_seen", String(TIME), nullable=False),  # receipt time of its latest batch
    Column("interval_s", Integer, nullable=False),
)

# The last batch applied per (host, agent): a batch at or below it is a redelivery.
fleet_agents = Table(
    "fleet_agents",
    metadata,
    Column("host", String(HOST), primary_key=True),
    Column("agent", String(32), primary_key=True),
    Column("sequence", BigInteger, nullable=False),
    Column("applied_at", String(TIME), nullable=False),
)

# One row per running container the agents watch, with its current verdict.
fleet_containers = Table(
    "fleet_containers",
    metadata,
    Column("host", String(HOST), primary_key=True),
    Column("container_id", String(64), primary_key=True),
    Column("name", String(256), nullable=False),
    Column("image", Text, nullable=False),
    Column("image_id", String(DIGEST), nullable=False),
    Column("labels", Text, nullable=False),  # JSON object
    Column("manifest_digest", String(DIGEST), nullable=True),
    Column("policy", String(256), nullable=False),
    Column("verdict", String(16), nullable=False),
    Column("since", String(TIME), nullable=False),  # when the verdict last changed
    Column("checked_at", String(TIME), nullable=False),
    Column("findings", Text, nullable=False),  # JSON list of lines
    Column("error", Text, nullable=True),
    Column("verification_id", Integer, nullable=True),
)
Index("ix_fleet_containers_verdict", fleet_containers.c.verdict)

# Every transition, and its webhook delivery when it fires one (``notify``): claimed by one
# worker at a time (lease), marked delivered once the receiver answered 2xx, never sent again.
fleet_events = Table(
    "fleet_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("host", String(HOST), nullable=False),
    Column("container_id", String(64), nullable=False),
    Column("name", String(256), nullable=False),
    Column("image", Text, nullable=False),
    Column("image_id", String(DIGEST), nullable=False),
    Column("from_verdict", String(16), nullable=False),  # "none" for a new container
    Column("to_verdict", String(16), nullable=False),
    Column("findings", Text, nullable=False),
    Column("manifest_digest", String(DIGEST), nullable=True),
    Column("verification_id", Integer, nullable=True),
    Column("at", String(TIME), nullable=False),
    Column("notify", Boolean, nullable=False),
    Column("delivered", Boolean, nullable=False),
    Column("gave_up", Boolean, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", String(TIME), nullable=True),
    Column("lease_until", String(TIME), nullable=True),
    Column("lease_owner", String(64), nullable=True),
    Column("delivered_at", String(TIME), nullable=True),
    Column("last_error", Text, nullable=True),
)
Index(
    "ix_fleet_events_pending",
    fleet_events.c.notify,
    fleet_events.c.delivered,
    fleet_events.c.gave_up,
    fleet_events.c.next_attempt_at,
)
