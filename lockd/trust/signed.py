"""Signed manifests as lockd takes them: a DSSE envelope, or a Sigstore bundle carrying one
(key-based or keyless). The one place that tells them apart (:func:`parse_signed`) and checks
either against what is trusted (:func:`verify_signed`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from lockd.trust import dsse
from lockd.trust.dsse import Envelope
from lockd.trust.sigstore_bundle import SigstoreBundle, bundle_from, is_bundle

if TYPE_CHECKING:
    from lockd.trust.keyless import Identity
    from lockd.trust.keys import PublicKey

Signed: TypeAlias = Envelope | SigstoreBundle
_KEYID = re.compile(r"^[0-9a-f]{64}$")

__all__ = [
    "Signed",
    "Trust",
    "as_trust",
    "envelope_of",
    "load_trust",
    "parse_signed",
    "payload_digest",
    "signed_from",
    "signers_text",
    "verify_signed",
]


@dataclass(frozen=True)
class Trust:
    """Who may sign: public keys, and keyless identities checked against a trusted root (the
    ``trusted_root.json`` bytes; None: the sigstore package's public-good root)."""

    keys: tuple[PublicKey, ...] = ()
    identities: tuple[Identity, ...] = ()
    trusted_root: bytes | None = None


def load_trust(
    keys: Sequence[Path], identities: Sequence[Identity] = (), trusted_root: Path | None = None
) -> Trust:
    """What the ``--key`` files, keyless identities and ``--trusted-root`` file say to trust.

    Raises:
        KeyFileError: a key file cannot be read.
        InputError: an unreadable ``--trusted-root`` (or no sigstore package to read it).
    """
    from lockd.trust import keyless
    from lockd.trust import keys as key_files

    return Trust(
        keys=tuple(key_files.load_public_key(k) for k in keys),
        identities=tuple(identities),
        trusted_root=None if trusted_root is None else keyless.load_trusted_root(trusted_root),
    )


def as_trust(trusted: Trust | Sequence[PublicKey]) -> Trust:
    """A Trust of its own, or of bare keys."""
    return trusted if isinstance(trusted, Trust) else Trust(keys=tuple(trusted))


def signed_from(doc: Any, source: str, raw: bytes | None = None) -> Signed:
    """A decoded JSON value as an envelope, or as a bundle when it says it is one (mediaType).
    A bundle keeps ``raw``, the JSON text it was decoded from; without it, ``json.dumps(doc)``:
    what the service stores for a bundle pushed to it, so that a client reading the bundle back
    has the stored bytes (their digest is in the audit log).

    Raises:
        ManifestError: naming ``source``: neither, or a malformed one.
    """
    if isinstance(doc, dict) and is_bundle(doc):
        return bundle_from(doc, json.dumps(doc).encode() if raw is None else raw, source)
    return dsse.envelope_from(doc, source)


def parse_signed(data: bytes, source: str) -> Signed:
    """A signed manifest from JSON bytes (signatures are not checked: see :func:`verify_signed`).

    Raises:
        ManifestError: ``"<source>: not a DSSE envelope: …"`` or ``"<source>: not a Sigstore
            bundle lockd reads: …"``.
    """
    return signed_from(dsse.json_object(data, source, "a DSSE envelope"), source, data)


def payload_digest(signed: Signed) -> str:
    """``sha256:<hex>`` of the payload: what the service names a stored manifest by, the same
    for an envelope and the bundle that carries it."""
    return "sha256:" + hashlib.sha256(signed.payload_bytes()).hexdigest()


def envelope_of(signed: Signed) -> Envelope:
    return signed if isinstance(signed, Envelope) else signed.envelope


def verify_signed(
    signed: Signed, trusted: Trust | Sequence[PublicKey], *, source: str | None = None
) -> list[str]:
    """Check ``signed`` against ``trusted``: an envelope or a key-based bundle against the keys
    (dsse.verify: a bundle's publicKey hint, like a keyid, only orders the search), a keyless
    bundle against the identities and the trusted root (lockd.trust.keyless).

    Returns:
        Who signed: keyids, or ``"<SAN> (issuer <issuer>)"`` for a keyless signature.

    Raises:
        SignatureError: not signed by what is trusted.
        InputError: keyless, and the sigstore package is missing or the trusted root unusable.
    """
    trust = as_trust(trusted)
    if isinstance(signed, Envelope) or signed.signer == "key":
        return dsse.verify(envelope_of(signed), trust.keys, source=source)
    from lockd.trust import keyless

    return keyless.verify(signed, trust.identities, trust.trusted_root, source=source)


def signers_text(signers: Sequence[str], width: int = 16) -> str:
    """``keyid <the first width hex digits>`` for each key, the identity of a keyless signer."""
    return ", ".join(f"keyid {s[:width]}" if _KEYID.match(s) else s for s in signers)
