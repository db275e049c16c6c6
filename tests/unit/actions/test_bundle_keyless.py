"""Audit bundles of keyless manifests (#18 F4): the bundle carries the stored Sigstore bundle
(certificate and transparency-log entry), no key; `audit verify` checks it through
lockd.trust.signed.verify_signed against the trusted root and the identity its verifier gives,
and fails without one. A bundle whose certificate names one signer while a bundled key signed
the envelope no longer passes as 'signed by keyid … (bundled key)'. Real keyless bundles come
from a private Sigstore instance (tests/sigstore_instance.py) that the sigstore package
verifies as it verifies the public one; the staging asset in tests/assets/sigstore checks the
same path with a bundle of the public staging instance."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from bundles import REPORTS, chain, chained, run_lockd, sample_files
from cryptography.hazmat.primitives.asymmetric import ec
from reference_manifests import manifest_a
from sigstore_instance import ISSUER, SigstoreInstance

from lockd.bundle import check_files, index_of, pack
from lockd.bundle.check import KEYLESS_FLAGS
from lockd.trust import keys
from lockd.trust.keyless import Identity
from lockd.trust.signed import Trust, parse_signed, signed_from
from lockd.trust.statement import make_statement

ALICE = "alice@example.org"
SIGNER = f"{ALICE} (issuer {ISSUER})"
INSTANCE = SigstoreInstance()
ROOT = INSTANCE.trusted_root()
PAYLOAD = make_statement(manifest_a())


def _stored(bundle: bytes) -> bytes:
    """What the service stores for a pushed bundle, byte for byte."""
    return signed_from(json.loads(bundle), "pushed").to_json()


def _files(bundle: bytes, **overrides: Any) -> dict[str, bytes]:
    stored = _stored(bundle)
    return sample_files(
        **{"envelope": stored, "entries": chain(stored), "public_keys": [], **overrides}
    )


KEYLESS = _files(INSTANCE.sign(PAYLOAD, ALICE))


def _trust(*identities: Identity, root: bytes | None = ROOT) -> Trust:
    return Trust(identities=identities, trusted_root=root)


def _signature(files: dict[str, bytes], trust: Trust | None) -> tuple[bool, str]:
    verdict = check_files(files, keyless=trust)
    [check] = [c for c in verdict.checks if c.id == "signature"]
    assert [c.id for c in verdict.failed] == ([] if check.ok else ["signature"]), verdict.checks
    return check.ok, check.message


def test_a_keyless_audit_bundle_verifies_for_the_identity_given() -> None:
    assert not any(name.startswith("keys/") for name in KEYLESS)
    assert json.loads(KEYLESS["bundle.json"])["keyids"] == []
    assert (
        "--certificate-identity WHO --certificate-oidc-issuer ISSUER"
        in KEYLESS["README.md"].decode()
    )
    verdict = check_files(KEYLESS, keyless=_trust(Identity(ISSUER, identity=ALICE)))
    assert verdict.ok, verdict.checks
    assert verdict.keyids == [SIGNER]
    assert verdict.checks[1].message == (
        f"envelope.dsse.json is signed by {SIGNER} (keyless: its certificate checked against "
        "the trusted root and the identity given)"
    )


def test_without_an_identity_a_keyless_signature_is_not_checked_and_fails() -> None:
    for trust in (None, _trust()):  # nothing given, or only a trusted root
        assert _signature(KEYLESS, trust) == (
            False,
            "envelope.dsse.json is a keyless Sigstore bundle: its signature was not checked "
            f"against any identity; give {KEYLESS_FLAGS}",
        )


@pytest.mark.parametrize(
    ("identity", "trusted"),
    [
        (Identity(ISSUER, identity="bob@example.org"), f"bob@example.org (issuer {ISSUER})"),
        (
            Identity("https://other.example", identity=ALICE),
            f"{ALICE} (issuer https://other.example)",
        ),
    ],
    ids=["another identity", "another issuer"],
)
def test_another_identity_or_issuer_fails(identity: Identity, trusted: str) -> None:
    assert _signature(KEYLESS, _trust(identity)) == (
        False,
        f"envelope.dsse.json: keyless signature refused: the certificate names {SIGNER}, not a "
        f"trusted identity ({trusted})",
    )


def test_another_trusted_root_fails() -> None:
    ok, message = _signature(KEYLESS, _trust(Identity(ISSUER, identity=ALICE), root=None))
    assert not ok
    assert message.startswith("envelope.dsse.json: keyless signature refused: ")


def test_a_certificate_for_alice_over_an_envelope_signed_by_another_key_fails() -> None:
    """The attack of #18 F4: the certificate names alice, the envelope is mallory's, and
    mallory's key bundled. It passed as 'signed by keyid <mallory> (bundled key)'."""
    mallory = ec.generate_private_key(ec.SECP256R1())
    forged = INSTANCE.sign(PAYLOAD, ALICE, envelope_key=mallory)
    alice = _trust(Identity(ISSUER, identity=ALICE))
    with_key = _files(forged, public_keys=[mallory.public_key()])
    keyid = keys.keyid(mallory.public_key())
    assert _signature(with_key, alice) == (
        False,
        f"keys/{keyid}.pub: keys bundled beside a keyless signature (lockd bundles none: the "
        "certificate names the signer)",
    )
    assert _signature(_files(forged), alice) == (
        False,
        "envelope.dsse.json: keyless signature refused: DSSE: invalid signature",
    )


def test_a_key_based_sigstore_bundle_is_still_checked_against_the_bundled_key() -> None:
    from bundles import ENVELOPE, KEY

    from lockd.trust import dsse
    from lockd.trust.sigstore_bundle import key_bundle

    bundle = key_bundle(dsse.parse_envelope(ENVELOPE, "e"), keys.keyid(KEY))
    files = _files(bundle, public_keys=[KEY.public_key()])
    assert _signature(files, None) == (
        True,
        f"envelope.dsse.json is signed by keyid {keys.keyid(KEY)} (bundled key)",
    )


def test_the_staging_instances_keyless_bundle_is_checked_then_found_not_lockds(
    asset: Any,
) -> None:
    """A real bundle of Sigstore's public staging instance (a PyPI attestation, not a lockd
    manifest), laid out as an audit bundle by hand (lockd cannot build one of it): its
    signature checks out under its identity, and the SBOM check then finds it is not lockd's."""
    data = Path(asset("sigstore/pypi-attestation-staging.sigstore.json")).read_bytes()
    root = Path(asset("sigstore/staging-trusted_root.json")).read_bytes()
    payload = parse_signed(data, "s").payload_bytes()
    digest = "sha256:" + hashlib.sha256(payload).hexdigest()
    [entry] = chained(
        [("manifest.create", digest, "sha256:" + hashlib.sha256(data).hexdigest())], 5, "0" * 64
    )
    files = {
        "envelope.dsse.json": data,
        "audit.json": (json.dumps([entry]) + "\n").encode(),
        "bundle.json": json.dumps(
            {
                "format": "lockd-audit-bundle/1",
                "digest": digest,
                "manifest_audit_seq": 5,
                "reports": [],
            }
        ).encode(),
    }
    files["index.json"] = index_of(files)
    who = "william@yossarian.net (issuer https://github.com/login/oauth)"
    trust = Trust(
        identities=(Identity("https://github.com/login/oauth", identity="william@yossarian.net"),),
        trusted_root=root,
    )
    verdict = check_files(files, keyless=trust)
    assert [(c.id, c.ok) for c in verdict.checks] == [
        ("files", True),
        ("signature", True),
        ("sbom", False),
        ("audit", True),
    ]
    assert verdict.checks[1].message == (
        f"envelope.dsse.json is signed by {who} (keyless: its certificate checked against the "
        "trusted root and the identity given)"
    )
    assert verdict.checks[2].message == (
        "envelope.dsse.json: predicateType is 'https://docs.pypi.org/attestations/publish/v1', "
        "not lockd's (https://lockd.dev/manifest/v3, https://lockd.dev/manifest/v2, "
        "https://lockd.dev/manifest/v1)"
    )


def test_audit_verify_checks_a_keyless_bundle_under_the_flags(tmp_path: Path) -> None:
    path = tmp_path / "b.tar.gz"
    path.write_bytes(pack(KEYLESS))
    root = tmp_path / "trusted_root.json"
    root.write_bytes(ROOT)
    flags = ["--certificate-oidc-issuer", ISSUER, "--trusted-root", root]
    result = run_lockd("audit", "verify", path, "--certificate-identity", ALICE, *flags)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        result.stdout.splitlines()[-2]
        == f"the bundle holds: signed by {SIGNER}; the identity given"
    )
    regexp = run_lockd("audit", "verify", path, "--certificate-identity-regexp", "alice@.*", *flags)
    assert regexp.returncode == 0, regexp.stdout + regexp.stderr
    bare = run_lockd("audit", "verify", path, "--json")
    assert (bare.returncode, bare.stderr) == (1, "")
    body = json.loads(bare.stdout)
    assert [(c["id"], c["message"]) for c in body["checks"] if not c["ok"]] == [
        (
            "signature",
            "envelope.dsse.json is a keyless Sigstore bundle: its signature was not checked "
            f"against any identity; give {KEYLESS_FLAGS}",
        )
    ]
    other = run_lockd("audit", "verify", path, "--certificate-identity", "bob@example.org", *flags)
    assert other.returncode == 1
    assert other.stdout.splitlines()[-1] == "the bundle does NOT hold: signature failed"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--certificate-identity", ALICE],
            "keyless verification: give the OIDC issuer (--certificate-oidc-issuer)",
        ),
        (
            ["--certificate-oidc-issuer", ISSUER],
            "keyless verification: give one of --certificate-identity and "
            "--certificate-identity-regexp",
        ),
        (
            ["--certificate-identity-regexp", "(", "--certificate-oidc-issuer", ISSUER],
            "keyless verification: '(' is not a regular expression (missing ), unterminated "
            "subpattern at position 0)",
        ),
        (
            ["--trusted-root", "/nonexistent/root.json"],
            "/nonexistent/root.json: no such trusted root file; check the path",
        ),
        (
            ["--server", "http://127.0.0.1:9", "--certificate-identity", ALICE],
            "--server checks a service's log, not a bundle: check the bundle alone "
            "(BUNDLE [--log-key KEY]), and the service's log in another run",
        ),
    ],
)
def test_bad_keyless_flags_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    path = tmp_path / "b.tar.gz"
    path.write_bytes(pack(KEYLESS))
    result = run_lockd("audit", "verify", path, *args)
    assert (result.returncode, result.stdout) == (2, "")
    assert " ".join(result.stderr.split()) == f"lockd: error: {message}"


def test_keyless_flags_without_a_bundle_exit_2() -> None:
    result = run_lockd(
        "audit", "verify", "--server", "http://127.0.0.1:9", "--certificate-identity", ALICE
    )
    assert result.returncode == 2
    assert " ".join(result.stderr.split()) == (
        "lockd: error: --certificate-identity, --certificate-oidc-issuer and --trusted-root "
        "check a bundle's keyless signature: give them with BUNDLE"
    )


def test_reports_of_a_keyless_manifest_are_bundled_as_an_envelopes_are() -> None:
    meta = json.loads(KEYLESS["bundle.json"])
    assert [r["id"] for r in meta["reports"]] == [r.id for r in REPORTS]
    assert (
        base64.b64decode(json.loads(KEYLESS["envelope.dsse.json"])["dsseEnvelope"]["payload"])
        == PAYLOAD
    )
