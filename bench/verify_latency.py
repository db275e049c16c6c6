"""Median wall time of `lockd verify <container>` beside `docker exec <container> pip freeze`.

Target (issue 2): a full verify (signature, image, packages, filesystem, python, env, system)
<= 1.0 s median and <= 1.5x the baseline, measured on the same container in the same run.
Also prints the CPU time (user + system) of each command's own process: on a machine shared
with other jobs it moves less than wall time does. lockd runs with its bytecode cached, as an
installed lockd does (PYTHONDONTWRITEBYTECODE, if set, would make every run compile lockd's
modules again). Needs the machine set up by scripts/setup.
Usage: python bench/verify_latency.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "lockd-bench/app:latest"


def build_image(wheels: Path) -> None:
    with tempfile.TemporaryDirectory() as context:
        shutil.copytree(ROOT / "tests/assets/images/app", context, dirs_exist_ok=True)
        shutil.copytree(wheels, Path(context) / "wheels")
        subprocess.run(
            ["docker", "build", "-q", "-t", IMAGE, context], check=True, capture_output=True
        )


def timed(argv: list[str], env: dict[str, str], ok: tuple[int, ...] = (0,)) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child process) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, env=env, check=False)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode not in ok:
        sys.exit(f"{argv[:3]} exited {result.returncode}: {result.stderr.decode()[-2000:]}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return elapsed, cpu


def line(what: str, runs: list[tuple[float, float]]) -> str:
    wall = [w for w, _ in runs]
    cpu = statistics.median(c for _, c in runs)
    return (
        f"{what:34} median {statistics.median(wall):.3f} s  (min {min(wall):.3f}, "
        f"max {max(wall):.3f})  CPU {cpu:.3f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    wheels = Path(os.environ.get("LOCKD_WHEELS", "/var/cache/lockd/wheels"))
    build_image(wheels)
    lockd = [sys.executable, "-m", "lockd"]
    env = {**os.environ, "LOCKD_PASSWORD": "bench"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    load = os.getloadavg()
    name = f"lockd-bench-{os.getpid()}"
    subprocess.run(["docker", "run", "-d", "--name", name, IMAGE], check=True, capture_output=True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            prefix = Path(tmp) / "k"
            subprocess.run(
                [*lockd, "keygen", "--output-key-prefix", str(prefix)],
                env=env,
                check=True,
                capture_output=True,
            )
            manifest = Path(tmp) / "m.json"
            subprocess.run(
                [*lockd, "record", name, "--key", f"{prefix}.key", "-o", str(manifest)],
                env=env,
                check=True,
                capture_output=True,
            )
            verify = [
                *lockd,
                "verify",
                name,
                "--manifest",
                str(manifest),
                "--key",
                f"{prefix}.pub",
                "--json",
            ]
            baseline = ["docker", "exec", name, "pip", "freeze"]
            timed(verify, env), timed(baseline, env)  # warm caches once
            ours: list[tuple[float, float]] = []
            theirs: list[tuple[float, float]] = []
            for _ in range(args.runs):  # interleaved, so drift in machine load hits both alike
                ours.append(timed(verify, env))
                theirs.append(timed(baseline, env))
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
    m_ours = statistics.median(w for w, _ in ours)
    m_theirs = statistics.median(w for w, _ in theirs)
    print(f"runs: {args.runs} each, interleaved, same container, machine: {os.cpu_count()} cores")
    print(
        "load average (1, 5, 15 min): before "
        + ", ".join(f"{x:.2f}" for x in load)
        + "; after "
        + ", ".join(f"{x:.2f}" for x in os.getloadavg())
    )
    print(line("lockd verify (full, --json)", ours))
    print(line("docker exec pip freeze (baseline)", theirs))
    print(f"ratio lockd/baseline: {m_ours / m_theirs:.2f}x  (target <= 1.5x, and <= 1.0 s median)")


if __name__ == "__main__":
    main()
