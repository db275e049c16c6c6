"""The environment probe's extra cost for recording what the process loaded (issue 10).

The probe, after `import torch`, reads /proc/self/maps and hashes every mapped library of the
CUDA stack and the Python extensions (lockd.judgement.libraries), and reads the CUDA fat binaries of every
installed shared object. Baseline in the same run: the same probe with LOCKD_PROBE_LIBRARIES=0
(no record), runs alternating, so both see the same page cache. Also printed: the time the
record itself reports (maps, ownership, hashing) and the fat binary scan's.

Usage: python bench/probe_libraries.py [--runs N] [--python PATH] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lockd.evidence.targets.base import parse_probe_output  # noqa: E402
from lockd.probe import probe_source  # noqa: E402


def probe(python: str, libraries: bool) -> tuple[float, dict[str, object]]:
    env = dict(os.environ, LOCKD_PROBE_LIBRARIES="1" if libraries else "0")
    start = time.perf_counter()
    result = subprocess.run(
        [python, "-c", probe_source()], capture_output=True, check=False, env=env, cwd="/"
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"the probe failed: {result.stderr.decode(errors='replace')[-2000:]}")
    report = parse_probe_output(result.stdout, python)
    figures: dict[str, object] = {"wall": elapsed}
    if report.libraries is not None:
        figures.update(
            record=report.libraries.seconds,
            libraries=len(report.libraries.libraries),
            bytes=report.libraries.bytes,
            threads=report.libraries.threads,
        )
    if report.extensions is not None:
        figures.update(
            fatbin=report.extensions.seconds,
            files=report.extensions.files,
            binaries=len(report.extensions.binaries),
        )
    return elapsed, figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    probe(args.python, True)  # warm the page cache for both
    without, with_, records = [], [], []
    for _ in range(args.runs):
        without.append(probe(args.python, False)[0])
        elapsed, figures = probe(args.python, True)
        with_.append(elapsed)
        records.append(figures)
    median = statistics.median
    print(f"python {args.python}, {os.cpu_count()} CPUs, {args.runs} runs each (wall, s)")
    print(f"probe without the record (baseline): median {median(without):.2f}  {without}")
    print(f"probe with the record:               median {median(with_):.2f}  {with_}")
    print(f"extra: median {median(with_) - median(without):+.2f} s")
    last = records[-1]
    if "record" in last:
        print(
            f"record (maps, owners, sha256 of {last['libraries']} libraries, "
            f"{int(last['bytes']) / 1e6:.0f} MB, {last['threads']} threads): "
            f"{[r['record'] for r in records]} s"
        )
    if "fatbin" in last:
        print(
            f"fat binaries of {last['files']} shared objects ({last['binaries']} with CUDA "
            f"code): {[r['fatbin'] for r in records]} s"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"without": without, "with": with_, "records": records}, indent=2)
        )


if __name__ == "__main__":
    main()
