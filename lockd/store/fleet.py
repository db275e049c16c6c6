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

from sqlalchemy import bindparam, delete, false, func, insert, or_, select, true, update

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


_DELETE_CONTAINER = delete(t.fleet_containers).where(
    t.fleet_containers.c.host == bindparam("gone_host"),
    t.fleet_containers.c.container_id == bindparam("gone"),
)


def apply_batch(
    store: Store, batch: FleetBatch, *, actor: str, received_at: str, notify: bool
) -> Applied:
    """Apply an agent's batch unless it was applied already (its sequence is at or below the
    last applied one of its (host, agent): then nothing changes). ``notify``: transitions to
    fail or unrecorded are queued for the webhook."""
    host = batch.host
    with store.write() as tx:
        last = tx.execute(
            select(t.fleet_agents.c.sequence).where(
                t.fleet_agents.c.host == host, t.fleet_agents.c.agent == batch.agent
            )
        ).scalar()
        if last is not None and batch.sequence <= last:
            return Applied(applied=False, sequence=batch.sequence)
        tx.upsert(
            t.fleet_agents,
            ("host", "agent"),
            {
                "host": host,
                "agent": batch.agent,
                "sequence": batch.sequence,
                "applied_at": received_at,
            },
        )
        tx.upsert(
            t.fleet_hosts,
            ("host",),
            {
                "host": host,
                "agent": batch.agent,
                "last_seen": received_at,
                "interval_s": batch.interval_s,
            },
        )
        current = {
            row.container_id: (row.verdict, row.since)
            for row in tx.execute(
                select(
                    t.fleet_containers.c.container_id,
                    t.fleet_containers.c.verdict,
                    t.fleet_containers.c.since,
                ).where(t.fleet_containers.c.host == host)
            )
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
            tx.upsert(
                t.fleet_containers,
                ("host", "container_id"),
                {
                    "host": host,
                    "container_id": c.id,
                    "name": c.name,
                    "image": c.image,
                    "image_id": c.image_id,
                    "labels": json.dumps(c.labels, sort_keys=True),
                    "manifest_digest": result.manifest_digest,
                    "policy": result.policy,
                    "verdict": result.verdict,
                    "since": since,
                    "checked_at": observed,
                    "findings": findings,
                    "error": result.error,
                    "verification_id": verification_id,
                },
            )
            if transition is None:
                continue
            fires = notify and transition.alerts
            notifications += fires
            tx.execute(
                insert(t.fleet_events),
                {
                    "host": host,
                    "container_id": c.id,
                    "name": c.name,
                    "image": c.image,
                    "image_id": c.image_id,
                    "from_verdict": transition.before,
                    "to_verdict": transition.after,
                    "findings": findings,
                    "manifest_digest": result.manifest_digest,
                    "verification_id": verification_id,
                    "at": observed,
                    "notify": fires,
                    "delivered": False,
                    "gave_up": False,
                    "attempts": 0,
                    "next_attempt_at": received_at if fires else None,
                },
            )
        running = set(batch.running)
        known = set(current) | {r.container.id for r in batch.results}
        gone = sorted(known - running)
        if gone:
            tx.execute(_DELETE_CONTAINER, [{"gone_host": host, "gone": c} for c in gone])
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


_EVENTS = t.fleet_events.c
_DUE = select(
    _EVENTS.id,
    _EVENTS.host,
    _EVENTS.container_id,
    _EVENTS.name,
    _EVENTS.image,
    _EVENTS.image_id,
    _EVENTS.from_verdict,
    _EVENTS.to_verdict,
    _EVENTS.findings,
    _EVENTS.manifest_digest,
    _EVENTS.verification_id,
    _EVENTS.at,
    _EVENTS.attempts,
)


def claim_event(store: Store, *, owner: str, now: str, lease_until: str) -> Claimed | None:
    """The oldest event due for delivery that no live lease holds, leased to ``owner``."""
    with store.write() as tx:
        row = tx.execute(
            _DUE.where(
                _EVENTS.notify == true(),
                _EVENTS.delivered == false(),
                _EVENTS.gave_up == false(),
                _EVENTS.next_attempt_at <= now,
                or_(_EVENTS.lease_until.is_(None), _EVENTS.lease_until < now),
            )
            .order_by(_EVENTS.id)
            .limit(1)
        ).first()
        if row is None:
            return None
        tx.execute(
            update(t.fleet_events)
            .where(_EVENTS.id == row.id)
            .values(lease_until=lease_until, lease_owner=owner)
        )
    event = TransitionEvent(
        id=row.id,
        host=row.host,
        container={"id": row.container_id, "name": row.name},
        image=row.image,
        image_id=row.image_id,
        from_=row.from_verdict,
        to=row.to_verdict,
        findings=json.loads(row.findings),
        manifest_digest=row.manifest_digest,
        verification_id=row.verification_id,
        at=row.at,
    )
    return Claimed(event=event, attempts=int(row.attempts))


def mark_delivered(store: Store, event_id: int, *, owner: str, at: str) -> None:
    with store.write() as tx:
        tx.execute(
            update(t.fleet_events)
            .where(_EVENTS.id == event_id, _EVENTS.lease_owner == owner)
            .values(
                delivered=True,
                delivered_at=at,
                attempts=_EVENTS.attempts + 1,
                lease_until=None,
                lease_owner=None,
                last_error=None,
            )
        )


def mark_failed(
    store: Store, event_id: int, *, owner: str, error: str, retry_at: str | None
) -> None:
    """A failed attempt: retry at ``retry_at``, or give up (None)."""
    with store.write() as tx:
        tx.execute(
            update(t.fleet_events)
            .where(_EVENTS.id == event_id, _EVENTS.lease_owner == owner)
            .values(
                attempts=_EVENTS.attempts + 1,
                next_attempt_at=retry_at,
                gave_up=retry_at is None,
                lease_until=None,
                lease_owner=None,
                last_error=error[:4096],
            )
        )


def release_claims(store: Store, *, owner: str) -> None:
    """Let other workers take what ``owner`` leased and did not finish (at shutdown)."""
    with store.write() as tx:
        tx.execute(
            update(t.fleet_events)
            .where(_EVENTS.lease_owner == owner, _EVENTS.delivered == false())
            .values(lease_until=None, lease_owner=None)
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
            str(host)
            for host in tx.execute(
                select(t.fleet_hosts.c.host)
                .where(t.fleet_hosts.c.last_seen < before)
                .order_by(t.fleet_hosts.c.host)
            ).scalars()
        ]
        for host in hosts:
            _forget(tx, host, actor=actor, time=time)
    return hosts


def _forget(tx: Transaction, host: str, *, actor: str, time: str) -> bool:
    tx.execute(delete(t.fleet_containers).where(t.fleet_containers.c.host == host))
    if not tx.execute(delete(t.fleet_hosts).where(t.fleet_hosts.c.host == host)).rowcount:
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
            delete(t.fleet_events).where(
                _EVENTS.at < before,
                or_(
                    _EVENTS.notify == false(),
                    _EVENTS.delivered == true(),
                    _EVENTS.gave_up == true(),
                ),
            )
        ).rowcount
    return int(deleted)
