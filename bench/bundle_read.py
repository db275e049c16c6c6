"""`lockd audit verify BUNDLE` on a hostile bundle and on normal ones, this checkout's bounded
reader beside the tarfile reader of an earlier commit, in the same run (#18).

Bundles, built here:

- hostile: 1 MB of gzip declaring a 1 GiB PAX extended header (zeros, all present): tarfile
  reads the whole header before looking at it;
- normal: the tests' sample bundle (10 files);
- large: the sample plus 2 000 files of 10 KiB each, listed in its index (20 MB, 2 010 headers).

Each is verified by ``python -m lockd audit verify`` in a child process, ``--runs`` times
(``--hostile-runs`` for the old reader on the hostile bundle: 15 s and 1.1 GB each), and the
bench prints the median wall time and the largest peak RSS of each, beside the baseline; then
the median time of ``read_bundle()`` alone, in a child that imports that lockd (no interpreter
start, no checks).
The baseline (``--before``, default 7a88a05: main's last commit with the tarfile reader) runs
from a temporary git worktree (bench/before.py).

    .venv/bin/python bench/bundle_read.py [--runs 5] [--hostile-runs 3] [--before COMMIT]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # bundles: the sample bundle and the hostile one
sys.path.insert(0, str(ROOT / "bench"))

from before import lockd_at, short  # noqa: E402
from bundles import huge_extended_header, sample_files  # noqa: E402

from lockd.bundle import index_of, pack  # noqa: E402

TARFILE_READER = "7a88a05"


# Started from a small launcher: a child forked from this process (bundles built, modules
# loaded) would report this process's RSS as its own peak.
LAUNCHER = """
import os, subprocess, sys, time
start = time.perf_counter()
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
_, status, usage = os.wait4(child.pid, 0)
print(time.perf_counter() - start, usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


def run_once(argv: list[str], env: dict[str, str], bundle: Path) -> tuple[float, int, int]:
    """Wall seconds, peak RSS (KiB) and exit status of one ``audit verify``."""
    out = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *argv, "audit", "verify", str(bundle)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return float(out[0]), int(out[1]), int(out[2])


# read_bundle alone (no interpreter start, no checks), in a child that imports one lockd
READER = """
import statistics, sys, time
from pathlib import Path
from lockd.bundle import read_bundle
from lockd.errors import InputError
times = []
for _ in range(int(sys.argv[2])):
    start = time.perf_counter()
    try:
        read_bundle(Path(sys.argv[1]))
    except InputError:
        pass  # the hostile bundle, refused
    times.append(time.perf_counter() - start)
print(statistics.median(times))
"""


def read_only(python: list[str], env: dict[str, str], bundle: Path, runs: int) -> str:
    out = subprocess.run(
        [*python, "-c", READER, str(bundle), str(runs)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return f"{float(out) * 1000:9.1f} ms"


def measure(argv: list[str], env: dict[str, str], bundle: Path, runs: int) -> str:
    results = [run_once(argv, env, bundle) for _ in range(runs)]
    codes = sorted({code for _, _, code in results})
    median = statistics.median(t for t, _, _ in results)
    peak = max(rss for _, rss, _ in results) / 1024
    return f"{median * 1000:9.0f} ms  {peak:7.0f} MiB  exit {','.join(map(str, codes))}"


def large_files() -> dict[str, bytes]:
    files = sample_files()
    del files["index.json"]
    for i in range(2000):
        files[f"extra/{i:04}.json"] = (b'{"n": %d}' % i).ljust(10 * 1024, b" ")
    files["index.json"] = index_of(files)
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--hostile-runs", type=int, default=3)
    parser.add_argument("--before", default=TARFILE_READER, help="the baseline's commit")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="lockd-bundle-bench-") as tmp,
        lockd_at(args.before) as before,
    ):
        bundles = {
            "hostile (1 GiB PAX header)": Path(tmp) / "hostile.tar.gz",
            "normal (10 files)": Path(tmp) / "normal.tar.gz",
            "large (2 010 files, 20 MB)": Path(tmp) / "large.tar.gz",
        }
        paths = list(bundles.values())
        paths[0].write_bytes(huge_extended_header(b"x", 1 << 30))
        paths[1].write_bytes(pack(sample_files()))
        paths[2].write_bytes(pack(large_files()))
        here = [sys.executable, "-P", "-m", "lockd"]
        here_env = {**os.environ, "PYTHONPATH": str(ROOT)}
        base_env = before.environ(dict(os.environ))
        print(f"lockd audit verify, median of {args.runs} (hostile, before: {args.hostile_runs})")
        old = f"before {short(before.commit)}"
        python = [sys.executable, "-P"]
        print(
            f"{'bundle':<28} {'size':>9}  {'reader':<18} {'wall':>12}  {'peak RSS':>11}  "
            f"{'exit':<6}  {'read_bundle alone':>17}"
        )
        for label, path in bundles.items():
            size = f"{path.stat().st_size / 1e6:.2f} MB"
            old_runs = args.hostile_runs if path == paths[0] else args.runs
            rows = [
                ("this checkout", here_env, args.runs, measure(here, here_env, path, args.runs)),
                (old, base_env, old_runs, measure(before.argv, base_env, path, old_runs)),
            ]
            for reader, env, runs, figures in rows:
                alone = read_only(python, env, path, runs)
                print(f"{label:<28} {size:>9}  {reader:<18} {figures}  {alone}")


if __name__ == "__main__":
    main()
