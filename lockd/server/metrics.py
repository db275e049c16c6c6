"""Prometheus metrics, one registry per app (so two apps in one process never share counts)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "lockd_http_requests",
            "HTTP requests answered, by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "lockd_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template",
            ["route"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.manifests = Counter(
            "lockd_manifests_stored",
            "Envelopes stored (a repeated envelope is not counted)",
            registry=self.registry,
        )
        self.verifications = Counter(
            "lockd_verifications",
            "Verification reports stored, by source (server, client) and result",
            ["source", "result"],
            registry=self.registry,
        )

        self.webhook_deliveries = Counter(
            "lockd_webhook_deliveries",
            "Transition webhook attempts, by outcome (delivered, failed: retried later, "
            "gave_up: no attempts left)",
            ["outcome"],
            registry=self.registry,
        )

        self.fleet_upkeep = Counter(
            "lockd_fleet_upkeep",
            "What the fleet's upkeep removed: transition events past their retention "
            "(events_pruned), hosts silent for LOCKD_FLEET_FORGET_AFTER_S (hosts_forgotten)",
            ["removed"],
            registry=self.registry,
        )

        self.admission_unchecked = Counter(
            "lockd_admission_allowed_unchecked",
            "Admission reviews allowed although their images could not be checked in time (the "
            "store or a registry too slow or failing, under failure: open or an audit-mode rule)",
            registry=self.registry,
        )

    def watch_fleet(self, counts: FleetCounts) -> None:
        """Report the fleet's gauges from ``counts()`` (read from the database at each scrape,
        so every service process reports the same figures)."""
        self.registry.register(_FleetCollector(counts))

    def render(self) -> bytes:
        return generate_latest(self.registry)


# () -> (containers by verdict, hosts by state)
FleetCounts = Callable[[], tuple[Mapping[str, int], Mapping[str, int]]]


class _FleetCollector(Collector):
    def __init__(self, counts: FleetCounts) -> None:
        self._counts = counts

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "lockd_fleet_containers",
                "Running containers the watch agents report, by latest verdict",
                labels=["verdict"],
            ),
            GaugeMetricFamily(
                "lockd_fleet_hosts",
                "Hosts with a watch agent, by state (stale: no report for LOCKD_STALE_AFTER_S)",
                labels=["state"],
            ),
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield from self._families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from lockd.model.fleet import HOST_STATES, VERDICTS

        containers, hosts = self._families()
        by_verdict, by_state = self._counts()
        for verdict in VERDICTS:
            containers.add_metric([verdict], by_verdict.get(verdict, 0))
        for state in HOST_STATES:
            hosts.add_metric([state], by_state.get(state, 0))
        yield containers
        yield hosts
