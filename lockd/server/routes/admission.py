"""``/v1/admission``: the ValidatingAdmissionWebhook. The Kubernetes API server POSTs an
AdmissionReview; every image of the object must be pinned by digest and have a stored manifest
for that digest, signed by a trusted key, whose recorded checks pass the namespace's policy.

Verdicts are cached per (digest, policy) for ``cache_ttl_s``. Each review has one deadline,
``deadline_s``: waiting for one of the lookup slots, the store lookup (on a thread) and the
registry fallback (only to the registries the config lists) all count against it; at the
deadline a registry's connections are shut down, so the lookup ends and frees its slot, and the
review is decided under the failure mode (``closed`` by default; an allow under ``open`` is
audited as ``admission.allow_unchecked`` and counted in /metrics). Every decision but a dry
run's is chained into the audit log after the answer is sent, its actor the authenticated
channel (lockd.server.admission_auth), the review's user recorded only as claimed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, InvalidStateError
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.background import BackgroundTask

from lockd.errors import LockdError, SignatureError
from lockd.judgement.admission import (
    AdmissionConfig,
    ContainerImage,
    Decision,
    ImageVerdict,
    Review,
    ReviewError,
    UnsupportedObjectError,
    decide,
    decision_digest,
    digests_to_check,
    images_of,
    load_config,
    malformed_response,
    parse_image,
    parse_review,
    plain_response,
    review_response,
    static_problems,
)
from lockd.server.deps import AdmissionChannel, Refusal
from lockd.server.routes import problems
from lockd.trust.registry import Deadline

if TYPE_CHECKING:
    from lockd.judgement.policy import Policy
    from lockd.server.service import Service, TrustedManifest
    from lockd.store.repository import Store

T = TypeVar("T")
log = logging.getLogger("lockd.server.admission")
router = APIRouter(tags=["admission"])
MAX_IN_FLIGHT = 32
SLOT_POLL_S = 0.005
SLOT_POLL_MAX_S = 0.05
AUDIT_BATCH = 256
MAX_AUDIT_BACKLOG = 10_000
CACHE_ENTRIES = 10_000


class StoreUnavailableError(LockdError):
    """The store did not answer in time, or failed."""


def _short(digest: str) -> str:
    return digest[:19]


AuditRow = tuple[str, str, str | None, str | None]


class AuditWriter:
    """One thread that chains admission decisions into the audit log, many to a transaction
    (a decision costs the request nothing: it is queued after the answer is sent)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._queue: queue.SimpleQueue[tuple[AuditRow, Future[None]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()

    def submit(self, row: AuditRow) -> Future[None]:
        """A future that completes when the row is committed (or fails with the store's
        error)."""
        with self._start:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="lockd-admission-audit", daemon=True
                )
                self._thread.start()
        done: Future[None] = Future()
        if self._queue.qsize() >= MAX_AUDIT_BACKLOG:
            done.set_exception(
                StoreUnavailableError(f"{MAX_AUDIT_BACKLOG} decisions wait for the store already")
            )
            return done
        self._queue.put((row, done))
        return done

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < AUDIT_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            error: Exception | None = None
            try:
                self.store.add_audits([row for row, _ in batch])
            except Exception as e:  # the driver's errors, whatever they are: handed to each waiter
                error = e
            for _, done in batch:
                # a waiter past its deadline has cancelled its future: this thread must live on
                with contextlib.suppress(InvalidStateError):
                    if error is None:
                        done.set_result(None)
                    else:
                        done.set_exception(error)


class Gatekeeper:
    """Admission decisions for one service: the cache, the deadline, the audit."""

    def __init__(self, service: Service, config: AdmissionConfig) -> None:
        self.service = service
        self.config = config
        self._cache: dict[tuple[str, str], tuple[float, ImageVerdict]] = {}
        self._cache_lock = threading.Lock()
        self._in_flight = threading.BoundedSemaphore(MAX_IN_FLIGHT)
        self._audit = AuditWriter(service.store)
        # Manifests are content-addressed: a judgement holds while the policy object is the same
        # (the service rereads a policy file only when it changes).
        self._judged: dict[tuple[str, str], tuple[Policy, ImageVerdict]] = {}

    @classmethod
    def from_service(cls, service: Service) -> Gatekeeper:
        """Raises PolicyError when LOCKD_ADMISSION_CONFIG's file is bad (at start-up)."""
        path = service.settings.admission_config
        return cls(service, AdmissionConfig() if path is None else load_config(path))

    # --- verdicts ---------------------------------------------------------------------------

    def verdict(
        self,
        digest: str,
        policy_name: str,
        image: str | None = None,
        deadline: Deadline | None = None,
    ) -> ImageVerdict:
        """What the store holds for an image digest under a policy (blocking: store I/O); when
        the store has nothing and the image's registry is one ``registry_fallback`` lists, that
        registry is asked (until ``deadline``).

        Raises:
            Exception: whatever the database raises when it cannot be reached.
        """
        service = self.service
        try:
            policy = service.policy(policy_name)
        except LockdError as e:
            return ImageVerdict(False, f"the namespace's policy cannot be used: {e}")
        manifest_digest = service.store.latest_manifest_digest([digest])
        if manifest_digest is None and image is not None and self._may_ask(image):
            return self._registry_verdict(image, policy, policy_name, deadline)
        if manifest_digest is None:
            return ImageVerdict(
                False,
                f"no signed lockd manifest is stored for {_short(digest)}…; record the image "
                "and push its manifest (lockd record, lockd push)",
            )
        try:
            trusted = service.trusted_manifest(manifest_digest)
        except SignatureError:
            return ImageVerdict(
                False, f"manifest {_short(manifest_digest)}… is not signed by a trusted key"
            )
        except LockdError as e:
            return ImageVerdict(False, f"manifest {_short(manifest_digest)}… is unusable: {e}")
        judged = self._judged.get((manifest_digest, policy_name))
        if judged is not None and judged[0] is policy:  # the same manifest, an unchanged policy
            return judged[1]
        verdict = self._judge(trusted, manifest_digest, policy, policy_name)
        if len(self._judged) > CACHE_ENTRIES:
            self._judged.clear()
        self._judged[(manifest_digest, policy_name)] = (policy, verdict)
        return verdict

    def _judge(
        self, trusted: TrustedManifest, manifest_digest: str, policy: Policy, policy_name: str
    ) -> ImageVerdict:
        from lockd.judgement.compare import compare

        recorded = trusted.manifest
        failed = [c for c in compare(recorded, recorded.observation, policy) if c.status == "fail"]
        if failed:
            why = ", ".join(
                f"{c.id}" + (f" ({c.message[:120]})" if c.message else "") for c in failed
            )
            return ImageVerdict(
                False,
                f"manifest {_short(manifest_digest)}… fails policy {policy_name}: {why}",
            )
        return ImageVerdict(
            True,
            f"manifest {_short(manifest_digest)}… signed by {', '.join(trusted.keyids)}",
        )

    def _may_ask(self, image: str) -> bool:
        """Only the registries the admission config lists are ever asked: an anonymous image
        reference must not make the service connect wherever it names."""
        return parse_image(image).registry in self.config.registry_fallback

    def _registry_verdict(
        self, image: str, policy: Policy, policy_name: str, deadline: Deadline | None
    ) -> ImageVerdict:
        from lockd.gate import envelopes_from_registry, judge
        from lockd.trust.registry import Registry

        host = parse_image(image).registry
        try:
            found = envelopes_from_registry(image, registry=Registry(host, deadline=deadline))
        except LockdError as e:
            if deadline is not None and deadline.passed():  # not the registry's answer: no time
                raise self._too_slow() from e
            return ImageVerdict(False, f"no manifest is stored and the registry gave none: {e}")
        result = judge(image, found, self.service.trust, policy, policy_name, "its registry")
        if result.allowed:
            manifest = (result.manifest or "")[:19]
            return ImageVerdict(True, f"manifest {manifest}… from the registry")
        return ImageVerdict(False, "; ".join(result.reasons)[:1000])

    def _too_slow(self) -> StoreUnavailableError:
        asked = " or a registry" if self.config.registry_fallback else ""
        return StoreUnavailableError(
            f"the store{asked} did not answer within {self.config.deadline_s:g} s"
        )

    def _cached(self, digest: str, policy: str, now: float) -> ImageVerdict | None:
        with self._cache_lock:
            entry = self._cache.get((digest, policy))
        if entry is None or entry[0] <= now:
            return None
        return entry[1]

    def _remember(self, found: dict[str, ImageVerdict], policy: str) -> None:
        expires = time.monotonic() + self.config.cache_ttl_s
        with self._cache_lock:
            if len(self._cache) + len(found) > CACHE_ENTRIES:
                self._cache.clear()
            for digest, verdict in found.items():
                self._cache[(digest, policy)] = (expires, verdict)

    def forget(self) -> None:
        """Empty the verdict cache."""
        with self._cache_lock:
            self._cache.clear()

    def _lookup(
        self, digests: Mapping[str, str], policy: str, deadline: Deadline
    ) -> dict[str, ImageVerdict]:
        return {
            digest: self.verdict(digest, policy, image, deadline)
            for digest, image in digests.items()
        }

    async def _slot(self, deadline: Deadline) -> None:
        """Wait for a lookup slot until the deadline (part of the review's own time).

        Raises:
            StoreUnavailableError: no slot came free in time.
        """
        pause = SLOT_POLL_S
        while not self._in_flight.acquire(blocking=False):
            left = deadline.at - time.monotonic()
            if left <= 0:
                raise StoreUnavailableError(
                    f"no lookup slot came free within {self.config.deadline_s:g} s "
                    f"({MAX_IN_FLIGHT} lookups in flight)"
                )
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, SLOT_POLL_MAX_S)  # a flood of waiters must not spin the loop

    async def _in_thread(self, work: Callable[..., T], *args: Any, deadline: Deadline) -> T:
        """Run blocking work on a daemon thread (a hung database never blocks exit) and wait
        until ``deadline``; then abandon it (its registry connections are shut down, so its
        thread ends and frees the slot).

        Raises:
            StoreUnavailableError: no slot came free, the deadline passed, or the work failed.
        """
        await self._slot(deadline)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def settle(result: T | None, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)  # type: ignore[arg-type]

        def run() -> None:
            try:
                result = work(*args)
            except BaseException as e:
                loop.call_soon_threadsafe(settle, None, e)
            else:
                loop.call_soon_threadsafe(settle, result, None)
            finally:
                self._in_flight.release()

        threading.Thread(target=run, name="lockd-admission", daemon=True).start()
        try:
            return await asyncio.wait_for(future, timeout=max(0.0, deadline.at - time.monotonic()))
        except asyncio.TimeoutError as e:
            deadline.abandon()
            raise self._too_slow() from e
        except LockdError:
            raise
        except Exception as e:
            raise StoreUnavailableError(
                f"the store failed ({type(e).__name__}: {str(e)[:160]})"
            ) from e

    # --- decisions --------------------------------------------------------------------------

    async def review(self, review: Review) -> tuple[dict[str, Any], Decision]:
        deadline = Deadline(self.config.deadline_s)
        rule = self.config.rule_for(review.namespace)
        if review.operation not in ("CREATE", "UPDATE"):
            decision = Decision(True, rule.mode, rule.policy, [])
            return plain_response(review, True), decision
        images: list[ContainerImage] = []
        try:
            images = images_of(review.kind, review.object)
        except UnsupportedObjectError as e:
            decision = decide(rule, [], [str(e)], {})
            return review_response(review, decision), decision
        found = static_problems(images, self.config.registries)
        now = time.monotonic()
        verdicts: dict[str, ImageVerdict] = {}
        missing: dict[str, str] = {}
        for digest in digests_to_check(images):
            cached = self._cached(digest, rule.policy, now)
            if cached is None:
                missing[digest] = next(c.image for c in images if c.image.endswith(digest))
            else:
                verdicts[digest] = cached
        unavailable = None
        if missing:
            try:
                fresh = await self._in_thread(
                    self._lookup, missing, rule.policy, deadline, deadline=deadline
                )
            except StoreUnavailableError as e:
                unavailable = str(e)
                log.warning("admission %s: %s", review.uid, unavailable)
            else:
                self._remember(fresh, rule.policy)
                verdicts.update(fresh)
        decision = decide(
            rule, images, found, verdicts, unavailable=unavailable, failure=self.config.failure
        )
        if decision.unchecked is not None:
            self.service.metrics.admission_unchecked.inc()
        return review_response(review, decision), decision

    async def audit(self, review: Review, decision: Decision, actor: str) -> None:
        """Chain the decision into the audit log (after the answer is sent) under ``actor``,
        the authenticated channel; the review's user goes in as claimed. A dry run is logged
        only (the webhook declares sideEffects NoneOnDryRun). A store that cannot take it
        within the deadline is logged, not retried."""
        subject = f"{review.namespace}/{review.kind}/{review.name}"
        log.info(
            "admission %s %s %s%s (by %s, claimed user %r): %s",
            review.uid,
            subject,
            decision.action,
            " (dry run: not audited)" if review.dry_run else "",
            actor,
            review.claimed_user,
            "; ".join(decision.problems) or decision.unchecked or "ok",
        )
        if review.dry_run:
            return
        if review.claimed_user:
            subject += f" claimed_user={review.claimed_user}"
        row = (actor, decision.action, subject, decision_digest(review, decision))
        deadline = self.config.deadline_s
        try:
            await asyncio.wait_for(asyncio.wrap_future(self._audit.submit(row)), timeout=deadline)
        except asyncio.TimeoutError:
            log.error(
                "admission %s: the decision was not audited within %g s (the store is slow; it "
                "stays queued)",
                review.uid,
                deadline,
            )
        except Exception as e:  # the driver's errors, whatever they are
            log.error("admission %s: the decision was not audited: %s", review.uid, e)


@router.post(
    "/v1/admission",
    responses={
        200: {"description": "an AdmissionReview with the response (allowed, status, warnings)"},
        **problems(400, 401, 403, 413),
    },
)
async def admission(request: Request) -> Response:
    """A ValidatingAdmissionWebhook: answers an AdmissionReview (admission.k8s.io/v1 or v1beta1)
    with the same apiVersion and the request's uid. A malformed review whose uid is readable is
    denied; 400 only for a body with no uid to answer to."""
    gate: Gatekeeper = request.app.state.admission
    channel: AdmissionChannel = request.app.state.admission_channel
    actor = channel.caller(gate.service, request)
    if isinstance(actor, Refusal):
        headers = {"WWW-Authenticate": "Bearer"} if actor.status == 401 else None
        return JSONResponse({"detail": actor.detail}, status_code=actor.status, headers=headers)
    try:
        review = parse_review(await request.body())
    except ReviewError as e:
        if e.answer_to is not None:
            return JSONResponse(malformed_response(e))
        return JSONResponse({"detail": e.diagnostics()}, status_code=400)
    answer, decision = await gate.review(review)
    return JSONResponse(answer, background=BackgroundTask(gate.audit, review, decision, actor))
