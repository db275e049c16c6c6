"""Comparing GPU suite results (pure): the key, bit-for-bit and tolerance comparison, manifests
with several GPU models, strict reading of the suite's output, and the cuda/driver/gpu checks."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from observations import dist, manifest, observation, probe

from lockd.errors import ProbeError, RefusedError
from lockd.evidence.gpurun import parse_suite_output, suite_signature
from lockd.judgement.compare import compare
from lockd.judgement.gpucompare import (
    TOLERANCES,
    compare_suites,
    deviation,
    key_differences,
    merge_result,
    summary,
)
from lockd.judgement.policy import Checks, Policy
from lockd.model.environment import DriverInfo, GpuInfo, TorchInfo
from lockd.model.gpusuite import GpuSuiteResult, GpuTestStats
from lockd.model.manifest import Manifest, Observation
from lockd.model.report import Check

STRICT = Policy()

SETTINGS: dict[str, Any] = {
    "deterministic_algorithms": True,
    "cudnn_deterministic": True,
    "cudnn_benchmark": False,
    "cublas_workspace_config": ":4096:8",
    "matmul_allow_tf32": False,
    "cudnn_allow_tf32": False,
    "float32_matmul_precision": "highest",
    "fp16_reduced_precision_reduction": True,
    "bf16_reduced_precision_reduction": True,
    "seed": 20261128,
    "threads": None,
}
KEY: dict[str, Any] = {
    "device": "cuda",
    "torch": "2.11.0+cu130",
    "torch_git": "70d99e998b4955e0049d13a98d77ae1b14db1f45",
    "cuda": "13.0",
    "cudnn": "9.19.0",
    "cublas": "13.1.0",
    "compute_capability": "9.0",
    "sm_count": 132,
    "cpu_capability": None,
    "machine": "x86_64",
    "settings": SETTINGS,
}
NAMES = [n for n in TOLERANCES if n != "nccl_allreduce"]


def stats(scale: float = 1.0, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "numel": 1024,
        "nonfinite": 0,
        "sum": 12.5 * scale,
        "mean": 12.5 * scale / 1024,
        "l1": 400.0 * scale,
        "l2": 20.0 * scale,
        "absmax": 3.0 * scale,
        "samples": [1.5 * scale, -0.25 * scale, 2.0 * scale, None],
    }
    base.update(changes)
    return base


def test_entry(name: str, digest: str = "a", **changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": name,
        "status": "ok",
        "dtype": "float32",
        "shape": [32, 32],
        "sha256": (digest * 64)[:64],
        "stats": stats(),
        "seconds": 0.01,
    }
    entry.update(changes)
    return entry


test_entry.__test__ = False  # type: ignore[attr-defined]  # a builder, not a test


def result_dict(
    *,
    key: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
    tests: list[dict[str, Any]] | None = None,
    **changes: Any,
) -> dict[str, Any]:
    k = dict(KEY, **(key or {}))
    k["settings"] = dict(SETTINGS, **(settings or {}))
    document: dict[str, Any] = {
        "suite_version": 1,
        "device": k["device"],
        "gpu_name": "NVIDIA H200",
        "gpu_uuid_sha256": "c" * 64,
        "gpu_count": 1,
        "key": k,
        "overrides": [],
        "tests": tests
        if tests is not None
        else [test_entry(n) for n in NAMES]
        + [
            {
                "name": "nccl_allreduce",
                "status": "skipped",
                "reason": "the all-reduce needs two or more GPUs; this run sees 1",
                "seconds": 0.0,
            }
        ],
        "signature": "0" * 64,
        "timing": {
            "import_torch": 3.0,
            "suite": 0.6,
            "compile": 7.0,
            "allreduce": None,
            "total": 8.0,
        },
    }
    document.update(changes)
    signed = GpuSuiteResult.model_validate(document)
    document["signature"] = suite_signature(signed)
    return document


def result(**kw: Any) -> GpuSuiteResult:
    return GpuSuiteResult.model_validate(result_dict(**kw))


def with_test(name: str, **changes: Any) -> list[dict[str, Any]]:
    base = result_dict()["tests"]
    return [dict(t, **changes) if t["name"] == name else t for t in base]


# --- deviation ----------------------------------------------------------------------------------


def test_deviation_is_zero_for_identical_statistics() -> None:
    s = GpuTestStats.model_validate(stats())
    assert deviation(s, s) == 0.0


def test_deviation_is_relative_to_the_outputs_scale() -> None:
    a = GpuTestStats.model_validate(stats())
    b = GpuTestStats.model_validate(stats(samples=[1.5 + 3e-6, -0.25, 2.0, None]))
    assert deviation(a, b) == pytest.approx(1e-6)  # 3e-6 against absmax 3.0
    c = GpuTestStats.model_validate(stats(sum=12.5 + 0.04))
    assert deviation(a, c) == pytest.approx(1e-4)  # 0.04 against l1 400


@pytest.mark.parametrize(
    "changes",
    [
        {"numel": 1023},
        {"nonfinite": 1},
        {"samples": [1.5, -0.25, 2.0, 0.0]},  # a NaN there, a number here
        {"samples": [1.5, -0.25, 2.0]},
    ],
)
def test_outputs_of_another_kind_cannot_be_compared(changes: dict[str, Any]) -> None:
    a = GpuTestStats.model_validate(stats())
    assert deviation(a, GpuTestStats.model_validate(stats(**changes))) == math.inf


# --- the comparison key -------------------------------------------------------------------------


def test_key_differences_name_fields_and_flag_settings() -> None:
    a = result().key
    b = result(
        key={"compute_capability": "8.0", "sm_count": 108}, settings={"cudnn_benchmark": True}
    ).key
    diffs = {d.field: d for d in key_differences(a, b)}
    assert set(diffs) == {"compute_capability", "sm_count", "settings.cudnn_benchmark"}
    assert (diffs["sm_count"].expected, diffs["sm_count"].observed) == ("132", "108")
    assert diffs["settings.cudnn_benchmark"].setting
    assert not diffs["compute_capability"].setting


def test_the_gpu_name_is_not_part_of_the_key() -> None:
    h100 = result(gpu_name="NVIDIA H100 80GB HBM3")
    comparison = compare_suites([result()], h100)
    assert comparison.mode == "bits"
    assert not comparison.failed


# --- bit for bit ----------------------------------------------------------------------------------


def test_same_key_same_bits_passes_bit_for_bit() -> None:
    comparison = compare_suites([result()], result())
    assert comparison.mode == "bits"
    assert not comparison.failed
    assert {o.kind for o in comparison.outcomes} == {"same"}
    assert len(comparison.outcomes) == len(NAMES)


def test_same_key_other_bits_fails_naming_the_test() -> None:
    other = result(tests=with_test("conv2d_fp16", sha256="f" * 64))
    comparison = compare_suites([result()], other)
    assert comparison.mode == "bits"
    assert comparison.failed
    assert comparison.differing == ["conv2d_fp16"]
    [outcome] = [o for o in comparison.outcomes if o.failed]
    assert outcome.kind == "bits"
    assert outcome.deviation == 0.0  # same statistics, other bits: still a failure


# --- by tolerance ---------------------------------------------------------------------------------


def test_another_gpu_model_within_tolerance_passes_by_tolerance() -> None:
    a100 = result(
        key={"compute_capability": "8.0", "sm_count": 108},
        gpu_name="NVIDIA A100",
        tests=[
            dict(t, sha256="e" * 64) if t["status"] == "ok" else t for t in result_dict()["tests"]
        ],
    )
    comparison = compare_suites([result()], a100)
    assert comparison.mode == "tolerance"
    assert not comparison.failed
    assert [d.field for d in comparison.key_diffs] == ["compute_capability", "sm_count"]
    assert {o.kind for o in comparison.outcomes} == {"within"}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("factor", "fails"), [(0.5, False), (2.0, True)])
def test_each_tests_tolerance_is_applied(name: str, factor: float, fails: bool) -> None:
    rtol = TOLERANCES[name].rtol
    moved = stats(samples=[1.5 + factor * rtol * 3.0, -0.25, 2.0, None])  # absmax 3.0
    other = result(key={"compute_capability": "8.0"}, tests=with_test(name, stats=moved))
    comparison = compare_suites([result()], other)
    assert comparison.failed is fails
    assert comparison.differing == ([name] if fails else [])
    if fails:
        [outcome] = [o for o in comparison.outcomes if o.failed]
        assert outcome.kind == "tolerance"
        assert outcome.message.startswith("deviation")


def test_another_torch_build_is_named_and_compared_by_tolerance() -> None:
    other = result(
        key={"torch": "2.11.0+cu128", "cuda": "12.8", "cudnn": "9.10.2", "cublas": "12.8.4"},
        tests=with_test("fp32_matmul", sha256="b" * 64, stats=stats(sum=12.5 + 0.04)),
    )
    comparison = compare_suites([result()], other)
    assert comparison.mode == "tolerance"
    assert [d.field for d in comparison.key_diffs] == ["cublas", "cuda", "cudnn", "torch"]
    assert comparison.differing == ["fp32_matmul"]  # 1e-4 > 1e-5


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("matmul_allow_tf32", True),
        ("cudnn_allow_tf32", True),
        ("float32_matmul_precision", "high"),
        ("cudnn_benchmark", True),
        ("cublas_workspace_config", ":16:8"),
        ("deterministic_algorithms", False),
    ],
)
def test_a_changed_setting_fails_even_when_the_numbers_agree(setting: str, value: Any) -> None:
    comparison = compare_suites([result()], result(settings={setting: value}))
    assert comparison.mode == "tolerance"
    assert comparison.failed
    assert comparison.differing == []
    assert [d.field for d in comparison.key_diffs] == [f"settings.{setting}"]


def test_a_recorded_test_that_no_longer_runs_fails() -> None:
    missing = with_test("compiled", status="skipped", reason="torch.compile is unavailable here")
    for entry in missing:
        if entry["name"] == "compiled":
            for field in ("sha256", "stats", "dtype", "shape"):
                entry.pop(field)
    comparison = compare_suites([result()], result(tests=missing))
    assert comparison.differing == ["compiled"]
    [outcome] = [o for o in comparison.outcomes if o.failed]
    assert outcome.kind == "not-run"
    assert "torch.compile is unavailable" in outcome.message


def test_an_all_reduce_recorded_on_two_gpus_is_not_held_against_one() -> None:
    two = result_dict(gpu_count=2)
    two["tests"][-1] = test_entry("nccl_allreduce")
    recorded = GpuSuiteResult.model_validate(
        dict(two, signature=suite_signature(GpuSuiteResult.model_validate(two)))
    )
    comparison = compare_suites([recorded], result())
    assert not comparison.failed
    [outcome] = [o for o in comparison.outcomes if o.name == "nccl_allreduce"]
    assert (outcome.kind, outcome.failed) == ("not-run", False)


def test_an_error_fails() -> None:
    broken = with_test("sdpa", status="error", reason="RuntimeError: CUDA error")
    comparison = compare_suites([result()], result(tests=broken))
    assert comparison.differing == ["sdpa"]


def test_a_cpu_run_is_not_compared_with_gpu_results() -> None:
    cpu = result(key={"device": "cpu", "compute_capability": None, "sm_count": None})
    comparison = compare_suites([result()], cpu)
    assert comparison.mode == "none"
    assert comparison.failed
    assert "NVIDIA H200" in comparison.message


# --- several GPU models in one manifest -------------------------------------------------------------


def test_the_result_with_the_same_key_is_chosen() -> None:
    a100 = result(key={"compute_capability": "8.0", "sm_count": 108}, gpu_name="NVIDIA A100")
    h200 = result()
    comparison = compare_suites([a100, h200], result())
    assert comparison.mode == "bits"
    assert comparison.reference == h200


def test_the_closest_result_is_chosen_when_no_key_matches() -> None:
    a100 = result(key={"compute_capability": "8.0", "sm_count": 108}, gpu_name="NVIDIA A100")
    h200 = result()
    other_torch = result(key={"torch": "2.11.0+cu128"})
    comparison = compare_suites([a100, h200], other_torch)
    assert comparison.mode == "tolerance"
    assert comparison.reference == h200


def test_merge_adds_a_new_gpu_model_and_replaces_the_same_result() -> None:
    a100 = result(key={"compute_capability": "8.0", "sm_count": 108}, gpu_name="NVIDIA A100")
    h200 = result()
    assert merge_result([a100], h200, "m.dsse.json") == [a100, h200]
    again = h200.model_copy(update={"recorded_at": "2026-11-29T00:00:00+00:00"})
    assert merge_result([a100, h200], again, "m.dsse.json") == [a100, again]


def test_merge_refuses_other_bits_under_the_same_key() -> None:
    drifted = result(tests=with_test("softmax", sha256="d" * 64))
    with pytest.raises(RefusedError, match=r"m\.dsse\.json: already holds .*\(softmax differ\)"):
        merge_result([result()], drifted, "m.dsse.json")


# --- reading the suite's output ---------------------------------------------------------------------


def output(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()


def test_a_valid_output_parses() -> None:
    parsed = parse_suite_output(output(result_dict()), "local")
    assert parsed == result()
    assert "signature" in summary(parsed) and "NVIDIA H200" in summary(parsed)


def tampered(**changes: Any) -> bytes:
    document = result_dict()
    document.update(changes)
    return output(document)


@pytest.mark.parametrize(
    ("stdout", "fragment"),
    [
        (b"x" * (1024 * 1024 + 1), "exceeds 1024 KiB"),
        (b"", "invalid JSON"),
        (b"not json", "invalid JSON"),
        (b"[1]", "a JSON list, not an object"),
        (b'{"a": 1, "a": 2}', "printed a key twice"),
        (tampered(suite_version=2), "failed validation: suite_version"),
        (tampered(extra=1), "failed validation: extra"),
        (tampered(gpu_count="1"), "failed validation: gpu_count"),
        (tampered(signature="1" * 64), "signature does not match"),
        (
            output(result_dict(tests=[test_entry("softmax"), test_entry("softmax")])),
            "names a test twice",
        ),
        (
            output(result_dict(tests=[{"name": "softmax", "status": "ok", "seconds": 0}])),
            "is ok but has no digest",
        ),
        (tampered(device="cpu"), "key is for another device"),
    ],
)
def test_bad_output_is_refused(stdout: bytes, fragment: str) -> None:
    with pytest.raises(ProbeError, match="^local: ") as caught:
        parse_suite_output(stdout, "local")
    assert fragment in str(caught.value)


def test_the_signature_covers_each_digest_and_the_key() -> None:
    base = result()
    assert suite_signature(base) == base.signature
    other_bits = GpuSuiteResult.model_validate(
        result_dict(tests=with_test("fp32_matmul", sha256="9" * 64))
    )
    assert other_bits.signature != base.signature
    assert result(settings={"cudnn_benchmark": True}).signature != base.signature


# --- the checks in verify ---------------------------------------------------------------------------


def by_id(checks: list[Check]) -> dict[str, Check]:
    return {c.id: c for c in checks}


def gpu_check(
    recorded: list[GpuSuiteResult], seen: GpuSuiteResult | None, policy: Policy = STRICT
) -> Check:
    m = manifest().model_copy(update={"gpu_suites": recorded})
    return by_id(compare(m, observation(gpu_suite=seen), policy))["gpu"]


def test_gpu_check_skips_without_results_or_without_a_run() -> None:
    assert gpu_check([], result()).status == "skip"
    check = gpu_check([result()], None)
    assert check.status == "skip"
    assert "verify --gpu" in check.message


def test_gpu_check_passes_bit_for_bit() -> None:
    check = gpu_check([result()], result())
    assert check.status == "pass"
    assert check.message.startswith("bit for bit")
    assert check.findings == []


def test_gpu_check_names_the_tests_and_settings_that_differ() -> None:
    seen = result(
        settings={"matmul_allow_tf32": True}, tests=with_test("fp32_matmul", stats=stats(sum=13.0))
    )
    check = gpu_check([result()], seen)
    assert check.status == "fail"
    assert check.message.startswith("by tolerance")
    kinds = {(f.kind, f.name) for f in check.findings}
    assert kinds == {("setting", "settings.matmul_allow_tf32"), ("tolerance", "fp32_matmul")}
    assert "fp32_matmul differ" in check.message


def test_gpu_check_follows_the_policy_level() -> None:
    warn = Policy(checks=Checks(gpu="warn"))
    assert (
        gpu_check([result()], result(tests=with_test("sdpa", sha256="5" * 64)), warn).status
        == "warn"
    )
    ignore = Policy(checks=Checks(gpu="ignore"))
    assert (
        gpu_check([result()], result(tests=with_test("sdpa", sha256="5" * 64)), ignore).status
        == "skip"
    )


def test_a_manifest_without_gpu_fields_still_parses() -> None:
    old = manifest().model_dump(mode="json", exclude_none=True)
    old.pop("gpu_suites")
    assert Manifest.model_validate(old).gpu_suites == []


CUDA_TORCH = TorchInfo(
    version="2.6.0+cu124",
    git_version="1eba9b3aa3c43f86f4a2c807ac8e12c4a7767340",
    cuda="12.4",
    cudnn="9.1.0",
    nccl="2.21.5",
    arch_flags="sm_50 sm_60 sm_70 sm_75 sm_80 sm_86 sm_90",
    cublas="12.4.5",
)
WHEELS = [
    dist("idna", "3.7"),
    dist("six", "1.16.0"),
    dist("nvidia-cublas-cu12", "12.4.5.8"),
    dist("nvidia-cudnn-cu12", "9.1.0.70"),
    dist("nvidia-nccl-cu12", "2.21.5"),
]
H100 = GpuInfo(index=0, name="NVIDIA H100 80GB HBM3", compute_capability="9.0", sm_count=132)


def cuda_manifest() -> Manifest:
    return manifest(observation(report=probe(torch=CUDA_TORCH, distributions=WHEELS)))


def seen_probe(**changes: Any) -> Observation:
    base: dict[str, Any] = {
        "torch": CUDA_TORCH,
        "distributions": WHEELS,
        "driver": DriverInfo(version="550.54.14", cuda="12.4", source="nvml"),
        "gpus": [H100],
    }
    base.update(changes)
    return observation(report=probe(**base))


def test_cuda_check_passes_for_the_recorded_stack_as_loaded() -> None:
    check = by_id(compare(cuda_manifest(), seen_probe(), STRICT))["cuda"]
    assert check.status == "pass"
    assert "cuDNN 9.1.0" in check.message and "cuBLAS 12.4.5" in check.message


def test_cuda_check_finds_a_shadowing_library() -> None:
    # torch loaded a system cuDNN 8.9.7: the nvidia-cudnn-cu12 wheel says 9.1.0.70
    shadowed = CUDA_TORCH.model_copy(update={"cudnn": "8.9.7"})
    check = by_id(compare(cuda_manifest(), seen_probe(torch=shadowed), STRICT))["cuda"]
    assert check.status == "fail"
    kinds = {(f.kind, f.name, f.observed) for f in check.findings}
    assert kinds == {("changed", "cudnn", "8.9.7"), ("shadowed", "cudnn", "8.9.7")}
    [shadow] = [f for f in check.findings if f.kind == "shadowed"]
    assert shadow.expected == "nvidia-cudnn-cu12 9.1.0.70"


def test_cuda_check_compares_only_what_the_manifest_recorded() -> None:
    old = CUDA_TORCH.model_copy(update={"cublas": None})  # recorded before cuBLAS was read
    recorded = manifest(observation(report=probe(torch=old, distributions=WHEELS)))
    assert by_id(compare(recorded, seen_probe(), STRICT))["cuda"].status == "pass"


def test_cuda_check_skips_without_a_cuda_torch_and_fails_when_torch_is_gone() -> None:
    assert by_id(compare(manifest(), seen_probe(), STRICT))["cuda"].status == "skip"
    gone = by_id(compare(cuda_manifest(), observation(), STRICT))["cuda"]
    assert gone.status == "fail"
    assert [(f.kind, f.name) for f in gone.findings] == [("removed", "torch")]


@pytest.mark.parametrize(
    ("driver", "gpus", "status", "fragment"),
    [
        ("550.54.14", [H100], "pass", "sm_90 cubin"),
        ("535.104.05", [H100], "pass", "minor-version compatibility"),
        ("470.82.01", [H100], "fail", "driver 470.82.01 < 525.60.13"),
        (
            "570.86.10",
            [GpuInfo(index=0, name="NVIDIA B200", compute_capability="10.0")],
            "fail",
            "sm_100",
        ),
    ],
)
def test_driver_check_judges_the_targets_driver_and_gpus(
    driver: str, gpus: list[GpuInfo], status: str, fragment: str
) -> None:
    seen = seen_probe(driver=DriverInfo(version=driver, source="proc"), gpus=gpus)
    check = by_id(compare(cuda_manifest(), seen, STRICT))["driver"]
    assert check.status == status
    text = check.message + " ".join(f.message or "" for f in check.findings)
    assert fragment in text


def test_driver_check_skips_without_a_driver_or_a_cuda_manifest() -> None:
    assert (
        by_id(compare(cuda_manifest(), seen_probe(driver=None, gpus=[]), STRICT))["driver"].status
        == "skip"
    )
    assert by_id(compare(manifest(), seen_probe(), STRICT))["driver"].status == "skip"
