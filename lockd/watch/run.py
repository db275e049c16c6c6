"""Putting an agent together from the command line's options, and running it."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from lockd.errors import InputError
from lockd.watch.agent import Agent, PassSummary
from lockd.watch.options import WatchOptions

log = logging.getLogger("lockd.watch")

DAEMON_TIMEOUT_S = 30.0  # one call to the Docker daemon (a probe has its own deadline)

__all__ = ["open_agent", "run_once", "watch"]


@contextmanager
def open_agent(options: WatchOptions) -> Iterator[Agent]:
    """An agent for ``options``: daemon checked, spool opened, policy and trust (keys, keyless
    identities and their trusted root) loaded; the metrics server listening when asked for.
    Closed on exit.

    Raises:
        InputError: a bad policy, key, trusted root, spool directory or metrics address, or
            identities without the sigstore package (exit 2).
        TargetError: the Docker daemon cannot be reached (exit 3).
    """
    from lockd.client import Client
    from lockd.evidence.docker import UnsupportedHostError, connect
    from lockd.judgement.policy import load_policy
    from lockd.trust import keyless
    from lockd.trust.signed import load_trust
    from lockd.watch.metrics import AgentMetrics, MetricsServer
    from lockd.watch.prober import Prober
    from lockd.watch.spool import Spool
    from lockd.watch.verifier import ManifestCache

    policy = load_policy(options.policy)
    trusted = load_trust(options.keys, options.identities, options.trusted_root)
    if trusted.identities:  # a daemon says at start that it cannot check keyless manifests
        keyless.check_usable(trusted.trusted_root)
    client = Client(
        options.server, os.environ.get("LOCKD_TOKEN") or None, timeout=options.service_timeout_s
    )
    spool = Spool(options.spool)
    try:
        docker = connect(timeout=DAEMON_TIMEOUT_S, events=True)
    except UnsupportedHostError as e:
        raise InputError(
            f"DOCKER_HOST={e.host!r}: lockd watch speaks unix:///path/to/docker.sock or "
            "tcp://HOST:PORT (plain HTTP; for TLS or ssh, run it beside the daemon)"
        ) from e
    docker.ping()
    metrics = AgentMetrics()
    server = None if options.metrics_addr is None else MetricsServer(metrics, options.metrics_addr)
    prober = Prober(docker, timeout=options.probe_timeout_s, python=options.python)
    agent = Agent(
        options,
        docker=docker,
        client=client,
        spool=spool,
        manifests=ManifestCache(options.spool / "manifests", client, trusted, options.server),
        prober=prober,
        policy=policy,
        metrics=metrics,
    )
    try:
        yield agent
    finally:
        agent.close()
        if server is not None:
            server.close()


def run_once(options: WatchOptions) -> tuple[PassSummary, bool, str | None]:
    """One full pass, every container probed; then the spool delivered. (summary, every
    queued batch delivered, why not)."""
    with open_agent(options) as agent:
        summary = agent.run_pass(force=True)
        delivered = agent.courier.deliver()
        return summary, delivered, agent.courier.last_error


def watch(options: WatchOptions) -> None:
    """Watch until SIGTERM or SIGINT."""
    with open_agent(options) as agent:

        def stop(signum: int, frame: FrameType | None) -> None:
            log.info("stopping (signal %d)", signum)
            agent.stop()

        previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
        log.info(
            "watching containers on %s every %gs for %s (spool %s, agent %s)",
            options.host,
            options.interval_s,
            options.server,
            options.spool,
            agent.spool.agent,
        )
        try:
            agent.run()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
