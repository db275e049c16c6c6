"""The repository: every read and write of the service's database, each write in one transaction
with its audit entry, so a write is stored together with its place in the chain or not at all.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal, get_args

from sqlalchemy import (
    Connection,
    CursorResult,
    Dialect,
    Engine,
    Insert,
    Select,
    Table,
    and_,
    bindparam,
    exists,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import RootTransaction
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.sql.selectable import ExecutableReturnsRows

from lockd.errors import InputError
from lockd.store import audit
from lockd.store import tables as t
from lockd.store.audit import AuditEntry, TreeDamagedError, parse_frontier
from lockd.store.engine import WRITE, is_postgres, make_engine
from lockd.store.writelock import WriteLock
from lockd.trust.auditlog import ChainCheck, entry_bytes
from lockd.trust.merkle import Frontier, leaf_hash

Role = Literal["reader", "recorder", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)
RANK: dict[str, int] = {role: rank for rank, role in enumerate(ROLES)}
TOKEN_PREFIX = "lockd_"  # noqa: S105 (a prefix, not a secret)

__all__ = [
    "RANK",
    "ROLES",
    "AuditEntry",
    "ManifestRecord",
    "NewVerification",
    "Principal",
    "Role",
    "Store",
    "Transaction",
    "VerificationRecord",
    "body_digest",
    "hash_token",
    "now",
]


def now() -> str:
    """The current time as RFC 3339 text, UTC, microseconds (how every table keeps time)."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def hash_token(token: str) -> str:
    """How a token is kept: the hex sha256 (tokens are 256-bit random, so no slow hash is
    needed to stop guessing)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def body_digest(text: str) -> str:
    """An audit entry's ``body_digest``: ``sha256:<hex>`` of the stored text."""
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token's name (never the token) and its role."""

    name: str
    role: Role


@dataclass(frozen=True)
class ManifestRecord:
    digest: str
    name: str
    payload_type: str
    envelope: str
    keyids: list[str]
    created_at: str
    created_by: str
    subjects: list[tuple[str, str]] = field(default_factory=list)  # (name, sha256:hex)
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class VerificationRecord:
    id: int
    created_at: str
    actor: str
    source: str
    subject: str | None
    manifest_digest: str | None
    policy: str | None
    verified: bool
    report: str


@dataclass(frozen=True)
class NewVerification:
    """A report to store (``Store.add_verifications``)."""

    actor: str
    source: Literal["server", "client"]
    subject: str | None
    manifest_digest: str | None
    policy: str | None
    verified: bool
    report: str


MAX_IDLE_READERS = 4  # SQLite read connections kept out of the pool between reads

Parameters = Mapping[str, Any] | Sequence[Mapping[str, Any]]  # one row's, or many rows'

_HEAD = (
    select(t.audit_head.c.seq, t.audit_head.c.hash, t.audit_head.c.frontier)
    .where(t.audit_head.c.id == 1)
    .with_for_update()  # PostgreSQL's row lock; SQLite renders none (BEGIN IMMEDIATE locks)
)
_MOVE_HEAD = (
    update(t.audit_head)
    .where(t.audit_head.c.id == 1)
    .values(seq=bindparam("head_seq"), hash=bindparam("head_hash"), frontier=bindparam("tree"))
)
_INSERT_AUDIT = insert(t.audit_log)
_INSERT_VERIFICATIONS = insert(t.verifications).returning(t.verifications.c.id)


class Transaction:
    """One write transaction (:meth:`Store.write`): SQLAlchemy Core statements on its
    connection, and the audit entries chained onto the head it holds and added to the log's
    Merkle tree, stored with them."""

    def __init__(self, connection: Connection, seq: int, last: str, tree: Frontier) -> None:
        self._connection = connection
        self.seq = seq
        self.last = last
        self._start = seq
        self._tree = tree
        self._entries: list[dict[str, Any]] = []  # audit rows, written by finish()

    def execute(
        self, statement: ExecutableReturnsRows, parameters: Parameters | None = None
    ) -> CursorResult[Any]:
        """Run a Core statement (insert, update, delete, select; never SQL text) with its
        parameters: one mapping, or a sequence of them (one execution per row, batched by the
        driver or SQLAlchemy); its result."""
        return self._connection.execute(statement, parameters)

    def upsert(self, table: Table, key: Sequence[str], rows: Parameters) -> None:
        """Insert ``rows`` into ``table``; a row whose ``key`` columns match a stored one
        replaces that row's other columns (ON CONFLICT DO UPDATE)."""
        self._connection.execute(_upsert(self._connection.dialect.name, table, tuple(key)), rows)

    def append(
        self, *, time: str, actor: str, action: str, subject: str | None, body_digest: str | None
    ) -> AuditEntry:
        """Chain an entry onto the head this transaction holds, and add it to the tree."""
        entry: dict[str, Any] = {
            "seq": self.seq + 1,
            "time": time,
            "actor": actor,
            "action": action,
            "subject": subject,
            "body_digest": body_digest,
            "prev_hash": self.last,
        }
        data = entry_bytes(entry)
        digest = hashlib.sha256(data).hexdigest()
        leaf = leaf_hash(data)
        ended = [leaf, *(value for _, value in self._tree.append(leaf))]
        self._entries.append({**entry, "hash": digest, "tree_nodes": b"".join(ended).hex()})
        self.seq, self.last = entry["seq"], digest
        return AuditEntry(**entry, hash=digest)

    def insert_verifications(self, batch: Sequence[NewVerification], *, time: str) -> list[int]:
        """Store reports, each with its audit entry, in order; their ids, in the same order."""
        if not batch:
            return []
        returned = self.execute(
            _INSERT_VERIFICATIONS,
            [
                {
                    "created_at": time,
                    "actor": n.actor,
                    "source": n.source,
                    "subject": n.subject,
                    "manifest_digest": n.manifest_digest,
                    "policy": n.policy,
                    "verified": n.verified,
                    "report": n.report,
                }
                for n in batch
            ],
        )
        # Multi-row INSERTs (SQLAlchemy's "insertmanyvalues"): RETURNING's order is unspecified;
        # ids are given in VALUES order, ascending.
        ids = sorted(returned.scalars())
        for new in batch:
            self.append(
                time=time,
                actor=new.actor,
                action="verification.create",
                subject=new.subject,
                body_digest=body_digest(new.report),
            )
        return ids

    def finish(self) -> None:
        """Before the commit (:meth:`Store.write` calls it): the transaction's audit rows, all
        in one execution, and the head moved once."""
        if self._entries:
            self._connection.execute(_INSERT_AUDIT, self._entries)
            self._entries = []
        if self.seq != self._start:
            tree = "".join(h.hex() for h in self._tree.hashes)
            self._connection.execute(
                _MOVE_HEAD, {"head_seq": self.seq, "head_hash": self.last, "tree": tree}
            )


@cache
def _upsert(dialect: str, table: Table, key: tuple[str, ...]) -> Insert:
    """INSERT ... ON CONFLICT (key) DO UPDATE SET every other column to the new row's."""
    insert_into = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert_into(table)
    return statement.on_conflict_do_update(
        index_elements=list(key),
        set_={c.name: statement.excluded[c.name] for c in table.c if c.name not in key},
    )


@dataclass(frozen=True)
class _HotRead:
    """A Core SELECT compiled once for a database, to run on a driver connection (the hot
    reads, where a SQLAlchemy connection and execution would cost several times the read
    itself): the SQL in the driver's parameter style, the compiled parameters' own values
    (e.g. LIMIT's), and, for a positional style (SQLite's ``?``), the parameters' order.
    Plain strings in and out: no type processing is needed."""

    sql: str
    defaults: Mapping[str, Any]
    order: tuple[str, ...] | None  # None: parameters by name (psycopg's %(name)s)

    @classmethod
    def compile(cls, statement: Select[Any], dialect: Dialect) -> _HotRead:
        compiled = statement.compile(dialect=dialect)
        order = tuple(compiled.positiontup or ()) if compiled.positional else None
        return cls(compiled.string, dict(compiled.params), order)

    def parameters(self, values: Mapping[str, Any]) -> Sequence[Any] | Mapping[str, Any]:
        given = {**self.defaults, **values}
        return given if self.order is None else tuple(given[name] for name in self.order)


class Store:
    """The service's database. Thread-safe: reads take a pooled connection each; writers take
    turns on one connection of the process (:meth:`write`)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sqlite = not is_postgres(engine)
        # SQLite has one writer at a time; lockd's writers (threads, and processes on one file)
        # queue here rather than in SQLite's busy handler, which polls with sleeps.
        self._lock = WriteLock(engine.url.database) if self._sqlite else None
        # SQLite connections for the hot reads, idle between reads (any thread takes one): at
        # most MAX_IDLE_READERS are kept out of the pool, so short-lived threads (admission
        # lookups) cannot drain it.
        self._idle_readers: list[Any] = []
        self._readers_lock = threading.Lock()
        # Writers take turns (SQLite: the WriteLock above; PostgreSQL: this process's writers,
        # which would queue on the audit head's row lock anyway) on one connection, kept
        # between transactions: a pooled checkout, its reset and (PostgreSQL) its ping cost as
        # much as a small write's statements.
        self._writer: AbstractContextManager[Any] = self._lock or threading.Lock()
        self._connection: Connection | None = None
        self._connection_pid = 0  # the process that opened it (a forked child opens its own)
        self._hot_reads: dict[tuple[str, int], _HotRead] = {}  # compiled once each

    @classmethod
    def open(cls, url: str) -> Store:
        """Raises InputError for a bad URL (nothing connects yet)."""
        return cls(make_engine(url))

    def close(self) -> None:
        self._drop_connection()
        with self._readers_lock:
            idle, self._idle_readers = self._idle_readers, []
        for raw in idle:
            raw.close()
        self.engine.dispose()
        if self._lock is not None:
            self._lock.close()

    @contextmanager
    def _sqlite_reader(self) -> Iterator[Any]:
        """An idle SQLite connection for one hot read (else one from the pool); kept idle after
        it unless MAX_IDLE_READERS are, then given back to the pool."""
        with self._readers_lock:
            raw = self._idle_readers.pop() if self._idle_readers else None
        if raw is None:
            raw = self.engine.raw_connection()
        try:
            yield raw
        finally:
            with self._readers_lock:
                keep = len(self._idle_readers) < MAX_IDLE_READERS
                if keep:
                    self._idle_readers.append(raw)
            if not keep:
                raw.close()

    # --- transactions ----------------------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator[Transaction]:
        """A write transaction, holding the audit head (SQLite: the one write lock, taken by
        BEGIN IMMEDIATE after lockd's writers queued on :class:`WriteLock`; PostgreSQL: a row
        lock, FOR UPDATE), so appends are serialized and the chain never forks. It commits,
        with the audit entries appended, when the block ends; an exception rolls it all back.
        """
        with self._writer:
            try:
                transaction, connection, (seq, last, tree) = self._begin()
                with transaction:
                    tx = Transaction(connection, seq, last, tree)
                    yield tx
                    tx.finish()
            except BaseException:
                self._drop_connection()  # in whatever state the failure left it: a new one next
                raise

    def _begin(self) -> tuple[RootTransaction, Connection, tuple[int, str, Frontier]]:
        """A transaction begun on the writers' connection, and the audit head it holds."""
        if self._connection is None or self._connection_pid != os.getpid():
            self._connection = self.engine.connect().execution_options(**{WRITE: True})
            self._connection_pid = os.getpid()
        connection = self._connection
        transaction = connection.begin()
        try:
            head = connection.execute(_HEAD).first()
        except DBAPIError as e:
            transaction.rollback()
            if not e.connection_invalidated:
                raise
            # The database closed it since the last write (e.g. PostgreSQL restarted): begin
            # again on a new one, as a pooled checkout's ping would have.
            transaction = connection.begin()
            head = connection.execute(_HEAD).first()
        if head is None:
            transaction.rollback()
            raise InputError(
                "the database has no audit head: lockd did not migrate it (lockd serve "
                "migrates; or check LOCKD_DATABASE_URL)"
            )
        try:
            tree = parse_frontier(head.seq, head.frontier)
        except TreeDamagedError:
            transaction.rollback()
            raise
        return transaction, connection, (head.seq, head.hash, tree)

    def _drop_connection(self) -> None:
        """Give the writers' connection back to the pool (one another process opened is left
        alone: it is that process's)."""
        connection, self._connection = self._connection, None
        if connection is not None and self._connection_pid == os.getpid():
            connection.close()

    @contextmanager
    def snapshot(self) -> Iterator[Connection]:
        """A read transaction that sees one state of the database throughout."""
        options = {"isolation_level": "REPEATABLE READ"} if is_postgres(self.engine) else {}
        with self.engine.connect().execution_options(**options) as conn, conn.begin():
            yield conn

    def _hot(self, key: tuple[str, int], build: Callable[[], Select[Any]]) -> _HotRead:
        """The hot read ``key``, built and compiled for this database the first time."""
        found = self._hot_reads.get(key)
        if found is None:
            found = self._hot_reads[key] = _HotRead.compile(build(), self.engine.dialect)
        return found

    def _read_one(self, read: _HotRead, values: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """One row of a hot read, run on a driver connection: on SQLite an idle one is reused
        (autocommit: the SELECT is its own read transaction, over once all its rows are
        fetched), which spares the pool's checkout and reset; else a pooled one."""
        parameters = read.parameters(values)
        if self._sqlite:
            with self._sqlite_reader() as raw:
                cursor = raw.cursor()
                try:
                    rows = cursor.execute(read.sql, parameters).fetchall()
                finally:
                    cursor.close()
            return tuple(rows[0]) if rows else None
        raw = self.engine.raw_connection()
        try:
            driver: Any = raw.driver_connection  # psycopg's own connection
            driver.autocommit = True  # no BEGIN and ROLLBACK round trips around one SELECT
            try:
                cursor = driver.cursor()
                try:
                    cursor.execute(read.sql, parameters)
                    row = cursor.fetchone()
                finally:
                    cursor.close()
            finally:
                driver.autocommit = False
        finally:
            raw.close()
        return None if row is None else tuple(row)

    # --- manifests ---------------------------------------------------------------------------

    def add_manifest(
        self,
        *,
        digest: str,
        name: str,
        payload_type: str,
        envelope: str,
        keyids: Sequence[str],
        subjects: Sequence[tuple[str, str]],
        labels: Mapping[str, str],
        actor: str,
    ) -> tuple[ManifestRecord, bool]:
        """Store a trusted envelope once: ``(record, True)`` when new, ``(stored, False)`` when
        an envelope with this payload digest is stored already (nothing changes then)."""
        time = now()
        with self.write() as tx:
            existing = tx.execute(
                select(t.manifests.c.id).where(t.manifests.c.digest == digest)
            ).first()
            if existing is None:
                manifest_id = tx.execute(
                    insert(t.manifests).returning(t.manifests.c.id),
                    {
                        "digest": digest,
                        "name": name,
                        "payload_type": payload_type,
                        "envelope": envelope,
                        "keyids": json.dumps(list(keyids)),
                        "created_at": time,
                        "created_by": actor,
                    },
                ).scalar_one()
                if subjects:
                    tx.execute(
                        insert(t.manifest_subjects),
                        [
                            {"manifest_id": manifest_id, "name": s_name, "digest": s_digest}
                            for s_name, s_digest in subjects
                        ],
                    )
                if labels:
                    tx.execute(
                        insert(t.manifest_labels),
                        [
                            {"manifest_id": manifest_id, "key": k, "value": v}
                            for k, v in sorted(labels.items())
                        ],
                    )
                tx.append(
                    time=time,
                    actor=actor,
                    action="manifest.create",
                    subject=digest,
                    body_digest=body_digest(envelope),
                )
        record = self.get_manifest(digest)
        if record is None:  # pragma: no cover - it was found or written above
            raise RuntimeError(f"manifest {digest} vanished")
        return record, existing is None

    def get_manifest(self, digest: str) -> ManifestRecord | None:
        records = self._manifests(select(t.manifests).where(t.manifests.c.digest == digest))
        return records[0] if records else None

    def find_manifests(
        self,
        *,
        subject: str | None = None,
        name: str | None = None,
        labels: Mapping[str, str | None] | None = None,
        limit: int = 100,
    ) -> list[ManifestRecord]:
        """Newest first. A label given with None matches any value."""
        query = select(t.manifests)
        if subject is not None:
            query = query.where(
                exists().where(
                    and_(
                        t.manifest_subjects.c.manifest_id == t.manifests.c.id,
                        t.manifest_subjects.c.digest == subject,
                    )
                )
            )
        if name is not None:
            query = query.where(t.manifests.c.name == name)
        for key, value in (labels or {}).items():
            condition = and_(
                t.manifest_labels.c.manifest_id == t.manifests.c.id,
                t.manifest_labels.c.key == key,
            )
            if value is not None:
                condition = and_(condition, t.manifest_labels.c.value == value)
            query = query.where(exists().where(condition))
        return self._manifests(query.order_by(t.manifests.c.id.desc()).limit(limit))

    def latest_manifest_digest(self, subjects: Sequence[str]) -> str | None:
        """The newest stored manifest one of whose subjects is in ``subjects``."""
        if not subjects:
            return None
        count = len(subjects)
        read = self._hot(
            ("latest_manifest_digest", count),
            lambda: (
                select(t.manifests.c.digest)
                .join(t.manifest_subjects, t.manifest_subjects.c.manifest_id == t.manifests.c.id)
                .where(t.manifest_subjects.c.digest.in_([bindparam(f"s{i}") for i in range(count)]))
                .order_by(t.manifests.c.id.desc())
                .limit(1)
            ),
        )
        found = self._read_one(read, {f"s{i}": subject for i, subject in enumerate(subjects)})
        return None if found is None else str(found[0])

    def envelope_of(self, digest: str) -> str | None:
        with self.engine.connect() as conn:
            found: str | None = conn.execute(
                select(t.manifests.c.envelope).where(t.manifests.c.digest == digest)
            ).scalar()
        return found

    def _manifests(self, query: Any) -> list[ManifestRecord]:
        with self.snapshot() as conn:
            rows = conn.execute(query).mappings().all()
            if not rows:
                return []
            ids = [row["id"] for row in rows]
            subjects: dict[int, list[tuple[str, str]]] = {i: [] for i in ids}
            for s in conn.execute(
                select(
                    t.manifest_subjects.c.manifest_id,
                    t.manifest_subjects.c.name,
                    t.manifest_subjects.c.digest,
                )
                .where(t.manifest_subjects.c.manifest_id.in_(ids))
                .order_by(t.manifest_subjects.c.id)
            ):
                subjects[s.manifest_id].append((s.name, s.digest))
            labels: dict[int, dict[str, str]] = {i: {} for i in ids}
            for label in conn.execute(
                select(t.manifest_labels).where(t.manifest_labels.c.manifest_id.in_(ids))
            ):
                labels[label.manifest_id][label.key] = label.value
        return [
            ManifestRecord(
                digest=row["digest"],
                name=row["name"],
                payload_type=row["payload_type"],
                envelope=row["envelope"],
                keyids=json.loads(row["keyids"]),
                created_at=row["created_at"],
                created_by=row["created_by"],
                subjects=subjects[row["id"]],
                labels=labels[row["id"]],
            )
            for row in rows
        ]

    # --- verifications ---------------------------------------------------------------------

    def add_verification(
        self,
        *,
        actor: str,
        source: Literal["server", "client"],
        subject: str | None,
        manifest_digest: str | None,
        policy: str | None,
        verified: bool,
        report: str,
    ) -> VerificationRecord:
        new = NewVerification(actor, source, subject, manifest_digest, policy, verified, report)
        return self.add_verifications([new])[0]

    def add_verifications(self, batch: Sequence[NewVerification]) -> list[VerificationRecord]:
        """Store reports in one transaction, each with its audit entry, in order (the service's
        group commit: one commit for the requests that arrived together)."""
        if not batch:
            return []
        time = now()
        with self.write() as tx:
            ids = tx.insert_verifications(batch, time=time)
        return [
            VerificationRecord(
                i,
                time,
                n.actor,
                n.source,
                n.subject,
                n.manifest_digest,
                n.policy,
                n.verified,
                n.report,
            )
            for i, n in zip(ids, batch, strict=True)
        ]

    def get_verification(self, verification_id: int) -> VerificationRecord | None:
        with self.engine.connect() as conn:
            row = (
                conn.execute(select(t.verifications).where(t.verifications.c.id == verification_id))
                .mappings()
                .first()
            )
        return None if row is None else VerificationRecord(**row)

    def list_verifications(
        self, *, subject: str | None = None, limit: int = 100
    ) -> list[VerificationRecord]:
        """Newest first."""
        query = select(t.verifications).order_by(t.verifications.c.id.desc()).limit(limit)
        if subject is not None:
            query = query.where(t.verifications.c.subject == subject)
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [VerificationRecord(**row) for row in rows]

    def count_verifications(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(t.verifications)).scalar_one())

    # --- tokens -----------------------------------------------------------------------------

    def create_token(self, name: str, role: Role, *, actor: str) -> str:
        """A new random token for ``name``; only its hash is kept, so this is the one time it
        is seen.

        Raises:
            InputError: a token of that name exists, or an unknown role.
        """
        if role not in ROLES:
            raise InputError(f"role {role!r}: give one of {', '.join(ROLES)}")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        time = now()
        try:
            with self.write() as tx:
                tx.execute(
                    insert(t.tokens),
                    {
                        "name": name,
                        "role": role,
                        "token_hash": hash_token(token),
                        "created_at": time,
                        "created_by": actor,
                    },
                )
                tx.append(
                    time=time,
                    actor=actor,
                    action=f"token.create:{role}",
                    subject=name,
                    body_digest=None,
                )
        except IntegrityError as e:
            raise InputError(f"a token named {name!r} exists already; pick another name") from e
        return token

    def principal_for(self, token: str) -> Principal | None:
        read = self._hot(
            ("principal_for", 0),
            lambda: select(t.tokens.c.name, t.tokens.c.role).where(
                t.tokens.c.token_hash == bindparam("token_hash")
            ),
        )
        row = self._read_one(read, {"token_hash": hash_token(token)})
        if row is None or row[1] not in ROLES:
            return None
        return Principal(name=row[0], role=row[1])

    # --- audit ------------------------------------------------------------------------------

    def add_audits(self, entries: Sequence[tuple[str, str, str | None, str | None]]) -> None:
        """Chain entries that have no row of their own (admission decisions), in one
        transaction: each is ``(actor, action, subject, body_digest)``."""
        with self.write() as tx:
            time = now()
            for actor, action, subject, body_digest in entries:
                tx.append(
                    time=time,
                    actor=actor[:64],
                    action=action[:64],
                    subject=None if subject is None else subject[:256],
                    body_digest=body_digest,
                )

    def audit_entries(self, *, after: int = 0, limit: int = 1000) -> list[AuditEntry]:
        with self.engine.connect() as conn:
            return audit.read_entries(conn, after=after, limit=limit)

    def verify_audit(self, *, batch: int = 5000) -> ChainCheck:
        """Re-hash the whole log against itself and the head: its chain and Merkle tree."""
        with self.snapshot() as conn:
            return audit.check_log(conn, batch=batch)

    def tree_head(self) -> tuple[int, bytes]:
        """The audit log's Merkle tree now: its size and root hash."""
        with self.engine.connect() as conn:
            return audit.tree_head(conn)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """Raises InputError for an index or size outside the log (lockd.store.audit)."""
        with self.snapshot() as conn:
            return audit.inclusion_proof(conn, index, size)

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        """Raises InputError for sizes out of order or beyond the log (lockd.store.audit)."""
        with self.snapshot() as conn:
            return audit.consistency_proof(conn, first, second)

    # --- health -----------------------------------------------------------------------------

    def ping(self) -> None:
        """Raises SQLAlchemyError when the database does not answer."""
        with self.engine.connect() as conn:
            conn.execute(select(1)).scalar()
