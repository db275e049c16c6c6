"""``lock`` (inside): the installed distributions against the lock the manifest was recorded with:
missing, extra, another version, or an archive whose hash the lock does not allow."""

from __future__ import annotations

from lockd.judgement.checks.interface import inside_check, skipped, under_policy
from lockd.judgement.policy import Policy
from lockd.model.environment import ProbeReport
from lockd.model.manifest import LockInfo, Manifest, Observation
from lockd.model.report import Check, Finding

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
        return skipped("lock", "inside", "the manifest binds no lock (record --lock)")

    def build(_: ProbeReport, observed: ProbeReport) -> Check:
        findings = lock_findings(lock, observed)
        hashes = "; archive hashes match pip's report" if observed.pip_report else ""
        return under_policy(
            "lock",
            p,
            "inside",
            findings,
            ok=f"{len(lock.pins)} pins of {lock.path} installed as locked{hashes}",
            bad=f"{len(findings)} difference(s) from the lock {lock.path}",
        )

    return inside_check("lock", manifest.observation.probe, observation, build)
