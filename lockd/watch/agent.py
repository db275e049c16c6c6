"""The agent: keeps every selected running container of this host verified and the service told.

One thread owns the state (the loop, :meth:`Agent.run`; or :meth:`Agent.run_pass` for one
pass). Around it:

* the event follower (lockd.watch.events) posts container events into the agent's inbox; a
  burst is gathered for ``settle_s`` and coalesced, so a flood costs one look per container;
* a pool of ``concurrency`` workers runs the probes, each bounded by ``probe_timeout_s``, and
  posts what it found into the inbox; a probe that hangs occupies one worker until its
  deadline, while the verdicts of the others are batched ``flush_after_s`` after they arrive;
* the courier delivers the spool to the service, oldest first, with backoff while it is away.

Every ``interval_s`` a full pass lists the containers, asks the service for the newest
manifest of each image, fingerprints every container (the ``watch`` strategy of
lockd.evidence.cache.fingerprint) and probes those whose fingerprint changed, at most once per
interval each; a new manifest re-judges the last observation without probing. Each pass ends
in one batch (also a heartbeat for the service); new verdicts only are carried as results.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lockd.errors import LockdError, ServerError
from lockd.evidence.cache import fingerprint as fingerprints
from lockd.evidence.docker import DaemonError, NotFoundError
from lockd.model.fleet import MAX_RESULTS, FleetBatch, FleetResult
from lockd.watch.discovery import Inspected, Seen, docker_filters, from_inspect, from_list, selected
from lockd.watch.events import Coalescer, EventFollower, event_filters
from lockd.watch.metrics import AgentMetrics
from lockd.watch.options import WatchOptions
from lockd.watch.spool import Spool, SpoolError
from lockd.watch.verifier import Judgement, ManifestCache, ServiceDownError, failed, judge

if TYPE_CHECKING:
    from lockd.client import Client
    from lockd.evidence.docker import Docker
    from lockd.judgement.policy import Policy
    from lockd.model.manifest import Observation
    from lockd.watch.prober import Prober

log = logging.getLogger("lockd.watch")

BATCH_BYTES = 4 * 1024 * 1024  # below the service's default body limit (5 MiB)
MAX_PARKED = 1024  # stopped containers whose probe state is kept, in case they run again
DUE_SLACK = 0.95
VANISH_CHECKS = 6  # looks at a container whose probe failed, VANISH_WAIT_S apart
VANISH_WAIT_S = 0.5  # a probe is due again after 95 % of the interval (passes drift by ms)

__all__ = ["Agent", "Courier", "PassSummary"]


@dataclass
class Tracked:
    seen: Seen
    inspected: Inspected | None = None
    fingerprint: str | None = None  # at the start of the last successful probe
    observation: Observation | None = None
    observed_at: dt.datetime | None = None
    probe_slot: float | None = None  # clock time the last probe was scheduled at
    in_flight: bool = False
    gone: bool = False  # stopped while its probe ran
    judged_with: str | None = None  # manifest digest (or "none") of the current verdict
    verdict: str | None = None
    detail: str = ""  # the error, or the first findings, of the current verdict
    sent: tuple[object, ...] | None = None  # (verdict, digest, findings, error) last batched


@dataclass(frozen=True)
class _Done:
    container_id: str
    fingerprint: str | None
    slot: float
    observation: Observation | None
    error: str | None
    vanished: bool  # the probe failed because the container went away under it
    seconds: float
    observed_at: dt.datetime


_STOP = object()


@dataclass
class PassSummary:
    containers: dict[str, str] = field(default_factory=dict)  # name -> verdict
    details: dict[str, str] = field(default_factory=dict)  # name -> error or first findings
    probes: int = 0
    batches: list[int] = field(default_factory=list)  # sequences spooled


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Courier(threading.Thread):
    """Delivers the spool to the service, oldest batch first, once each; waits with backoff
    while the service is away (or refuses the token), never reordering."""

    def __init__(
        self,
        spool: Spool,
        client: Client,
        metrics: AgentMetrics,
        stop: threading.Event,
        backoff: tuple[float, float] = (1.0, 60.0),
    ) -> None:
        super().__init__(name="lockd-watch-courier", daemon=True)
        self.spool = spool
        self.client = client
        self.metrics = metrics
        self.wake = threading.Event()
        self._stop = stop
        self._backoff = backoff
        self._lock = threading.Lock()
        self.last_error: str | None = None

    def run(self) -> None:
        delay: float | None = None
        while not self._stop.is_set():
            self.wake.wait(delay)
            self.wake.clear()
            if self._stop.is_set():
                return
            if self.deliver():
                delay = None
            else:
                delay = self._backoff[0] if delay is None else min(delay * 2, self._backoff[1])

    def deliver(self) -> bool:
        """Send every queued batch in order; False when the service could not take one (it
        stays queued, with the ones after it)."""
        with self._lock:
            for sequence in self.spool.sequences():
                batch = self.spool.load(sequence)
                if batch is None:
                    continue  # corrupt: quarantined and logged by the spool
                try:
                    ack = self.client.push_fleet(batch)
                except ServerError as e:
                    self.spool.release()
                    if _refused(e):
                        self.spool.reject(sequence, str(e))
                        self.metrics.delivered("rejected")
                        continue
                    self.metrics.delivered("failed")
                    if str(e) != self.last_error:
                        log.warning("cannot deliver batch %d (kept in the spool): %s", sequence, e)
                    self.last_error = str(e)
                    return False
                self.spool.done(sequence)
                self.metrics.delivered("delivered" if ack.applied else "duplicate")
                if not ack.applied:
                    log.warning("the service had applied batch %d already (redelivery)", sequence)
            if self.last_error is not None:
                log.info("the service takes batches again")
            self.last_error = None
            return True


def _refused(error: ServerError) -> bool:
    """A refusal of the batch itself (it will never be taken: quarantine it), as opposed to the
    service being away, overloaded, or refusing the token (which an operator fixes)."""
    return error.status in (400, 413, 422)


class Agent:
    def __init__(
        self,
        options: WatchOptions,
        *,
        docker: Docker,
        client: Client,
        spool: Spool,
        manifests: ManifestCache,
        prober: Prober,
        policy: Policy,
        metrics: AgentMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.options = options
        self.docker = docker
        self.client = client
        self.spool = spool
        self.manifests = manifests
        self.prober = prober
        self.policy = policy
        self.metrics = metrics or AgentMetrics()
        self.clock = clock
        self.stopping = threading.Event()
        self.courier = Courier(spool, client, self.metrics, self.stopping)
        self._inbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._tracked: dict[str, Tracked] = {}
        self._parked: dict[str, Tracked] = {}  # stopped or paused, not removed (oldest first)
        self._pending: dict[str, FleetResult] = {}
        self._in_flight = 0
        self._running_changed = False
        self._heartbeat = False
        self._flush_due: float | None = None
        self._events_due: float | None = None
        self._coalescer = Coalescer()
        self._host_key = fingerprints.host_key()
        self._service_retry_at = 0.0
        self._service_problem: str | None = None
        self._pool = ThreadPoolExecutor(options.concurrency, thread_name_prefix="lockd-probe")
        self._policy_label = (policy.name or "default")[:256]
        self.metrics.containers = self._verdict_counts
        self.metrics.spool = lambda: (len(spool), spool.size_bytes(), spool.quarantined)

    # --- views --------------------------------------------------------------------------------

    def _verdict_counts(self) -> dict[str, int]:
        return dict(Counter(t.verdict for t in list(self._tracked.values()) if t.verdict))

    def verdicts(self) -> dict[str, str | None]:
        """Container name -> current verdict (None: not judged yet)."""
        return {t.seen.name: t.verdict for t in list(self._tracked.values())}

    def in_flight(self) -> set[str]:
        """Ids of the containers being probed now."""
        return {i for i, t in list(self._tracked.items()) if t.in_flight}

    def idle(self) -> bool:
        """Quiescent: no probe in flight, no event or probe result waiting to be taken in, no
        gathered events waiting to be applied. Read from another thread it is a snapshot; with
        nothing happening to the containers, it stays true once true."""
        return (
            self._in_flight == 0
            and self._inbox.empty()
            and self._events_due is None
            and not self._coalescer
        )

    # --- the loop -----------------------------------------------------------------------------

    def post(self, item: object) -> None:
        self._inbox.put(item)

    def stop(self) -> None:
        self.stopping.set()
        self._inbox.put(_STOP)
        self.courier.wake.set()

    def run(self) -> None:
        """Watch until :meth:`stop`: events, a full pass every interval, batches spooled and
        delivered. Ends with a last batch and one more delivery attempt."""
        follower = EventFollower(
            self.docker,
            event_filters(self.options.selectors),
            self.post,
            self.stopping,
            on_disconnect=lambda _: self.metrics.count("daemon_errors"),
        )
        follower.start()
        self.courier.start()
        next_pass = self.clock()
        try:
            while not self.stopping.is_set():
                now = self.clock()
                wake = min(
                    next_pass,
                    self._events_due if self._events_due is not None else next_pass,
                    self._flush_due if self._flush_due is not None else next_pass,
                )
                self._wait(max(0.0, wake - now))
                now = self.clock()
                if self._events_due is not None and now >= self._events_due:
                    self._apply_events(now)
                if now >= next_pass:
                    self._full_pass(now, force=False)
                    next_pass += self.options.interval_s
                    if next_pass <= now:  # a pass took longer than the interval: skip ahead
                        next_pass = now + self.options.interval_s
                self._maybe_flush(self.clock())
        finally:
            follower.close()
            self._pool.shutdown(wait=False, cancel_futures=True)
            if self._pending or self._running_changed:
                self._flush()
            self.courier.deliver()

    def run_pass(self, *, force: bool = True) -> PassSummary:
        """One full pass, waiting for every probe it starts (each bounded by the probe
        timeout); verdicts that are ready are spooled ``flush_after_s`` after they arrive even
        while slower probes run. ``force``: probe every container, fingerprint or not."""
        before = set(self.spool.sequences())
        probes = self.metrics.probes
        now = self.clock()
        self._full_pass(now, force=force)
        while self._in_flight:
            deadline = self._flush_due if self._flush_due is not None else self.clock() + 1.0
            self._wait(max(0.0, deadline - self.clock()), events=False)
            self._maybe_flush(self.clock())
        if self._pending or self._running_changed or self._heartbeat:
            self._flush()
        return PassSummary(
            containers={t.seen.name: t.verdict or "?" for t in self._tracked.values()},
            details={t.seen.name: t.detail for t in self._tracked.values()},
            probes=self.metrics.probes - probes,
            batches=sorted(set(self.spool.sequences()) - before),
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _wait(self, timeout: float, *, events: bool = True) -> None:
        try:
            item = self._inbox.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            self._take(item, events)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _take(self, item: object, events: bool) -> None:
        if item is _STOP:
            return
        if isinstance(item, _Done):
            self._finish(item)
            return
        if events and self._coalescer.add(item) and self._events_due is None:
            self._events_due = self.clock() + self.options.settle_s

    # --- passes and events --------------------------------------------------------------------

    def _list(self) -> dict[str, Seen] | None:
        try:
            listed = self.docker.containers(docker_filters(self.options.selectors))
        except DaemonError as e:
            self._daemon_failed(f"cannot list the containers: {e}; keeping the last verdicts")
            return None
        found = {}
        for entry in listed:
            seen = from_list(entry)
            if seen is not None and selected(seen, self.options.selectors):
                found[seen.id] = seen
        return found

    def _full_pass(self, now: float, *, force: bool) -> None:
        listed = self._list()
        if listed is None:
            return
        for container_id in list(self._tracked):
            if container_id not in listed:
                self._untrack(container_id)
        for container_id, seen in listed.items():
            tracked = self._tracked.get(container_id)
            if tracked is None:
                self._track(seen)
            elif _identity(tracked.seen) != _identity(seen):
                tracked.seen = seen
                tracked.inspected = None  # renamed, remounted: look again
        self._refresh_manifests({t.seen.image_id for t in self._tracked.values()}, now)
        self._host_key = fingerprints.host_key()
        for container_id in sorted(self._tracked):
            self._consider(self._tracked[container_id], now, force=force)
        self.metrics.count("passes")
        self._heartbeat = True
        self._arm_flush(now)

    def _apply_events(self, now: float) -> None:
        changes = self._coalescer.take()
        self._events_due = None
        self.metrics.count("events", changes.events)
        if changes.resync:
            self._full_pass(now, force=False)
        for container_id in sorted(changes.down):
            self._untrack(container_id, destroyed=container_id in changes.destroyed)
        for container_id in sorted(changes.up):
            self._look(container_id, now)
        self._arm_flush(now)

    def _untrack(self, container_id: str, *, destroyed: bool = False) -> None:
        """The container stopped (or was paused, or removed): out of ``running``. Unless it was
        removed it is parked: when it runs again it keeps its probe schedule and fingerprint,
        so a flood of stop/start costs at most one probe per interval."""
        if destroyed:
            self._parked.pop(container_id, None)
        tracked = self._tracked.get(container_id)
        if tracked is None:
            return
        if tracked.in_flight:
            tracked.gone = True  # its probe's end removes it
            return
        del self._tracked[container_id]  # a verdict of it still pending is sent all the same
        self._running_changed = True
        if not destroyed:
            tracked.sent = None  # the service forgets it: tell it again when it is back
            tracked.inspected = None
            self._parked[container_id] = tracked
            while len(self._parked) > MAX_PARKED:
                del self._parked[next(iter(self._parked))]

    def _track(self, seen: Seen) -> Tracked:
        """A container that runs (again): its parked state, or a new one."""
        tracked = self._parked.pop(seen.id, None) or Tracked(seen)
        tracked.seen = seen
        self._tracked[seen.id] = tracked
        self._running_changed = True
        return tracked

    def _inspect(self, container_id: str) -> Inspected | None:
        """The container as inspect shows it; None when it is gone or not running.

        Raises:
            DaemonError: the daemon did not answer.
        """
        try:
            return from_inspect(self.docker.inspect_container(container_id))
        except NotFoundError:
            return None

    def _daemon_failed(self, message: str) -> None:
        self.metrics.count("daemon_errors")
        log.warning("%s", message)

    def _look(self, container_id: str, now: float) -> None:
        """An event said the container started (or changed): inspect and consider it."""
        try:
            inspected = self._inspect(container_id)
        except DaemonError as e:
            self._daemon_failed(f"cannot inspect container {container_id[:12]}: {e}")
            return
        if inspected is None or not selected(inspected.seen, self.options.selectors):
            self._untrack(container_id)
            return
        tracked = self._tracked.get(container_id) or self._track(inspected.seen)
        tracked.seen = inspected.seen
        tracked.inspected = inspected
        if tracked.gone:
            tracked.gone = False
        self._refresh_manifests({inspected.seen.image_id}, now, only_missing=True)
        self._consider(tracked, now, force=False)

    def _consider(self, tracked: Tracked, now: float, *, force: bool) -> None:
        """Probe the container when its fingerprint changed and a probe is due; else re-judge
        its last observation when the manifest it was judged with changed."""
        if tracked.in_flight:
            return
        if tracked.inspected is None:
            try:
                inspected = self._inspect(tracked.seen.id)
            except DaemonError as e:
                self._daemon_failed(f"cannot inspect container {tracked.seen.name}: {e}")
                return
            if inspected is None:
                self._untrack(tracked.seen.id)
                return
            tracked.inspected = inspected
            tracked.seen = inspected.seen
        fingerprint = self._fingerprint(tracked)
        changed = (
            fingerprint is None or fingerprint != tracked.fingerprint or tracked.observation is None
        )
        due = (
            tracked.probe_slot is None
            or now - tracked.probe_slot >= self.options.interval_s * DUE_SLACK
        )
        if force or (changed and due):
            self._submit(tracked, fingerprint, now)
        elif tracked.observation is not None and (
            tracked.sent is None or self._manifest_key(tracked) != tracked.judged_with
        ):
            self._record(tracked, self._judge(tracked))

    def _fingerprint(self, tracked: Tracked) -> str | None:
        inspected = tracked.inspected
        assert inspected is not None
        return fingerprints.watch(
            inspected.config_key,
            inspected.upper_dir,
            inspected.attrs,
            inspected.seen.mounts,
            self._host_key,
            self.policy,
            tracked.observation,
        )

    def _submit(self, tracked: Tracked, fingerprint: str | None, now: float) -> None:
        assert tracked.inspected is not None
        tracked.in_flight = True
        self._in_flight += 1
        attrs = tracked.inspected.attrs
        container_id = tracked.seen.id
        self._pool.submit(self._probe, container_id, attrs, fingerprint, now)

    def _probe(
        self, container_id: str, attrs: object, fingerprint: str | None, slot: float
    ) -> None:
        """In a worker: observe the container and post what came of it."""
        started = time.perf_counter()
        observation = None
        error = None
        try:
            observation = self.prober.observe(attrs)  # type: ignore[arg-type]
        except LockdError as e:
            error = e.diagnostics()
        except Exception as e:  # a bug must not silence this container for good: say so
            log.exception("probing container %s failed unexpectedly", container_id[:12])
            error = f"lockd failed unexpectedly: {type(e).__name__}: {e}"
        seconds = time.perf_counter() - started
        vanished = error is not None and self._vanished(container_id)
        self.post(
            _Done(container_id, fingerprint, slot, observation, error, vanished, seconds, _utcnow())
        )

    def _vanished(self, container_id: str) -> bool:
        """In a worker, after a failed probe: whether the container is gone. Its removal may
        kill the probe a moment before the daemon shows the container stopped: look a few
        times (this delays only this container's verdict)."""
        for _ in range(VANISH_CHECKS):
            try:
                if self._inspect(container_id) is None:
                    return True
            except DaemonError:
                return False  # cannot tell: report what the probe said
            if self.stopping.wait(VANISH_WAIT_S):
                return False
        return False

    def _finish(self, done: _Done) -> None:
        self._in_flight -= 1
        tracked = self._tracked.get(done.container_id)
        if tracked is None:
            return
        tracked.in_flight = False
        tracked.probe_slot = done.slot
        self.metrics.observe_verification(done.seconds)
        if done.error is not None:
            self.metrics.count("probe_failures")
            if tracked.gone or done.vanished:
                log.info("container %s vanished mid-probe: %s", tracked.seen.name, done.error)
                judgement = failed(
                    f"container {tracked.seen.name} vanished mid-probe: {done.error}"
                )
                self._record(tracked, judgement, done.observed_at)
                del self._tracked[done.container_id]
                self._running_changed = True
                return
            log.warning("container %s: %s", tracked.seen.name, done.error)
            tracked.observation = None
            tracked.fingerprint = None
            self._record(tracked, failed(done.error), done.observed_at)
            return
        if tracked.gone:  # stopped while probed: the verdict is on something that is not there
            tracked.gone = False
            self._untrack(done.container_id)
            return
        tracked.observation = done.observation
        tracked.observed_at = done.observed_at
        tracked.fingerprint = done.fingerprint
        self._record(tracked, self._judge(tracked))

    # --- manifests and verdicts ---------------------------------------------------------------

    def _refresh_manifests(
        self, image_ids: set[str], now: float, only_missing: bool = False
    ) -> None:
        if now < self._service_retry_at:
            return
        for image_id in sorted(image_ids):
            if only_missing and self.manifests.get(image_id) is not None:
                continue
            try:
                self.manifests.refresh(image_id)
            except (ServiceDownError, ServerError) as e:
                self.metrics.count("service_errors")
                if str(e) != self._service_problem:
                    log.warning("%s; judging with the manifests cached on disk", e)
                self._service_problem = str(e)
                self._service_retry_at = now + min(self.options.interval_s, 30.0)
                return
        if self._service_problem is not None:
            log.info("the service answers manifest look-ups again")
        self._service_problem = None

    def _manifest_key(self, tracked: Tracked) -> str | None:
        known = self.manifests.get(tracked.seen.image_id)
        if known is None:
            return None
        return known.digest or "none"

    def _judge(self, tracked: Tracked) -> Judgement:
        image_id = tracked.seen.image_id
        known = self.manifests.get(image_id)
        tracked.judged_with = None if known is None else (known.digest or "none")
        if known is None:
            why = self._service_problem or "it has not been asked yet"
            return failed(
                f"no manifest known for image {image_id}: none is cached and the service could "
                f"not be asked ({why})"
            )
        try:
            opened = self.manifests.opened(known)
        except LockdError as e:
            return failed(f"the manifest {known.digest} for image {image_id}: {e.diagnostics()}")
        assert tracked.observation is not None
        return judge(tracked.observation, opened, self.policy, image_id=image_id)

    def _record(
        self, tracked: Tracked, judgement: Judgement, observed_at: dt.datetime | None = None
    ) -> None:
        tracked.verdict = judgement.verdict
        tracked.detail = judgement.error or "; ".join(judgement.findings[:3])
        key = (judgement.verdict, judgement.manifest_digest, judgement.findings, judgement.error)
        if key == tracked.sent:
            return
        tracked.sent = key
        self._pending[tracked.seen.id] = FleetResult(
            container=tracked.seen.fleet(),
            verdict=judgement.verdict,
            manifest_digest=judgement.manifest_digest,
            policy=self._policy_label,
            findings=list(judgement.findings),
            report=judgement.report,
            error=judgement.error,
            observed_at=observed_at or tracked.observed_at or _utcnow(),
        )
        self._arm_flush(self.clock())

    # --- batches ------------------------------------------------------------------------------

    def _arm_flush(self, now: float) -> None:
        if self._flush_due is None:
            self._flush_due = now + self.options.flush_after_s

    def _maybe_flush(self, now: float) -> None:
        if not (self._pending or self._running_changed or self._heartbeat):
            self._flush_due = None
            return
        if self._in_flight == 0 or (self._flush_due is not None and now >= self._flush_due):
            self._flush()

    def _flush(self) -> None:
        """Spool what is new as one batch (several when it is large); keep it when the spool
        cannot be written, to try again at the next flush."""
        running = sorted(self._tracked)
        results = [self._pending[i] for i in sorted(self._pending)]
        for chunk in _chunks(results):
            try:
                self.spool.append(
                    lambda sequence, chunk=chunk: FleetBatch(  # type: ignore[misc]
                        host=self.options.host,
                        agent=self.spool.agent,
                        sequence=sequence,
                        sent_at=_utcnow(),
                        interval_s=max(1, round(self.options.interval_s)),
                        running=running,
                        results=chunk,
                    )
                )
            except SpoolError as e:
                log.error("%s; the verdicts are kept to try again", e)
                self._flush_due = None
                return
            for result in chunk:
                self._pending.pop(result.container.id, None)
        self._running_changed = False
        self._heartbeat = False
        self._flush_due = None
        self.courier.wake.set()


def _identity(seen: Seen) -> tuple[object, ...]:
    return (seen.name, seen.image_id, seen.labels, seen.mounts)


def _chunks(results: list[FleetResult]) -> list[list[FleetResult]]:
    """Results split into batches within the contract's count and the service's body size."""
    chunks: list[list[FleetResult]] = [[]]
    size = 0
    for result in results:
        length = len(result.model_dump_json(exclude_none=True))
        if chunks[-1] and (len(chunks[-1]) >= MAX_RESULTS or size + length > BATCH_BYTES):
            chunks.append([])
            size = 0
        chunks[-1].append(result)
        size += length
    return chunks
