"""verify: trust the envelope, observe the target again, compare under a policy.

lockd's models are imported where used: ``reach_and_observe`` starts a container's probe
before they have loaded (``lockd verify`` runs it in a thread while the CLI imports them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from lockd.errors import LockdError, SignatureError
from lockd.fileio import read_capped

if TYPE_CHECKING:
    from lockd.evidence.targets.base import Target
    from lockd.judgement.policy import Policy
    from lockd.model.manifest import Manifest, Observation
    from lockd.model.report import Check, Report
    from lockd.trust.keys import PublicKey
    from lockd.trust.signed import Signed, Trust
    from lockd.trust.statement import Subject

MAX_ENVELOPE_BYTES = 64 * 1024 * 1024


def load_envelope(path: Path) -> Signed:
    """A DSSE envelope or a Sigstore bundle (lockd.trust.signed). Raises InputError /
    ManifestError naming `path`."""
    from lockd.trust.signed import parse_signed

    data = read_capped(path, limit=MAX_ENVELOPE_BYTES, what="manifest")
    return parse_signed(data, str(path))


def check_signature(
    envelope: Signed, trusted: Trust | Sequence[PublicKey]
) -> tuple[Check, list[str]]:
    from lockd.model.report import Check
    from lockd.trust.signed import verify_signed

    try:
        keyids = verify_signed(envelope, trusted)
    except SignatureError as e:
        return Check(id="signature", status="fail", evidence="signature", message=str(e)), []
    return check_signature_for(keyids), keyids


def check_signature_for(keyids: Sequence[str], note: str = "") -> Check:
    """The passing ``signature`` check of an envelope these trusted keys signed."""
    from lockd.model.report import Check
    from lockd.trust.signed import signers_text

    message = f"signed by {signers_text(keyids)}"
    return Check(
        id="signature",
        status="pass",
        evidence="signature",
        message=f"{message}; {note}" if note else message,
    )


def open_manifest(
    path: Path, trusted: Trust | Sequence[PublicKey]
) -> tuple[Check, list[str], tuple[list[Subject], Manifest] | None]:
    """The signature check, the keyids that verified and, when trusted, the parsed Statement."""
    from lockd.trust.statement import parse_statement

    envelope = load_envelope(path)
    signature, keyids = check_signature(envelope, trusted)
    if signature.status == "fail":
        return signature, keyids, None
    return signature, keyids, parse_statement(envelope.payload_bytes(), str(path))


def reach_and_observe(
    reach: Callable[[], Target],
    gpu: bool,
    deep: Sequence[str] | None = None,
    *,
    cache: bool = True,
) -> tuple[Target, Observation]:
    """``deep``: check installed files against their RECORDs, not reporting unlisted files
    that match these patterns (lockd.evidence.integrity); ``cache``: through the layer cache
    (lockd.evidence.cache.layers), else every file hashed; ``cache`` also lets a container take its
    probe report from the probe cache when nothing the probe can see changed
    (lockd.evidence.cache.probe)."""
    from lockd.evidence.targets.base import ProbeOptions

    target = reach()
    options = ProbeOptions(reuse=cache)
    if deep is not None and not gpu:
        from lockd.evidence.integrity.deep import DeepTarget

        observed = DeepTarget(
            target, ignore=deep, cache=cache, family_imports=True, options=options
        ).observe()
        return target, _with_family_imports(target, observed, deep)
    if gpu:
        from lockd.evidence.gpurun import observe_with_suite

        observation = observe_with_suite(target, options)
    else:
        observation = target.observe(options)
    if deep is not None:
        from lockd.evidence.integrity.deep import deepen

        observation = deepen(target, observation, ignore=deep, cache=cache)
    return target, _with_family_imports(target, observation, deep)


def _with_family_imports(
    target: Target, observation: Observation, deep: Sequence[str] | None
) -> Observation:
    """With ``deep``: the PyTorch family's import smoke test (the `coherence` check), unless
    the probe ran it."""
    if deep is None:
        return observation
    from lockd.evidence.smoke import with_family_imports

    return with_family_imports(target, observation)


def verify_target(
    manifest_path: Path,
    trusted: Trust | Sequence[PublicKey],
    reach: Callable[[], Target],
    policy: Policy,
    *,
    gpu: bool = False,
    deep: bool = False,
    observing: Future[tuple[Target, Observation]] | None = None,
    cache: bool = True,
) -> Report:
    """Verify the target `reach()` opens against the signed manifest under `policy`; with
    `gpu`, run the GPU validation suite in it too (the `gpu` check); with `deep`, hash every
    installed file against its RECORD (the `integrity` check), through the layer cache unless
    not `cache` (lockd.evidence.cache.layers).

    The target is reached and probed in a worker thread while the envelope is read and its
    signature checked: the probe mostly waits on the container, so this hides its latency.
    An untrusted envelope fails `signature` and nothing else is compared: whatever the target
    says cannot be held against an untrusted record (a target error then does not matter).
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lockd-probe") as pool:
        ignore = policy.filesystem.patterns() if deep else None
        # (else the caller started reach_and_observe(reach, gpu) itself); a mistyped path
        # fails at once, not once a probe started for nothing is over
        if observing is None and manifest_path.is_file():
            observing = pool.submit(reach_and_observe, reach, gpu, ignore, cache=cache)
        signature, keyids, statement = open_manifest(manifest_path, trusted)
        if observing is None:
            observing = pool.submit(reach_and_observe, reach, gpu, ignore, cache=cache)
        # imported once the probe is on its way: the models and compare() load meanwhile
        from lockd.judgement.reporting import build_report, report_for, target_summary
        from lockd.model.report import ReportManifest

        if statement is None:
            try:
                target: dict[str, object] = target_summary(observing.result()[0].info)
            except LockdError as e:
                target = {"error": e.diagnostics()}
            reference = ReportManifest(path=str(manifest_path))
            return build_report(target, signature, reference, None, policy)
        _, observation = observing.result()
    return report_for(observation, str(manifest_path), signature, keyids, statement, policy)
