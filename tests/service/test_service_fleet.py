"""The fleet API (issue 8, service side): agents' batches applied once and in order, the fleet
view with stale hosts, the transition webhook against a real local receiver (retries, no
duplicates across a service restart), metrics, and `lockd status` against a real service.
Every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from service_fixtures import Signer, Tokens
from service_helpers import Server
from sqlalchemy import select, update

from lockd.model.report import Report
from lockd.store import tables as t
from lockd.store.fleet import pending_events
from lockd.store.repository import Store

AGENT = "a" * 32
OTHER_AGENT = "b" * 32
T0 = "2030-01-01T00:00:00Z"


def cid(n: int) -> str:
    return f"{n:064x}"


def image_id(n: int) -> str:
    return "sha256:" + f"{n:064x}"


def report(verified: bool, n: int = 1) -> dict[str, Any]:
    return {
        "verified": verified,
        "target": {"kind": "container", "ref": f"web-{n}", "image_id": image_id(n)},
        "manifest": {"path": "/v1/manifests/" + image_id(99)},
        "checks": [
            {
                "id": "packages",
                "status": "pass" if verified else "fail",
                "evidence": "inside",
                "message": "numpy 1.26.4 → 2.0.0" if not verified else "",
            }
        ],
    }


def result(n: int, verdict: str, at: str = T0, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "container": {
            "id": cid(n),
            "name": f"web-{n}",
            "image": f"app:{n}",
            "image_id": image_id(n),
            "labels": {"team": "ml"},
        },
        "verdict": verdict,
        "manifest_digest": None if verdict in ("unrecorded", "error") else image_id(99),
        "policy": "default",
        "findings": ["packages: numpy 1.26.4 → 2.0.0 (changed)"] if verdict == "fail" else [],
        "report": report(verdict == "pass", n) if verdict in ("pass", "fail") else None,
        "error": "the probe hung" if verdict == "error" else None,
        "observed_at": at,
    }
    body.update(changes)
    return body


def batch(
    sequence: int,
    running: list[int],
    results: list[dict[str, Any]] | None = None,
    *,
    host: str = "node-1",
    agent: str = AGENT,
) -> dict[str, Any]:
    return {
        "host": host,
        "agent": agent,
        "sequence": sequence,
        "sent_at": T0,
        "interval_s": 60,
        "running": [cid(n) for n in running],
        "results": results or [],
    }


def post(client: TestClient, tokens: Tokens, body: Any, role: str = "recorder") -> Any:
    return client.post("/v1/fleet/reports", json=body, headers=tokens.header(role))


def fleet(client: TestClient, tokens: Tokens, **query: str) -> dict[str, Any]:
    answer = client.get("/v1/fleet", params=query, headers=tokens.header("reader"))
    assert answer.status_code == 200, answer.text
    doc: dict[str, Any] = answer.json()
    return doc


def verdicts(view: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["verdict"] for h in view["hosts"] for c in h["containers"]}


def events(store: Store) -> list[dict[str, Any]]:
    with store.engine.connect() as conn:
        rows = conn.execute(select(t.fleet_events).order_by(t.fleet_events.c.id)).mappings()
        return [dict(r) for r in rows]


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    """Wait for something a background worker does (the timeout only stops a hung test)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


# --- batches --------------------------------------------------------------------------------


def test_a_batch_is_applied_and_shown(client: TestClient, tokens: Tokens, store: Store) -> None:
    answer = post(
        client,
        tokens,
        batch(1, [1, 2, 3, 4], [result(1, "pass"), result(2, "fail"), result(3, "unrecorded")]),
    )
    assert answer.status_code == 200, answer.text
    ack = answer.json()
    assert ack["applied"] is True
    assert ack["sequence"] == 1
    assert len(ack["verifications"]) == 2

    view = fleet(client, tokens)
    assert view["stale_after_s"] == 180
    [host] = view["hosts"]
    assert (host["host"], host["agent"], host["state"], host["interval_s"]) == (
        "node-1",
        AGENT,
        "ok",
        60,
    )
    # Container 4 runs but has no result yet: it has no row until its first verdict.
    assert [c["name"] for c in host["containers"]] == ["web-1", "web-2", "web-3"]
    web1, web2, web3 = host["containers"]
    assert web1 == {
        "id": cid(1),
        "name": "web-1",
        "image": "app:1",
        "image_id": image_id(1),
        "labels": {"team": "ml"},
        "manifest_digest": image_id(99),
        "policy": "default",
        "verdict": "pass",
        "since": "2030-01-01T00:00:00.000000Z",
        "checked_at": "2030-01-01T00:00:00.000000Z",
        "findings": [],
        "error": None,
        "verification_id": ack["verifications"][0],
    }
    assert web2["findings"] == ["packages: numpy 1.26.4 → 2.0.0 (changed)"]
    assert web2["verification_id"] == ack["verifications"][1]
    assert (web3["verdict"], web3["verification_id"], web3["manifest_digest"]) == (
        "unrecorded",
        None,
        None,
    )

    # The reports are stored as the agent's verifications, linked from the rows.
    stored = client.get(
        f"/v1/verifications/{web2['verification_id']}", headers=tokens.header("reader")
    ).json()
    assert (stored["actor"], stored["source"], stored["subject"], stored["verified"]) == (
        "ci-recorder",
        "client",
        image_id(2),
        False,
    )
    assert stored["report"] == Report.model_validate(report(False, 2)).model_dump(mode="json")
    actions = [e.action for e in store.audit_entries()]
    assert actions[-3:] == ["verification.create", "verification.create", "fleet.report"]
    assert store.verify_audit().ok


def test_a_redelivered_batch_changes_nothing(
    client: TestClient, tokens: Tokens, store: Store
) -> None:
    body = batch(1, [1], [result(1, "fail")])
    assert post(client, tokens, body).json()["applied"] is True
    before = (fleet(client, tokens)["hosts"][0]["containers"], len(store.audit_entries()))
    again = post(client, tokens, body)
    assert again.status_code == 200
    assert again.json() == {"applied": False, "sequence": 1, "verifications": []}
    after = (fleet(client, tokens)["hosts"][0]["containers"], len(store.audit_entries()))
    assert after == before
    assert store.count_verifications() == 1
    assert len(events(store)) == 1


def test_batches_out_of_order_are_ignored_and_a_new_agent_starts_over(
    client: TestClient, tokens: Tokens
) -> None:
    assert post(client, tokens, batch(3, [1], [result(1, "fail")])).json()["applied"] is True
    late = post(client, tokens, batch(2, [1], [result(1, "pass")]))
    assert late.json() == {"applied": False, "sequence": 2, "verifications": []}
    assert verdicts(fleet(client, tokens)) == {"web-1": "fail"}
    # A gap is fine (the agent's spool may have dropped batches).
    assert post(client, tokens, batch(7, [1], [result(1, "pass")])).json()["applied"] is True
    assert verdicts(fleet(client, tokens)) == {"web-1": "pass"}
    # A new agent on the host (its spool was wiped) counts from 1 again.
    fresh = post(client, tokens, batch(1, [1], [result(1, "error")], agent=OTHER_AGENT))
    assert fresh.json()["applied"] is True
    view = fleet(client, tokens)
    assert view["hosts"][0]["agent"] == OTHER_AGENT
    assert view["hosts"][0]["containers"][0]["error"] == "the probe hung"


def test_containers_no_longer_running_are_removed_without_an_event(
    client: TestClient, tokens: Tokens, store: Store
) -> None:
    post(client, tokens, batch(1, [1, 2], [result(1, "pass"), result(2, "fail")]))
    post(client, tokens, batch(1, [5], [result(5, "pass")], host="node-2"))
    assert len(events(store)) == 3
    assert post(client, tokens, batch(2, [1])).json()["applied"] is True
    assert verdicts(fleet(client, tokens)) == {"web-1": "pass", "web-5": "pass"}
    assert len(events(store)) == 3
    # An empty list: the host runs nothing now; the other host is untouched.
    post(client, tokens, batch(3, []))
    view = fleet(client, tokens)
    assert [(h["host"], len(h["containers"])) for h in view["hosts"]] == [
        ("node-1", 0),
        ("node-2", 1),
    ]


def test_transitions_change_since_and_are_recorded(
    client: TestClient, tokens: Tokens, store: Store
) -> None:
    later, latest = "2030-01-01T00:01:00Z", "2030-01-01T00:02:00+02:00"
    post(client, tokens, batch(1, [1], [result(1, "pass")]))
    post(client, tokens, batch(2, [1], [result(1, "pass", at=later)]))  # no transition
    [row] = fleet(client, tokens)["hosts"][0]["containers"]
    assert (row["since"], row["checked_at"]) == (
        "2030-01-01T00:00:00.000000Z",
        "2030-01-01T00:01:00.000000Z",
    )
    post(client, tokens, batch(3, [1], [result(1, "fail", at=latest)]))
    [row] = fleet(client, tokens)["hosts"][0]["containers"]
    assert row["since"] == row["checked_at"] == "2029-12-31T22:02:00.000000Z"
    recorded = [(e["from_verdict"], e["to_verdict"], e["notify"]) for e in events(store)]
    # No webhook is configured: transitions are recorded, nothing is queued.
    assert recorded == [("none", "pass", False), ("pass", "fail", False)]
    assert pending_events(store) == []


def test_filters_by_host_and_verdict(client: TestClient, tokens: Tokens) -> None:
    post(client, tokens, batch(1, [1, 2], [result(1, "pass"), result(2, "fail")]))
    post(client, tokens, batch(1, [3], [result(3, "pass")], host="node-2"))
    assert verdicts(fleet(client, tokens, host="node-2")) == {"web-3": "pass"}
    failing = fleet(client, tokens, verdict="fail")
    assert [h["host"] for h in failing["hosts"]] == ["node-1"]
    assert verdicts(failing) == {"web-2": "fail"}
    assert fleet(client, tokens, host="node-9")["hosts"] == []
    bad = client.get("/v1/fleet?verdict=ok", headers=tokens.header("reader"))
    assert bad.status_code == 422
    assert bad.json()["detail"] == (
        "query verdict: Input should be 'pass', 'fail', 'unrecorded' or 'error'"
    )


def test_a_host_that_stops_reporting_becomes_stale(
    make_client: Callable[..., TestClient], tokens: Tokens, store: Store
) -> None:
    client = make_client(stale_after_s=600)
    post(client, tokens, batch(1, [1], [result(1, "pass")]))
    post(client, tokens, batch(1, [2], [result(2, "pass")], host="node-2"))
    with store.engine.begin() as conn:
        conn.execute(
            update(t.fleet_hosts)
            .where(t.fleet_hosts.c.host == "node-1")
            .values(last_seen="2020-01-01T00:00:00.000000Z")
        )
    view = fleet(client, tokens)
    assert view["stale_after_s"] == 600
    assert [(h["host"], h["state"]) for h in view["hosts"]] == [
        ("node-1", "stale"),
        ("node-2", "ok"),
    ]
    text = client.get("/metrics").text
    assert 'lockd_fleet_hosts{state="stale"} 1.0' in text
    assert 'lockd_fleet_hosts{state="ok"} 1.0' in text
    # Reporting again makes it ok.
    post(client, tokens, batch(2, [1]))
    assert [h["state"] for h in fleet(client, tokens)["hosts"]] == ["ok", "ok"]


def test_metrics_count_containers_by_verdict(client: TestClient, tokens: Tokens) -> None:
    post(
        client,
        tokens,
        batch(1, [1, 2, 3, 4], [result(n, v) for n, v in enumerate(VERDICTS, start=1)]),
    )
    post(client, tokens, batch(1, [5], [result(5, "fail")], host="node-2"))
    text = client.get("/metrics").text
    for verdict, count in (("pass", 1), ("fail", 2), ("unrecorded", 1), ("error", 1)):
        assert f'lockd_fleet_containers{{verdict="{verdict}"}} {count}.0' in text
    assert 'lockd_fleet_hosts{state="ok"} 2.0' in text
    assert 'lockd_fleet_hosts{state="stale"} 0.0' in text


VERDICTS = ("pass", "fail", "unrecorded", "error")

BAD_BODIES = [
    (
        {**batch(1, [1]), "extra": 1},
        "body extra: Extra inputs are not permitted",
    ),
    (batch(0, [1]), "body sequence: Input should be greater than or equal to 1"),
    (
        batch(1, [1], host="node 1"),
        "body host: String should match pattern '^[A-Za-z0-9._-]{1,253}$'",
    ),
    (batch(1, [1], agent="xyz"), "body agent: String should match pattern '^[0-9a-f]{32}$'"),
    (batch(1, [1, 1]), "body running: a container id is listed twice"),
    (
        {**batch(1, [1]), "running": ["C" * 64]},
        "body running.0: String should match pattern '^[0-9a-f]{64}$'",
    ),
    (
        batch(1, [1], [result(1, "pass"), result(1, "fail")]),
        f"body: container {cid(1)} has two results",
    ),
    (
        batch(1, [1], [result(1, "ok")]),
        "body results.0.verdict: Input should be 'pass', 'fail', 'unrecorded' or 'error'",
    ),
    (
        batch(1, [1], [result(1, "pass", report=None)]),
        "body results.0: a 'pass' result carries its 'report'",
    ),
    (
        batch(1, [1], [result(1, "pass", report=report(False))]),
        "body results.0: verdict 'pass' disagrees with the report (verified: false)",
    ),
    (
        batch(1, [1], [result(1, "unrecorded", report=report(False))]),
        "body results.0: an 'unrecorded' result carries no 'report'",
    ),
    (
        batch(1, [1], [result(1, "error", error=None)]),
        "body results.0: 'error' is given with verdict 'error', and only then",
    ),
    (
        batch(1, [1], [result(1, "unrecorded", manifest_digest=image_id(9))]),
        "body results.0: an 'unrecorded' result has no 'manifest_digest'",
    ),
    (
        batch(1, [1], [result(1, "pass", observed_at="2030-01-01T00:00:00")]),
        "body results.0.observed_at: Input should have timezone info",
    ),
    (
        batch(1, [1], [result(1, "fail", findings=["x" * 1025])]),
        "body results.0.findings.0: String should have at most 1024 characters",
    ),
    (
        batch(1, [1], [result(1, "fail", findings=[""])]),
        "body results.0.findings.0: String should have at least 1 character",
    ),
    (
        batch(1, [1], [result(1, "pass", observed_at="0001-01-01T00:00:00+01:00")]),
        "body results.0.observed_at: the time is out of range once in UTC",
    ),
    (
        {**batch(1, [1]), "interval_s": 0},
        "body interval_s: Input should be greater than or equal to 1",
    ),
    (
        {**batch(1, [1]), "results": [{}] * 1001},
        "body results: List should have at most 1000 items after validation, not 1001",
    ),
    ({k: v for k, v in batch(1, [1]).items() if k != "running"}, "body running: Field required"),
]


@pytest.mark.parametrize(("body", "detail"), BAD_BODIES)
def test_bad_bodies_are_refused_naming_the_problem(
    client: TestClient, tokens: Tokens, store: Store, body: Any, detail: str
) -> None:
    answer = post(client, tokens, body)
    assert answer.status_code == 422, answer.text
    assert answer.json() == {"detail": detail}
    assert fleet(client, tokens)["hosts"] == []
    assert store.audit_entries()[-1].action.startswith("token.create")


def test_control_characters_from_containers_are_replaced_not_refused(
    client: TestClient, tokens: Tokens
) -> None:
    """A NUL is refused by the service before any route (test_service_storable_text); lockd's
    own agent replaces it before sending (test_lockds_clients_send_text_the_service_can_store)."""
    odd = result(1, "error", error="probe died:\n\x1b[31mboom\x01", findings=[])
    odd["container"]["name"] = "web\x1b]0;pwned\x07"
    assert post(client, tokens, batch(1, [1], [odd])).json()["applied"] is True
    [row] = fleet(client, tokens)["hosts"][0]["containers"]
    assert row["name"] == "web\ufffd]0;pwned\ufffd"
    assert row["error"] == "probe died:\n\ufffd[31mboom\ufffd"


def test_bodies_that_are_not_json_or_missing(client: TestClient, tokens: Tokens) -> None:
    headers = {**tokens.header("recorder"), "Content-Type": "application/json"}
    broken = client.post("/v1/fleet/reports", content=b"{", headers=headers)
    assert broken.status_code == 400
    assert broken.json()["detail"].startswith("the request body is not valid JSON (")
    empty = client.post("/v1/fleet/reports", headers=tokens.header("recorder"))
    assert empty.status_code == 422
    assert empty.json() == {"detail": "body: a JSON body is required"}


def test_tokens_and_roles(client: TestClient, tokens: Tokens) -> None:
    body = batch(1, [1], [result(1, "pass")])
    anonymous = client.post("/v1/fleet/reports", json=body)
    assert anonymous.status_code == 401
    assert anonymous.json()["detail"].startswith("this needs a bearer token")
    unknown = client.post(
        "/v1/fleet/reports", json=body, headers={"Authorization": "Bearer lockd_nope"}
    )
    assert unknown.status_code == 401
    assert unknown.json() == {"detail": "the bearer token is not known to this service"}
    reader = post(client, tokens, body, role="reader")
    assert reader.status_code == 403
    assert reader.json() == {
        "detail": "token 'ci-reader' has the role reader; this needs recorder or stronger"
    }
    # Authentication comes before the body is read: a bad body without a token is a 401.
    assert client.post("/v1/fleet/reports", json={"x": 1}).status_code == 401
    assert client.get("/v1/fleet").status_code == 401
    assert post(client, tokens, body, role="admin").status_code == 200


# --- the webhook ----------------------------------------------------------------------------


class Receiver:
    """A webhook receiver on loopback that records every request; it answers 500 to the first
    ``fail_first`` requests (and to all while ``failing`` is set), 204 otherwise."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.failing = False
        self.requests: list[tuple[dict[str, str], bytes, int]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    fail = receiver.failing or len(receiver.requests) < receiver.fail_first
                    status = 500 if fail else 204
                    receiver.requests.append((dict(self.headers), body, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def delivered(self) -> list[dict[str, Any]]:
        """The bodies answered 2xx, in order."""
        with self._lock:
            return [json.loads(body) for _, body, status in self.requests if status < 300]

    def attempts(self) -> int:
        with self._lock:
            return len(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


def test_the_webhook_fires_once_per_transition_to_fail_or_unrecorded(
    make_client: Callable[..., TestClient], tokens: Tokens, store: Store, receiver: Receiver
) -> None:
    client = make_client(webhook_url=receiver.url, webhook_secret="s3cret", webhook_backoff_s=0.05)
    first = batch(1, [1, 2, 3], [result(1, "fail"), result(2, "pass"), result(3, "unrecorded")])
    ack = post(client, tokens, first).json()
    post(client, tokens, first)  # redelivered: nothing new
    post(client, tokens, batch(2, [1, 2, 3], [result(1, "fail"), result(3, "unrecorded")]))
    post(client, tokens, batch(3, [1, 2, 3], [result(1, "pass"), result(2, "error")]))
    post(client, tokens, batch(4, [1, 2, 3], [result(1, "fail")]))  # fails again: fires again
    wait_until(lambda: not pending_events(store), "the webhook deliveries")

    sent = receiver.delivered()
    assert [(e["container"]["name"], e["from"], e["to"]) for e in sent] == [
        ("web-1", "none", "fail"),
        ("web-3", "none", "unrecorded"),
        ("web-1", "pass", "fail"),
    ]
    assert receiver.attempts() == 3
    assert len({e["id"] for e in sent}) == 3
    assert sent[0] == {
        "id": sent[0]["id"],
        "type": "fleet.transition",
        "host": "node-1",
        "container": {"id": cid(1), "name": "web-1"},
        "image": "app:1",
        "image_id": image_id(1),
        "from": "none",
        "to": "fail",
        "findings": ["packages: numpy 1.26.4 → 2.0.0 (changed)"],
        "manifest_digest": image_id(99),
        "verification_id": ack["verifications"][0],
        "at": "2030-01-01T00:00:00.000000Z",
    }
    for headers, body, _ in receiver.requests:
        expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
        assert headers["X-Lockd-Signature"] == expected
        assert headers["X-Lockd-Event"] == str(json.loads(body)["id"])
        assert headers["Content-Type"] == "application/json"
    rows = [e for e in events(store) if e["notify"]]
    assert [(e["delivered"], e["attempts"]) for e in rows] == [(True, 1)] * 3
    assert 'lockd_webhook_deliveries_total{outcome="delivered"} 3.0' in client.get("/metrics").text


def test_the_webhook_is_retried_with_backoff_until_it_is_delivered(
    make_client: Callable[..., TestClient], tokens: Tokens, store: Store
) -> None:
    receiver = Receiver(fail_first=3)
    try:
        client = make_client(webhook_url=receiver.url, webhook_backoff_s=0.05)
        post(client, tokens, batch(1, [1], [result(1, "fail")]))
        wait_until(lambda: not pending_events(store), "the delivery")
        assert [status for _, _, status in receiver.requests] == [500, 500, 500, 204]
        assert len({body for _, body, _ in receiver.requests}) == 1  # the same event each time
        [event] = events(store)
        assert (event["delivered"], event["attempts"], event["last_error"]) == (True, 4, None)
        text = client.get("/metrics").text
        assert 'lockd_webhook_deliveries_total{outcome="failed"} 3.0' in text
        assert 'lockd_webhook_deliveries_total{outcome="delivered"} 1.0' in text
    finally:
        receiver.close()


def test_the_webhook_gives_up_after_the_last_attempt(
    make_client: Callable[..., TestClient], tokens: Tokens, store: Store
) -> None:
    receiver = Receiver(fail_first=1000)
    try:
        client = make_client(
            webhook_url=receiver.url, webhook_backoff_s=0.05, webhook_max_attempts=3
        )
        post(client, tokens, batch(1, [1], [result(1, "unrecorded")]))
        wait_until(lambda: not pending_events(store), "the last attempt")
        [event] = events(store)
        assert (event["delivered"], event["gave_up"], event["attempts"]) == (False, True, 3)
        assert event["last_error"] == "the receiver answered 500"
        assert receiver.attempts() == 3
        assert 'lockd_webhook_deliveries_total{outcome="gave_up"} 1.0' in (
            client.get("/metrics").text
        )
    finally:
        receiver.close()


def test_an_unreachable_receiver_is_retried(
    make_client: Callable[..., TestClient], tokens: Tokens, store: Store
) -> None:
    from service_helpers import free_port

    client = make_client(
        webhook_url=f"http://127.0.0.1:{free_port()}/hook",
        webhook_backoff_s=0.05,
        webhook_max_attempts=2,
    )
    post(client, tokens, batch(1, [1], [result(1, "fail")]))
    wait_until(lambda: not pending_events(store), "the attempts")
    [event] = events(store)
    assert (event["gave_up"], event["attempts"]) == (True, 2)
    assert event["last_error"].startswith("ConnectError")


# --- a real service: restarts and `lockd status` ---------------------------------------------


def lockd(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lockd", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", **env},
        timeout=120,
        check=False,
    )


@pytest.fixture
def server_env(database_url: str, signer: Signer) -> dict[str, str]:
    return {"LOCKD_DATABASE_URL": database_url, "LOCKD_TRUSTED_KEYS": str(signer.public)}


def push(url: str, token: str, body: dict[str, Any]) -> dict[str, Any]:
    from lockd.client import Client
    from lockd.model.fleet import FleetBatch

    return Client(url, token).push_fleet(FleetBatch.model_validate(body)).model_dump()


def test_the_client_says_which_status_the_service_answered(
    server_env: dict[str, str], tokens: Tokens, tmp_path: Path
) -> None:
    """The watch agent decides by ``ServerError.status``: 400, 413, 422 quarantine the batch;
    another 4xx waits for an operator; None (no answer) and 5xx wait for the service."""
    from lockd.client import Client
    from lockd.errors import ServerError
    from lockd.model.fleet import FleetBatch

    body = FleetBatch.model_validate(batch(1, [1], [result(1, "pass")]))
    with (tmp_path / "server.log").open("wb") as log:
        server = Server(server_env, log=log).start()
        try:
            with pytest.raises(ServerError) as reader:
                Client(server.url, tokens.reader).push_fleet(body)
            with pytest.raises(ServerError) as anonymous:
                Client(server.url).push_fleet(body)
        finally:
            server.stop()
    with pytest.raises(ServerError) as gone:
        Client(server.url).push_fleet(body)

    assert (reader.value.status, anonymous.value.status, gone.value.status) == (403, 401, None)
    assert str(reader.value) == (
        f"POST {server.url}/v1/fleet/reports: 403 token 'ci-reader' has the role reader; this "
        "needs recorder or stronger"
    )
    assert str(gone.value).startswith(
        f"POST {server.url}/v1/fleet/reports: cannot reach the lockd service ("
    )


def test_deliveries_survive_a_crash_and_are_never_repeated(
    server_env: dict[str, str], tokens: Tokens, store: Store, receiver: Receiver, tmp_path: Path
) -> None:
    env = {
        **server_env,
        "LOCKD_WEBHOOK_URL": receiver.url,
        "LOCKD_WEBHOOK_BACKOFF_S": "0.2",
        "LOCKD_WEBHOOK_TIMEOUT_S": "2",
    }
    log = (tmp_path / "server.log").open("wb")
    receiver.failing = True
    first = Server(env, log=log).start()
    try:
        push(first.url, tokens.recorder, batch(1, [1], [result(1, "fail")]))
        wait_until(lambda: receiver.attempts() >= 2, "failed attempts")
    finally:
        first.kill()  # SIGKILL: no shutdown, the event is still undelivered
    assert len(pending_events(store)) == 1
    receiver.failing = False

    second = Server(env, log=log).start()
    try:
        wait_until(lambda: not pending_events(store), "the delivery after the restart")
        push(second.url, tokens.recorder, batch(2, [1], [result(1, "fail")]))  # no transition
    finally:
        second.stop()

    third = Server(env, log=log).start()
    try:
        # A new transition; events go out in order, so once it is delivered the first would
        # have gone before it, had it been pending.
        push(third.url, tokens.recorder, batch(3, [1, 2], [result(2, "unrecorded")]))
        wait_until(lambda: len(receiver.delivered()) >= 2, "the second event")
    finally:
        third.stop()
        log.close()
    assert [(e["container"]["name"], e["to"]) for e in receiver.delivered()] == [
        ("web-1", "fail"),
        ("web-2", "unrecorded"),
    ]
    assert not pending_events(store)


def test_lockd_status_prints_the_fleet_and_exits_by_its_state(
    server_env: dict[str, str], tokens: Tokens, store: Store, tmp_path: Path
) -> None:
    with (tmp_path / "server.log").open("wb") as log:
        server = Server(server_env, log=log).start()
        try:
            reader = {"LOCKD_TOKEN": tokens.reader}
            empty = lockd("status", "--server", server.url, env=reader)
            assert (empty.returncode, empty.stdout) == (
                0,
                f"no host reports to {server.url} yet (run lockd watch on one)\n",
            )
            push(
                server.url,
                tokens.recorder,
                batch(1, [1, 2], [result(1, "pass"), result(2, "fail")], host="node-1"),
            )
            push(server.url, tokens.recorder, batch(1, [3], [result(3, "pass")], host="node-2"))

            table = lockd("status", "--server", server.url, env=reader)
            assert table.returncode == 1, table.stderr
            lines = table.stdout.splitlines()
            assert lines[0].split() == [
                "HOST",
                "STATE",
                "CONTAINER",
                "IMAGE",
                "VERDICT",
                "SINCE",
                "FINDINGS",
            ]
            assert lines[1].split() == [
                "node-1",
                "ok",
                "web-1",
                "app:1",
                "pass",
                "2030-01-01T00:00:00Z",
            ]
            assert lines[2].split()[:6] == [
                "node-1",
                "ok",
                "web-2",
                "app:2",
                "fail",
                "2030-01-01T00:00:00Z",
            ]
            assert lines[2].endswith("packages: numpy 1.26.4 → 2.0.0 (changed)")
            assert lines[3].split() == [
                "node-2",
                "ok",
                "web-3",
                "app:3",
                "pass",
                "2030-01-01T00:00:00Z",
            ]
            assert lines[5] == "2 hosts (0 stale), 3 containers: 2 pass, 1 fail"

            one = lockd("status", "--server", server.url, "--host", "node-2", "--json", env=reader)
            assert one.returncode == 0, one.stderr
            view = json.loads(one.stdout)
            assert [h["host"] for h in view["hosts"]] == ["node-2"]
            assert view["hosts"][0]["containers"][0]["verdict"] == "pass"

            with store.engine.begin() as conn:
                conn.execute(
                    update(t.fleet_hosts)
                    .where(t.fleet_hosts.c.host == "node-2")
                    .values(last_seen="2020-01-01T00:00:00.000000Z")
                )
            stale = lockd("status", "--server", server.url, "--host", "node-2", env=reader)
            assert stale.returncode == 1
            assert stale.stdout.splitlines()[1].split()[:2] == ["node-2", "stale"]
            assert stale.stdout.splitlines()[-1] == "1 host (1 stale), 1 container: 1 pass"

            unknown = lockd("status", "--server", server.url, "--host", "node-9", env=reader)
            assert (unknown.returncode, unknown.stdout) == (
                1,
                f"host 'node-9' has never reported to {server.url}\n",
            )
            bad_host = lockd("status", "--server", server.url, "--host", "a b", env=reader)
            assert bad_host.returncode == 2
            assert "--host 'a b': give a host name (1-253 of A-Z a-z 0-9 . _ -)" in bad_host.stderr
            anonymous = lockd("status", "--server", server.url, env={"LOCKD_TOKEN": ""})
            assert anonymous.returncode == 2
            assert f"GET {server.url}/v1/fleet: 401 this needs a bearer token" in " ".join(
                anonymous.stderr.split()
            )
        finally:
            server.stop()
    nobody = lockd("status", "--server", "http://127.0.0.1:1", env={})
    assert nobody.returncode == 2
    assert "cannot reach the lockd service" in nobody.stderr
    missing = lockd("status", env={"LOCKD_SERVER": ""})
    assert missing.returncode == 2
    assert "give --server URL (or set LOCKD_SERVER)" in missing.stderr
