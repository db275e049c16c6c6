"""Median wall time of `lockd verify --deep` on the torch-cpu image, cold, first, sibling and warm,
beside coreutils' sha256sum over the same site-packages, and lockd's peak memory.

On a running container of locks/torch-cpu (torch 2.13.0 CPU and numpy: about 1 GB, 22k files),
interleaved, in the same run:

* cold: ``lockd verify <container> --deep --no-cache`` (the full CLI in a subprocess:
  signature, probe, every check, and every file of every RECORD hashed, read on the host from
  the container's layers; no cache of any kind);
* first: ``lockd verify <container> --deep`` as on a container never verified before, of an
  image lockd has seen, nor an identical sibling: the layer cache (lockd.evidence.cache.layers) filled by
  ``lockd record --deep`` of another container of the same image, the probe and integrity
  caches emptied before each run (the probe imports torch in the container, every file is
  located and compared);
* sibling: ``lockd verify <container> --deep`` of a container never verified before, where an
  identical container of the same image was (a CI job's fresh container, a fleet's replica):
  before each run the probe and integrity caches are emptied and the other container
  verified, unmeasured; the measured one takes its report and result (sibling fingerprint);
* warm: ``lockd verify <container> --deep`` of a container verified before and unchanged
  since: the probe's report and the integrity result are taken again (lockd.evidence.cache.probe,
  lockd.evidence.cache.integrity) once the host's evidence shows nothing they rest on changed;
* the baseline: ``find <site-packages> -type f -print0 | xargs -0 -P<cores> sha256sum`` on the
  host, over the container's merged directory;
* for context, ``lockd verify <container>`` without --deep, cold (--no-cache: the probe, which
  imports torch inside the container, runs) and warm;
* in-process: ``lockd.evidence.integrity.check.check_files`` alone (no CLI, no probe; every file hashed, no
  cache), in one Python process on the same container, beside the same baseline.

lockd's peak memory is the largest ru_maxrss of its verify --deep runs (os.wait4).
Target (issue 3): at least 2x faster than the baseline, peak memory <= 200 MB.
With ``--before COMMIT``, that commit's lockd (a git worktree of it, with its own manifest and
caches) runs cold and warm verify, with and without --deep, interleaved with the rest: a
change's figures beside the figures before it (target of the sound-evidence issue: no more
than 10 % slower).
Needs the machine set up by scripts/setup (root, the daemon, the torch-cpu wheels).
Usage: python bench/deep_verify.py [--runs N] [--before COMMIT]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from before import OtherLockd, lockd_at, short

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


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--before", metavar="COMMIT", help="also measure this commit's lockd")
    return parser.parse_args()


def merged_dir(container: str) -> str:
    return subprocess.run(
        ["docker", "inspect", "-f", "{{.GraphDriver.Data.MergedDir}}", container],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def own_caches(tmp: Path, env: dict[str, str], layer_cache: Path) -> dict[str, dict[str, str]]:
    """The environments of "first" and "sibling": cache directories of their own, sharing the
    run's layer cache."""
    envs = {}
    for key in ("first", "sibling"):
        own = tmp / f"{key}-cache"
        own.mkdir(mode=0o700)
        (own / "deep").symlink_to(layer_cache / "deep")
        envs[key] = {**env, "LOCKD_CACHE_DIR": str(own)}
    return envs


def start_containers(*names: str) -> None:
    for container in names:
        subprocess.run(
            ["docker", "run", "-d", "--name", container, IMAGE], check=True, capture_output=True
        )


def main() -> None:
    args = parse_args()
    cores = len(os.sched_getaffinity(0))
    build_image()
    lockd = [sys.executable, "-m", "lockd"]
    cache = tempfile.TemporaryDirectory()
    env = {**os.environ, "LOCKD_PASSWORD": "bench", "LOCKD_CACHE_DIR": cache.name}
    name = f"lockd-bench-deep-{os.getpid()}"
    other = f"{name}-recorded"  # the layer cache is filled from this one
    start_containers(name, other)
    before: OtherLockd | None = None
    stack = contextlib.ExitStack()
    try:
        site = merged_dir(name) + SITE
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
            baseline = [
                "sh",
                "-c",
                f"find '{site}' -type f -print0 | xargs -0 -P{cores} sha256sum > /dev/null",
            ]
            argvs = {
                "cold": [*verify, "--deep", "--no-cache"],
                "first": [*verify, "--deep"],
                "sibling": [*verify, "--deep"],
                "warm": [*verify, "--deep"],
                "sha": baseline,
                "verify-cold": [*verify, "--no-cache"],
                "verify-warm": verify,
            }
            # "sibling"'s own cache is filled by verifying the other container first
            envs = {**dict.fromkeys(argvs, env), **own_caches(Path(tmp), env, Path(cache.name))}
            sibling_first = [*lockd, "verify", other, *verify[5:], "--deep"]
            if args.before:
                before = stack.enter_context(lockd_at(args.before))
                old_argvs, old_env = before_argvs(before, (name, other), prefix, Path(tmp), env)
                argvs.update(old_argvs)
                envs.update(dict.fromkeys(old_argvs, old_env))

            def prepare(key: str) -> None:
                if key in ("first", "sibling"):
                    forget_container(Path(envs[key]["LOCKD_CACHE_DIR"]))
                if key == "sibling":
                    run(sibling_first, envs[key])

            for key, argv in argvs.items():  # the page cache, and the caches of "warm"
                prepare(key)
                run(argv, envs[key])
            load_before = os.getloadavg()
            samples: dict[str, list[tuple[float, float, int]]] = {k: [] for k in argvs}
            for _ in range(args.runs):
                for key, argv in argvs.items():
                    prepare(key)
                    samples[key].append(run(argv, envs[key]))
            inprocess = in_process(name, args.runs, baseline, env)
            load_after = os.getloadavg()
            integrity = recorded_integrity(manifest)
            files, size = tree_size(site)
    finally:
        stack.close()
        for container in (name, other):
            subprocess.run(["docker", "rm", "-f", container], capture_output=True, check=False)
        cache.cleanup()
    report(
        Measured(samples, inprocess, (load_before[0], load_after[0]), integrity, files, size),
        cores,
        args.runs,
        before.commit if before is not None else None,
    )


def before_argvs(
    before: OtherLockd, containers: tuple[str, str], prefix: Path, tmp: Path, env: dict[str, str]
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The runs of ``before``'s lockd (keys ``before-<key of BEFORE_ARGVS>``) on the first
    container, against a manifest that lockd records --deep of the second (its own format, and
    its layer cache filled as this lockd's is), and the environment they run in."""
    name, other = containers
    old_env = before.environ(env)
    manifest = tmp / "before.json"
    record = [*before.argv, "record", other, "--key", f"{prefix}.key", "-o", str(manifest)]
    subprocess.run([*record, "--deep"], env=old_env, check=True, capture_output=True)
    verify = [*before.argv, "verify", name, "--manifest", str(manifest)]
    verify += ["--key", f"{prefix}.pub", "--json"]
    return {f"before-{key}": [*verify, *argv] for key, argv in BEFORE_ARGVS.items()}, old_env


BEFORE_ARGVS = {
    "cold": ["--deep", "--no-cache"],
    "warm": ["--deep"],
    "verify-cold": ["--no-cache"],
    "verify-warm": [],
}
"""What ``--before``'s lockd runs, by the key of this lockd's run it is compared with."""


def report_before(samples: dict[str, list[tuple[float, float, int]]], commit: str) -> None:
    """This checkout's figures beside ``commit``'s, each a median over the same interleaved
    runs on the same container."""
    print(f"beside the lockd of {short(commit)} (its own manifest and caches, same runs):")
    for key in BEFORE_ARGVS:
        now = statistics.median(s[0] for s in samples[key])
        then = statistics.median(s[0] for s in samples[f"before-{key}"])
        print(
            f"  {key:<12} now {now:6.2f} s, at {short(commit)} {then:6.2f} s: "
            f"{now / then:.2f}x (target <= 1.10x)"
        )


@dataclass
class Measured:
    samples: dict[str, list[tuple[float, float, int]]]  # (wall s, CPU s, peak KiB) per run
    inprocess: tuple[list[float], list[float]]  # check_files' and the baseline's wall times
    load: tuple[float, float]  # load average before and after
    integrity: dict[str, int]  # what the manifest says --deep hashed
    files: int  # what the baseline hashes
    size: int


def report(m: Measured, cores: int, runs_count: int, before: str | None) -> None:
    walls = {k: [s[0] for s in v] for k, v in m.samples.items()}
    cpu = {k: statistics.median(s[1] for s in v) for k, v in m.samples.items()}
    median = {k: statistics.median(v) for k, v in walls.items()}
    print(
        f"machine: {cores} cores ({platform.processor() or platform.machine()}), {runs_count} runs"
    )
    print(f"load average before/after: {m.load[0]:.2f} / {m.load[1]:.2f}")
    print(
        f"lockd hashes {m.integrity['files']} files ({m.integrity['bytes'] / 1e6:.0f} MB) of "
        f"{m.integrity['distributions']} RECORDs; the baseline {m.files or '?'} files "
        f"({m.size / 1e6:.0f} MB) under {SITE}"
    )

    def runs(values: list[float]) -> str:
        return " ".join(f"{v:.2f}" for v in sorted(values))

    labels = {
        "cold": "verify --deep --no-cache (cold)",
        "first": "verify --deep (first)",
        "sibling": "verify --deep (sibling)",
        "warm": "verify --deep (warm)",
        "sha": f"find | xargs -P{cores} sha256sum",
        "verify-cold": "verify --no-cache (no --deep)",
        "verify-warm": "verify (no --deep, warm)",
    }
    for key, label in labels.items():
        print(f"{label:<33} median {median[key]:6.2f} s  (runs {runs(walls[key])})")
    for key in ("cold", "first", "sibling", "warm"):
        over = "verify-warm" if key in ("warm", "sibling") else "verify-cold"
        print(
            f"speed-up over the baseline, {key}: {median['sha'] / median[key]:.2f}x "
            f"(target >= 2x); --deep costs {median[key] - median[over]:.2f} s over {over}"
        )
    hashing, base = m.inprocess
    print(
        f"in-process check_files (no cache), median {statistics.median(hashing):.2f} s "
        f"(runs {runs(hashing)}) vs the baseline in the same minutes "
        f"{statistics.median(base):.2f} s (runs {runs(base)}): "
        f"{statistics.median(base) / statistics.median(hashing):.2f}x"
    )
    print(
        "CPU seconds (median; lockd's own process, not the probe in the container): "
        + ", ".join(f"{key} {cpu[key]:.2f}" for key in labels)
    )
    deep = ("cold", "first", "sibling", "warm")
    peak = {key: max(s[2] for s in m.samples[key]) / 1024 for key in deep}
    print(
        "lockd peak memory (ru_maxrss): "
        + ", ".join(f"{key} {mb:.0f} MB" for key, mb in peak.items())
        + " (target <= 200 MB)"
    )
    if before is not None:
        report_before(m.samples, before)


def forget_container(cache: Path) -> None:
    """Empty the probe and integrity caches of ``cache``: the next verification is the
    container's first (its layer cache, a link to the run's, stays)."""
    for kind in ("probe", "integrity"):
        shutil.rmtree(cache / kind, ignore_errors=True)


IN_PROCESS = """
import json, statistics, sys, time
from lockd.evidence.integrity.check import check_files
from lockd.evidence.integrity.deep import open_source
from lockd.evidence.targets.docker import open_docker_target

target = open_docker_target(sys.argv[1])
distributions = target.observe().probe.distributions
times = []
for _ in range(int(sys.argv[2])):
    source = open_source(target, cache=False)
    start = time.perf_counter()
    found = check_files(source, distributions, progress=False)
    times.append(time.perf_counter() - start)
    source.close()
    assert not found.findings, found.findings[:3]
print(json.dumps(times))
"""


def in_process(
    container: str, runs: int, baseline: list[str], env: dict[str, str]
) -> tuple[list[float], list[float]]:
    """check_files' wall times in one process (after one unmeasured run), and the baseline's
    right after each."""
    hashing: list[float] = []
    base: list[float] = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", IN_PROCESS, container, "2"],
            env={**env, "PYTHONPATH": str(ROOT)},
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        hashing.append(json.loads(out)[-1])
        base.append(run(baseline, env)[0])
    return hashing, base


if __name__ == "__main__":
    main()
