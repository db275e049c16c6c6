"""Two realistic manifests of one training image, before and after an upgrade: torch 2.10 on
CUDA 12.8 becomes torch 2.11 on CUDA 13.0, numpy moves, a driver moves, and the GPU suite on an
H100 gives other bits for some tests. Used by the diff, bundle and page tests."""

from __future__ import annotations

from typing import Any

from lockd.evidence.gpurun import suite_signature
from lockd.model.environment import (
    Distribution,
    DriverInfo,
    GpuInfo,
    OsInfo,
    ProbeReport,
    PythonInfo,
    TorchInfo,
)
from lockd.model.gpusuite import GpuSuiteResult
from lockd.model.host import HostEvidence, TargetInfo
from lockd.model.manifest import LockInfo, LockPin, Manifest, Observation

SITE = "/opt/venv/lib/python3.11/site-packages"
IMAGE_A = "sha256:" + "1a" * 32
IMAGE_B = "sha256:" + "2b" * 32

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


def _dist(name: str, version: str, record: str = "1") -> Distribution:
    return Distribution(
        name=name,
        version=version,
        installer="pip",
        location=SITE,
        record_sha256=(record * 64)[:64],
        files=12,
    )


def _stats(scale: float) -> dict[str, Any]:
    return {
        "numel": 1024,
        "nonfinite": 0,
        "sum": 12.5 * scale,
        "mean": 12.5 * scale / 1024,
        "l1": 400.0 * scale,
        "l2": 20.0 * scale,
        "absmax": 3.0 * scale,
        "samples": [1.5 * scale, -0.25 * scale, 2.0 * scale, None],
    }


def _test(name: str, digest: str, scale: float = 1.0) -> dict[str, Any]:
    return {
        "name": name,
        "status": "ok",
        "dtype": "float32" if "16" not in name else "float16",
        "shape": [32, 32],
        "sha256": (digest * 64)[:64],
        "stats": _stats(scale),
        "seconds": 0.01,
    }


def _suite(
    torch: str, cuda: str, cudnn: str, cublas: str, tests: list[dict[str, Any]]
) -> GpuSuiteResult:
    document: dict[str, Any] = {
        "suite_version": 1,
        "device": "cuda",
        "gpu_name": "NVIDIA H100 80GB HBM3",
        "gpu_uuid_sha256": "c" * 64,
        "gpu_count": 1,
        "key": {
            "device": "cuda",
            "torch": torch,
            "torch_git": None,
            "cuda": cuda,
            "cudnn": cudnn,
            "cublas": cublas,
            "compute_capability": "9.0",
            "sm_count": 132,
            "cpu_capability": None,
            "machine": "x86_64",
            "settings": SETTINGS,
        },
        "overrides": [],
        "tests": tests,
        "signature": "0" * 64,
        "timing": {
            "import_torch": 3.0,
            "suite": 0.6,
            "compile": None,
            "allreduce": None,
            "total": 4.0,
        },
    }
    draft = GpuSuiteResult.model_validate(document)
    document["signature"] = suite_signature(draft)
    return GpuSuiteResult.model_validate(document)


def _manifest(
    *,
    image: str,
    torch: TorchInfo,
    driver: str,
    driver_cuda: str,
    distributions: list[Distribution],
    suite: GpuSuiteResult,
    env: dict[str, str],
    recorded_at: str,
) -> Manifest:
    probe = ProbeReport(
        probe_version=1,
        python=PythonInfo(
            version="3.11.2",
            implementation="cpython",
            executable="/opt/venv/bin/python3",
            prefix="/opt/venv",
            base_prefix="/usr",
            path=[SITE],
            platform="linux",
        ),
        distributions=distributions,
        os=OsInfo(
            id="debian",
            version_id="12",
            pretty_name="Debian GNU/Linux 12 (bookworm)",
            glibc="2.36",
            machine="x86_64",
        ),
        env=env,
        torch=torch,
        driver=DriverInfo(version=driver, cuda=driver_cuda, source="nvml"),
        gpus=[
            GpuInfo(index=0, name="NVIDIA H100 80GB HBM3", compute_capability="9.0", sm_count=132)
        ],
    )
    observation = Observation(
        target=TargetInfo(kind="container", ref="train-1"),
        host=HostEvidence(image_id=image, repo_tags=["train:2026.11"]),
        probe=probe,
    )
    lock = LockInfo(
        path="requirements.txt",
        sha256=("9f" if image == IMAGE_A else "8e") * 32,
        python="3.11",
        platform="manylinux_2_28_x86_64",
        pins=[LockPin(name=d.name, version=d.version) for d in distributions],
    )
    return Manifest(
        lockd_version="0.1.0",
        recorded_at=recorded_at,
        observation=observation,
        lock=lock,
        gpu_suites=[suite],
    )


def manifest_a() -> Manifest:
    """torch 2.10.0+cu128 on driver 570.133.20, recorded first."""
    return _manifest(
        image=IMAGE_A,
        torch=TorchInfo(
            version="2.10.0+cu128",
            cuda="12.8",
            cudnn="91002",
            nccl="2.27.3",
            cublas="12.8.4",
            arch_flags="sm_80 sm_86 sm_90 sm_100 sm_120 compute_120",
        ),
        driver="570.133.20",
        driver_cuda="12.8",
        distributions=[
            _dist("filelock", "3.20.0"),
            _dist("numpy", "2.3.4"),
            _dist("nvidia-cudnn-cu12", "9.10.2.21"),
            _dist("nvidia-nccl-cu12", "2.27.3"),
            _dist("six", "1.16.0"),
            _dist("torch", "2.10.0+cu128"),
            _dist("tqdm", "4.67.1"),
        ],
        suite=_suite(
            "2.10.0+cu128",
            "12.8",
            "9.10.2",
            "12.8.4",
            [
                _test("fp32_matmul", "a"),
                _test("fp16_matmul", "b"),
                _test("softmax", "c"),
                _test("layer_norm", "d"),
            ],
        ),
        env={"CUBLAS_WORKSPACE_CONFIG": ":4096:8", "NCCL_ALGO": "Ring"},
        recorded_at="2026-09-01T10:00:00+00:00",
    )


def manifest_b() -> Manifest:
    """torch 2.11.0+cu130 on driver 580.95.05, recorded later: numbers moved."""
    return _manifest(
        image=IMAGE_B,
        torch=TorchInfo(
            version="2.11.0+cu130",
            cuda="13.0",
            cudnn="91900",
            nccl="2.28.3",
            cublas="13.1.0",
            arch_flags="sm_80 sm_86 sm_90 sm_100 sm_120 compute_120",
        ),
        driver="580.95.05",
        driver_cuda="13.0",
        distributions=[
            _dist("filelock", "3.20.0"),
            _dist("numpy", "2.3.5"),
            _dist("nvidia-cudnn-cu13", "9.19.0.56"),
            _dist("nvidia-nccl-cu13", "2.28.3"),
            _dist("six", "1.16.0", record="2"),
            _dist("torch", "2.11.0+cu130"),
            _dist("tqdm", "4.67.1"),
        ],
        suite=_suite(
            "2.11.0+cu130",
            "13.0",
            "9.19.0",
            "13.1.0",
            [
                _test("fp32_matmul", "a"),
                _test("fp16_matmul", "e", scale=1.0004),
                _test("softmax", "f", scale=1.0000001),
                _test("layer_norm", "d"),
            ],
        ),
        env={"CUBLAS_WORKSPACE_CONFIG": ":4096:8", "NCCL_ALGO": "Tree"},
        recorded_at="2026-11-20T10:00:00+00:00",
    )
