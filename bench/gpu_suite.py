"""The GPU validation suite's time beside `python -m torch.utils.collect_env`, in one run.

Issue 4's targets: the suite proper <= 3 s after `import torch` (torch.compile reported on its
own). The baseline is what people run today to describe a CUDA stack: collect_env, timed in
the same run on the same machine. Both are asked which cuDNN they see, and each answer is held
against the cuDNN the process actually loaded (the libcudnn mapped after a convolution, asked
for its version with cudnnGetVersion).

Usage: python bench/gpu_suite.py [--runs N] [--python PATH] [--device auto|cuda|cpu]
Prints a table; --json FILE also writes the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lockd.evidence.gpurun import parse_suite_output, suite_argv  # noqa: E402

LOADED_CUDNN = r"""
import ctypes, json, os, torch
out = {"torch_says": None, "mapped": [], "library_says": None}
if torch.cuda.is_available():
    x = torch.ones(1, 1, 8, 8, device="cuda")
    torch.nn.functional.conv2d(x, torch.ones(1, 1, 3, 3, device="cuda"))
    torch.cuda.synchronize()
    out["torch_says"] = torch.backends.cudnn.version()
    with open("/proc/self/maps") as maps:
        paths = sorted({l.split()[-1] for l in maps if "libcudnn" in l and ".so" in l})
    out["mapped"] = paths
    main = [p for p in paths if os.path.basename(p).startswith("libcudnn.so")]
    if main:
        out["library_says"] = ctypes.CDLL(main[0]).cudnnGetVersion()
print(json.dumps(out))
"""


def dotted(code: int | None) -> str | None:
    if code is None:
        return None
    return f"{code // 10000}.{(code % 10000) // 100}.{code % 100}"


def run(argv: list[str]) -> tuple[float, subprocess.CompletedProcess[bytes]]:
    start = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, check=False)
    return time.perf_counter() - start, result


def collect_env(python: str) -> tuple[float, str]:
    elapsed, result = run([python, "-m", "torch.utils.collect_env"])
    text = result.stdout.decode("utf-8", "replace")
    lines = [ln for ln in text.splitlines() if "cudnn" in ln.lower()]
    # collect_env prints "cuDNN version: ..." and, when it found several, continuation lines
    block: list[str] = []
    capture = False
    for line in text.splitlines():
        if line.lower().startswith("cudnn version"):
            capture = True
            block.append(line.split(":", 1)[1].strip())
            continue
        if capture and line.startswith(("/", "Probably")):
            block.append(line.strip())
            continue
        capture = False
    return elapsed, " | ".join(block) or (" | ".join(lines) or "(no cuDNN line)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    _, loaded_run = run([args.python, "-c", LOADED_CUDNN])
    loaded = json.loads(loaded_run.stdout.decode().strip().splitlines()[-1] or "{}")
    truth = dotted(loaded.get("library_says"))

    env_times, env_cudnn = [], ""
    suite_times, compile_times, import_times, walls = [], [], [], []
    suite_cudnn: str | None = None
    signatures = set()
    for _ in range(args.runs):
        elapsed, env_cudnn = collect_env(args.python)
        env_times.append(elapsed)
        wall, result = run(suite_argv(args.python, device=args.device))
        if result.returncode != 0:
            sys.exit(f"the suite failed: {result.stderr.decode()[-2000:]}")
        suite = parse_suite_output(result.stdout, "bench")
        walls.append(wall)
        suite_times.append(suite.timing.suite)
        import_times.append(suite.timing.import_torch)
        if suite.timing.compile is not None:
            compile_times.append(suite.timing.compile)
        suite_cudnn = suite.key.cudnn
        signatures.add(suite.signature)
        device = f"{suite.gpu_name or 'CPU'} ({suite.device})"

    def agrees(reported: str | None) -> str:
        if truth is None:
            return "n/a (no cuDNN loaded)"
        return "yes" if reported and truth in reported else "no"

    rows = [
        ("python -m torch.utils.collect_env", statistics.median(env_times), env_cudnn),
        ("lockd GPU suite, whole process", statistics.median(walls), suite_cudnn or "-"),
        ("  of which import torch", statistics.median(import_times), ""),
        ("  of which the suite proper", statistics.median(suite_times), ""),
    ]
    if compile_times:
        rows.append(("  of which torch.compile (apart)", statistics.median(compile_times), ""))
    print(f"device: {device}; {args.runs} runs each, medians; python {args.python}")
    print(f"cuDNN the process loaded: {truth or '-'} ({', '.join(loaded.get('mapped', []))})")
    print(f"{'what':<40} {'seconds':>8}  cuDNN reported  (matches loaded?)")
    for what, seconds, cudnn in rows:
        verdict = f"  ({agrees(cudnn)})" if cudnn else ""
        print(f"{what:<40} {seconds:8.2f}  {cudnn}{verdict}")
    print(f"suite signatures over {args.runs} runs: {len(signatures)} distinct")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "device": device,
                    "loaded_cudnn": truth,
                    "mapped": loaded.get("mapped"),
                    "collect_env_seconds": env_times,
                    "collect_env_cudnn": env_cudnn,
                    "suite_wall_seconds": walls,
                    "suite_seconds": suite_times,
                    "import_torch_seconds": import_times,
                    "compile_seconds": compile_times,
                    "suite_cudnn": suite_cudnn,
                    "signatures": sorted(signatures),
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
