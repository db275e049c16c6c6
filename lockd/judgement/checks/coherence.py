"""``coherence`` (inside): the PyTorch family against the installed torch
(lockd.judgement.coherence), and with --deep each member imported inside the target."""

from __future__ import annotations

from operator import attrgetter

from lockd.judgement.checks.interface import skipped, under_policy
from lockd.judgement.policy import Policy
from lockd.model.manifest import Observation
from lockd.model.report import Check, Finding


def coherence_findings(observation: Observation) -> list[Finding]:
    """Every way the target's PyTorch family does not fit its torch (`mismatch`, `variant`,
    `requirement`: lockd.judgement.coherence) and, where the import smoke test ran (--deep), every
    member that failed to import or run its compiled op (`import`)."""
    from lockd.judgement.coherence import evaluate
    from lockd.judgement.locks import marker_environment

    probe = observation.probe
    if probe is None:
        return []
    versions = {d.name: d.version for d in probe.distributions}
    findings = [
        Finding(
            kind=p.kind,
            name=p.name,
            expected=p.expected,
            observed=p.version,
            message=f"{p.message} (source: {p.source})",
        )
        for p in evaluate(versions, marker_environment(probe))
    ]
    imports = observation.family_imports
    if imports is not None:
        if imports.error is not None:
            findings.append(
                Finding(kind="import", message=f"the import smoke test failed: {imports.error}")
            )
        findings += [
            Finding(
                kind="import",
                name=r.name,
                observed=r.version,
                message=f"import {r.module}" + (f" and {r.op}" if r.op else "") + f": {r.error}",
            )
            for r in imports.results
            if not r.ok
        ]
    return findings


def check_coherence(observation: Observation, p: Policy) -> Check:
    """The installed PyTorch family (torchvision, torchaudio, triton, nvidia-*...) against the
    installed torch; with --deep, each member imported and a compiled op run inside the target.
    Needs nothing from the manifest: it judges the target as it is."""
    probe = observation.probe
    if probe is None:
        return skipped("coherence", "inside", "no probe report: nothing to judge")
    if "torch" not in map(attrgetter("name"), probe.distributions):  # a C loop: the hot path
        return skipped("coherence", "inside", "torch is not installed: no PyTorch family to judge")
    from lockd.judgement.coherence import family  # only here: `verify` start-up time matters

    versions = family({d.name: d.version for d in probe.distributions})
    torch = versions.get("torch")
    if torch is None:
        return skipped("coherence", "inside", "torch is not installed: no PyTorch family to judge")
    findings = coherence_findings(observation)
    members = ", ".join(f"{n} {v}" for n, v in versions.items() if n != "torch")
    imports = observation.family_imports
    if imports is None:
        smoke = "import smoke test not run (--deep runs it)"
    else:
        passed = sum(r.ok for r in imports.results)
        smoke = f"import smoke test: {passed} of {len(imports.results)} imported, op run"
    return under_policy(
        "coherence",
        p,
        "inside",
        findings,
        ok=f"torch {torch}" + (f" with {members}" if members else "") + f": coherent; {smoke}",
        bad=f"{len(findings)} finding(s): the PyTorch family does not fit torch {torch} ({smoke})",
    )
