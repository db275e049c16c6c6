"""record: observe a target, wrap the Observation into a Manifest, sign it into an envelope."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lockd import __version__
from lockd.errors import InputError, RefusedError
from lockd.model.host import MAX_CHANGES
from lockd.model.manifest import LockInfo, Manifest, Observation
from lockd.model.report import Finding
from lockd.trust.statement import PAYLOAD_TYPE, Subject, make_statement, subjects_for

if TYPE_CHECKING:
    from pathlib import Path

    from lockd.evidence.targets.base import Target
    from lockd.judgement.locks import Lock
    from lockd.trust.dsse import Envelope
    from lockd.trust.keys import PrivateKey


def observe(
    target: Target, *, gpu: bool = False, deep: bool = False, cache: bool = True
) -> Observation:
    """What record signs of ``target``: its Observation; with ``gpu``, a run of the GPU suite
    in it; with ``deep``, its installed files hashed against their RECORDs
    (lockd.evidence.integrity),
    through the layer cache unless not ``cache`` (lockd.evidence.cache.layers).

    Raises:
        RefusedError: with ``deep``, installed files disagree with their RECORD, or a RECORD
            is malformed: nothing may be signed.
        TargetError, ProbeError: the target cannot be observed.
    """
    if deep and not gpu:
        from lockd.evidence.integrity.deep import DeepTarget

        # hashing overlaps the probe, which runs the import smoke test too
        observation = DeepTarget(target, cache=cache, family_imports=True).observe()
    elif gpu:
        from lockd.evidence.gpurun import observe_with_suite

        observation = observe_with_suite(target)
    else:
        observation = target.observe()
    if deep:
        from lockd.evidence.integrity.deep import deepen, require_intact

        if observation.integrity is None:
            observation = deepen(target, observation, cache=cache)
        require_intact(observation)
        from lockd.evidence.smoke import with_family_imports

        observation = with_family_imports(target, observation)  # unless the probe ran it
    return observation


def require_coherent(observation: Observation) -> None:
    """Refuse to sign a PyTorch family that does not fit its torch (lockd.judgement.coherence), or
    (--deep) that fails to import.

    Raises:
        RefusedError: listing every finding; nothing may be signed (record --allow-incoherent
            signs it anyway, and verify then fails its `coherence` check).
    """
    from lockd.judgement.checks.coherence import coherence_findings

    findings = coherence_findings(observation)
    if not findings:
        return
    where = f"{observation.target.kind}:{observation.target.ref}"
    lines = "\n".join(f"  {f.kind:<11} {f.message}" for f in findings)
    raise RefusedError(
        f"{where}: refusing to sign: its PyTorch family does not fit its torch "
        f"({len(findings)} finding(s)):\n{lines}\nnothing was written; install the versions "
        "that fit (lockd lock adds them to a lock), or record with --allow-incoherent"
    )


def build_manifest(
    observation: Observation, *, now: dt.datetime | None = None, lock: LockInfo | None = None
) -> Manifest:
    """The manifest of ``observation``: its changes relative to the image, each with content
    (lockd.evidence.targets.changes), are signed with it.

    Raises:
        InputError: the container changed more files than lockd records (MAX_CHANGES).
    """
    host = observation.host
    if host is not None and host.changes_truncated:
        where = f"{observation.target.kind}:{observation.target.ref}"
        raise InputError(
            f"{where}: refusing to record: more than {MAX_CHANGES} files changed since its image "
            "outside the volatile places (tmp, logs, caches); nothing was written. Build those "
            "files into the image, or have the container write them to a volatile place or a "
            "mounted volume"
        )
    moment = now or dt.datetime.now(dt.timezone.utc)
    suites = [] if observation.gpu_suite is None else [observation.gpu_suite]
    return Manifest(
        lockd_version=__version__,
        recorded_at=moment.astimezone(dt.timezone.utc).isoformat(timespec="seconds"),
        observation=observation.model_copy(update={"gpu_suite": None}),
        lock=lock,
        gpu_suites=suites,  # a GPU suite run (--gpu) is kept here, one entry per GPU model
    )


APPEND_MUST_PASS = ("image", "packages", "python", "cuda")
"""The checks a target must pass before its GPU results may join a manifest (--append)."""


def append_gpu_result(manifest_path: Path, key: PrivateKey, observation: Observation) -> Manifest:
    """The manifest at `manifest_path` with the observation's GPU suite result added: same
    subject, same observation; a result of the same comparison key is replaced.

    Raises:
        InputError: the manifest cannot be read.
        RefusedError: the manifest is not signed by `key`, names another subject, the target is
            not the recorded environment (image, packages, python or CUDA stack differ), or a
            recorded result of the same key has other bits.
    """
    from lockd.judgement.compare import compare
    from lockd.judgement.gpucompare import merge_result
    from lockd.judgement.policy import default_policy
    from lockd.verify import open_manifest

    result = observation.gpu_suite
    if result is None:
        raise RefusedError(f"{manifest_path}: no GPU suite result to append (run with --gpu)")
    signature, _, statement = open_manifest(manifest_path, [key.public_key()])
    if statement is None:
        raise RefusedError(
            f"{manifest_path}: refusing to append: {signature.message}; append with the key "
            "that signed the manifest"
        )
    subjects, manifest = statement
    recorded = {s.digest["sha256"] for s in subjects}
    seen = {s.digest["sha256"] for s in subjects_for(observation)}
    where = f"{observation.target.kind}:{observation.target.ref}"
    if recorded.isdisjoint(seen):
        raise RefusedError(
            f"{manifest_path}: refusing to append: {where} is not the manifest's subject "
            f"({', '.join(s.name for s in subjects)}); record it into a manifest of its own"
        )
    failing = [
        c
        for c in compare(manifest, observation, default_policy())
        if c.id in APPEND_MUST_PASS and c.status == "fail"
    ]
    if failing:
        lines = "\n".join(f"  {c.id}: {c.message}" for c in failing)
        raise RefusedError(
            f"{manifest_path}: refusing to append: {where} is not the recorded environment:\n"
            f"{lines}\nrun `lockd verify` to see every difference"
        )
    merged = merge_result(manifest.gpu_suites, result, str(manifest_path))
    return manifest.model_copy(update={"gpu_suites": merged})


def load_lock(path: Path, *, allow_unhashed: bool = False) -> Lock:
    """The lock for `record --lock`. Raises InputError: unreadable, malformed, or (unless
    `allow_unhashed`) a pin without --hash."""
    from lockd.judgement.locks import read_lock, require_hashes

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
    from lockd.judgement.checks.lock import lock_findings
    from lockd.judgement.locks import lock_info

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
    from lockd.trust import dsse, keys

    envelope = dsse.sign(make_statement(manifest), PAYLOAD_TYPE, key)
    return Recorded(
        envelope=envelope,
        subjects=subjects_for(manifest.observation),
        keyid=keys.keyid(key.public_key()),
    )


@dataclass(frozen=True)
class RecordResult:
    observation: Observation
    manifest: Manifest
    recorded: Recorded
    lock: LockInfo | None  # the lock the target was found to agree with (``lock``)


def record(
    target: Target,
    key: PrivateKey,
    *,
    lock: Lock | None = None,
    append: Path | None = None,
    gpu: bool = False,
    deep: bool = False,
    cache: bool = True,
    allow_incoherent: bool = False,
) -> RecordResult:
    """Observe ``target`` and sign its manifest: a new one, bound to ``lock`` when given; or,
    with ``append``, the manifest in that file with this run's GPU results added.

    Raises:
        RefusedError: the target disagrees with ``lock``, its PyTorch family is incoherent
            (unless ``allow_incoherent``), or (``deep``) its files with their RECORDs.
        InputError: ``append`` cannot take these results.
        TargetError, ProbeError: the target cannot be observed.
    """
    observation = observe(target, gpu=gpu, deep=deep, cache=cache)
    bound = None
    if append is not None:
        manifest = append_gpu_result(append, key, observation)
    else:
        bound = None if lock is None else bind_lock(observation, lock)
        if not allow_incoherent:
            require_coherent(observation)
        manifest = build_manifest(observation, lock=bound)
    return RecordResult(observation, manifest, sign_manifest(manifest, key), bound)
