"""``isolation`` (host evidence, ``warn`` by default): whether every process of the container has
its root, and whether the daemon gave the container the means to reach the host."""

from __future__ import annotations

from lockd.judgement.checks.interface import skipped, under_policy
from lockd.judgement.policy import Policy
from lockd.model.host import HostEvidence
from lockd.model.manifest import Observation
from lockd.model.report import Check, Finding

_REACHES_HOST = frozenset({"SYS_ADMIN", "CAP_SYS_ADMIN", "ALL"})


def isolation_findings(observed: HostEvidence) -> list[Finding]:
    """What the kernel's view says of the container's isolation: processes whose root is not
    the container's (chroot, pivot_root: sshd's privilege separation, browser sandboxes, or a
    decoy), a container that can reach the host (--privileged, CAP_SYS_ADMIN: nothing is
    guaranteed for it), a view the host could not read whole."""
    findings = []
    kernel = observed.kernel
    if kernel is None:
        findings.append(
            Finding(
                kind="unreadable",
                message="the host could not read the container's processes (not root, another "
                "host's daemon, or a lockd that did not record them): mounts made inside it and "
                "foreign roots are not seen",
            )
        )
    else:
        if kernel.incomplete is not None:
            findings.append(Finding(kind="unreadable", message=kernel.incomplete))
        findings += [
            Finding(
                kind="foreign-root",
                name=f.command,
                path=f.root,
                observed=f"pid {f.pid}",
                message=f.why,
            )
            for f in kernel.foreign_roots
        ]
    if observed.privileged:
        findings.append(
            Finding(kind="privileged", message="--privileged: the container can reach the host")
        )
    findings += [
        Finding(
            kind="capability",
            name=cap,
            message=f"{cap} added: the container can mount, and reach the host",
        )
        for cap in observed.cap_add
        if cap.upper() in _REACHES_HOST
    ]
    return findings


def check_isolation(observation: Observation, p: Policy) -> Check:
    """``isolation`` (host evidence; ``warn`` by default): lockd.evidence.kernel's view of the
    container's processes, and whether the daemon gave it the means to escape."""
    observed = observation.host
    if observed is None or observation.target.kind != "container":
        return skipped(
            "isolation",
            "host",
            "isolation is judged for a running container (its namespaces, privileges)",
        )
    findings = isolation_findings(observed)
    return under_policy(
        "isolation",
        p,
        "host",
        findings,
        ok="every process has the container's root; no privilege that reaches the host",
        bad=f"{len(findings)} finding(s) on the container's isolation",
    )
