"""record: observe a target, wrap the Observation into a Manifest, sign it into an envelope."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lockd import __version__
from lockd.model import Manifest, Observation
from lockd.statement import PAYLOAD_TYPE, Subject, make_statement, subjects_for

if TYPE_CHECKING:
    from lockd.dsse import Envelope
    from lockd.keys import PrivateKey


def build_manifest(observation: Observation, *, now: dt.datetime | None = None) -> Manifest:
    moment = now or dt.datetime.now(dt.timezone.utc)
    return Manifest(
        lockd_version=__version__,
        recorded_at=moment.astimezone(dt.timezone.utc).isoformat(timespec="seconds"),
        observation=observation,
    )


@dataclass(frozen=True)
class Recorded:
    envelope: Envelope
    subjects: list[Subject]
    keyid: str


def sign_manifest(manifest: Manifest, key: PrivateKey) -> Recorded:
    from lockd import dsse, keys

    envelope = dsse.sign(make_statement(manifest), PAYLOAD_TYPE, key)
    return Recorded(
        envelope=envelope,
        subjects=subjects_for(manifest.observation),
        keyid=keys.keyid(key.public_key()),
    )
