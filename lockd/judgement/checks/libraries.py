"""``libraries`` (inside): the shared objects the target's processes loaded, against the manifest's
record and on their own (lockd.judgement.libraries)."""

from __future__ import annotations

from lockd.judgement.checks.interface import skipped, under_policy
from lockd.judgement.policy import Policy
from lockd.model.manifest import Manifest, Observation
from lockd.model.report import Check, Finding


def check_libraries(manifest: Manifest, observation: Observation, p: Policy) -> Check:
    """The shared objects the target's processes mapped (after `import torch`; with --gpu after
    the suite) against the manifest's record (added, missing, moved, changed), and what is
    wrong with them on their own (shadowed, unowned, duplicate, modified, deleted, env-version,
    pin-version: lockd.judgement.libraries). A finding of the second kind that the manifest's own
    record already had is reported, marked as known, and does not fail the check: it is how the
    environment was recorded; a new one does."""
    from lockd.judgement.libraries import (
        compare_with_manifest,
        finding_key,
        intrinsic_findings,
        library_findings,
        manifest_records,
        records,
        summary,
    )

    recorded = manifest_records(manifest)
    if not recorded:
        return skipped("libraries", "inside", "the manifest records no mapped libraries")
    seen = records(observation)
    if not seen:
        probe = observation.probe
        why = (
            "the probe did not run"
            if probe is None
            else "torch is not installed here"
            if probe.torch is None
            else "the target made no record (LOCKD_PROBE_LIBRARIES=0?)"
        )
        finding = Finding(kind="not-recorded", message=why)
        return under_policy("libraries", p, "inside", [finding], ok="", bad=f"no record: {why}")
    errors = [
        Finding(kind="error", name=r.scope, message=r.error) for r in seen if r.error is not None
    ]
    failing = errors + compare_with_manifest(manifest, observation)
    probe = manifest.observation.probe
    known = set()
    if probe is not None:
        mine = manifest_records(manifest, observation.gpu_suite)
        known = {finding_key(f) for f in intrinsic_findings(probe, mine, manifest.lock)}
    reported: list[Finding] = []
    for f in library_findings(observation, manifest.lock):
        if finding_key(f) in known:
            note = "known: the manifest's own record has it too; " + (f.message or "")
            reported.append(f.model_copy(update={"message": note}))
        else:
            failing.append(f)
    kinds: dict[str, int] = {}
    for f in failing:
        kinds[f.kind] = kinds.get(f.kind, 0) + 1
    counted = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    also = f"; {len(reported)} known finding(s) as recorded" if reported else ""
    return under_policy(
        "libraries",
        p,
        "inside",
        failing + reported,
        ok="; ".join(summary(r) for r in seen) + ": as recorded" + also,
        bad=f"{len(failing)} finding(s) on the libraries the process loaded: {counted}{also}",
        failed=bool(failing),
    )
