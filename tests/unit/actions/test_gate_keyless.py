"""lockd.gate.judge and lockd.attestations.choose with keyless signers: the staging bundle of
tests/assets/sigstore (a PyPI attestation, not a lockd manifest) is judged by its signature
first, then refused as not a lockd manifest; under a wrong identity, as not trusted."""

from __future__ import annotations

from pathlib import Path

from lockd.attestations import Attestation, choose
from lockd.gate import judge
from lockd.judgement.policy import default_policy
from lockd.trust.keyless import Identity
from lockd.trust.signed import Trust, parse_signed

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "sigstore"
SIGNED = parse_signed((ASSETS / "pypi-attestation-staging.sigstore.json").read_bytes(), "b")
ROOT = (ASSETS / "staging-trusted_root.json").read_bytes()
ISSUER = "https://github.com/login/oauth"
IMAGE = (
    "reg.example:5000/app@sha256:"
    + "c4e92e9ecc828bef2aa7dba1de8ac983511f7532a0df11c770d39099a25cf201"
)
NOT_LOCKD = (
    "b: predicateType is 'https://docs.pypi.org/attestations/publish/v1', not lockd's "
    "(https://lockd.dev/manifest/v3, https://lockd.dev/manifest/v2, https://lockd.dev/manifest/v1)"
)


def _trust(who: str) -> Trust:
    return Trust(identities=(Identity(ISSUER, identity=who),), trusted_root=ROOT)


def test_the_gate_checks_the_signer_then_refuses_a_statement_that_is_not_lockds() -> None:
    trusted = judge(
        IMAGE, [("b", SIGNED)], _trust("william@yossarian.net"), default_policy(), "default", "here"
    )
    assert (trusted.allowed, trusted.reasons) == (False, [f"b: {NOT_LOCKD}"])
    untrusted = judge(
        IMAGE, [("b", SIGNED)], _trust("ci@example.org"), default_policy(), "default", "here"
    )
    assert untrusted.reasons == [
        "b: not signed by a trusted key (b: keyless signature refused: the certificate names "
        f"william@yossarian.net (issuer {ISSUER}), not a trusted identity (ci@example.org "
        f"(issuer {ISSUER})))"
    ]


def test_verify_registry_chooses_no_keyless_statement_that_is_not_lockds() -> None:
    found = [Attestation("b", IMAGE.rpartition("@")[2], SIGNED)]
    assert choose(found, _trust("william@yossarian.net")) == (None, [NOT_LOCKD])
