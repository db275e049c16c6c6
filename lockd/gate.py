"""The CI gate: is there a manifest for this image digest, signed by a trusted key, whose
recorded checks pass the policy? The judging is pure (:func:`judge`); :func:`gate` gathers the
envelopes from a lockd service or from the image's registry.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from lockd.errors import InputError, LockdError, SignatureError

if TYPE_CHECKING:
    from lockd.client import Client
    from lockd.judgement.policy import Policy
    from lockd.trust.keys import PublicKey
    from lockd.trust.registry import Registry
    from lockd.trust.signed import Signed, Trust

_PINNED = re.compile(r"^[^@\s]+@sha256:[0-9a-f]{64}$")

__all__ = ["GateResult", "gate", "judge", "pinned_digest"]


@dataclass(frozen=True)
class GateResult:
    """``allowed`` only when one trusted manifest for ``digest`` passes ``policy``."""

    allowed: bool
    image: str
    digest: str
    policy: str
    source: str
    manifest: str | None = None  # sha256 of the payload of the manifest that passed
    keyids: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def pinned_digest(image: str) -> str:
    """The digest of ``IMAGE@sha256:<hex>``.

    Raises:
        InputError: the reference is not pinned by a sha256 digest.
    """
    if not _PINNED.match(image):
        raise InputError(
            f"{image!r}: give the image pinned by digest, IMAGE@sha256:<64 hex> (e.g. from "
            "`docker buildx imagetools inspect` or the push output)"
        )
    return image.rpartition("@")[2]


def judge(
    image: str,
    envelopes: Sequence[tuple[str, Signed]],
    trusted: Trust | Sequence[PublicKey],
    policy: Policy,
    policy_name: str,
    source: str,
) -> GateResult:
    """Pure: the first of ``envelopes`` ((where, envelope), newest first) that is signed by a
    trusted key, names the image's digest as a subject and whose recorded checks pass
    ``policy``; reasons for each that does not."""
    from lockd.judgement.compare import compare
    from lockd.trust.signed import payload_digest, verify_signed
    from lockd.trust.statement import parse_statement

    digest = pinned_digest(image)
    reasons: list[str] = []
    if not envelopes:
        reasons.append(f"no lockd manifest for {digest} at {source}")
    for where, envelope in envelopes:
        try:
            keyids = verify_signed(envelope, trusted, source=where)
            subjects, manifest = parse_statement(envelope.payload_bytes(), where)
        except SignatureError as e:
            reasons.append(f"{where}: not signed by a trusted key ({e})")
            continue
        except LockdError as e:
            reasons.append(f"{where}: {e}")
            continue
        if not any("sha256:" + s.digest.get("sha256", "") == digest for s in subjects):
            reasons.append(f"{where}: its subjects do not include {digest}")
            continue
        failed = [c for c in compare(manifest, manifest.observation, policy) if c.status == "fail"]
        if failed:
            why = ", ".join(c.id + (f" ({c.message})" if c.message else "") for c in failed)
            reasons.append(f"{where}: fails policy {policy_name}: {why}")
            continue
        return GateResult(
            True, image, digest, policy_name, source, payload_digest(envelope), keyids, reasons
        )
    return GateResult(False, image, digest, policy_name, source, reasons=reasons)


def envelopes_from_server(client: Client, digest: str) -> list[tuple[str, Signed]]:
    """Every manifest the service holds for ``digest``, newest first.

    Raises:
        ServerError: the service cannot be reached or answers garbage.
    """
    found = []
    for summary in client.manifests_for(digest):
        where = f"{client.base_url}/v1/manifests/{summary.get('digest')}"
        found.append((where, client.signed_manifest(str(summary.get("digest")), where)))
    return found


def envelopes_from_registry(
    image: str, *, registry: Registry | None = None
) -> list[tuple[str, Signed]]:
    """Every envelope stored next to ``image`` in its registry (lockd.trust.registry.fetch;
    ``registry``: the client to ask it through, e.g. one with a deadline).

    Raises:
        InputError: no registry host in the reference.
        RegistryError: the registry cannot be reached or answers garbage.
    """
    from lockd.trust.registry import fetch
    from lockd.trust.signed import parse_signed

    found = []
    for data in fetch(image, registry=registry):
        where = f"{image} (registry attestation sha256:{hashlib.sha256(data).hexdigest()[:12]}…)"
        try:
            found.append((where, parse_signed(data, where)))
        except LockdError:
            continue  # neither an envelope nor a bundle lockd reads: another tool's attestation
    return found


def gate(
    image: str,
    trusted: Trust | Sequence[PublicKey],
    policy: Policy,
    policy_name: str,
    *,
    client: Client | None = None,
) -> GateResult:
    """Judge the manifests for ``image`` (IMAGE@sha256:…) that a lockd service holds (with
    ``client``), else those stored next to the image in its registry.

    Raises:
        InputError: the image is not pinned by digest, or no trusted key or identity is given.
        ServerError / RegistryError: the service or the registry cannot be reached.
    """
    from lockd.trust.signed import as_trust

    digest = pinned_digest(image)
    trust = as_trust(trusted)
    if not trust.keys and not trust.identities:
        raise InputError(
            "give --key PUB (or a keyless signer's --certificate-identity and "
            "--certificate-oidc-issuer): the gate checks signatures itself"
        )
    if client is None:
        found = envelopes_from_registry(image)
        return judge(image, found, trusted, policy, policy_name, "the registry")
    return judge(
        image, envelopes_from_server(client, digest), trusted, policy, policy_name, client.base_url
    )
