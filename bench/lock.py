"""How long `lockd lock` takes on the reference torch lock, with each resolver, cold and warm.

Compiles locks/pytorch-cuda-2.6/requirements.in (torch 2.6.0 and its family, numpy, pandas,
matplotlib, jupyterlab: 122 pins) for CPython 3.11 on manylinux_2_28_x86_64 against the real
package index, in this one run:

- ``lockd lock --resolver uv`` and ``--resolver pip-tools``, each with a cold cache (fresh,
  empty cache folders: UV_CACHE_DIR, PIP_CACHE_DIR, XDG_CACHE_HOME for pip-tools' own) and then
  warm (the same folders again, the median of --repeat runs);
- the baseline: plain ``uv pip compile`` with the same options and warm cache, without lockd
  (what lockd's coherence pass, header and checks cost on top).

Every lock must come out the same apart from its `resolver:` header line; the bench says so.
Target: the default resolver (uv) within 10 s warm. pip-tools cold takes minutes (7 min 17 s
measured for this lock); --skip-cold-pip-tools leaves that run out (pip-tools warm then uses
this machine's own caches, after one unmeasured warm-up run).

    .venv/bin/python bench/lock.py [--repeat 3] [--skip-cold-pip-tools] [--resolver uv]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "locks" / "pytorch-cuda-2.6" / "requirements.in"
TARGET = ("--python-version", "3.11", "--platform", "manylinux_2_28_x86_64")
CACHE_VARIABLES = ("UV_CACHE_DIR", "PIP_CACHE_DIR", "XDG_CACHE_HOME")


def run_lock(resolver: str, out: Path, cache: Path | None) -> float:
    env = dict(os.environ)
    if cache is not None:
        env.update({name: str(cache / name.lower()) for name in CACHE_VARIABLES})
    command = [sys.executable, "-m", "lockd", "lock", str(SOURCE), *TARGET]
    command += ["--resolver", resolver, "--output", str(out)]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"lockd lock --resolver {resolver} failed:\n{result.stderr}")
    return elapsed


def run_plain_uv(out: Path, cache: Path, constraints: Path) -> float:
    """The baseline: uv alone, as lockd runs it (same options, index and constraints)."""
    from lockd.lock import _clean_env, default_index_url, find_uv

    uv = find_uv()
    if uv is None:
        sys.exit("uv is not installed: pip install uv")
    env = _clean_env()
    env.update({name: str(cache / name.lower()) for name in CACHE_VARIABLES})
    command = [uv, "pip", "compile", "--generate-hashes", "--strip-extras", "--allow-unsafe"]
    command += ["--python-version", "3.11.7", "--python-platform", "x86_64-manylinux_2_28"]
    command += ["--quiet", "--no-header", "--no-config", "--annotation-style", "split"]
    command += ["--default-index", default_index_url(), "--constraint", str(constraints)]
    command += ["--output-file", str(out), SOURCE.name]
    start = time.perf_counter()
    result = subprocess.run(
        command, cwd=SOURCE.parent, capture_output=True, text=True, env=env, check=False
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"uv pip compile failed:\n{result.stderr}")
    return elapsed


def body(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if not line.startswith("#   resolver:")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="warm runs per resolver (median)")
    parser.add_argument(
        "--skip-cold-pip-tools",
        action="store_true",
        help="leave out pip-tools with a cold cache (minutes)",
    )
    parser.add_argument(
        "--resolver",
        action="append",
        choices=("uv", "pip-tools"),
        help="only this resolver (repeat for both; default: both)",
    )
    args = parser.parse_args()
    resolvers = args.resolver or ["uv", "pip-tools"]
    scratch = Path(tempfile.mkdtemp(prefix="lockd-bench-lock-"))
    try:
        figures: dict[str, float] = {}
        outputs: list[Path] = []
        for resolver in resolvers:
            cache: Path | None = scratch / f"cache-{resolver}"
            cold = scratch / f"{resolver}-cold.txt"
            if resolver == "pip-tools" and args.skip_cold_pip_tools:
                cache = None  # this machine's own caches, warmed by one unmeasured run
                run_lock(resolver, cold, cache)
            else:
                assert cache is not None
                cache.mkdir()
                figures[f"{resolver} cold"] = run_lock(resolver, cold, cache)
                print(
                    f"lockd lock --resolver {resolver}, cold cache: {figures[f'{resolver} cold']:.1f} s",
                    flush=True,
                )
            outputs.append(cold)
            warm = [
                run_lock(resolver, scratch / f"{resolver}-warm.txt", cache)
                for _ in range(args.repeat)
            ]
            figures[f"{resolver} warm"] = statistics.median(warm)
            print(
                f"lockd lock --resolver {resolver}, warm cache: median {figures[f'{resolver} warm']:.1f} s "
                f"of {args.repeat} ({', '.join(f'{t:.1f}' for t in warm)})",
                flush=True,
            )
            outputs.append(scratch / f"{resolver}-warm.txt")
        constraints = scratch / "lockd-coherence.txt"
        constraints.write_text("torchaudio==2.6.0\ntorchvision==0.21.0\n")
        plain = [
            run_plain_uv(scratch / "plain-uv.txt", scratch / "cache-uv", constraints)
            for _ in range(args.repeat)
        ]
        figures["plain uv warm"] = statistics.median(plain)
        same = all(body(o) == body(outputs[0]) for o in outputs)
        pins = sum(1 for line in body(outputs[0]) if line and line[0].isalnum())

        print()
        print(f"{SOURCE.relative_to(ROOT)}: {pins} pins, CPython 3.11, manylinux_2_28_x86_64")
        print(f"{'run':<34} {'seconds':>8}")
        for name in ("uv cold", "uv warm", "pip-tools cold", "pip-tools warm"):
            if name in figures:
                print(f"{'lockd lock --resolver ' + name:<34} {figures[name]:>8.1f}")
        print(f"{'baseline: plain uv pip compile warm':<34} {figures['plain uv warm']:>8.1f}")
        print(f"every lock the same apart from its resolver line: {'yes' if same else 'NO'}")
        default = figures.get("uv warm", float("nan"))
        print(
            f"default resolver (uv) warm: {default:.1f} s (target <= 10 s: "
            f"{'met' if default <= 10 else 'NOT met'}); lockd over plain uv: "
            f"{default - figures['plain uv warm']:+.1f} s"
        )
        if "pip-tools cold" in figures and "uv cold" in figures:
            print(f"pip-tools / uv, cold: {figures['pip-tools cold'] / figures['uv cold']:.0f}x")
        if "pip-tools warm" in figures:
            print(f"pip-tools / uv, warm: {figures['pip-tools warm'] / default:.0f}x")
        if not same:
            sys.exit(1)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
