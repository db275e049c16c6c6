"""The audit log as a Merkle tree (#18 item 4): appends per second with the tree kept, beside the
chained append alone of the commit before it (``--before``, default 39d54b7: main's last commit
without the tree), measured in the same run on the same database server; then, at ``--size``
entries (10^5 by default), the latency of a signed checkpoint, an inclusion proof and a
consistency proof, and the whole log's re-check, on SQLite and PostgreSQL.

Each side runs in a child process (``--child``) whose ``lockd`` is that side's code: the
baseline's from a temporary git worktree (bench/before.py), this checkout's otherwise. Each child
fills a fresh database to ``--size`` entries in transactions of 1000 (batched appends/s), then
times ``--appends`` transactions of one entry each at that size (appends/s, p50/p99). The
baseline's database is then migrated by this checkout (``--migrate``: the chain of ``--size``
entries turned into the tree, timed).

Usage: .venv/bin/python bench/tlog.py [--size 100000] [--appends 2000] [--probes 300]
       [--before COMMIT] [--backends sqlite,postgresql]   (PostgreSQL: scripts/postgres's server,
       a database lockd_bench_tlog made afresh for each child)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def _postgres_url() -> str:
    from sqlalchemy import create_engine

    base = (
        subprocess.run(
            [str(ROOT / "scripts" / "postgres")], capture_output=True, text=True, check=True
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    engine = create_engine(base.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("DROP DATABASE IF EXISTS lockd_bench_tlog")
        conn.exec_driver_sql("CREATE DATABASE lockd_bench_tlog")
    engine.dispose()
    return base.rsplit("/", 1)[0] + "/lockd_bench_tlog"


def _ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {statistics.median(ordered) * 1e3:.3f} ms, p99 {p99 * 1e3:.3f} ms"


def child(url: str, size: int, appends: int, probes: int) -> dict[str, Any]:
    """Run by each side's lockd: fill, append, and (with the tree) probe. Prints JSON."""
    from lockd.store.migrate import upgrade
    from lockd.store.repository import Store

    store = Store.open(url)
    upgrade(store.engine)
    result: dict[str, Any] = {}
    start = time.perf_counter()
    for first in range(0, size, 1000):
        store.add_audits(
            [("bench", "bench.fill", f"s{i}", None) for i in range(first, min(size, first + 1000))]
        )
    result["batched_per_s"] = size / (time.perf_counter() - start)
    times = []
    for i in range(appends):
        t0 = time.perf_counter()
        store.add_audits([("bench", "bench.append", f"a{i}", None)])
        times.append(time.perf_counter() - t0)
    result["append_per_s"] = appends / sum(times)
    result["append"] = _ms(times)
    t0 = time.perf_counter()
    check = store.verify_audit()
    result["verify_s"] = time.perf_counter() - t0
    result["verify_ok"] = check.ok
    if hasattr(store, "tree_head"):
        result.update(_probe(store, probes))
    store.close()
    return result


def migrate(url: str) -> dict[str, Any]:
    """Run by this checkout's lockd on the baseline's filled database: the migration that
    turns its chain into the tree, timed, then the whole log re-checked."""
    from lockd.store.migrate import upgrade
    from lockd.store.repository import Store

    store = Store.open(url)
    start = time.perf_counter()
    upgrade(store.engine)
    took = time.perf_counter() - start
    check = store.verify_audit()
    size, _ = store.tree_head()
    store.close()
    return {"migrate_s": took, "size": size, "verify_ok": check.ok}


def _probe(store: Any, probes: int) -> dict[str, Any]:
    from lockd.trust import merkle
    from lockd.trust.auditlog import entry_leaf_hash
    from lockd.trust.checkpoint import Checkpoint, LogSigner

    signer = LogSigner.generate("bench/audit")
    rng = random.Random(7)
    checkpoint, inclusion, consistency, verify = [], [], [], []
    size, root = store.tree_head()
    for _ in range(probes):
        t0 = time.perf_counter()
        n, r = store.tree_head()
        Checkpoint("bench/audit", n, r).sign(signer)
        checkpoint.append(time.perf_counter() - t0)
        index = rng.randrange(size)
        t0 = time.perf_counter()
        proof = store.inclusion_proof(index, size)
        inclusion.append(time.perf_counter() - t0)
        [entry] = store.audit_entries(after=index, limit=1)
        t0 = time.perf_counter()
        merkle.verify_inclusion(index, size, entry_leaf_hash(entry.as_dict()), proof, root)
        verify.append(time.perf_counter() - t0)
        first = rng.randrange(1, size)
        t0 = time.perf_counter()
        store.consistency_proof(first, size)
        consistency.append(time.perf_counter() - t0)
    return {
        "size": size,
        "checkpoint": _ms(checkpoint),
        "inclusion": _ms(inclusion),
        "consistency": _ms(consistency),
        "verify_inclusion": _ms(verify),
    }


def _run_side(
    argv_env: tuple[list[str], dict[str, str]],
    url: str,
    args: argparse.Namespace,
    task: list[str] | None = None,
) -> Any:
    argv, env = argv_env
    command = [*argv, str(Path(__file__).resolve()), *(task or ["--child", url])]
    command += ["--size", str(args.size), "--appends", str(args.appends)]
    command += ["--probes", str(args.probes)]
    done = subprocess.run(
        command, check=False, env={**os.environ, **env}, capture_output=True, text=True
    )
    if done.returncode != 0:
        sys.exit(f"the child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", metavar="URL")
    parser.add_argument("--migrate", metavar="URL")
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--appends", type=int, default=2000)
    parser.add_argument("--probes", type=int, default=300)
    parser.add_argument("--before", default="39d54b7")
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.size, args.appends, args.probes)))
        return
    if args.migrate:
        print(json.dumps(migrate(args.migrate)))
        return
    from before import lockd_at, short

    here = ([sys.executable, "-P"], {"PYTHONPATH": str(ROOT)})
    print(
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; {args.size} entries, "
        f"{args.appends} single-entry appends, {args.probes} probes"
    )
    with lockd_at(args.before) as old, tempfile.TemporaryDirectory() as tmp:
        before = ([sys.executable, "-P"], {"PYTHONPATH": old.env["PYTHONPATH"]})
        for backend in args.backends.split(","):
            for name, side in ((f"before ({short(old.commit)})", before), ("tree (this)", here)):
                if backend == "sqlite":
                    url = f"sqlite:///{tmp}/{name.split()[0]}.db"
                else:
                    url = _postgres_url()
                got = _run_side(side, url, args)
                print(
                    f"{backend:10} {name:20} fill {got['batched_per_s']:8.0f} entries/s | "
                    f"append at {args.size}: {got['append_per_s']:6.0f}/s ({got['append']}) | "
                    f"verify whole log {got['verify_s']:.2f} s (ok={got['verify_ok']})"
                )
                if name.startswith("before"):  # its database, migrated by this checkout
                    moved = _run_side(here, url, args, ["--migrate", url])
                    print(
                        f"{'':31} migrated to the tree by this checkout: "
                        f"{moved['migrate_s']:.2f} s for {moved['size']} entries "
                        f"(re-check ok={moved['verify_ok']})"
                    )
                if "checkpoint" in got:
                    print(
                        f"{'':31} signed checkpoint {got['checkpoint']} | inclusion proof "
                        f"{got['inclusion']} | consistency proof {got['consistency']} | "
                        f"verify an inclusion proof {got['verify_inclusion']}"
                    )


if __name__ == "__main__":
    main()
