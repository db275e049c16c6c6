"""What the GPU validation suite prints from inside a target (untrusted)."""

from typing import Annotated, Literal

from pydantic import Field

from lockd.model.base import Frozen, Hex64, Name, Str
from lockd.model.environment import LoadedLibraries

# --- what the GPU validation suite prints (from inside the target: untrusted) ---------------


class GpuSuiteSettings(Frozen):
    """The deterministic settings the suite ran under, as torch read them back."""

    deterministic_algorithms: bool
    cudnn_deterministic: bool
    cudnn_benchmark: bool
    cublas_workspace_config: Str
    matmul_allow_tf32: bool
    cudnn_allow_tf32: bool
    float32_matmul_precision: Str
    fp16_reduced_precision_reduction: bool  # torch.backends.cuda.matmul.allow_fp16_reduced…
    bf16_reduced_precision_reduction: bool
    seed: int
    threads: int | None = None  # CPU runs: intra-op threads (1)


class GpuSuiteKey(Frozen):
    """What must match for two suite runs to be compared bit for bit."""

    device: Literal["cuda", "cpu"]
    torch: Str
    torch_git: Str | None = None
    cuda: Str | None = None
    cudnn: Str | None = None
    cublas: Str | None = None
    compute_capability: Str | None = None
    sm_count: int | None = None
    cpu_capability: Str | None = None  # CPU runs: the kernels' instruction set (AVX2…)
    machine: Str
    settings: GpuSuiteSettings


class GpuTestStats(Frozen):
    numel: Annotated[int, Field(ge=0)]
    nonfinite: Annotated[int, Field(ge=0)]
    sum: float
    mean: float
    l1: float
    l2: float
    absmax: float
    samples: Annotated[list[float | None], Field(max_length=16)]


GpuTestStatus = Literal["ok", "skipped", "n/a", "error"]


class GpuTestResult(Frozen):
    name: Name
    status: GpuTestStatus
    reason: Str | None = None  # why it did not run, or the error
    dtype: Str | None = None
    shape: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=8)] | None = None
    sha256: Hex64 | None = None  # of the output's dtype, shape and bits
    stats: GpuTestStats | None = None
    seconds: Annotated[float, Field(ge=0)]


class GpuSuiteTiming(Frozen):
    import_torch: float
    suite: float  # the tests without torch.compile and the all-reduce
    compile: float | None = None
    allreduce: float | None = None
    total: float


class GpuSuiteResult(Frozen):
    """One run of the GPU validation suite (lockd/probe/gpu.py) on one GPU model, or the CPU."""

    suite_version: Literal[1]
    device: Literal["cuda", "cpu"]
    gpu_name: Str | None = None
    gpu_uuid_sha256: Hex64 | None = None
    gpu_count: Annotated[int, Field(ge=0)]
    key: GpuSuiteKey
    overrides: Annotated[list[Name], Field(max_length=16)] = []
    tests: Annotated[list[GpuTestResult], Field(max_length=64)]
    signature: Hex64
    timing: GpuSuiteTiming
    recorded_at: Str | None = None  # set by lockd on the host when it records the result
    libraries: LoadedLibraries | None = None  # what the suite's process mapped after the tests
