"""Who may send /v1/admission reviews, on both databases (#18, findings 1, 2 and 5): no
anonymous review off loopback unless --insecure-admission (the rule lives in the app factory),
a bearer token or a client certificate as the alternative, the audit actor the authenticated
channel and the review's user only claimed; the TLS admission listener of a real `lockd serve`
refusing callers without a certificate from --client-ca; dry runs not audited; malformed reviews
with a uid denied as reviews."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from certificates import Certificates, make_certificates
from child_processes import dying_with_parent
from fastapi.testclient import TestClient
from service_fixtures import REPO, Tokens
from service_helpers import UID, Server, free_port, image, review

from lockd.errors import InputError
from lockd.server.app import create_app
from lockd.server.settings import Settings
from lockd.store.repository import Store

IMAGE = f"reg.example:5000/team/app@{image(1)}"
NOT_ANSWERED = (
    "this service listens on {where}: /v1/admission needs a client certificate (lockd serve "
    "--admission-port with --client-ca) or a bearer token of a recorder (lockd token create "
    "NAME --role recorder); --insecure-admission (or LOCKD_INSECURE_ADMISSION=1) allows "
    "anonymous reviews"
)


def hostile_review(**request: Any) -> dict[str, Any]:
    """The finding's review: a user name of the caller's choosing."""
    return review(
        "Pod", [IMAGE], userInfo={"username": "system:admin-alice", "groups": []}, **request
    )


def admissions(store: Store) -> list[tuple[str, str, str | None]]:
    return [
        (e.actor, e.action, e.subject)
        for e in store.audit_entries()
        if e.action.startswith("admission.")
    ]


def wait_for_audit(store: Store, count: int) -> list[tuple[str, str, str | None]]:
    """The decision is chained just after the answer is sent: poll for it."""
    for _ in range(200):
        found = admissions(store)
        if len(found) >= count:
            return found
        time.sleep(0.05)
    return admissions(store)


@pytest.mark.parametrize("host", [None, "0.0.0.0", "::", "10.0.0.7"])
def test_anonymous_reviews_off_loopback_are_refused_before_anything_is_stored(
    make_client: Callable[..., TestClient], store: Store, host: str | None
) -> None:
    """Finding 2: one anonymous POST appended an entry with the actor it chose, unbounded."""
    client = make_client(listen_host=host)
    for _ in range(5):
        answer = client.post("/v1/admission", json=hostile_review())
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"] == "Bearer"
        where = host or "an address it was not told (LOCKD_HOST)"
        assert answer.json() == {"detail": NOT_ANSWERED.format(where=where)}
    assert store.audit_entries() == []


@pytest.mark.parametrize(
    ("changes", "actor"),
    [
        ({"listen_host": "127.0.0.1"}, "anonymous:loopback"),
        ({"listen_host": "::1"}, "anonymous:loopback"),
        ({"listen_host": "localhost"}, "anonymous:loopback"),
        ({"listen_host": "0.0.0.0", "insecure_admission": True}, "anonymous:insecure-admission"),
    ],
)
def test_anonymous_reviews_on_loopback_or_when_told_are_audited_as_anonymous(
    make_client: Callable[..., TestClient], store: Store, changes: dict[str, Any], actor: str
) -> None:
    client = make_client(**changes)
    answer = client.post("/v1/admission", json=hostile_review())
    assert answer.status_code == 200
    assert answer.json()["response"]["allowed"] is False
    assert wait_for_audit(store, 1) == [
        (actor, "admission.deny", "prod/Pod/web claimed_user=system:admin-alice")
    ]


@pytest.mark.parametrize("arrived_on", ["10.0.0.7", "[::ffff:10.0.0.7]", "[fd00::2]"])
def test_an_anonymous_review_arriving_off_loopback_is_refused_whatever_lockd_host_says(
    settings: Settings, store: Store, arrived_on: str
) -> None:
    """uvicorn started by hand with ``--host 0.0.0.0`` and LOCKD_HOST=127.0.0.1: a review sent
    to the machine's network address was audited as anonymous:loopback. The scope's ``server``
    (the socket's local address, which the test client takes from the URL) decides."""
    app = create_app(settings.model_copy(update={"listen_host": "127.0.0.1"}))
    with TestClient(app, base_url=f"http://{arrived_on}:8080") as client:
        answer = client.post("/v1/admission", json=hostile_review())
    assert answer.status_code == 401
    where = f"this review arrived on {arrived_on.strip('[]')}, not loopback, though LOCKD_HOST is"
    assert answer.json() == {
        "detail": NOT_ANSWERED.replace("this service listens on", where).format(where="127.0.0.1")
    }
    assert store.audit_entries() == []


@pytest.mark.parametrize("arrived_on", ["127.0.0.1", "127.9.9.9", "[::1]", "[::ffff:127.0.0.1]"])
def test_an_anonymous_review_arriving_on_loopback_is_answered(
    settings: Settings, store: Store, arrived_on: str
) -> None:
    app = create_app(settings.model_copy(update={"listen_host": "127.0.0.1"}))
    with TestClient(app, base_url=f"http://{arrived_on}:8080") as client:
        assert client.post("/v1/admission", json=hostile_review()).status_code == 200
    assert wait_for_audit(store, 1)[0][0] == "anonymous:loopback"


def test_a_recorder_token_authenticates_the_webhook_and_is_the_actor(
    make_client: Callable[..., TestClient], store: Store, tokens: Tokens
) -> None:
    client = make_client(listen_host="0.0.0.0")
    answer = client.post("/v1/admission", json=hostile_review(), headers=tokens.header("recorder"))
    assert answer.status_code == 200
    assert wait_for_audit(store, 1) == [
        ("token:ci-recorder", "admission.deny", "prod/Pod/web claimed_user=system:admin-alice")
    ]
    weak = client.post("/v1/admission", json=hostile_review(), headers=tokens.header("reader"))
    assert (weak.status_code, weak.json()["detail"]) == (
        403,
        "token 'ci-reader' has the role reader; this needs recorder or stronger",
    )
    unknown = client.post(
        "/v1/admission", json=hostile_review(), headers={"Authorization": "Bearer nope"}
    )
    assert (unknown.status_code, unknown.json()["detail"]) == (
        401,
        "the bearer token is not known to this service",
    )
    assert len(admissions(store)) == 1


def test_the_factory_refuses_an_admission_port_whose_certificates_nobody_checks(
    settings: Settings, tmp_path: Path
) -> None:
    """uvicorn started by hand (app_from_env) cannot tell the app that it requires client
    certificates: the factory refuses rather than answer reviews on that port unchecked."""
    listener = settings.model_copy(
        update={
            "admission_port": 8443,
            "tls_cert": tmp_path / "tls.crt",
            "tls_key": tmp_path / "tls.key",
            "client_ca": tmp_path / "ca.crt",
        }
    )
    with pytest.raises(InputError) as raised:
        create_app(listener)
    assert str(raised.value).startswith(
        "LOCKD_ADMISSION_PORT=8443: only `lockd serve` opens the admission listener (it "
        "requires client certificates from LOCKD_CLIENT_CA there)"
    )


def test_app_from_env_takes_the_rule_from_lockd_host(
    database_url: str, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lockd.server.app import app_from_env

    monkeypatch.setenv("LOCKD_DATABASE_URL", database_url)
    monkeypatch.delenv("LOCKD_HOST", raising=False)
    with TestClient(app_from_env()) as client:
        assert client.post("/v1/admission", json=hostile_review()).status_code == 401
    monkeypatch.setenv("LOCKD_HOST", "127.0.0.1")
    with TestClient(app_from_env()) as client:
        assert client.post("/v1/admission", json=hostile_review()).status_code == 200


# --- the TLS admission listener of a real `lockd serve` -----------------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_server(
    database_url: str, certificates: Certificates, tmp_path: Path
) -> Iterator[tuple[Server, int]]:
    admission_port = free_port()
    args = (
        "--tls-cert",
        str(certificates.server.cert),
        "--tls-key",
        str(certificates.server.key),
        "--admission-port",
        str(admission_port),
        "--client-ca",
        str(certificates.ca),
    )
    log = (tmp_path / "serve.log").open("wb")
    server = Server({"LOCKD_DATABASE_URL": database_url}, log=log, args=args, ca=certificates.ca)
    server.start()
    try:
        yield server, admission_port
    finally:
        server.stop()
        log.close()


def post(url: str, body: dict[str, Any], context: ssl.SSLContext) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=20, context=context) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def client_context(certificates: Certificates, client: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certificates.ca))
    if client is not None:
        pair = getattr(certificates, client)
        context.load_cert_chain(pair.cert, pair.key)
    return context


@pytest.mark.parametrize("client", [None, "stranger"])
def test_the_admission_listener_refuses_a_caller_without_a_certificate_from_the_client_ca(
    tls_server: tuple[Server, int], certificates: Certificates, store: Store, client: str | None
) -> None:
    _, port = tls_server
    context = client_context(certificates, client)
    for _ in range(20):
        with pytest.raises((ssl.SSLError, ConnectionError, urllib.error.URLError)):
            post(f"https://localhost:{port}/v1/admission", hostile_review(), context)
    assert store.audit_entries() == []


def test_the_admission_listener_answers_the_api_servers_certificate_and_audits_its_subject(
    tls_server: tuple[Server, int], certificates: Certificates, store: Store
) -> None:
    server, port = tls_server
    context = client_context(certificates, "apiserver")
    status, body = post(f"https://localhost:{port}/v1/admission", hostile_review(), context)
    assert status == 200
    assert body["response"]["uid"] == UID and body["response"]["allowed"] is False
    assert wait_for_audit(store, 1) == [
        ("tls:CN=kube-apiserver", "admission.deny", "prod/Pod/web claimed_user=system:admin-alice")
    ]
    # The admission listener answers the webhook (and health) only.
    with pytest.raises(urllib.error.HTTPError) as other:
        urllib.request.urlopen(f"https://localhost:{port}/v1/audit", timeout=20, context=context)
    assert other.value.code == 404
    # The main listener serves TLS, and refuses reviews: they go to the admission listener.
    plain = client_context(certificates, None)
    with urllib.request.urlopen(server.url + "/healthz", timeout=20, context=plain) as answer:
        assert answer.status == 200
    status, body = post(server.url + "/v1/admission", hostile_review(), plain)
    assert (status, body) == (
        403,
        {
            "detail": f"admission reviews are answered on the admission listener (port {port}) "
            "only, to callers with a client certificate"
        },
    )
    assert len(admissions(store)) == 1


def serve_refused(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        dying_with_parent([sys.executable, "-m", "lockd", "serve", "--port", "1", *args]),
        env={"PATH": "/usr/bin:/bin", "LOCKD_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--tls-cert", "x.crt"),
            "give both --tls-cert and --tls-key (LOCKD_TLS_CERT, LOCKD_TLS_KEY)",
        ),
        (
            ("--admission-port", "8443"),
            "--admission-port needs --tls-cert, --tls-key and --client-ca: the admission listener "
            "requires a client certificate (LOCKD_ADMISSION_PORT, LOCKD_CLIENT_CA)",
        ),
        (
            ("--tls-cert", "x.crt", "--tls-key", "x.key", "--client-ca", "ca.crt"),
            "--client-ca is used by the admission listener only: give --admission-port too",
        ),
        (
            ("--tls-cert", "/nonexistent/x.crt", "--tls-key", "/nonexistent/x.key"),
            "/nonexistent/x.crt, /nonexistent/x.key: cannot load the TLS certificate and key",
        ),
    ],
)
def test_serve_refuses_tls_options_that_do_not_fit(
    database_url: str, args: tuple[str, ...], message: str
) -> None:
    result = serve_refused(database_url, *args)
    assert result.returncode == 2, result.stderr
    assert message in " ".join(result.stderr.split())


def test_serve_refuses_an_admission_port_with_several_workers(
    database_url: str, certificates: Certificates
) -> None:
    args = [
        *("--tls-cert", str(certificates.server.cert), "--tls-key", str(certificates.server.key)),
        *("--admission-port", "8443", "--client-ca", str(certificates.ca), "--workers", "2"),
    ]
    result = serve_refused(database_url, *args)
    assert result.returncode == 2
    assert "--admission-port serves from one process: give --workers 1 and run more replicas" in (
        " ".join(result.stderr.split())
    )


# --- dry runs, malformed reviews ----------------------------------------------------------


def test_a_dry_run_is_answered_but_not_audited(
    make_client: Callable[..., TestClient], store: Store
) -> None:
    client = make_client(listen_host="127.0.0.1")
    dry = client.post("/v1/admission", json=hostile_review(dryRun=True))
    assert dry.status_code == 200 and dry.json()["response"]["allowed"] is False
    real = client.post("/v1/admission", json=hostile_review(uid="second"))
    assert real.status_code == 200
    assert wait_for_audit(store, 1) == [
        ("anonymous:loopback", "admission.deny", "prod/Pod/web claimed_user=system:admin-alice")
    ]


def test_a_malformed_review_with_a_readable_uid_is_a_deny_not_a_400(
    make_client: Callable[..., TestClient], store: Store
) -> None:
    client = make_client(listen_host="127.0.0.1")
    doc = hostile_review(operation=["CREATE"])
    doc["apiVersion"] = "admission.k8s.io/v1beta1"
    answer = client.post("/v1/admission", json=doc)
    assert answer.status_code == 200  # an answer the API server reads, not an HTTP error
    body = answer.json()
    assert (body["apiVersion"], body["response"]["uid"], body["response"]["allowed"]) == (
        "admission.k8s.io/v1beta1",
        UID,
        False,
    )
    assert body["response"]["status"]["message"] == (
        "a malformed AdmissionReview: request.operation is not a string"
    )
    unknown = client.post("/v1/admission", json={**doc, "apiVersion": "admission.k8s.io/v2"})
    assert unknown.status_code == 400
    assert "send admissionReviewVersions v1 or v1beta1" in unknown.json()["detail"]
    assert store.audit_entries() == []


def test_warnings_in_an_answer_are_cut_to_kubernetes_limit(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    config = tmp_path / "admission.yaml"
    config.write_text("default: {policy: audit, mode: audit}\n")
    client = make_client(listen_host="127.0.0.1", admission_config=config)
    images = [f"{'r' * 200}.example/app:{i}" for i in range(30)]
    answer = client.post("/v1/admission", json=review("Pod", images))
    warnings = answer.json()["response"]["warnings"]
    assert len(warnings) == 20
    assert max(len(w) for w in warnings) == 256
    assert warnings[0].endswith("…")
    assert warnings[-1] == "lockd: 11 more warnings left out"


def test_a_stop_does_not_wait_on_a_tls_peer_that_never_closes(
    tls_server: tuple[Server, int], certificates: Certificates, tmp_path: Path
) -> None:
    """A client that keeps its TLS connection open and never answers the close (a 404 it did
    not read to the end, a stuck proxy) held `lockd serve` for asyncio's 30 s TLS shutdown
    timeout; the stop is bounded (GRACEFUL_SHUTDOWN_S) and the process ends by itself."""
    import socket

    server, port = tls_server
    context = client_context(certificates, "apiserver")
    raw = socket.create_connection(("127.0.0.1", port))
    held = context.wrap_socket(raw, server_hostname="localhost")
    held.sendall(b"GET /v1/audit HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert held.recv(12) == b"HTTP/1.1 404"  # answered; the connection stays open, unread
    try:
        server.process.terminate()
        assert server.process.wait(timeout=120) == 0
    finally:
        held.close()
    log = (tmp_path / "serve.log").read_text()
    assert "timeout graceful shutdown exceeded" in log
