"""The kernel's view in the report, without Docker (constructed HostEvidence): a mount made
inside the container fails `filesystem` naming the mount point and filesystem type; foreign
roots, --privileged and CAP_SYS_ADMIN are `isolation` findings (warn by default, a policy can
require them away); a view the host could not read is said, never passed over in silence."""

from __future__ import annotations

import pytest
from observations import host, manifest, observation

from lockd.judgement.checks import COMPARED
from lockd.judgement.checks.filesystem import check_filesystem
from lockd.judgement.checks.isolation import check_isolation
from lockd.judgement.compare import compare, verified
from lockd.judgement.policy import Checks, Policy
from lockd.model.host import ForeignRoot, HostEvidence, KernelMount, KernelView, TargetInfo
from lockd.model.manifest import Observation
from lockd.model.report import Check

DECLARED = [
    KernelMount(mount_point="/", fstype="overlay", source="overlay", root="/", declared="root"),
    KernelMount(mount_point="/proc", fstype="proc", source="proc", root="/", declared="runtime"),
    KernelMount(
        mount_point="/etc/hosts", fstype="ext4", source="/dev/vda", root="/x", declared="runtime"
    ),
]
MADE = KernelMount(
    mount_point="/opt/venv/lib/python3.11/site-packages/idna",
    fstype="tmpfs",
    source="tmpfs",
    root="/",
    declared=None,
)
CLEAN = KernelView(processes=2, namespaces=1, mounts=DECLARED)


def seen(view: KernelView | None, **changes: object) -> HostEvidence:
    return host(kernel=view, **changes)


def isolation(evidence: HostEvidence, policy: Policy | None = None) -> Check:
    return check_isolation(observation(host_evidence=evidence), policy or Policy())


def test_a_clean_view_passes_both_checks() -> None:
    evidence = seen(CLEAN)
    assert check_filesystem(manifest(), evidence, Policy()).status == "pass"
    check = isolation(evidence)
    assert (check.status, check.evidence, check.findings) == ("pass", "host", [])


def test_a_mount_made_inside_fails_the_filesystem_check_naming_point_and_type() -> None:
    view = CLEAN.model_copy(update={"mounts": [*DECLARED, MADE]})
    check = check_filesystem(manifest(), seen(view), Policy())
    assert (check.status, check.evidence) == ("fail", "host")
    [finding] = [f for f in check.findings if f.kind == "mount"]
    assert finding.path == MADE.mount_point
    assert finding.observed == "tmpfs tmpfs"
    assert "tmpfs mounted inside the container" in (finding.message or "")


def test_a_mount_made_inside_fails_even_when_the_recording_had_it() -> None:
    """Its content is not evidence lockd compares: whatever it covers, it fails."""
    view = CLEAN.model_copy(update={"mounts": [*DECLARED, MADE]})
    recorded = manifest(observation(host_evidence=seen(view)))
    assert check_filesystem(recorded, seen(view), Policy()).status == "fail"


@pytest.mark.parametrize(
    "evidence, kinds",
    [
        (
            seen(
                CLEAN.model_copy(
                    update={
                        "foreign_roots": [
                            ForeignRoot(pid=7, command="sshd", root="/run/sshd", why="chroot")
                        ]
                    }
                )
            ),
            ["foreign-root"],
        ),
        (seen(CLEAN, privileged=True), ["privileged"]),
        (seen(CLEAN, cap_add=["NET_ADMIN", "SYS_ADMIN"]), ["capability"]),
        (seen(CLEAN, cap_add=["CAP_SYS_ADMIN"]), ["capability"]),
        (seen(CLEAN, cap_add=["ALL"]), ["capability"]),
        (seen(CLEAN.model_copy(update={"incomplete": "cannot list"})), ["unreadable"]),
        (seen(None), ["unreadable"]),
    ],
    ids=["chroot", "privileged", "sys-admin", "cap-prefix", "all", "incomplete", "no-view"],
)
def test_isolation_findings_warn_by_default_and_fail_when_required(
    evidence: HostEvidence, kinds: list[str]
) -> None:
    check = isolation(evidence)
    assert (check.status, [f.kind for f in check.findings]) == ("warn", kinds)
    assert verified([check])
    strict = Policy(checks=Checks(isolation="required"))
    assert isolation(evidence, strict).status == "fail"
    assert isolation(evidence, Policy(checks=Checks(isolation="ignore"))).status == "skip"


def test_a_foreign_root_finding_names_the_process_and_its_root() -> None:
    foreign = ForeignRoot(pid=1, command="python3", root="/decoy", why="its root is /decoy")
    check = isolation(seen(CLEAN.model_copy(update={"foreign_roots": [foreign]})))
    [finding] = check.findings
    assert (finding.name, finding.path, finding.observed) == ("python3", "/decoy", "pid 1")


def test_only_a_container_is_judged() -> None:
    local = Observation(target=TargetInfo(kind="local", ref="local"))
    assert check_isolation(local, Policy()).status == "skip"


def test_isolation_joins_the_report_and_the_checks_a_bad_signature_skips() -> None:
    ids = [c.id for c in compare(manifest(), observation(host_evidence=seen(CLEAN)), Policy())]
    assert ids[-1] == "isolation"
    assert "isolation" in COMPARED


def test_an_old_manifest_without_a_kernel_view_still_parses() -> None:
    old = {"image_id": "sha256:" + "a" * 64, "mounts": [], "changes": []}
    evidence = HostEvidence.model_validate(old)
    assert (evidence.kernel, evidence.privileged, evidence.cap_add) == (None, False, [])
