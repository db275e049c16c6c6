"""lockd.trust.keyless through lockd.trust.signed: a real public keyless bundle (a PyPI
attestation signed on Sigstore's staging instance, tests/assets/sigstore/README.md) verified
offline against the trusted root pinned beside it, under identity policies; refused as not a
lockd manifest once its signature checked out."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from lockd.errors import InputError, ManifestError, SignatureError
from lockd.trust.keyless import Identity, identities_from_env, identity_from_flags
from lockd.trust.signed import Trust, parse_signed, verify_signed
from lockd.trust.statement import parse_statement

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "sigstore"
BUNDLE = ASSETS / "pypi-attestation-staging.sigstore.json"
ROOT = (ASSETS / "staging-trusted_root.json").read_bytes()
WHO = "william@yossarian.net"
ISSUER = "https://github.com/login/oauth"
SIGNER = f"{WHO} (issuer {ISSUER})"


def _trust(*identities: Identity) -> Trust:
    return Trust(identities=identities, trusted_root=ROOT)


def _check(trust: Trust, data: bytes | None = None) -> list[str]:
    signed = parse_signed(data or BUNDLE.read_bytes(), "b.sigstore.json")
    return verify_signed(signed, trust, source="b.sigstore.json")


def test_the_right_identity_verifies() -> None:
    assert _check(_trust(Identity(ISSUER, identity=WHO))) == [SIGNER]


def test_a_regexp_must_match_the_whole_identity() -> None:
    assert _check(_trust(Identity(ISSUER, identity_regexp=r"william@.*\.net"))) == [SIGNER]
    with pytest.raises(SignatureError, match="not a trusted identity"):
        _check(_trust(Identity(ISSUER, identity_regexp="william")))


def test_any_of_several_identities_verifies() -> None:
    other = Identity(ISSUER, identity="someone@example.org")
    assert _check(_trust(other, Identity(ISSUER, identity=WHO))) == [SIGNER]


@pytest.mark.parametrize(
    ("identity", "trusted"),
    [
        (
            Identity(ISSUER, identity="someone@example.org"),
            f"someone@example.org (issuer {ISSUER})",
        ),
        (
            Identity("https://token.actions.githubusercontent.com", identity=WHO),
            f"{WHO} (issuer https://token.actions.githubusercontent.com)",
        ),
    ],
    ids=["wrong identity", "wrong issuer"],
)
def test_a_wrong_identity_or_issuer_is_refused(identity: Identity, trusted: str) -> None:
    with pytest.raises(SignatureError) as refused:
        _check(_trust(identity))
    assert str(refused.value) == (
        f"b.sigstore.json: keyless signature refused: the certificate names {WHO} (issuer "
        f"{ISSUER}), not a trusted identity ({trusted})"
    )


def test_another_trusted_root_refuses_it() -> None:
    production = Trust(identities=(Identity(ISSUER, identity=WHO),))  # the public-good root
    with pytest.raises(SignatureError, match=r"^b.sigstore.json: keyless signature refused: "):
        _check(production)


def test_a_tampered_payload_is_refused() -> None:
    doc = json.loads(BUNDLE.read_bytes())
    payload = base64.b64decode(doc["dsseEnvelope"]["payload"]).replace(b"rfc8785", b"rfc8786")
    doc["dsseEnvelope"]["payload"] = base64.b64encode(payload).decode()
    with pytest.raises(SignatureError, match=r"^b.sigstore.json: keyless signature refused: "):
        _check(_trust(Identity(ISSUER, identity=WHO)), json.dumps(doc).encode())


def test_it_is_refused_as_not_a_lockd_manifest_after_its_signature_checked_out() -> None:
    signed = parse_signed(BUNDLE.read_bytes(), "b.sigstore.json")
    assert verify_signed(signed, _trust(Identity(ISSUER, identity=WHO))) == [SIGNER]
    with pytest.raises(ManifestError) as refused:
        parse_statement(signed.payload_bytes(), "b.sigstore.json")
    assert str(refused.value).startswith(
        "b.sigstore.json: predicateType is 'https://docs.pypi.org/attestations/publish/v1', "
        "not lockd's ("
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            (WHO, None, None),
            "keyless verification: give the OIDC issuer (--certificate-oidc-issuer)",
        ),
        (
            (None, None, ISSUER),
            "keyless verification: give one of --certificate-identity and "
            "--certificate-identity-regexp",
        ),
        (
            (WHO, ".*", ISSUER),
            "keyless verification: give one of --certificate-identity and "
            "--certificate-identity-regexp",
        ),
        (
            (None, "(", ISSUER),
            "keyless verification: '(' is not a regular expression (missing ), unterminated "
            "subpattern at position 0)",
        ),
    ],
)
def test_bad_identity_flags(flags: tuple[str | None, str | None, str | None], message: str) -> None:
    with pytest.raises(InputError) as refused:
        identity_from_flags(*flags)
    assert str(refused.value) == message


def test_no_flags_no_identity() -> None:
    assert identity_from_flags(None, None, None) is None


def test_identities_from_the_environment() -> None:
    raw = json.dumps(
        [{"issuer": ISSUER, "identity": WHO}, {"issuer": ISSUER, "identity_regexp": ".*@x.org"}]
    )
    assert identities_from_env(raw) == (
        Identity(ISSUER, identity=WHO),
        Identity(ISSUER, identity_regexp=".*@x.org"),
    )
    assert identities_from_env("  ") == ()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            "[",
            "LOCKD_TRUSTED_IDENTITIES: not JSON (Expecting value); give a JSON list of identities",
        ),
        ('{"issuer": "x"}', "LOCKD_TRUSTED_IDENTITIES: give a JSON list of at most 64 identities"),
        (
            "[1]",
            "LOCKD_TRUSTED_IDENTITIES[0]: give an object with issuer and identity or identity_regexp",
        ),
        (
            '[{"issuer": "x", "identity": "y", "subject": "z"}]',
            "LOCKD_TRUSTED_IDENTITIES[0]: unknown field(s) subject",
        ),
        (
            '[{"identity": "y"}]',
            "LOCKD_TRUSTED_IDENTITIES[0]: give the OIDC issuer (--certificate-oidc-issuer)",
        ),
        (
            '[{"issuer": "x", "identity": ""}]',
            "LOCKD_TRUSTED_IDENTITIES[0]: an identity is a non-empty string",
        ),
        (
            json.dumps([{"issuer": "x", "identity": "y"}] * 65),
            "LOCKD_TRUSTED_IDENTITIES: give a JSON list of at most 64 identities",
        ),
    ],
)
def test_bad_identities_in_the_environment(raw: str, message: str) -> None:
    with pytest.raises(InputError) as refused:
        identities_from_env(raw)
    assert str(refused.value) == message


def test_a_trusted_root_that_is_not_one_is_refused(tmp_path: Path) -> None:
    from lockd.trust.keyless import load_trusted_root

    bad = tmp_path / "root.json"
    bad.write_text('{"mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.9"}')
    with pytest.raises(InputError) as refused:
        load_trusted_root(bad)
    assert str(refused.value).startswith(f"{bad}: not a Sigstore trusted root lockd can use: ")
    assert load_trusted_root(ASSETS / "staging-trusted_root.json") == ROOT
