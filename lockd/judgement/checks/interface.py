"""What every check family shares: a check's status under the policy, a skip, the probe needed
on both sides, and the Runner type by which compare() (lockd.judgement.compare) calls each family.

One module per check family beside it (image, packages, filesystem, isolation, environment, lock,
gpu, integrity, coherence, libraries), each a pure function of the manifest, the observation and
the policy: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from lockd.judgement.policy import Policy
from lockd.model.environment import ProbeReport
from lockd.model.manifest import Manifest, Observation
from lockd.model.report import Check, Evidence, Finding


def under_policy(
    check_id: str,
    policy: Policy,
    evidence: Evidence,
    findings: list[Finding],
    *,
    ok: str,
    bad: str,
    expected: str | None = None,
    observed: str | None = None,
    failed: bool | None = None,
) -> Check:
    """A check's status under the policy: a mismatch fails when required, warns when `warn`."""
    level = policy.level(check_id)
    if level == "ignore":
        return Check(id=check_id, status="skip", evidence=evidence, message="ignored by policy")
    mismatch = bool(findings) if failed is None else failed
    status = ("fail" if level == "required" else "warn") if mismatch else "pass"
    return Check(
        id=check_id,
        status=status,
        evidence=evidence,
        message=bad if mismatch else ok,
        expected=expected,
        observed=observed,
        findings=findings,
    )


def skipped(check_id: str, evidence: Evidence, why: str) -> Check:
    return Check(id=check_id, status="skip", evidence=evidence, message=why)


def inside_check(
    check_id: str,
    expected: ProbeReport | None,
    observed: Observation,
    build: Callable[[ProbeReport, ProbeReport], Check],
) -> Check:
    """Checks that need the probe on both sides; a missing probe is itself a finding."""
    if observed.probe is None:
        if expected is None:
            return skipped(check_id, "inside", "no Python in the recorded environment or target")
        why = observed.probe_error or "the probe did not run"
        return Check(
            id=check_id,
            status="fail",
            evidence="inside",
            message=f"cannot look inside the target: {why}",
            findings=[Finding(kind="probe-missing", message=why)],
        )
    if expected is None:
        return Check(
            id=check_id,
            status="fail",
            evidence="inside",
            message="the manifest recorded no Python environment, the target has one",
        )
    return build(expected, observed.probe)


def changed_fields(want: object, have: object, fields: Iterable[str]) -> list[Finding]:
    return [
        Finding(kind="changed", name=f, expected=getattr(want, f), observed=getattr(have, f))
        for f in fields
        if getattr(want, f) != getattr(have, f)
    ]


Runner = Callable[[Manifest, Observation, Policy], Check]


def on_probes(check_id: str, run: Callable[[ProbeReport, ProbeReport, Policy], Check]) -> Runner:
    """A check of two probe reports, skipped where either has none."""
    return lambda m, o, p: inside_check(
        check_id, m.observation.probe, o, lambda want, have: run(want, have, p)
    )
