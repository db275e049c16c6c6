"""lockd.trust.sigstore_bundle and lockd.trust.signed: key-based Sigstore bundles written and
read strictly, told apart from envelopes in one place, verified like envelopes."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from observations import signed

from lockd.errors import ManifestError, SignatureError
from lockd.trust import keys
from lockd.trust.dsse import Envelope
from lockd.trust.signed import Trust, parse_signed, signers_text, verify_signed
from lockd.trust.sigstore_bundle import BUNDLE_MEDIA_TYPE, SigstoreBundle, key_bundle

CERT = base64.b64encode(b"\x30" * 100).decode()


@pytest.fixture(scope="module")
def alice() -> ec.EllipticCurvePrivateKey:
    return keys.generate_private_key()


@pytest.fixture(scope="module")
def envelope(alice: ec.EllipticCurvePrivateKey) -> Envelope:
    return signed(alice)


@pytest.fixture(scope="module")
def bundle(alice: ec.EllipticCurvePrivateKey, envelope: Envelope) -> bytes:
    return key_bundle(envelope, keys.keyid(alice))


def test_the_written_bundle_is_the_protobuf_specs_json(
    alice: ec.EllipticCurvePrivateKey, envelope: Envelope, bundle: bytes
) -> None:
    doc = json.loads(bundle)
    assert doc == {
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": {"publicKey": {"hint": keys.keyid(alice)}},
        "dsseEnvelope": {
            "payload": envelope.payload,
            "payloadType": "application/vnd.in-toto+json",
            "signatures": [{"sig": envelope.signatures[0].sig, "keyid": keys.keyid(alice)}],
        },
    }
    assert bundle.endswith(b"}\n")


def test_a_bundle_reads_back_and_verifies_like_its_envelope(
    alice: ec.EllipticCurvePrivateKey, envelope: Envelope, bundle: bytes
) -> None:
    read = parse_signed(bundle, "m.sigstore.json")
    assert isinstance(read, SigstoreBundle)
    assert (read.media_type, read.signer, read.hint) == (
        BUNDLE_MEDIA_TYPE,
        "key",
        keys.keyid(alice),
    )
    assert read.envelope == envelope
    assert read.to_json() == bundle
    assert verify_signed(read, [alice.public_key()]) == [keys.keyid(alice)]
    assert verify_signed(read, Trust(keys=(alice.public_key(),))) == [keys.keyid(alice)]


def test_an_envelope_stays_an_envelope(alice: ec.EllipticCurvePrivateKey) -> None:
    read = parse_signed(signed(alice).to_json(), "m.dsse.json")
    assert isinstance(read, Envelope)
    assert verify_signed(read, [alice.public_key()]) == [keys.keyid(alice)]


def test_the_hint_names_no_key_it_only_orders_the_search(
    alice: ec.EllipticCurvePrivateKey, bundle: bytes
) -> None:
    bob = keys.generate_private_key()
    doc = json.loads(bundle)
    doc["verificationMaterial"]["publicKey"]["hint"] = keys.keyid(bob)
    lying = parse_signed(json.dumps(doc).encode(), "m")
    assert verify_signed(lying, [bob.public_key(), alice.public_key()]) == [keys.keyid(alice)]
    with pytest.raises(SignatureError) as refused:
        verify_signed(lying, [bob.public_key()], source="m")
    assert str(refused.value) == (
        f"m: envelope signature does not verify against any trusted key (tried keyids "
        f"{keys.keyid(bob)}); check that --key is the public key of the signer"
    )


def test_a_tampered_bundle_is_refused(alice: ec.EllipticCurvePrivateKey, bundle: bytes) -> None:
    doc = json.loads(bundle)
    payload = base64.b64decode(doc["dsseEnvelope"]["payload"]).replace(b"app:1", b"app:2")
    doc["dsseEnvelope"]["payload"] = base64.b64encode(payload).decode()
    tampered = parse_signed(json.dumps(doc).encode(), "t.sigstore.json")
    with pytest.raises(SignatureError, match=r"^t.sigstore.json: envelope signature does not"):
        verify_signed(tampered, [alice.public_key()], source="t.sigstore.json")


def test_a_keyless_bundle_without_identities_is_refused_saying_what_to_give(
    bundle: bytes,
) -> None:
    doc = json.loads(bundle)
    doc["verificationMaterial"] = {"certificate": {"rawBytes": CERT}, "tlogEntries": [{}]}
    keyless = parse_signed(json.dumps(doc).encode(), "k.json")
    with pytest.raises(SignatureError) as refused:
        verify_signed(keyless, [keys.generate_private_key().public_key()], source="k.json")
    assert str(refused.value) == (
        "k.json: the manifest is signed keylessly (a certificate); give the signer's identity: "
        "--certificate-identity (or --certificate-identity-regexp) and --certificate-oidc-issuer"
    )


def test_signers_text_shortens_keyids_only() -> None:
    assert signers_text(["a" * 64, "ci@example.org (issuer https://x)"]) == (
        "keyid aaaaaaaaaaaaaaaa, ci@example.org (issuer https://x)"
    )


def _with(bundle: bytes, change: Any) -> bytes:
    doc = copy.deepcopy(json.loads(bundle))
    change(doc)
    return json.dumps(doc).encode()


def _material(doc: dict[str, Any], **material: Any) -> None:
    doc["verificationMaterial"] = material


PREFIX = "b.json: not a Sigstore bundle lockd reads: "
BAD: dict[str, tuple[Any, str]] = {
    "an unknown media type": (
        lambda d: d.update(mediaType="application/vnd.dev.sigstore.bundle.v0.9+json"),
        "mediaType 'application/vnd.dev.sigstore.bundle.v0.9+json' is none of "
        "application/vnd.dev.sigstore.bundle+json;version=0.1, "
        "application/vnd.dev.sigstore.bundle+json;version=0.2, "
        "application/vnd.dev.sigstore.bundle+json;version=0.3, "
        "application/vnd.dev.sigstore.bundle.v0.3+json",
    ),
    "an unknown field": (
        lambda d: d.update(extra=1),
        "extra: not a field of a Sigstore bundle",
    ),
    "an unknown material": (
        lambda d: d["verificationMaterial"].update(secret="x"),
        "verificationMaterial.secret: not a field of a Sigstore bundle",
    ),
    "an unknown envelope field": (
        lambda d: d["dsseEnvelope"].update(note="x"),
        "dsseEnvelope.note: not a field of a Sigstore bundle",
    ),
    "an unknown signature field": (
        lambda d: d["dsseEnvelope"]["signatures"][0].update(cert="x"),
        "dsseEnvelope.signatures.cert: not a field of a Sigstore bundle",
    ),
    "a signature that is not an object": (
        lambda d: d["dsseEnvelope"].update(signatures=["MEUC"]),
        "dsseEnvelope.signatures.0: Input should be a valid dictionary or instance of Signature",
    ),
    "no material": (
        _material,
        "verificationMaterial needs exactly one of publicKey, certificate, "
        "x509CertificateChain (it has none)",
    ),
    "two materials": (
        lambda d: d["verificationMaterial"].update(certificate={"rawBytes": CERT}),
        "verificationMaterial needs exactly one of publicKey, certificate, "
        "x509CertificateChain (it has publicKey, certificate)",
    ),
    "an empty hint": (
        lambda d: _material(d, publicKey={"hint": ""}),
        "verificationMaterial.publicKey.hint: String should have at least 1 character",
    ),
    "a huge hint": (
        lambda d: _material(d, publicKey={"hint": "a" * 257}),
        "verificationMaterial.publicKey.hint: String should have at most 256 characters",
    ),
    "a message signature": (
        lambda d: d.update(messageSignature={"signature": "AA=="}) or d.pop("dsseEnvelope"),
        "it signs a message (messageSignature), not a DSSE envelope; a lockd manifest is a "
        "DSSE envelope",
    ),
    "two signatures": (
        lambda d: d["dsseEnvelope"]["signatures"].append(d["dsseEnvelope"]["signatures"][0]),
        "dsseEnvelope has 2 signatures; a bundle's envelope has exactly one",
    ),
    "no signature": (
        lambda d: d["dsseEnvelope"].update(signatures=[]),
        "dsseEnvelope.signatures: List should have at least 1 item after validation, not 0",
    ),
    "a payload that is not base64": (
        lambda d: d["dsseEnvelope"].update(payload="%%%"),
        "dsseEnvelope.payload: not valid base64 (Only base64 data is allowed)",
    ),
    "a certificate that is not base64": (
        lambda d: _material(d, certificate={"rawBytes": "%%%"}, tlogEntries=[{}]),
        "verificationMaterial.certificate.rawBytes: not valid base64 (Only base64 data is allowed)",
    ),
    "a huge certificate": (
        lambda d: _material(
            d, certificate={"rawBytes": base64.b64encode(b"0" * 20000).decode()}, tlogEntries=[{}]
        ),
        "verificationMaterial.certificate.rawBytes: a certificate of 20000 bytes (at most 16384)",
    ),
    "a certificate chain in v0.3": (
        lambda d: _material(
            d, x509CertificateChain={"certificates": [{"rawBytes": CERT}]}, tlogEntries=[{}]
        ),
        "a v0.3 bundle names its signer by certificate, not x509CertificateChain",
    ),
    "a certificate and no proof of time": (
        lambda d: _material(d, certificate={"rawBytes": CERT}),
        "a certificate without a transparency log entry or a timestamp proves no signing time",
    ),
    "too many log entries": (
        lambda d: _material(d, certificate={"rawBytes": CERT}, tlogEntries=[{}] * 17),
        "verificationMaterial.tlogEntries: List should have at most 16 items after "
        "validation, not 17",
    ),
    "a mistyped envelope": (
        lambda d: d.update(dsseEnvelope="x"),
        "dsseEnvelope: Input should be a valid dictionary or instance of Envelope",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_bundles_are_refused_naming_the_field(bundle: bytes, case: str) -> None:
    change, message = BAD[case]
    with pytest.raises(ManifestError) as refused:
        parse_signed(_with(bundle, change), "b.json")
    assert str(refused.value) == PREFIX + message


def test_older_bundles_with_a_certificate_chain_are_read(bundle: bytes) -> None:
    def older(doc: dict[str, Any]) -> None:
        doc["mediaType"] = "application/vnd.dev.sigstore.bundle+json;version=0.2"
        _material(
            doc, x509CertificateChain={"certificates": [{"rawBytes": CERT}]}, tlogEntries=[{}]
        )

    read = parse_signed(_with(bundle, older), "b.json")
    assert isinstance(read, SigstoreBundle)
    assert (read.signer, read.hint) == ("certificate", None)


def test_a_json_that_is_neither_is_refused_as_an_envelope() -> None:
    with pytest.raises(ManifestError) as refused:
        parse_signed(b"[]", "x.json")
    assert str(refused.value) == "x.json: not a DSSE envelope: expected a JSON object, got list"
