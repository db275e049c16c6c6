"""in-toto Statement v1 carrying a lockd Manifest as its predicate.

Subjects are the image ID and each repo digest (consumers match subjects by digest only);
a local target has no image, so its subject is the digest of its distribution set.
"""

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from lockd.errors import ManifestError
from lockd.model.base import unstorable
from lockd.model.manifest import (
    PREDICATE_SCHEMA,
    PREDICATE_TYPE,
    PREDICATE_TYPES,
    Manifest,
    Observation,
)

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"


class Subject(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    digest: dict[str, str]


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON for anything hashed or signed."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _hex(digest: str) -> str:
    return digest.removeprefix("sha256:")


def subjects_for(observation: Observation) -> list[Subject]:
    host = observation.host
    if host is not None:
        name = host.repo_tags[0] if host.repo_tags else observation.target.ref
        subjects = [Subject(name=name, digest={"sha256": _hex(host.image_id)})]
        for repo_digest in sorted(set(host.repo_digests)):
            repo, _, digest = repo_digest.partition("@")
            if digest.startswith("sha256:"):
                subjects.append(Subject(name=repo, digest={"sha256": _hex(digest)}))
        return subjects
    distributions = observation.probe.distributions if observation.probe else []
    content = canonical_json([d.model_dump(exclude={"location"}) for d in distributions])
    return [
        Subject(
            name=f"python:{observation.target.ref}",
            digest={"sha256": hashlib.sha256(content).hexdigest()},
        )
    ]


def make_statement(manifest: Manifest) -> bytes:
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [s.model_dump() for s in subjects_for(manifest.observation)],
        "predicateType": PREDICATE_TYPE,
        "predicate": manifest.model_dump(mode="json", exclude_none=True),
    }
    return canonical_json(statement)


def predicate_schema() -> str:
    """The JSON Schema (draft 2020-12) of the predicate ``make_statement`` writes, as shipped."""
    from importlib.resources import files

    return files("lockd").joinpath(PREDICATE_SCHEMA).read_text(encoding="utf-8")


def parse_statement(payload: bytes, source: str) -> tuple[list[Subject], Manifest]:
    """Raises ManifestError naming `source` when the payload is not a lockd Statement."""
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{source}: the envelope's payload is not JSON: {e}") from e
    if not isinstance(data, dict) or data.get("_type") != STATEMENT_TYPE:
        raise ManifestError(f"{source}: the payload is not an in-toto Statement v1")
    if data.get("predicateType") not in PREDICATE_TYPES:
        found = data.get("predicateType")
        raise ManifestError(
            f"{source}: predicateType is {found!r}, not lockd's ({', '.join(PREDICATE_TYPES)})"
        )
    found = unstorable(data)
    if found is not None:  # signed or not, it would be stored: refused on either database
        raise ManifestError(
            f"{source}: the Statement's {found[0]} holds {found[1]}, which cannot be stored"
        )
    try:
        subjects = [Subject.model_validate(s) for s in data.get("subject") or []]
        manifest = Manifest.model_validate(data.get("predicate"))
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ManifestError(f"{source}: malformed manifest at {where}: {first['msg']}") from e
    if not subjects or any("sha256" not in s.digest for s in subjects):
        raise ManifestError(f"{source}: every Statement subject needs a sha256 digest")
    return subjects, manifest
