"""The process's surroundings: ``python`` (the interpreter and its sys.path), ``env`` (the
variables that shape a CUDA process, from the container's configuration on the host and from the
process inside) and ``system`` (the OS, glibc and machine)."""

from __future__ import annotations

from lockd.judgement.checks.interface import changed_fields, inside_check, skipped, under_policy
from lockd.judgement.policy import Policy
from lockd.model.environment import ProbeReport
from lockd.model.manifest import Manifest, Observation
from lockd.model.report import Check, Evidence, Finding

_ENV_PREFIXES = ("CUDA_", "NCCL_", "NVIDIA_", "PYTORCH_", "TORCH_", "CUBLAS_")
_ENV_NAMES = frozenset({"LD_LIBRARY_PATH", "LD_PRELOAD", "PYTHONPATH", "PYTHONHOME"})


def selected_env(name: str) -> bool:
    """The variables that shape a Python/CUDA process (the probe selects the same)."""
    if name.endswith("_VISIBLE_DEVICES"):
        return False
    return name in _ENV_NAMES or name.startswith(_ENV_PREFIXES)


def check_python(expected: ProbeReport, observed: ProbeReport, p: Policy) -> Check:
    fields = ("version", "implementation", "executable", "prefix", "base_prefix")
    want, have = expected.python, observed.python
    findings = changed_fields(want, have, fields)
    if want.path != have.path:
        findings.append(
            Finding(
                kind="changed",
                name="sys.path",
                expected=":".join(want.path),
                observed=":".join(have.path),
            )
        )
    return under_policy(
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
        return inside_check(
            "env", recorded.probe, observed, lambda e, o: skipped("env", "inside", "")
        )
    return under_policy(
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
    findings = changed_fields(want, have, fields)
    return under_policy(
        "system",
        p,
        "inside",
        findings,
        ok=f"{have.pretty_name or have.id}, glibc {have.glibc}, {have.machine}",
        bad="the operating system differs from the manifest",
    )
