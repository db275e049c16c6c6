"""``packages`` (inside): the installed distributions against the recorded ones: added, removed,
changed (version) or modified (same version, another RECORD)."""

from __future__ import annotations

from collections.abc import Sequence

from lockd.judgement.checks.interface import under_policy
from lockd.judgement.policy import Policy
from lockd.model.environment import Distribution, ProbeReport
from lockd.model.report import Check, Finding


def _dist_findings(
    expected: Sequence[Distribution], observed: Sequence[Distribution], ignore: set[str]
) -> list[Finding]:
    if list(map(vars, expected)) == list(map(vars, observed)):
        # The common case, a target as recorded: every field equal, in order (compared in C;
        # the models' own == is far slower), so there is nothing to find.
        return []
    want = {d.name: d for d in expected if d.name not in ignore}
    have = {d.name: d for d in observed if d.name not in ignore}
    findings = []
    for name in sorted(want.keys() | have.keys()):
        w, h = want.get(name), have.get(name)
        if w is None and h is not None:
            findings.append(Finding(kind="added", name=name, observed=h.version, path=h.location))
        elif h is None and w is not None:
            findings.append(Finding(kind="removed", name=name, expected=w.version))
        elif w is not None and h is not None:
            if w.version != h.version:
                findings.append(
                    Finding(kind="changed", name=name, expected=w.version, observed=h.version)
                )
            elif (w.record_sha256, w.files) != (h.record_sha256, h.files):
                findings.append(
                    Finding(
                        kind="modified",
                        name=name,
                        expected=w.version,
                        observed=h.version,
                        message="same version, different RECORD (reinstalled from other files)",
                    )
                )
    return findings


def check_packages(expected: ProbeReport, observed: ProbeReport, p: Policy) -> Check:
    ignore = {n.lower() for n in p.packages.ignore}
    findings = _dist_findings(expected.distributions, observed.distributions, ignore)
    return under_policy(
        "packages",
        p,
        "inside",
        findings,
        ok=f"{len(observed.distributions)} distributions as recorded",
        bad=f"{len(findings)} distribution(s) differ from the manifest",
    )
