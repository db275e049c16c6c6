"""The audit log as a transparency log (#18 item 4), on SQLite and PostgreSQL: the Merkle tree
the store keeps as entries are appended, the signed checkpoints and proofs the service serves,
and `lockd audit verify --checkpoint` catching a rewritten history and a replaced database that
the chain's own check (server side and client side) does not."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from service_fixtures import Tokens
from service_helpers import Server
from sqlalchemy import delete, select, update

from lockd.errors import LockdError
from lockd.store import tables as t
from lockd.store.audit import AuditEntry, TreeDamagedError
from lockd.store.repository import Store
from lockd.trust import merkle
from lockd.trust.auditlog import GENESIS, entry_bytes, entry_hash
from lockd.trust.checkpoint import LogSigner, LogVerifier, open_checkpoint
from lockd.trust.logkey import write_log_key

Lockd = Callable[..., subprocess.CompletedProcess[str]]


# --- an independent tree: RFC 9162 §2.1.1 written out here, not lockd's code -----------------


def rfc_root(leaves: list[bytes]) -> bytes:
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + rfc_root(leaves[:k]) + rfc_root(leaves[k:])).digest()


def leaf_data(entry: AuditEntry | dict[str, object]) -> bytes:
    """An entry's leaf data, from the spec: the canonical JSON of its hashed fields."""
    fields = ("seq", "time", "actor", "action", "subject", "body_digest", "prev_hash")
    row = entry if isinstance(entry, dict) else entry.as_dict()
    return json.dumps({k: row[k] for k in fields}, sort_keys=True, separators=(",", ":")).encode()


def append(store: Store, n: int, tag: str = "e") -> None:
    for i in range(n):
        store.add_audits([("tester", "test.append", f"{tag}{i}", None)])


@pytest.fixture
def log_key(tmp_path: Path) -> tuple[Path, LogVerifier]:
    """A log key made as `lockd keygen --log-key` makes it: (the .key file, its verifier)."""
    signer = LogSigner.generate("lockd.test/audit")
    key, _ = write_log_key(tmp_path / "log", signer)
    return key, signer.verifier()


# --- the store ----------------------------------------------------------------------------------


def test_the_tree_grows_with_every_append_and_its_proofs_verify(store: Store) -> None:
    assert store.tree_head() == (0, hashlib.sha256(b"").digest())
    append(store, 5)
    store.add_audits([("a", "batch", f"b{i}", None) for i in range(12)])  # one transaction
    append(store, 4)
    entries = store.audit_entries()
    data = [leaf_data(e) for e in entries]
    size, root = store.tree_head()
    assert size == len(entries) == 21
    assert root == rfc_root(data)
    for entry in entries:
        proof = store.inclusion_proof(entry.seq - 1, size)
        merkle.verify_inclusion(
            entry.seq - 1, size, merkle.leaf_hash(data[entry.seq - 1]), proof, root
        )
    for first in (1, 4, 8, 13, 21):
        proof = store.consistency_proof(first, size)
        merkle.verify_consistency(first, size, rfc_root(data[:first]), root, proof)
    assert store.verify_audit().ok


def test_a_leaf_or_head_edited_alone_fails_the_services_own_check(store: Store) -> None:
    append(store, 6)
    with store.engine.begin() as conn:
        conn.execute(update(t.audit_log).where(t.audit_log.c.seq == 3).values(tree_nodes="0" * 64))
    verdict = store.verify_audit()
    assert (verdict.ok, verdict.first_bad) == (False, 3)
    assert verdict.reason == (
        "entry 3's Merkle tree hashes do not match its content and the entries before it: the "
        "entry or its tree hashes were edited"
    )
    with store.engine.begin() as conn:  # a node above the leaves, lost: proofs say so
        conn.execute(update(t.audit_log).where(t.audit_log.c.seq == 4).values(tree_nodes="ab"))
    with pytest.raises(TreeDamagedError) as raised:
        store.inclusion_proof(0, 6)
    assert str(raised.value) == (
        "the audit log's Merkle tree lacks the node over entries 3 to 4 (or it is malformed): "
        "the database was edited"
    )


def _append_in_a_process(url: str, tag: str, count: int) -> None:
    store = Store.open(url)
    try:
        for i in range(count):
            store.add_audits([(tag, "test.concurrent", f"{tag}{i}", None)])
    finally:
        store.close()


def test_appends_from_two_processes_keep_one_consistent_tree(
    database_url: str, store: Store
) -> None:
    """Two processes (replicas) appending at once: the head's row lock (PostgreSQL) or the
    write lock (SQLite) serialise them; the tree is the tree of the entries, in seq order."""
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_append_in_a_process, args=(database_url, tag, 60))
        for tag in ("replica-a", "replica-b")
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
        assert worker.exitcode == 0
    entries = store.audit_entries(limit=1000)
    assert len(entries) == 120
    assert {e.actor for e in entries} == {"replica-a", "replica-b"}
    size, root = store.tree_head()
    assert (size, root) == (120, rfc_root([leaf_data(e) for e in entries]))
    with store.engine.connect() as conn:
        kept = conn.execute(select(t.audit_log.c.tree_nodes)).scalars().all()
    # every perfect subtree once: 120 leaves, then 60 + 30 + 15 + 7 + 3 + 1 above them
    assert sum(len(nodes) for nodes in kept) == 64 * (120 + 116)
    assert store.verify_audit().ok


def old_chain(n: int) -> list[dict[str, object]]:
    """``n`` entries as lockd 0002 wrote them: a hash chain, no tree."""
    old: list[dict[str, object]] = []
    prev = GENESIS
    for seq in range(1, n + 1):
        entry: dict[str, object] = {
            "seq": seq,
            "time": f"2026-01-01T00:00:{seq:02d}.000000Z",
            "actor": "old",
            "action": "manifest.create",
            "subject": f"s{seq}",
            "body_digest": None,
            "prev_hash": prev,
        }
        prev = entry_hash(entry)
        old.append({**entry, "hash": prev})
    return old


def at_revision_0002(store: Store, entries: list[dict[str, object]]) -> None:
    """Turn ``store`` back into a database of revision 0002 holding ``entries`` (the head on
    the last one's hash)."""
    from sqlalchemy import text

    with store.engine.begin() as conn:
        for table, column in (("audit_log", "tree_nodes"), ("audit_head", "frontier")):
            conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
        conn.execute(text("UPDATE alembic_version SET version_num = '0002'"))
        conn.execute(text("DELETE FROM audit_log"))
        columns = ", ".join(entries[0])
        values = ", ".join(f":{c}" for c in entries[0])
        conn.execute(text(f"INSERT INTO audit_log ({columns}) VALUES ({values})"), entries)
        conn.execute(
            text("UPDATE audit_head SET seq = :s, hash = :h"),
            {"s": entries[-1]["seq"], "h": entries[-1]["hash"]},
        )


def test_the_migration_turns_an_existing_chain_into_the_tree(database_url: str) -> None:
    """A database of revision 0002 with a chain written before the tree existed: after the
    upgrade, every entry keeps its hash (bundles exported before still verify) and is a leaf."""
    from lockd.store.migrate import upgrade

    store = Store.open(database_url)
    try:
        old = old_chain(37)
        at_revision_0002(store, old)
        upgrade(store.engine)
        entries = store.audit_entries()
        assert [e.hash for e in entries] == [o["hash"] for o in old]
        assert store.tree_head() == (37, rfc_root([leaf_data(o) for o in old]))
        assert store.verify_audit().ok
        append(store, 3)  # and the log goes on from there
        assert store.tree_head()[1] == rfc_root([leaf_data(e) for e in store.audit_entries()])
    finally:
        store.close()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda old: old[4].update(actor="mallory"),
            "entry 5 was edited: its content no longer matches its hash",
        ),
        (lambda old: old.pop(6), "entry 7 is missing (the next entry is 8): an entry was deleted"),
        (
            lambda old: old.append({**old[-1], "seq": 38, "prev_hash": "f" * 64}),
            "entry 38 does not hold the hash of entry 37: entry 37 was edited and re-hashed, or "
            "the link in entry 38 was changed",
        ),
    ],
)
def test_the_migration_refuses_a_chain_broken_before_it(
    database_url: str,
    edit: Callable[[list[dict[str, object]]], object],
    message: str,
) -> None:
    """F10: the tree built over a chain already broken would make it look whole; the upgrade
    stops naming the first entry that does not hold, and leaves the database as it was."""
    from sqlalchemy import inspect, text

    from lockd.store.migrate import upgrade

    store = Store.open(database_url)
    try:
        old = old_chain(37)
        edit(old)
        at_revision_0002(store, old)
        with pytest.raises(LockdError) as raised:
            upgrade(store.engine)
        with store.engine.connect() as conn:
            revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        columns = {c["name"] for c in inspect(store.engine).get_columns("audit_log")}
        with store.engine.begin() as conn:  # the backup restored: the upgrade goes through
            conn.execute(text("DELETE FROM audit_log"))
            conn.execute(text("UPDATE audit_head SET seq = 0, hash = :h"), {"h": GENESIS})
        upgrade(store.engine)
        assert store.verify_audit().ok
    finally:
        store.close()
    first = message.split()[1]
    assert str(raised.value) == (
        f"the audit chain is broken at entry {first if first != '38' else 37}: {message}. "
        "lockd will not build the Merkle tree over it (its checkpoints would sign the broken "
        "history as whole); the database is left as it was: restore it from a backup taken "
        "before the break"
    )
    assert raised.value.exit_code == 1
    assert revision == "0002"
    assert "tree_nodes" not in columns


# --- the routes ---------------------------------------------------------------------------------


def test_checkpoints_and_proofs_over_http(
    make_client: Callable[..., TestClient],
    store: Store,
    tokens: Tokens,
    log_key: tuple[Path, LogVerifier],
) -> None:
    client = make_client(log_key=log_key[0])
    append(store, 9)
    reader = tokens.header("reader")
    assert client.get("/v1/audit/log-key", headers=reader).text == f"{log_key[1]}\n"
    answer = client.get("/v1/audit/checkpoint", headers=reader)
    assert answer.headers["content-type"] == "text/plain; charset=utf-8"
    checkpoint = open_checkpoint(answer.content, log_key[1])
    entries = store.audit_entries()
    assert len(entries) == 12  # the three tokens' entries, then nine
    assert (checkpoint.origin, checkpoint.size) == ("lockd.test/audit", 12)
    assert checkpoint.root == rfc_root([leaf_data(e) for e in entries])
    assert client.get("/v1/audit/checkpoint", headers=reader).content == answer.content
    for entry in entries:
        proof = client.get(
            "/v1/audit/proof/inclusion", params={"index": entry.seq - 1, "size": 12}, headers=reader
        ).json()
        assert (proof["index"], proof["size"]) == (entry.seq - 1, 12)
        merkle.verify_inclusion(
            entry.seq - 1,
            12,
            merkle.leaf_hash(leaf_data(entry)),
            [bytes.fromhex(h) for h in proof["hashes"]],
            checkpoint.root,
        )
    old_root = rfc_root([leaf_data(e) for e in entries[:5]])
    proof = client.get(
        "/v1/audit/proof/consistency", params={"from": 5, "to": 12}, headers=reader
    ).json()
    assert (proof["first"], proof["second"]) == (5, 12)
    merkle.verify_consistency(
        5, 12, old_root, checkpoint.root, [bytes.fromhex(h) for h in proof["hashes"]]
    )


@pytest.mark.parametrize(
    ("path", "params", "status", "detail"),
    [
        (
            "inclusion",
            {"index": 12, "size": 12},
            422,
            "index 12: the tree of size 12 has leaves 0 to 11",
        ),
        ("inclusion", {"index": 0, "size": 13}, 422, "size 13: the log has 12 entries"),
        ("inclusion", {"index": 0, "size": 0}, 422, "index 0: the tree of size 0 has no leaves"),
        (
            "inclusion",
            {"index": -1, "size": 3},
            422,
            "query index: Input should be greater than or equal to 0",
        ),
        (
            "inclusion",
            {"index": 2**63, "size": 3},
            422,
            "query index: Input should be less than or equal to 9223372036854775807",
        ),
        (
            "inclusion",
            {"index": "1e3", "size": 3},
            422,
            "query index: Input should be a valid integer, unable to parse string as an integer",
        ),
        ("inclusion", {"size": 3}, 422, "query index: Field required"),
        (
            "consistency",
            {"from": 7, "to": 6},
            422,
            "sizes 7 and 6: a consistency proof goes from a smaller tree to a larger one",
        ),
        (
            "consistency",
            {"from": 0, "to": 2**62},
            422,
            "size 4611686018427387904: the log has 12 entries",
        ),
        ("consistency", {"from": 3}, 422, "query to: Field required"),
    ],
)
def test_bad_and_hostile_proof_parameters_are_4xx_saying_why(
    client: TestClient,
    store: Store,
    tokens: Tokens,
    path: str,
    params: dict[str, object],
    status: int,
    detail: str,
) -> None:
    append(store, 9)
    answer = client.get(f"/v1/audit/proof/{path}", params=params, headers=tokens.header("reader"))
    assert (answer.status_code, answer.json()["detail"]) == (status, detail)


def test_the_log_routes_need_a_reader_like_the_other_audit_routes(
    client: TestClient, store: Store, tokens: Tokens
) -> None:
    for path in (
        "checkpoint",
        "log-key",
        "proof/inclusion?index=0&size=1",
        "proof/consistency?from=0&to=0",
    ):
        answer = client.get(f"/v1/audit/{path}")
        assert answer.status_code == 401, path
        assert answer.json()["detail"].startswith("this needs a bearer token")


def test_without_a_log_key_sqlite_keeps_one_beside_its_database_and_postgresql_signs_nothing(
    database_url: str, make_client: Callable[..., TestClient], tokens: Tokens
) -> None:
    reader = tokens.header("reader")
    first = make_client().get("/v1/audit/log-key", headers=reader)
    if database_url.startswith("sqlite:///"):
        kept = Path(database_url.removeprefix("sqlite:///")).parent / "lockd-log.key"
        assert kept.stat().st_mode & 0o777 == 0o600
        assert first.status_code == 200
        verifier = LogVerifier.parse(first.text)
        assert verifier.name.split("/")[1] == "lockd-audit"
        again = make_client().get("/v1/audit/log-key", headers=reader)  # a restart keeps it
        assert again.text == first.text
        return
    assert first.status_code == 404
    assert first.json()["detail"] == (
        "this service signs no audit checkpoints: it has no log key. Set LOCKD_LOG_KEY to a key "
        "file made by `lockd keygen --log-key NAME` (a service on PostgreSQL never makes one "
        "itself: its replicas must share one key)"
    )
    assert make_client().get("/v1/audit/checkpoint", headers=reader).status_code == 404


# --- the finding: a rewritten history, a replaced database ----------------------------------------


def rewrite_history(store: Store, seq: int, actor: str) -> None:
    """What whoever can write the database can do (issue #18, finding 3): edit entry ``seq``,
    re-hash the rest of the chain, move the head, and rebuild the Merkle tree to match, so the
    service's own check passes."""
    with store.engine.begin() as conn:
        conn.execute(update(t.audit_log).where(t.audit_log.c.seq == seq).values(actor=actor))
        rows = conn.execute(select(t.audit_log).order_by(t.audit_log.c.seq)).mappings().all()
        prev, tree = GENESIS, merkle.Frontier()
        for row in rows:
            entry = {**row, "prev_hash": prev}
            prev = entry_hash(entry)
            leaf = merkle.leaf_hash(entry_bytes(entry))
            ended = [leaf, *(h for _, h in tree.append(leaf))]
            conn.execute(
                update(t.audit_log)
                .where(t.audit_log.c.seq == row["seq"])
                .values(prev_hash=entry["prev_hash"], hash=prev, tree_nodes=b"".join(ended).hex())
            )
        conn.execute(
            update(t.audit_head).values(
                seq=len(rows), hash=prev, frontier="".join(h.hex() for h in tree.hashes)
            )
        )


@pytest.fixture
def served(
    database_url: str, keypair: tuple[Path, Path], log_key: tuple[Path, LogVerifier], tmp_path: Path
) -> Iterator[Server]:
    env = {
        "LOCKD_DATABASE_URL": database_url,
        "LOCKD_TRUSTED_KEYS": str(keypair[1]),
        "LOCKD_LOG_KEY": str(log_key[0]),
        "LOCKD_ALLOW_ANONYMOUS_READ": "1",
    }
    with (tmp_path / "server.log").open("wb") as log:
        server = Server(env, log=log).start()
        yield server
        server.stop()


@dataclass(frozen=True)
class Follower:
    """`lockd audit verify --server URL --checkpoint SAVED --log-key VKEY [MORE]`."""

    server: Server
    saved: Path
    vkey: Path
    lockd: Lockd

    def __call__(self, *more: str) -> subprocess.CompletedProcess[str]:
        return self.lockd(
            "audit", "verify", "--server", self.server.url, "--checkpoint", self.saved,
            "--log-key", self.vkey, *more,
        )  # fmt: skip


@pytest.fixture
def follow(
    served: Server, lockd: Lockd, tmp_path: Path, log_key: tuple[Path, LogVerifier]
) -> Follower:
    return Follower(served, tmp_path / "audit.checkpoint", log_key[0].with_suffix(".vkey"), lockd)


def test_a_rewritten_history_passes_the_chain_checks_but_not_a_saved_checkpoint(
    follow: Follower, store: Store, lockd: Lockd, log_key: tuple[Path, LogVerifier]
) -> None:
    server, saved = follow.server, follow.saved
    append(store, 10)
    first = follow()
    assert first.returncode == 0, first.stdout + first.stderr
    assert " ".join(first.stdout.split()) == (
        f"the log's checkpoint verifies: 10 entries, signed by {log_key[1]}; no earlier "
        f"checkpoint in {saved} to compare with the audit chain holds: 10 entries saved the "
        f"checkpoint of 10 entries to {saved}"
    )
    assert open_checkpoint(saved.read_bytes(), log_key[1]).size == 10
    append(store, 3)
    grown = follow()
    assert grown.returncode == 0, grown.stdout + grown.stderr
    assert (
        "the log is a consistent extension of the checkpoint saved at 10 entries: now 13"
        in " ".join(grown.stdout.split())
    )

    rewrite_history(store, 4, "k8s:system:admin-alice")
    append(store, 2)  # and it goes on
    assert store.verify_audit().ok  # the service's own check is satisfied
    chain_only = lockd("audit", "verify", "--server", server.url)
    assert chain_only.returncode == 0  # so is the client's re-hash of the chain
    caught = follow("--json")
    assert caught.returncode == 1, caught.stdout + caught.stderr
    verdict = json.loads(caught.stdout)
    assert (verdict["ok"], verdict["failed_at"], verdict["saved_size"], verdict["size"]) == (
        False,
        13,
        13,
        15,
    )
    assert verdict["reason"].startswith(
        "the log of 15 entries is not a consistent extension of the saved checkpoint of 13: its "
        "first 13 entries were rewritten, or the database was replaced ("
    )
    assert verdict["reason"].endswith("); consistency fails at size 13")
    assert verdict["saved_to"] is None
    assert open_checkpoint(saved.read_bytes(), log_key[1]).size == 13  # not replaced
    text = follow()
    assert text.returncode == 1
    assert "the log was rewritten: the log of 15 entries is not a consistent extension" in " ".join(
        text.stdout.split()
    )


def test_a_replaced_database_behind_the_same_url_is_reported(
    follow: Follower, store: Store
) -> None:
    append(store, 8)
    assert follow().returncode == 0
    # the database replaced by a fresh one with fewer entries (same key, same URL)
    with store.engine.begin() as conn:
        conn.execute(delete(t.audit_log))
        conn.execute(update(t.audit_head).values(seq=0, hash=GENESIS, frontier=""))
    append(store, 5, tag="fresh")
    shorter = follow("--json")
    assert shorter.returncode == 1, shorter.stdout + shorter.stderr
    verdict = json.loads(shorter.stdout)
    assert (verdict["failed_at"], verdict["reason"]) == (
        8,
        "the log has 5 entries, fewer than the 8 of the saved checkpoint: entries were removed "
        "or the database was replaced; consistency fails at size 8",
    )
    # ... or by another one as long as or longer than the saved log
    append(store, 3, tag="fresh-more")
    same = json.loads(follow("--json").stdout)
    assert same["failed_at"] == 8
    assert same["reason"].startswith(
        "the log of 8 entries has another root than the saved checkpoint ("
    )
    append(store, 4, tag="fresh-more")
    longer = json.loads(follow("--json").stdout)
    assert (longer["ok"], longer["failed_at"]) == (False, 8)
    assert longer["reason"].startswith("the log of 12 entries is not a consistent extension")


def test_a_checkpoint_signed_by_another_key_or_a_bad_saved_file_is_refused(
    served: Server, store: Store, lockd: Lockd, tmp_path: Path
) -> None:
    server = served
    append(store, 3)
    saved = tmp_path / "audit.checkpoint"
    stranger = LogSigner.generate("lockd.test/audit").verifier()
    wrong = lockd(
        "audit", "verify", "--server", server.url, "--checkpoint", saved, "--log-key", str(stranger)
    )
    assert wrong.returncode == 1
    assert " ".join(wrong.stderr.split()).startswith(
        f"lockd: error: {server.url}/v1/audit/checkpoint: the note is signed by no trusted key "
        f"(trusted: {stranger.name}+{stranger.id.hex()}; signed by: lockd.test/audit+"
    )
    assert not saved.exists()
    saved.write_text("not a checkpoint\n")
    garbage = lockd("audit", "verify", "--server", server.url, "--checkpoint", saved)
    assert garbage.returncode == 2
    assert " ".join(garbage.stderr.split()) == (
        f"lockd: error: {saved}: not a checkpoint lockd saved (the note has no blank line "
        "between its text and its signatures)"
    )
    usage = lockd("audit", "verify", "--server", server.url, "--log-key", str(stranger))
    assert (usage.returncode, usage.stderr.strip()) == (
        2,
        "lockd: error: --log-key checks checkpoints: give --checkpoint FILE with it",
    )


def test_unpinned_the_services_own_key_is_used_and_said(
    served: Server,
    store: Store,
    lockd: Lockd,
    tmp_path: Path,
    log_key: tuple[Path, LogVerifier],
) -> None:
    server = served
    append(store, 2)
    saved = tmp_path / "audit.checkpoint"
    result = lockd("audit", "verify", "--server", server.url, "--checkpoint", saved)
    assert result.returncode == 0, result.stderr
    assert (
        f"signed by {log_key[1]} (the key the service serves: pin it with --log-key)"
        in " ".join(result.stdout.split())
    )
    assert open_checkpoint(saved.read_bytes(), log_key[1]).size == 2
    again = json.loads(
        lockd("audit", "verify", "--server", server.url, "--checkpoint", saved, "--json").stdout
    )
    assert (again["ok"], again["saved_size"], again["size"], again["key_pinned"]) == (
        True,
        2,
        2,
        False,
    )
    assert (again["saved_to"], again["key"]) == (str(saved), str(log_key[1]))


def test_a_new_log_key_behind_the_same_url_is_reported(
    served: Server, store: Store, lockd: Lockd, tmp_path: Path, log_key: tuple[Path, LogVerifier]
) -> None:
    """The service restarted with another key (its data folder wiped and a key made afresh,
    or the key replaced): unpinned, the saved checkpoint no longer verifies under the key it
    serves; pinned, the new checkpoint does not verify."""
    append(store, 4)
    saved = tmp_path / "audit.checkpoint"
    assert lockd("audit", "verify", "--server", served.url, "--checkpoint", saved).returncode == 0
    served.stop()
    other = LogSigner.generate("lockd.test/audit")
    other_key, _ = write_log_key(tmp_path / "other", other)
    env = {**served.env, "LOCKD_LOG_KEY": str(other_key)}
    with (tmp_path / "restarted.log").open("wb") as log:
        restarted = Server(env, port=served.port, log=log).start()
        try:
            unpinned = lockd("audit", "verify", "--server", served.url, "--checkpoint", saved)
            pinned = lockd(
                "audit", "verify", "--server", served.url, "--checkpoint", saved,
                "--log-key", str(log_key[1]),
            )  # fmt: skip
        finally:
            restarted.stop()
    new, old = other.verifier(), log_key[1]
    assert (unpinned.returncode, one_line(unpinned.stderr)) == (
        1,
        f"lockd: error: the saved checkpoint is not signed by the log key {new.name}+"
        f"{new.id.hex()} (the note is signed by no trusted key (trusted: {new.name}+"
        f"{new.id.hex()}; signed by: {old.name}+{old.id.hex()})); the log's key changed: "
        "another log answers, or the key was replaced",
    )
    assert (pinned.returncode, one_line(pinned.stderr)) == (
        1,
        f"lockd: error: {served.url}/v1/audit/checkpoint: the note is signed by no trusted key "
        f"(trusted: {old.name}+{old.id.hex()}; signed by: {new.name}+{new.id.hex()})",
    )
    assert open_checkpoint(saved.read_bytes(), old).size == 4  # kept


def one_line(text: str) -> str:
    return " ".join(text.split())


def test_a_saved_checkpoint_against_a_service_that_signs_none_is_a_verdict(
    served: Server, store: Store, lockd: Lockd, tmp_path: Path, log_key: tuple[Path, LogVerifier]
) -> None:
    """F7: the service behind the URL swapped for one without a log key. With a checkpoint
    saved, the log it checkpointed can no longer be verified: exit 1, not a setup error; with
    none saved there is nothing to hold it to, and it stays a setup error (exit 2)."""
    append(store, 3)
    saved = tmp_path / "audit.checkpoint"
    assert lockd("audit", "verify", "--server", served.url, "--checkpoint", saved).returncode == 0
    kept = saved.read_bytes()
    served.stop()
    env = {k: v for k, v in served.env.items() if k != "LOCKD_LOG_KEY"}
    if env["LOCKD_DATABASE_URL"].startswith("sqlite"):  # else it would keep a key beside it
        shared = tmp_path / "shared"
        shared.mkdir(mode=0o777)
        shared.chmod(0o777)
        env["LOCKD_DATABASE_URL"] = f"sqlite:///{shared}/lockd.db"
    vkey = str(log_key[1])
    with (tmp_path / "swapped.log").open("wb") as log:
        swapped = Server(env, port=served.port, log=log).start()
        try:
            runs = {
                (pin, fresh): lockd(
                    "audit",
                    "verify",
                    "--server",
                    served.url,
                    "--checkpoint",
                    tmp_path / "none.checkpoint" if fresh else saved,
                    *pin,
                )
                for pin in ((), ("--log-key", vkey))
                for fresh in (False, True)
            }
        finally:
            swapped.stop()
    for (pin, fresh), run in runs.items():
        path = "log-key" if not pin else "checkpoint"
        why = f"lockd: error: GET {served.url}/v1/audit/{path}: 404 this service signs no audit checkpoints"
        if fresh:
            assert run.returncode == 2, run.stderr
            assert one_line(run.stderr).startswith(why)
            assert "can no longer be verified" not in run.stderr
        else:
            assert run.returncode == 1, run.stderr
            assert one_line(run.stderr).startswith(why)
            assert one_line(run.stderr).endswith(
                "; the log whose checkpoint was saved can no longer be verified here: it was "
                "signed, this service serves no checkpoint"
            )
    assert saved.read_bytes() == kept
    assert not (tmp_path / "none.checkpoint").exists()


def test_serve_stops_on_a_sqlite_database_whose_chain_was_edited_before_the_upgrade(
    lockd: Lockd, tmp_path: Path
) -> None:
    """F10, as an operator sees it: `lockd serve` upgrading such a file exits 1 naming the
    entry, and the file stays at revision 0002."""
    from lockd.store.migrate import schema_state, upgrade

    url = f"sqlite:///{tmp_path}/lockd.db"
    store = Store.open(url)
    try:
        upgrade(store.engine)
        old = old_chain(12)
        old[2]["subject"] = "edited"
        at_revision_0002(store, old)
    finally:
        store.close()
    served = lockd("serve", "--port", "1", env={"LOCKD_DATABASE_URL": url})
    assert served.returncode == 1, served.stderr
    assert one_line(served.stderr).endswith(
        "lockd: error: the audit chain is broken at entry 3: entry 3 was edited: its content no "
        "longer matches its hash. lockd will not build the Merkle tree over it (its checkpoints "
        "would sign the broken history as whole); the database is left as it was: restore it "
        "from a backup taken before the break"
    )
    store = Store.open(url)
    try:
        assert schema_state(store.engine).revision == "0002"
    finally:
        store.close()
