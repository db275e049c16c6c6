from __future__ import annotations

import pytest
from observations import (
    OTHER_IMAGE,
    SITE,
    FileChange,
    Mount,
    dist,
    host,
    manifest,
    observation,
    probe,
)

from lockd.compare import compare, verified
from lockd.model import Check, Observation, TargetInfo
from lockd.policy import Checks, PackagesPolicy, Policy, load_policy

STRICT = Policy()


def by_id(checks: list[Check]) -> dict[str, Check]:
    return {c.id: c for c in checks}


def test_identical_environment_passes_every_check() -> None:
    checks = compare(manifest(), observation(), STRICT)
    assert [c.id for c in checks] == [
        "image",
        "packages",
        "filesystem",
        "python",
        "env",
        "system",
        "lock",
        "cuda",
        "driver",
        "gpu",
        "integrity",
        "coherence",
        "libraries",
    ]
    assert {c.status for c in checks} == {"pass", "skip"}
    assert by_id(checks)["lock"].status == "skip"
    assert by_id(checks)["integrity"].status == "skip"
    assert verified(checks)


def test_another_image_with_the_same_distributions_fails_image() -> None:
    checks = by_id(
        compare(manifest(), observation(host_evidence=host(image_id=OTHER_IMAGE)), STRICT)
    )
    assert checks["image"].status == "fail"
    assert checks["image"].observed == OTHER_IMAGE
    assert checks["image"].evidence == "host"
    assert checks["packages"].status == "pass"


def test_repo_digest_match_counts_as_the_same_image() -> None:
    digest = "registry.local/app@sha256:" + "d" * 64
    recorded = manifest(observation(host_evidence=host(repo_digests=[digest])))
    seen = observation(host_evidence=host(image_id=OTHER_IMAGE, repo_digests=[digest]))
    assert by_id(compare(recorded, seen, STRICT))["image"].status == "pass"


@pytest.mark.parametrize(
    ("distributions", "finding"),
    [
        (
            [dist("idna", "3.7"), dist("six", "1.16.0"), dist("tomli", "2.0.1")],
            {"kind": "added", "name": "tomli", "observed": "2.0.1", "path": SITE},
        ),
        ([dist("six", "1.16.0")], {"kind": "removed", "name": "idna", "expected": "3.7"}),
        (
            [dist("idna", "3.10"), dist("six", "1.16.0")],
            {"kind": "changed", "name": "idna", "expected": "3.7", "observed": "3.10"},
        ),
        (
            [dist("idna", "3.7", record="2" * 64), dist("six", "1.16.0")],
            {"kind": "modified", "name": "idna", "expected": "3.7", "observed": "3.7"},
        ),
    ],
)
def test_package_drift(distributions: list, finding: dict[str, str]) -> None:
    seen = observation(report=probe(distributions=distributions))
    check = by_id(compare(manifest(), seen, STRICT))["packages"]
    assert check.status == "fail"
    assert check.evidence == "inside"
    [found] = check.findings
    assert found.model_dump(exclude_none=True, exclude={"message"}) == finding


def test_ignored_packages_and_warn_level() -> None:
    seen = observation(report=probe(distributions=[dist("six", "1.16.0")]))
    ignoring = Policy(packages=PackagesPolicy(ignore=["idna"]))
    assert by_id(compare(manifest(), seen, ignoring))["packages"].status == "pass"
    warning = Policy(checks=Checks(packages="warn"))
    checks = compare(manifest(), seen, warning)
    assert by_id(checks)["packages"].status == "warn"
    assert verified(checks)
    skipping = Policy(checks=Checks(packages="ignore"))
    assert by_id(compare(manifest(), seen, skipping))["packages"].status == "skip"


def test_filesystem_changes_under_watched_paths_only() -> None:
    changes = [
        FileChange(path=f"{SITE}/idna/core.py", kind="changed"),
        FileChange(path=f"{SITE}/six.py", kind="deleted"),
        FileChange(path=f"{SITE}/tomli/__init__.py", kind="added"),
        FileChange(path="/tmp/scratch", kind="added"),
        FileChange(path=f"{SITE}/idna/__pycache__/core.cpython-311.pyc", kind="added"),
        FileChange(path="/etc/hostname", kind="changed"),
    ]
    check = by_id(compare(manifest(), observation(host_evidence=host(changes=changes)), STRICT))[
        "filesystem"
    ]
    assert check.status == "fail"
    assert check.evidence == "host"
    assert [(f.kind, f.path) for f in check.findings] == [
        ("changed", f"{SITE}/idna/core.py"),
        ("deleted", f"{SITE}/six.py"),
        ("added", f"{SITE}/tomli/__init__.py"),
    ]


def test_changes_recorded_in_the_manifest_are_expected() -> None:
    change = FileChange(path=f"{SITE}/idna/core.py", kind="changed")
    recorded = manifest(observation(host_evidence=host(changes=[change])))
    seen = observation(host_evidence=host(changes=[change]))
    assert by_id(compare(recorded, seen, STRICT))["filesystem"].status == "pass"


@pytest.mark.parametrize(
    ("destination", "flagged"),
    [
        (f"{SITE}/idna", True),  # over a package directory
        ("/opt/venv", True),  # shadows the whole environment
        ("/data", False),
        ("/tmp/work", False),
    ],
)
def test_mounts_over_watched_paths(destination: str, flagged: bool) -> None:
    mount = Mount(destination=destination, source="/srv/x", type="bind", rw=True)
    check = by_id(compare(manifest(), observation(host_evidence=host(mounts=[mount])), STRICT))[
        "filesystem"
    ]
    assert (check.status == "fail") is flagged
    if flagged:
        [finding] = check.findings
        assert (finding.kind, finding.path) == ("mount", destination)


def test_env_drift_from_host_configuration_and_inside() -> None:
    seen = observation(
        host_evidence=host(
            config_env={"PATH": "/x", "CUDA_HOME": "/usr/local/cuda", "LD_LIBRARY_PATH": "/evil"}
        ),
        report=probe(env={"CUDA_HOME": "/usr/local/cuda", "LD_LIBRARY_PATH": "/evil"}),
    )
    check = by_id(compare(manifest(), seen, STRICT))["env"]
    assert check.status == "fail"
    assert check.evidence == "host+inside"
    [finding] = check.findings  # one finding, not one per evidence source
    assert (finding.kind, finding.name, finding.observed) == ("added", "LD_LIBRARY_PATH", "/evil")
    assert finding.message == "container configuration (host)"


def test_env_ignores_unselected_and_visible_devices() -> None:
    seen = observation(
        host_evidence=host(
            config_env={
                "PATH": "/other",
                "CUDA_HOME": "/usr/local/cuda",
                "CUDA_VISIBLE_DEVICES": "1",
            }
        )
    )
    assert by_id(compare(manifest(), seen, STRICT))["env"].status == "pass"


def test_python_and_system_drift() -> None:
    report = probe()
    changed = report.model_copy(
        update={
            "python": report.python.model_copy(update={"version": "3.11.9"}),
            "os": report.os.model_copy(update={"glibc": "2.41"}),
        }
    )
    checks = by_id(compare(manifest(), observation(report=changed), STRICT))
    assert [(f.name, f.expected, f.observed) for f in checks["python"].findings] == [
        ("version", "3.11.2", "3.11.9")
    ]
    assert [(f.name, f.observed) for f in checks["system"].findings] == [("glibc", "2.41")]


def test_target_without_python_is_a_finding_not_a_crash() -> None:
    seen = Observation(
        target=TargetInfo(kind="container", ref="app-1"),
        host=host(),
        probe=None,
        probe_error="no Python interpreter found in the container (tried python3, python)",
    )
    checks = by_id(compare(manifest(), seen, STRICT))
    assert checks["image"].status == "pass"  # host-side checks still run
    assert checks["filesystem"].status == "pass"
    assert checks["packages"].status == "fail"
    assert checks["packages"].findings[0].kind == "probe-missing"
    assert "no Python interpreter" in checks["packages"].message
    assert not verified(checks.values())


def test_local_targets_skip_host_checks() -> None:
    local = Observation(target=TargetInfo(kind="local", ref="/usr/bin/python3"), probe=probe())
    recorded = manifest(local)
    checks = by_id(compare(recorded, local, STRICT))
    assert checks["image"].status == "skip"
    assert checks["filesystem"].status == "skip"
    assert checks["packages"].status == "pass"
    assert verified(checks.values())


def test_container_against_a_local_manifest_fails_image() -> None:
    local = Observation(target=TargetInfo(kind="local", ref="/usr/bin/python3"), probe=probe())
    check = by_id(compare(manifest(local), observation(), STRICT))["image"]
    assert check.status == "fail"
    assert "recorded from a local environment" in check.message


def test_audit_policy_never_fails() -> None:
    audit = load_policy("audit")
    seen = observation(
        host_evidence=host(image_id=OTHER_IMAGE),
        report=probe(distributions=[dist("six", "1.17.0")]),
    )
    checks = compare(manifest(), seen, audit)
    assert {c.status for c in checks} == {"warn", "pass", "skip"}  # skip: no lock
    assert verified(checks)
