"""The CUDA stack: ``cuda`` (torch and the CUDA libraries as the process loaded them), ``driver``
(the target's NVIDIA driver and GPUs against what the recorded build needs) and ``gpu`` (the GPU
validation suite's results against the recorded ones)."""

from __future__ import annotations

from lockd.judgement.checks.interface import changed_fields, skipped, under_policy
from lockd.judgement.libraries import is_wheel_of
from lockd.judgement.policy import Policy
from lockd.model.environment import Distribution, ProbeReport
from lockd.model.manifest import Manifest, Observation
from lockd.model.report import Check, Finding

_TORCH_FIELDS = ("version", "git_version", "cuda", "cudnn", "nccl", "cublas", "arch_flags")
_LOADED_VS_INSTALLED = (
    ("cudnn", "cuDNN", "nvidia-cudnn"),
    ("nccl", "NCCL", "nvidia-nccl"),
    ("cublas", "cuBLAS", "nvidia-cublas"),
)


def _installed(probe: ProbeReport, stem: str) -> Distribution | None:
    """The nvidia-* wheel of a library: `nvidia-cudnn-cu12`, `nvidia-cublas` (CUDA 13)…"""
    for d in probe.distributions:
        if is_wheel_of(d.name, stem):
            return d
    return None


def _leads(loaded: str, installed: str) -> bool:
    """Whether a version as loaded (9.19.0) is the start of a wheel's version (9.19.0.56)."""
    try:
        head = [int(part) for part in loaded.split(".")]
        tail = [int(part) for part in installed.split(".")[: len(head)]]
    except ValueError:
        return installed.startswith(loaded)
    return head == tail


def loaded_findings(probe: ProbeReport) -> list[Finding]:
    """`shadowed`: torch loaded a cuDNN, NCCL or cuBLAS other than the installed wheel's."""
    torch = probe.torch
    if torch is None:
        return []
    findings = []
    for field, label, stem in _LOADED_VS_INSTALLED:
        loaded = getattr(torch, field)
        wheel = _installed(probe, stem)
        if loaded is None or wheel is None or _leads(loaded, wheel.version):
            continue
        findings.append(
            Finding(
                kind="shadowed",
                name=field,
                expected=f"{wheel.name} {wheel.version}",
                observed=loaded,
                message=f"torch loaded {label} {loaded}, not the installed {wheel.name} "
                f"{wheel.version}: another copy shadows the wheel's (LD_LIBRARY_PATH, "
                "LD_PRELOAD or a system library?)",
            )
        )
    return findings


def check_cuda(expected: ProbeReport, observed: ProbeReport, p: Policy) -> Check:
    """torch and the CUDA libraries as the process loaded them, against the manifest."""
    want, have = expected.torch, observed.torch
    if want is None or all(v is None for v in (want.cuda, want.cudnn, want.nccl, want.cublas)):
        return skipped("cuda", "inside", "the manifest records no CUDA build of torch")
    if have is None:
        findings = [Finding(kind="removed", name="torch", expected=want.version)]
        return under_policy("cuda", p, "inside", findings, ok="", bad="torch is not installed here")
    recorded = [f for f in _TORCH_FIELDS if getattr(want, f) is not None]
    findings = changed_fields(want, have, recorded)
    if have.error is not None:
        findings.append(
            Finding(kind="error", name="torch", observed=have.error, message="import torch fails")
        )
    findings += loaded_findings(observed)
    return under_policy(
        "cuda",
        p,
        "inside",
        findings,
        ok=f"torch {have.version}: CUDA {have.cuda}, cuDNN {have.cudnn}, NCCL {have.nccl}, "
        f"cuBLAS {have.cublas or '-'} as loaded",
        bad=f"{len(findings)} difference(s) in the CUDA stack as loaded",
    )


def check_driver(manifest: Manifest, observation: Observation, p: Policy) -> Check:
    """The target's NVIDIA driver and GPUs against what the recorded build needs
    (lockd.judgement.compat:
    the toolkit and minor-version compatibility floors, cubin and PTX rules)."""
    recorded = manifest.observation.probe
    torch = recorded.torch if recorded is not None else None
    probe = observation.probe
    if torch is None or torch.cuda is None:
        return skipped("driver", "inside", "the manifest records no CUDA build of torch")
    if probe is None or (probe.driver is None and not probe.gpus):
        return skipped("driver", "inside", "no NVIDIA driver or GPU visible in the target")
    from lockd.errors import InputError
    from lockd.judgement import compat  # only here: `verify` start-up time matters

    driver = probe.driver.version if probe.driver is not None else None
    capabilities = sorted({g.compute_capability for g in probe.gpus})
    seen = ", ".join(
        [f"driver {driver}" if driver else "no driver version"]
        + [f"{g.name} (sm_{g.compute_capability.replace('.', '')})" for g in probe.gpus]
    )
    try:
        build = compat.build_from_manifest(manifest, "the manifest")
        verdict = compat.assess(build, driver=driver, gpus=capabilities).verdict
    except InputError as e:
        finding = Finding(kind="unknown", message=str(e))
        return under_policy(
            "driver", p, "inside", [finding], ok="", bad=f"cannot judge {seen}: {e}"
        )
    if verdict is None:
        return skipped("driver", "inside", f"nothing to judge: {seen}")
    findings = (
        []
        if verdict.runs
        else [Finding(kind="incompatible", message=reason) for reason in verdict.reasons]
    )
    return under_policy(
        "driver",
        p,
        "inside",
        findings,
        ok=f"{seen}: runs ({'; '.join(verdict.reasons)})",
        bad=f"{seen}: the recorded build does not run here",
        expected=f"CUDA {build.cuda}, {' '.join(str(t) for t in build.targets)}",
        observed=seen,
    )


def check_gpu(manifest: Manifest, observation: Observation, p: Policy) -> Check:
    """The GPU validation suite's run against the recorded results: bit for bit under the same
    comparison key, else by tolerance; names the tests that differ."""
    recorded = list(manifest.gpu_suites)
    if manifest.observation.gpu_suite is not None:
        recorded.append(manifest.observation.gpu_suite)
    observed = observation.gpu_suite
    if not recorded:
        return skipped("gpu", "inside", "the manifest holds no GPU suite results (record --gpu)")
    from lockd.judgement.gpucompare import compare_suites, describe

    if observed is None:
        where = ", ".join(describe(r) for r in recorded)
        return skipped("gpu", "inside", f"not run (verify --gpu): results recorded on {where}")
    result = compare_suites(recorded, observed)
    if result.reference is None:
        finding = Finding(kind="no-reference", message=result.message)
        return under_policy("gpu", p, "inside", [finding], ok="", bad=result.message)
    findings = [
        Finding(
            kind="setting" if d.setting else "key",
            name=d.field,
            expected=d.expected,
            observed=d.observed,
            message="a changed setting fails on its own"
            if d.setting
            else "why the comparison is by tolerance",
        )
        for d in result.key_diffs
    ]
    findings += [
        Finding(
            kind=o.kind, name=o.name, expected=o.expected, observed=o.observed, message=o.message
        )
        for o in result.outcomes
        if o.kind not in ("same", "within")
    ]
    against = f"against the result recorded on {describe(result.reference)}"
    compared = sum(o.kind in ("same", "within", "bits", "tolerance") for o in result.outcomes)
    if result.mode == "bits":
        how = f"bit for bit (same comparison key) {against}"
        ok = f"{how}: {compared} tests identical (signature {observed.signature[:16]})"
    else:
        fields = ", ".join(d.field for d in result.key_diffs)
        how = f"by tolerance (the key differs in {fields}) {against}"
        ok = f"{how}: {compared} tests within tolerance"
    settings = [d.field.removeprefix("settings.") for d in result.key_diffs if d.setting]
    bad = (
        how
        + ": "
        + "; ".join(
            part
            for part in (
                f"{', '.join(result.differing)} differ" if result.differing else "",
                f"changed settings: {', '.join(settings)}" if settings else "",
            )
            if part
        )
    )
    return under_policy(
        "gpu",
        p,
        "inside",
        findings,
        ok=ok,
        bad=bad,
        expected=result.reference.signature,
        observed=observed.signature,
        failed=result.failed,
    )
