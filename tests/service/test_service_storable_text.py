"""Strings the databases cannot store (a NUL, a lone surrogate) in any request's path, query or
JSON body: 422 naming where, nothing stored, on SQLite and PostgreSQL alike (PostgreSQL used to
answer 500 for a client report with a NUL in target.image_id, F9 of #18)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from service_fixtures import Signer, Tokens
from service_helpers import (
    Server,
    envelope_json,
    image,
    manifest,
    observation,
    observation_json,
    review,
)
from sqlalchemy import func, select

from lockd.client import Client
from lockd.model.fleet import FleetBatch
from lockd.model.report import Report
from lockd.store import tables as t
from lockd.store.repository import Store
from lockd.trust import dsse
from lockd.trust.statement import PAYLOAD_TYPE, canonical_json, make_statement

NUL = "a\x00b"
TAIL = ", which cannot be stored; nothing was stored"


def client_report(image_id: str) -> dict[str, Any]:
    return {
        "verified": True,
        "target": {"kind": "container", "ref": "web", "image_id": image_id},
        "manifest": {"path": "/v1/manifests/" + image(9)},
        "checks": [{"id": "packages", "status": "pass", "evidence": "inside", "message": ""}],
    }


def fleet_batch(**container: Any) -> dict[str, Any]:
    return {
        "host": "node-1",
        "agent": "a" * 32,
        "sequence": 1,
        "sent_at": "2030-01-01T00:00:00Z",
        "interval_s": 60,
        "running": ["1" * 64],
        "results": [
            {
                "container": {
                    "id": "1" * 64,
                    "name": "web",
                    "image": "app:1",
                    "image_id": image(1),
                    "labels": {"team": "ml"},
                    **container,
                },
                "verdict": "error",
                "manifest_digest": None,
                "policy": "default",
                "findings": [],
                "report": None,
                "error": "the probe hung",
                "observed_at": "2030-01-01T00:00:00Z",
            }
        ],
    }


def counts(store: Store) -> dict[str, int]:
    with store.engine.connect() as conn:
        return {
            table.name: conn.execute(select(func.count()).select_from(table)).scalar_one()
            for table in t.metadata.sorted_tables
        }


def post_json(client: TestClient, path: str, doc: Any, headers: dict[str, str]) -> Any:
    """``doc`` as JSON with \\u escapes (a lone surrogate cannot travel as UTF-8)."""
    body = json.dumps(doc).encode("ascii")
    return client.post(path, content=body, headers={**headers, "Content-Type": "application/json"})


def test_a_nul_in_a_client_reports_image_id_is_422_and_nothing_is_stored(
    client: TestClient, tokens: Tokens, store: Store
) -> None:
    before = counts(store)
    answer = client.post(
        "/v1/verifications",
        json={"report": client_report(NUL)},
        headers=tokens.header("recorder"),
    )
    assert answer.status_code == 422, answer.text
    assert answer.json() == {
        "detail": "body report.target.image_id holds a NUL character (U+0000)" + TAIL
    }
    assert counts(store) == before
    # The service still answers, and stores the same report without the NUL.
    again = client.post(
        "/v1/verifications",
        json={"report": client_report(image(1))},
        headers=tokens.header("recorder"),
    )
    assert again.status_code == 200, again.text
    assert counts(store)["verifications"] == before["verifications"] + 1


BODIES: list[tuple[str, Any, str, str]] = [
    (
        "/v1/verifications",
        {"report": {**client_report(image(1)), "target": {"kind": "container", NUL: "x"}}},
        "recorder",
        "body report.target holds a key with a NUL character (U+0000)",
    ),
    (
        "/v1/verifications",
        {"report": client_report("a\ud800b")},
        "recorder",
        "body report.target.image_id holds a lone surrogate (U+D800)",
    ),
    (
        "/v1/verifications",
        {"observation": {**observation_json(observation(image(1))), "lockd_version": NUL}},
        "recorder",
        "body observation.lockd_version holds a NUL character (U+0000)",
    ),
    (
        "/v1/fleet/reports",
        fleet_batch(name=NUL),
        "recorder",
        "body results.0.container.name holds a NUL character (U+0000)",
    ),
    (
        "/v1/fleet/reports",
        fleet_batch(labels={"team": "\udfff"}),
        "recorder",
        "body results.0.container.labels.team holds a lone surrogate (U+DFFF)",
    ),
    (
        "/v1/tokens",
        {"name": NUL, "role": "reader"},
        "admin",
        "body name holds a NUL character (U+0000)",
    ),
    (
        "/v1/admission",
        review("Pod", ["app:1"], userInfo={"username": NUL}),
        "admin",
        "body request.userInfo.username holds a NUL character (U+0000)",
    ),
    (
        "/v1/admission",
        "\x00",
        "admin",
        "body holds a NUL character (U+0000)",
    ),
]


@pytest.mark.parametrize(
    ("path", "doc", "role", "detail"), BODIES, ids=[f"{b[0]}:{b[3]}" for b in BODIES]
)
def test_unstorable_text_in_any_body_is_422_naming_the_field(
    client: TestClient, tokens: Tokens, store: Store, path: str, doc: Any, role: str, detail: str
) -> None:
    before = counts(store)
    answer = post_json(client, path, doc, tokens.header(role))
    assert answer.status_code == 422, answer.text
    assert answer.json() == {"detail": detail + TAIL}
    assert counts(store) == before
    assert client.get("/healthz").json() == {"status": "ok"}


def test_unstorable_text_in_a_pushed_envelope_or_its_query_is_422(
    client: TestClient, tokens: Tokens, signer: Signer, store: Store
) -> None:
    before = counts(store)
    doc = envelope_json(signer.key, observation(image(1)))
    headers = tokens.header("recorder")
    cases = [
        (
            {"params": {"name": NUL}, "json": doc},
            "query name holds a NUL character (U+0000)" + TAIL,
        ),
        (
            {"params": {"label": "team=\x00"}, "json": doc},
            "query label holds a NUL character (U+0000)" + TAIL,
        ),
        (
            {"json": {**doc, "signatures": [{**doc["signatures"][0], "keyid": NUL}]}},
            "body signatures.0.keyid holds a NUL character (U+0000)" + TAIL,
        ),
    ]
    for request, detail in cases:
        answer = client.post("/v1/manifests", headers=headers, **request)
        assert answer.status_code == 422, answer.text
        assert answer.json() == {"detail": detail}
    # Inside the signed payload (base64, so the body check cannot see it): the Statement is
    # refused when it is read, still before anything is stored.
    statement = json.loads(make_statement(manifest(observation(image(1)))))
    statement["subject"][0]["name"] = NUL
    signed = dsse.sign(canonical_json(statement), PAYLOAD_TYPE, signer.key)
    answer = client.post("/v1/manifests", json=json.loads(signed.to_json()), headers=headers)
    assert answer.status_code == 422, answer.text
    assert answer.json() == {
        "detail": "the envelope's payload: the Statement's subject.0.name holds a NUL character "
        "(U+0000), which cannot be stored"
    }
    assert counts(store) == before
    assert client.post("/v1/manifests", json=doc, headers=headers).status_code == 201


@pytest.mark.parametrize(
    ("method", "url", "detail"),
    [
        ("GET", "/v1/manifests?name=a%00b", "query name holds a NUL character (U+0000)"),
        ("GET", "/v1/fleet?host=a%00b", "query host holds a NUL character (U+0000)"),
        ("GET", "/v1/verifications?subject=%00", "query subject holds a NUL character (U+0000)"),
        ("DELETE", "/v1/fleet/hosts/a%00b", "path holds a NUL character (U+0000)"),
    ],
)
def test_unstorable_text_in_a_query_or_path_is_422(
    client: TestClient, tokens: Tokens, method: str, url: str, detail: str
) -> None:
    answer = client.request(method, url, headers=tokens.header("admin"))
    assert answer.status_code == 422, answer.text
    assert answer.json() == {"detail": detail + TAIL}


def test_escaped_backslashes_and_ordinary_text_pass(
    client: TestClient, tokens: Tokens, store: Store
) -> None:
    """A body that only looks suspect (a literal backslash-u0000, text) is stored."""
    answer = client.post(
        "/v1/verifications",
        json={"report": client_report("\\u0000 ünïcode \\ud800")},
        headers=tokens.header("recorder"),
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["target"]["image_id"] == "\\u0000 ünïcode \\ud800"


def test_lockds_clients_send_text_the_service_can_store(
    database_url: str, signer: Signer, tokens: Tokens, store: Store, tmp_path: Path
) -> None:
    """What comes from inside a container (an image's label, a probe's error, a report's
    target) may hold a NUL: ``lockd watch`` and ``lockd verify --server`` send it as U+FFFD, so
    a container cannot get its host's whole batch refused."""
    body = fleet_batch(labels={"team": NUL, "k\x00": "v"})
    body["results"][0]["error"] = "probe died: " + NUL
    batch = FleetBatch.model_validate(body)
    report = Report.model_validate(client_report(NUL))
    env = {"LOCKD_DATABASE_URL": database_url, "LOCKD_TRUSTED_KEYS": str(signer.public)}
    with (tmp_path / "server.log").open("wb") as log:
        server = Server(env, log=log).start()
        try:
            ack = Client(server.url, tokens.recorder).push_fleet(batch)
            Client(server.url, tokens.recorder).push_report(report)
            fleet = Client(server.url, tokens.reader).fleet()
        finally:
            server.stop()
    assert ack.applied is True
    [container] = fleet.hosts[0].containers
    assert container.labels == {"team": "a\ufffdb", "k\ufffd": "v"}
    assert container.error == "probe died: a\ufffdb"
    [row] = store.list_verifications(limit=10)
    assert row.subject == "a\ufffdb"
    assert json.loads(row.report)["target"]["image_id"] == "a\ufffdb"
