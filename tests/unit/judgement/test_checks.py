"""One registry of checks (lockd.judgement.checks) serves compare(), the policy, the skipped checks of an
untrusted manifest and every Report builder (lockd.judgement.reporting)."""

from __future__ import annotations

from pathlib import Path

import yaml

from lockd.judgement.checks import CHECK_IDS, COMPARED, REGISTRY, SIGNATURE
from lockd.judgement.compare import RUNNERS, compare
from lockd.judgement.policy import Policy, load_policy
from lockd.judgement.reporting import (
    UNTRUSTED,
    build_report,
    report_for,
    skipped_checks,
    target_summary,
)
from lockd.model.host import TargetInfo
from lockd.model.manifest import Manifest, Observation
from lockd.model.report import Check, ReportManifest

SHIPPED = Path(__file__).resolve().parents[3] / "lockd" / "policies"
SIGNED = Check(id="signature", status="pass", evidence="signature", message="signed")
FAILED = Check(id="signature", status="fail", evidence="signature", message="bad signature")


def _local(ref: str = "here") -> Observation:
    return Observation(target=TargetInfo(kind="local", ref=ref))


def _manifest() -> Manifest:
    return Manifest(lockd_version="0", recorded_at="2026-12-07T00:00:00Z", observation=_local())


def test_the_registry_starts_with_the_signature_and_compare_runs_the_rest() -> None:
    assert CHECK_IDS[0] == SIGNATURE
    assert CHECK_IDS[1:] == COMPARED
    assert set(RUNNERS) == set(COMPARED)
    checks = compare(_manifest(), _local(), Policy())
    assert [c.id for c in checks] == list(COMPARED)


def test_every_shipped_policy_names_every_check_in_registry_order() -> None:
    for path in sorted(SHIPPED.glob("*.yaml")):
        listed = yaml.safe_load(path.read_text(encoding="utf-8"))["checks"]
        assert list(listed) == list(CHECK_IDS), path.name
        assert load_policy(str(path)).checks.model_dump().keys() == set(CHECK_IDS)


def test_the_default_policy_takes_each_checks_default_level() -> None:
    levels = Policy().checks.model_dump()
    assert levels == {kind.id: kind.default for kind in REGISTRY.values()}


def test_an_untrusted_manifest_skips_every_other_check() -> None:
    assert [c.id for c in skipped_checks()] == list(COMPARED)
    report = build_report(
        {"kind": "local", "ref": "here"},
        FAILED,
        ReportManifest(path="m.json", keyid="abc"),
        (_manifest(), _local()),
        Policy(),
    )
    assert report.verified is False
    assert [c.id for c in report.checks] == list(CHECK_IDS)
    assert {c.status for c in report.checks[1:]} == {"skip"}
    assert {c.message for c in report.checks[1:]} == {UNTRUSTED}
    assert report.manifest == ReportManifest(path="m.json")  # nothing of an untrusted manifest


def test_nothing_to_compare_is_not_verified_even_with_a_good_signature() -> None:
    report = build_report({}, SIGNED, ReportManifest(path="m.json"), None, Policy())
    assert report.verified is False
    assert [c.status for c in report.checks] == ["pass"] + ["skip"] * len(COMPARED)


def test_a_trusted_manifest_is_compared_and_named_fully() -> None:
    observation = _local().model_copy(update={"probe_reused_from": "2026-12-06T00:00:00Z"})
    report = report_for(observation, "m.json", SIGNED, ["k1", "k2"], ([], _manifest()), Policy())
    assert report.verified is True
    assert report.manifest == ReportManifest(path="m.json", subject=[], keyid="k1")
    assert report.target == {
        "kind": "local",
        "ref": "here",
        "probe_reused_from": "2026-12-06T00:00:00Z",
    }
    assert report.target == target_summary(observation.target, observation)
