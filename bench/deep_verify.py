"""Median wall time of `lockd verify --deep` on the torch-cpu image, cold and warm, beside
coreutils' sha256sum over the same site-packages, and lockd's peak memory.

On a running container of locks/torch-cpu (torch 2.13.0 CPU and numpy: about 1 GB, 22k files),
interleaved, in the same run:

* cold: ``lockd verify <container> --deep --no-cache`` (the full CLI in a subprocess:
  signature, probe, every check, and every file of every RECORD hashed, read from the
  container's merged directory);
* warm: ``lockd verify <container> --deep`` with the layer cache (lockd.layercache) filled by
  ``lockd record --deep`` of another container of the same image, in a cache directory of this
  run: every file the image's read-only layers provide is taken from the cache;
* the baseline: ``find <site-packages> -type f -print0 | xargs -0 -P<cores> sha256sum`` on the
  host, over the container's merged directory;
* for context, ``lockd verify <container>`` without --deep (what the probe alone costs: it
  imports torch inside the container).

lockd's peak memory is the largest ru_maxrss of its verify --deep runs (os.wait4), cold or
warm.
Target (issue 3): at least 2x faster than the baseline, peak memory <= 200 MB. The warm figure
is what a second verification of the same image costs (a fleet's containers, a re-check).
Needs the machine set up by scripts/setup (root, the daemon, the torch-cpu wheels).
Usage: python bench/deep_verify.py [--runs N]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "lockd-bench/torch-cpu:latest"
SITE = "/opt/venv/lib/python3.11/site-packages"


def torch_wheels() -> Path:
    wheels = Path(os.environ.get("LOCKD_WHEELS", "/var/cache/lockd/wheels"))
    return Path(os.environ.get("LOCKD_TORCH_WHEELS") or wheels.parent / "torch-cpu")


def build_image() -> None:
    wheels = torch_wheels()
    if not any(wheels.glob("torch-2.13.0+cpu-*.whl")):
        sys.exit(f"no torch 2.13.0 CPU wheel in {wheels}: run scripts/setup")
    with tempfile.TemporaryDirectory() as context:
        shutil.copytree(ROOT / "locks/torch-cpu", context, dirs_exist_ok=True)
        shutil.copytree(wheels, Path(context) / "wheels")
        subprocess.run(
            ["docker", "build", "-q", "-t", IMAGE, context], check=True, capture_output=True
        )


def run(
    argv: list[str], env: dict[str, str], ok: tuple[int, ...] = (0,)
) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user + system, its children included) and peak resident
    memory (KiB) of one run of ``argv``."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    assert process.stderr is not None
    errors = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    process.stderr.close()
    if process.returncode not in ok:
        sys.exit(f"{argv[:4]} exited {process.returncode}: {errors.decode()[-2000:]}")
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss


def recorded_integrity(manifest: Path) -> dict[str, int]:
    envelope = json.loads(manifest.read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    integrity: dict[str, int] = statement["predicate"]["observation"]["integrity"]
    return integrity


def tree_size(top: str) -> tuple[int, int]:
    files = size = 0
    for directory, _, names in os.walk(top):
        for name in names:
            st = os.lstat(os.path.join(directory, name))
            if not os.path.islink(os.path.join(directory, name)):
                files += 1
                size += st.st_size
    return files, size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    build_image()
    lockd = [sys.executable, "-m", "lockd"]
    cache = tempfile.TemporaryDirectory()
    env = {**os.environ, "LOCKD_PASSWORD": "bench", "LOCKD_CACHE_DIR": cache.name}
    name = f"lockd-bench-deep-{os.getpid()}"
    other = f"{name}-recorded"  # the layer cache is filled from this one
    for container in (name, other):
        subprocess.run(
            ["docker", "run", "-d", "--name", container, IMAGE], check=True, capture_output=True
        )
    try:
        merged = subprocess.run(
            ["docker", "inspect", "-f", "{{.GraphDriver.Data.MergedDir}}", name],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        site = merged + SITE
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
                [*lockd, "record", other, "--key", f"{prefix}.key", "-o", str(manifest), "--deep"],
                env=env,
                check=True,
                capture_output=True,
            )
            verify = [*lockd, "verify", name, "--manifest", str(manifest)]
            verify += ["--key", f"{prefix}.pub", "--json"]
            cold = [*verify, "--deep", "--no-cache"]
            warm = [*verify, "--deep"]
            baseline = [
                "sh",
                "-c",
                f"find '{site}' -type f -print0 | xargs -0 -P{cores} sha256sum > /dev/null",
            ]
            argvs = {"cold": cold, "warm": warm, "sha": baseline, "verify": verify}
            for argv in argvs.values():  # warm the page cache once
                run(argv, env)
            load_before = os.getloadavg()
            samples: dict[str, list[tuple[float, float, int]]] = {k: [] for k in argvs}
            for _ in range(args.runs):
                for key, argv in argvs.items():
                    samples[key].append(run(argv, env))
            load_after = os.getloadavg()
            integrity = recorded_integrity(manifest)
            files, size = tree_size(site)
    finally:
        for container in (name, other):
            subprocess.run(["docker", "rm", "-f", container], capture_output=True, check=False)
        cache.cleanup()
    walls = {k: [s[0] for s in v] for k, v in samples.items()}
    cpu = {k: statistics.median(s[1] for s in v) for k, v in samples.items()}
    median = {k: statistics.median(v) for k, v in walls.items()}
    print(
        f"machine: {cores} cores ({platform.processor() or platform.machine()}), {args.runs} runs"
    )
    print(f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f}")
    print(
        f"lockd hashes {integrity['files']} files ({integrity['bytes'] / 1e6:.0f} MB) of "
        f"{integrity['distributions']} RECORDs; the baseline {files or '?'} files "
        f"({size / 1e6:.0f} MB) under {SITE}"
    )

    def runs(values: list[float]) -> str:
        return " ".join(f"{v:.2f}" for v in sorted(values))

    labels = {
        "cold": "lockd verify --deep --no-cache",
        "warm": "lockd verify --deep (warm)",
        "sha": f"find | xargs -P{cores} sha256sum",
        "verify": "lockd verify (no --deep)",
    }
    for key, label in labels.items():
        print(f"{label:<31} median {median[key]:6.2f} s  (runs {runs(walls[key])})")
    for key in ("cold", "warm"):
        print(
            f"speed-up over the baseline, {key}: {median['sha'] / median[key]:.2f}x "
            f"(target >= 2x); --deep costs {median[key] - median['verify']:.2f} s over verify"
        )
    print(
        f"CPU seconds (median; lockd's own process, not the probe in the container): "
        f"verify --deep cold {cpu['cold']:.2f}, warm {cpu['warm']:.2f}, verify {cpu['verify']:.2f}"
        f"; sha256sum {cpu['sha']:.2f}"
    )
    peak = {key: max(s[2] for s in samples[key]) / 1024 for key in ("cold", "warm")}
    print(
        f"lockd peak memory (ru_maxrss): cold {peak['cold']:.0f} MB, warm {peak['warm']:.0f} MB "
        "(target <= 200 MB)"
    )


if __name__ == "__main__":
    main()
