"""compare(manifest, observation, policy): the heart of lockd. Pure: no I/O.

Each check says which evidence it rests on: `host` (the Docker daemon and the host's view of
the container's filesystem, trustworthy even if the container is compromised) or `inside`
(what the probe running in the target says about itself).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from lockd.model import (
    Check,
    Distribution,
    Evidence,
    Finding,
    HostEvidence,
    LockInfo,
    Manifest,
    Observation,
    ProbeReport,
)
from lockd.policy import Policy, watched

_ENV_PREFIXES = ("CUDA_", "NCCL_", "NVIDIA_", "PYTORCH_", "TORCH_", "CUBLAS_")
_ENV_NAMES = frozenset({"LD_LIBRARY_PATH", "LD_PRELOAD", "PYTHONPATH", "PYTHONHOME"})


def selected_env(name: str) -> bool:
    """The variables that shape a Python/CUDA process (the probe selects the same)."""
    if name.endswith("_VISIBLE_DEVICES"):
        return False
    return name in _ENV_NAMES or name.startswith(_ENV_PREFIXES)


def _check(
    check_id: str,
    policy: Policy,
    evidence: Evidence,
    findings: list[Finding],
    *,
    ok: str,
    bad: str,
    expected: str | None = None,
    observed: str | None = None,
    failed: bool | None = None,
) -> Check:
    """A check's status under the policy: a mismatch fails when required, warns when `warn`."""
    level = policy.level(check_id)
    if level == "ignore":
        return Check(id=check_id, status="skip", evidence=evidence, message="ignored by policy")
    mismatch = bool(findings) if failed is None else failed
    status = ("fail" if level == "required" else "warn") if mismatch else "pass"
    return Check(
        id=check_id,
        status=status,
        evidence=evidence,
        message=bad if mismatch else ok,
        expected=expected,
        observed=observed,
        findings=findings,
    )


def _skip(check_id: str, evidence: Evidence, why: str) -> Check:
    return Check(id=check_id, status="skip", evidence=evidence, message=why)


def _sha(digest: str) -> str:
    return digest.rpartition("@")[2].removeprefix("sha256:")


def check_image(expected: HostEvidence | None, observed: HostEvidence | None, p: Policy) -> Check:
    if observed is None:
        return _skip("image", "host", "a local environment has no image to compare")
    if expected is None:
        return _check(
            "image",
            p,
            "host",
            [],
            ok="",
            bad="the manifest was recorded from a local environment, not an image",
            observed=observed.image_id,
            failed=True,
        )
    recorded = {_sha(expected.image_id)} | {_sha(d) for d in expected.repo_digests}
    seen = {_sha(observed.image_id)} | {_sha(d) for d in observed.repo_digests}
    return _check(
        "image",
        p,
        "host",
        [],
        ok=f"image {observed.image_id[:19]} is the recorded image",
        bad=f"image {observed.image_id[:19]} is not the recorded image {expected.image_id[:19]}",
        expected=expected.image_id,
        observed=observed.image_id,
        failed=not recorded & seen,
    )


def _dist_findings(
    expected: Iterable[Distribution], observed: Iterable[Distribution], ignore: set[str]
) -> list[Finding]:
    want = {d.name: d for d in expected if d.name not in ignore}
    have = {d.name: d for d in observed if d.name not in ignore}
    findings = []
    for name in sorted(want.keys() | have.keys()):
        w, h = want.get(name), have.get(name)
        if w is None and h is not None:
            findings.append(Finding(kind="added", name=name, observed=h.version, path=h.location))
        elif h is None and w is not None:
            findings.append(Finding(kind="removed", name=name, expected=w.version))
        elif w is not None and h is not None:
            if w.version != h.version:
                findings.append(
                    Finding(kind="changed", name=name, expected=w.version, observed=h.version)
                )
            elif (w.record_sha256, w.files) != (h.record_sha256, h.files):
                findings.append(
                    Finding(
                        kind="modified",
                        name=name,
                        expected=w.version,
                        observed=h.version,
                        message="same version, different RECORD (reinstalled from other files)",
                    )
                )
    return findings


def _inside_check(
    check_id: str,
    expected: ProbeReport | None,
    observed: Observation,
    build: Callable[[ProbeReport, ProbeReport], Check],
) -> Check:
    """Checks that need the probe on both sides; a missing probe is itself a finding."""
    if observed.probe is None:
        if expected is None:
            return _skip(check_id, "inside", "no Python in the recorded environment or target")
        why = observed.probe_error or "the probe did not run"
        return Check(
            id=check_id,
            status="fail",
            evidence="inside",
            message=f"cannot look inside the target: {why}",
            findings=[Finding(kind="probe-missing", message=why)],
        )
    if expected is None:
        return Check(
            id=check_id,
            status="fail",
            evidence="inside",
            message="the manifest recorded no Python environment, the target has one",
        )
    return build(expected, observed.probe)


def check_packages(expected: ProbeReport, observed: ProbeReport, p: Policy) -> Check:
    ignore = {n.lower() for n in p.packages.ignore}
    findings = _dist_findings(expected.distributions, observed.distributions, ignore)
    return _check(
        "packages",
        p,
        "inside",
        findings,
        ok=f"{len(observed.distributions)} distributions as recorded",
        bad=f"{len(findings)} distribution(s) differ from the manifest",
    )


def _mount_shadows(destination: str, manifest: Manifest, p: Policy) -> bool:
    if watched(destination, p.filesystem) or watched(destination + "/", p.filesystem):
        return True
    probe = manifest.observation.probe
    if probe is None:
        return False
    inside = [d.location for d in probe.distributions]
    inside += [probe.python.prefix, probe.python.base_prefix, *probe.python.path]
    prefix = destination.rstrip("/") + "/"
    return any(place == destination or place.startswith(prefix) for place in inside)


def check_filesystem(manifest: Manifest, observed: HostEvidence | None, p: Policy) -> Check:
    if observed is None:
        return _skip("filesystem", "host", "a local environment has no host-side view")
    recorded = manifest.observation.host
    recorded_changes = {(c.path, c.kind) for c in recorded.changes} if recorded else set()
    recorded_mounts = (
        {(m.destination, m.source, m.type) for m in recorded.mounts} if recorded else set()
    )
    findings = [
        Finding(kind=c.kind, path=c.path)
        for c in observed.changes
        if (c.path, c.kind) not in recorded_changes and watched(c.path, p.filesystem)
    ]
    findings += [
        Finding(
            kind="mount",
            path=m.destination,
            observed=f"{m.type} {m.source}",
            message=f"{'read-write' if m.rw else 'read-only'} mount over a watched path",
        )
        for m in observed.mounts
        if (m.destination, m.source, m.type) not in recorded_mounts
        and _mount_shadows(m.destination, manifest, p)
    ]
    source = {
        "overlay": "the overlay upper directory",
        "api": "the daemon's changes API",
        "none": "a fresh container of the image",
    }[observed.changes_source]
    return _check(
        "filesystem",
        p,
        "host",
        findings,
        ok=f"no changes under watched paths (read from {source})",
        bad=f"{len(findings)} change(s) under watched paths (read from {source})",
    )


def _changed_fields(want: object, have: object, fields: Iterable[str]) -> list[Finding]:
    return [
        Finding(kind="changed", name=f, expected=getattr(want, f), observed=getattr(have, f))
        for f in fields
        if getattr(want, f) != getattr(have, f)
    ]


def check_python(expected: ProbeReport, observed: ProbeReport, p: Policy) -> Check:
    fields = ("version", "implementation", "executable", "prefix", "base_prefix")
    want, have = expected.python, observed.python
    findings = _changed_fields(want, have, fields)
    if want.path != have.path:
        findings.append(
            Finding(
                kind="changed",
                name="sys.path",
                expected=":".join(want.path),
                observed=":".join(have.path),
            )
        )
    return _check(
        "python",
        p,
        "inside",
        findings,
        ok=f"{have.implementation} {have.version} at {have.executable}",
        bad="the interpreter differs from the manifest",
    )


def _env_findings(want: dict[str, str], have: dict[str, str], where: str) -> list[Finding]:
    findings = []
    for name in sorted(want.keys() | have.keys()):
        w, h = want.get(name), have.get(name)
        if w == h:
            continue
        kind = "added" if w is None else "removed" if h is None else "changed"
        findings.append(Finding(kind=kind, name=name, expected=w, observed=h, message=where))
    return findings


def check_env(manifest: Manifest, observed: Observation, p: Policy) -> Check:
    ignore = set(p.env.ignore)

    def pick(env: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in env.items() if selected_env(k) and k not in ignore}

    findings: list[Finding] = []
    recorded = manifest.observation
    evidence: Evidence = "inside"
    if observed.host is not None and recorded.host is not None:
        evidence = "host+inside"
        findings += _env_findings(
            pick(recorded.host.config_env),
            pick(observed.host.config_env),
            "container configuration (host)",
        )
    if observed.probe is not None and recorded.probe is not None:
        seen = {f.name for f in findings}
        findings += [
            f
            for f in _env_findings(
                pick(recorded.probe.env), pick(observed.probe.env), "process (inside)"
            )
            if f.name not in seen
        ]
    elif recorded.probe is not None and observed.host is None:
        return _inside_check(
            "env", recorded.probe, observed, lambda e, o: _skip("env", "inside", "")
        )
    return _check(
        "env",
        p,
        evidence,
        findings,
        ok="environment variables as recorded",
        bad=f"{len(findings)} environment variable(s) differ",
    )


def check_system(expected: ProbeReport, observed: ProbeReport, p: Policy) -> Check:
    fields = ("id", "version_id", "glibc", "machine")
    want, have = expected.os, observed.os
    findings = _changed_fields(want, have, fields)
    return _check(
        "system",
        p,
        "inside",
        findings,
        ok=f"{have.pretty_name or have.id}, glibc {have.glibc}, {have.machine}",
        bad="the operating system differs from the manifest",
    )


INSTALLER_TOOLING = frozenset({"pip", "setuptools", "wheel"})
"""Distributions a lock need not list: installed with the environment, not by the lock."""


def _same_version(a: str, b: str) -> bool:
    if a == b:
        return True
    from packaging.version import InvalidVersion, Version

    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return False


def lock_findings(lock: LockInfo, probe: ProbeReport) -> list[Finding]:
    """Every difference between installed distributions and a lock: `missing`, `extra` (beyond
    pip, setuptools and wheel), `version`, and `hash` where pip's installation report kept
    the sha256 of an archive the lock does not allow."""
    pins = {p.name: p for p in lock.pins}
    installed = {d.name: d for d in probe.distributions}
    findings: list[Finding] = []
    for name in sorted(pins.keys() | installed.keys()):
        pin, dist = pins.get(name), installed.get(name)
        if dist is None and pin is not None:
            findings.append(
                Finding(
                    kind="missing", name=name, expected=pin.version, message="locked, not installed"
                )
            )
        elif pin is None and dist is not None:
            if name not in INSTALLER_TOOLING:
                findings.append(
                    Finding(
                        kind="extra",
                        name=name,
                        observed=dist.version,
                        path=dist.location,
                        message="installed, not in the lock",
                    )
                )
        elif pin is not None and dist is not None and not _same_version(pin.version, dist.version):
            findings.append(
                Finding(kind="version", name=name, expected=pin.version, observed=dist.version)
            )
    report = probe.pip_report
    if report is None:
        return findings
    if report.error is not None:
        findings.append(
            Finding(
                kind="hash",
                path=report.path,
                message=f"pip's installation report cannot be read: {report.error}",
            )
        )
    for archive in report.archives:
        pin, dist = pins.get(archive.name), installed.get(archive.name)
        if pin is None or dist is None or not pin.hashes:
            continue  # missing/extra already said; an unhashed pin allows any archive
        if not (
            _same_version(archive.version, dist.version)
            and _same_version(archive.version, pin.version)
        ):
            continue  # the report describes another install than the one in place
        if archive.sha256 in pin.hashes:
            continue
        findings.append(
            Finding(
                kind="hash",
                name=archive.name,
                path=report.path,
                expected=f"one of the {len(pin.hashes)} archive sha256s the lock allows",
                observed=f"sha256:{archive.sha256}" if archive.sha256 else "no archive hash",
                message="pip installed an archive the lock does not allow"
                if archive.sha256
                else "pip installed it from something other than an archive",
            )
        )
    return findings


def check_lock(manifest: Manifest, observation: Observation, p: Policy) -> Check:
    """The installed distributions against the lock the manifest was recorded with."""
    lock = manifest.lock
    if lock is None:
        return _skip("lock", "inside", "the manifest binds no lock (record --lock)")

    def build(_: ProbeReport, observed: ProbeReport) -> Check:
        findings = lock_findings(lock, observed)
        hashes = "; archive hashes match pip's report" if observed.pip_report else ""
        return _check(
            "lock",
            p,
            "inside",
            findings,
            ok=f"{len(lock.pins)} pins of {lock.path} installed as locked{hashes}",
            bad=f"{len(findings)} difference(s) from the lock {lock.path}",
        )

    return _inside_check("lock", manifest.observation.probe, observation, build)


def compare(manifest: Manifest, observation: Observation, policy: Policy) -> list[Check]:
    """Every check except `signature` (the caller verified the envelope before trusting it)."""
    recorded = manifest.observation
    return [
        check_image(recorded.host, observation.host, policy),
        _inside_check(
            "packages", recorded.probe, observation, lambda e, o: check_packages(e, o, policy)
        ),
        check_filesystem(manifest, observation.host, policy),
        _inside_check(
            "python", recorded.probe, observation, lambda e, o: check_python(e, o, policy)
        ),
        check_env(manifest, observation, policy),
        _inside_check(
            "system", recorded.probe, observation, lambda e, o: check_system(e, o, policy)
        ),
        check_lock(manifest, observation, policy),
    ]


def verified(checks: Iterable[Check]) -> bool:
    return all(c.status != "fail" for c in checks)
