"""The agent's Prometheus metrics (text exposition format 0.0.4), served on --metrics-addr by a
standard-library HTTP server: nothing runs between scrapes."""

from __future__ import annotations

import bisect
import http.server
import logging
import math
import resource
import threading
from collections.abc import Callable

from lockd.model.fleet import VERDICTS

log = logging.getLogger("lockd.watch")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
OUTCOMES = ("delivered", "duplicate", "failed", "rejected")

__all__ = ["AgentMetrics", "MetricsServer"]


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value


class AgentMetrics:
    """Counters and gauges the agent updates; ``render()`` is the scrape. ``gauges`` are read
    at scrape time from the callables the agent registers (containers by verdict, spool)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.verification = Histogram(BUCKETS)
        self.probe_failures = 0
        self.probes = 0
        self.passes = 0
        self.events = 0
        self.daemon_errors = 0
        self.service_errors = 0
        self.deliveries = dict.fromkeys(OUTCOMES, 0)
        self.containers: Callable[[], dict[str, int]] = dict
        self.spool: Callable[[], tuple[int, int, int]] = lambda: (0, 0, 0)

    def observe_verification(self, seconds: float) -> None:
        with self._lock:
            self.verification.observe(seconds)
            self.probes += 1

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def delivered(self, outcome: str) -> None:
        with self._lock:
            self.deliveries[outcome] += 1

    def render(self) -> bytes:
        containers = self.containers()
        batches, spool_bytes, quarantined = self.spool()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        with self._lock:
            lines = [
                "# HELP lockd_agent_containers Watched containers by their current verdict",
                "# TYPE lockd_agent_containers gauge",
                *(
                    f'lockd_agent_containers{{verdict="{v}"}} {containers.get(v, 0)}'
                    for v in VERDICTS
                ),
                "# HELP lockd_agent_verification_seconds Time to probe and judge one container",
                "# TYPE lockd_agent_verification_seconds histogram",
            ]
            cumulative = 0
            for bound, count in zip(
                [*self.verification.buckets, math.inf], self.verification.counts, strict=True
            ):
                cumulative += count
                lines.append(
                    f'lockd_agent_verification_seconds_bucket{{le="{_number(bound)}"}} {cumulative}'
                )
            lines += [
                f"lockd_agent_verification_seconds_sum {_number(self.verification.sum)}",
                f"lockd_agent_verification_seconds_count {cumulative}",
                "# HELP lockd_agent_probe_failures_total Probes that failed, hung or found the "
                "container gone",
                "# TYPE lockd_agent_probe_failures_total counter",
                f"lockd_agent_probe_failures_total {self.probe_failures}",
                "# HELP lockd_agent_probes_total Probes run inside containers",
                "# TYPE lockd_agent_probes_total counter",
                f"lockd_agent_probes_total {self.probes}",
                "# HELP lockd_agent_passes_total Full passes over the host's containers",
                "# TYPE lockd_agent_passes_total counter",
                f"lockd_agent_passes_total {self.passes}",
                "# HELP lockd_agent_events_total Container events received from the daemon",
                "# TYPE lockd_agent_events_total counter",
                f"lockd_agent_events_total {self.events}",
                "# HELP lockd_agent_daemon_errors_total Failed calls to the Docker daemon",
                "# TYPE lockd_agent_daemon_errors_total counter",
                f"lockd_agent_daemon_errors_total {self.daemon_errors}",
                "# HELP lockd_agent_service_errors_total Failed manifest look-ups at the service",
                "# TYPE lockd_agent_service_errors_total counter",
                f"lockd_agent_service_errors_total {self.service_errors}",
                "# HELP lockd_agent_spool_batches Batches waiting in the spool for the service",
                "# TYPE lockd_agent_spool_batches gauge",
                f"lockd_agent_spool_batches {batches}",
                "# HELP lockd_agent_spool_bytes Bytes waiting in the spool",
                "# TYPE lockd_agent_spool_bytes gauge",
                f"lockd_agent_spool_bytes {spool_bytes}",
                "# HELP lockd_agent_spool_quarantined_total Spooled batches moved aside (corrupt "
                "or refused by the service)",
                "# TYPE lockd_agent_spool_quarantined_total counter",
                f"lockd_agent_spool_quarantined_total {quarantined}",
                "# HELP lockd_agent_deliveries_total Batch deliveries to the service by outcome",
                "# TYPE lockd_agent_deliveries_total counter",
                *(
                    f'lockd_agent_deliveries_total{{outcome="{o}"}} {self.deliveries[o]}'
                    for o in OUTCOMES
                ),
                "# HELP lockd_agent_cpu_seconds_total CPU time of the agent process",
                "# TYPE lockd_agent_cpu_seconds_total counter",
                f"lockd_agent_cpu_seconds_total {_number(usage.ru_utime + usage.ru_stime)}",
            ]
        return ("\n".join(lines) + "\n").encode("utf-8")


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != "/metrics":
            self.send_error(404, "only /metrics is served here")
            return
        body = self.server.metrics.render()
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return  # scrapes are not news


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    metrics: AgentMetrics


class MetricsServer:
    """``GET /metrics`` on ``address`` in a daemon thread, until ``close()``."""

    def __init__(self, metrics: AgentMetrics, address: tuple[str, int]) -> None:
        from lockd.errors import InputError

        try:
            self._server = _Server(address, _Handler)
        except OSError as e:
            raise InputError(
                f"--metrics-addr {address[0]}:{address[1]}: cannot listen there: {e.strerror}"
            ) from e
        self._server.metrics = metrics
        self.address = self._server.server_address
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 1.0},
            name="lockd-watch-metrics",
            daemon=True,
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
