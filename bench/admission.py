"""Latency and throughput of `POST /v1/admission` for a Deployment with three digest-pinned
images (all recorded and trusted), against a running `lockd serve` on SQLite, with the verdict
cache warm (TTL 300 s) and cold (TTL 0: every request looks the three images up), beside a
baseline measured in the same run on the same server: `GET /healthz` (the HTTP stack alone).

Then the authenticated webhook (#18): `lockd serve --tls-cert --tls-key --admission-port
--client-ca`, the reviews sent over TLS with the API server's client certificate (keep-alive
connections, as the API server keeps them), warm p99 printed beside the plain-HTTP warm figure
of the same run; and a flood of 1 000 reviews without a client certificate, each refused at the
TLS handshake: the audit rows and the app's count of admission requests, before and after.

Target (issues 6 and 18), on a 2-core machine: p99 <= 10 ms with a warm cache at 200
requests/s, plain HTTP and TLS with client certificates.
Paced load: requests are sent on a fixed schedule (200/s by default) over a few keep-alive
connections and latency counts from the scheduled time, so a stall is not hidden by sending
less; then a closed loop at fixed concurrency gives the most requests/s.

Usage: python bench/admission.py [--seconds 10] [--rate 200] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import ssl
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # child_processes, for service_helpers; certificates
sys.path.insert(0, str(ROOT / "tests" / "service"))
sys.path.insert(0, str(ROOT / "bench"))

from certificates import Certificates, make_certificates  # noqa: E402
from service_helpers import Server, envelope, free_port, image, observation  # noqa: E402
from service_load import load, read_response  # noqa: E402

from lockd.store.migrate import upgrade  # noqa: E402
from lockd.store.repository import Store  # noqa: E402
from lockd.trust import keys  # noqa: E402

REG = "registry.internal:5000/team"


def review() -> bytes:
    spec = {
        "containers": [
            {"name": "app", "image": f"{REG}/app@{image(1)}"},
            {"name": "sidecar", "image": f"{REG}/sidecar@{image(2)}"},
        ],
        "initContainers": [{"name": "migrate", "image": f"{REG}/migrate@{image(3)}"}],
    }
    doc = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
            "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
            "name": "web",
            "namespace": "prod",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:ci:deployer"},
            "object": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "web", "namespace": "prod"},
                "spec": {
                    "replicas": 3,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {"metadata": {"labels": {"app": "web"}}, "spec": spec},
                },
            },
        },
    }
    return json.dumps(doc).encode()


def http(method: str, path: str, body: bytes = b"") -> bytes:
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _paced_worker(
    port: int,
    request: bytes,
    times: list[float],
    record_from: float,
    latencies: list[float],
    context: ssl.SSLContext | None,
) -> int:
    tls = {"ssl": context, "server_hostname": "localhost"} if context else {}
    reader, writer = await asyncio.open_connection("127.0.0.1", port, **tls)  # type: ignore[arg-type]
    errors = 0
    try:
        for scheduled in times:
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            writer.write(request)
            status, answer = await read_response(reader)
            allowed = b"/healthz" in request[:20] or b'"allowed":true' in answer
            if not status.startswith(b"HTTP/1.1 200") or not allowed:
                if not errors:
                    print(f"  first error: {status.decode().strip()} {answer[:300]!r}")
                errors += 1
            elif scheduled >= record_from:
                latencies.append(time.perf_counter() - scheduled)
    finally:
        writer.close()
    return errors


def paced(
    port: int,
    request: bytes,
    *,
    rate: float,
    seconds: float,
    context: ssl.SSLContext | None = None,
) -> dict[str, float]:
    """Requests at ``rate`` per second for ``seconds`` (after a 1 s warm-up) over 8 connections
    (TLS with ``context``); latency from each request's scheduled time."""
    connections = 8
    latencies: list[float] = []

    async def run() -> int:
        start = time.perf_counter() + 0.2
        total = int(rate * (seconds + 1.0))
        schedule = [start + i / rate for i in range(total)]
        return sum(
            await asyncio.gather(
                *(
                    _paced_worker(
                        port, request, schedule[c::connections], start + 1.0, latencies, context
                    )
                    for c in range(connections)
                )
            )
        )

    errors = asyncio.run(run())
    latencies.sort()
    if not latencies:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "errors": errors, "n": 0.0}
    return {
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "errors": float(errors),
        "n": float(len(latencies)),
    }


def serve(
    folder: Path,
    ttl: float,
    public: Path,
    database: str,
    *,
    tls: Certificates | None = None,
    admission_port: int | None = None,
) -> Server:
    config = folder / f"admission-{ttl:g}.yaml"
    config.write_text(f"cache_ttl_s: {ttl}\ndeadline_s: 2\n")
    env = {
        "LOCKD_DATABASE_URL": database,
        "LOCKD_TRUSTED_KEYS": str(public),
        "LOCKD_ADMISSION_CONFIG": str(config),
    }
    args: tuple[str, ...] = ()
    if tls is not None:
        args = (
            *("--tls-cert", str(tls.server.cert), "--tls-key", str(tls.server.key)),
            *("--admission-port", str(admission_port), "--client-ca", str(tls.ca)),
        )
    log = (folder / f"server-{ttl:g}{'-tls' if tls else ''}.log").open("wb")
    return Server(env, log=log, args=args, ca=tls.ca if tls else None).start()


def client_context(tls: Certificates, *, certificate: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(tls.ca))
    if certificate:
        context.load_cert_chain(tls.apiserver.cert, tls.apiserver.key)
    return context


def audit_rows(database: str) -> int:
    store = Store.open(database)
    try:
        return len(store.audit_entries(limit=1_000_000))
    finally:
        store.close()


def settled_audit_rows(database: str) -> int:
    """The audit rows once the decisions sent so far are written (they follow the answers)."""
    rows = audit_rows(database)
    while True:
        time.sleep(0.5)
        again = audit_rows(database)
        if again == rows:
            return rows
        rows = again


def admission_requests(server: Server) -> float:
    """The app's count of /v1/admission requests answered, any status (from /metrics)."""
    with urllib.request.urlopen(server.url + "/metrics", context=server.context) as answer:
        text = answer.read().decode()
    pattern = r'^lockd_http_requests_total\{[^}]*route="/v1/admission"[^}]*\} (\S+)$'
    return sum(float(v) for v in re.findall(pattern, text, re.M))


def flood(port: int, request: bytes, context: ssl.SSLContext, count: int) -> dict[str, int]:
    """``count`` reviews without a client certificate, 50 at a time: how each ended."""
    outcomes: dict[str, int] = {}

    async def one() -> None:
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=context, server_hostname="localhost"
            )
            writer.write(request)
            status, _ = await read_response(reader)
            writer.close()
            kind = "answered " + status.decode().split(" ")[1] if status else "closed unanswered"
        except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError) as e:
            kind = "refused (" + type(e).__name__ + ")"
        outcomes[kind] = outcomes.get(kind, 0) + 1

    async def run() -> None:
        gate = asyncio.Semaphore(50)

        async def bounded() -> None:
            async with gate:
                await one()

        await asyncio.gather(*(bounded() for _ in range(count)))

    asyncio.run(run())
    return outcomes


def bench_tls(
    folder: Path, public: Path, database: str, admission: bytes, args: argparse.Namespace
) -> dict[str, float]:
    """The warm figure over TLS with client certificates, then the flood without one."""
    tls = make_certificates(folder / "tls")
    port = free_port()
    server = serve(folder, 300.0, public, database, tls=tls, admission_port=port)
    try:
        trusted = client_context(tls, certificate=True)
        result = paced(port, admission, rate=args.rate, seconds=args.seconds, context=trusted)
        rows_before = settled_audit_rows(database)
        answered_before = admission_requests(server)
        outcomes = flood(port, admission, client_context(tls, certificate=False), args.flood)
        time.sleep(1.0)
        rows_after = settled_audit_rows(database)
        answered_after = admission_requests(server)
    finally:
        server.stop()
    print(
        f"flood: {args.flood} reviews without a client certificate to the admission listener: "
        + ", ".join(f"{n} {kind}" for kind, n in sorted(outcomes.items()))
        + f"\nflood: audit rows before {rows_before}, after {rows_after}; /v1/admission requests "
        f"the app answered before {answered_before:.0f}, after {answered_after:.0f}"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--flood", type=int, default=1000)
    args = parser.parse_args()
    client_loop = "asyncio"
    try:  # the load's own TLS in Cython, as the server's: asyncio's in Python cost more than
        import uvloop  # the server's (the TLS figure measured the client's CPU, not lockd's)

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        client_loop = "uvloop"
    except ImportError:
        pass
    print(
        f"lockd admission: a Deployment with three pinned images, {args.rate:.0f} req/s paced "
        f"and {args.concurrency} clients closed-loop, {args.seconds:.0f} s per figure, SQLite, "
        f"{os.cpu_count()} CPUs, client loop {client_loop}; load average before: "
        f"{os.getloadavg()[0]:.2f}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        key = keys.generate_private_key()
        public = folder / "trusted.pub"
        public.write_bytes(keys.public_pem(key))
        database = f"sqlite:///{folder / 'lockd.db'}"
        store = Store.open(database)
        upgrade(store.engine)
        token = store.create_token("bench", "recorder", actor="bench")
        store.close()
        admission = http("POST", "/v1/admission", review())
        health = http("GET", "/healthz")
        warm: dict[str, float] = {}
        for label, ttl in (("warm", 300.0), ("cold", 0.0)):
            server = serve(folder, ttl, public, database)
            try:
                if label == "warm":
                    for n in (1, 2, 3):
                        request = urllib.request.Request(
                            server.url + "/v1/manifests",
                            data=envelope(key, observation(image(n), distributions=150)).to_json(),
                            headers={
                                "Authorization": f"Bearer {token}",
                                "Content-Type": "application/json",
                            },
                        )
                        with urllib.request.urlopen(request) as answer:
                            assert answer.status in (200, 201)
                base = paced(server.port, health, rate=args.rate, seconds=args.seconds)
                result = paced(server.port, admission, rate=args.rate, seconds=args.seconds)
                most = load(
                    server.port,
                    admission,
                    seconds=args.seconds,
                    concurrency=args.concurrency,
                    warmup=1.0,
                )
            finally:
                server.stop()
            if label == "warm":
                warm = result
            print(
                f"{label} cache  POST /v1/admission at {args.rate:.0f}/s: p50 "
                f"{result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:6.2f} ms  errors "
                f"{result['errors']:.0f}  | closed loop: {most['rps']:6.0f} /s  p50 "
                f"{most['p50_ms']:6.2f} ms  p99 {most['p99_ms']:6.2f} ms\n"
                f"{'':<11} baseline GET /healthz at {args.rate:.0f}/s: p50 {base['p50_ms']:6.2f} ms"
                f"  p99 {base['p99_ms']:6.2f} ms"
            )
        tls = bench_tls(folder, public, database, admission, args)
        print(
            f"warm cache POST /v1/admission at {args.rate:.0f}/s over TLS with a client "
            f"certificate: p50 {tls['p50_ms']:6.2f} ms  p99 {tls['p99_ms']:6.2f} ms  errors "
            f"{tls['errors']:.0f}\nwarm cache POST /v1/admission at {args.rate:.0f}/s, plain HTTP "
            f"(the baseline above, same run): p50 {warm['p50_ms']:6.2f} ms  p99 "
            f"{warm['p99_ms']:6.2f} ms"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
