"""The store's write interface (``Store.write()`` and its ``Transaction``) on both databases:
a transaction is stored whole, its rows with their audit entries, or not at all; a batch larger
than one multi-row INSERT keeps its order."""

from __future__ import annotations

import json

import pytest
from service_helpers import image
from sqlalchemy import func, select, text

from lockd.store import tables as t
from lockd.store.repository import NewVerification, Store, now


def _new(n: int) -> NewVerification:
    return NewVerification(
        actor="ci",
        source="client",
        subject=image(n),
        manifest_digest=None,
        policy=None,
        verified=True,
        report=json.dumps({"n": n}),
    )


def test_a_write_that_fails_stores_nothing_and_the_next_one_goes_through(store: Store) -> None:
    with pytest.raises(RuntimeError, match="midway"), store.write() as tx:
        tx.insert_verifications([_new(1), _new(2)], time=now())
        tx.append(time=now(), actor="ci", action="test", subject=None, body_digest=None)
        raise RuntimeError("midway")

    assert store.count_verifications() == 0
    assert store.audit_entries() == []

    with store.write() as tx:
        ids = tx.insert_verifications([_new(3)], time=now())
        seen = tx.execute(select(func.count()).select_from(t.verifications)).scalar_one()
    assert seen == 1  # the transaction reads its own rows
    assert [v.id for v in store.list_verifications()] == ids
    entries = store.audit_entries()
    assert [(e.seq, e.subject) for e in entries] == [(1, image(3))]
    assert store.verify_audit().ok


def test_a_batch_larger_than_one_insert_keeps_its_order(store: Store) -> None:
    batch = [_new(n) for n in range(1100)]  # past SQLAlchemy's 1000 rows per INSERT
    records = store.add_verifications(batch)

    assert [r.id for r in records] == sorted(r.id for r in records)
    for record in records[::97] + records[-2:]:
        stored = store.get_verification(record.id)
        assert stored is not None
        assert (stored.subject, stored.report) == (record.subject, record.report)
    verdict = store.verify_audit()
    assert verdict.ok, verdict
    assert verdict.entries == len(batch)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_write_after_the_server_dropped_the_connection_goes_through(store: Store) -> None:
    store.add_verifications([_new(1)])  # the writers' connection is open now
    with store.engine.connect() as conn:  # as a restarted server would: every other one gone
        dropped = conn.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar_one()
    assert dropped >= 1

    records = store.add_verifications([_new(2)])

    assert [r.subject for r in records] == [image(2)]
    verdict = store.verify_audit()
    assert verdict.ok, verdict
    assert verdict.entries == 2
