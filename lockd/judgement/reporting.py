"""The one way a Report is built: the signature check, then either every other check of the
registry compared (a trusted manifest) or every one skipped (an untrusted one). The CLI, the
client, the service and the watch agent all build their reports here. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from lockd.judgement.checks import COMPARED
from lockd.judgement.compare import compare, verified
from lockd.model.host import TargetInfo
from lockd.model.manifest import Manifest, Observation
from lockd.model.report import Check, Report, ReportManifest

if TYPE_CHECKING:
    from lockd.judgement.policy import Policy
    from lockd.trust.statement import Subject

UNTRUSTED = "not compared: the manifest's signature is not trusted"


def skipped_checks() -> list[Check]:
    """Every check after ``signature``, skipped: there is no trusted manifest to compare with."""
    return [Check(id=c, status="skip", evidence="signature", message=UNTRUSTED) for c in COMPARED]


def target_summary(info: TargetInfo, observation: Observation | None = None) -> dict[str, object]:
    """How a report names its target: kind and reference, with what the observation adds (the
    image ID, and when the probe's report was taken from the probe cache)."""
    summary: dict[str, object] = {"kind": info.kind, "ref": info.ref}
    if observation is not None and observation.host is not None:
        summary["image_id"] = observation.host.image_id
    if observation is not None and observation.probe_reused_from is not None:
        summary["probe_reused_from"] = observation.probe_reused_from
    return summary


def manifest_reference(
    where: str, subjects: Sequence[Subject], keyids: Sequence[str]
) -> ReportManifest:
    """How a report names a trusted manifest: where it came from, its subjects, the first keyid
    that verified it."""
    return ReportManifest(
        path=where,
        subject=[s.model_dump() for s in subjects],
        keyid=keyids[0] if keyids else None,
    )


def build_report(
    target: dict[str, object],
    signature: Check,
    reference: ReportManifest,
    compared: tuple[Manifest, Observation] | None,
    policy: Policy,
) -> Report:
    """The report on a target: ``signature``, then ``compared`` (the trusted manifest and the
    observation) under ``policy`` — or, where the signature failed or there is nothing to compare
    (None), every other check skipped and the report not verified; the manifest is then named by
    its path alone."""
    if compared is None or signature.status == "fail":
        return Report(
            verified=False,
            target=target,
            manifest=ReportManifest(path=reference.path),
            checks=[signature, *skipped_checks()],
        )
    manifest, observation = compared
    checks = [signature, *compare(manifest, observation, policy)]
    return Report(verified=verified(checks), target=target, manifest=reference, checks=checks)


def report_for(
    observation: Observation,
    where: str,
    signature: Check,
    keyids: Sequence[str],
    statement: tuple[Sequence[Subject], Manifest] | None,
    policy: Policy,
) -> Report:
    """``observation`` against the manifest from ``where``: with its trusted Statement, every
    check; without one (``signature`` says why), the others skipped."""
    subjects, manifest = statement if statement is not None else ((), None)
    return build_report(
        target_summary(observation.target, observation),
        signature,
        manifest_reference(where, subjects, keyids),
        None if manifest is None else (manifest, observation),
        policy,
    )
