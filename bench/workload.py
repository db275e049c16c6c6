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

Usage: python bench/workload.py [--processes 20] [--runs 15] [--cold-runs 5] [--no-torch]
       [--json FILE]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=20)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--cold-runs", type=int, default=5)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("the workload walk reads /proc/PID/map_files: run it as root")
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
