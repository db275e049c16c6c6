"""lockd's published predicate schema (lockd/schemas/predicate-vN.json) as the tests apply it,
with the ``jsonschema`` package (an independent validator, not lockd's models): to predicates,
to the envelopes in tests/assets, and to every envelope a ``record`` run by the tests writes
(tests/conftest.py calls :func:`check_recorded` after each)."""

from __future__ import annotations

import base64
import functools
import itertools
import json
import re
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from lockd.model.manifest import PREDICATE_SCHEMA, PREDICATE_TYPES

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA = REPO_ROOT / "lockd" / PREDICATE_SCHEMA


@functools.cache
def validator() -> Draft202012Validator:
    schema = json.loads(SCHEMA.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def schema_errors(predicate: Any) -> list[ValidationError]:
    """What the schema finds wrong with ``predicate``, in document order; where an optional
    part (``anyOf``: the part, or null) is wrong, the part's own error."""
    found = []
    for error in validator().iter_errors(predicate):
        leaf = error
        while leaf.context:
            not_null = [e for e in leaf.context if e.validator_value != "null"]
            leaf = best_match(not_null or leaf.context)
        found.append(leaf)
    return sorted(found, key=lambda e: e.json_path)


def statement_of(document: dict[str, Any]) -> dict[str, Any]:
    """The in-toto Statement a DSSE envelope (or a Sigstore bundle's ``dsseEnvelope``) carries."""
    envelope = document.get("dsseEnvelope", document)
    statement: dict[str, Any] = json.loads(base64.b64decode(envelope["payload"]))
    return statement


def predicate_of(path: Path) -> dict[str, Any]:
    """The lockd predicate of the envelope (or bundle) at ``path``, its type checked."""
    statement = statement_of(json.loads(path.read_text()))
    assert statement["predicateType"] in PREDICATE_TYPES, f"{path}: not a lockd predicate"
    predicate: dict[str, Any] = statement["predicate"]
    return predicate


def assert_valid(path: Path) -> None:
    errors = schema_errors(predicate_of(path))
    assert not errors, f"{path}: against {SCHEMA.name}: " + "; ".join(
        f"{e.json_path}: {e.message[:200]}" for e in errors[:5]
    )


def _recorded_to(args: list[str], cwd: Path | None, stdout: str) -> Path:
    """Where ``lockd record ARGS`` wrote its envelope: --output, else --append, else the path
    its "wrote PATH (signed by keyid ...)" line names."""
    named: str | None = None
    for flag, value in itertools.pairwise(args):
        if flag in ("--output", "-o") or (flag == "--append" and named is None):
            named = value
    if named is None:
        said = re.search(r"^wrote (.+) \(signed by keyid", stdout, re.MULTILINE)
        assert said, f"lockd {' '.join(args)}: its output names no envelope written"
        named = said.group(1)
    path = Path(named)
    return path if path.is_absolute() or cwd is None else cwd / path


def check_recorded(args: list[str], cwd: Path | None, returncode: int, stdout: str) -> None:
    """After a test's ``lockd record`` that succeeded: its envelope validates against the
    schema (AssertionError naming the file and the first errors otherwise)."""
    if not args or args[0] != "record" or returncode != 0 or "--help" in args:
        return
    assert_valid(_recorded_to(args, cwd, stdout))
