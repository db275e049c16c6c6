"""Auth (roles, 401/403, anonymous reads), bad input (4xx with a clear message, nothing
stored), tokens never logged nor shown twice, and tampering with the audit log."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from service_fixtures import Signer, Tokens
from service_helpers import envelope_json, image, observation, observation_json
from sqlalchemy import delete, select, text, update

from lockd.store import tables as t
from lockd.store.repository import Store
from lockd.trust import dsse
from lockd.trust.auditlog import entry_hash
from lockd.trust.statement import PAYLOAD_TYPE, canonical_json

# --- auth -------------------------------------------------------------------------------------


def test_no_token_is_401_with_a_bearer_challenge(client: TestClient) -> None:
    for method, path in [
        ("GET", "/v1/manifests"),
        ("POST", "/v1/manifests"),
        ("GET", "/v1/audit/verify"),
    ]:
        answer = client.request(method, path, json={})
        assert answer.status_code == 401, (path, answer.text)
        assert answer.headers["www-authenticate"] == "Bearer"
        assert "needs a bearer token" in answer.json()["detail"]


@pytest.mark.parametrize(
    "header",
    ["Bearer lockd_not-a-real-token", "Basic dXNlcjpwdw==", "Bearer", "lockd_raw"],
)
def test_unknown_or_malformed_tokens_are_401(client: TestClient, header: str) -> None:
    answer = client.get("/v1/manifests", headers={"Authorization": header})
    assert answer.status_code == 401


def test_roles_gate_writes_and_token_creation(
    client: TestClient, tokens: Tokens, signer: Signer
) -> None:
    doc = envelope_json(signer.key, observation(image(1)))
    weak = client.post("/v1/manifests", json=doc, headers=tokens.header("reader"))
    assert weak.status_code == 403
    assert weak.json()["detail"] == (
        "token 'ci-reader' has the role reader; this needs recorder or stronger"
    )
    assert (
        client.post(
            "/v1/tokens", json={"name": "x", "role": "reader"}, headers=tokens.header("recorder")
        ).status_code
        == 403
    )
    assert client.post("/v1/manifests", json=doc, headers=tokens.header("admin")).status_code == 201

    made = client.post(
        "/v1/tokens",
        json={"name": "deployer", "role": "recorder"},
        headers=tokens.header("admin"),
    )
    assert made.status_code == 201
    new = made.json()["token"]
    assert made.json()["name"] == "deployer"
    assert client.get("/v1/audit", headers={"Authorization": f"Bearer {new}"}).status_code == 200
    again = client.post(
        "/v1/tokens", json={"name": "deployer", "role": "reader"}, headers=tokens.header("admin")
    )
    assert again.status_code == 422
    assert "a token named 'deployer' exists already" in again.json()["detail"]


def test_anonymous_reads_when_allowed_but_never_writes(
    make_client: Callable[..., TestClient], signer: Signer
) -> None:
    open_client = make_client(allow_anonymous_read=True)
    assert open_client.get("/v1/manifests").status_code == 200
    assert open_client.get("/v1/audit/verify").json()["ok"] is True
    doc = envelope_json(signer.key, observation(image(1)))
    assert open_client.post("/v1/manifests", json=doc).status_code == 401


# --- bad input: 4xx, a clear message, nothing stored -----------------------------------------


def _signed(signer: Signer, payload: bytes) -> dict[str, Any]:
    env = dsse.sign(payload, PAYLOAD_TYPE, signer.key)
    doc: dict[str, Any] = json.loads(env.to_json())
    return doc


def _bad_manifest_pushes(signer: Signer, stranger: Signer) -> dict[str, tuple[Any, int, str]]:
    good = envelope_json(signer.key, observation(image(1)))
    unsigned = dict(good, signatures=[])
    other_type = canonical_json(
        {
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": "x", "digest": {"sha256": "a" * 64}}],
            "predicateType": "https://slsa.dev/provenance/v1",
            "predicate": {},
        }
    )
    return {
        "malformed JSON": (b'{"payload": "abc", ', 400, "not valid JSON"),
        "not an object": (b"[1, 2]", 422, "body"),
        "no signatures": (json.dumps(unsigned).encode(), 422, "signatures"),
        "bad base64": (json.dumps(dict(good, payload="%%%")).encode(), 422, "base64"),
        "unknown key": (
            json.dumps(envelope_json(stranger.key, observation(image(1)))).encode(),
            422,
            "does not verify against any trusted key",
        ),
        "payload not JSON": (json.dumps(_signed(signer, b"hello")).encode(), 422, "not JSON"),
        "not a Statement": (
            json.dumps(_signed(signer, b'{"foo": 1}')).encode(),
            422,
            "not an in-toto Statement v1",
        ),
        "other predicate": (json.dumps(_signed(signer, other_type)).encode(), 422, "not lockd's"),
    }


@pytest.fixture
def nothing_stored(client: TestClient, tokens: Tokens) -> Iterator[None]:
    """Asserts, after the test, that no manifest, verification or audit entry was added."""
    reader = tokens.header("reader")
    before = client.get("/v1/audit", headers=reader).json()
    yield
    assert client.get("/v1/manifests", headers=reader).json() == []
    assert client.get("/v1/verifications", headers=reader).json() == []
    assert client.get("/v1/audit", headers=reader).json() == before


CASES = [
    "malformed JSON",
    "not an object",
    "no signatures",
    "bad base64",
    "unknown key",
    "payload not JSON",
    "not a Statement",
    "other predicate",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_envelopes_are_refused(
    client: TestClient,
    tokens: Tokens,
    signer: Signer,
    stranger: Signer,
    case: str,
    nothing_stored: None,
) -> None:
    body, status, fragment = _bad_manifest_pushes(signer, stranger)[case]
    answer = client.post(
        "/v1/manifests",
        content=body,
        headers={**tokens.header("recorder"), "Content-Type": "application/json"},
    )
    assert answer.status_code == status, answer.text
    assert fragment in answer.json()["detail"]


def test_a_body_over_5_mib_is_413(client: TestClient, tokens: Tokens, nothing_stored: None) -> None:
    big = b'{"payload": "' + b"A" * (5 * 1024 * 1024) + b'"}'
    answer = client.post(
        "/v1/manifests",
        content=big,
        headers={**tokens.header("recorder"), "Content-Type": "application/json"},
    )
    assert answer.status_code == 413
    assert "larger than 5 MiB" in answer.json()["detail"]


def test_a_streamed_body_over_5_mib_is_413(
    client: TestClient, tokens: Tokens, nothing_stored: None
) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"observation": "'
        for _ in range(6):
            yield b"A" * (1024 * 1024)
        yield b'"}'

    answer = client.post(
        "/v1/verifications",
        content=chunks(),
        headers={**tokens.header("recorder"), "Content-Type": "application/json"},
    )
    assert answer.status_code == 413


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"name": "../../etc/passwd"}, "names are not paths"),
        ({"name": "/etc/passwd"}, "no leading '/'"),
        ({"name": "a\\b"}, "backslashes"),
        ({"name": "a\x01b"}, "control characters"),  # a NUL: test_service_storable_text
        ({"label": "experiment"}, "give key=value"),
        ({"label": "../x=1"}, "the key must be"),
        ({"label": ["a=1", "a=2"]}, "given twice"),
    ],
)
def test_path_tricks_in_names_and_labels_are_refused(
    client: TestClient,
    tokens: Tokens,
    signer: Signer,
    params: dict[str, Any],
    fragment: str,
    nothing_stored: None,
) -> None:
    doc = envelope_json(signer.key, observation(image(1)))
    answer = client.post(
        "/v1/manifests", json=doc, params=params, headers=tokens.header("recorder")
    )
    assert answer.status_code == 422, answer.text
    assert fragment in answer.json()["detail"]


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/manifests/..%2F..%2Fetc%2Fpasswd", 404),
        ("/v1/manifests/sha256:XYZ", 422),
        ("/v1/manifests/../../etc/passwd", 404),
        ("/v1/verifications/0", 422),
        ("/v1/verifications/abc", 422),
    ],
)
def test_path_tricks_in_urls_are_refused(
    client: TestClient, tokens: Tokens, path: str, status: int
) -> None:
    answer = client.get(path, headers=tokens.header("reader"))
    assert answer.status_code == status, answer.text


def _verification_bodies(signer: Signer) -> dict[str, tuple[Any, str]]:
    obs = observation_json(observation(image(1)))
    return {
        "policy path": ({"observation": obs, "policy": "../../etc/passwd"}, "body policy"),
        "unknown policy": ({"observation": obs, "policy": "nosuch"}, "no policy named 'nosuch'"),
        "both forms": ({"observation": obs, "report": {}}, "body report"),
        "neither form": ({}, "give exactly one of 'observation'"),
        "unknown key": ({"observation": obs, "extra": 1}, "body extra: Extra inputs"),
        "bad digest": (
            {"observation": dict(obs, host=dict(obs["host"], image_id="sha256:../x"))},
            "body observation.host.image_id",
        ),
        "policy with a report": (
            {
                "report": {"verified": True, "target": {}, "manifest": {}, "checks": []},
                "policy": "default",
            },
            "'policy' goes with 'observation'",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "policy path",
        "unknown policy",
        "both forms",
        "neither form",
        "unknown key",
        "bad digest",
        "policy with a report",
    ],
)
def test_bad_verification_bodies_are_422(
    client: TestClient, tokens: Tokens, signer: Signer, case: str
) -> None:
    client.post(
        "/v1/manifests",
        json=envelope_json(signer.key, observation(image(1))),
        headers=tokens.header("recorder"),
    )
    before = client.get("/v1/audit", headers=tokens.header("reader")).json()
    body, fragment = _verification_bodies(signer)[case]
    answer = client.post("/v1/verifications", json=body, headers=tokens.header("recorder"))
    assert answer.status_code == 422, answer.text
    assert fragment in answer.json()["detail"]
    assert client.get("/v1/verifications", headers=tokens.header("reader")).json() == []
    assert client.get("/v1/audit", headers=tokens.header("reader")).json() == before


# --- tokens: never logged, never stored, never shown twice -----------------------------------


def test_a_token_is_never_logged_stored_or_shown_again(
    client: TestClient,
    tokens: Tokens,
    signer: Signer,
    store: Store,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    made = client.post(
        "/v1/tokens", json={"name": "bot", "role": "recorder"}, headers=tokens.header("admin")
    ).json()["token"]
    bot = {"Authorization": f"Bearer {made}"}
    doc = envelope_json(signer.key, observation(image(1)))
    client.post("/v1/manifests", json=doc, headers=bot)
    client.post(
        "/v1/verifications",
        json={"observation": observation_json(observation(image(1)))},
        headers=bot,
    )
    client.get("/v1/manifests", headers={"Authorization": "Bearer lockd_wrong"})
    seen = [
        client.get(path, headers=bot).text
        for path in (
            "/v1/manifests",
            "/v1/verifications",
            "/v1/audit",
            "/v1/audit/verify",
            "/metrics",
            "/openapi.json",
        )
    ]
    secrets = [made, tokens.reader, tokens.recorder, tokens.admin]
    for secret in secrets:
        assert all(secret not in page for page in seen)
        assert secret not in caplog.text
    with store.engine.connect() as conn:
        dump = "\n".join(
            repr(row) for table in t.metadata.sorted_tables for row in conn.execute(select(table))
        )
    for secret in secrets:
        assert secret not in dump
    assert "bot" in dump  # the name is kept; the actor of the writes above
    entries = client.get("/v1/audit", headers=bot).json()
    assert {e["actor"] for e in entries[-2:]} == {"bot"}


# --- tampering with the audit log ------------------------------------------------------------


@pytest.fixture
def busy_log(client: TestClient, tokens: Tokens, signer: Signer) -> int:
    """Three tokens, two manifests, two verifications: seven entries."""
    for n in (1, 2):
        obs = observation(image(n))
        client.post(
            "/v1/manifests", json=envelope_json(signer.key, obs), headers=tokens.header("recorder")
        )
        client.post(
            "/v1/verifications",
            json={"observation": observation_json(obs)},
            headers=tokens.header("recorder"),
        )
    verdict = client.get("/v1/audit/verify", headers=tokens.header("reader")).json()
    assert verdict == {"ok": True, "entries": 7, "first_bad": None, "reason": None}
    return 7


def _rehash(store: Store, seq: int, **changes: Any) -> None:
    with store.engine.begin() as conn:
        row = dict(
            conn.execute(select(t.audit_log).where(t.audit_log.c.seq == seq)).mappings().one()
        )
        row.update(changes)
        conn.execute(
            update(t.audit_log)
            .where(t.audit_log.c.seq == seq)
            .values(**changes, hash=entry_hash(row))
        )


TAMPERS: dict[str, tuple[Callable[[Store], None], int, str]] = {
    "edit an actor": (
        lambda s: _exec(
            s, update(t.audit_log).where(t.audit_log.c.seq == 4).values(actor="mallory")
        ),
        4,
        "entry 4 was edited",
    ),
    "edit and re-hash": (
        lambda s: _rehash(s, 5, subject="sha256:" + "f" * 64),
        5,
        "entry 5 was edited and re-hashed",
    ),
    "delete a middle entry": (
        lambda s: _exec(s, delete(t.audit_log).where(t.audit_log.c.seq == 3)),
        3,
        "entry 3 is missing",
    ),
    "delete the first entry": (
        lambda s: _exec(s, delete(t.audit_log).where(t.audit_log.c.seq == 1)),
        1,
        "entry 1 is missing",
    ),
    "delete the newest entry": (
        lambda s: _exec(s, delete(t.audit_log).where(t.audit_log.c.seq == 7)),
        7,
        "the newest entries were deleted",
    ),
    "edit the body digest": (
        lambda s: _exec(s, text("UPDATE audit_log SET body_digest = NULL WHERE seq = 6")),
        6,
        "entry 6 was edited",
    ),
}


def _exec(store: Store, statement: Any) -> None:
    with store.engine.begin() as conn:
        conn.execute(statement)


@pytest.mark.parametrize("tamper", list(TAMPERS))
def test_tampering_names_the_first_bad_entry(
    client: TestClient, tokens: Tokens, store: Store, busy_log: int, tamper: str
) -> None:
    change, first_bad, reason = TAMPERS[tamper]
    change(store)
    verdict = client.get("/v1/audit/verify", headers=tokens.header("reader")).json()
    assert verdict["ok"] is False
    assert verdict["first_bad"] == first_bad
    assert reason in verdict["reason"]


def test_base64_helper_roundtrip() -> None:
    assert dsse.b64decode(base64.b64encode(b"x").decode()) == b"x"


def test_one_authorization_decision_serves_every_route_and_the_fast_path() -> None:
    """deps.admit is the only place a token is judged: the routes' dependency raises from its
    refusal and the verifications fast path hands a refusal on to the route."""
    import inspect

    from lockd.server import deps
    from lockd.server.routes import verifications

    assert "admit(" in inspect.getsource(deps.authorize)
    fast = inspect.getsource(verifications.FastPath._row)
    assert "admit(" in fast and ".principal(" not in fast and "RANK" not in fast
