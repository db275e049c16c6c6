"""record: observe a target, wrap the Observation into a Manifest, sign it into an envelope."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lockd import __version__
from lockd.errors import RefusedError
from lockd.model import Finding, LockInfo, Manifest, Observation
from lockd.statement import PAYLOAD_TYPE, Subject, make_statement, subjects_for

if TYPE_CHECKING:
    from pathlib import Path

    from lockd.dsse import Envelope
    from lockd.keys import PrivateKey
    from lockd.lockfile import Lock


def build_manifest(
    observation: Observation, *, now: dt.datetime | None = None, lock: LockInfo | None = None
) -> Manifest:
    moment = now or dt.datetime.now(dt.timezone.utc)
    return Manifest(
        lockd_version=__version__,
        recorded_at=moment.astimezone(dt.timezone.utc).isoformat(timespec="seconds"),
        observation=observation,
        lock=lock,
    )


def load_lock(path: Path, *, allow_unhashed: bool = False) -> Lock:
    """The lock for `record --lock`. Raises InputError: unreadable, malformed, or (unless
    `allow_unhashed`) a pin without --hash."""
    from lockd.lockfile import read_lock, require_hashes

    lock = read_lock(path)
    if not allow_unhashed:
        require_hashes(lock)
    return lock


def _difference(f: Finding) -> str:
    if f.kind == "missing":
        return f"missing  {f.name}=={f.expected} (locked, not installed)"
    if f.kind == "extra":
        return f"extra    {f.name} {f.observed} (installed in {f.path}, not in the lock)"
    if f.kind == "version":
        return f"version  {f.name}: the lock pins {f.expected}, {f.observed} is installed"
    subject = f.name or f.path
    return f"{f.kind:<8} {subject}: {f.observed or '-'} ({f.message})"


def bind_lock(observation: Observation, lock: Lock) -> LockInfo:
    """The lock as it applies to the observed target, when the target agrees with it.

    Raises RefusedError (nothing may be signed) listing every difference: distributions
    missing, extra (beyond pip, setuptools, wheel), at another version, or installed from an
    archive the lock does not allow; also when the target could not be probed or the lock was
    compiled for another Python or platform.
    """
    from lockd.compare import lock_findings
    from lockd.lockfile import lock_info

    where = f"{observation.target.kind}:{observation.target.ref}"
    probe = observation.probe
    if probe is None:
        raise RefusedError(
            f"{where}: refusing to sign: the lock {lock.source} cannot be checked without a "
            f"probe report ({observation.probe_error or 'the probe did not run'})"
        )
    info = lock_info(lock, probe)
    findings = lock_findings(info, probe)
    if findings:
        lines = "\n".join(f"  {_difference(f)}" for f in findings)
        raise RefusedError(
            f"{where}: refusing to sign: the environment disagrees with the lock {lock.source} "
            f"in {len(findings)} place(s):\n{lines}\nnothing was written; install exactly the "
            "lock (pip install --require-hashes --no-deps -r LOCK) or record without --lock"
        )
    return info


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
