"""The repository: every read and write of the service's database, each write in one transaction
with its audit entry, so a write is stored together with its place in the chain or not at all.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

from sqlalchemy import Connection, Dialect, Engine, Select, and_, bindparam, exists, func, select

from lockd.errors import InputError
from lockd.store import tables as t
from lockd.store.engine import is_postgres, make_engine
from lockd.store.writelock import WriteLock
from lockd.trust.auditlog import ChainCheck, ChainChecker, entry_hash

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


_AUDIT_COLUMNS = (
    t.audit_log.c.seq,
    t.audit_log.c.time,
    t.audit_log.c.actor,
    t.audit_log.c.action,
    t.audit_log.c.subject,
    t.audit_log.c.body_digest,
    t.audit_log.c.prev_hash,
    t.audit_log.c.hash,
)


MAX_IDLE_READERS = 4  # SQLite read connections kept out of the pool between reads
_ROWS_PER_INSERT = 500  # rows of one multi-row INSERT (SQLite allows 32766 parameters)


class Transaction:
    """One write transaction (:meth:`Store.write`): plain driver statements, and the audit
    append."""

    def __init__(self, store: Store, cursor: Any, seq: int, last: str) -> None:
        self._store = store
        self.cursor = cursor
        self.seq = seq
        self.last = last
        self._start = seq
        self._entries: list[tuple[Any, ...]] = []  # audit rows, written by finish()

    def execute(self, statement: str, params: Sequence[Any] = ()) -> Any:
        self.cursor.execute(self._store._sql(statement), tuple(params))
        return self.cursor

    def executemany(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        self.cursor.executemany(self._store._sql(statement), [tuple(r) for r in rows])

    def append(
        self, *, time: str, actor: str, action: str, subject: str | None, body_digest: str | None
    ) -> AuditEntry:
        """Chain an entry onto the head this transaction holds."""
        entry: dict[str, Any] = {
            "seq": self.seq + 1,
            "time": time,
            "actor": actor,
            "action": action,
            "subject": subject,
            "body_digest": body_digest,
            "prev_hash": self.last,
        }
        digest = entry_hash(entry)
        self._entries.append((*entry.values(), digest))
        self.seq, self.last = entry["seq"], digest
        return AuditEntry(**entry, hash=digest)

    def insert_verifications(self, batch: Sequence[NewVerification], *, time: str) -> list[int]:
        """Store reports, each with its audit entry, in order; their ids, in the same order."""
        rows = [
            (time, n.actor, n.source, n.subject, n.manifest_digest, n.policy, n.verified, n.report)
            for n in batch
        ]
        ids: list[int] = []
        for start in range(0, len(rows), _ROWS_PER_INSERT):
            chunk = rows[start : start + _ROWS_PER_INSERT]
            marks = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * len(chunk))
            returned = self.execute(
                "INSERT INTO verifications (created_at, actor, source, subject, "  # noqa: S608 (placeholders only)
                f"manifest_digest, policy, verified, report) VALUES {marks} RETURNING id",
                [value for row in chunk for value in row],
            ).fetchall()
            # RETURNING's order is unspecified; ids are given in VALUES order, ascending.
            ids += sorted(row[0] for row in returned)
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
        """Before the commit: the transaction's audit rows, a few statements for all of them
        (each is a round trip on PostgreSQL), and the head moved once."""
        for start in range(0, len(self._entries), _ROWS_PER_INSERT):
            rows = self._entries[start : start + _ROWS_PER_INSERT]
            self.execute(
                "INSERT INTO audit_log (seq, time, actor, action, subject, body_digest, "  # noqa: S608 (placeholders only)
                f"prev_hash, hash) VALUES {', '.join(['(?, ?, ?, ?, ?, ?, ?, ?)'] * len(rows))}",
                [value for row in rows for value in row],
            )
        self._entries.clear()
        if self.seq != self._start:
            self.execute(
                "UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (self.seq, self.last)
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
    """The service's database. Thread-safe (each call takes a pooled connection)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._qmark = not is_postgres(engine)
        head = "SELECT seq, hash FROM audit_head WHERE id = 1"
        self._head_sql = head if self._qmark else head + " FOR UPDATE"
        # SQLite has one writer at a time; lockd's writers (threads, and processes on one file)
        # queue here rather than in SQLite's busy handler, which polls with sleeps.
        self._lock = WriteLock(engine.url.database) if self._qmark else None
        # SQLite connections for the hot reads, idle between reads (any thread takes one): at
        # most MAX_IDLE_READERS are kept out of the pool, so short-lived threads (admission
        # lookups) cannot drain it.
        self._idle_readers: list[Any] = []
        self._readers_lock = threading.Lock()
        self._writer: AbstractContextManager[Any] = self._lock or nullcontext()
        self._hot_reads: dict[tuple[str, int], _HotRead] = {}  # compiled once each

    @classmethod
    def open(cls, url: str) -> Store:
        """Raises InputError for a bad URL (nothing connects yet)."""
        return cls(make_engine(url))

    def close(self) -> None:
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

    def _sql(self, statement: str) -> str:
        """SQL written with ``?`` placeholders, in the driver's own style (psycopg: ``%s``)."""
        return statement if self._qmark else statement.replace("?", "%s")

    @contextmanager
    def write(self) -> Iterator[Transaction]:
        """A write transaction on a pooled driver connection, holding the audit head (SQLite:
        the one write lock, taken by BEGIN IMMEDIATE; PostgreSQL: a row lock, FOR UPDATE), so
        appends are serialized and the chain never forks. Plain driver calls: this is the hot
        path of every write, and SQLAlchemy's statement building would cost more than SQLite."""
        with self._writer:
            yield from self._write_unlocked()

    def _write_unlocked(self) -> Iterator[Transaction]:
        raw = self.engine.raw_connection()
        cursor = raw.cursor()
        try:
            if self._qmark:
                cursor.execute("BEGIN IMMEDIATE")
            cursor.execute(self._head_sql)
            head = cursor.fetchone()
            if head is None:
                raise InputError(
                    "the database has no audit head: lockd did not migrate it (lockd serve "
                    "migrates; or check LOCKD_DATABASE_URL)"
                )
            seq, last = head
            tx = Transaction(self, cursor, seq, last)
            yield tx
            tx.finish()
            raw.commit()
        except BaseException:
            raw.rollback()
            raise
        finally:
            cursor.close()
            raw.close()

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
        if self._qmark:
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

    @contextmanager
    def snapshot(self) -> Iterator[Connection]:
        """A read transaction that sees one state of the database throughout."""
        options = {"isolation_level": "REPEATABLE READ"} if is_postgres(self.engine) else {}
        with self.engine.connect().execution_options(**options) as conn, conn.begin():
            yield conn

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
            existing = tx.execute("SELECT id FROM manifests WHERE digest = ?", (digest,)).fetchone()
            if existing is None:
                manifest_id = tx.execute(
                    "INSERT INTO manifests (digest, name, payload_type, envelope, keyids, "
                    "created_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    (digest, name, payload_type, envelope, json.dumps(list(keyids)), time, actor),
                ).fetchone()[0]
                tx.executemany(
                    "INSERT INTO manifest_subjects (manifest_id, name, digest) VALUES (?, ?, ?)",
                    [(manifest_id, s_name, s_digest) for s_name, s_digest in subjects],
                )
                if labels:
                    tx.executemany(
                        "INSERT INTO manifest_labels (manifest_id, key, value) VALUES (?, ?, ?)",
                        [(manifest_id, k, v) for k, v in sorted(labels.items())],
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
                    "INSERT INTO tokens (name, role, token_hash, created_at, created_by) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (name, role, hash_token(token), time, actor),
                )
                tx.append(
                    time=time,
                    actor=actor,
                    action=f"token.create:{role}",
                    subject=name,
                    body_digest=None,
                )
        except self.engine.dialect.loaded_dbapi.IntegrityError as e:
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
            rows = conn.execute(
                select(*_AUDIT_COLUMNS)
                .where(t.audit_log.c.seq > after)
                .order_by(t.audit_log.c.seq)
                .limit(limit)
            ).all()
        return [AuditEntry(*row) for row in rows]

    def verify_audit(self, *, batch: int = 5000) -> ChainCheck:
        """Re-hash the whole log, in seq order, against itself and the head."""
        checker = ChainChecker()
        with self.snapshot() as conn:
            head = conn.execute(
                select(t.audit_head.c.seq, t.audit_head.c.hash).where(t.audit_head.c.id == 1)
            ).one()
            last = None
            while True:
                query = select(*_AUDIT_COLUMNS).order_by(t.audit_log.c.seq).limit(batch)
                if last is not None:
                    query = query.where(t.audit_log.c.seq > last)
                rows = conn.execute(query).mappings().all()
                for row in rows:
                    checker.add(dict(row))
                if len(rows) < batch:
                    break
                last = rows[-1]["seq"]
        return checker.result((head.seq, head.hash))

    # --- health -----------------------------------------------------------------------------

    def ping(self) -> None:
        """Raises SQLAlchemyError when the database does not answer."""
        with self.engine.connect() as conn:
            conn.execute(select(1)).scalar()
