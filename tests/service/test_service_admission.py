"""POST /v1/admission on both databases: real AdmissionReview payloads for every workload kind,
denials that name each image, audit mode, the verdict cache, a store that hangs or refuses
under both failure modes, the audit log, and bodies that are no AdmissionReview."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from service_fixtures import Signer, Tokens
from service_helpers import UID, envelope_json, free_port, image, observation, review

from lockd.model.host import Integrity
from lockd.model.manifest import Observation
from lockd.model.report import Finding
from lockd.store.repository import Store

KINDS = ("Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob")
REG = "reg.example:5000/team/app"
LOOKUPS = 64  # four times the SQLite pool (8, and 8 overflow)
LOOPBACK = {"listen_host": "127.0.0.1"}  # where anonymous reviews are answered (see the auth tests)


def pinned(n: int) -> str:
    return f"{REG}@{image(n)}"


def broken(obs: Observation) -> Observation:
    """An environment recorded with --deep whose installed files did not match their RECORDs."""
    return obs.model_copy(
        update={
            "integrity": Integrity(
                source="overlay",
                evidence="host",
                distributions=3,
                files=30,
                bytes=1000,
                findings=[Finding(kind="modified", path="/opt/venv/lib/x.py", name="pkg-0")],
            )
        }
    )


@pytest.fixture
def admission_config(tmp_path: Path) -> Path:
    path = tmp_path / "admission.yaml"
    path.write_text(
        "namespaces:\n"
        "  prod: {policy: default, mode: enforce}\n"
        "  lab: {policy: audit, mode: audit}\n"
        "cache_ttl_s: 300\n"
        # generous: a decision that needs the store must not depend on this machine's load
        # (the deadline's own tests write theirs)
        "deadline_s: 30\n"
    )
    return path


@pytest.fixture
def gate(
    make_client: Callable[..., TestClient],
    admission_config: Path,
    tokens: Tokens,
    signer: Signer,
) -> TestClient:
    """A service with images 1-3 recorded and pushed, 4 recorded with integrity findings."""
    client = make_client(**LOOPBACK, admission_config=admission_config)
    for n in (1, 2, 3):
        doc = envelope_json(signer.key, observation(image(n)))
        answer = client.post("/v1/manifests", json=doc, headers=tokens.header("recorder"))
        assert answer.status_code == 201, answer.text
    doc = envelope_json(signer.key, broken(observation(image(4))))
    assert client.post("/v1/manifests", json=doc, headers=tokens.header("recorder")).is_success
    return client


def admit(client: TestClient, doc: dict[str, Any]) -> dict[str, Any]:
    answer = client.post("/v1/admission", json=doc)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    assert body["apiVersion"] == doc["apiVersion"]
    assert body["kind"] == "AdmissionReview"
    assert body["response"]["uid"] == doc["request"]["uid"]
    return body["response"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_allowed_when_every_image_is_recorded(gate: TestClient, kind: str) -> None:
    doc = review(kind, [pinned(1), pinned(2)], init=[pinned(3)], ephemeral=[pinned(1)])
    response = admit(gate, doc)
    assert response == {"uid": UID, "allowed": True}


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_denied_naming_each_offending_image(gate: TestClient, kind: str) -> None:
    doc = review(kind, [pinned(1), "team/app:1.0"], init=[pinned(9)], ephemeral=[pinned(4)])
    response = admit(gate, doc)
    assert response["allowed"] is False
    assert response["status"]["code"] == 403
    message = response["status"]["message"]
    assert message.startswith(f"lockd denied this {kind} under policy default: ")
    assert "team/app:1.0 (" in message and "containers[1] (c1)): not pinned by digest" in message
    assert f"{pinned(9)} (" in message and "initContainers[0] (i0)): no signed lockd" in message
    assert f"{pinned(4)} (" in message and "ephemeralContainers[0] (e0)): manifest" in message
    assert "fails policy default: integrity" in message
    assert pinned(1) + " (" not in message


def test_tag_only_is_denied(gate: TestClient) -> None:
    response = admit(gate, review("Deployment", [f"{REG}:v1"]))
    assert response["allowed"] is False
    assert (
        "not pinned by digest; deploy it as reg.example:5000/team/app@sha256:<digest>"
        in (response["status"]["message"])
    )


def test_audit_mode_allows_with_warnings(gate: TestClient) -> None:
    # lab's policy (audit) only warns on integrity: image 4 passes there; 9 is unknown.
    response = admit(gate, review("Deployment", [pinned(4), pinned(9), "app:1"], namespace="lab"))
    assert response["allowed"] is True
    assert "status" not in response
    warnings = response["warnings"]
    assert len(warnings) == 2
    assert warnings[0].startswith("lockd audit (audit): app:1 (spec.template.spec.containers[2]")
    assert f"lockd audit (audit): {pinned(9)} (" in warnings[1]
    assert "no signed lockd manifest is stored for" in warnings[1]


def test_an_untrusted_manifest_is_denied(
    make_client: Callable[..., TestClient],
    gate: TestClient,
    admission_config: Path,
    stranger: Signer,
) -> None:
    # The same database, served by a service that trusts another key only.
    other = make_client(
        **LOOPBACK, admission_config=admission_config, trusted_keys=(stranger.public,)
    )
    response = admit(other, review("Pod", [pinned(1)]))
    assert response["allowed"] is False
    assert "is not signed by a trusted key" in response["status"]["message"]


def test_every_decision_is_in_the_audit_log(gate: TestClient, store: Store) -> None:
    before = len(store.audit_entries())
    admit(gate, review("Deployment", [pinned(1)]))
    admit(gate, review("Deployment", ["app:1"]))
    admit(gate, review("Deployment", ["app:1"], namespace="lab"))
    admit(gate, review("Deployment", [pinned(1)], operation="DELETE", object=None))
    entries = store.audit_entries()[before:]
    # The actor is the channel (anonymous on loopback here); the review's user only claimed.
    claimed = " claimed_user=system:serviceaccount:ci:deployer"
    assert [(e.action, e.actor, e.subject) for e in entries] == [
        ("admission.allow", "anonymous:loopback", "prod/Deployment/web" + claimed),
        ("admission.deny", "anonymous:loopback", "prod/Deployment/web" + claimed),
        ("admission.warn", "anonymous:loopback", "lab/Deployment/web" + claimed),
        ("admission.allow", "anonymous:loopback", "prod/Deployment/web" + claimed),
    ]
    assert all(e.body_digest and e.body_digest.startswith("sha256:") for e in entries)
    assert store.verify_audit().ok


def test_verdicts_are_cached_for_the_ttl(gate: TestClient, tokens: Tokens, signer: Signer) -> None:
    assert admit(gate, review("Pod", [pinned(7)]))["allowed"] is False
    doc = envelope_json(signer.key, observation(image(7)))
    assert gate.post("/v1/manifests", json=doc, headers=tokens.header("recorder")).is_success
    # Still the cached "no manifest" verdict: the TTL (300 s) has not passed.
    assert admit(gate, review("Pod", [pinned(7)]))["allowed"] is False
    gate.app.state.admission.forget()  # type: ignore[attr-defined]
    assert admit(gate, review("Pod", [pinned(7)]))["allowed"] is True


def test_a_zero_ttl_rechecks_every_time(
    make_client: Callable[..., TestClient], tmp_path: Path, tokens: Tokens, signer: Signer
) -> None:
    config = tmp_path / "nocache.yaml"
    config.write_text("cache_ttl_s: 0\n")
    client = make_client(**LOOPBACK, admission_config=config)
    assert admit(client, review("Pod", [pinned(8)]))["allowed"] is False
    doc = envelope_json(signer.key, observation(image(8)))
    assert client.post("/v1/manifests", json=doc, headers=tokens.header("recorder")).is_success
    assert admit(client, review("Pod", [pinned(8)]))["allowed"] is True


def test_lookup_threads_never_drain_the_store(
    make_client: Callable[..., TestClient], tmp_path: Path, tokens: Tokens, signer: Signer
) -> None:
    """64 reviews, none answered from the cache, each looked up on a thread of its own: every
    one is decided by the store (SQLite readers once stayed with their threads, and from the
    17th lookup on every review was denied: 'the store did not answer within 2 s')."""
    config = tmp_path / "nocache.yaml"
    config.write_text("cache_ttl_s: 0\n")
    client = make_client(**LOOPBACK, admission_config=config)
    recorded = (1, 2, 3, 4)
    for n in recorded:
        doc = envelope_json(signer.key, observation(image(n)))
        answer = client.post("/v1/manifests", json=doc, headers=tokens.header("recorder"))
        assert answer.status_code == 201, answer.text
    for i in range(LOOKUPS):
        uid = f"review-{i}"
        if i % 2 == 0:
            ref = pinned(recorded[i // 2 % len(recorded)])
            assert admit(client, review("Pod", [ref], uid=uid)) == {"uid": uid, "allowed": True}
            continue
        unknown = image(1000 + i)  # a digest of its own: no cache could answer it
        assert admit(client, review("Pod", [pinned(1000 + i)], uid=uid)) == {
            "uid": uid,
            "allowed": False,
            "status": {
                "code": 403,
                "reason": "Forbidden",
                "message": f"lockd denied this Pod under policy default: {REG}@{unknown} "
                f"(spec.containers[0] (c0)): no signed lockd manifest is stored for "
                f"{unknown[:19]}…; record the image and push its manifest (lockd record, "
                "lockd push)",
            },
        }


# --- a store that hangs or refuses --------------------------------------------------------


@pytest.fixture
def silent_database() -> Iterator[str]:
    """A PostgreSQL URL whose server accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"postgresql://lockd@127.0.0.1:{listener.getsockname()[1]}/lockd"
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    listener.close()


@pytest.mark.parametrize(
    ("failure", "allowed"),
    [("closed", False), ("open", True)],
)
@pytest.mark.parametrize("store_state", ["hangs", "refuses"])
def test_store_down_gives_a_decision_under_the_failure_mode(
    make_client: Callable[..., TestClient],
    tmp_path: Path,
    request: pytest.FixtureRequest,
    failure: str,
    allowed: bool,
    store_state: str,
) -> None:
    if store_state == "hangs":
        url = request.getfixturevalue("silent_database")
        why = "the store did not answer within 0.3 s"
    else:
        url = f"postgresql://lockd@127.0.0.1:{free_port()}/lockd"
        why = "the store failed (OperationalError"
    config = tmp_path / "admission.yaml"
    config.write_text(f"deadline_s: 0.3\nfailure: {failure}\n")
    client = make_client(**LOOPBACK, admission_config=config, database_url=url)
    response = admit(client, review("Deployment", [pinned(1)]))
    assert response["allowed"] is allowed
    if allowed:
        assert response["warnings"][0].startswith("lockd could not check the images: " + why)
    else:
        assert why in response["status"]["message"]
        assert "failing closed" in response["status"]["message"]


def test_tag_only_is_denied_without_the_store(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    config = tmp_path / "admission.yaml"
    config.write_text("deadline_s: 0.3\nfailure: open\n")
    url = f"postgresql://lockd@127.0.0.1:{free_port()}/lockd"
    client = make_client(**LOOPBACK, admission_config=config, database_url=url)
    response = admit(client, review("Pod", ["app:latest"]))
    assert response["allowed"] is False
    assert "not pinned by digest" in response["status"]["message"]


# --- bad input --------------------------------------------------------------------------


def test_unknown_kind_and_missing_pod_spec_are_clear_denials(gate: TestClient) -> None:
    doc = review("Pod", [pinned(1)])
    doc["request"]["kind"]["kind"] = "Service"
    response = admit(gate, doc)
    assert response["allowed"] is False
    assert "lockd cannot find the images of a Service" in response["status"]["message"]

    doc = review("Deployment", [pinned(1)])
    del doc["request"]["object"]["spec"]["template"]
    response = admit(gate, doc)
    assert "the Deployment has no pod spec at spec.template.spec" in response["status"]["message"]

    doc = review("Pod", [pinned(1)])
    doc["request"]["object"] = None
    response = admit(gate, doc)
    assert "the Pod has no pod spec at spec" in response["status"]["message"]


def test_image_from_an_unknown_registry_is_denied(
    make_client: Callable[..., TestClient], tmp_path: Path, tokens: Tokens, signer: Signer
) -> None:
    config = tmp_path / "admission.yaml"
    config.write_text("registries: [reg.example:5000]\n")
    client = make_client(**LOOPBACK, admission_config=config)
    doc = envelope_json(signer.key, observation(image(1)))
    assert client.post("/v1/manifests", json=doc, headers=tokens.header("recorder")).is_success
    assert admit(client, review("Pod", [pinned(1)]))["allowed"] is True
    response = admit(client, review("Pod", [f"evil.example/app@{image(1)}"]))
    assert response["allowed"] is False
    assert "registry evil.example is not one of the allowed" in response["status"]["message"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{", "not valid JSON"),
        (json.dumps({"apiVersion": "admission.k8s.io/v2", "kind": "AdmissionReview"}), "v2"),
        (json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}), "request"),
        (
            json.dumps(
                {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}}
            ),
            "request.uid is missing",
        ),
    ],
)
def test_bodies_that_are_no_admission_review_are_400(
    gate: TestClient, body: str | bytes, fragment: str
) -> None:
    answer = gate.post("/v1/admission", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400
    assert fragment in answer.json()["detail"]


def test_a_huge_object_is_413(gate: TestClient) -> None:
    doc = review("Pod", [pinned(1)])
    doc["request"]["object"]["metadata"]["annotations"] = {"big": "x" * (6 * 1024 * 1024)}
    answer = gate.post("/v1/admission", json=doc)
    assert answer.status_code == 413


def test_too_many_containers_is_a_clear_denial(gate: TestClient) -> None:
    response = admit(gate, review("Pod", [pinned(1)] * 300))
    assert response["allowed"] is False
    assert "more than 256 containers" in response["status"]["message"]


def test_bad_admission_config_fails_at_start(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    from lockd.errors import PolicyError

    config = tmp_path / "admission.yaml"
    config.write_text("failure: maybe\n")
    with pytest.raises(PolicyError, match="admission.yaml: failure"):
        make_client(**LOOPBACK, admission_config=config)
