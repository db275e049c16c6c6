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

from lockd.judgement.compare import compare, verified
from lockd.judgement.policy import (
    DEFAULT_VOLATILE,
    Checks,
    FilesystemPolicy,
    PackagesPolicy,
    Policy,
    load_policy,
)
from lockd.model.host import EMPTY_SHA256, KernelMount, KernelView, TargetInfo
from lockd.model.manifest import Observation
from lockd.model.report import Check

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
        "workload",
        "isolation",
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


def file(path: str, kind: str = "added", sha: str = "1" * 64, **more: object) -> FileChange:
    """A change as lockd reads it on the host: with content."""
    fields: dict[str, object] = {"type": "file", "mode": 0o644, "uid": 0, "gid": 0, "size": 12}
    fields.update(more)
    return FileChange(path=path, kind=kind, sha256=sha, **fields)  # type: ignore[arg-type]


def with_content(changes: list[FileChange], **more: object) -> Observation:
    return observation(host_evidence=host(changes=changes, changes_content=True, **more))


def filesystem(recorded: Observation, seen: Observation, policy: Policy = STRICT) -> Check:
    return by_id(compare(manifest(recorded), seen, policy))["filesystem"]


def test_filesystem_denies_by_default() -> None:
    changes = [
        file(f"{SITE}/idna/core.py", "changed"),
        FileChange(path=f"{SITE}/six.py", kind="deleted"),
        file(f"{SITE}/tomli/__init__.py"),
        file(f"{SITE}/sitecustomize.py"),
        file("/etc/ld.so.preload"),
        file("/usr/local/bin/pip", "changed"),
        file("/tmp/scratch"),
        file("/root/.cache/pip/http/x"),
        file(f"{SITE}/idna/__pycache__/core.cpython-311.pyc"),
        file("/etc/hostname", "added", sha=EMPTY_SHA256, size=0),
    ]
    hostname = KernelMount(
        mount_point="/etc/hostname", fstype="ext4", source="/dev/x", root="/h", declared="runtime"
    )
    seen = with_content(changes, kernel=KernelView(processes=1, namespaces=1, mounts=[hostname]))
    check = filesystem(with_content([]), seen)
    assert check.status == "fail"
    assert check.evidence == "host"
    assert [(f.kind, f.path) for f in check.findings] == [
        ("added", "/etc/ld.so.preload"),
        ("changed", f"{SITE}/idna/core.py"),
        ("added", f"{SITE}/sitecustomize.py"),
        ("deleted", f"{SITE}/six.py"),
        ("added", f"{SITE}/tomli/__init__.py"),
        ("changed", "/usr/local/bin/pip"),
        ("runtime", "/etc/hostname"),
    ]
    assert check.message == (
        "6 finding(s): 3 added, 2 changed, 1 deleted (read from the overlay upper directory; "
        "1 made by the container runtime (listed, not drift); 3 under volatile places)"
    )


def test_changes_recorded_with_the_same_content_are_expected() -> None:
    changes = [file(f"{SITE}/idna/core.py", "changed"), file(f"{SITE}/extra.py")]
    check = filesystem(with_content(changes), with_content(changes))
    assert check.status == "pass"
    assert check.message == (
        "no changes outside the volatile places but those recorded, with the same content "
        "(read from the overlay upper directory)"
    )


@pytest.mark.parametrize(
    ("now", "observed"),
    [
        (file(f"{SITE}/extra.py", sha="2" * 64), f"file 0644 0:0 12 bytes sha256:{'2' * 64}"),
        (file(f"{SITE}/extra.py", mode=0o4755), f"file 4755 0:0 12 bytes sha256:{'1' * 64}"),
        (file(f"{SITE}/extra.py", uid=1000), f"file 0644 1000:0 12 bytes sha256:{'1' * 64}"),
        (
            FileChange(
                path=f"{SITE}/extra.py", kind="added", type="symlink", mode=0o777, uid=0, gid=0,
                target="/tmp/evil.py",
            ),
            "symlink 0777 0:0 -> /tmp/evil.py",
        ),
    ],
)  # fmt: skip
def test_the_same_path_with_other_content_is_changed(now: FileChange, observed: str) -> None:
    check = filesystem(with_content([file(f"{SITE}/extra.py")]), with_content([now]))
    assert check.status == "fail"
    [finding] = check.findings
    assert finding.model_dump(exclude_none=True) == {
        "kind": "changed",
        "path": f"{SITE}/extra.py",
        "expected": f"file 0644 0:0 12 bytes sha256:{'1' * 64}",
        "observed": observed,
        "message": "recorded with other content",
    }


def test_content_the_host_cannot_read_is_unverified_never_a_pass() -> None:
    recorded = with_content(
        [file(f"{SITE}/extra.py"), FileChange(path="/etc/motd", kind="deleted")]
    )
    seen = observation(
        host_evidence=host(
            changes=[
                FileChange(path=f"{SITE}/extra.py", kind="added"),
                FileChange(path="/etc/motd", kind="deleted"),
            ],
            changes_source="api",
        )
    )
    check = filesystem(recorded, seen)
    assert check.status == "fail"
    [finding] = check.findings  # a deletion needs no content
    assert finding.model_dump(exclude_none=True) == {
        "kind": "unverified",
        "path": f"{SITE}/extra.py",
        "expected": f"file 0644 0:0 12 bytes sha256:{'1' * 64}",
        "message": "content unverified: recorded with content, but lockd could not read this "
        "container's (not root, or a storage driver without an upper directory)",
    }
    assert "read from the daemon's changes API" in check.message
    audit = filesystem(recorded, seen, load_policy("audit"))
    assert audit.status == "warn"


def test_a_manifest_without_content_compares_names_and_says_what_it_lacks() -> None:
    """Predicate v1 manifests hold changes by name only: a recorded change cannot be
    vouched for by content, so it is `unverified` (fails under the strict policy); a manifest
    that recorded no changes needs no content, and new changes are drift as ever."""
    v1 = observation(host_evidence=host(changes=[FileChange(path=f"{SITE}/x.py", kind="added")]))
    seen = with_content([file(f"{SITE}/x.py")])
    check = filesystem(v1, seen)
    assert check.status == "fail"
    [finding] = check.findings
    assert (finding.kind, finding.path, finding.observed) == (
        "unverified",
        f"{SITE}/x.py",
        f"file 0644 0:0 12 bytes sha256:{'1' * 64}",
    )
    assert finding.message == (
        "content unverified: the manifest recorded this change by name only (predicate v1, or "
        "recorded through the daemon's changes API); record it again"
    )
    empty_v1 = observation(host_evidence=host())
    assert filesystem(empty_v1, with_content([])).status == "pass"
    assert [f.path for f in filesystem(empty_v1, seen).findings] == [f"{SITE}/x.py"]


def test_a_recorded_change_that_is_gone_is_reverted() -> None:
    check = filesystem(with_content([file("/etc/app.conf")]), with_content([]))
    assert check.status == "fail"
    [finding] = check.findings
    assert finding.model_dump(exclude_none=True) == {
        "kind": "reverted",
        "path": "/etc/app.conf",
        "expected": f"added: file 0644 0:0 12 bytes sha256:{'1' * 64}",
        "message": "recorded as added, no longer changed: the image's content is back",
    }


def test_more_changes_than_lockd_reads_fail_and_listing_is_capped() -> None:
    many = [file(f"/srv/f{i:05}") for i in range(1500)]
    check = filesystem(with_content([]), with_content(many, changes_truncated=True))
    assert check.status == "fail"
    assert len(check.findings) == 1000
    assert check.message == (
        "1501 finding(s): 1500 added, 1 truncated (read from the overlay upper directory; "
        "501 more finding(s) not listed)"
    )


def test_a_policy_that_still_watches_says_so() -> None:
    narrowing = Policy(filesystem=FilesystemPolicy(watch=["**/site-packages/**"]))
    seen = with_content([file("/etc/ld.so.preload")])
    check = filesystem(with_content([]), seen, narrowing)
    assert check.status == "pass"
    [note] = check.findings
    assert (note.kind, note.message) == (
        "narrowed",
        "this policy watches only 1 pattern(s) (**/site-packages/**): changes elsewhere are "
        "not checked",
    )
    assert "this policy watches only some paths (filesystem.watch)" in check.message


def test_a_place_lockd_does_not_read_fails_when_the_policy_checks_it() -> None:
    fewer = [p for p in DEFAULT_VOLATILE if p != "/tmp/**"]
    policy = Policy(filesystem=FilesystemPolicy(volatile=fewer))
    seen = with_content([], changes_skipped=["/tmp/**", "/var/log/**"])
    check = filesystem(with_content([]), seen, policy)
    [finding] = check.findings
    assert (finding.kind, finding.path) == ("unchecked", "/tmp/**")
    assert finding.message is not None and "add it to filesystem.volatile" in finding.message
    assert check.status == "fail"
    assert filesystem(with_content([]), seen, Policy()).status == "pass"


def test_a_policy_adds_volatile_places_and_variables_resolve_from_the_container() -> None:
    seen = with_content(
        [file("/srv/scratch/a"), file("/data/hf/hub/x"), file("/usr/share/x")],
        config_env={"HF_HOME": "/data/hf", "TRITON_CACHE_DIR": "/usr/share"},
    )
    policy = Policy(filesystem=FilesystemPolicy(ignore=["/srv/scratch/**"]))
    check = filesystem(with_content([]), seen, policy)
    assert [(f.kind, f.path) for f in check.findings] == [("added", "/usr/share/x")]
    assert "not taken as volatile: TRITON_CACHE_DIR=/usr/share: at, in or above /usr" in (
        check.message
    )


def test_a_module_on_a_python_path_under_tmp_is_not_volatile() -> None:
    python = probe().python
    on_tmp = observation(
        host_evidence=host(changes_content=True),
        report=probe(python=python.model_copy(update={"path": [*python.path, "/tmp/lib"]})),
    )
    seen = with_content([file("/tmp/lib/sitecustomize.py"), file("/tmp/other")])
    check = filesystem(on_tmp, seen)
    assert [(f.kind, f.path) for f in check.findings] == [("added", "/tmp/lib/sitecustomize.py")]


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


def test_a_python_environment_where_lockd_does_not_read_fails() -> None:
    """A virtualenv under ~/.cache (Poetry's default): the walk does not descend there, so its
    changes would never be seen; that is a finding, not a pass."""
    venv = "/root/.cache/pypoetry/virtualenvs/app-1/lib/python3.11/site-packages"
    python = probe().python
    recorded = observation(
        host_evidence=host(changes_content=True),
        report=probe(python=python.model_copy(update={"path": [*python.path, venv]})),
    )
    seen = with_content([], changes_skipped=[p for p in DEFAULT_VOLATILE if p[0] != "!"])
    check = filesystem(recorded, seen)
    assert check.status == "fail"
    [finding] = check.findings
    assert (finding.kind, finding.path) == ("unread", venv)
    assert finding.message == (
        "Python imports from here, but lockd does not read changes below /root/.cache "
        "(volatile by default): they cannot be checked; keep Python environments out of the "
        "volatile places"
    )
    assert filesystem(observation(host_evidence=host(changes_content=True)), seen).status == "pass"
