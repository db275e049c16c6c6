"""Keyless signatures: a Sigstore bundle signed with a short-lived Fulcio certificate, entered in
a transparency log, accepted under an identity policy (who signed, per which OIDC issuer).

The cryptography is the ``sigstore`` package's (the ``lockd[sigstore]`` extra, imported here
only, when a keyless bundle is checked): the certificate chain to the trusted root's Fulcio at
the signing time the log proves (its inclusion promise, SET, and inclusion proof, all in the
bundle: nothing is fetched), the certificate transparency SCT, the log entry against the
envelope, the envelope's signature. lockd adds the identity policy (:class:`Identity`, checked
by sigstore before the signature) and reads the payload only once all of that held.

Identities follow cosign's flags: ``--certificate-identity`` (the certificate's SAN, exactly)
or ``--certificate-identity-regexp`` (a Python regular expression that must match the *whole*
SAN: cosign's is unanchored, a pattern meant as a prefix must say ``.*``), and
``--certificate-oidc-issuer`` (exactly).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lockd.errors import InputError, SignatureError
from lockd.fileio import read_capped

if TYPE_CHECKING:
    from cryptography.x509 import Certificate

    from lockd.trust.sigstore_bundle import SigstoreBundle

MAX_TRUSTED_ROOT = 1024 * 1024
MAX_IDENTITIES = 64
_ISSUER_V2 = "1.3.6.1.4.1.57264.1.8"  # DER UTF8String
_ISSUER_V1 = "1.3.6.1.4.1.57264.1.1"  # raw bytes (deprecated, still in every certificate)
_OTHERNAME = "1.3.6.1.4.1.57264.1.7"  # Fulcio's username SAN
_EXTRA = (  # as lockd.cli.extras words it
    "keyless verification needs the 'sigstore' extra, which is not installed (missing: "
    "sigstore): pip install 'lockd[sigstore]' (or 'lockd[all]')"
)

__all__ = [
    "Identity",
    "check_usable",
    "identities_from_env",
    "identity_from_flags",
    "load_trusted_root",
    "verify",
]


@dataclass(frozen=True)
class Identity:
    """One signer lockd trusts: an OIDC issuer and a SAN (exact, or a full-match pattern)."""

    issuer: str
    identity: str | None = None
    identity_regexp: str | None = None

    def matches(self, san: str, issuer: str) -> bool:
        if issuer != self.issuer:
            return False
        if self.identity is not None:
            return san == self.identity
        assert self.identity_regexp is not None
        return re.fullmatch(self.identity_regexp, san) is not None

    def __str__(self) -> str:
        who = self.identity if self.identity is not None else f"/{self.identity_regexp}/"
        return f"{who} (issuer {self.issuer})"


def _identity(issuer: object, identity: object, regexp: object, where: str) -> Identity:
    if not isinstance(issuer, str) or not issuer:
        raise InputError(f"{where}: give the OIDC issuer (--certificate-oidc-issuer)")
    if (identity is None) == (regexp is None):
        raise InputError(
            f"{where}: give one of --certificate-identity and --certificate-identity-regexp"
        )
    for value in (identity, regexp):
        if value is not None and (not isinstance(value, str) or not value):
            raise InputError(f"{where}: an identity is a non-empty string")
    if isinstance(regexp, str):
        try:
            re.compile(regexp)
        except re.error as e:
            raise InputError(f"{where}: {regexp!r} is not a regular expression ({e})") from e
    return Identity(issuer, identity, regexp)  # type: ignore[arg-type]


def identity_from_flags(
    identity: str | None, identity_regexp: str | None, issuer: str | None
) -> Identity | None:
    """The identity cosign's flags name; None when none of them is given.

    Raises:
        InputError: an issuer without an identity or the other way round, both identity flags,
            or a regexp that does not compile.
    """
    if identity is None and identity_regexp is None and issuer is None:
        return None
    return _identity(issuer, identity, identity_regexp, "keyless verification")


def identities_from_env(raw: str, name: str = "LOCKD_TRUSTED_IDENTITIES") -> tuple[Identity, ...]:
    """``[{"issuer": …, "identity": …} | {"issuer": …, "identity_regexp": …}, …]`` (JSON).

    Raises:
        InputError: not such a JSON list, an unknown field, or a bad entry (naming it).
    """
    if not raw.strip():
        return ()
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as e:
        raise InputError(f"{name}: not JSON ({e.msg}); give a JSON list of identities") from e
    if not isinstance(doc, list) or len(doc) > MAX_IDENTITIES:
        raise InputError(f"{name}: give a JSON list of at most {MAX_IDENTITIES} identities")
    found = []
    for index, item in enumerate(doc):
        where = f"{name}[{index}]"
        if not isinstance(item, dict):
            raise InputError(f"{where}: give an object with issuer and identity or identity_regexp")
        unknown = sorted(set(item) - {"issuer", "identity", "identity_regexp"})
        if unknown:
            raise InputError(f"{where}: unknown field(s) {', '.join(unknown)}")
        found.append(
            _identity(item.get("issuer"), item.get("identity"), item.get("identity_regexp"), where)
        )
    return tuple(found)


def load_trusted_root(path: Path) -> bytes:
    """A ``trusted_root.json`` file's bytes, checked to be one the sigstore package reads.

    Raises:
        InputError: unreadable, too large, not a trusted root, or no sigstore package.
    """
    data = read_capped(path, limit=MAX_TRUSTED_ROOT, what="trusted root")
    _verifier(data, str(path))
    return data


def check_usable(trusted_root: bytes | None) -> None:
    """Whether keyless bundles can be checked here (for a long-running caller to say at start,
    not at the first keyless manifest).

    Raises:
        InputError: the sigstore package is not installed, or the trusted root is unusable.
    """
    _verifier(trusted_root)


@functools.lru_cache(maxsize=8)
def _verifier(root: bytes | None, source: str = "the trusted root") -> Any:
    try:
        from sigstore.errors import Error
        from sigstore.models import ClientTrustConfig, TrustedRoot
        from sigstore.verify import Verifier
        from sigstore_models.trustroot.v1 import TrustedRoot as TrustedRootMessage
    except ImportError as e:
        raise InputError(_EXTRA) from e
    try:
        if root is None:  # the public-good root shipped in the package, without a TUF refresh
            trusted = ClientTrustConfig.production(offline=True).trusted_root
        else:
            trusted = TrustedRoot(TrustedRootMessage.from_json(root))
        return Verifier(trusted_root=trusted)
    except (Error, ValueError) as e:
        raise InputError(f"{source}: not a Sigstore trusted root lockd can use: {e}") from e


def _der_utf8(data: bytes) -> str:
    """The text of a DER UTF8String (tag 12), or the bytes as text when they are not one."""
    if len(data) >= 2 and data[0] == 0x0C:
        size, start = data[1], 2
        if size & 0x80:
            count = size & 0x7F
            size, start = int.from_bytes(data[2 : 2 + count], "big"), 2 + count
        if start + size == len(data):
            return data[start:].decode("utf-8", "replace")
    return data.decode("utf-8", "replace")


def signer_of(cert: Certificate) -> tuple[list[str], str]:
    """The certificate's SANs (emails, URIs, Fulcio usernames) and its OIDC issuer ("" if none)."""
    from cryptography import x509

    sans: list[str] = []
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        names = None
    if names is not None:
        sans += names.get_values_for_type(x509.RFC822Name)
        sans += names.get_values_for_type(x509.UniformResourceIdentifier)
        sans += [
            _der_utf8(other.value)
            for other in names.get_values_for_type(x509.OtherName)
            if other.type_id.dotted_string == _OTHERNAME
        ]
    issuer = ""
    for oid, decode in ((_ISSUER_V2, _der_utf8), (_ISSUER_V1, _raw_text)):
        try:
            value = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid)).value
        except x509.ExtensionNotFound:
            continue
        issuer = decode(value.value) if isinstance(value, x509.UnrecognizedExtension) else ""
        break
    return sans, issuer


def _raw_text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


class _Policy:
    """sigstore's VerificationPolicy: any of the identities; remembers who signed."""

    def __init__(self, identities: Sequence[Identity]) -> None:
        self.identities = identities
        self.signer: str | None = None

    def verify(self, cert: Certificate) -> None:
        from sigstore.errors import VerificationError

        sans, issuer = signer_of(cert)
        for identity in self.identities:
            for san in sans:
                if identity.matches(san, issuer):
                    self.signer = f"{san} (issuer {issuer})"
                    return
        trusted = "; ".join(str(i) for i in self.identities)
        raise VerificationError(
            f"the certificate names {', '.join(sans) or 'no identity'} (issuer "
            f"{issuer or 'none'}), not a trusted identity ({trusted})"
        )


def verify(
    bundle: SigstoreBundle,
    identities: Sequence[Identity],
    trusted_root: bytes | None,
    *,
    source: str | None = None,
) -> list[str]:
    """Check a keyless bundle; the signer (``"<SAN> (issuer <issuer>)"``) as a one-item list.

    Raises:
        SignatureError: no identity is trusted, or the bundle does not verify (the certificate
            chain, its time, the log entry, the identity, the signature), naming what failed.
        InputError: the sigstore package is not installed, or the trusted root is unusable.
    """
    prefix = f"{source}: " if source else ""
    if not identities:
        raise SignatureError(
            f"{prefix}the manifest is signed keylessly (a certificate); give the signer's "
            "identity: --certificate-identity (or --certificate-identity-regexp) and "
            "--certificate-oidc-issuer"
        )
    verifier = _verifier(trusted_root)
    from sigstore.errors import Error
    from sigstore.models import Bundle

    policy = _Policy(identities)
    try:
        payload_type, payload = verifier.verify_dsse(Bundle.from_json(bundle.raw), policy)
    except (Error, ValueError) as e:
        why = e.diagnostics() if isinstance(e, Error) else str(e)
        raise SignatureError(
            f"{prefix}keyless signature refused: {' '.join(why.split())[:600]}"
        ) from e
    if (payload_type, payload) != (bundle.envelope.payloadType, bundle.payload_bytes()):
        raise SignatureError(f"{prefix}the bundle's envelope reads two ways; refused")
    assert policy.signer is not None
    return [policy.signer]
