"""lockd diff as a report people read: two reference manifests of one training image before
and after an upgrade (reference_manifests.py); the whole text is pinned."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from reference_manifests import IMAGE_A, manifest_a, manifest_b

from lockd.judgement.diffing import diff_manifests, render_text, report_json
from lockd.model.manifest import Manifest
from lockd.trust.statement import make_statement, subjects_for

EXPECTED = """\
A  a.json  recorded 2026-09-01T10:00:00+00:00 by lockd 0.1.0
     train:2026.11 sha256:1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a
B  b.json  recorded 2026-11-20T10:00:00+00:00 by lockd 0.1.0
     train:2026.11 sha256:2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b

Image, Python and OS
  ~ changed image: sha256:1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a -> sha256:2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b  (another image: everything below follows from it)
  ~ changed lock: 9f9f9f9f9f9f -> 8e8e8e8e8e8e  (another lock file (sha256 prefix))
  ~ changed env NCCL_ALGO: Ring -> Tree

Distributions (2 changed, 2 added, 2 removed, 1 modified)
  ~ changed numpy: 2.3.4 -> 2.3.5
  - removed nvidia-cudnn-cu12: 9.10.2.21
  + added nvidia-cudnn-cu13: 9.19.0.56
  - removed nvidia-nccl-cu12: 2.27.3
  + added nvidia-nccl-cu13: 2.28.3
  ! modified six: 1.16.0  (same version, different files (RECORD digest))
  ~ changed torch: 2.10.0+cu128 -> 2.11.0+cu130

CUDA stack
  ~ changed torch: 2.10.0+cu128 -> 2.11.0+cu130
  ~ changed CUDA: 12.8 -> 13.0  (the CUDA torch was built with)
  ~ changed cuDNN: 91002 -> 91900  (as loaded)
  ~ changed NCCL: 2.27.3 -> 2.28.3  (as loaded)
  ~ changed cuBLAS: 12.8.4 -> 13.1.0  (as loaded)
  ~ changed driver: 570.133.20 -> 580.95.05
  ~ changed driver CUDA: 12.8 -> 13.0  (the newest CUDA the driver supports)

GPU suite on NVIDIA H100 80GB HBM3 (sm_90): 2 of 4 tests differ
  ~ changed key cublas: 12.8.4 -> 13.1.0  (what the bits depend on)
  ~ changed key cuda: 12.8 -> 13.0  (what the bits depend on)
  ~ changed key cudnn: 9.10.2 -> 9.19.0  (what the bits depend on)
  ~ changed key torch: 2.10.0+cu128 -> 2.11.0+cu130  (what the bits depend on)
  ~ changed fp16_matmul: bbbbbbbbbbbb -> eeeeeeeeeeee  (deviation 4.00e-04, within tolerance 2e-03)
  ~ changed softmax: cccccccccccc -> ffffffffffff  (deviation 1.00e-07, within tolerance 1e-05)
  statistics that moved (A -> B):
    fp16_matmul: mean 0.012207 -> 0.0122119 (+0.04%); l2 20 -> 20.008 (+0.04%); absmax 3 -> 3.0012 (+0.04%); sum 12.5 -> 12.505 (+0.04%)
    softmax: mean 0.012207 -> 0.012207 (+1e-05%); l2 20 -> 20 (+1e-05%); absmax 3 -> 3 (+1e-05%); sum 12.5 -> 12.5 (+1e-05%)

23 difference(s) in 4 aspect(s): Image, Python and OS; Distributions; CUDA stack; GPU suite on NVIDIA H100 80GB HBM3
"""


def _report(a: Manifest, b: Manifest) -> str:
    return render_text(
        diff_manifests(
            a,
            b,
            a_label="a.json",
            b_label="b.json",
            a_subjects=subjects_for(a.observation),
            b_subjects=subjects_for(b.observation),
        )
    )


def test_the_report_of_an_upgrade_reads_clearly() -> None:
    assert _report(manifest_a(), manifest_b()) == EXPECTED


def test_the_same_manifest_has_no_differences() -> None:
    report = diff_manifests(manifest_a(), manifest_a())
    assert report.same and report.differences == 0
    text = render_text(report)
    assert text.endswith("no differences\n")
    assert "Distributions: the same 7 distributions" in text
    assert "all 4 tests that ran are bit-identical" in text


def test_a_test_beyond_its_tolerance_is_flagged() -> None:
    a = manifest_a()
    suite = a.gpu_suites[0]
    tests = [
        t.model_copy(
            update={"sha256": "9" * 64, "stats": t.stats.model_copy(update={"absmax": 3.3})}
        )
        if t.name == "fp32_matmul" and t.stats is not None
        else t
        for t in suite.tests
    ]
    b = a.model_copy(update={"gpu_suites": [suite.model_copy(update={"tests": tests})]})
    text = _report(a, b)
    assert (
        "~ changed fp32_matmul: aaaaaaaaaaaa -> 999999999999  (deviation 9.09e-02, BEYOND tolerance 1e-05)"
        in text
    )
    assert "fp32_matmul: mean 0.012207 (same); l2 20 (same); absmax 3 -> 3.3 (+10%)" in text


def test_a_gpu_model_only_one_side_ran() -> None:
    a, b = manifest_a(), manifest_b()
    b = b.model_copy(update={"gpu_suites": []})
    text = _report(a, b)
    assert (
        "- removed suite: recorded  (only the first manifest ran the suite here (4 tests))" in text
    )


def _write(tmp_path: Path, name: str, manifest: Manifest) -> Path:
    path = tmp_path / name
    path.write_bytes(make_statement(manifest))
    return path


def lockd(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lockd", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_cli_diff_prints_the_report_and_exits_1(tmp_path: Path) -> None:
    a = _write(tmp_path, "a.json", manifest_a())
    b = _write(tmp_path, "b.json", manifest_b())
    result = lockd("diff", a, b)
    assert result.returncode == 1, result.stderr
    assert result.stdout == EXPECTED.replace("a.json", str(a)).replace("b.json", str(b))


def test_cli_diff_of_one_manifest_exits_0(tmp_path: Path) -> None:
    a = _write(tmp_path, "a.json", manifest_a())
    result = lockd("diff", a, a)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("no differences\n")


def test_cli_diff_json(tmp_path: Path) -> None:
    a = _write(tmp_path, "a.json", manifest_a())
    b = _write(tmp_path, "b.json", manifest_b())
    result = lockd("diff", a, b, "--json")
    assert result.returncode == 1
    body = json.loads(result.stdout)
    assert body["same"] is False and body["differences"] == 23
    assert body["a"]["subjects"] == [f"train:2026.11 {IMAGE_A}"]
    sections = {s["id"]: s for s in body["sections"]}
    assert {"kind": "changed", "name": "numpy", "a": "2.3.4", "b": "2.3.5", "note": ""} in (
        sections["distributions"]["rows"]
    )
    assert json.loads(report_json(diff_manifests(manifest_a(), manifest_b()))) == body | {
        "a": body["a"] | {"label": "A", "subjects": []},
        "b": body["b"] | {"label": "B", "subjects": []},
    }


@pytest.mark.parametrize("which", ["first", "second"])
def test_cli_diff_of_an_unreadable_manifest_exits_2(tmp_path: Path, which: str) -> None:
    good = _write(tmp_path, "a.json", manifest_a())
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    args = (bad, good) if which == "first" else (good, bad)
    result = lockd("diff", *args)
    assert result.returncode == 2
    assert str(bad) in result.stderr
