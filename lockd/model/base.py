"""What every model of lockd shares: frozen pydantic models that refuse unknown keys, and the
bounded string types untrusted input is read into."""

import re
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
