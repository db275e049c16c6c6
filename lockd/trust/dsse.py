"""DSSE envelopes (secure-systems-lab/dsse ``protocol.md``, ``envelope.md``): PAE, sign, verify.

A signature covers ``PAE(payloadType, payload)``, never the JSON of the envelope, so the payload's
exact bytes are what is signed; :meth:`Envelope.payload_bytes` gives them back.
"""

import base64
import json
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lockd.errors import ManifestError, SignatureError
from lockd.trust import keys

__all__ = [
    "Envelope",
    "Signature",
    "b64decode",
    "envelope_from",
    "json_object",
    "pae",
    "parse_envelope",
    "sign",
    "verify",
]


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's Pre-Authentication Encoding. Lengths are UTF-8 *byte* counts in ASCII decimal."""
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(type_bytes), type_bytes, len(payload), payload)


def b64decode(text: str) -> bytes:
    """Decode standard or URL-safe base64, with or without padding (DSSE verifiers accept both).

    Raises:
        ValueError: not base64 (bad characters, misplaced padding or a bad length).
    """
    data = text.encode("ascii")  # UnicodeEncodeError is a ValueError
    data = data.replace(b"-", b"+").replace(b"_", b"/")
    if not data.endswith(b"="):
        if len(data) % 4 == 1:
            raise ValueError("base64 text has an impossible length")
        data += b"=" * (-len(data) % 4)
    return base64.b64decode(data, validate=True)


def _check_b64(value: str) -> str:
    try:
        b64decode(value)
    except ValueError as e:
        raise ValueError(f"not valid base64 ({e})") from e
    return value


class Signature(BaseModel):
    """One signature: ``sig`` is base64; ``keyid`` is an optional, untrusted hint."""

    model_config = ConfigDict(frozen=True, strict=True)

    keyid: str = ""
    sig: str

    @field_validator("keyid", mode="before")
    @classmethod
    def _null_keyid(cls, value: object) -> object:
        return "" if value is None else value

    @field_validator("sig")
    @classmethod
    def _sig_is_base64(cls, value: str) -> str:
        _check_b64(value)
        if not value:
            raise ValueError("empty signature")
        return value

    def sig_bytes(self) -> bytes:
        return b64decode(self.sig)


class Envelope(BaseModel):
    """A DSSE envelope. ``payload`` is kept as the base64 text it came as."""

    model_config = ConfigDict(frozen=True, strict=True)

    payload: str
    payloadType: str  # noqa: N815 (the wire name)
    signatures: list[Signature] = Field(min_length=1)

    @field_validator("payload")
    @classmethod
    def _payload_is_base64(cls, value: str) -> str:
        return _check_b64(value)

    def payload_bytes(self) -> bytes:
        """The payload's bytes: exactly what the signatures cover (inside the PAE)."""
        return b64decode(self.payload)

    def to_json(self) -> bytes:
        """The envelope as JSON: indent 2, sorted keys, trailing newline."""
        text = json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)
        return (text + "\n").encode("utf-8")


def parse_envelope(data: bytes, source: str) -> Envelope:
    """Parse a DSSE envelope from JSON bytes (signatures are not checked: see :func:`verify`).

    Raises:
        ManifestError: ``"<source>: not a DSSE envelope: <why>"``: not JSON, truncated, not an
            object, missing or mistyped fields, bad base64, no signatures.
    """
    return envelope_from(json_object(data, source, "a DSSE envelope"), source)


def json_object(data: bytes, source: str, what: str) -> dict[str, Any]:
    """The JSON object in ``data``.

    Raises:
        ManifestError: ``"<source>: not <what>: <why>"``: not UTF-8, not JSON, truncated, not an
            object.
    """
    try:
        doc = json.loads(data)
    except UnicodeDecodeError as e:
        raise ManifestError(f"{source}: not {what}: not UTF-8 text ({e.reason})") from e
    except json.JSONDecodeError as e:
        why = (
            "truncated JSON (the file ends early; fetch or copy it again)"
            if e.pos >= len(e.doc.rstrip()) or e.msg.startswith("Unterminated string")
            else f"invalid JSON ({e.msg} at line {e.lineno} column {e.colno})"
        )
        raise ManifestError(f"{source}: not {what}: {why}") from e
    if not isinstance(doc, dict):
        raise ManifestError(
            f"{source}: not {what}: expected a JSON object, got {type(doc).__name__}"
        )
    return doc


def envelope_from(doc: object, source: str) -> Envelope:
    """Validate a decoded JSON value as a DSSE envelope.

    Raises:
        ManifestError: ``"<source>: not a DSSE envelope: <why>"``.
    """
    try:
        return Envelope.model_validate(doc)
    except ValidationError as e:
        raise ManifestError(f"{source}: not a DSSE envelope: {_explain(e)}") from e


def _explain(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_url=False):
        where = ".".join(str(part) for part in item["loc"]) or "envelope"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "too_short" and item["loc"] == ("signatures",):
            message = "no signatures (the envelope was never signed)"
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def sign(payload: bytes, payload_type: str, key: keys.PrivateKey) -> Envelope:
    """Sign ``payload`` into a new envelope with one signature, its keyid that of ``key``."""
    sig = keys.sign_bytes(key, pae(payload_type, payload))
    return Envelope(
        payload=base64.b64encode(payload).decode("ascii"),
        payloadType=payload_type,
        signatures=[
            Signature(keyid=keys.keyid(key.public_key()), sig=base64.b64encode(sig).decode("ascii"))
        ],
    )


def verify(
    envelope: Envelope,
    trusted: Sequence[keys.PublicKey],
    threshold: int = 1,
    *,
    source: str | None = None,
) -> list[str]:
    """Check the envelope's signatures against the trusted keys.

    A signature's keyid is only a hint (cosign leaves it empty): a signature is tried against the
    key it names first, then against every other trusted key.

    Args:
        envelope: the envelope to check.
        trusted: the public keys to trust.
        threshold: how many *distinct* trusted keys must have signed (two signatures by one key
            count once).
        source: names the envelope (a file) in error messages.

    Returns:
        The keyids of the trusted keys that signed, each once, in the order they were found.

    Raises:
        ValueError: ``threshold`` < 1.
        SignatureError: fewer than ``threshold`` distinct trusted keys signed, or no trusted keys.
    """
    if threshold < 1:
        raise ValueError(f"threshold must be at least 1, got {threshold}")
    prefix = f"{source}: " if source else ""
    if not trusted:
        raise SignatureError(f"{prefix}no trusted keys to verify the envelope against; give --key")
    message = pae(envelope.payloadType, envelope.payload_bytes())
    ids = [keys.keyid(key) for key in trusted]
    verified: list[str] = []
    for signature in envelope.signatures:
        sig = signature.sig_bytes()
        # The named key first, then the rest: the hint orders the search, never limits it.
        order = sorted(range(len(trusted)), key=lambda i: ids[i] != signature.keyid)
        for i in order:
            if ids[i] in verified:
                continue
            if keys.verify_bytes(trusted[i], sig, message):
                verified.append(ids[i])
                break
    if len(verified) >= threshold:
        return verified
    tried = ", ".join(sorted(set(ids)))
    if not verified:
        raise SignatureError(
            f"{prefix}envelope signature does not verify against any trusted key "
            f"(tried keyids {tried}); check that --key is the public key of the signer"
        )
    raise SignatureError(
        f"{prefix}envelope is signed by {len(verified)} trusted key(s), fewer than the "
        f"threshold of {threshold} (verified keyids {', '.join(verified)}; tried keyids {tried})"
    )
