"""The write path of ``POST /v1/verifications`` on both databases: reports stored in batches (one
transaction, each with its audit entry), and several server processes writing one database
(``lockd serve --workers 2``; on SQLite they queue on a lock file beside the database)."""

from __future__ import annotations

import json
import threading
import urllib.request
from pathlib import Path

from service_fixtures import Signer
from service_helpers import Server, envelope, image, observation, observation_json

from lockd.store.repository import NewVerification, Store

WRITERS = 8
REQUESTS = 12  # per writer


def _new(n: int) -> NewVerification:
    return NewVerification(
        actor="ci",
        source="server",
        subject=image(n),
        manifest_digest=None,
        policy="default",
        verified=n % 2 == 0,
        report=json.dumps({"n": n}),
    )


def test_a_batch_is_stored_in_order_each_with_its_audit_entry(store: Store) -> None:
    store.create_token("ci", "recorder", actor="test")
    records = store.add_verifications([_new(n) for n in range(5)])

    assert [r.subject for r in records] == [image(n) for n in range(5)]
    assert [r.id for r in records] == sorted(r.id for r in records)
    assert len({r.created_at for r in records}) == 1  # one transaction, one time
    for record in records:
        assert store.get_verification(record.id) == record
    entries = store.audit_entries()
    assert [e.action for e in entries] == ["token.create:recorder"] + ["verification.create"] * 5
    assert [e.subject for e in entries[1:]] == [image(n) for n in range(5)]
    verdict = store.verify_audit()
    assert verdict.ok, verdict
    assert verdict.entries == 6


def test_an_empty_batch_stores_nothing(store: Store) -> None:
    assert store.add_verifications([]) == []
    assert store.count_verifications() == 0
    assert store.verify_audit().entries == 0


def test_two_worker_processes_store_every_acknowledged_write(
    database_url: str, signer: Signer, store: Store, tmp_path: Path
) -> None:
    token = store.create_token("writer", "recorder", actor="test")
    env = {"LOCKD_DATABASE_URL": database_url, "LOCKD_TRUSTED_KEYS": str(signer.public)}
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    base = observation(image(1))
    body = json.dumps({"observation": observation_json(base)}).encode()
    acknowledged: list[int] = []
    failures: list[str] = []
    lock = threading.Lock()

    def post(url: str, data: bytes) -> urllib.request.Request:
        return urllib.request.Request(url, data=data, headers=headers)

    def writer(server: Server) -> None:
        for _ in range(REQUESTS):
            try:
                with urllib.request.urlopen(
                    post(server.url + "/v1/verifications", body), timeout=60
                ) as answer:
                    location = answer.headers["Location"]
                with lock:
                    acknowledged.append(int(location.rsplit("/", 1)[1]))
            except OSError as e:
                with lock:
                    failures.append(repr(e))

    with (tmp_path / "server.log").open("ab") as log:
        server = Server(env, log=log, workers=2).start()
        try:
            with urllib.request.urlopen(
                post(server.url + "/v1/manifests", envelope(signer.key, base).to_json()), timeout=60
            ) as answer:
                assert answer.status == 201
            threads = [threading.Thread(target=writer, args=(server,)) for _ in range(WRITERS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            server.stop()

    assert failures == []
    assert len(acknowledged) == len(set(acknowledged)) == WRITERS * REQUESTS
    for verification_id in acknowledged:
        record = store.get_verification(verification_id)
        assert record is not None, verification_id
        assert record.verified
    verdict = store.verify_audit()
    assert verdict.ok, verdict
    assert verdict.entries == 1 + 1 + WRITERS * REQUESTS  # the token, the manifest, the reports
    if database_url.startswith("sqlite:///"):  # the writers queued on the lock file
        assert Path(database_url.removeprefix("sqlite:///") + "-writer").is_file()
