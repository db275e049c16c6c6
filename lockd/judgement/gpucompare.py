"""Comparing two runs of the GPU validation suite, and describing one (pure: no I/O).

* the same comparison key (device, compute capability, SM count, torch build, CUDA, cuDNN,
  cuBLAS, the deterministic settings) -> bit for bit: every test's sha256 must match;
* otherwise -> tolerance: each test's statistics must agree within the test's tolerance
  (``TOLERANCES``, justified in docs/gpu.md); a changed setting (TF32, cudnn.benchmark,
  CUBLAS_WORKSPACE_CONFIG, determinism) fails on its own, whatever the numbers say.

A manifest may hold results for several GPU models; the observed run is compared with the
recorded result of the same key, else with the closest one of the same device kind. Running the
suite in a target is lockd.evidence.gpurun's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from lockd.errors import RefusedError

if TYPE_CHECKING:
    from lockd.model.gpusuite import GpuSuiteKey, GpuSuiteResult, GpuTestResult, GpuTestStats

__all__ = [
    "DEFAULT_TOLERANCE",
    "TOLERANCES",
    "KeyDifference",
    "SuiteComparison",
    "TestOutcome",
    "Tolerance",
    "compare_suites",
    "describe",
    "deviation",
    "key_differences",
    "merge_result",
    "summary",
]

ALLREDUCE = "nccl_allreduce"
"""The suite's multi-GPU test: soft where fewer than two GPUs ran it."""


# --- tolerances ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tolerance:
    """The largest deviation (see ``deviation``) two runs of a test may show and still agree."""

    rtol: float
    why: str


# Deviations are relative to the output's scale (absmax for values, l1 for sums, l2 for l2), so
# one number per test. docs/gpu.md gives the measurements behind each value.
TOLERANCES: dict[str, Tolerance] = {
    "fp32_matmul": Tolerance(
        1e-5,
        "fp32, K=1024: an H200 and a CPU differ by 2-3e-7; TF32 moves it by 1.2e-4",
    ),
    "tf32_matmul": Tolerance(
        2e-3, "TF32 rounds inputs to 10 bits (2^-11 ~ 5e-4): implementations may differ by that"
    ),
    "fp16_matmul": Tolerance(
        2e-3,
        "fp16 output, one rounding step 2^-11 ~ 5e-4; cuBLAS may reduce in fp16 "
        "(allow_fp16_reduced_precision_reduction); H200 vs CPU: 1.3e-6",
    ),
    "bf16_matmul": Tolerance(
        1.6e-2, "bf16 output, one rounding step 2^-8 ~ 4e-3; H200 vs CPU: 1.4e-6"
    ),
    "conv2d_fp32": Tolerance(1e-5, "fp32, 288-term reductions: H200 vs CPU 3-4e-7"),
    "conv2d_fp16": Tolerance(2e-3, "fp16 output as fp16_matmul; H200 vs CPU 1.1e-5"),
    "sdpa": Tolerance(4e-3, "fp16 inputs and output, fp32 softmax inside: a few fp16 steps"),
    "softmax": Tolerance(1e-5, "fp32 exp of vendor libraries: H200 vs CPU 0.2-2e-7"),
    "layer_norm": Tolerance(1e-6, "fp32 mean and variance over 1024 terms: H200 vs CPU 9e-8"),
    "mlp_train": Tolerance(
        1e-6, "fp32, three SGD steps: H200 vs CPU 9e-8; TF32 matmuls move it by 3.7e-6"
    ),
    "compiled": Tolerance(1e-5, "fp32 sin, cos and a row sum (Inductor): H200 vs CPU 1.2e-7"),
    ALLREDUCE: Tolerance(
        2e-3, "fp32 and fp16 sums: another ring or tree order rounds the fp16 part differently"
    ),
}
DEFAULT_TOLERANCE = Tolerance(1e-5, "a test this lockd does not know: fp32 by default")


def _relative(a: float, b: float, scale: float) -> float:
    if a == b:
        return 0.0
    return abs(a - b) / scale if scale > 0 else math.inf


def deviation(expected: GpuTestStats, observed: GpuTestStats) -> float:
    """How far apart two outputs' statistics are, relative to their scale; inf when they
    cannot be compared (sizes, non-finite values or sampled values disagree in kind)."""
    if expected.numel != observed.numel or expected.nonfinite != observed.nonfinite:
        return math.inf
    if len(expected.samples) != len(observed.samples):
        return math.inf
    absmax = max(expected.absmax, observed.absmax)
    l1 = max(expected.l1, observed.l1)
    l2 = max(expected.l2, observed.l2)
    parts = [
        _relative(expected.absmax, observed.absmax, absmax),
        _relative(expected.sum, observed.sum, l1),
        _relative(expected.mean * expected.numel, observed.mean * observed.numel, l1),
        _relative(expected.l1, observed.l1, l1),
        _relative(expected.l2, observed.l2, l2),
    ]
    for e, o in zip(expected.samples, observed.samples, strict=True):
        if (e is None) != (o is None):
            return math.inf
        if e is not None and o is not None:
            parts.append(_relative(e, o, absmax))
    return max(parts)


# --- comparing results ----------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyDifference:
    field: str  # e.g. "compute_capability", "settings.matmul_allow_tf32"
    expected: str | None
    observed: str | None

    @property
    def setting(self) -> bool:
        """A deterministic setting: lockd prescribes it, so a change is itself a failure."""
        return self.field.startswith("settings.")


def _flat(key: GpuSuiteKey) -> dict[str, str | None]:
    values = key.model_dump(mode="json")
    settings = values.pop("settings")
    flat = dict(values)
    flat.update({f"settings.{name}": value for name, value in settings.items()})
    return {name: None if value is None else str(value) for name, value in flat.items()}


def key_differences(expected: GpuSuiteKey, observed: GpuSuiteKey) -> list[KeyDifference]:
    want, have = _flat(expected), _flat(observed)
    return [
        KeyDifference(name, want.get(name), have.get(name))
        for name in sorted(want.keys() | have.keys())
        if want.get(name) != have.get(name)
    ]


OutcomeKind = Literal[
    "same", "within", "bits", "tolerance", "incomparable", "error", "not-run", "new"
]


@dataclass(frozen=True)
class TestOutcome:
    name: str
    kind: OutcomeKind
    failed: bool
    message: str
    expected: str | None = None
    observed: str | None = None
    deviation: float | None = None


@dataclass(frozen=True)
class SuiteComparison:
    mode: Literal["bits", "tolerance", "none"]
    reference: GpuSuiteResult | None
    key_diffs: tuple[KeyDifference, ...]
    outcomes: tuple[TestOutcome, ...]
    message: str = ""

    @property
    def failed(self) -> bool:
        return (
            self.mode == "none"
            or any(d.setting for d in self.key_diffs)
            or any(o.failed for o in self.outcomes)
        )

    @property
    def differing(self) -> list[str]:
        """The tests that failed, by name."""
        return [o.name for o in self.outcomes if o.failed]


def describe(result: GpuSuiteResult) -> str:
    key = result.key
    if result.device == "cpu":
        return f"the CPU ({key.cpu_capability or key.machine}, torch {key.torch})"
    return (
        f"{result.gpu_name or 'a GPU'} (sm_{(key.compute_capability or '?').replace('.', '')}, "
        f"{key.sm_count} SMs, torch {key.torch})"
    )


def _reference(
    recorded: Sequence[GpuSuiteResult], observed: GpuSuiteResult
) -> tuple[GpuSuiteResult | None, bool]:
    """The recorded result to compare with, and whether its key is the observed key."""
    same_device = [r for r in recorded if r.device == observed.device]
    for result in reversed(same_device):
        if result.key == observed.key:
            return result, True
    if not same_device:
        return None, False
    ranked = sorted(
        same_device,
        key=lambda r: (
            r.key.compute_capability != observed.key.compute_capability,
            r.key.sm_count != observed.key.sm_count,
            len(key_differences(r.key, observed.key)),
        ),
    )
    return ranked[0], False


def _tests(result: GpuSuiteResult) -> dict[str, GpuTestResult]:
    return {t.name: t for t in result.tests}


def _outcome(
    name: str,
    expected: GpuTestResult | None,
    observed: GpuTestResult | None,
    bits: bool,
    observed_gpus: int,
) -> TestOutcome | None:
    if expected is None or expected.status != "ok":
        if observed is not None and observed.status == "ok":
            return TestOutcome(
                name, "new", False, "ran here, but the recorded run has no result to compare"
            )
        return None
    if observed is None or observed.status != "ok":
        status = "missing" if observed is None else observed.status
        reason = "" if observed is None or observed.reason is None else observed.reason
        if observed is not None and observed.status == "error":
            return TestOutcome(name, "error", True, f"failed here: {reason}", observed="error")
        soft = name == ALLREDUCE and observed_gpus < 2
        return TestOutcome(
            name,
            "not-run",
            not soft,
            f"recorded, but {status} here" + (f": {reason}" if reason else ""),
            expected="ok",
            observed=status,
        )
    assert expected.stats is not None and observed.stats is not None
    if (expected.dtype, expected.shape) != (observed.dtype, observed.shape):
        return TestOutcome(
            name,
            "incomparable",
            True,
            "different output dtype or shape",
            expected=f"{expected.dtype} {expected.shape}",
            observed=f"{observed.dtype} {observed.shape}",
        )
    tolerance = TOLERANCES.get(name, DEFAULT_TOLERANCE)
    off = deviation(expected.stats, observed.stats)
    if bits:
        if expected.sha256 == observed.sha256:
            return TestOutcome(name, "same", False, "bit-identical")
        return TestOutcome(
            name,
            "bits",
            True,
            f"bits differ under the same key (deviation {off:.2e}, tolerance {tolerance.rtol:.0e})",
            expected=expected.sha256,
            observed=observed.sha256,
            deviation=off,
        )
    if off <= tolerance.rtol:
        return TestOutcome(
            name, "within", False, f"deviation {off:.2e} <= {tolerance.rtol:.0e}", deviation=off
        )
    return TestOutcome(
        name,
        "tolerance",
        True,
        f"deviation {off:.2e} > tolerance {tolerance.rtol:.0e}",
        expected=expected.sha256,
        observed=observed.sha256,
        deviation=off,
    )


def compare_suites(recorded: Sequence[GpuSuiteResult], observed: GpuSuiteResult) -> SuiteComparison:
    """Compare one run with the recorded results: bit for bit against the result of the same
    key, else within tolerance against the closest result of the same device kind."""
    reference, same_key = _reference(recorded, observed)
    if reference is None:
        kinds = ", ".join(sorted({describe(r) for r in recorded}))
        return SuiteComparison(
            mode="none",
            reference=None,
            key_diffs=(),
            outcomes=(),
            message=f"this run is on {describe(observed)}; the manifest holds results for "
            f"{kinds} only: nothing to compare with (record this device with --append)",
        )
    want, have = _tests(reference), _tests(observed)
    names = [t.name for t in reference.tests] + [n for n in have if n not in want]
    outcomes = [
        outcome
        for name in names
        if (outcome := _outcome(name, want.get(name), have.get(name), same_key, observed.gpu_count))
        is not None
    ]
    diffs = () if same_key else tuple(key_differences(reference.key, observed.key))
    return SuiteComparison(
        mode="bits" if same_key else "tolerance",
        reference=reference,
        key_diffs=diffs,
        outcomes=tuple(outcomes),
    )


# --- manifests with results for several GPU models ---------------------------------------------


def merge_result(
    recorded: Sequence[GpuSuiteResult], new: GpuSuiteResult, source: str
) -> list[GpuSuiteResult]:
    """The recorded results with ``new`` added; a result of the same key is replaced when it
    has the same signature.

    Raises:
        RefusedError: a recorded result has the same key but another signature: this GPU
            computes other bits than the recorded one, which is drift, not a new GPU model.
    """
    kept = []
    for result in recorded:
        if result.key != new.key:
            kept.append(result)
        elif result.signature != new.signature:
            changed = compare_suites([result], new).differing
            raise RefusedError(
                f"{source}: already holds a result with this comparison key "
                f"({describe(result)}) and this run computed other bits "
                f"({', '.join(changed) or 'signature'} differ); run `lockd verify --gpu` "
                "to see the difference, or record a new manifest"
            )
    return [*kept, new]


def summary(result: GpuSuiteResult) -> str:
    """One line for people: where it ran, how many tests, the signature, the times."""
    ran = sum(t.status == "ok" for t in result.tests)
    timing = result.timing
    parts = [
        f"GPU suite on {describe(result)}: {ran} of {len(result.tests)} tests ran",
        f"signature {result.signature[:16]}",
        f"suite {timing.suite:.2f} s",
    ]
    if timing.compile is not None:
        parts.append(f"torch.compile {timing.compile:.2f} s")
    if timing.allreduce is not None:
        parts.append(f"all-reduce over {result.gpu_count} GPUs {timing.allreduce:.2f} s")
    if result.overrides:
        parts.append(f"overridden: {', '.join(result.overrides)}")
    return "; ".join(parts)
