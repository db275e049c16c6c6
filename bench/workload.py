"""The workload walk (lockd.evidence.workload, #17): what reading a container's running processes
from the host costs, for 20 processes of about 400 mappings each (torch imported, where this
interpreter has it, and stdlib extension modules; one process imports, the others are its forks,
as a job's data-loader workers are).

Figures, medians of each, measured in one run on the same processes, interleaved run by run:

* baseline: reading /proc/PID/maps of every process, and reading and parsing it;
* cold: ``read_workload`` with no hash cache (every distinct mapped file hashed once through
  /proc/PID/map_files; the page cache is warm after the first run);
* warm: ``read_workload`` with a ``HashCache`` kept from an earlier walk (each file's guard
  stat'ed again through map_files, nothing read).

Target (#17): warm <= 100 ms. Needs root (map_files).

With ``--container IMAGE`` (an image with torch, e.g. lockd-test/torch-cpu), the same job runs
in a container of IMAGE, and the figures are those of ``verify``'s observation of it (the
container target, probe report from the probe cache, as a repeated ``lockd verify`` has it),
interleaved run by run: with the workload read (what ``verify`` does) and without it (the
container target's workload read left out), and the workload read alone
(``read_container_workload``, a hash cache kept from an earlier read).

Usage: python bench/workload.py [--processes 20] [--runs 15] [--cold-runs 5] [--no-torch]
       [--container IMAGE] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lockd.evidence.procfiles import parse_maps  # noqa: E402
from lockd.evidence.workload import HashCache, process_tree, read_workload  # noqa: E402

STDLIB = (
    "array", "asyncio", "bz2", "cmath", "csv", "ctypes", "curses", "datetime", "decimal",
    "hashlib", "json", "lzma", "mmap", "multiprocessing", "pickle", "queue", "random",
    "readline", "select", "socket", "sqlite3", "ssl", "statistics", "struct", "unicodedata",
    "uuid", "zlib", "zoneinfo", "xml.etree.ElementTree", "_blake2", "_bisect", "_contextvars",
    "_heapq", "_posixshmem", "_sha1", "_sha256", "_sha512", "_md5", "_sha3", "fcntl", "grp",
    "resource", "termios", "binascii", "audioop", "_opcode", "_multibytecodec", "_codecs_cn",
    "_codecs_jp", "_codecs_kr", "_codecs_hk", "_codecs_tw", "_codecs_iso2022", "_lsprof",
    "_statistics", "_uuid", "_zoneinfo", "_ctypes_test", "_testbuffer", "_xxtestfuzz",
)  # fmt: skip

JOB = """
import importlib, os, sys, time, warnings
warnings.filterwarnings("ignore")
if sys.argv[1] == "torch":
    try:
        import torch
    except ImportError:
        pass
for name in sys.argv[3:]:
    try:
        importlib.import_module(name)
    except ImportError:
        pass
children = []
for _ in range(int(sys.argv[2]) - 1):
    pid = os.fork()
    if pid == 0:
        time.sleep(3600)
        os._exit(0)
    children.append(pid)
print("ready", flush=True)
time.sleep(3600)
"""


def timed_ms(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return (time.perf_counter() - started) * 1000


def measure(pids: list[int], init_pid: int, runs: int, cold_runs: int) -> dict[str, float]:
    """Medians (ms) of the baselines and the walks, interleaved run by run."""

    def maps_only() -> None:
        for pid in pids:
            with open(f"/proc/{pid}/maps", "rb") as handle:
                handle.read()

    def maps_parsed() -> None:
        for pid in pids:
            with open(f"/proc/{pid}/maps", "rb") as handle:
                parse_maps(handle.read())

    kept = HashCache()
    read_workload(pids, init_pid=init_pid, hashes=kept)
    series: dict[str, list[float]] = {
        "baseline_maps_ms": [],
        "baseline_maps_parsed_ms": [],
        "cold_ms": [],
        "warm_ms": [],
    }
    for run in range(runs):
        series["baseline_maps_ms"].append(timed_ms(maps_only))
        series["baseline_maps_parsed_ms"].append(timed_ms(maps_parsed))
        series["warm_ms"].append(
            timed_ms(lambda: read_workload(pids, init_pid=init_pid, hashes=kept))
        )
        if run < cold_runs:
            series["cold_ms"].append(timed_ms(lambda: read_workload(pids, init_pid=init_pid)))
    figures = {name: statistics.median(values) for name, values in series.items()}
    figures["warm_min_ms"] = min(series["warm_ms"])
    return figures


def container_figures(image: str, processes: int, runs: int) -> dict[str, float | int | bool]:
    """verify's observation of a container running the job, with and without the workload
    read, and the read alone (medians, ms)."""
    import tempfile
    from unittest import mock

    from lockd.evidence.cache.hashes import HashCache as Kept
    from lockd.evidence.targets.base import ProbeOptions
    from lockd.evidence.targets.container import ContainerTarget
    from lockd.evidence.targets.docker import open_docker_target
    from lockd.evidence.workload import read_container_workload

    name = f"lockd-bench-workload-{os.getpid()}"
    argv = ["python", "-c", JOB, "torch", str(processes), *STDLIB]
    subprocess.run(
        ["docker", "run", "-d", "--name", name, "--label", "lockd.bench=1", image, *argv],
        check=True,
        capture_output=True,
    )
    try:
        deadline = time.monotonic() + 300
        while (
            "ready"
            not in subprocess.run(
                ["docker", "logs", name], capture_output=True, text=True, check=False
            ).stdout
        ):
            if time.monotonic() > deadline:
                sys.exit(f"the job in {name} did not start")
            time.sleep(0.2)
        os.environ["LOCKD_CACHE_DIR"] = tempfile.mkdtemp(prefix="lockd-bench-")
        target = open_docker_target(f"container:{name}")
        options = ProbeOptions(reuse=True)
        first = target.observe(options)  # the probe's report, kept for the runs after it
        assert first.workload is not None and first.workload.not_examined is None
        attrs = target.running().inspect()  # type: ignore[union-attr]
        kept = Kept()
        read_container_workload(attrs, name, hashes=kept)
        series: dict[str, list[float]] = {"with_ms": [], "without_ms": [], "read_ms": []}
        for _ in range(runs):
            series["with_ms"].append(timed_ms(lambda: target.observe(options)))
            with mock.patch.object(ContainerTarget, "_workload", lambda *a: None):
                series["without_ms"].append(timed_ms(lambda: target.observe(options)))
            series["read_ms"].append(
                timed_ms(lambda: read_container_workload(attrs, name, hashes=kept))
            )
        mappings = [p.mappings for p in first.workload.processes]
        figures: dict[str, float | int | bool] = {
            "processes": len(first.workload.processes),
            "mappings_median": statistics.median(mappings),
            "files": len(first.workload.files),
            "probe_reused": target.observe(options).probe_reused_from is not None,
        }
        figures.update({k: statistics.median(v) for k, v in series.items()})
        return figures
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)


def report_container(image: str, figures: dict[str, float | int | bool]) -> None:
    print(
        f"container of {image}: {figures['processes']} processes, median "
        f"{figures['mappings_median']:.0f} mappings each, {figures['files']} distinct files; "
        f"probe report from the probe cache: {figures['probe_reused']}"
    )
    print(f"{'verify, observing the container':<46} {'median ms':>10}")
    print(f"{'without the workload (baseline)':<46} {figures['without_ms']:>10.1f}")
    print(f"{'with the workload read (what verify does)':<46} {figures['with_ms']:>10.1f}")
    print(f"{'the workload read alone (hash cache kept)':<46} {figures['read_ms']:>10.1f}")
    verdict = "meets" if figures["read_ms"] <= 100 else "MISSES"
    print(f"target warm <= 100 ms: {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=20)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--cold-runs", type=int, default=5)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--container", metavar="IMAGE")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("the workload walk reads /proc/PID/map_files: run it as root")
    if args.container:
        found = container_figures(args.container, args.processes, args.runs)
        report_container(args.container, found)
        if args.json is not None:
            args.json.write_text(json.dumps(found, indent=2, sort_keys=True) + "\n")
        return
    job = subprocess.Popen(
        [
            sys.executable,
            "-c",
            JOB,
            "none" if args.no_torch else "torch",
            str(args.processes),
            *STDLIB,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    pids: list[int] = []
    try:
        assert job.stdout is not None
        if job.stdout.readline().strip() != "ready":
            sys.exit("the job did not start")
        pids = process_tree(job.pid)
        first = read_workload(pids, init_pid=job.pid)
        mappings = [p.mappings for p in first.processes]

        kept = HashCache()
        read_workload(pids, init_pid=job.pid, hashes=kept)
        warm_check = read_workload(pids, init_pid=job.pid, hashes=kept)
        figures: dict[str, float | int | bool] = {
            "processes": len(first.processes),
            "mappings_median": statistics.median(mappings),
            "mappings_total": sum(mappings),
            "files": len(first.files),
            "bytes": first.bytes,
            "torch": any("libtorch" in f.path for f in first.files),
            "warm_reused": warm_check.reused,
            "warm_hashed": warm_check.hashed,
        }
        figures.update(measure(pids, job.pid, args.runs, args.cold_runs))
    finally:
        for pid in pids[1:]:  # the job's forks, then the job
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        job.kill()
        job.wait()
    report(figures)
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")


def report(figures: dict[str, float | int | bool]) -> None:
    print(
        f"{figures['processes']} processes ({'torch imported' if figures['torch'] else 'no torch'}), "
        f"median {figures['mappings_median']:.0f} mappings each ({figures['mappings_total']} in "
        f"all), {figures['files']} distinct files, {figures['bytes'] / 1e6:.0f} MB hashed cold"
    )
    print(f"{'walk':<42} {'median ms':>10}")
    print(f"{'baseline: read every /proc/PID/maps':<42} {figures['baseline_maps_ms']:>10.1f}")
    print(
        f"{'baseline: read and parse every maps':<42} {figures['baseline_maps_parsed_ms']:>10.1f}"
    )
    print(f"{'cold: read_workload, no hash cache':<42} {figures['cold_ms']:>10.1f}")
    print(
        f"{'warm: read_workload, hash cache kept':<42} {figures['warm_ms']:>10.1f}  "
        f"(min {figures['warm_min_ms']:.1f})"
    )
    verdict = "meets" if figures["warm_ms"] <= 100 else "MISSES"
    print(f"target warm <= 100 ms: {verdict} (warm walk reused {figures['warm_reused']} digests)")


if __name__ == "__main__":
    main()
