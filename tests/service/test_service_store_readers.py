"""The store's hot reads from many short-lived threads, on both databases: every lookup is
answered and no thread keeps a connection once its read is over (the admission webhook looks
the store up on a fresh thread per request: per-thread SQLite readers that were never given
back drained the pool after 16 lookups, and every later lookup waited for a connection)."""

from __future__ import annotations

import threading

from service_helpers import image
from sqlalchemy.pool import QueuePool

from lockd.store.repository import MAX_IDLE_READERS, Principal, Store

ROUNDS = 8
THREADS = 8  # per round: 64 threads in all, four times the pool (8, and 8 overflow)
MANIFEST = "sha256:" + "ab" * 32


def test_lookups_from_short_lived_threads_give_their_connections_back(store: Store) -> None:
    token = store.create_token("ci", "reader", actor="test")
    store.add_manifest(
        digest=MANIFEST,
        name="app",
        payload_type="application/vnd.in-toto+json",
        envelope="{}",
        keyids=[],
        subjects=[("app", image(1))],
        labels={},
        actor="test",
    )
    pool = store.engine.pool
    assert isinstance(pool, QueuePool)
    expected = (Principal(name="ci", role="reader"), None, MANIFEST, None)

    for _ in range(ROUNDS):
        assert _round(store, token) == [expected] * THREADS
        # The threads are gone: only the idle readers, and the writers' connection (kept
        # between writes), are still out of the pool.
        assert pool.checkedout() <= MAX_IDLE_READERS + 1


def _round(store: Store, token: str) -> list[object]:
    """The answers of THREADS new threads, alive at once, each doing four hot reads."""
    answers: list[object] = []
    start = threading.Barrier(THREADS)

    def lookup() -> None:
        start.wait()
        answers.append(
            (
                store.principal_for(token),
                store.principal_for("not-a-token"),
                store.latest_manifest_digest([image(1)]),
                store.latest_manifest_digest([image(2)]),
            )
        )

    threads = [threading.Thread(target=lookup) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers
