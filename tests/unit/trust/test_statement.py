from __future__ import annotations

import json

import pytest
from observations import IMAGE, host, manifest, observation, probe

from lockd.errors import ManifestError
from lockd.model.host import TargetInfo
from lockd.model.manifest import PREDICATE_TYPE, Observation
from lockd.trust.statement import STATEMENT_TYPE, make_statement, parse_statement, subjects_for


def test_statement_is_canonical_and_round_trips() -> None:
    recorded = manifest()
    payload = make_statement(recorded)
    assert payload == make_statement(recorded)  # deterministic bytes
    data = json.loads(payload)
    assert data["_type"] == STATEMENT_TYPE
    assert data["predicateType"] == PREDICATE_TYPE
    assert data["subject"] == [{"name": "app:1", "digest": {"sha256": IMAGE[7:]}}]
    subjects, parsed = parse_statement(payload, "m.json")
    assert parsed == recorded
    assert subjects[0].digest["sha256"] == IMAGE[7:]


def test_repo_digests_become_subjects() -> None:
    digest = "registry.local/app@sha256:" + "d" * 64
    subjects = subjects_for(observation(host_evidence=host(repo_digests=[digest])))
    assert [(s.name, s.digest["sha256"]) for s in subjects] == [
        ("app:1", IMAGE[7:]),
        ("registry.local/app", "d" * 64),
    ]


def test_local_subject_is_the_digest_of_the_distribution_set() -> None:
    local = Observation(target=TargetInfo(kind="local", ref="/usr/bin/python3"), probe=probe())
    [subject] = subjects_for(local)
    assert subject.name == "python:/usr/bin/python3"
    assert len(subject.digest["sha256"]) == 64


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"{not json", "m.json: the envelope's payload is not JSON"),
        (b"[]", "m.json: the payload is not an in-toto Statement v1"),
        (
            b'{"_type": "https://in-toto.io/Statement/v1", "predicateType": "x", "subject": []}',
            "m.json: predicateType is 'x', not lockd's",
        ),
        (
            json.dumps(
                {
                    "_type": STATEMENT_TYPE,
                    "predicateType": PREDICATE_TYPE,
                    "subject": [],
                    "predicate": {},
                }
            ).encode(),
            "m.json: malformed manifest at lockd_version",
        ),
    ],
)
def test_malformed_statements(payload: bytes, message: str) -> None:
    with pytest.raises(ManifestError) as e:
        parse_statement(payload, "m.json")
    assert str(e.value).startswith(message)


def test_subject_without_digest_is_refused() -> None:
    data = json.loads(make_statement(manifest()))
    data["subject"] = [{"name": "x", "digest": {"sha512": "00"}}]
    with pytest.raises(ManifestError, match="every Statement subject needs a sha256 digest"):
        parse_statement(json.dumps(data).encode(), "m.json")
