"""Audit bundles exported from a real `lockd serve` on SQLite and PostgreSQL, with and without a
log key: the bundle carries the log's proof when the service signs checkpoints, and is checked
offline against the pinned key; from a service that signs none, export and verify say so."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from reference_manifests import manifest_a
from service_helpers import Server
from sigstore_instance import ISSUER, SigstoreInstance

from lockd.trust.checkpoint import LogSigner
from lockd.trust.logkey import write_log_key
from lockd.trust.statement import make_statement

Lockd = Callable[..., subprocess.CompletedProcess[str]]  # the `lockd` fixture (tests/conftest.py)


def _exported(
    env: dict[str, str], envelope: Path, keypair: tuple[Path, Path], lockd: Lockd, out: Path
) -> str:
    """Serve ``env``, push the manifest, verify this host against it through the service (a
    report), export its bundle to ``out``, stop the service; what export said."""
    with (out.parent / "server.log").open("wb") as log:
        server = Server(env, log=log).start()
        try:
            token = lockd("token", "create", "ci", "--role", "recorder", env=env).stdout.strip()
            client = {"LOCKD_TOKEN": token}
            pushed = lockd("push", envelope, "--server", server.url, env=client)
            assert pushed.returncode == 0, pushed.stderr
            digest = pushed.stdout.split("stored as ")[1].split()[0]
            verified = lockd(
                "verify", "local", "--server", server.url, "--key", keypair[1], env=client
            )
            assert verified.returncode == 0, verified.stdout + verified.stderr
            made = lockd("audit", "export", digest, "-o", out, "--server", server.url, env=client)
        finally:
            server.stop()
    assert made.returncode == 0, made.stdout + made.stderr
    return " ".join(made.stdout.split())


def test_a_bundle_from_a_service_with_a_log_key_verifies_against_it_pinned(
    database_url: str,
    keypair: tuple[Path, Path],
    local_envelope: Path,
    tmp_path: Path,
    lockd: Lockd,
) -> None:
    signer = LogSigner.generate("lockd.test/audit")
    key_file, vkey_file = write_log_key(tmp_path / "log", signer)
    env = {
        "LOCKD_DATABASE_URL": database_url,
        "LOCKD_TRUSTED_KEYS": str(keypair[1]),
        "LOCKD_LOG_KEY": str(key_file),
    }
    bundle = tmp_path / "audit.tar.gz"
    said = _exported(env, local_envelope, keypair, lockd, bundle)
    assert f"signed by {signer.verifier()}; check it with:" in said
    # offline: the service is gone
    pinned = lockd("audit", "verify", bundle, "--log-key", vkey_file)
    assert pinned.returncode == 0, pinned.stdout + pinned.stderr
    assert pinned.stdout.splitlines()[-1] == (
        f"its audit entries are in the log signed by the pinned key {signer.verifier()}"
    )
    other = LogSigner.generate("lockd.test/audit").verifier()
    refused = lockd("audit", "verify", bundle, "--log-key", str(other))
    assert refused.returncode == 1
    assert refused.stdout.splitlines()[-1] == "the bundle does NOT hold: log failed"


def test_without_a_log_key_sqlite_bundles_its_own_keys_proof_and_postgresql_none(
    database_url: str,
    keypair: tuple[Path, Path],
    local_envelope: Path,
    tmp_path: Path,
    lockd: Lockd,
) -> None:
    """Without LOCKD_LOG_KEY a SQLite service signs with a key it keeps beside its database:
    the bundle carries the proof, checked against that key and said to be not pinned.
    PostgreSQL signs none (its replicas must share a key): export says there is no log proof,
    the bundle verifies as one exported before the log, and a pinned key finds nothing."""
    env = {"LOCKD_DATABASE_URL": database_url, "LOCKD_TRUSTED_KEYS": str(keypair[1])}
    bundle = tmp_path / "audit.tar.gz"
    said = _exported(env, local_envelope, keypair, lockd, bundle)
    checked = lockd("audit", "verify", bundle)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    pinned = lockd("audit", "verify", bundle, "--log-key", str(LogSigner.generate("x").verifier()))
    assert pinned.returncode == 1
    if database_url.startswith("sqlite"):
        assert "; the log's proof in its checkpoint of " in said
        assert checked.stdout.splitlines()[-1].endswith(
            ", the key the bundle carries, NOT pinned: compare it with the log's published key, "
            "or give --log-key"
        )
    else:
        assert "; no transparency-log proof (the service has no log key); check it with: " in said
        assert checked.stdout.splitlines()[-1] == (
            "no transparency-log proof in it (exported before lockd's log was signed, or from a "
            "service without a log key): its entries are checked against their chain only"
        )


def test_a_keyless_manifest_is_exported_with_its_certificate_and_checked_for_its_identity(
    database_url: str, tmp_path: Path, lockd: Lockd
) -> None:
    """#18 F4: export fetched a key for each stored signer, and a keyless one has none (404).
    A real keyless lockd manifest (tests/sigstore_instance.py: a private Sigstore instance
    the service trusts through LOCKD_TRUSTED_ROOT) is exported with its Sigstore bundle and no
    key, and checked offline under the identity the verifier gives."""
    instance = SigstoreInstance()
    root = tmp_path / "trusted_root.json"
    root.write_bytes(instance.trusted_root())
    signed = tmp_path / "m.sigstore.json"
    signed.write_bytes(instance.sign(make_statement(manifest_a()), "alice@example.org"))
    env = {
        "LOCKD_DATABASE_URL": database_url,
        "LOCKD_TRUSTED_IDENTITIES": json.dumps(
            [{"issuer": ISSUER, "identity": "alice@example.org"}]
        ),
        "LOCKD_TRUSTED_ROOT": str(root),
    }
    bundle = tmp_path / "audit.tar.gz"
    with (tmp_path / "server.log").open("wb") as log:
        server = Server(env, log=log).start()
        try:
            token = lockd("token", "create", "ci", "--role", "recorder", env=env).stdout.strip()
            client = {"LOCKD_TOKEN": token}
            pushed = lockd("push", signed, "--server", server.url, env=client)
            assert pushed.returncode == 0, pushed.stdout + pushed.stderr
            digest = pushed.stdout.split("stored as ")[1].split()[0]
            made = lockd(
                "audit", "export", digest, "-o", bundle, "--server", server.url, env=client
            )
        finally:
            server.stop()
    assert made.returncode == 0, made.stdout + made.stderr
    said = " ".join(made.stdout.split())
    assert ", a keyless signature" in said
    assert said.endswith("--certificate-identity WHO --certificate-oidc-issuer ISSUER")
    flags = ["--certificate-oidc-issuer", ISSUER, "--trusted-root", root]
    checked = lockd(
        "audit", "verify", bundle, "--certificate-identity", "alice@example.org", *flags
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert (
        f"the bundle holds: signed by alice@example.org (issuer {ISSUER}); the identity given"
        in (checked.stdout.splitlines())
    )
    unchecked = lockd("audit", "verify", bundle)
    assert unchecked.returncode == 1
    assert unchecked.stdout.splitlines()[-1] == "the bundle does NOT hold: signature failed"
    other = lockd("audit", "verify", bundle, "--certificate-identity", "bob@example.org", *flags)
    assert other.returncode == 1
