"""The three ways to sign that docs/signing.md shows, run as it shows them: a cosign-format key
(a DSSE envelope), the same key in a Sigstore bundle, and a keyless bundle checked under an
identity policy (a real public staging bundle: not a lockd manifest, so refused as such once its
signature checked out)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

Lockd = Callable[..., subprocess.CompletedProcess[str]]
ASSETS = Path(__file__).resolve().parents[2] / "assets" / "sigstore"
KEYLESS = ASSETS / "pypi-attestation-staging.sigstore.json"
ROOT = ASSETS / "staging-trusted_root.json"
WHO = "william@yossarian.net"
ISSUER = "https://github.com/login/oauth"


def test_a_key_and_a_bundle(keypair: tuple[Path, Path], tmp_path: Path, lockd: Lockd) -> None:
    key, pub = keypair
    envelope, bundle = tmp_path / "env.dsse.json", tmp_path / "env.sigstore.json"
    assert lockd("record", "local", "--key", key, "-o", envelope).returncode == 0
    made = lockd("record", "local", "--key", key, "--bundle", "-o", bundle)
    assert made.returncode == 0, made.stderr
    assert json.loads(bundle.read_text())["mediaType"] == (
        "application/vnd.dev.sigstore.bundle.v0.3+json"
    )
    for manifest in (envelope, bundle):
        verified = lockd("verify", "local", "--manifest", manifest, "--key", pub, "--json")
        assert verified.returncode == 0, verified.stdout + verified.stderr
    shown = lockd("show", bundle)
    assert shown.returncode == 0, shown.stderr


def test_keyless_verifies_the_signer_then_refuses_what_is_not_a_lockd_manifest(
    lockd: Lockd,
) -> None:
    flags = ["--certificate-oidc-issuer", ISSUER, "--trusted-root", ROOT]
    result = lockd("verify", "local", "--manifest", KEYLESS, "--certificate-identity", WHO, *flags)
    assert result.returncode == 2
    assert " ".join(result.stderr.split()).endswith(
        f"{KEYLESS}: predicateType is 'https://docs.pypi.org/attestations/publish/v1', not "
        "lockd's (https://lockd.dev/manifest/v3, https://lockd.dev/manifest/v2, "
        "https://lockd.dev/manifest/v1)"
    )
    wrong = lockd(
        "verify",
        "local",
        "--manifest",
        KEYLESS,
        "--certificate-identity",
        "ci@example.org",
        "--json",
        *flags,
    )
    assert wrong.returncode == 1
    [signature] = [c for c in json.loads(wrong.stdout)["checks"] if c["id"] == "signature"]
    assert signature["message"] == (
        f"keyless signature refused: the certificate names {WHO} (issuer {ISSUER}), not a "
        f"trusted identity (ci@example.org (issuer {ISSUER}))"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            [],
            "give --key PUB, or a keyless signer's --certificate-identity (or "
            "--certificate-identity-regexp) and --certificate-oidc-issuer",
        ),
        (
            ["--certificate-identity", WHO],
            "keyless verification: give the OIDC issuer (--certificate-oidc-issuer)",
        ),
    ],
)
def test_verify_without_a_signer_is_a_usage_error(
    args: list[str], message: str, lockd: Lockd
) -> None:
    result = lockd("verify", "local", "--manifest", KEYLESS, *args)
    assert result.returncode == 2
    assert message in " ".join(result.stderr.split())


def test_gate_without_a_signer_is_a_usage_error(lockd: Lockd) -> None:
    result = lockd("gate", "reg.example:5000/app@sha256:" + "0" * 64, "--registry")
    assert result.returncode == 2
    assert (
        "give --key PUB (or a keyless signer's --certificate-identity and "
        "--certificate-oidc-issuer): the gate checks signatures itself"
    ) in " ".join(result.stderr.split())
