"""Throughput and latency of `POST /v1/verifications` (server-side compare against a known
manifest) on loopback, at fixed concurrency, for SQLite and PostgreSQL in the same run, beside a
baseline measured in the same run: `GET /healthz` (the HTTP stack alone) on the same server.

Target (issue 5), on a 2-core machine: >= 500 verifications/s with p99 <= 50 ms on SQLite.
The load generator is a minimal HTTP/1.1 keep-alive client on asyncio (pre-built requests), so
it costs little of the CPU the server shares with it.

Usage: python bench/service_load.py [--seconds 10] [--concurrency 8] [--distributions 150]
       [--backends sqlite,postgresql]   (PostgreSQL: $LOCKD_BENCH_POSTGRES_URL, else
       scripts/postgres's server with a database lockd_bench made for the run)
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
sys.path.insert(0, str(ROOT / "tests" / "service"))

from service_helpers import Server, envelope, image, observation  # noqa: E402

from lockd import keys  # noqa: E402
from lockd.store.engine import make_engine  # noqa: E402
from lockd.store.migrate import upgrade  # noqa: E402
from lockd.store.repository import Store  # noqa: E402


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
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            answer = await reader.readexactly(length)
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
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(
    server: Server, request: bytes, *, seconds: float, concurrency: int
) -> dict[str, float]:
    """load() plus the server's CPU time per answered request (less sensitive than wall time
    to other work on the machine: it says what one request costs the server)."""
    before = cpu_seconds(server.process.pid)
    result = load(server.port, request, seconds=seconds, concurrency=concurrency, warmup=1.0)
    spent = cpu_seconds(server.process.pid) - before
    answered = result["rps"] * (seconds + 1.0)  # the warm-up's requests cost CPU too
    # With several workers the CPU is spent in children: not measured then.
    ok = answered and server.workers == 1
    result["cpu_ms"] = 1000 * spent / answered if ok else float("nan")
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
            verify = http_request("POST", "/v1/verifications", token, body)
            health = http_request("GET", "/healthz", token)
            base = measured(server, health, seconds=args.seconds, concurrency=args.concurrency)
            result = measured(server, verify, seconds=args.seconds, concurrency=args.concurrency)
        finally:
            server.stop()
    print(
        f"{name:<10} POST /v1/verifications: {result['rps']:6.0f} /s  p50 {result['p50_ms']:6.2f} ms"
        f"  p99 {result['p99_ms']:6.2f} ms  server CPU {result['cpu_ms']:.2f} ms/req  "
        f"errors {result['errors']:.0f}\n"
        f"{'':<10} baseline GET /healthz:  {base['rps']:6.0f} /s  p50 {base['p50_ms']:6.2f} ms"
        f"  p99 {base['p99_ms']:6.2f} ms  server CPU {base['cpu_ms']:.2f} ms/req"
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
        f"per figure, an observation of {args.distributions} distributions, {os.cpu_count()} CPUs"
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
