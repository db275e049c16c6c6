"""Throughput and latency of `POST /v1/verifications` (server-side compare against a known
manifest) on loopback, at fixed concurrency, for SQLite and PostgreSQL in the same run, beside a
baseline measured in the same run: `GET /healthz` (the HTTP stack alone) on the same server.

Target (issue 5), on a 2-core machine: >= 500 verifications/s with p99 <= 50 ms on SQLite.
The load generator is a minimal HTTP/1.1 keep-alive client on asyncio with uvloop (pre-built
requests), so it costs little of the CPU the server shares with it; its own CPU time per request
is printed beside the server's (the server's summed over its worker processes).

Usage: python bench/service_load.py [--seconds 10] [--concurrency 8] [--distributions 150]
       [--workers 1] [--backends sqlite,postgresql]   (PostgreSQL: $LOCKD_BENCH_POSTGRES_URL,
       an empty database, else scripts/postgres's server with a database lockd_bench made for
       the run)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # child_processes, for service_helpers
sys.path.insert(0, str(ROOT / "tests" / "service"))

from service_helpers import Server, envelope, image, observation  # noqa: E402

from lockd.store.engine import make_engine  # noqa: E402
from lockd.store.migrate import upgrade  # noqa: E402
from lockd.store.repository import Store  # noqa: E402
from lockd.trust import keys  # noqa: E402


def postgres_url() -> str:
    url = os.environ.get("LOCKD_BENCH_POSTGRES_URL")
    if url:
        return url
    base = (
        subprocess.run(
            [str(ROOT / "scripts" / "postgres")], capture_output=True, text=True, check=True
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    engine = make_engine(base)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("DROP DATABASE IF EXISTS lockd_bench")
        conn.exec_driver_sql("CREATE DATABASE lockd_bench")
    engine.dispose()
    return base.rsplit("/", 1)[0] + "/lockd_bench"


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One HTTP/1.1 answer on a keep-alive connection: its status line and its body."""
    status_line = await reader.readline()
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status_line, await reader.readexactly(length)


async def _worker(
    port: int, request: bytes, stop_at: float, record_from: float, latencies: list[float]
) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    errors = 0
    try:
        while True:
            start = time.perf_counter()
            if start >= stop_at:
                return errors
            writer.write(request)
            status_line, answer = await read_response(reader)
            end = time.perf_counter()
            if not status_line.startswith(b"HTTP/1.1 200"):
                if not errors:
                    print(f"  first error: {status_line.decode().strip()} {answer[:300]!r}")
                errors += 1
            elif start >= record_from:
                latencies.append(end - start)
    finally:
        writer.close()


def load(
    port: int, request: bytes, *, seconds: float, concurrency: int, warmup: float
) -> dict[str, float]:
    latencies: list[float] = []

    async def run() -> int:
        now = time.perf_counter()
        record_from, stop_at = now + warmup, now + warmup + seconds
        results = await asyncio.gather(
            *(_worker(port, request, stop_at, record_from, latencies) for _ in range(concurrency))
        )
        return sum(results)

    try:  # the client on uvloop too: it shares the machine's CPUs with the server
        import uvloop

        errors = uvloop.run(run())
    except ImportError:
        errors = asyncio.run(run())
    latencies.sort()
    if not latencies:
        return {"rps": 0.0, "p50_ms": float("nan"), "p99_ms": float("nan"), "errors": errors}
    return {
        "rps": len(latencies) / seconds,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "errors": float(errors),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and its live descendants (uvicorn's worker
    processes), from Linux /proc."""
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stats[int(entry.name)] = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # it exited meanwhile
                continue
    tree, total = [pid], 0
    while tree:
        current = tree.pop()
        fields = stats.get(current)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])
        tree += [child for child, f in stats.items() if int(f[1]) == current]
    return total / os.sysconf("SC_CLK_TCK")


def measured(
    server: Server, request: bytes, *, seconds: float, concurrency: int
) -> dict[str, float]:
    """load() plus the CPU time per answered request of the server (its workers included) and
    of this load generator: less sensitive than wall time to other work on the machine, it says
    what one request costs each side."""
    before, generator = cpu_seconds(server.process.pid), time.process_time()
    result = load(server.port, request, seconds=seconds, concurrency=concurrency, warmup=1.0)
    generator = time.process_time() - generator
    spent = cpu_seconds(server.process.pid) - before
    answered = result["rps"] * (seconds + 1.0)  # the warm-up's requests cost CPU too
    result["cpu_ms"] = 1000 * spent / answered if answered else float("nan")
    result["generator_ms"] = 1000 * generator / answered if answered else float("nan")
    return result


def http_request(method: str, path: str, token: str, body: bytes = b"") -> bytes:
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def bench_backend(name: str, url: str, args: argparse.Namespace, folder: Path) -> None:
    key = keys.generate_private_key()
    public = folder / "trusted.pub"
    public.write_bytes(keys.public_pem(key))
    store = Store.open(url)
    upgrade(store.engine)
    token = store.create_token(f"bench-{time.time_ns()}", "recorder", actor="bench")
    store.close()
    recorded = observation(image(1), distributions=args.distributions)
    env = {"LOCKD_DATABASE_URL": url, "LOCKD_TRUSTED_KEYS": str(public)}
    with (folder / f"{name}.log").open("wb") as log:
        server = Server(env, log=log, workers=args.workers).start()
        try:
            import urllib.request

            request = urllib.request.Request(
                server.url + "/v1/manifests",
                data=envelope(key, recorded).to_json(),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request) as answer:
                assert answer.status in (200, 201)
            body = json.dumps(
                {
                    "observation": json.loads(recorded.model_dump_json(exclude_none=True)),
                    "policy": "default",
                }
            ).encode()
            check = urllib.request.Request(
                server.url + "/v1/verifications",
                data=body,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
            with urllib.request.urlopen(check) as answer:
                if json.loads(answer.read())["verified"] is not True:
                    # e.g. a reused database whose stored envelope another run's key signed
                    raise SystemExit(
                        f"{name}: the observation does not verify; give an empty database"
                    )
            verify = http_request("POST", "/v1/verifications", token, body)
            health = http_request("GET", "/healthz", token)
            loads = [os.getloadavg()[0]]
            base = measured(server, health, seconds=args.seconds, concurrency=args.concurrency)
            loads.append(os.getloadavg()[0])
            result = measured(server, verify, seconds=args.seconds, concurrency=args.concurrency)
            loads.append(os.getloadavg()[0])
        finally:
            server.stop()
    print(
        f"{name:<10} POST /v1/verifications: {result['rps']:6.0f} /s  p50 {result['p50_ms']:6.2f} ms"
        f"  p99 {result['p99_ms']:6.2f} ms  server CPU {result['cpu_ms']:.2f} ms/req  "
        f"load generator CPU {result['generator_ms']:.2f} ms/req  errors {result['errors']:.0f}\n"
        f"{'':<10} baseline GET /healthz:  {base['rps']:6.0f} /s  p50 {base['p50_ms']:6.2f} ms"
        f"  p99 {base['p99_ms']:6.2f} ms  server CPU {base['cpu_ms']:.2f} ms/req  "
        f"load generator CPU {base['generator_ms']:.2f} ms/req\n"
        f"{'':<10} load average (1 min) {' -> '.join(f'{x:.2f}' for x in loads)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--distributions", type=int, default=150)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--workers", type=int, default=1, help="lockd serve --workers")
    args = parser.parse_args()
    print(
        f"lockd service load: {args.concurrency} concurrent keep-alive clients, {args.seconds:.0f} s "
        f"per figure, an observation of {args.distributions} distributions, {os.cpu_count()} CPUs, "
        f"lockd serve --workers {args.workers}"
    )
    print(f"load average before: {os.getloadavg()[0]:.2f} (other work on this machine)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in args.backends.split(","):
            url = f"sqlite:///{folder / 'bench.db'}" if name == "sqlite" else postgres_url()
            bench_backend(name, url, args, folder)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
