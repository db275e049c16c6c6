"""Reference tables for `lockd compat`: torch wheels, CUDA driver floors, GPU capabilities.

Data only; the rules that use them are in lockd.judgement.compat. Every table names its sources;
where a wheel's own metadata and NVIDIA's release notes disagree, the wheel wins.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TorchWheel:
    """What the default Linux x86_64 torch wheel of one version was built with."""

    cuda: str  # torch.version.cuda
    cudnn: str  # the pinned nvidia-cudnn-cu* distribution
    nccl: str  # the pinned nvidia-nccl-cu* distribution
    arch: tuple[str, ...]  # torch._C._cuda_getArchFlags().split()


def _sm(*archs: int) -> tuple[str, ...]:
    return tuple(f"sm_{a}" for a in archs)


# torch wheel -> CUDA, cuDNN, NCCL and compiled architectures.
# Sources: the wheels' METADATA (Requires-Dist pins of nvidia-cudnn-cu*, nvidia-nccl-cu*,
# nvidia-cuda-runtime-cu*) as published on the Python package index, and
# torch._C._cuda_getArchFlags() of each installed wheel (../shared/reference/cuda-facts.md).
# None of these default wheels carries PTX (no compute_XY entry).
TORCH_WHEELS: dict[str, TorchWheel] = {
    "2.4.1": TorchWheel("12.1", "9.1.0.70", "2.20.5", _sm(50, 60, 70, 75, 80, 86, 90)),
    "2.5.1": TorchWheel("12.4", "9.1.0.70", "2.21.5", _sm(50, 60, 70, 75, 80, 86, 90)),
    "2.6.0": TorchWheel("12.4", "9.1.0.70", "2.21.5", _sm(50, 60, 70, 75, 80, 86, 90)),
    "2.7.1": TorchWheel("12.6", "9.5.1.17", "2.26.2", _sm(50, 60, 70, 75, 80, 86, 90)),
    "2.8.0": TorchWheel("12.8", "9.10.2.21", "2.27.3", _sm(70, 75, 80, 86, 90, 100, 120)),
    "2.9.1": TorchWheel("12.8", "9.10.2.21", "2.27.5", _sm(70, 75, 80, 86, 90, 100, 120)),
    "2.10.0": TorchWheel("12.8", "9.10.2.21", "2.27.5", _sm(70, 75, 80, 86, 90, 100, 120)),
    "2.11.0": TorchWheel("13.0", "9.19.0.56", "2.28.9", _sm(75, 80, 86, 90, 100, 120)),
    "2.14.1": TorchWheel("13.0", "9.24.0.43", "2.30.7", _sm(75, 80, 86, 90, 100, 120)),
}


@dataclass(frozen=True)
class DriverFloor:
    """The oldest Linux driver for one CUDA minor release."""

    toolkit: str  # the toolkit's GA release needs this driver (full compatibility)
    minor_compat: str  # an application built with it runs here under minor-version compatibility


# CUDA toolkit -> minimum Linux x86_64 driver. Sources: CUDA Toolkit release notes, table
# "CUDA Toolkit and Corresponding Driver Versions" (toolkit floor: the GA release; updates may
# need a slightly newer one, e.g. 12.4 Update 1 needs 550.54.15) and table "CUDA Toolkit and
# Minimum Required Driver Version for CUDA Minor Version Compatibility"; the CUDA Compatibility
# guide, section "Minor Version Compatibility".
CUDA_DRIVERS: dict[str, DriverFloor] = {
    "11.8": DriverFloor("520.61.05", "450.80.02"),
    "12.0": DriverFloor("525.60.13", "525.60.13"),
    "12.1": DriverFloor("530.30.02", "525.60.13"),
    "12.2": DriverFloor("535.54.03", "525.60.13"),
    "12.3": DriverFloor("545.23.06", "525.60.13"),
    "12.4": DriverFloor("550.54.14", "525.60.13"),
    "12.5": DriverFloor("555.42.02", "525.60.13"),
    "12.6": DriverFloor("560.28.03", "525.60.13"),
    "12.8": DriverFloor("570.26", "525.60.13"),
    "12.9": DriverFloor("575.51.03", "525.60.13"),
    "13.0": DriverFloor("580.65.06", "580"),
}

# Minor-version compatibility holds across a whole major release (same sources), so the floor
# is known even for a minor release missing from CUDA_DRIVERS.
MINOR_COMPAT_FLOOR: dict[int, str] = {11: "450.80.02", 12: "525.60.13", 13: "580"}

# GPU -> compute capability (major, minor). Sources: the CUDA C Programming Guide, appendix
# "Compute Capabilities", and NVIDIA's list of CUDA GPUs and their compute capability.
GPUS: tuple[tuple[str, tuple[int, int]], ...] = (
    ("K80", (3, 7)),
    ("P100", (6, 0)),
    ("GTX 1080", (6, 1)),
    ("V100", (7, 0)),
    ("T4", (7, 5)),
    ("RTX 2080", (7, 5)),
    ("A100", (8, 0)),
    ("A10", (8, 6)),
    ("RTX 3090", (8, 6)),
    ("L4", (8, 9)),
    ("L40S", (8, 9)),
    ("RTX 4090", (8, 9)),
    ("H100", (9, 0)),
    ("H200", (9, 0)),
    ("B200", (10, 0)),
    ("RTX 5090", (12, 0)),
)
