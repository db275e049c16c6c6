"""The fleet's lifecycle (issue 8): forgetting hosts (``DELETE /v1/fleet/hosts/{host}``,
``lockd status --forget``, and by age with LOCKD_FLEET_FORGET_AFTER_S) and pruning transition
events that wait for nothing (LOCKD_FLEET_EVENT_RETENTION_S), done by the upkeep pass on an
agent's batch. Every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from service_fixtures import Signer, Tokens
from service_helpers import Server
from sqlalchemy import func, select, update
from test_service_fleet import (
    Receiver,
    batch,
    events,
    fleet,
    lockd,
    post,
    result,
    wait_until,
)

from lockd.model.fleet import FleetBatch, timestamp
from lockd.store import tables as t
from lockd.store.fleet import apply_batch, forget_host, pending_events, prune_events
from lockd.store.repository import Store

OLD = "2020-01-01T00:00:00.000000Z"
NOW = dt.datetime.now(dt.timezone.utc)
RECENT = timestamp(NOW - dt.timedelta(days=1))


def apply(store: Store, body: dict[str, Any], *, received_at: str = RECENT) -> None:
    """A batch applied straight to the store (no upkeep pass runs then)."""
    apply_batch(
        store, FleetBatch.model_validate(body), actor="test", received_at=received_at, notify=True
    )


def event_ids(store: Store) -> list[int]:
    return [e["id"] for e in events(store)]


def set_event(store: Store, event_id: int, **values: Any) -> None:
    with store.engine.begin() as conn:
        conn.execute(update(t.fleet_events).where(t.fleet_events.c.id == event_id).values(**values))


def audit(client: TestClient, tokens: Tokens) -> list[dict[str, Any]]:
    answer = client.get("/v1/audit", headers=tokens.header("reader"))
    assert answer.status_code == 200, answer.text
    entries: list[dict[str, Any]] = answer.json()
    return entries


def containers(store: Store, host: str) -> int:
    with store.engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(t.fleet_containers)
                .where(t.fleet_containers.c.host == host)
            ).scalar_one()
        )


# --- pruning events -------------------------------------------------------------------------


def test_old_events_that_wait_for_nothing_are_pruned_pending_ones_never(store: Store) -> None:
    # Six transitions to fail (each queued for the webhook), observed long ago.
    apply(store, batch(1, list(range(1, 7)), [result(n, "fail", at=OLD) for n in range(1, 7)]))
    delivered, gave_up, never_sent, pending, leased, recent = event_ids(store)
    set_event(store, delivered, delivered=True, delivered_at=RECENT)
    set_event(store, gave_up, gave_up=True, next_attempt_at=None)
    set_event(store, never_sent, notify=False, next_attempt_at=None)  # no webhook URL then
    set_event(store, leased, lease_owner="elsewhere", lease_until=RECENT, attempts=3)
    set_event(store, recent, delivered=True, at=RECENT)

    assert prune_events(store, before=timestamp(NOW - dt.timedelta(days=30))) == 3
    assert event_ids(store) == [pending, leased, recent]
    assert pending_events(store) == [pending, leased]
    assert prune_events(store, before=timestamp(NOW - dt.timedelta(days=30))) == 0


def test_a_batch_runs_the_upkeep_pass_once_per_interval(
    client: TestClient, tokens: Tokens, store: Store
) -> None:
    # Old transitions never to be sent: one recorded while no webhook URL was set, one to pass.
    apply(store, batch(1, [1], [result(1, "fail", at=OLD)]))
    apply(store, batch(1, [2], [result(2, "pass", at=OLD)], host="node-2"), received_at=OLD)
    set_event(store, event_ids(store)[0], notify=False, next_attempt_at=None)
    assert [e["notify"] for e in events(store)] == [False, False]

    answer = post(client, tokens, batch(2, [1, 3], [result(3, "fail", at=RECENT)]))
    assert answer.status_code == 200, answer.text
    # The old events went; the new one stays; no host is forgotten by default.
    assert [(e["container_id"][-1], e["at"]) for e in events(store)] == [("3", RECENT)]
    assert [h["host"] for h in fleet(client, tokens)["hosts"]] == ["node-1", "node-2"]
    metrics = client.get("/metrics").text
    assert 'lockd_fleet_upkeep_total{removed="events_pruned"} 2.0' in metrics
    assert 'lockd_fleet_upkeep_total{removed="hosts_forgotten"} 0.0' in metrics

    # The next pass is due in UPKEEP_EVERY_S: a batch right after prunes nothing.
    apply(store, batch(3, [1, 3, 4], [result(4, "fail", at=OLD)]))
    set_event(store, event_ids(store)[-1], delivered=True)
    post(client, tokens, batch(4, [1, 3, 4]))
    assert len(events(store)) == 2


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


def test_transitions_recorded_without_a_webhook_are_not_pending_and_never_sent(
    make_client: Callable[..., TestClient], tokens: Tokens, store: Store, receiver: Receiver
) -> None:
    quiet = make_client()
    post(quiet, tokens, batch(1, [1], [result(1, "fail", at=RECENT)]))
    [event] = events(store)
    assert (event["notify"], event["next_attempt_at"]) == (False, None)
    assert pending_events(store) == []

    hooked = make_client(webhook_url=receiver.url, webhook_backoff_s=0.05)
    post(hooked, tokens, batch(2, [1, 2], [result(2, "unrecorded", at=RECENT)]))
    wait_until(lambda: not pending_events(store), "the webhook delivery")
    assert [(e["container"]["name"], e["to"]) for e in receiver.delivered()] == [
        ("web-2", "unrecorded")
    ]
    # Once it is old enough, retention drops the one never sent like any delivered one.
    assert prune_events(store, before=timestamp(NOW + dt.timedelta(days=1))) == 2
    assert events(store) == []


# --- forgetting hosts ------------------------------------------------------------------------


def test_an_admin_forgets_a_host_and_its_containers(
    client: TestClient, tokens: Tokens, store: Store
) -> None:
    first = batch(1, [1, 2], [result(1, "pass"), result(2, "fail")])
    post(client, tokens, first)
    post(client, tokens, batch(1, [3], [result(3, "pass")], host="node-2"))
    recorded = len(events(store))

    answer = client.delete("/v1/fleet/hosts/node-1", headers=tokens.header("admin"))
    assert (answer.status_code, answer.content) == (204, b"")
    assert [h["host"] for h in fleet(client, tokens)["hosts"]] == ["node-2"]
    assert (containers(store, "node-1"), containers(store, "node-2")) == (0, 1)
    assert len(events(store)) == recorded  # the history stays until it is pruned
    entry = audit(client, tokens)[-1]
    assert (entry["actor"], entry["action"], entry["subject"], entry["body_digest"]) == (
        "ci-admin",
        "fleet.forget",
        "node-1",
        None,
    )
    verdict = client.get("/v1/audit/verify", headers=tokens.header("reader")).json()
    assert verdict["ok"] is True, verdict

    # A redelivered old batch is still ignored; the agent's next batch brings the host back,
    # with the containers it carries results for.
    assert post(client, tokens, first).json()["applied"] is False
    assert [h["host"] for h in fleet(client, tokens)["hosts"]] == ["node-2"]
    post(client, tokens, batch(2, [1, 2], [result(2, "fail")]))
    view = fleet(client, tokens, host="node-1")
    assert [c["name"] for c in view["hosts"][0]["containers"]] == ["web-2"]


def test_forget_host_in_the_store_says_whether_it_was_there(store: Store) -> None:
    apply(store, batch(1, [1], [result(1, "pass")]))
    assert forget_host(store, "node-1", actor="test", time=RECENT) is True
    assert forget_host(store, "node-1", actor="test", time=RECENT) is False
    assert forget_host(store, "node-9", actor="test", time=RECENT) is False
    actions = [e.action for e in store.audit_entries()]
    assert actions.count("fleet.forget") == 1


MISSING = (
    "host 'node-9' is not in the fleet view (it never reported, or it was forgotten already); "
    "GET /v1/fleet lists the hosts"
)


@pytest.mark.parametrize(
    ("path", "role", "status", "detail"),
    [
        ("/v1/fleet/hosts/node-9", "admin", 404, MISSING),
        (
            "/v1/fleet/hosts/a%20b",
            "admin",
            422,
            "path host: String should match pattern '^[A-Za-z0-9._-]{1,253}$'",
        ),
        (
            "/v1/fleet/hosts/" + "a" * 254,
            "admin",
            422,
            "path host: String should match pattern '^[A-Za-z0-9._-]{1,253}$'",
        ),
        (
            "/v1/fleet/hosts/node-1",
            "recorder",
            403,
            "token 'ci-recorder' has the role recorder; this needs admin or stronger",
        ),
        (
            "/v1/fleet/hosts/node-1",
            "reader",
            403,
            "token 'ci-reader' has the role reader; this needs admin or stronger",
        ),
        (
            "/v1/fleet/hosts/node-1",
            None,
            401,
            "this needs a bearer token (header 'Authorization: Bearer <token>'); an admin makes "
            "one with `lockd token create NAME --role ROLE`",
        ),
        ("/v1/fleet/hosts/node-1", "unknown", 401, "the bearer token is not known to this service"),
    ],
)
def test_forgetting_is_refused_naming_why(
    client: TestClient,
    tokens: Tokens,
    store: Store,
    path: str,
    role: str | None,
    status: int,
    detail: str,
) -> None:
    post(client, tokens, batch(1, [1], [result(1, "pass")]))
    headers: dict[str, str] = {}
    if role == "unknown":
        headers = {"Authorization": "Bearer lockd_nope"}
    elif role is not None:
        headers = tokens.header(role)
    answer = client.delete(path, headers=headers)
    assert (answer.status_code, answer.json()) == (status, {"detail": detail})
    assert [h["host"] for h in fleet(client, tokens)["hosts"]] == ["node-1"]


def test_the_endpoint_is_in_the_openapi_document_with_its_problems(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/v1/fleet/hosts/{host}"]["delete"]
    assert sorted(operation["responses"]) == ["204", "401", "403", "404", "422"]
    for code in ("401", "403", "404", "422"):
        schema = operation["responses"][code]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/Problem"}
    [parameter] = operation["parameters"]
    assert (parameter["name"], parameter["in"], parameter["schema"]["pattern"]) == (
        "host",
        "path",
        "^[A-Za-z0-9._-]{1,253}$",
    )


def test_hosts_silent_for_forget_after_s_are_forgotten_by_the_upkeep_pass(
    make_client: Callable[..., TestClient], tokens: Tokens, store: Store
) -> None:
    apply(store, batch(1, [1], [result(1, "pass")]), received_at=OLD)
    apply(store, batch(1, [2], [result(2, "pass")], host="node-2"))
    client = make_client(forget_after_s=7 * 86_400)
    post(client, tokens, batch(1, [3], [result(3, "pass")], host="node-3"))
    assert [h["host"] for h in fleet(client, tokens)["hosts"]] == ["node-2", "node-3"]
    assert containers(store, "node-1") == 0
    forgot = [e for e in audit(client, tokens) if e["action"] == "fleet.forget"]
    assert [(e["actor"], e["subject"]) for e in forgot] == [("lockd:upkeep", "node-1")]
    metrics = client.get("/metrics").text
    assert 'lockd_fleet_upkeep_total{removed="hosts_forgotten"} 1.0' in metrics


# --- lockd status --forget -------------------------------------------------------------------


def test_lockd_status_forget(
    database_url: str, signer: Signer, tokens: Tokens, tmp_path: Path
) -> None:
    env = {"LOCKD_DATABASE_URL": database_url, "LOCKD_TRUSTED_KEYS": str(signer.public)}
    admin = {"LOCKD_TOKEN": tokens.admin}
    with (tmp_path / "server.log").open("wb") as log:
        server = Server(env, log=log).start()
        try:
            from lockd.client import Client

            Client(server.url, tokens.recorder).push_fleet(
                FleetBatch.model_validate(batch(1, [1], [result(1, "pass")]))
            )
            done = lockd("status", "--server", server.url, "--forget", "node-1", env=admin)
            assert (done.returncode, done.stdout) == (
                0,
                f"forgot host 'node-1' at {server.url}; it is listed again if its agent reports "
                "again\n",
            )
            again = lockd("status", "--server", server.url, "--forget", "node-1", env=admin)
            assert again.returncode == 2
            assert (
                f"DELETE {server.url}/v1/fleet/hosts/node-1: 404 host 'node-1' is not in the "
                "fleet view" in " ".join(again.stderr.split())
            )
            reader = lockd(
                "status",
                "--server",
                server.url,
                "--forget",
                "node-1",
                env={"LOCKD_TOKEN": tokens.reader},
            )
            assert reader.returncode == 2
            assert "403 token 'ci-reader' has the role reader; this needs admin or stronger" in (
                " ".join(reader.stderr.split())
            )
            bad = lockd("status", "--server", server.url, "--forget", "a/b", env=admin)
            assert bad.returncode == 2
            assert "--forget 'a/b': give a host name (1-253 of A-Z a-z 0-9 . _ -)" in bad.stderr
            both = lockd(
                "status", "--server", server.url, "--forget", "n", "--host", "n", env=admin
            )
            assert both.returncode == 2
            assert "--forget HOST: give it without --host and --json" in both.stderr
            empty = lockd("status", "--server", server.url, env=admin)
            assert (empty.returncode, empty.stdout) == (
                0,
                f"no host reports to {server.url} yet (run lockd watch on one)\n",
            )
        finally:
            server.stop()
