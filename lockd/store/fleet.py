"""The fleet's tables: applying an agent's batch (one transaction), the fleet view, the
webhook's delivery bookkeeping (claim with a lease, mark delivered or failed), and the
lifecycle (forgetting hosts, pruning events that wait for nothing).

A batch is applied once per (host, agent, sequence), in the same transaction as its rows, the
reports it carries (stored as verifications), its audit entries and its transition events, so a
crash leaves either all of it or none. Deliveries are claimed one at a time under a lease
(``lease_until``), so several service processes never send the same event at once, and an event
marked delivered is never sent again.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import func, select

from lockd.model.fleet import (
    FleetBatch,
    FleetContainerView,
    FleetHostView,
    FleetView,
    Transition,
    TransitionEvent,
    host_state,
    parse_timestamp,
    timestamp,
    transitions,
)
from lockd.store import tables as t
from lockd.store.repository import NewVerification, Store, Transaction, body_digest

__all__ = [
    "Applied",
    "apply_batch",
    "claim_event",
    "fleet_counts",
    "fleet_view",
    "forget_host",
    "forget_stale_hosts",
    "mark_delivered",
    "mark_failed",
    "prune_events",
    "release_claims",
]


@dataclass(frozen=True)
class Applied:
    applied: bool
    sequence: int
    verifications: list[int] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)
    notifications: int = 0  # events waiting for the webhook


def apply_batch(
    store: Store, batch: FleetBatch, *, actor: str, received_at: str, notify: bool
) -> Applied:
    """Apply an agent's batch unless it was applied already (its sequence is at or below the
    last applied one of its (host, agent): then nothing changes). ``notify``: transitions to
    fail or unrecorded are queued for the webhook."""
    host = batch.host
    with store.write() as tx:
        last = tx.execute(
            "SELECT sequence FROM fleet_agents WHERE host = ? AND agent = ?", (host, batch.agent)
        ).fetchone()
        if last is not None and batch.sequence <= last[0]:
            return Applied(applied=False, sequence=batch.sequence)
        tx.execute(
            "INSERT INTO fleet_agents (host, agent, sequence, applied_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (host, agent) DO UPDATE SET sequence = excluded.sequence, "
            "applied_at = excluded.applied_at",
            (host, batch.agent, batch.sequence, received_at),
        )
        tx.execute(
            "INSERT INTO fleet_hosts (host, agent, last_seen, interval_s) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (host) DO UPDATE SET agent = excluded.agent, "
            "last_seen = excluded.last_seen, interval_s = excluded.interval_s",
            (host, batch.agent, received_at, batch.interval_s),
        )
        current = {
            row[0]: (row[1], row[2])
            for row in tx.execute(
                "SELECT container_id, verdict, since FROM fleet_containers WHERE host = ?",
                (host,),
            ).fetchall()
        }
        changes = transitions({k: v[0] for k, v in current.items()}, batch.results)
        changed = {c.container: c for c in changes}
        # The reports, stored as a client's verifications (as POST /v1/verifications does).
        reports = [
            (
                r.container.id,
                NewVerification(
                    actor=actor,
                    source="client",
                    subject=r.container.image_id,
                    manifest_digest=r.manifest_digest,
                    policy=r.policy[:64],  # the verifications' column
                    verified=r.report.verified,
                    report=r.report.model_dump_json(exclude_none=True),
                ),
            )
            for r in batch.results
            if r.report is not None
        ]
        verification_ids = tx.insert_verifications([n for _, n in reports], time=received_at)
        stored = {c: i for (c, _), i in zip(reports, verification_ids, strict=True)}
        notifications = 0
        for result in batch.results:
            c = result.container
            observed = timestamp(result.observed_at)
            verification_id = stored.get(c.id)
            transition = changed.get(c.id)
            since = observed if transition is not None else current[c.id][1]
            findings = json.dumps(result.findings)
            tx.execute(
                "INSERT INTO fleet_containers (host, container_id, name, image, image_id, labels, "
                "manifest_digest, policy, verdict, since, checked_at, findings, error, "
                "verification_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (host, container_id) DO UPDATE SET name = excluded.name, "
                "image = excluded.image, image_id = excluded.image_id, labels = excluded.labels, "
                "manifest_digest = excluded.manifest_digest, policy = excluded.policy, "
                "verdict = excluded.verdict, since = excluded.since, "
                "checked_at = excluded.checked_at, findings = excluded.findings, "
                "error = excluded.error, verification_id = excluded.verification_id",
                (
                    host,
                    c.id,
                    c.name,
                    c.image,
                    c.image_id,
                    json.dumps(c.labels, sort_keys=True),
                    result.manifest_digest,
                    result.policy,
                    result.verdict,
                    since,
                    observed,
                    findings,
                    result.error,
                    verification_id,
                ),
            )
            if transition is None:
                continue
            fires = notify and transition.alerts
            notifications += fires
            tx.execute(
                "INSERT INTO fleet_events (host, container_id, name, image, image_id, "
                "from_verdict, to_verdict, findings, manifest_digest, verification_id, at, "
                "notify, delivered, gave_up, attempts, next_attempt_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    host,
                    c.id,
                    c.name,
                    c.image,
                    c.image_id,
                    transition.before,
                    transition.after,
                    findings,
                    result.manifest_digest,
                    verification_id,
                    observed,
                    fires,
                    False,
                    False,
                    0,
                    received_at if fires else None,
                ),
            )
        running = set(batch.running)
        known = set(current) | {r.container.id for r in batch.results}
        gone = sorted(known - running)
        if gone:
            tx.executemany(
                "DELETE FROM fleet_containers WHERE host = ? AND container_id = ?",
                [(host, container) for container in gone],
            )
        tx.append(
            time=received_at,
            actor=actor,
            action="fleet.report",
            subject=host,
            body_digest=body_digest(batch.model_dump_json()),
        )
    return Applied(
        applied=True,
        sequence=batch.sequence,
        verifications=verification_ids,
        transitions=changes,
        notifications=notifications,
    )


# --- reading -----------------------------------------------------------------------------------


def fleet_view(
    store: Store,
    *,
    now: dt.datetime,
    stale_after_s: int,
    host: str | None = None,
    verdict: str | None = None,
) -> FleetView:
    """Hosts by name, their containers by name; with ``verdict``, only the containers of that
    verdict and the hosts that have one."""
    hosts_query = select(t.fleet_hosts).order_by(t.fleet_hosts.c.host)
    containers_query = select(t.fleet_containers).order_by(
        t.fleet_containers.c.host, t.fleet_containers.c.name, t.fleet_containers.c.container_id
    )
    if host is not None:
        hosts_query = hosts_query.where(t.fleet_hosts.c.host == host)
        containers_query = containers_query.where(t.fleet_containers.c.host == host)
    if verdict is not None:
        containers_query = containers_query.where(t.fleet_containers.c.verdict == verdict)
    with store.snapshot() as conn:
        hosts = conn.execute(hosts_query).mappings().all()
        containers = conn.execute(containers_query).mappings().all()
    by_host: dict[str, list[FleetContainerView]] = {}
    for row in containers:
        by_host.setdefault(row["host"], []).append(
            FleetContainerView(
                id=row["container_id"],
                name=row["name"],
                image=row["image"],
                image_id=row["image_id"],
                labels=json.loads(row["labels"]),
                manifest_digest=row["manifest_digest"],
                policy=row["policy"],
                verdict=row["verdict"],
                since=row["since"],
                checked_at=row["checked_at"],
                findings=json.loads(row["findings"]),
                error=row["error"],
                verification_id=row["verification_id"],
            )
        )
    views = [
        FleetHostView(
            host=row["host"],
            agent=row["agent"],
            last_seen=row["last_seen"],
            interval_s=row["interval_s"],
            state=host_state(parse_timestamp(row["last_seen"]), now, stale_after_s),
            containers=by_host.get(row["host"], []),
        )
        for row in hosts
        if verdict is None or row["host"] in by_host
    ]
    return FleetView(generated_at=timestamp(now), stale_after_s=stale_after_s, hosts=views)


def fleet_counts(
    store: Store, *, now: dt.datetime, stale_after_s: int
) -> tuple[dict[str, int], dict[str, int]]:
    """Containers by verdict and hosts by state (for /metrics)."""
    with store.snapshot() as conn:
        verdicts = {
            str(verdict): int(count)
            for verdict, count in conn.execute(
                select(t.fleet_containers.c.verdict, func.count()).group_by(
                    t.fleet_containers.c.verdict
                )
            )
        }
        seen = conn.execute(select(t.fleet_hosts.c.last_seen)).scalars().all()
    states: dict[str, int] = {}
    for last_seen in seen:
        state = host_state(parse_timestamp(last_seen), now, stale_after_s)
        states[state] = states.get(state, 0) + 1
    return verdicts, states


# --- webhook deliveries --------------------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    event: TransitionEvent
    attempts: int  # attempts made before this one


_EVENT_COLUMNS = (
    "id, host, container_id, name, image, image_id, from_verdict, to_verdict, findings, "
    "manifest_digest, verification_id, at, attempts"
)


def claim_event(store: Store, *, owner: str, now: str, lease_until: str) -> Claimed | None:
    """The oldest event due for delivery that no live lease holds, leased to ``owner``."""
    with store.write() as tx:
        row = tx.execute(
            f"SELECT {_EVENT_COLUMNS} FROM fleet_events "  # noqa: S608 (constant columns)
            "WHERE notify = ? AND delivered = ? AND gave_up = ? AND next_attempt_at <= ? "
            "AND (lease_until IS NULL OR lease_until < ?) ORDER BY id LIMIT 1",
            (True, False, False, now, now),
        ).fetchone()
        if row is None:
            return None
        tx.execute(
            "UPDATE fleet_events SET lease_until = ?, lease_owner = ? WHERE id = ?",
            (lease_until, owner, row[0]),
        )
    event = TransitionEvent(
        id=row[0],
        host=row[1],
        container={"id": row[2], "name": row[3]},
        image=row[4],
        image_id=row[5],
        from_=row[6],
        to=row[7],
        findings=json.loads(row[8]),
        manifest_digest=row[9],
        verification_id=row[10],
        at=row[11],
    )
    return Claimed(event=event, attempts=int(row[12]))


def mark_delivered(store: Store, event_id: int, *, owner: str, at: str) -> None:
    with store.write() as tx:
        tx.execute(
            "UPDATE fleet_events SET delivered = ?, delivered_at = ?, attempts = attempts + 1, "
            "lease_until = NULL, lease_owner = NULL, last_error = NULL "
            "WHERE id = ? AND lease_owner = ?",
            (True, at, event_id, owner),
        )


def mark_failed(
    store: Store, event_id: int, *, owner: str, error: str, retry_at: str | None
) -> None:
    """A failed attempt: retry at ``retry_at``, or give up (None)."""
    with store.write() as tx:
        tx.execute(
            "UPDATE fleet_events SET attempts = attempts + 1, next_attempt_at = ?, gave_up = ?, "
            "lease_until = NULL, lease_owner = NULL, last_error = ? "
            "WHERE id = ? AND lease_owner = ?",
            (retry_at, retry_at is None, error[:4096], event_id, owner),
        )


def release_claims(store: Store, *, owner: str) -> None:
    """Let other workers take what ``owner`` leased and did not finish (at shutdown)."""
    with store.write() as tx:
        tx.execute(
            "UPDATE fleet_events SET lease_until = NULL, lease_owner = NULL "
            "WHERE lease_owner = ? AND delivered = ?",
            (owner, False),
        )


def pending_events(store: Store) -> Sequence[int]:
    """Ids of the events still waiting for the webhook (for tests and operators)."""
    with store.engine.connect() as conn:
        return list(
            conn.execute(
                select(t.fleet_events.c.id)
                .where(
                    t.fleet_events.c.notify.is_(True),
                    t.fleet_events.c.delivered.is_(False),
                    t.fleet_events.c.gave_up.is_(False),
                )
                .order_by(t.fleet_events.c.id)
            ).scalars()
        )


# --- lifecycle: forgetting hosts, pruning events -------------------------------------------

FORGET_ACTION = "fleet.forget"  # the audit entry of a forgotten host (subject: the host)


def forget_host(store: Store, host: str, *, actor: str, time: str) -> bool:
    """Remove ``host`` and its containers from the fleet view, with an audit entry; False (and
    nothing changes) when the fleet has no such host. Its agents' last applied sequences are
    kept, so a batch redelivered from before is still ignored, while a new batch brings the host
    back; its events stay until they are pruned."""
    with store.write() as tx:
        return _forget(tx, host, actor=actor, time=time)


def forget_stale_hosts(store: Store, *, before: str, actor: str, time: str) -> list[str]:
    """Forget every host whose latest batch arrived before ``before``; the hosts, by name."""
    with store.write() as tx:
        hosts = [
            str(row[0])
            for row in tx.execute(
                "SELECT host FROM fleet_hosts WHERE last_seen < ? ORDER BY host", (before,)
            ).fetchall()
        ]
        for host in hosts:
            _forget(tx, host, actor=actor, time=time)
    return hosts


def _forget(tx: Transaction, host: str, *, actor: str, time: str) -> bool:
    tx.execute("DELETE FROM fleet_containers WHERE host = ?", (host,))
    if not tx.execute("DELETE FROM fleet_hosts WHERE host = ?", (host,)).rowcount:
        return False
    tx.append(time=time, actor=actor, action=FORGET_ACTION, subject=host, body_digest=None)
    return True


def prune_events(store: Store, *, before: str) -> int:
    """Delete the events whose transition was observed (``at``) before ``before`` and that wait
    for nothing: delivered, given up, or never to be sent (a transition that fires no webhook,
    or one recorded while no webhook URL was set). Events still waiting for the webhook are
    kept whatever their age. The number deleted."""
    with store.write() as tx:
        deleted = tx.execute(
            "DELETE FROM fleet_events "
            "WHERE at < ? AND (notify = ? OR delivered = ? OR gave_up = ?)",
            (before, False, True, True),
        ).rowcount
    return int(deleted)
