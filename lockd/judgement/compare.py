"""compare(manifest, observation, policy): the heart of lockd. Pure: no I/O.

Each check says which evidence it rests on: `host` (the Docker daemon and the host's view of
the container's filesystem, trustworthy even if the container is compromised) or `inside`
(what the probe running in the target says about itself).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from operator import attrgetter

from lockd.judgement.checks import COMPARED
from lockd.judgement.policy import Policy, shadows_code
from lockd.model.environment import Distribution, ProbeReport
from lockd.model.host import HostEvidence
from lockd.model.manifest import LockInfo, Manifest, Observation
from lockd.model.report import Check, Evidence, Finding

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
    expected: Sequence[Distribution], observed: Sequence[Distribution], ignore: set[str]
) -> list[Finding]:
    if list(map(vars, expected)) == list(map(vars, observed)):
        # The common case, a target as recorded: every field equal, in order (compared in C;
        # the models' own == is far slower), so there is nothing to find.
        return []
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
    if shadows_code(destination, p.filesystem):
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
    recorded_mounts = (
        {(m.destination, m.source, m.type) for m in recorded.mounts} if recorded else set()
    )
    from lockd.judgement.filechanges import judge_changes, summary

    judged = judge_changes(manifest, observed, p)
    findings = [
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
    findings += kernel_mount_findings(observed)
    source = {
        "overlay": "the overlay upper directory",
        "api": "the daemon's changes API",
        "none": "a fresh container of the image",
    }[observed.changes_source]
    ok, bad = summary(judged, findings, source)
    return _check(
        "filesystem",
        p,
        "host",
        judged.listed(findings),
        ok=ok,
        bad=bad,
        failed=bool(judged.failing or findings),
    )


def kernel_mount_findings(observed: HostEvidence) -> list[Finding]:
    """The mounts the kernel lists in the container's namespaces that nobody asked the daemon
    for (lockd.evidence.kernel): a mount made inside the container hides what lies below it from
    every other check. Each one, whatever it covers: its content is not evidence lockd compares."""
    if observed.kernel is None:
        return []
    return [
        Finding(
            kind="mount",
            path=m.mount_point,
            observed=f"{m.fstype} {m.source}",
            message=f"{m.fstype} mounted inside the container (not among the daemon's mounts)",
        )
        for m in observed.kernel.mounts
        if m.declared is None
    ]


_REACHES_HOST = frozenset({"SYS_ADMIN", "CAP_SYS_ADMIN", "ALL"})


def isolation_findings(observed: HostEvidence) -> list[Finding]:
    """What the kernel's view says of the container's isolation: processes whose root is not
    the container's (chroot, pivot_root: sshd's privilege separation, browser sandboxes, or a
    decoy), a container that can reach the host (--privileged, CAP_SYS_ADMIN: nothing is
    guaranteed for it), a view the host could not read whole."""
    findings = []
    kernel = observed.kernel
    if kernel is None:
        findings.append(
            Finding(
                kind="unreadable",
                message="the host could not read the container's processes (not root, another "
                "host's daemon, or a lockd that did not record them): mounts made inside it and "
                "foreign roots are not seen",
            )
        )
    else:
        if kernel.incomplete is not None:
            findings.append(Finding(kind="unreadable", message=kernel.incomplete))
        findings += [
            Finding(
                kind="foreign-root",
                name=f.command,
                path=f.root,
                observed=f"pid {f.pid}",
                message=f.why,
            )
            for f in kernel.foreign_roots
        ]
    if observed.privileged:
        findings.append(
            Finding(kind="privileged", message="--privileged: the container can reach the host")
        )
    findings += [
        Finding(
            kind="capability",
            name=cap,
            message=f"{cap} added: the container can mount, and reach the host",
        )
        for cap in observed.cap_add
        if cap.upper() in _REACHES_HOST
    ]
    return findings


def check_isolation(observation: Observation, p: Policy) -> Check:
    """``isolation`` (host evidence; ``warn`` by default): lockd.evidence.kernel's view of the
    container's processes, and whether the daemon gave it the means to escape."""
    observed = observation.host
    if observed is None or observation.target.kind != "container":
        return _skip("isolation", "host", "only a running container has processes to read")
    findings = isolation_findings(observed)
    return _check(
        "isolation",
        p,
        "host",
        findings,
        ok="every process has the container's root; no privilege that reaches the host",
        bad=f"{len(findings)} finding(s) on the container's isolation",
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


# --- the CUDA stack as loaded, the driver, the GPU validation suite ---------------------------

_TORCH_FIELDS = ("version", "git_version", "cuda", "cudnn", "nccl", "cublas", "arch_flags")
_LOADED_VS_INSTALLED = (
    ("cudnn", "cuDNN", "nvidia-cudnn"),
    ("nccl", "NCCL", "nvidia-nccl"),
    ("cublas", "cuBLAS", "nvidia-cublas"),
)


def _installed(probe: ProbeReport, stem: str) -> Distribution | None:
    """The nvidia-* wheel of a library: `nvidia-cudnn-cu12`, `nvidia-cublas` (CUDA 13)…"""
    for d in probe.distributions:
        if d.name == stem or d.name.startswith(stem + "-cu"):
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
        return _skip("cuda", "inside", "the manifest records no CUDA build of torch")
    if have is None:
        findings = [Finding(kind="removed", name="torch", expected=want.version)]
        return _check("cuda", p, "inside", findings, ok="", bad="torch is not installed here")
    recorded = [f for f in _TORCH_FIELDS if getattr(want, f) is not None]
    findings = _changed_fields(want, have, recorded)
    if have.error is not None:
        findings.append(
            Finding(kind="error", name="torch", observed=have.error, message="import torch fails")
        )
    findings += loaded_findings(observed)
    return _check(
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
        return _skip("driver", "inside", "the manifest records no CUDA build of torch")
    if probe is None or (probe.driver is None and not probe.gpus):
        return _skip("driver", "inside", "no NVIDIA driver or GPU visible in the target")
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
        return _check("driver", p, "inside", [finding], ok="", bad=f"cannot judge {seen}: {e}")
    if verdict is None:
        return _skip("driver", "inside", f"nothing to judge: {seen}")
    findings = (
        []
        if verdict.runs
        else [Finding(kind="incompatible", message=reason) for reason in verdict.reasons]
    )
    return _check(
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
        return _skip("gpu", "inside", "the manifest holds no GPU suite results (record --gpu)")
    from lockd.judgement.gpucompare import compare_suites, describe

    if observed is None:
        where = ", ".join(describe(r) for r in recorded)
        return _skip("gpu", "inside", f"not run (verify --gpu): results recorded on {where}")
    result = compare_suites(recorded, observed)
    if result.reference is None:
        finding = Finding(kind="no-reference", message=result.message)
        return _check("gpu", p, "inside", [finding], ok="", bad=result.message)
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
    return _check(
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


# --- installed files against their RECORDs (--deep) --------------------------------------------

_INTEGRITY_SOURCES = {
    "overlay": "the container's overlay merged directory, on the host",
    "layers": "the image's overlay2 layers, on the host",
    "api": "the Docker daemon's archive API",
    "local": "the local filesystem",
}


def check_integrity(observation: Observation, p: Policy) -> Check:
    """The target's installed files against their RECORDs, as --deep hashed them (the check
    needs nothing from the manifest: `packages` already holds each RECORD to the recorded one).
    """
    found = observation.integrity
    if found is None:
        return _skip("integrity", "host", "not checked: --deep hashes every installed file")
    where = _INTEGRITY_SOURCES[found.source]
    if found.reused_from is not None:
        where += (
            f"; the result of {found.reused_from}, taken from lockd's integrity cache: what "
            "the container can see is what was hashed then (in it or in an identical container "
            "of the same image) and its image layers' files are those hashed then, --no-cache "
            "hashes them again"
        )
    elif found.cached:
        where += (
            f"; {found.cached} files from lockd's layer cache: digests of the image's "
            "read-only layers, hashed before, --no-cache hashes them again"
        )
    count = len(found.findings) + found.omitted
    kinds: dict[str, int] = {}
    for f in found.findings:
        kinds[f.kind] = kinds.get(f.kind, 0) + 1
    summary = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    if found.omitted:
        summary += f" ({found.omitted} more not listed)"
    unchecked = ""
    if found.without_record:
        unchecked = f"; {len(found.without_record)} without a RECORD not checked"
    return _check(
        "integrity",
        p,
        found.evidence,
        list(found.findings),
        ok=f"{found.files} files of {found.distributions} distributions match their RECORD "
        f"(read from {where}){unchecked}",
        bad=f"{count} finding(s) against the RECORDs: {summary} (read from {where})",
        failed=count > 0,
    )


# --- the PyTorch family against the installed torch (lockd.judgement.coherence) -------------------


def coherence_findings(observation: Observation) -> list[Finding]:
    """Every way the target's PyTorch family does not fit its torch (`mismatch`, `variant`,
    `requirement`: lockd.judgement.coherence) and, where the import smoke test ran (--deep), every
    member that failed to import or run its compiled op (`import`)."""
    from lockd.judgement.coherence import evaluate
    from lockd.judgement.locks import marker_environment

    probe = observation.probe
    if probe is None:
        return []
    versions = {d.name: d.version for d in probe.distributions}
    findings = [
        Finding(
            kind=p.kind,
            name=p.name,
            expected=p.expected,
            observed=p.version,
            message=f"{p.message} (source: {p.source})",
        )
        for p in evaluate(versions, marker_environment(probe))
    ]
    imports = observation.family_imports
    if imports is not None:
        if imports.error is not None:
            findings.append(
                Finding(kind="import", message=f"the import smoke test failed: {imports.error}")
            )
        findings += [
            Finding(
                kind="import",
                name=r.name,
                observed=r.version,
                message=f"import {r.module}" + (f" and {r.op}" if r.op else "") + f": {r.error}",
            )
            for r in imports.results
            if not r.ok
        ]
    return findings


def check_coherence(observation: Observation, p: Policy) -> Check:
    """The installed PyTorch family (torchvision, torchaudio, triton, nvidia-*...) against the
    installed torch; with --deep, each member imported and a compiled op run inside the target.
    Needs nothing from the manifest: it judges the target as it is."""
    probe = observation.probe
    if probe is None:
        return _skip("coherence", "inside", "no probe report: nothing to judge")
    if "torch" not in map(attrgetter("name"), probe.distributions):  # a C loop: the hot path
        return _skip("coherence", "inside", "torch is not installed: no PyTorch family to judge")
    from lockd.judgement.coherence import family  # only here: `verify` start-up time matters

    versions = family({d.name: d.version for d in probe.distributions})
    torch = versions.get("torch")
    if torch is None:
        return _skip("coherence", "inside", "torch is not installed: no PyTorch family to judge")
    findings = coherence_findings(observation)
    members = ", ".join(f"{n} {v}" for n, v in versions.items() if n != "torch")
    imports = observation.family_imports
    if imports is None:
        smoke = "import smoke test not run (--deep runs it)"
    else:
        passed = sum(r.ok for r in imports.results)
        smoke = f"import smoke test: {passed} of {len(imports.results)} imported, op run"
    return _check(
        "coherence",
        p,
        "inside",
        findings,
        ok=f"torch {torch}" + (f" with {members}" if members else "") + f": coherent; {smoke}",
        bad=f"{len(findings)} finding(s): the PyTorch family does not fit torch {torch} ({smoke})",
    )


# --- what the process loaded (lockd.judgement.libraries) ------------------------------------------


def check_libraries(manifest: Manifest, observation: Observation, p: Policy) -> Check:
    """The shared objects the target's processes mapped (after `import torch`; with --gpu after
    the suite) against the manifest's record (added, missing, moved, changed), and what is
    wrong with them on their own (shadowed, unowned, duplicate, modified, deleted, env-version,
    pin-version: lockd.judgement.libraries). A finding of the second kind that the manifest's own
    record already had is reported, marked as known, and does not fail the check: it is how the
    environment was recorded; a new one does."""
    from lockd.judgement.libraries import (
        compare_with_manifest,
        finding_key,
        intrinsic_findings,
        library_findings,
        manifest_records,
        records,
        summary,
    )

    recorded = manifest_records(manifest)
    if not recorded:
        return _skip("libraries", "inside", "the manifest records no mapped libraries")
    seen = records(observation)
    if not seen:
        probe = observation.probe
        why = (
            "the probe did not run"
            if probe is None
            else "torch is not installed here"
            if probe.torch is None
            else "the target made no record (LOCKD_PROBE_LIBRARIES=0?)"
        )
        finding = Finding(kind="not-recorded", message=why)
        return _check("libraries", p, "inside", [finding], ok="", bad=f"no record: {why}")
    errors = [
        Finding(kind="error", name=r.scope, message=r.error) for r in seen if r.error is not None
    ]
    failing = errors + compare_with_manifest(manifest, observation)
    probe = manifest.observation.probe
    known = set()
    if probe is not None:
        mine = manifest_records(manifest, observation.gpu_suite)
        known = {finding_key(f) for f in intrinsic_findings(probe, mine, manifest.lock)}
    reported: list[Finding] = []
    for f in library_findings(observation, manifest.lock):
        if finding_key(f) in known:
            note = "known: the manifest's own record has it too; " + (f.message or "")
            reported.append(f.model_copy(update={"message": note}))
        else:
            failing.append(f)
    kinds: dict[str, int] = {}
    for f in failing:
        kinds[f.kind] = kinds.get(f.kind, 0) + 1
    counted = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    also = f"; {len(reported)} known finding(s) as recorded" if reported else ""
    return _check(
        "libraries",
        p,
        "inside",
        failing + reported,
        ok="; ".join(summary(r) for r in seen) + ": as recorded" + also,
        bad=f"{len(failing)} finding(s) on the libraries the process loaded: {counted}{also}",
        failed=bool(failing),
    )


Runner = Callable[[Manifest, Observation, Policy], Check]


def _inside(check_id: str, run: Callable[[ProbeReport, ProbeReport, Policy], Check]) -> Runner:
    """A check of two probe reports, skipped where either has none."""
    return lambda m, o, p: _inside_check(
        check_id, m.observation.probe, o, lambda want, have: run(want, have, p)
    )


RUNNERS: dict[str, Runner] = {
    "image": lambda m, o, p: check_image(m.observation.host, o.host, p),
    "packages": _inside("packages", check_packages),
    "filesystem": lambda m, o, p: check_filesystem(m, o.host, p),
    "python": _inside("python", check_python),
    "env": check_env,
    "system": _inside("system", check_system),
    "lock": check_lock,
    "cuda": _inside("cuda", check_cuda),
    "driver": lambda m, o, p: _inside_check(
        "driver", m.observation.probe, o, lambda _want, _have: check_driver(m, o, p)
    ),
    "gpu": check_gpu,
    "integrity": lambda _m, o, p: check_integrity(o, p),
    "coherence": lambda _m, o, p: check_coherence(o, p),
    "libraries": check_libraries,
    "isolation": lambda _m, o, p: check_isolation(o, p),
}
"""How compare() runs each check of the registry (lockd.judgement.checks), by id."""


def compare(manifest: Manifest, observation: Observation, policy: Policy) -> list[Check]:
    """Every check except `signature` (the caller verified the envelope before trusting it), in
    the registry's order."""
    return [RUNNERS[check_id](manifest, observation, policy) for check_id in COMPARED]


def verified(checks: Iterable[Check]) -> bool:
    return all(c.status != "fail" for c in checks)
