"""``integrity`` (host evidence, --deep): the target's installed files against their RECORDs."""

from __future__ import annotations

from lockd.judgement.checks.interface import skipped, under_policy
from lockd.judgement.policy import Policy
from lockd.model.manifest import Observation
from lockd.model.report import Check

_INTEGRITY_SOURCES = {
    "overlay": "the container's overlay merged directory, on the host",
    "layers": "the image's overlay2 layers, on the host",
    "api": "the Docker daemon's archive API",
    "local": "the local filesystem",
}


def check_integrity(observation: Observation, p: Policy) -> Check:
    """The target's installed files against their RECORDs, as --deep hashed them (the check
    needs nothing from the manifest: `packages` already holds each RECORD to the recorded one).
    """
    found = observation.integrity
    if found is None:
        return skipped("integrity", "host", "not checked: --deep hashes every installed file")
    where = _INTEGRITY_SOURCES[found.source]
    if found.reused_from is not None:
        where += (
            f"; the result of {found.reused_from}, taken from lockd's integrity cache: what "
            "the container can see is what was hashed then (in it or in an identical container "
            "of the same image) and its image layers' files are those hashed then, --no-cache "
            "hashes them again"
        )
    elif found.cached:
        where += (
            f"; {found.cached} files from lockd's layer cache: digests of the image's "
            "read-only layers, hashed before, --no-cache hashes them again"
        )
    count = len(found.findings) + found.omitted
    kinds: dict[str, int] = {}
    for f in found.findings:
        kinds[f.kind] = kinds.get(f.kind, 0) + 1
    summary = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    if found.omitted:
        summary += f" ({found.omitted} more not listed)"
    unchecked = ""
    if found.without_record:
        unchecked = f"; {len(found.without_record)} without a RECORD not checked"
    return under_policy(
        "integrity",
        p,
        found.evidence,
        list(found.findings),
        ok=f"{found.files} files of {found.distributions} distributions match their RECORD "
        f"(read from {where}){unchecked}",
        bad=f"{count} finding(s) against the RECORDs: {summary} (read from {where})",
        failed=count > 0,
    )
