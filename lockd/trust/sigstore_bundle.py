"""Sigstore bundles (sigstore/protobuf-specs ``sigstore_bundle.proto``, its proto3 JSON form)
carrying a DSSE envelope: written key-based, read strictly.

lockd writes v0.3 (``application/vnd.dev.sigstore.bundle.v0.3+json``) with
``verificationMaterial.publicKey.hint`` = the signer's keyid and the envelope as
``dsseEnvelope``: what sigstore-js verifies with a public key and no transparency log or
timestamp. It reads v0.1 to v0.3, key-based or keyless (``certificate``, or the older
``x509CertificateChain``); a keyless bundle's proofs (tlog entries, timestamps) are checked by the
``sigstore`` package (lockd.trust.keyless), so here they are only bounded, and kept as they came
in the bundle's exact bytes (:attr:`SigstoreBundle.raw`).
"""

from __future__ import annotations

import base64
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lockd.errors import ManifestError
from lockd.trust.dsse import Envelope, b64decode

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
# What sigstore clients have written: v0.1 and v0.2 only in the older spelling, v0.3 in both.
MEDIA_TYPES = (
    "application/vnd.dev.sigstore.bundle+json;version=0.1",
    "application/vnd.dev.sigstore.bundle+json;version=0.2",
    "application/vnd.dev.sigstore.bundle+json;version=0.3",
    BUNDLE_MEDIA_TYPE,
)
MAX_HINT = 256  # a keyid is 64 hex digits
MAX_CERTIFICATE_BYTES = 16 * 1024  # a Fulcio leaf is about 1-3 KiB
MAX_CHAIN = 10
MAX_ENTRIES = 16  # one per log the bundle was entered in (sigstore clients write one)
MAX_TIMESTAMPS = 16
_ENVELOPE_FIELDS = frozenset({"payload", "payloadType", "signatures"})

__all__ = [
    "BUNDLE_MEDIA_TYPE",
    "MEDIA_TYPES",
    "SigstoreBundle",
    "bundle_from",
    "is_bundle",
    "key_bundle",
]


def _check_raw_bytes(value: str) -> str:
    try:
        data = b64decode(value)
    except ValueError as e:
        raise ValueError(f"not valid base64 ({e})") from e
    if not data:
        raise ValueError("empty certificate")
    if len(data) > MAX_CERTIFICATE_BYTES:
        raise ValueError(f"a certificate of {len(data)} bytes (at most {MAX_CERTIFICATE_BYTES})")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")


class PublicKeyHint(_Strict):
    hint: str = Field(min_length=1, max_length=MAX_HINT)


class Certificate(_Strict):
    rawBytes: str  # noqa: N815 (the wire name)

    @field_validator("rawBytes")
    @classmethod
    def _der(cls, value: str) -> str:
        return _check_raw_bytes(value)


class CertificateChain(_Strict):
    certificates: list[Certificate] = Field(min_length=1, max_length=MAX_CHAIN)


class TimestampData(_Strict):
    rfc3161Timestamps: list[dict[str, Any]] = Field(default=[], max_length=MAX_TIMESTAMPS)  # noqa: N815


class VerificationMaterial(_Strict):
    """Exactly one of ``publicKey``, ``certificate``, ``x509CertificateChain`` (proto oneof)."""

    publicKey: PublicKeyHint | None = None  # noqa: N815
    certificate: Certificate | None = None
    x509CertificateChain: CertificateChain | None = None  # noqa: N815
    tlogEntries: list[dict[str, Any]] = Field(default=[], max_length=MAX_ENTRIES)  # noqa: N815
    timestampVerificationData: TimestampData | None = None  # noqa: N815


class _BundleModel(_Strict):
    mediaType: str  # noqa: N815
    verificationMaterial: VerificationMaterial  # noqa: N815
    dsseEnvelope: Envelope | None = None  # noqa: N815
    messageSignature: dict[str, Any] | None = None  # noqa: N815


class SigstoreBundle(BaseModel):
    """A bundle whose content is a DSSE envelope; ``raw`` is the bundle's JSON as it came (what
    a keyless check reads: lockd re-encodes nothing it did not write)."""

    model_config = ConfigDict(frozen=True)

    media_type: str
    signer: Literal["key", "certificate"]
    hint: str | None  # publicKey.hint: like a DSSE keyid, it orders the key search, never limits it
    envelope: Envelope
    raw: bytes

    def payload_bytes(self) -> bytes:
        return self.envelope.payload_bytes()

    def to_json(self) -> bytes:
        return self.raw


def is_bundle(doc: dict[str, Any]) -> bool:
    """A JSON object that says it is a Sigstore bundle (a DSSE envelope has no mediaType)."""
    media = doc.get("mediaType")
    return isinstance(media, str) and media.startswith("application/vnd.dev.sigstore.bundle")


def bundle_from(doc: dict[str, Any], raw: bytes, source: str) -> SigstoreBundle:
    """Validate a decoded Sigstore bundle; ``raw`` is its JSON text.

    Raises:
        ManifestError: ``"<source>: not a Sigstore bundle lockd reads: <why>"``: an unknown
            media type or field, no or several kinds of verification material, a message
            signature instead of a DSSE envelope, an envelope with other than one signature,
            bad base64, or more certificates, log entries or timestamps than a bundle holds.
    """
    prefix = f"{source}: not a Sigstore bundle lockd reads"
    media = doc.get("mediaType")
    if media not in MEDIA_TYPES:
        raise ManifestError(
            f"{prefix}: mediaType {str(media)[:80]!r} is none of {', '.join(MEDIA_TYPES)}"
        )
    envelope_doc = doc.get("dsseEnvelope")
    if isinstance(envelope_doc, dict):  # the envelope model ignores unknown fields: not here
        unknown = sorted(set(envelope_doc) - _ENVELOPE_FIELDS)
        signatures = envelope_doc.get("signatures")
        for item in signatures if isinstance(signatures, list) else []:
            if isinstance(item, dict):
                unknown += sorted(f"signatures.{k}" for k in set(item) - {"sig", "keyid"})
        if unknown:
            raise ManifestError(
                f"{prefix}: dsseEnvelope.{unknown[0]}: not a field of a Sigstore bundle"
            )
    try:
        model = _BundleModel.model_validate(doc)
    except ValidationError as e:
        raise ManifestError(f"{prefix}: {_explain(e)}") from e
    material = model.verificationMaterial
    kinds = [
        name
        for name in ("publicKey", "certificate", "x509CertificateChain")
        if getattr(material, name) is not None
    ]
    if len(kinds) != 1:
        raise ManifestError(
            f"{prefix}: verificationMaterial needs exactly one of publicKey, certificate, "
            f"x509CertificateChain (it has {', '.join(kinds) or 'none'})"
        )
    if model.messageSignature is not None or model.dsseEnvelope is None:
        raise ManifestError(
            f"{prefix}: it signs a message (messageSignature), not a DSSE envelope; a lockd "
            "manifest is a DSSE envelope"
        )
    envelope = model.dsseEnvelope
    if len(envelope.signatures) != 1:
        raise ManifestError(
            f"{prefix}: dsseEnvelope has {len(envelope.signatures)} signatures; a bundle's "
            "envelope has exactly one"
        )
    if material.x509CertificateChain is not None and media == BUNDLE_MEDIA_TYPE:
        raise ManifestError(
            f"{prefix}: a v0.3 bundle names its signer by certificate, not x509CertificateChain"
        )
    if material.publicKey is None and not material.tlogEntries and not _timestamps(material):
        raise ManifestError(
            f"{prefix}: a certificate without a transparency log entry or a timestamp proves "
            "no signing time"
        )
    return SigstoreBundle(
        media_type=str(media),
        signer="key" if material.publicKey is not None else "certificate",
        hint=material.publicKey.hint if material.publicKey is not None else None,
        envelope=envelope,
        raw=raw,
    )


def _timestamps(material: VerificationMaterial) -> int:
    data = material.timestampVerificationData
    return 0 if data is None else len(data.rfc3161Timestamps)


def _explain(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_url=False)[:5]:
        where = ".".join(str(part) for part in item["loc"]) or "bundle"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "not a field of a Sigstore bundle"
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def key_bundle(envelope: Envelope, keyid: str) -> bytes:
    """``envelope`` (one signature, by the key with ``keyid``) as a key-based v0.3 bundle: indent
    2, the proto field order, a trailing newline.

    Raises:
        ValueError: the envelope has other than one signature.
    """
    if len(envelope.signatures) != 1:
        raise ValueError(
            f"a bundle carries one signature, the envelope has {len(envelope.signatures)}"
        )
    signature = envelope.signatures[0]
    doc = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": keyid}},
        "dsseEnvelope": {
            "payload": base64.b64encode(envelope.payload_bytes()).decode("ascii"),
            "payloadType": envelope.payloadType,
            "signatures": [{"sig": signature.sig, "keyid": signature.keyid}],
        },
    }
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")
