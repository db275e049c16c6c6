"""A private Sigstore instance for tests: its own Fulcio CA, CT log and Rekor key, and a
``trusted_root.json`` naming them, so that tests make real keyless bundles (a short-lived
certificate for an identity, its SCT, a Rekor entry with its signed promise and inclusion proof)
that the sigstore package verifies offline, as it verifies the public instance's. Built from
the reviewer's reproduction of #18 (F4); nothing here is lockd's code.

``SigstoreInstance().sign(payload, who)`` -> the bundle's JSON; ``.trusted_root()`` -> the
root's JSON. ``envelope_key`` signs the envelope with another key than the certificate's (a
forgery: the certificate names ``who``, the signature is someone else's)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import struct

import rfc8785
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lockd.trust.dsse import pae
from lockd.trust.statement import PAYLOAD_TYPE

ISSUER = "https://issuer.example"
_ISSUER_V1 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
_ISSUER_V2 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
_SCT_LIST = x509.ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _spki(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _der(tag: int, data: bytes) -> bytes:
    n = len(data)
    size = (
        bytes([n]) if n < 128 else bytes([0x81, n]) if n < 256 else b"\x82" + n.to_bytes(2, "big")
    )
    return bytes([tag]) + size + data


class SigstoreInstance:
    """A CA, a CT log and a transparency log, each with its own P-256 key."""

    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        self._ca, self._ct, self._rekor = (ec.generate_private_key(ec.SECP256R1()) for _ in "abc")
        self._name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "lockd-tests"),
                x509.NameAttribute(NameOID.COMMON_NAME, "lockd-tests-fulcio"),
            ]
        )
        self._ca_cert = (
            x509.CertificateBuilder()
            .subject_name(self._name)
            .issuer_name(self._name)
            .public_key(self._ca.public_key())
            .serial_number(1)
            .not_valid_before(self.now - dt.timedelta(days=1))
            .not_valid_after(self.now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._ca.public_key()), critical=False
            )
            .sign(self._ca, hashes.SHA256())
        )

    def _leaf(
        self, key: ec.EllipticCurvePrivateKey, who: str, issuer: str
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(4242)
            .not_valid_before(self.now - dt.timedelta(minutes=1))
            .not_valid_after(self.now + dt.timedelta(minutes=10))
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._ca.public_key()),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(who)]), critical=True)
            .add_extension(x509.UnrecognizedExtension(_ISSUER_V1, issuer.encode()), critical=False)
            .add_extension(
                x509.UnrecognizedExtension(_ISSUER_V2, _der(0x0C, issuer.encode())), critical=False
            )
        )

    def _certificate(
        self, key: ec.EllipticCurvePrivateKey, who: str, issuer: str
    ) -> x509.Certificate:
        """A Fulcio-like certificate with an embedded SCT (RFC 6962: over the precertificate)."""
        tbs = self._leaf(key, who, issuer).sign(self._ca, hashes.SHA256()).tbs_certificate_bytes
        ms = int(self.now.timestamp() * 1000)
        signed = (
            struct.pack("!BBQH", 0, 0, ms, 1)
            + hashlib.sha256(_spki(self._ca)).digest()
            + len(tbs).to_bytes(3, "big")
            + tbs
            + b"\x00\x00"
        )
        signature = self._ct.sign(signed, ec.ECDSA(hashes.SHA256()))
        log_id = hashlib.sha256(_spki(self._ct)).digest()
        sct = (
            b"\x00"
            + log_id
            + struct.pack("!Q", ms)
            + b"\x00\x00\x04\x03"
            + struct.pack("!H", len(signature))
            + signature
        )
        scts = struct.pack("!H", len(sct) + 2) + struct.pack("!H", len(sct)) + sct
        extension = x509.UnrecognizedExtension(_SCT_LIST, _der(0x04, scts))
        cert = self._leaf(key, who, issuer).add_extension(extension, critical=False)
        return cert.sign(self._ca, hashes.SHA256())

    def sign(
        self,
        payload: bytes,
        who: str,
        issuer: str = ISSUER,
        *,
        envelope_key: ec.EllipticCurvePrivateKey | None = None,
    ) -> bytes:
        """A keyless Sigstore bundle (v0.3) of ``payload`` (an in-toto Statement) signed by
        ``who``, entered in this instance's transparency log."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._certificate(key, who, issuer)
        signature = (envelope_key or key).sign(
            pae(PAYLOAD_TYPE, payload), ec.ECDSA(hashes.SHA256())
        )
        pem = cert.public_bytes(serialization.Encoding.PEM)
        body = json.dumps(
            {
                "apiVersion": "0.0.1",
                "kind": "dsse",
                "spec": {
                    "envelopeHash": {
                        "algorithm": "sha256",
                        "value": hashlib.sha256(b"x").hexdigest(),
                    },
                    "payloadHash": {
                        "algorithm": "sha256",
                        "value": hashlib.sha256(payload).hexdigest(),
                    },
                    "signatures": [{"signature": _b64(signature), "verifier": _b64(pem)}],
                },
            },
            separators=(",", ":"),
        ).encode()
        log_id = hashlib.sha256(_spki(self._rekor)).digest()
        when = int(self.now.timestamp())
        promise = self._rekor.sign(
            rfc8785.dumps(
                {"body": _b64(body), "integratedTime": when, "logID": log_id.hex(), "logIndex": 0}
            ),
            ec.ECDSA(hashes.SHA256()),
        )
        root = hashlib.sha256(b"\x00" + body).digest()
        text = f"rekor.lockd-tests - 1\n1\n{_b64(root)}\n"
        note_signature = self._rekor.sign(text.encode(), ec.ECDSA(hashes.SHA256()))
        note = f"{text}\n\u2014 rekor.lockd-tests {_b64(log_id[:4] + note_signature)}\n"
        bundle = {
            "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "verificationMaterial": {
                "certificate": {"rawBytes": _b64(cert.public_bytes(serialization.Encoding.DER))},
                "tlogEntries": [
                    {
                        "logIndex": "0",
                        "logId": {"keyId": _b64(log_id)},
                        "kindVersion": {"kind": "dsse", "version": "0.0.1"},
                        "integratedTime": str(when),
                        "inclusionPromise": {"signedEntryTimestamp": _b64(promise)},
                        "inclusionProof": {
                            "logIndex": "0",
                            "rootHash": _b64(root),
                            "treeSize": "1",
                            "hashes": [],
                            "checkpoint": {"envelope": note},
                        },
                        "canonicalizedBody": _b64(body),
                    }
                ],
            },
            "dsseEnvelope": {
                "payload": _b64(payload),
                "payloadType": PAYLOAD_TYPE,
                "signatures": [{"sig": _b64(signature), "keyid": ""}],
            },
        }
        return json.dumps(bundle, indent=2).encode()

    def trusted_root(self) -> bytes:
        """The ``trusted_root.json`` that names this instance's CA, CT log and Rekor key."""
        start = {"start": (self.now - dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")}

        def key(k: ec.EllipticCurvePrivateKey) -> dict[str, object]:
            return {
                "rawBytes": _b64(_spki(k)),
                "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                "validFor": start,
            }

        ca = self._ca_cert.public_bytes(serialization.Encoding.DER)
        root = {
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [
                {
                    "baseUrl": "https://rekor.lockd-tests",
                    "hashAlgorithm": "SHA2_256",
                    "publicKey": key(self._rekor),
                    "logId": {"keyId": _b64(hashlib.sha256(_spki(self._rekor)).digest())},
                }
            ],
            "certificateAuthorities": [
                {
                    "subject": {"organization": "lockd-tests", "commonName": "lockd-tests-fulcio"},
                    "uri": "https://fulcio.lockd-tests",
                    "certChain": {"certificates": [{"rawBytes": _b64(ca)}]},
                    "validFor": start,
                }
            ],
            "ctlogs": [
                {
                    "baseUrl": "https://ct.lockd-tests",
                    "hashAlgorithm": "SHA2_256",
                    "publicKey": key(self._ct),
                    "logId": {"keyId": _b64(hashlib.sha256(_spki(self._ct)).digest())},
                }
            ],
            "timestampAuthorities": [],
        }
        return json.dumps(root, indent=2).encode()
