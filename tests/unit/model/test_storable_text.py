"""The one rule for text the databases cannot store (a NUL, a lone surrogate): where a decoded
JSON value holds some (the service refuses it, naming where), and the same value with it
replaced (what lockd's clients send)."""

from __future__ import annotations

import json

import pytest

from lockd.model.base import storable, storable_json, unstorable
from lockd.model.report import Report


@pytest.mark.parametrize(
    ("value", "found"),
    [
        ("a\x00b", ("", "a NUL character (U+0000)")),
        ("\ud800", ("", "a lone surrogate (U+D800)")),
        ({"a": [1, {"b": "x\udfffy"}]}, ("a.1.b", "a lone surrogate (U+DFFF)")),
        ({"a": {"k\x00": 1}}, ("a", "a key with a NUL character (U+0000)")),
        ([None, True, 1.5, "ok", {"k": ["\x00"]}], ("4.k.0", "a NUL character (U+0000)")),
    ],
)
def test_the_first_unstorable_string_is_found_with_its_path(
    value: object, found: tuple[str, str]
) -> None:
    assert unstorable(value) == found


@pytest.mark.parametrize(
    "value",
    ["", "\\u0000 \\ud800", "ünïcode \U0001f600 \x01\x1b\x7f", {"a": [1, None, {"b": "c"}]}],
)
def test_storable_text_is_not_flagged(value: object) -> None:
    assert unstorable(value) is None
    assert storable(value) == value


def test_storable_replaces_every_unstorable_character_keys_included() -> None:
    value = {"k\x00": ["a\x00\ud800b", {"x": "\udc00"}], "n": 1}
    assert storable(value) == {"k\ufffd": ["a\ufffd\ufffdb", {"x": "\ufffd"}], "n": 1}
    assert unstorable(storable(value)) is None


def test_a_clients_body_is_the_models_json_with_unstorable_text_replaced() -> None:
    clean = Report.model_validate(
        {"verified": True, "target": {"image_id": "sha256:ab"}, "manifest": {}, "checks": []}
    )
    assert json.loads(storable_json(clean)) == json.loads(clean.model_dump_json(exclude_none=True))
    dirty = clean.model_copy(update={"target": {"image_id": "a\x00b"}})
    assert json.loads(storable_json(dirty))["target"] == {"image_id": "a\ufffdb"}
