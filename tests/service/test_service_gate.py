"""Against a real `lockd serve`: `lockd gate` and its exit codes, and the admission webhook
configured from LOCKD_ADMISSION_CONFIG."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from service_fixtures import Signer
from service_helpers import Server, envelope, image, observation
from test_service_admission import broken, review

from lockd.store.repository import Store

REG = "reg.example:5000/team/app"
Lockd = Callable[..., subprocess.CompletedProcess[str]]  # the `lockd` fixture (tests/conftest.py)


@pytest.fixture
def served(
    database_url: str, signer: Signer, store: Store, tmp_path: Path
) -> Iterator[tuple[Server, str]]:
    """A running service holding manifests for images 1 (clean) and 4 (integrity findings);
    ``(server, reader token)``."""
    config = tmp_path / "admission.yaml"
    config.write_text("namespaces:\n  lab: {policy: audit, mode: audit}\n")
    recorder = store.create_token("ci", "recorder", actor="test")
    reader = store.create_token("gate", "reader", actor="test")
    env = {
        "LOCKD_DATABASE_URL": database_url,
        "LOCKD_TRUSTED_KEYS": str(signer.public),
        "LOCKD_ADMISSION_CONFIG": str(config),
    }
    with (tmp_path / "server.log").open("wb") as log:
        server = Server(env, log=log).start()
        try:
            for obs in (observation(image(1)), broken(observation(image(4)))):
                request = urllib.request.Request(
                    server.url + "/v1/manifests",
                    data=envelope(signer.key, obs).to_json(),
                    headers={
                        "Authorization": f"Bearer {recorder}",
                        "Content-Type": "application/json",
                    },
                    method="POST",
                )
                with urllib.request.urlopen(request, timeout=10) as answer:
                    assert answer.status == 201
            yield server, reader
        finally:
            server.stop()


def test_gate_exit_codes(
    served: tuple[Server, str], signer: Signer, stranger: Signer, lockd: Lockd
) -> None:
    server, reader = served
    env = {"LOCKD_TOKEN": reader, "LOCKD_SERVER": server.url}
    key = ("--key", str(signer.public))

    ok = lockd("gate", f"{REG}@{image(1)}", *key, "--policy", "default", "--json", env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    verdict = json.loads(ok.stdout)
    assert verdict["allowed"] is True
    assert verdict["digest"] == image(1)
    assert verdict["keyids"] == [signer.keyid]
    assert verdict["manifest"].startswith("sha256:")

    human = lockd("gate", f"{REG}@{image(1)}", *key, env=env)
    assert human.returncode == 0
    assert "allowed under default" in human.stdout

    failing = lockd("gate", f"{REG}@{image(4)}", *key, "--policy", "default", "--json", env=env)
    assert failing.returncode == 1
    assert "fails policy default: integrity" in json.loads(failing.stdout)["reasons"][0]
    relaxed = lockd("gate", f"{REG}@{image(4)}", *key, "--policy", "audit", env=env)
    assert relaxed.returncode == 0, relaxed.stdout

    unknown = lockd("gate", f"{REG}@{image(9)}", *key, env=env)
    assert unknown.returncode == 1
    assert f"no lockd manifest for {image(9)}" in unknown.stdout

    untrusted = lockd("gate", f"{REG}@{image(1)}", "--key", str(stranger.public), env=env)
    assert untrusted.returncode == 1
    assert "not signed by a trusted key" in untrusted.stdout

    tag = lockd("gate", f"{REG}:v1", *key, env=env)
    assert tag.returncode == 2
    assert "give the image pinned by digest" in tag.stderr

    no_server = lockd("gate", f"{REG}@{image(1)}", *key, env={"LOCKD_SERVER": ""})
    assert no_server.returncode == 2
    assert "give --server URL" in no_server.stderr

    down = lockd("gate", f"{REG}@{image(1)}", *key, "--server", "http://127.0.0.1:1", env={})
    assert down.returncode == 2
    assert "cannot reach the lockd service" in down.stderr

    bad_policy = lockd("gate", f"{REG}@{image(1)}", *key, "--policy", "nosuch", env=env)
    assert bad_policy.returncode == 2


def test_admission_on_a_running_service(served: tuple[Server, str], store: Store) -> None:
    server, _ = served

    def admit(doc: dict[str, object]) -> dict[str, object]:
        request = urllib.request.Request(
            server.url + "/v1/admission",
            data=json.dumps(doc).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            body: dict[str, object] = json.loads(answer.read())
        response = body["response"]
        assert isinstance(response, dict)
        return response

    assert admit(review("Deployment", [f"{REG}@{image(1)}"]))["allowed"] is True
    denied = admit(review("Deployment", [f"{REG}@{image(4)}"]))
    assert denied["allowed"] is False
    # LOCKD_ADMISSION_CONFIG put namespace lab in audit mode under the audit policy.
    lab = admit(review("Deployment", [f"{REG}@{image(4)}", "app:1"], namespace="lab"))
    assert lab["allowed"] is True
    assert isinstance(lab["warnings"], list) and len(lab["warnings"]) == 1
    # The decision is chained into the audit log just after the answer is sent: wait for it.
    for _ in range(100):
        actions = [e.action for e in store.audit_entries() if e.action.startswith("admission.")]
        if len(actions) == 3:
            break
        time.sleep(0.05)
    assert actions == ["admission.allow", "admission.deny", "admission.warn"]
