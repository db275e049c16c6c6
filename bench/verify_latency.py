"""Median wall time of `lockd verify <container>` beside `docker exec <container> pip freeze`.

Target (issue 2): a full verify (signature, image, packages, filesystem, python, env, system)
<= 1.0 s median and <= 1.5x the baseline, measured on the same container in the same run.
Also prints the CPU time (user + system) of each command's own process: on a machine shared
with other jobs it moves less than wall time does. lockd runs with its bytecode cached, as an
installed lockd does (PYTHONDONTWRITEBYTECODE, if set, would make every run compile lockd's
modules again). With ``--before COMMIT``, that commit's lockd (a git worktree of it, its own
manifest and caches) is measured too, interleaved on the same container: a change's figures
beside the figures before it. ``--no-cache`` measures a cold verify (nothing reused: the probe
runs every time) instead of a warm one. Needs the machine set up by scripts/setup.
Usage: python bench/verify_latency.py [--runs N] [--before COMMIT] [--no-cache]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from before import OtherLockd, lockd_at, short

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


def record_and_verify_argv(
    lockd: list[str],
    env: dict[str, str],
    name: str,
    tmp: Path,
    prefix: Path,
    tag: str,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """Record the container with ``lockd`` (a manifest of that lockd's own format) and return the
    argv that verifies the container against it."""
    manifest = tmp / f"{tag}.json"
    subprocess.run(
        [*lockd, "record", name, "--key", f"{prefix}.key", "-o", str(manifest)],
        env=env,
        check=True,
        capture_output=True,
    )
    return [
        *lockd,
        "verify",
        name,
        "--manifest",
        str(manifest),
        "--key",
        f"{prefix}.pub",
        "--json",
        *extra,
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--before", metavar="COMMIT", help="also measure this commit's lockd")
    parser.add_argument(
        "--no-cache", action="store_true", help="verify with --no-cache (cold: nothing reused)"
    )
    args = parser.parse_args()
    extra = ("--no-cache",) if args.no_cache else ()
    wheels = Path(os.environ.get("LOCKD_WHEELS", "/var/cache/lockd/wheels"))
    build_image(wheels)
    lockd = [sys.executable, "-m", "lockd"]
    env = {**os.environ, "LOCKD_PASSWORD": "bench"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    load = os.getloadavg()
    name = f"lockd-bench-{os.getpid()}"
    subprocess.run(["docker", "run", "-d", "--name", name, IMAGE], check=True, capture_output=True)
    before: OtherLockd | None = None
    try:
        with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
            prefix = Path(tmp) / "k"
            subprocess.run(
                [*lockd, "keygen", "--output-key-prefix", str(prefix)],
                env=env,
                check=True,
                capture_output=True,
            )
            argvs = {
                "lockd": record_and_verify_argv(lockd, env, name, Path(tmp), prefix, "now", extra),
                "baseline": ["docker", "exec", name, "pip", "freeze"],
            }
            envs = dict.fromkeys(argvs, env)
            if args.before:
                before = stack.enter_context(lockd_at(args.before))
                envs["before"] = before.environ(env)
                argvs["before"] = record_and_verify_argv(
                    before.argv, envs["before"], name, Path(tmp), prefix, "before", extra
                )
            for key, argv in argvs.items():  # warm caches once
                timed(argv, envs[key])
            samples: dict[str, list[tuple[float, float]]] = {key: [] for key in argvs}
            for _ in range(args.runs):  # interleaved, so drift in machine load hits all alike
                for key, argv in argvs.items():
                    samples[key].append(timed(argv, envs[key]))
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
    median = {key: statistics.median(w for w, _ in runs) for key, runs in samples.items()}
    print(f"runs: {args.runs} each, interleaved, same container, machine: {os.cpu_count()} cores")
    print(
        "load average (1, 5, 15 min): before "
        + ", ".join(f"{x:.2f}" for x in load)
        + "; after "
        + ", ".join(f"{x:.2f}" for x in os.getloadavg())
    )
    what = "lockd verify (full, --json" + (", --no-cache)" if args.no_cache else ")")
    print(line(what, samples["lockd"]))
    if before is not None:
        print(line(f"the same at {short(before.commit)}", samples["before"]))
    print(line("docker exec pip freeze (baseline)", samples["baseline"]))
    print(
        f"ratio lockd/baseline: {median['lockd'] / median['baseline']:.2f}x  "
        "(target <= 1.5x, and <= 1.0 s median)"
    )
    if before is not None:
        print(
            f"ratio lockd/lockd at {short(before.commit)}: "
            f"{median['lockd'] / median['before']:.2f}x (target <= 1.10x)"
        )


if __name__ == "__main__":
    main()
