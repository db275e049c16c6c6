"""``filesystem`` (host evidence): what changed in the container since its image, judged against
the record (lockd.judgement.filechanges), and mounts that shadow code: those the daemon made over
a watched place and those made inside the container, which only the kernel lists."""

from __future__ import annotations

from lockd.judgement.checks.interface import skipped, under_policy
from lockd.judgement.policy import Policy, shadows_code
from lockd.model.host import HostEvidence
from lockd.model.manifest import Manifest
from lockd.model.report import Check, Finding


def _mount_shadows(destination: str, manifest: Manifest, p: Policy) -> bool:
    if shadows_code(destination, p.filesystem):
        return True
    probe = manifest.observation.probe
    if probe is None:
        return False
    inside = [d.location for d in probe.distributions]
    inside += [probe.python.prefix, probe.python.base_prefix, *probe.python.path]
    prefix = destination.rstrip("/") + "/"
    return any(place == destination or place.startswith(prefix) for place in inside)


def check_filesystem(manifest: Manifest, observed: HostEvidence | None, p: Policy) -> Check:
    if observed is None:
        return skipped(
            "filesystem",
            "host",
            "a local environment or a host process has no image whose files to compare",
        )
    recorded = manifest.observation.host
    recorded_mounts = (
        {(m.destination, m.source, m.type) for m in recorded.mounts} if recorded else set()
    )
    from lockd.judgement.filechanges import judge_changes, summary

    judged = judge_changes(manifest, observed, p)
    findings = [
        Finding(
            kind="mount",
            path=m.destination,
            observed=f"{m.type} {m.source}",
            message=f"{'read-write' if m.rw else 'read-only'} mount over a watched path",
        )
        for m in observed.mounts
        if (m.destination, m.source, m.type) not in recorded_mounts
        and _mount_shadows(m.destination, manifest, p)
    ]
    findings += kernel_mount_findings(observed)
    source = {
        "overlay": "the overlay upper directory",
        "api": "the daemon's changes API",
        "none": "a fresh container of the image",
    }[observed.changes_source]
    ok, bad = summary(judged, findings, source)
    return under_policy(
        "filesystem",
        p,
        "host",
        judged.listed(findings),
        ok=ok,
        bad=bad,
        failed=bool(judged.failing or findings),
    )


def kernel_mount_findings(observed: HostEvidence) -> list[Finding]:
    """The mounts the kernel lists in the container's namespaces that nobody asked the daemon
    for (lockd.evidence.kernel): a mount made inside the container hides what lies below it from
    every other check. Each one, whatever it covers: its content is not evidence lockd compares."""
    if observed.kernel is None:
        return []
    return [
        Finding(
            kind="mount",
            path=m.mount_point,
            observed=f"{m.fstype} {m.source}",
            message=f"{m.fstype} mounted inside the container (not among the daemon's mounts)",
        )
        for m in observed.kernel.mounts
        if m.declared is None
    ]
