"""What every model of lockd shares: frozen pydantic models that refuse unknown keys, and the
bounded string types untrusted input is read into."""

import json
import re
from collections.abc import Iterable
from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

Str = Annotated[str, StringConstraints(max_length=4096)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Hex64 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Digest = Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-f]{64}$")]

_NORMALISE = re.compile(r"[-_.]+")


def normalise_name(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return _NORMALISE.sub("-", name).lower()


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# PostgreSQL text holds neither NUL nor (in UTF-8) a lone surrogate, which JSON's \ud800 escapes
# can carry; SQLite stores the first and fails on the second. One rule for both databases.
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def unstorable_text(text: str) -> str | None:
    """Why ``text`` cannot be stored (``"a NUL character (U+0000)"``), or None."""
    found = UNSTORABLE.search(text)
    if found is None:
        return None
    char = found.group()
    return f"{'a NUL character' if char == chr(0) else 'a lone surrogate'} (U+{ord(char):04X})"


def unstorable(value: object) -> tuple[str, str] | None:
    """The first string (keys included) of a decoded JSON value that cannot be stored: its
    path (``report.target.image_id``; ``""`` for the value itself) and why; None when every
    string can be."""
    found = _unstorable(value, ())
    return None if found is None else (".".join(found[0]), found[1])


def _unstorable(value: object, path: tuple[str, ...]) -> tuple[tuple[str, ...], str] | None:
    if isinstance(value, str):
        why = unstorable_text(value)
        return (path, why) if why else None
    items: Iterable[tuple[object, object]]
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        why = unstorable_text(key) if isinstance(key, str) else None
        if why:
            return (path, f"a key with {why}")
        found = _unstorable(item, (*path, str(key)))
        if found:
            return found
    return None


def storable(value: object) -> object:
    """A decoded JSON value with every character the databases cannot store replaced by U+FFFD
    (keys included): what lockd's own clients send, so text from inside a container (a label,
    a probe's error) never gets a whole report or agent batch refused."""
    if isinstance(value, str):
        return UNSTORABLE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [storable(v) for v in value]
    return value


def storable_json(model: BaseModel) -> bytes:
    """``model`` as the JSON body a lockd client sends (``storable``; None fields left out)."""
    doc = storable(model.model_dump(mode="json", exclude_none=True))
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
