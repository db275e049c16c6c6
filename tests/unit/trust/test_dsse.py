"""lockd.trust.dsse: PAE, envelopes, sign and verify, with an independent verifier over cryptography."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from lockd.errors import ManifestError, SignatureError
from lockd.trust import dsse, keys

PAYLOAD_TYPE = "application/vnd.in-toto+json"
PAYLOAD = b'{"_type": "https://in-toto.io/Statement/v1", "subject": []}'


@pytest.fixture(scope="module")
def alice() -> ec.EllipticCurvePrivateKey:
    return keys.generate_private_key()


@pytest.fixture(scope="module")
def bob() -> ec.EllipticCurvePrivateKey:
    return keys.generate_private_key()


@pytest.fixture(scope="module")
def envelope(alice: ec.EllipticCurvePrivateKey) -> dsse.Envelope:
    return dsse.sign(PAYLOAD, PAYLOAD_TYPE, alice)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def urlsafe_nopad(text: str) -> str:
    return base64.urlsafe_b64encode(base64.b64decode(text)).decode("ascii").rstrip("=")


# --- PAE ----------------------------------------------------------------------------------------


def test_pae_spec_vector() -> None:
    assert (
        dsse.pae("http://example.com/HelloWorld", b"hello world")
        == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_pae_counts_utf8_bytes() -> None:
    assert dsse.pae("tÿpe", "é".encode()) == "DSSEv1 5 tÿpe 2 é".encode()


def test_pae_empty() -> None:
    assert dsse.pae("", b"") == b"DSSEv1 0  0 "


# --- sign and verify ----------------------------------------------------------------------------


def test_round_trip(envelope: dsse.Envelope, alice: ec.EllipticCurvePrivateKey) -> None:
    assert envelope.payload_bytes() == PAYLOAD
    assert envelope.payloadType == PAYLOAD_TYPE
    assert envelope.signatures[0].keyid == keys.keyid(alice.public_key())
    assert dsse.verify(envelope, [alice.public_key()]) == [keys.keyid(alice.public_key())]


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(ec.generate_private_key(ec.SECP384R1()), id="p384"),
        pytest.param(ed25519.Ed25519PrivateKey.generate(), id="ed25519"),
    ],
)
def test_round_trip_other_key_types(key: keys.PrivateKey) -> None:
    env = dsse.sign(PAYLOAD, PAYLOAD_TYPE, key)
    assert dsse.verify(env, [key.public_key()]) == [keys.keyid(key.public_key())]


def test_independent_verification(
    envelope: dsse.Envelope, alice: ec.EllipticCurvePrivateKey
) -> None:
    """Check lockd's envelope with nothing of lockd: own base64, own PAE, cryptography's ECDSA."""
    doc = json.loads(envelope.to_json())
    payload = base64.b64decode(doc["payload"])
    ptype = doc["payloadType"].encode("utf-8")
    message = b"DSSEv1 " + str(len(ptype)).encode() + b" " + ptype
    message += b" " + str(len(payload)).encode() + b" " + payload
    der_sig = base64.b64decode(doc["signatures"][0]["sig"])
    alice.public_key().verify(der_sig, message, ec.ECDSA(hashes.SHA256()))  # raises if invalid


def test_tampered_payload_fails(envelope: dsse.Envelope, alice: ec.EllipticCurvePrivateKey) -> None:
    tampered = envelope.model_copy(update={"payload": b64(PAYLOAD.replace(b"[]", b"[1]"))})
    with pytest.raises(SignatureError, match="does not verify against any trusted key"):
        dsse.verify(tampered, [alice.public_key()])


def test_tampered_payload_type_fails(
    envelope: dsse.Envelope, alice: ec.EllipticCurvePrivateKey
) -> None:
    tampered = envelope.model_copy(update={"payloadType": "application/json"})
    with pytest.raises(SignatureError, match="does not verify"):
        dsse.verify(tampered, [alice.public_key()])


def test_wrong_key_fails(
    envelope: dsse.Envelope, bob: ec.EllipticCurvePrivateKey, alice: ec.EllipticCurvePrivateKey
) -> None:
    with pytest.raises(SignatureError) as info:
        dsse.verify(envelope, [bob.public_key()], source="m.dsse.json")
    message = str(info.value)
    assert message.startswith("m.dsse.json: envelope signature does not verify")
    assert f"tried keyids {keys.keyid(bob.public_key())}" in message
    assert keys.keyid(alice.public_key()) not in message


def test_no_trusted_keys_is_an_error(envelope: dsse.Envelope) -> None:
    with pytest.raises(SignatureError, match="no trusted keys"):
        dsse.verify(envelope, [])


def test_threshold_below_one(envelope: dsse.Envelope, alice: ec.EllipticCurvePrivateKey) -> None:
    with pytest.raises(ValueError, match="threshold"):
        dsse.verify(envelope, [alice.public_key()], threshold=0)


def test_urlsafe_unpadded_base64_accepted(alice: ec.EllipticCurvePrivateKey) -> None:
    payload = b"\xfb\xff\xfe\xfa" * 5 + b"xy"  # encodes to '+', '/' and needs padding
    env = dsse.sign(payload, PAYLOAD_TYPE, alice)
    assert "+" in env.payload and "/" in env.payload and env.payload.endswith("=")
    raw = json.loads(env.to_json())
    raw["payload"] = urlsafe_nopad(raw["payload"])
    raw["signatures"][0]["sig"] = urlsafe_nopad(raw["signatures"][0]["sig"])
    assert "-" in raw["payload"] and "=" not in raw["payload"]
    parsed = dsse.parse_envelope(json.dumps(raw).encode(), "u.json")
    assert parsed.payload_bytes() == payload
    assert dsse.verify(parsed, [alice.public_key()]) == [keys.keyid(alice.public_key())]


def _with_signatures(env: dsse.Envelope, *sigs: dsse.Signature) -> dsse.Envelope:
    return env.model_copy(update={"signatures": list(sigs)})


def test_threshold_counts_distinct_keys(
    alice: ec.EllipticCurvePrivateKey, bob: ec.EllipticCurvePrivateKey
) -> None:
    by_alice = dsse.sign(PAYLOAD, PAYLOAD_TYPE, alice)
    by_bob = dsse.sign(PAYLOAD, PAYLOAD_TYPE, bob)
    again = dsse.sign(PAYLOAD, PAYLOAD_TYPE, alice)  # ECDSA: a second, different signature
    assert again.signatures[0].sig != by_alice.signatures[0].sig
    trusted = [alice.public_key(), bob.public_key()]

    twice_alice = _with_signatures(by_alice, by_alice.signatures[0], again.signatures[0])
    assert dsse.verify(twice_alice, trusted) == [keys.keyid(alice.public_key())]
    with pytest.raises(SignatureError, match="fewer than the threshold of 2"):
        dsse.verify(twice_alice, trusted, threshold=2)

    both = _with_signatures(by_alice, by_alice.signatures[0], by_bob.signatures[0])
    assert dsse.verify(both, trusted, threshold=2) == [
        keys.keyid(alice.public_key()),
        keys.keyid(bob.public_key()),
    ]
    # the same trusted key given twice is still one key
    with pytest.raises(SignatureError, match="threshold"):
        dsse.verify(twice_alice, [alice.public_key(), alice.public_key()], threshold=2)


@pytest.mark.parametrize("hint", ["", "0" * 64, "bob"])
def test_keyid_is_only_a_hint(
    envelope: dsse.Envelope,
    alice: ec.EllipticCurvePrivateKey,
    bob: ec.EllipticCurvePrivateKey,
    hint: str,
) -> None:
    if hint == "bob":
        hint = keys.keyid(bob.public_key())
    sig = dsse.Signature(keyid=hint, sig=envelope.signatures[0].sig)
    env = _with_signatures(envelope, sig)
    trusted = [bob.public_key(), alice.public_key()]
    assert dsse.verify(env, trusted) == [keys.keyid(alice.public_key())]


def test_garbage_signature_among_good_ones(
    envelope: dsse.Envelope, alice: ec.EllipticCurvePrivateKey
) -> None:
    junk = dsse.Signature(sig=b64(b"\x00" * 70))
    env = _with_signatures(envelope, junk, envelope.signatures[0])
    assert dsse.verify(env, [alice.public_key()]) == [keys.keyid(alice.public_key())]


# --- JSON ---------------------------------------------------------------------------------------


def test_to_json_is_deterministic(envelope: dsse.Envelope) -> None:
    text = envelope.to_json()
    assert text.endswith(b"}\n")
    doc = json.loads(text)
    assert list(doc) == ["payload", "payloadType", "signatures"]
    assert list(doc["signatures"][0]) == ["keyid", "sig"]
    assert text == json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"
    assert dsse.parse_envelope(text, "e.json") == envelope


def test_parse_accepts_missing_or_null_keyid_and_extra_fields(
    envelope: dsse.Envelope, alice: ec.EllipticCurvePrivateKey
) -> None:
    sig = envelope.signatures[0].sig
    for signature in ({"sig": sig}, {"keyid": None, "sig": sig}):
        raw = {"payload": envelope.payload, "payloadType": PAYLOAD_TYPE, "signatures": [signature]}
        raw["extra"] = "ignored"
        env = dsse.parse_envelope(json.dumps(raw).encode(), "cosign.json")
        assert env.signatures[0].keyid == ""
        assert dsse.verify(env, [alice.public_key()]) == [keys.keyid(alice.public_key())]


def _doc(change: Callable[[dict[str, object]], object]) -> bytes:
    doc: dict[str, object] = {
        "payload": b64(b"{}"),
        "payloadType": PAYLOAD_TYPE,
        "signatures": [{"keyid": "", "sig": b64(b"sig")}],
    }
    change(doc)
    return json.dumps(doc).encode()


ENVELOPE_CASES: list[tuple[str, bytes, str]] = [
    ("not-json", b"hello", "invalid JSON"),
    ("empty", b"", "truncated JSON"),
    ("truncated", _doc(lambda d: None)[:40], "truncated JSON"),
    ("not-utf8", b"\xff\xfe\xfa", "not a DSSE envelope"),
    ("not-object", b"[1, 2]", "expected a JSON object, got list"),
    ("missing-payloadType", _doc(lambda d: d.pop("payloadType")), "payloadType: Field required"),
    ("missing-payload", _doc(lambda d: d.pop("payload")), "payload: Field required"),
    ("missing-signatures", _doc(lambda d: d.pop("signatures")), "signatures: Field required"),
    ("empty-signatures", _doc(lambda d: d.update(signatures=[])), "no signatures"),
    ("payload-bad-base64", _doc(lambda d: d.update(payload="e30=!")), "payload: "),
    ("payload-bad-length", _doc(lambda d: d.update(payload="e30=e")), "not valid base64"),
    (
        "sig-bad-base64",
        _doc(lambda d: d.update(signatures=[{"sig": "*not base64*"}])),
        "signatures.0.sig",
    ),
    ("sig-empty", _doc(lambda d: d.update(signatures=[{"sig": ""}])), "empty signature"),
    ("sig-missing", _doc(lambda d: d.update(signatures=[{"keyid": "k"}])), "signatures.0.sig"),
    ("payloadType-not-str", _doc(lambda d: d.update(payloadType=1)), "payloadType"),
]


@pytest.mark.parametrize(
    ("data", "fragment"),
    [pytest.param(data, frag, id=case_id) for case_id, data, frag in ENVELOPE_CASES],
)
def test_bad_envelope(data: bytes, fragment: str) -> None:
    with pytest.raises(ManifestError) as info:
        dsse.parse_envelope(data, "bad.dsse.json")
    assert str(info.value).startswith("bad.dsse.json: not a DSSE envelope: ")
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("aGk=", b"hi"),
        ("aGk", b"hi"),
        ("-_8", b"\xfb\xff"),
        ("+/8=", b"\xfb\xff"),
        ("", b""),
    ],
)
def test_b64decode_variants(text: str, expected: bytes) -> None:
    assert dsse.b64decode(text) == expected


@pytest.mark.parametrize("text", ["a", "aGk=a", "a=Gk", "aé==", "aG k"])
def test_b64decode_rejects(text: str) -> None:
    with pytest.raises(ValueError):  # binascii.Error and friends
        dsse.b64decode(text)
