"""The command line against a real `lockd serve`: token create, push, verify --server, and
audit verify --server (which re-checks the chain itself)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from service_helpers import Server
from sqlalchemy import update

from lockd.store import tables as t
from lockd.store.repository import Store

Lockd = Callable[..., subprocess.CompletedProcess[str]]  # the `lockd` fixture (tests/conftest.py)


@pytest.fixture(scope="module")
def other_pub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lockd.trust import keys

    path = tmp_path_factory.mktemp("other") / "other.pub"
    path.write_bytes(keys.public_pem(keys.generate_private_key()))
    return path


@pytest.fixture
def server_env(database_url: str, keypair: tuple[Path, Path]) -> dict[str, str]:
    return {"LOCKD_DATABASE_URL": database_url, "LOCKD_TRUSTED_KEYS": str(keypair[1])}


@pytest.fixture
def server(server_env: dict[str, str], tmp_path: Path) -> Iterator[Server]:
    with (tmp_path / "server.log").open("wb") as log:
        running = Server(server_env, log=log).start()
        yield running
        running.stop()


def test_token_create_prints_the_token_once(
    server_env: dict[str, str], store: Store, lockd: Lockd
) -> None:
    made = lockd("token", "create", "deployer", "--role", "recorder", env=server_env)
    assert made.returncode == 0, made.stderr
    [token] = made.stdout.splitlines()
    assert token.startswith("lockd_")
    assert "shown only this once" in made.stderr
    assert store.principal_for(token) is not None
    again = lockd("token", "create", "deployer", "--role", "reader", env=server_env)
    assert again.returncode == 2
    assert "a token named 'deployer' exists already" in again.stderr
    assert token not in again.stdout + again.stderr
    bad = lockd("token", "create", "../x", "--role", "root", env=server_env)
    assert bad.returncode == 2
    assert "token name '../x'" in bad.stderr


def test_push_verify_and_audit_against_a_server(
    server: Server,
    server_env: dict[str, str],
    keypair: tuple[Path, Path],
    local_envelope: Path,
    store: Store,
    other_pub: Path,
    lockd: Lockd,
) -> None:
    token = lockd("token", "create", "ci", "--role", "recorder", env=server_env).stdout.strip()
    client_env = {"LOCKD_TOKEN": token}

    pushed = lockd(
        "push", local_envelope, "--server", server.url, "--label", "experiment=7", env=client_env
    )
    assert pushed.returncode == 0, pushed.stderr
    assert "stored as sha256:" in pushed.stdout
    again = lockd("push", local_envelope, "--server", server.url, env=client_env)
    assert "already stored" in again.stdout

    verified = lockd(
        "verify", "local", "--server", server.url, "--key", keypair[1], "--json", env=client_env
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    report = json.loads(verified.stdout)
    assert report["verified"] is True
    assert report["manifest"]["path"].startswith(f"{server.url}/v1/manifests/sha256:")
    [stored] = store.list_verifications()
    assert stored.source == "client"
    assert stored.actor == "ci"
    assert json.loads(stored.report) == report

    # The service's copy is checked here: a key this client does not trust fails the signature.
    untrusted = lockd(
        "verify", "local", "--server", server.url, "--key", other_pub, "--json", env=client_env
    )
    assert untrusted.returncode == 1
    assert json.loads(untrusted.stdout)["checks"][0]["status"] == "fail"

    checked = lockd("audit", "verify", "--server", server.url, "--json", env=client_env)
    assert checked.returncode == 0, checked.stderr
    verdict = json.loads(checked.stdout)
    assert verdict["ok"] is True
    assert verdict["entries"] == 4  # token, manifest, two reports

    with store.engine.begin() as conn:
        conn.execute(update(t.audit_log).where(t.audit_log.c.seq == 2).values(actor="mallory"))
    broken = lockd("audit", "verify", "--server", server.url, env=client_env)
    assert broken.returncode == 1
    assert "the audit chain is broken at entry 2" in broken.stdout
    assert "entry 2 was edited" in broken.stdout


def test_client_errors_name_the_server_and_what_to_do(
    server: Server, local_envelope: Path, keypair: tuple[Path, Path], lockd: Lockd
) -> None:
    anonymous = lockd("push", local_envelope, "--server", server.url, env={"LOCKD_TOKEN": ""})
    assert anonymous.returncode == 2
    assert "401" in anonymous.stderr and "needs a bearer token" in anonymous.stderr
    nobody = lockd("audit", "verify", "--server", "http://127.0.0.1:1")
    assert nobody.returncode == 2
    assert "cannot reach the lockd service" in nobody.stderr
    neither = lockd("verify", "local", "--key", keypair[1])
    assert neither.returncode == 2
    assert " ".join(neither.stderr.split()) == (
        "lockd: error: give --manifest FILE, --server URL to fetch it from a lockd service, or "
        "--registry to take it from the image's registry"
    )


def test_a_sigstore_bundle_pushed_verified_and_exported_against_a_server(
    server: Server,
    server_env: dict[str, str],
    keypair: tuple[Path, Path],
    tmp_path: Path,
    lockd: Lockd,
) -> None:
    bundle = tmp_path / "local.sigstore.json"
    assert lockd("record", "local", "--key", keypair[0], "--bundle", "-o", bundle).returncode == 0
    token = lockd("token", "create", "ci", "--role", "recorder", env=server_env).stdout.strip()
    client_env = {"LOCKD_TOKEN": token}

    pushed = lockd("push", bundle, "--server", server.url, env=client_env)
    assert pushed.returncode == 0, pushed.stderr
    digest = pushed.stdout.split("stored as ")[1].split()[0]
    verified = lockd("verify", "local", "--server", server.url, "--key", keypair[1], env=client_env)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    exported = tmp_path / "audit.tar.gz"
    made = lockd("audit", "export", digest, "-o", exported, "--server", server.url, env=client_env)
    assert made.returncode == 0, made.stdout + made.stderr
    checked = lockd("audit", "verify", exported)
    assert checked.returncode == 0, checked.stdout + checked.stderr
