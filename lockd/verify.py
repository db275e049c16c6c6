"""verify: trust the envelope, observe the target again, compare under a policy."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from lockd.compare import compare, verified
from lockd.errors import LockdError, SignatureError
from lockd.fileio import read_capped
from lockd.model import Check, Manifest, Observation, Report, ReportManifest, TargetInfo
from lockd.statement import Subject, parse_statement

if TYPE_CHECKING:
    from lockd.dsse import Envelope
    from lockd.keys import PublicKey
    from lockd.policy import Policy
    from lockd.targets.base import Target

MAX_ENVELOPE_BYTES = 64 * 1024 * 1024
LATER_CHECKS = (
    "image",
    "packages",
    "filesystem",
    "python",
    "env",
    "system",
    "lock",
    "cuda",
    "driver",
    "gpu",
    "integrity",
    "coherence",
)


def load_envelope(path: Path) -> Envelope:
    """Raises InputError / ManifestError naming `path`."""
    from lockd.dsse import parse_envelope

    data = read_capped(path, limit=MAX_ENVELOPE_BYTES, what="manifest")
    return parse_envelope(data, str(path))


def check_signature(envelope: Envelope, trusted: Sequence[PublicKey]) -> tuple[Check, list[str]]:
    from lockd import dsse

    try:
        keyids = dsse.verify(envelope, trusted)
    except SignatureError as e:
        return Check(id="signature", status="fail", evidence="signature", message=str(e)), []
    return (
        Check(
            id="signature",
            status="pass",
            evidence="signature",
            message=f"signed by keyid {', '.join(k[:16] for k in keyids)}",
        ),
        keyids,
    )


def open_manifest(
    path: Path, trusted: Sequence[PublicKey]
) -> tuple[Check, list[str], tuple[list[Subject], Manifest] | None]:
    """The signature check, the keyids that verified and, when trusted, the parsed Statement."""
    envelope = load_envelope(path)
    signature, keyids = check_signature(envelope, trusted)
    if signature.status == "fail":
        return signature, keyids, None
    return signature, keyids, parse_statement(envelope.payload_bytes(), str(path))


def _target_summary(info: TargetInfo, observation: Observation | None) -> dict[str, object]:
    summary: dict[str, object] = {"kind": info.kind, "ref": info.ref}
    if observation is not None and observation.host is not None:
        summary["image_id"] = observation.host.image_id
    return summary


def reach_and_observe(
    reach: Callable[[], Target], gpu: bool, deep: Sequence[str] | None = None
) -> tuple[Target, Observation]:
    """``deep``: check installed files against their RECORDs, not reporting unlisted files
    that match these patterns (lockd.integrity)."""
    target = reach()
    if deep is not None and not gpu:
        from lockd.integrity import DeepTarget

        observed = DeepTarget(target, ignore=deep).observe()
        return target, _with_family_imports(target, observed, deep)
    if gpu:
        from lockd.gpu import observe_with_suite

        observation = observe_with_suite(target)
    else:
        observation = target.observe()
    if deep is not None:
        from lockd.integrity import deepen

        observation = deepen(target, observation, ignore=deep)
    return target, _with_family_imports(target, observation, deep)


def _with_family_imports(
    target: Target, observation: Observation, deep: Sequence[str] | None
) -> Observation:
    """With ``deep``: the PyTorch family's import smoke test (the `coherence` check)."""
    if deep is None:
        return observation
    from lockd.smoke import with_family_imports

    return with_family_imports(target, observation)


def verify_target(
    manifest_path: Path,
    trusted: Sequence[PublicKey],
    reach: Callable[[], Target],
    policy: Policy,
    *,
    gpu: bool = False,
    deep: bool = False,
    observing: Future[tuple[Target, Observation]] | None = None,
) -> Report:
    """Verify the target `reach()` opens against the signed manifest under `policy`; with
    `gpu`, run the GPU validation suite in it too (the `gpu` check); with `deep`, hash every
    installed file against its RECORD (the `integrity` check).

    The target is reached and probed in a worker thread while the envelope is read and its
    signature checked: the probe mostly waits on the container, so this hides its latency.
    An untrusted envelope fails `signature` and nothing else is compared: whatever the target
    says cannot be held against an untrusted record (a target error then does not matter).
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lockd-probe") as pool:
        ignore = policy.filesystem.ignore if deep else None
        if observing is None:  # else the caller started reach_and_observe(reach, gpu) itself
            observing = pool.submit(reach_and_observe, reach, gpu, ignore)
        signature, keyids, statement = open_manifest(manifest_path, trusted)
        if statement is None:
            untrusted = "not compared: the manifest's signature is not trusted"
            checks = [signature] + [
                Check(id=c, status="skip", evidence="signature", message=untrusted)
                for c in LATER_CHECKS
            ]
            try:
                target_summary = _target_summary(observing.result()[0].info, None)
            except LockdError as e:
                target_summary = {"error": e.diagnostics()}
            return Report(
                verified=False,
                target=target_summary,
                manifest=ReportManifest(path=str(manifest_path)),
                checks=checks,
            )
        target, observation = observing.result()
    subjects, manifest = statement
    checks = [signature, *compare(manifest, observation, policy)]
    return Report(
        verified=verified(checks),
        target=_target_summary(target.info, observation),
        manifest=ReportManifest(
            path=str(manifest_path),
            subject=[s.model_dump() for s in subjects],
            keyid=keyids[0] if keyids else None,
        ),
        checks=checks,
    )
