"""Reports and manifests for people (rich tables) and machines (JSON)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from lockd.model.manifest import Manifest
from lockd.model.report import Check, Finding, Report

if TYPE_CHECKING:
    from rich.console import Console

    from lockd.trust.statement import Subject

STYLE = {"pass": "green", "fail": "bold red", "warn": "yellow", "skip": "dim"}
EVIDENCE = {
    "host": "host (trusted)",
    "inside": "inside (self-reported)",
    "host+inside": "host + inside",
    "signature": "signature",
}
MAX_FINDINGS_SHOWN = 25


def report_json(report: Report) -> str:
    return report.model_dump_json(indent=2, exclude_none=True)


def _finding_line(f: Finding) -> str:
    subject = f.name or f.path or ""
    if f.name and f.path and f.kind == "added":
        subject = f"{f.name} ({f.path})"
    elif f.name and f.path:  # a file of a distribution (integrity): the file first
        subject = f"{f.path} ({f.name})"
    values = ""
    if f.expected is not None or f.observed is not None:
        values = f": {f.expected if f.expected is not None else '-'} -> "
        values += f.observed if f.observed is not None else "-"
    note = f"  [{f.message}]" if f.message else ""
    return f"{f.kind} {subject}{values}{note}"


def checks_table(checks: Sequence[Check], title: str) -> object:
    """One row per check; the findings follow the table (see print_checks)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    table.add_column("check", style="bold", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("evidence", no_wrap=True)
    table.add_column("summary", overflow="fold")
    for check in checks:
        table.add_row(
            check.id,
            f"[{STYLE[check.status]}]{check.status.upper()}[/]",
            EVIDENCE[check.evidence],
            escape(check.message),
        )
    return table


def print_checks(checks: Sequence[Check], title: str, console: Console) -> None:
    """The table, then each check's findings one per line (paths are never wrapped)."""
    from rich.markup import escape

    console.print(checks_table(checks, title))
    for check in checks:
        if not check.findings:
            continue
        style = STYLE[check.status]
        console.print(
            f"\n[bold]{check.id}[/] [{style}]{check.status.upper()}[/] "
            f"({EVIDENCE[check.evidence]}):"
        )
        shown = check.findings[:MAX_FINDINGS_SHOWN]
        for finding in shown:
            console.print(f"  [{style}]{escape(_finding_line(finding))}[/]", soft_wrap=True)
        if len(check.findings) > len(shown):
            more = len(check.findings) - len(shown)
            console.print(f"  ... and {more} more (see --json)")


def print_report(report: Report, console: Console) -> None:
    from rich.markup import escape

    target = report.target
    title = f"lockd verify {target['kind']}:{target['ref']} against {report.manifest.path}"
    print_checks(report.checks, title, console)
    console.print()
    if report.verified:
        console.print("[bold green]VERIFIED[/]: the target is the recorded environment")
    else:
        failed = ", ".join(c.id for c in report.checks if c.status == "fail")
        console.print(f"[bold red]NOT VERIFIED[/]: failing checks: {failed}")
    console.print(
        "[dim]evidence: host = from the Docker daemon and the host's view of the container's "
        "files (trusted); inside = what the target's own probe reported (a compromised "
        "container can fake it)[/]"
    )
    reused = target.get("probe_reused_from")
    if reused is not None:
        console.print(
            f"[dim]inside evidence: the probe's report of {escape(str(reused))}, taken from "
            "lockd's probe cache: what the probe can see (read on the host) is what it saw "
            "then, in this container or an identical one of the same image; --no-cache runs "
            "it again[/]"
        )


def print_manifest(
    subjects: Sequence[Subject], manifest: Manifest, signers: Sequence[str], console: Console
) -> None:
    from rich.markup import escape
    from rich.table import Table

    obs = manifest.observation
    console.print(f"[bold]lockd manifest[/] of {obs.target.kind}:{escape(obs.target.ref)}")
    console.print(f"recorded {manifest.recorded_at} by lockd {manifest.lockd_version}")
    if signers:
        console.print(f"signatures (keyid, not checked by show): {', '.join(signers)}")
    for s in subjects:
        console.print(f"subject {escape(s.name)}  sha256:{s.digest['sha256']}")
    if obs.host is not None:
        host = obs.host
        console.print(f"image {host.image_id}  tags {', '.join(host.repo_tags) or '-'}")
        console.print(
            f"filesystem changes since the image: {len(host.changes)} ({host.changes_source})"
        )
        for m in host.mounts:
            console.print(f"mount {escape(m.destination)} <- {m.type} {escape(m.source)}")
    if obs.probe is None:
        console.print(f"[yellow]no probe report[/]: {escape(obs.probe_error or '')}")
        return
    probe = obs.probe
    py = probe.python
    console.print(f"python {py.implementation} {py.version} at {escape(py.executable)}")
    console.print(
        f"os {probe.os.pretty_name or probe.os.id} glibc {probe.os.glibc} {probe.os.machine}"
    )
    if probe.torch is not None:
        t = probe.torch
        console.print(
            f"torch {t.version}  CUDA {t.cuda or '-'}  cuDNN {t.cudnn or '-'}  "
            f"NCCL {t.nccl or '-'}  arch {t.arch_flags or '-'}"
            + (f"  cuBLAS {t.cublas}" if t.cublas else "")
            + (f"  [red]import failed: {escape(t.error)}[/]" if t.error else "")
        )
    if probe.driver is not None:
        drv = probe.driver
        console.print(f"driver {drv.version} (CUDA {drv.cuda or '-'}, from {drv.source})")
    for g in probe.gpus:
        console.print(
            f"gpu {g.index} {escape(g.name)}  sm_{g.compute_capability.replace('.', '')}  "
            f"{g.sm_count or '-'} SMs  uuid sha256:{(g.uuid_sha256 or '-')[:16]}"
        )
    if manifest.gpu_suites:
        from lockd.judgement.gpucompare import summary

        for result in manifest.gpu_suites:
            console.print(escape(summary(result)) + f" (recorded {result.recorded_at or '-'})")
    print_loaded(manifest, console)
    if manifest.lock is not None:
        from lockd.judgement.locks import cuda_stack

        lock = manifest.lock
        target = f" for {lock.python} {lock.platform}" if lock.python and lock.platform else ""
        console.print(
            f"lock {escape(lock.path)} sha256:{lock.sha256}: {len(lock.pins)} pins{target}"
        )
        pinned = cuda_stack(lock.pins)
        if pinned:
            console.print("lock pins " + "  ".join(f"{k} {v}" for k, v in pinned.items()))
    for name, value in sorted(probe.env.items()):
        console.print(f"env {name}={escape(value)}")
    table = Table(title=f"{len(probe.distributions)} distributions", title_justify="left")
    for column in ("name", "version", "installer", "files", "location"):
        table.add_column(column)
    for d in probe.distributions:
        table.add_row(d.name, d.version, d.installer or "-", str(d.files), escape(d.location))
    console.print(table)


def print_loaded(manifest: Manifest, console: Console) -> None:
    """What the recorded processes mapped (lockd.judgement.libraries) and the CUDA code of each
    installed shared object that carries some."""
    from rich.markup import escape

    from lockd.judgement.libraries import records, summary

    for record in records(manifest.observation):
        if record.error is not None:
            console.print(f"[yellow]loaded libraries ({record.scope}): {escape(record.error)}[/]")
            continue
        console.print(escape(summary(record)))
        for lib in record.libraries:
            owner = lib.owner
            by = f"{owner.kind} {owner.name} {owner.version or ''}".rstrip() if owner else "-"
            digest = f"sha256:{lib.sha256[:16]}" if lib.sha256 else "no sha256"
            note = "  [red]deleted[/]" if lib.deleted else ""
            if lib.shadows:
                note += f"  [red]in place of {escape(', '.join(lib.shadows))}[/]"
            console.print(
                f"  {lib.role:<12} {escape(lib.path)}  {escape(lib.version or '-')}  {digest}  "
                f"{lib.size if lib.size is not None else '-'} B  {escape(by)}{note}",
                soft_wrap=True,
            )
        if record.env_versions:
            pairs = "  ".join(f"{k}={v}" for k, v in sorted(record.env_versions.items()))
            console.print(f"  variables: {escape(pairs)}")
    probe = manifest.observation.probe
    if probe is not None:
        from lockd.judgement.libraries import intrinsic_findings, manifest_records

        for finding in intrinsic_findings(probe, manifest_records(manifest), manifest.lock):
            line = escape(_finding_line(finding))
            console.print(f"  [yellow]finding: {line}[/]", soft_wrap=True)
    found = probe.extensions if probe is not None else None
    if found is None:
        return
    console.print(
        f"CUDA code in {len(found.binaries)} of {found.files} installed shared objects "
        f"(read in {found.seconds:.2f} s)"
    )
    for binary in found.binaries:
        ptx = " ".join(binary.ptx) or "no PTX"
        isa = f" (PTX ISA {', '.join(binary.ptx_isa)})" if binary.ptx_isa else ""
        mixed = f"; {len(binary.groups)} kernel sets differ" if len(binary.groups) > 1 else ""
        console.print(
            f"  {escape(binary.name)}: {' '.join(binary.sass) or 'no cubin'}; {ptx}{isa}; "
            f"{binary.containers} containers{mixed}",
            soft_wrap=True,
        )
