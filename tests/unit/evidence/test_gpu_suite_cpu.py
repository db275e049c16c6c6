"""The GPU validation suite on the CPU fallback, with the real (CPU) torch in this environment,
run the way targets run it: ``python -c <source>`` in fresh processes. Also the probe's readers
of the CUDA stack (the driver, mapped libraries, GPU UUIDs) on real file formats."""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lockd.evidence.gpurun import parse_suite_output, suite_argv
from lockd.judgement.gpucompare import compare_suites
from lockd.model.gpusuite import GpuSuiteResult, GpuTestStats
from lockd.probe import environment, suite_source

Lockd = Callable[..., subprocess.CompletedProcess[str]]  # the `lockd` fixture (tests/conftest.py)

CPU_TESTS = {
    "fp32_matmul",
    "fp16_matmul",
    "bf16_matmul",
    "conv2d_fp32",
    "conv2d_fp16",
    "sdpa",
    "softmax",
    "layer_norm",
    "mlp_train",
}
OVERRIDES = {"matmul_allow_tf32": True, "cudnn_benchmark": True, "cublas_workspace_config": ":16:8"}


def run_suite(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LOCKD_")}
    environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    environ.update(env or {})
    argv = suite_argv(sys.executable, device="cpu")
    return subprocess.run([*argv, *args], cwd=cwd, env=environ, capture_output=True, check=False)


def suite(cwd: Path, *args: str, env: dict[str, str] | None = None) -> GpuSuiteResult:
    result = run_suite(cwd, *args, env=env)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    return parse_suite_output(result.stdout, "the CPU suite")


@pytest.fixture(scope="module")
def two_runs(
    tmp_path_factory: pytest.TempPathFactory, torch_module: object
) -> tuple[GpuSuiteResult, GpuSuiteResult]:
    """The whole suite, torch.compile included, in two fresh processes (on the CPU torch:
    torch_module fails the tests, never skips them, where it is missing)."""
    cwd = tmp_path_factory.mktemp("suite")
    return suite(cwd), suite(cwd)


@pytest.fixture(scope="module")
def overridden(tmp_path_factory: pytest.TempPathFactory, torch_module: object) -> GpuSuiteResult:
    """A run with TF32 on, cudnn.benchmark on and another CUBLAS_WORKSPACE_CONFIG (given the
    way a person testing lockd gives them: LOCKD_GPU_SUITE_OVERRIDES)."""
    cwd = tmp_path_factory.mktemp("overridden")
    return suite(
        cwd, "--skip", "compiled", env={"LOCKD_GPU_SUITE_OVERRIDES": json.dumps(OVERRIDES)}
    )


def by_name(result: GpuSuiteResult) -> dict[str, Any]:
    return {t.name: t for t in result.tests}


# --- determinism ------------------------------------------------------------------------------


def test_two_fresh_processes_compute_the_same_bits(
    two_runs: tuple[GpuSuiteResult, GpuSuiteResult],
) -> None:
    first, second = two_runs
    assert first.signature == second.signature
    a, b = by_name(first), by_name(second)
    ran = {name for name, t in a.items() if t.status == "ok"}
    assert ran >= CPU_TESTS
    for name in ran:
        assert a[name].sha256 == b[name].sha256, name
    comparison = compare_suites([first], second)
    assert (comparison.mode, comparison.failed) == ("bits", False)


def test_cuda_only_tests_are_not_applicable_on_the_cpu(
    two_runs: tuple[GpuSuiteResult, GpuSuiteResult],
) -> None:
    tests = by_name(two_runs[0])
    assert tests["tf32_matmul"].status == "n/a"
    assert "CUDA feature" in (tests["tf32_matmul"].reason or "")
    assert tests["nccl_allreduce"].status == "n/a"


def test_torch_compile_runs_or_says_why_not(
    two_runs: tuple[GpuSuiteResult, GpuSuiteResult],
) -> None:
    compiled = by_name(two_runs[0])["compiled"]
    timing = two_runs[0].timing
    assert timing.compile is not None  # timed apart from the suite proper
    if compiled.status == "ok":
        assert compiled.sha256 == by_name(two_runs[1])["compiled"].sha256
        assert timing.suite < timing.total
    else:
        assert compiled.status == "skipped"
        assert (compiled.reason or "").startswith("torch.compile is unavailable here: ")


def test_the_cpu_run_records_its_key_and_settings(
    two_runs: tuple[GpuSuiteResult, GpuSuiteResult],
) -> None:
    result = two_runs[0]
    key = result.key
    assert (result.device, key.device, result.gpu_count, result.gpu_name) == ("cpu", "cpu", 0, None)
    assert key.torch == importlib.metadata.version("torch")  # the torch the suite ran with
    assert key.cpu_capability  # AVX2, AVX512…: the CPU kernels' instruction set
    assert (key.compute_capability, key.sm_count, key.cuda, key.cudnn, key.cublas) == (None,) * 5
    settings = key.settings
    assert settings.deterministic_algorithms and settings.cudnn_deterministic
    assert not settings.cudnn_benchmark
    assert (settings.matmul_allow_tf32, settings.cudnn_allow_tf32) == (False, False)
    assert settings.float32_matmul_precision == "highest"
    assert settings.cublas_workspace_config == ":4096:8"
    assert settings.threads == 1
    assert result.overrides == []


# --- what verification notices ----------------------------------------------------------------


def perturbed(result: GpuSuiteResult, name: str, relative: float) -> GpuSuiteResult:
    """`result` as another CPU (so compared by tolerance) whose `name` output moved."""
    tests = []
    for test in result.tests:
        if test.name == name:
            assert test.stats is not None
            moved = test.stats.model_dump()
            moved["absmax"] *= 1 + relative
            tests.append(test.model_copy(update={"stats": GpuTestStats.model_validate(moved)}))
        else:
            tests.append(test)
    key = result.key.model_copy(update={"cpu_capability": "ANOTHER"})
    return result.model_copy(update={"tests": tests, "key": key})


def test_a_perturbed_result_is_caught_by_tolerance(
    two_runs: tuple[GpuSuiteResult, GpuSuiteResult],
) -> None:
    recorded, seen = two_runs
    within = compare_suites([recorded], perturbed(seen, "fp32_matmul", 1e-6))
    assert (within.mode, within.failed) == ("tolerance", False)
    assert [d.field for d in within.key_diffs] == ["cpu_capability"]
    caught = compare_suites([recorded], perturbed(seen, "fp32_matmul", 1e-3))
    assert caught.failed
    assert caught.differing == ["fp32_matmul"]


def test_tf32_benchmark_and_workspace_overrides_are_named(
    two_runs: tuple[GpuSuiteResult, GpuSuiteResult], overridden: GpuSuiteResult
) -> None:
    assert overridden.overrides == sorted(OVERRIDES)
    assert overridden.key.settings.matmul_allow_tf32
    assert overridden.key.settings.cudnn_benchmark
    assert overridden.key.settings.cublas_workspace_config == ":16:8"
    comparison = compare_suites([two_runs[0]], overridden)
    assert comparison.failed
    assert [d.field for d in comparison.key_diffs if d.setting] == [
        "settings.cublas_workspace_config",
        "settings.cudnn_benchmark",
        "settings.float32_matmul_precision",
        "settings.matmul_allow_tf32",
    ]


def test_another_torch_build_is_named(two_runs: tuple[GpuSuiteResult, GpuSuiteResult]) -> None:
    recorded, seen = two_runs
    other = seen.model_copy(
        update={"key": seen.key.model_copy(update={"torch": "2.12.0+cpu", "torch_git": "0" * 40})}
    )
    comparison = compare_suites([recorded], other)
    assert comparison.mode == "tolerance"
    assert [d.field for d in comparison.key_diffs] == ["torch", "torch_git"]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--overrides", '{"tf32": true}'], "unknown override 'tf32'"),
        (["--overrides", '{"cudnn_benchmark": 1}'], "cudnn_benchmark must be a bool"),
        (["--overrides", "[1]"], "overrides must be a JSON object"),
        (["--only", "nope"], "unknown test nope"),
        (["--frobnicate", "1"], "unknown option"),
    ],
)
def test_bad_suite_options_exit_with_a_message(
    tmp_path: Path, args: list[str], fragment: str
) -> None:
    result = run_suite(tmp_path, *args)
    assert result.returncode != 0
    assert result.stdout == b""
    assert fragment in result.stderr.decode()


def test_suite_source_is_python_3_8_syntax() -> None:
    ast.parse(suite_source(), feature_version=(3, 8))


# --- record --gpu, --append, verify --gpu through the command line ------------------------------


CPU = {"LOCKD_GPU_DEVICE": "cpu"}  # this machine has no GPU: the suite's CPU fallback


def test_record_append_and_verify_with_the_suite(
    keypair: tuple[Path, Path], tmp_path: Path, lockd: Lockd, torch_module: object
) -> None:
    key, pub = keypair
    out = tmp_path / "m.dsse.json"
    made = lockd("record", "local", "--key", key, "-o", out, env=CPU)
    assert made.returncode == 0, made.stderr
    appended = lockd("record", "local", "--key", key, "--gpu", "--append", out, env=CPU)
    assert appended.returncode == 0, appended.stderr
    assert "GPU suite on the CPU" in appended.stdout
    assert "the manifest now holds 1 GPU result(s)" in appended.stdout

    verified = lockd("verify", "local", "--manifest", out, "--key", pub, "--gpu", "--json", env=CPU)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    [gpu] = [c for c in json.loads(verified.stdout)["checks"] if c["id"] == "gpu"]
    assert gpu["status"] == "pass"
    assert gpu["message"].startswith("bit for bit (same comparison key)")


@pytest.mark.parametrize(
    ("args", "env", "fragment"),
    [
        (["--append", "m.dsse.json"], {}, "--append m.dsse.json: appends GPU results; add --gpu"),
        (["--gpu"], {"LOCKD_GPU_DEVICE": "tpu"}, "LOCKD_GPU_DEVICE='tpu': give auto, cuda or cpu"),
        (["--gpu"], {"LOCKD_GPU_SUITE_OVERRIDES": "{"}, "LOCKD_GPU_SUITE_OVERRIDES: not JSON"),
    ],
)
def test_bad_gpu_arguments_exit_2(
    keypair: tuple[Path, Path],
    tmp_path: Path,
    args: list[str],
    env: dict[str, str],
    fragment: str,
    lockd: Lockd,
) -> None:
    result = lockd("record", "local", "--key", keypair[0], *args, cwd=tmp_path, env={**CPU, **env})
    assert result.returncode == 2, result.stdout + result.stderr
    assert fragment in " ".join(result.stderr.split())


# --- the probe's readers of the CUDA stack ------------------------------------------------------

# /proc/driver/nvidia/version as an H200 node (driver 580.159.04) shows it, and an older format
DRIVER_FILES = [
    (
        "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build  "
        "(nixbld@)  \nGCC version:  gcc version 15.3.0 (GCC) \n",
        "580.159.04",
    ),
    (
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC "
        "2023\nGCC version:  gcc version 11.4.0 (Ubuntu 11.4.0-1ubuntu1~22.04)\n",
        "535.104.05",
    ),
]


@pytest.mark.parametrize(("content", "version"), DRIVER_FILES)
def test_the_driver_version_is_read_from_proc(tmp_path: Path, content: str, version: str) -> None:
    path = tmp_path / "version"
    path.write_text(content)
    assert environment.proc_driver(str(path)) == {
        "version": version,
        "cuda": None,
        "source": "proc",
    }


def test_no_driver_file_gives_none(tmp_path: Path) -> None:
    assert environment.proc_driver(str(tmp_path / "missing")) is None
    (tmp_path / "garbage").write_text("not a driver\n")
    assert environment.proc_driver(str(tmp_path / "garbage")) is None


def test_mapped_libraries_are_found_by_file_name(tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    maps.write_text(
        "7f00-7f01 r--p 00000000 08:01 1 /opt/venv/lib/python3.12/site-packages/nvidia/cublas/"
        "lib/libcublasLt.so.13\n"
        "7f01-7f02 r--p 00000000 08:01 2 /opt/venv/lib/python3.12/site-packages/nvidia/cublas/"
        "lib/libcublas.so.13\n"
        "7f02-7f03 rw-p 00000000 00:00 0 \n"
        "7f03-7f04 r--p 00000000 08:01 3 /usr/lib/with space/libcudnn.so.9\n"
    )
    assert environment.mapped_library("libcublas.so", str(maps)) == (
        "/opt/venv/lib/python3.12/site-packages/nvidia/cublas/lib/libcublas.so.13"
    )
    assert (
        environment.mapped_library("libcudnn.so", str(maps)) == "/usr/lib/with space/libcudnn.so.9"
    )
    assert environment.mapped_library("libnccl.so", str(maps)) is None


def test_this_process_maps_no_cublas() -> None:
    # the CPU torch carries no cuBLAS: the probe reports none rather than guessing
    assert environment.mapped_library("libcublas.so") is None


@pytest.mark.parametrize(
    "uuid",
    [
        "GPU-0e08bf45-24c7-77ad-a792-705597313d02",  # NVML
        "0e08bf45-24c7-77ad-a792-705597313d02",  # torch's device properties
        "gpu-0E08BF45-24C7-77AD-A792-705597313D02",
    ],
)
def test_a_gpu_uuid_is_kept_only_as_its_hash_whatever_the_source(uuid: str) -> None:
    expected = hashlib.sha256(b"gpu-0e08bf45-24c7-77ad-a792-705597313d02").hexdigest()
    assert environment.uuid_digest(uuid) == expected
    assert environment.uuid_digest("") is None
