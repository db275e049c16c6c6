"""``lockd verify --registry``: the manifest to verify a target against, taken from its image's
registry (where ``lockd attach`` stores signed manifests), or from a lockd service first when
one is given and holds one.

Of the envelopes stored next to the image, the one chosen is the newest (by the ``recorded_at``
it signs) that a trusted key signed and whose subjects name the image's digest. Choosing is pure
(:func:`choose`); :func:`verify_attested` fetches, compares and reports.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lockd.errors import InputError, LockdError, SignatureError

if TYPE_CHECKING:
    from lockd.client import Client
    from lockd.judgement.policy import Policy
    from lockd.model.manifest import Manifest, Observation
    from lockd.model.report import Report
    from lockd.trust.keys import PublicKey
    from lockd.trust.signed import Signed, Trust
    from lockd.trust.statement import Subject

__all__ = ["Attestation", "Choice", "choose", "registry_images", "verify_attested"]

_OLDEST = dt.datetime.min.replace(tzinfo=dt.timezone.utc)
SHOWN = 5  # reasons named in a failing signature check; the rest are counted


@dataclass(frozen=True)
class Attestation:
    """An envelope or bundle found next to an image: where (for messages), the image's digest,
    itself."""

    where: str
    digest: str
    envelope: Signed


@dataclass(frozen=True)
class Choice:
    """The attestation to verify against, its trusted signers and its parsed Statement."""

    where: str
    keyids: list[str]
    subjects: list[Subject]
    manifest: Manifest
    trusted: int  # how many of the attestations were eligible (the newest of them was chosen)


def registry_images(observation: Observation) -> list[str]:
    """The target's image as ``REGISTRY/REPOSITORY@sha256:…`` references lockd can read (its
    repo digests that name a registry host), sorted.

    Raises:
        InputError: a local target, or an image that is in no registry lockd can read.
    """
    from lockd.trust.registry import parse_ref

    where = f"{observation.target.kind} {observation.target.ref}"
    if observation.host is None:
        raise InputError(f"--registry: {where} has no image; give --manifest FILE")
    found = []
    for reference in sorted(set(observation.host.repo_digests)):
        try:
            found.append(str(parse_ref(reference)))
        except InputError:
            continue  # Docker Hub's short names, or not pinned: not a registry lockd can read
    if not found:
        raise InputError(
            f"--registry: the image of {where} has no repo digest in a registry (REGISTRY/"
            "REPOSITORY@sha256:…): push it, run it from the pushed reference, or give "
            "--manifest FILE"
        )
    return found


def _recorded(manifest: Manifest) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(manifest.recorded_at)
    except ValueError:
        return _OLDEST
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.timezone.utc)


def choose(
    found: Sequence[Attestation], trusted: Trust | Sequence[PublicKey]
) -> tuple[Choice | None, list[str]]:
    """Pure: the newest of ``found`` signed by a trusted key whose subjects name its image's
    digest (the first of equals, in ``found``'s order), and why each other one is not eligible."""
    from lockd.trust.signed import verify_signed
    from lockd.trust.statement import parse_statement

    reasons: list[str] = []
    eligible: list[tuple[dt.datetime, int, str, list[str], list[Subject], Manifest]] = []
    for index, item in enumerate(found):
        try:
            keyids = verify_signed(item.envelope, trusted, source=item.where)
            subjects, manifest = parse_statement(item.envelope.payload_bytes(), item.where)
        except SignatureError:
            reasons.append(f"{item.where}: not signed by a trusted key")
            continue
        except LockdError as e:
            reasons.append(str(e))
            continue
        if not any("sha256:" + s.digest.get("sha256", "") == item.digest for s in subjects):
            reasons.append(f"{item.where}: its subjects do not include {item.digest}")
            continue
        eligible.append((_recorded(manifest), -index, item.where, keyids, subjects, manifest))
    if not eligible:
        return None, reasons
    _, _, where, keyids, subjects, manifest = max(eligible, key=lambda e: (e[0], e[1]))
    return Choice(where, keyids, subjects, manifest, trusted=len(eligible)), reasons


def _first(reasons: Sequence[str], shown: int = SHOWN) -> str:
    """The first ``shown`` reasons, and how many more (a check's message is at most 4 KiB)."""
    listed = "; ".join(r[:400] for r in reasons[:shown])
    return listed + (f"; and {len(reasons) - shown} more" if len(reasons) > shown else "")


def _from_registry(image: str) -> list[Attestation]:
    """The envelopes next to ``image``; an image the registry does not have is an error.

    Raises:
        RegistryError: the registry cannot be reached, answers garbage, or has no such image.
    """
    from lockd.gate import envelopes_from_registry
    from lockd.trust.registry import Registry, RegistryError, parse_ref

    found = [
        Attestation(where, image.rpartition("@")[2], e)
        for where, e in envelopes_from_registry(image)
    ]
    if not found:  # none: is the image there at all? (only asked on this path)
        ref = parse_ref(image)
        if Registry(ref.host).manifest(ref.repository, ref.digest) is None:
            raise RegistryError(
                f"{image}: the registry has no such image (404); the target's image was not "
                "pushed there, or was deleted"
            )
    return found


def _service_holds(client: Client, observation: Observation) -> bool:
    from lockd.trust.statement import subjects_for

    return any(
        client.manifests_for("sha256:" + s.digest["sha256"]) for s in subjects_for(observation)
    )


def verify_attested(
    observation: Observation,
    trusted: Trust | Sequence[PublicKey],
    policy: Policy,
    *,
    client: Client | None = None,
    fetch: Callable[[str], list[Attestation]] = _from_registry,
) -> Report:
    """Verify ``observation`` against the newest trusted manifest for its image: the service's
    (with ``client``, as ``verify_remote``) when it holds one, else the registry's. With
    ``client`` the report is pushed to the service.

    A target with no attestation, or none signed by a trusted key naming its image, is not
    verified: the ``signature`` check fails saying why and the others are skipped.

    Raises:
        InputError: the target has no image in a registry lockd can read.
        RegistryError: a registry cannot be reached, answers garbage or lacks the image (exit 3).
        ServerError: the service cannot be reached or refuses.
    """
    from lockd.judgement.reporting import report_for
    from lockd.model.report import Check
    from lockd.verify import check_signature_for

    if client is not None and _service_holds(client, observation):
        from lockd.client import verify_remote

        return verify_remote(client, observation, trusted, policy)
    images = registry_images(observation)
    found = [a for image in images for a in fetch(image)]
    choice, reasons = choose(found, trusted)
    where = ", ".join(images)
    if choice is None:
        if not found:
            why = (
                f"no lockd attestation is stored next to {where}; record the image and attach "
                "the manifest there (lockd attach IMAGE@DIGEST ENVELOPE)"
            )
        else:
            why = (
                f"none of the {len(found)} attestation(s) next to {where} is signed by a "
                f"trusted key and names the image: {_first(reasons)}"
            )
        signature = Check(id="signature", status="fail", evidence="signature", message=why)
        report = report_for(observation, where, signature, [], None, policy)
    else:
        signature = check_signature_for(
            choice.keyids, f"the newest of {choice.trusted} trusted attestation(s) in the registry"
        )
        statement = (choice.subjects, choice.manifest)
        report = report_for(observation, choice.where, signature, choice.keyids, statement, policy)
    if client is not None:
        client.push_report(report)
    return report
