"""The API on both databases: manifests, verifications (both body forms), the audit chain,
health and readiness."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from service_fixtures import Signer, Tokens
from service_helpers import envelope, envelope_json, image, observation, observation_json

from lockd.trust.auditlog import GENESIS, entry_hash
from lockd.trust.dsse import b64decode


def without_none(value: object) -> object:
    """JSON as written with exclude_none (GET answers spell absent fields as null)."""
    if isinstance(value, dict):
        return {k: without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_none(v) for v in value]
    return value


def push(client: TestClient, tokens: Tokens, doc: object, **params: object):  # type: ignore[no-untyped-def]
    return client.post("/v1/manifests", json=doc, params=params, headers=tokens.header("recorder"))


def test_push_stores_once_and_answers_with_digest_and_subjects(
    client: TestClient, tokens: Tokens, signer: Signer
) -> None:
    doc = envelope_json(signer.key, observation(image(1)))
    payload = b64decode(doc["payload"])
    digest = "sha256:" + hashlib.sha256(payload).hexdigest()

    first = push(client, tokens, doc, name="app", label=["experiment=42", "doi=10.5281/zenodo.1"])
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["digest"] == digest
    assert body["subjects"] == [{"name": "app:1", "digest": {"sha256": image(1)[7:]}}]
    assert body["labels"] == {"experiment": "42", "doi": "10.5281/zenodo.1"}
    assert body["keyids"] == [signer.keyid]
    assert body["created_by"] == "ci-recorder"

    again = push(client, tokens, doc)
    assert again.status_code == 200
    assert again.json()["digest"] == digest
    listed = client.get("/v1/manifests", headers=tokens.header("reader")).json()
    assert [m["digest"] for m in listed] == [digest]


def test_find_manifests_by_subject_name_and_label(
    client: TestClient, tokens: Tokens, signer: Signer
) -> None:
    a = push(
        client,
        tokens,
        envelope_json(signer.key, observation(image(1))),
        name="a",
        label=["experiment=1"],
    ).json()
    b = push(
        client,
        tokens,
        envelope_json(signer.key, observation(image(2))),
        name="b",
        label=["experiment=2"],
    ).json()
    reader = tokens.header("reader")

    def digests(**params: object) -> list[str]:
        answer = client.get("/v1/manifests", params=params, headers=reader)
        assert answer.status_code == 200, answer.text
        return [m["digest"] for m in answer.json()]

    assert digests() == [b["digest"], a["digest"]]  # newest first
    assert digests(subject=image(1)) == [a["digest"]]
    assert digests(name="b") == [b["digest"]]
    assert digests(label="experiment=1") == [a["digest"]]
    assert digests(label="experiment") == [b["digest"], a["digest"]]
    assert digests(label="experiment=3") == []
    assert digests(subject=image(9)) == []


def test_get_manifest_gives_envelope_and_decoded_manifest(
    client: TestClient, tokens: Tokens, signer: Signer
) -> None:
    obs = observation(image(1))
    doc = envelope_json(signer.key, obs)
    digest = push(client, tokens, doc).json()["digest"]
    answer = client.get(f"/v1/manifests/{digest}", headers=tokens.header("reader"))
    assert answer.status_code == 200
    body = answer.json()
    assert body["envelope"] == doc
    assert body["manifest"]["observation"]["host"]["image_id"] == image(1)
    missing = client.get(f"/v1/manifests/sha256:{'0' * 64}", headers=tokens.header("reader"))
    assert missing.status_code == 404
    assert missing.json() == {"detail": f"no manifest sha256:{'0' * 64} is stored"}


def test_verification_from_an_observation_is_compared_here_and_stored(
    client: TestClient, tokens: Tokens, signer: Signer
) -> None:
    recorded = observation(image(1))
    digest = push(client, tokens, envelope_json(signer.key, recorded)).json()["digest"]
    answer = client.post(
        "/v1/verifications",
        json={"observation": observation_json(recorded), "policy": "default"},
        headers=tokens.header("recorder"),
    )
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["verified"] is True
    assert report["checks"][0] == {
        "id": "signature",
        "status": "pass",
        "evidence": "signature",
        "message": f"signed by keyid {signer.keyid}",
        "findings": [],
    }
    assert report["manifest"]["path"] == f"/v1/manifests/{digest}"
    assert report["target"]["image_id"] == image(1)

    drifted = observation(image(1), distributions=4)
    answer = client.post(
        "/v1/verifications",
        json={"observation": observation_json(drifted)},
        headers=tokens.header("recorder"),
    )
    assert answer.status_code == 200
    report = answer.json()
    assert report["verified"] is False
    [packages] = [c for c in report["checks"] if c["id"] == "packages"]
    assert packages["status"] == "fail"
    assert packages["findings"][0]["kind"] == "added"
    assert answer.headers["location"].startswith("/v1/verifications/")

    stored = client.get(
        "/v1/verifications", params={"subject": image(1)}, headers=tokens.header("reader")
    ).json()
    assert [(v["verified"], v["source"], v["policy"]) for v in stored] == [
        (False, "server", "default"),
        (True, "server", "default"),
    ]
    assert all(v["manifest_digest"] == digest for v in stored)
    one = client.get(answer.headers["location"], headers=tokens.header("reader")).json()
    assert without_none(one["report"]) == report


def test_audit_policy_turns_failures_into_warnings(
    client: TestClient, tokens: Tokens, signer: Signer
) -> None:
    push(client, tokens, envelope_json(signer.key, observation(image(1))))
    answer = client.post(
        "/v1/verifications",
        json={
            "observation": observation_json(observation(image(1), distributions=4)),
            "policy": "audit",
        },
        headers=tokens.header("recorder"),
    )
    assert answer.status_code == 200
    assert answer.json()["verified"] is True
    [packages] = [c for c in answer.json()["checks"] if c["id"] == "packages"]
    assert packages["status"] == "warn"


def test_verification_without_a_stored_manifest_is_404_and_stores_nothing(
    client: TestClient, tokens: Tokens
) -> None:
    answer = client.post(
        "/v1/verifications",
        json={"observation": observation_json(observation(image(7)))},
        headers=tokens.header("recorder"),
    )
    assert answer.status_code == 404
    assert f"no manifest is stored for {image(7)}" in answer.json()["detail"]
    assert client.get("/v1/verifications", headers=tokens.header("reader")).json() == []


def test_a_clients_report_is_stored_as_given(
    client: TestClient, tokens: Tokens, signer: Signer
) -> None:
    report = {
        "verified": False,
        "target": {"kind": "container", "ref": "web-1", "image_id": image(3)},
        "manifest": {"path": "app.dsse.json", "subject": [], "keyid": signer.keyid},
        "checks": [
            {
                "id": "signature",
                "status": "fail",
                "evidence": "signature",
                "message": "untrusted",
                "findings": [],
            }
        ],
    }
    answer = client.post(
        "/v1/verifications", json={"report": report}, headers=tokens.header("recorder")
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == report
    [stored] = client.get(
        "/v1/verifications", params={"subject": image(3)}, headers=tokens.header("reader")
    ).json()
    assert stored["source"] == "client"
    assert stored["actor"] == "ci-recorder"
    assert without_none(stored["report"]) == report


def test_every_write_is_in_the_audit_chain(
    client: TestClient, tokens: Tokens, signer: Signer
) -> None:
    obs = observation(image(1))
    doc = envelope_json(signer.key, obs)
    digest = push(client, tokens, doc).json()["digest"]
    push(client, tokens, doc)  # a repeat writes nothing
    client.post(
        "/v1/verifications",
        json={"observation": observation_json(obs)},
        headers=tokens.header("recorder"),
    )
    entries = client.get("/v1/audit", headers=tokens.header("reader")).json()
    actions = [(e["seq"], e["actor"], e["action"], e["subject"]) for e in entries]
    assert actions == [
        (1, "test", "token.create:reader", "ci-reader"),
        (2, "test", "token.create:recorder", "ci-recorder"),
        (3, "test", "token.create:admin", "ci-admin"),
        (4, "ci-recorder", "manifest.create", digest),
        (5, "ci-recorder", "verification.create", image(1)),
    ]
    prev = GENESIS
    for entry in entries:
        assert entry["prev_hash"] == prev
        assert entry["hash"] == entry_hash(entry)
        prev = entry["hash"]
    stored = client.get(f"/v1/manifests/{digest}", headers=tokens.header("reader")).json()
    envelope_text = json.dumps(stored["envelope"], indent=2, sort_keys=True) + "\n"
    assert (
        entries[3]["body_digest"] == "sha256:" + hashlib.sha256(envelope_text.encode()).hexdigest()
    )

    page = client.get("/v1/audit", params={"after": 3, "limit": 1}, headers=tokens.header("reader"))
    assert [e["seq"] for e in page.json()] == [4]
    verdict = client.get("/v1/audit/verify", headers=tokens.header("reader")).json()
    assert verdict == {"ok": True, "entries": 5, "first_bad": None, "reason": None}


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert ready.json()["revision"] == ready.json()["head"]


def test_readiness_fails_on_an_unmigrated_database(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    app_client = make_client(database_url=f"sqlite:///{tmp_path / 'empty.db'}")
    answer = app_client.get("/readyz")
    assert answer.status_code == 503
    assert answer.json()["status"] == "not ready"
    assert answer.json()["database"] is True
    assert answer.json()["revision"] is None
    assert app_client.get("/healthz").status_code == 200


@pytest.mark.parametrize("path", ["/v1/manifests", "/v1/verifications", "/v1/audit"])
def test_reads_are_answered_on_an_empty_store(
    client: TestClient, tokens: Tokens, path: str
) -> None:
    answer = client.get(path, headers=tokens.header("reader"))
    assert answer.status_code == 200
    assert answer.json() == ([] if path != "/v1/audit" else answer.json())


def test_envelope_helper_signs_with_the_trusted_key(signer: Signer) -> None:
    from lockd.trust import dsse, keys

    env = envelope(signer.key, observation(image(1)))
    trusted = keys.load_public_key(signer.public)
    assert dsse.verify(env, [trusted]) == [signer.keyid]


def test_metrics_count_requests_by_route_and_verifications_by_result(
    client: TestClient, tokens: Tokens, signer: Signer
) -> None:
    obs = observation(image(1))
    push(client, tokens, envelope_json(signer.key, obs))
    for o in (obs, observation(image(1), distributions=5)):
        client.post(
            "/v1/verifications",
            json={"observation": observation_json(o)},
            headers=tokens.header("recorder"),
        )
    client.get(f"/v1/manifests/sha256:{'0' * 64}", headers=tokens.header("reader"))
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    lines = set(answer.text.splitlines())
    assert (
        'lockd_http_requests_total{method="POST",route="/v1/manifests",status="201"} 1.0' in lines
    )
    assert (
        'lockd_http_requests_total{method="GET",route="/v1/manifests/{digest}",status="404"} 1.0'
        in lines
    )
    assert 'lockd_verifications_total{result="verified",source="server"} 1.0' in lines
    assert 'lockd_verifications_total{result="not-verified",source="server"} 1.0' in lines
    assert "lockd_manifests_stored_total 1.0" in lines
    assert any(
        line.startswith('lockd_http_request_duration_seconds_count{route="/v1/verifications"} 2')
        for line in lines
    )
