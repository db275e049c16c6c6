"""Manifests of predicate v1 (changes by name only) and v2 (no workload) are still read, and
their verdict is defined: what they recorded is compared by name, and each recorded change they
hold no content for is `unverified` (fails under the strict policy, warns under audit); a
manifest without a workload (v1, v2, or v3 recorded from an image) has the `workload` check
judge only what needs no record, and say so. v3 carries the workload (#17)."""

from __future__ import annotations

import json

from observations import SITE, host, manifest, observation

from lockd.judgement.compare import compare
from lockd.judgement.policy import Policy, load_policy
from lockd.model.host import FileChange
from lockd.model.manifest import PREDICATE_TYPE, PREDICATE_TYPES, Manifest
from lockd.model.workload import MappedFile, Workload, WorkloadProcess
from lockd.trust.statement import make_statement, parse_statement

V1 = "https://lockd.dev/manifest/v1"
V2 = "https://lockd.dev/manifest/v2"
LIBZ = "/usr/lib/x86_64-linux-gnu/libz.so.1.2.13"
PYTHON = "/usr/bin/python3.11"


def as_v1(payload: bytes) -> bytes:
    """A statement as lockd wrote it before content was kept: predicate v1, no content."""
    data = json.loads(payload)
    data["predicateType"] = V1
    host_data = data["predicate"]["observation"]["host"]
    for key in ("changes_content", "changes_truncated", "changes_skipped", "gpus_requested"):
        host_data.pop(key, None)
    return json.dumps(data).encode()


def test_v3_is_written_and_v2_and_v1_still_read() -> None:
    assert PREDICATE_TYPE == "https://lockd.dev/manifest/v3"
    assert PREDICATE_TYPES == (PREDICATE_TYPE, V2, V1)
    change = FileChange(path=f"{SITE}/extra.py", kind="added")
    recorded = manifest(observation(host_evidence=host(changes=[change])))
    assert json.loads(make_statement(recorded))["predicateType"] == PREDICATE_TYPE
    _, parsed = parse_statement(as_v1(make_statement(recorded)), "old.json")
    assert parsed.observation.host is not None
    assert parsed.observation.host.changes == [change]
    assert parsed.observation.host.changes_content is False


def test_the_verdict_of_a_v1_manifest() -> None:
    change = FileChange(path=f"{SITE}/extra.py", kind="added")
    _, old = parse_statement(
        as_v1(make_statement(manifest(observation(host_evidence=host(changes=[change]))))),
        "old.json",
    )
    seen = observation(
        host_evidence=host(
            changes=[
                FileChange(
                    path=f"{SITE}/extra.py", kind="added", type="file", mode=0o644, uid=0, gid=0,
                    size=3, sha256="5" * 64,
                ),
                FileChange(
                    path="/etc/ld.so.preload", kind="added", type="file", mode=0o644, uid=0,
                    gid=0, size=3, sha256="6" * 64,
                ),
            ],
            changes_content=True,
        )
    )  # fmt: skip
    [strict] = [c for c in compare(old, seen, Policy()) if c.id == "filesystem"]
    assert strict.status == "fail"
    assert [(f.kind, f.path) for f in strict.findings] == [
        ("added", "/etc/ld.so.preload"),  # not recorded: drift, as ever
        ("unverified", f"{SITE}/extra.py"),  # recorded by name: its content cannot be vouched for
    ]
    [audit] = [c for c in compare(old, seen, load_policy("audit")) if c.id == "filesystem"]
    assert audit.status == "warn"


def running(env: dict[str, str] | None = None, not_examined: str | None = None) -> Workload:
    """A workload of one python process that maps libz (the image's file)."""
    if not_examined is not None:
        return Workload(not_examined=not_examined)
    return Workload(
        files=[MappedFile(path=LIBZ, sha256="a" * 64, executable=True, size=10)],
        processes=[
            WorkloadProcess(
                pid=1,
                started=5,
                executable=PYTHON,
                executable_sha256="b" * 64,
                command=["python3", "-c", "..."],
                group=f"{PYTHON} -c",
                env=env or {},
                files=[0],
            )
        ],
    )


def judged(recorded: Manifest, work: Workload) -> list[tuple[str, str | None]]:
    seen = observation(host_evidence=host()).model_copy(update={"workload": work})
    [found] = [c for c in compare(recorded, seen, Policy()) if c.id == "workload"]
    return [(f.kind, f.name) for f in found.findings]


def test_a_workload_is_signed_in_v3_and_a_v2_manifest_has_none() -> None:
    """The workload round-trips through a v3 statement and is judged against; a v2 statement
    (which lockd wrote before the workload) is read, and the check says it holds no record."""
    recorded = manifest(
        observation(host_evidence=host()).model_copy(update={"workload": running()})
    )
    payload = make_statement(recorded)
    assert json.loads(payload)["predicateType"] == PREDICATE_TYPE
    _, parsed = parse_statement(payload, "new.json")
    assert parsed.observation.workload == running()
    assert judged(parsed, running()) == []  # the recorded group, the recorded files
    assert judged(parsed, Workload()) == [("group-gone", f"{PYTHON} -c")]

    data = json.loads(make_statement(manifest(observation(host_evidence=host()))))
    data["predicateType"] = V2
    _, old = parse_statement(json.dumps(data).encode(), "old.json")
    assert old.observation.workload is None
    assert judged(old, running()) == [("no-record", None)]
    assert judged(old, running({"LD_PRELOAD": LIBZ})) == [
        ("env-added", "LD_PRELOAD"),
        ("no-record", None),
    ]


def test_a_recorded_workload_that_was_not_examined_is_no_record() -> None:
    """A manifest recorded where the workload could not be read (not root, a remote daemon)
    holds a ``not_examined`` workload: nothing is judged against it (no ``group-gone`` for the
    groups it could not see), as if it had none."""
    blind = running(not_examined="pid 7 is not on this host (is the daemon remote?)")
    recorded = manifest(observation(host_evidence=host()).model_copy(update={"workload": blind}))
    _, parsed = parse_statement(make_statement(recorded), "blind.json")
    assert parsed.observation.workload == blind
    assert judged(parsed, running()) == [("no-record", None)]
