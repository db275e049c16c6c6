"""Manifests of predicate v1 (changes by name only) are still read, and their verdict is
defined: what they recorded is compared by name, and each recorded change they hold no content
for is `unverified` (fails under the strict policy, warns under audit)."""

from __future__ import annotations

import json

from observations import SITE, host, manifest, observation

from lockd.judgement.compare import compare
from lockd.judgement.policy import Policy, load_policy
from lockd.model.host import FileChange
from lockd.model.manifest import PREDICATE_TYPE, PREDICATE_TYPES
from lockd.trust.statement import make_statement, parse_statement

V1 = "https://lockd.dev/manifest/v1"


def as_v1(payload: bytes) -> bytes:
    """A statement as lockd wrote it before content was kept: predicate v1, no content."""
    data = json.loads(payload)
    data["predicateType"] = V1
    host_data = data["predicate"]["observation"]["host"]
    for key in ("changes_content", "changes_truncated", "changes_skipped", "gpus_requested"):
        host_data.pop(key, None)
    return json.dumps(data).encode()


def test_v2_is_written_and_v1_still_read() -> None:
    assert PREDICATE_TYPE == "https://lockd.dev/manifest/v2"
    assert PREDICATE_TYPES == (PREDICATE_TYPE, V1)
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
