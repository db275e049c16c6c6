"""``image`` (host evidence): the target's image is one the manifest names as its subject."""

from __future__ import annotations

from lockd.judgement.checks.interface import skipped, under_policy
from lockd.judgement.policy import Policy
from lockd.model.host import HostEvidence
from lockd.model.report import Check


def _sha(digest: str) -> str:
    return digest.rpartition("@")[2].removeprefix("sha256:")


def check_image(expected: HostEvidence | None, observed: HostEvidence | None, p: Policy) -> Check:
    if observed is None:
        return skipped(
            "image", "host", "a local environment or a host process has no image to compare"
        )
    if expected is None:
        return under_policy(
            "image",
            p,
            "host",
            [],
            ok="",
            bad="the manifest was recorded from a local environment or a process, not an image",
            observed=observed.image_id,
            failed=True,
        )
    recorded = {_sha(expected.image_id)} | {_sha(d) for d in expected.repo_digests}
    seen = {_sha(observed.image_id)} | {_sha(d) for d in observed.repo_digests}
    return under_policy(
        "image",
        p,
        "host",
        [],
        ok=f"image {observed.image_id[:19]} is the recorded image",
        bad=f"image {observed.image_id[:19]} is not the recorded image {expected.image_id[:19]}",
        expected=expected.image_id,
        observed=observed.image_id,
        failed=not recorded & seen,
    )
