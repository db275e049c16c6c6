"""What differs between two recorded environments, as a report people read to answer "why did
my numbers change": distributions added, removed or changed; the CUDA stack (torch, CUDA,
cuDNN, NCCL, cuBLAS, the driver); and, per GPU model, the GPU tests whose output digests differ
and how far their statistics moved.

Pure: :func:`diff_manifests` takes two parsed manifests; :func:`render_text` is the text the
terminal prints and the diff page shows; :func:`report_json` is ``lockd diff --json``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

from lockd.judgement.gpucompare import DEFAULT_TOLERANCE, TOLERANCES, deviation, key_differences
from lockd.model.gpusuite import GpuSuiteResult, GpuTestResult
from lockd.model.manifest import Manifest
from lockd.trust.statement import Subject

__all__ = [
    "DiffReport",
    "Difference",
    "Section",
    "Side",
    "diff_manifests",
    "render_text",
    "report_json",
]

RowKind = Literal["added", "removed", "changed", "modified"]
STAT_FIELDS = ("mean", "l2", "absmax", "sum")


@dataclass(frozen=True)
class Difference:
    """One difference: ``a`` is the value in the first manifest, ``b`` in the second (None:
    absent there); ``note`` says what it means."""

    kind: RowKind
    name: str
    a: str | None = None
    b: str | None = None
    note: str = ""


@dataclass(frozen=True)
class Section:
    """The differences of one aspect (``id``: distributions, cuda, gpu:<model>…)."""

    id: str
    title: str
    rows: tuple[Difference, ...] = ()
    details: tuple[str, ...] = ()  # lines under the rows (statistics that moved)
    same: str = ""  # what to say when the aspect does not differ


@dataclass(frozen=True)
class Side:
    """One of the two manifests: where it came from and what it names."""

    label: str
    subjects: tuple[str, ...]
    recorded_at: str
    lockd_version: str


@dataclass(frozen=True)
class DiffReport:
    a: Side
    b: Side
    sections: tuple[Section, ...] = field(default_factory=tuple)

    @property
    def differences(self) -> int:
        return sum(len(s.rows) for s in self.sections)

    @property
    def same(self) -> bool:
        return self.differences == 0


# --- building -----------------------------------------------------------------------------


def _side(label: str, manifest: Manifest, subjects: Sequence[Subject]) -> Side:
    return Side(
        label=label,
        subjects=tuple(f"{s.name} sha256:{s.digest.get('sha256', '?')}" for s in subjects),
        recorded_at=manifest.recorded_at,
        lockd_version=manifest.lockd_version,
    )


def _value_rows(pairs: Sequence[tuple[str, str | None, str | None, str]]) -> list[Difference]:
    rows = []
    for name, a, b, note in pairs:
        if a == b:
            continue
        kind: RowKind = "added" if a is None else "removed" if b is None else "changed"
        rows.append(Difference(kind, name, a, b, note))
    return rows


def _environment(a: Manifest, b: Manifest) -> Section:
    oa, ob = a.observation, b.observation
    pa, pb = oa.probe, ob.probe
    pairs: list[tuple[str, str | None, str | None, str]] = [
        (
            "image",
            oa.host.image_id if oa.host else None,
            ob.host.image_id if ob.host else None,
            "another image: everything below follows from it",
        ),
        (
            "python",
            pa.python.version if pa else None,
            pb.python.version if pb else None,
            "",
        ),
        ("os", pa.os.pretty_name if pa else None, pb.os.pretty_name if pb else None, ""),
        ("glibc", pa.os.glibc if pa else None, pb.os.glibc if pb else None, ""),
        ("machine", pa.os.machine if pa else None, pb.os.machine if pb else None, ""),
        (
            "lock",
            a.lock.sha256[:12] if a.lock else None,
            b.lock.sha256[:12] if b.lock else None,
            "another lock file (sha256 prefix)",
        ),
    ]
    env_a = pa.env if pa else {}
    env_b = pb.env if pb else {}
    for name in sorted(env_a.keys() | env_b.keys()):
        pairs.append((f"env {name}", env_a.get(name), env_b.get(name), ""))
    return Section(
        "environment", "Image, Python and OS", tuple(_value_rows(pairs)), same="the same"
    )


def _distributions(a: Manifest, b: Manifest) -> Section:
    da = {d.name: d for d in (a.observation.probe.distributions if a.observation.probe else [])}
    db = {d.name: d for d in (b.observation.probe.distributions if b.observation.probe else [])}
    rows: list[Difference] = []
    for name in sorted(da.keys() | db.keys()):
        x, y = da.get(name), db.get(name)
        if x is None and y is not None:
            rows.append(Difference("added", name, None, y.version))
        elif y is None and x is not None:
            rows.append(Difference("removed", name, x.version, None))
        elif x is not None and y is not None:
            if x.version != y.version:
                rows.append(Difference("changed", name, x.version, y.version))
            elif x.record_sha256 != y.record_sha256:
                rows.append(
                    Difference(
                        "modified",
                        name,
                        x.version,
                        y.version,
                        "same version, different files (RECORD digest)",
                    )
                )
    same = f"the same {len(da)} distributions" if da else "none recorded"
    counts = {k: sum(r.kind == k for r in rows) for k in ("changed", "added", "removed")}
    counts["modified"] = sum(r.kind == "modified" for r in rows)
    summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    title = "Distributions" + (f" ({summary})" if summary else "")
    return Section("distributions", title, tuple(rows), same=same)


def _cuda(a: Manifest, b: Manifest) -> Section:
    pa, pb = a.observation.probe, b.observation.probe
    ta, tb = (pa.torch if pa else None), (pb.torch if pb else None)
    va, vb = (pa.driver if pa else None), (pb.driver if pb else None)
    pairs: list[tuple[str, str | None, str | None, str]] = [
        ("torch", ta.version if ta else None, tb.version if tb else None, ""),
        ("torch git", ta.git_version if ta else None, tb.git_version if tb else None, ""),
        ("CUDA", ta.cuda if ta else None, tb.cuda if tb else None, "the CUDA torch was built with"),
        ("cuDNN", ta.cudnn if ta else None, tb.cudnn if tb else None, "as loaded"),
        ("NCCL", ta.nccl if ta else None, tb.nccl if tb else None, "as loaded"),
        ("cuBLAS", ta.cublas if ta else None, tb.cublas if tb else None, "as loaded"),
        ("arch list", ta.arch_flags if ta else None, tb.arch_flags if tb else None, ""),
        ("driver", va.version if va else None, vb.version if vb else None, ""),
        (
            "driver CUDA",
            va.cuda if va else None,
            vb.cuda if vb else None,
            "the newest CUDA the driver supports",
        ),
    ]
    ga = (
        ", ".join(f"{g.name} (sm_{g.compute_capability.replace('.', '')})" for g in pa.gpus)
        if pa
        else ""
    )
    gb = (
        ", ".join(f"{g.name} (sm_{g.compute_capability.replace('.', '')})" for g in pb.gpus)
        if pb
        else ""
    )
    pairs.append(("GPUs", ga or None, gb or None, ""))
    return Section("cuda", "CUDA stack", tuple(_value_rows(pairs)), same="the same")


def _suites(manifest: Manifest) -> list[GpuSuiteResult]:
    if manifest.gpu_suites:
        return list(manifest.gpu_suites)
    suite = manifest.observation.gpu_suite
    return [] if suite is None else [suite]


def _model(result: GpuSuiteResult) -> str:
    if result.device == "cpu":
        return f"CPU ({result.key.cpu_capability or result.key.machine})"
    cc = (result.key.compute_capability or "?").replace(".", "")
    return f"{result.gpu_name or 'GPU'} (sm_{cc})"


def _short(digest: str | None) -> str | None:
    return None if digest is None else digest[:12]


def _moved(name: str, x: float, y: float) -> str:
    if x == y:
        return f"{name} {x:.6g} (same)"
    if x == 0 or not (math.isfinite(x) and math.isfinite(y)):
        return f"{name} {x:.6g} -> {y:.6g}"
    return f"{name} {x:.6g} -> {y:.6g} ({(y - x) / abs(x) * 100:+.3g}%)"


def _test_row(x: GpuTestResult, y: GpuTestResult) -> tuple[Difference, str] | None:
    if x.status != "ok" or y.status != "ok":
        if x.status == y.status:
            return None
        return Difference("changed", x.name, x.status, y.status, y.reason or x.reason or ""), ""
    if x.sha256 == y.sha256:
        return None
    if x.stats is None or y.stats is None or (x.dtype, x.shape) != (y.dtype, y.shape):
        return Difference(
            "changed", x.name, _short(x.sha256), _short(y.sha256), "another output"
        ), ""
    off = deviation(x.stats, y.stats)
    rtol = TOLERANCES.get(x.name, DEFAULT_TOLERANCE).rtol
    verdict = "within" if off <= rtol else "BEYOND"
    note = f"deviation {off:.2e}, {verdict} tolerance {rtol:.0e}"
    moved = "; ".join(_moved(f, getattr(x.stats, f), getattr(y.stats, f)) for f in STAT_FIELDS)
    return Difference(
        "changed", x.name, _short(x.sha256), _short(y.sha256), note
    ), f"{x.name}: {moved}"


def _gpu_sections(a: Manifest, b: Manifest) -> list[Section]:
    sa = {_model(r): r for r in _suites(a)}
    sb = {_model(r): r for r in _suites(b)}
    sections = []
    for model in sorted(sa.keys() | sb.keys()):
        x, y = sa.get(model), sb.get(model)
        title = f"GPU suite on {model}"
        if x is None or y is None:
            kind: RowKind = "added" if x is None else "removed"
            present = y if x is None else x
            assert present is not None
            row = Difference(
                kind,
                "suite",
                None if x is None else "recorded",
                None if y is None else "recorded",
                f"only the {'second' if x is None else 'first'} manifest ran the suite here "
                f"({len(present.tests)} tests)",
            )
            sections.append(Section(f"gpu:{model}", title, (row,)))
            continue
        rows: list[Difference] = [
            Difference(
                "changed",
                f"key {d.field}",
                d.expected,
                d.observed,
                "a deterministic setting" if d.setting else "what the bits depend on",
            )
            for d in key_differences(x.key, y.key)
        ]
        details: list[str] = []
        tests_b = {t.name: t for t in y.tests}
        tests_a = {t.name: t for t in x.tests}
        for test in x.tests:
            other = tests_b.get(test.name)
            if other is None:
                rows.append(Difference("removed", test.name, test.status, None))
                continue
            found = _test_row(test, other)
            if found is not None:
                rows.append(found[0])
                if found[1]:
                    details.append(found[1])
        for test in y.tests:
            if test.name not in tests_a:
                rows.append(Difference("added", test.name, None, test.status))
        ok = sum(t.status == "ok" for t in x.tests)
        differ = sum(1 for r in rows if not r.name.startswith("key "))
        title += f": {differ} of {len(x.tests)} tests differ" if differ else ""
        same = f"all {ok} tests that ran are bit-identical (suite signature {x.signature[:12]})"
        sections.append(Section(f"gpu:{model}", title, tuple(rows), tuple(details), same=same))
    return sections


def diff_manifests(
    a: Manifest,
    b: Manifest,
    *,
    a_label: str = "A",
    b_label: str = "B",
    a_subjects: Sequence[Subject] = (),
    b_subjects: Sequence[Subject] = (),
) -> DiffReport:
    """Every difference between manifest ``a`` and manifest ``b``, aspect by aspect."""
    sections = [_environment(a, b), _distributions(a, b), _cuda(a, b), *_gpu_sections(a, b)]
    sections += _libraries(a, b)
    return DiffReport(
        a=_side(a_label, a, a_subjects), b=_side(b_label, b, b_subjects), sections=tuple(sections)
    )


def _libraries(a: Manifest, b: Manifest) -> list[Section]:
    """The shared objects the processes mapped, where either manifest recorded them: a file
    that changed under the same version is `modified` (lockd.judgement.libraries compares them)."""
    from lockd.judgement.libraries import manifest_differences, manifest_records

    if not manifest_records(a) and not manifest_records(b):
        return []
    rows: list[Difference] = []
    for f in manifest_differences(a, b):
        note = f.message or ""
        kind: RowKind = "changed"  # moved, or another file under another version
        if f.kind == "added":
            kind = "added"
        elif f.kind == "missing":
            kind = "removed"
        elif f.kind == "changed" and "same version" in note:
            kind = "modified"
        rows.append(
            Difference(
                kind=kind, name=f.name or f.path or "?", a=f.expected, b=f.observed, note=note
            )
        )
    return [
        Section(
            id="libraries",
            title="Loaded libraries (mapped by the process, with sha256)",
            rows=tuple(rows),
            same="the same files",
        )
    ]


# --- output -------------------------------------------------------------------------------

_MARK = {"added": "+", "removed": "-", "changed": "~", "modified": "!"}


def _cell(value: str | None) -> str:
    return "(none)" if value is None else value


def render_text(report: DiffReport) -> str:
    """The report as plain text (the terminal, and the diff page's preformatted block)."""
    lines = [
        f"A  {report.a.label}  recorded {report.a.recorded_at} by lockd {report.a.lockd_version}"
    ]
    lines += [f"     {s}" for s in report.a.subjects]
    lines.append(
        f"B  {report.b.label}  recorded {report.b.recorded_at} by lockd {report.b.lockd_version}"
    )
    lines += [f"     {s}" for s in report.b.subjects]
    for section in report.sections:
        lines.append("")
        if not section.rows:
            lines.append(f"{section.title}: {section.same or 'the same'}")
            continue
        lines.append(section.title)
        for row in section.rows:
            change = {
                "added": _cell(row.b),
                "removed": _cell(row.a),
                "modified": _cell(row.a),
            }.get(row.kind, f"{_cell(row.a)} -> {_cell(row.b)}")
            line = f"  {_MARK[row.kind]} {row.kind} {row.name}: {change}"
            lines.append(line + (f"  ({row.note})" if row.note else ""))
        if section.details:
            lines.append("  statistics that moved (A -> B):")
            lines += [f"    {d}" for d in section.details]
    lines.append("")
    n = report.differences
    if n == 0:
        lines.append("no differences")
    else:
        aspects = [s.title.split(" (")[0].split(":")[0] for s in report.sections if s.rows]
        lines.append(f"{n} difference(s) in {len(aspects)} aspect(s): {'; '.join(aspects)}")
    return "\n".join(lines) + "\n"


def report_json(report: DiffReport) -> str:
    """The report as JSON (sorted keys): ``same``, ``a``, ``b``, ``sections``."""
    body = {"same": report.same, "differences": report.differences, **asdict(report)}
    return json.dumps(body, sort_keys=True, indent=2)
