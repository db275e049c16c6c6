"""The fleet contract between the watch agent (``lockd watch``) and the service: what an agent
pushes (:class:`FleetBatch`), what the service answers (:class:`FleetAck`), what
``GET /v1/fleet`` shows (:class:`FleetView`), and the webhook's payload
(:class:`TransitionEvent`). Pure: models and the rules for transitions, stale hosts and the
``lockd status`` verdict; the service stores, the agent observes.

A transition is a result whose verdict differs from the container's current one (a container's
first result is a transition from ``none``); transitions to ``fail`` or ``unrecorded`` fire the
webhook.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal, get_args

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from lockd.model.base import Digest, Hex64
from lockd.model.report import Report

Verdict = Literal["pass", "fail", "unrecorded", "error"]
VERDICTS: tuple[Verdict, ...] = get_args(Verdict)
Previous = Literal["none", "pass", "fail", "unrecorded", "error"]
HostState = Literal["ok", "stale"]
HOST_STATES: tuple[HostState, ...] = get_args(HostState)
ALERTING: frozenset[str] = frozenset({"fail", "unrecorded"})  # transitions that fire the webhook

MAX_RUNNING = 10_000  # containers one agent may watch
MAX_RESULTS = 1_000  # results in one batch (an agent splits a bigger pass over several)
MAX_FINDINGS = 200
MAX_LABELS = 256
SIGNATURE_HEADER = "X-Lockd-Signature"  # "sha256=<hex HMAC-SHA256 of the body>"
EVENT_HEADER = "X-Lockd-Event"  # the event id, for receivers that deduplicate

HostName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,253}$")]
AgentId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]


def _printable(text: str) -> str:
    """Control characters replaced (U+FFFD): these lines come from inside containers and end
    up on terminals; replacing keeps one odd line from blocking an agent's whole batch."""
    return _CONTROL.sub("\ufffd", text)


def _printable_lines(text: str) -> str:
    return _CONTROL_BUT_LINES.sub("\ufffd", text)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


_Printable = AfterValidator(_printable)
# Text from the agent's host or from inside containers: bounded, control characters replaced.
Line = Annotated[str, StringConstraints(min_length=1, max_length=1024), _Printable]
ContainerName = Annotated[str, StringConstraints(min_length=1, max_length=256), _Printable]
PolicyLabel = Annotated[str, StringConstraints(min_length=1, max_length=256), _Printable]
Text = Annotated[  # several lines allowed (tabs and newlines)
    str, StringConstraints(min_length=1, max_length=4096), AfterValidator(_printable_lines)
]
LabelKey = Annotated[str, StringConstraints(min_length=1, max_length=256)]
LabelValue = Annotated[str, StringConstraints(max_length=4096)]


def _in_utc(when: dt.datetime) -> dt.datetime:
    try:
        return when.astimezone(dt.timezone.utc)
    except OverflowError:
        raise ValueError("the time is out of range once in UTC") from None


UtcTime = Annotated[AwareDatetime, AfterValidator(_in_utc)]

__all__ = [
    "ALERTING",
    "EVENT_HEADER",
    "SIGNATURE_HEADER",
    "VERDICTS",
    "FleetAck",
    "FleetBatch",
    "FleetContainer",
    "FleetContainerView",
    "FleetHostView",
    "FleetResult",
    "FleetView",
    "Transition",
    "TransitionEvent",
    "fleet_ok",
    "host_state",
    "is_transition",
    "render_fleet",
    "sign",
    "summary",
    "timestamp",
    "transitions",
]


def timestamp(when: dt.datetime) -> str:
    """RFC 3339, UTC, microseconds: how the service keeps times (text that sorts by time)."""
    u = when.astimezone(dt.timezone.utc)
    return (
        f"{u.year:04d}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:{u.second:02d}"
        f".{u.microsecond:06d}Z"
    )


def parse_timestamp(text: str) -> dt.datetime:
    """A time the service wrote with :func:`timestamp`."""
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc)


class _In(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


# --- agent -> service ------------------------------------------------------------------------


class FleetContainer(_In):
    """A running container, as the agent sees it on its host."""

    id: Hex64 = Field(description="the full container id (64 hex digits)")
    name: ContainerName
    image: Line = Field(description="the image reference the container was started from")
    image_id: Digest = Field(description="the image's id, sha256:<hex>")
    labels: Annotated[dict[LabelKey, LabelValue], Field(max_length=MAX_LABELS)] = {}


class FleetResult(_In):
    """A new verdict for one container. ``pass`` and ``fail`` carry the full report (stored as a
    verification); ``error`` carries why; ``unrecorded`` has neither (no manifest for the
    image)."""

    container: FleetContainer
    verdict: Verdict
    manifest_digest: Digest | None = None
    policy: PolicyLabel = "default"
    findings: Annotated[list[Line], Field(max_length=MAX_FINDINGS)] = []
    report: Report | None = None
    error: Text | None = None
    observed_at: UtcTime

    @model_validator(mode="after")
    def _consistent(self) -> FleetResult:
        if self.verdict in ("pass", "fail"):
            if self.report is None:
                raise ValueError(f"a {self.verdict!r} result carries its 'report'")
            if self.report.verified != (self.verdict == "pass"):
                raise ValueError(
                    f"verdict {self.verdict!r} disagrees with the report "
                    f"(verified: {str(self.report.verified).lower()})"
                )
        elif self.report is not None:
            raise ValueError(f"an {self.verdict!r} result carries no 'report'")
        if (self.verdict == "error") != (self.error is not None):
            raise ValueError("'error' is given with verdict 'error', and only then")
        if self.verdict == "unrecorded" and self.manifest_digest is not None:
            raise ValueError("an 'unrecorded' result has no 'manifest_digest'")
        return self


class FleetBatch(_In):
    """One push of an agent: the containers it watches now and the verdicts that are new."""

    host: HostName
    agent: AgentId = Field(description="the agent's spool id (32 hex), stable across restarts")
    sequence: Annotated[int, Field(ge=1, le=2**62)] = Field(
        description="per agent, strictly increasing; a batch at or below the last applied one "
        "is acknowledged and ignored"
    )
    sent_at: UtcTime
    interval_s: Annotated[int, Field(ge=1, le=86_400)]
    running: Annotated[list[Hex64], Field(max_length=MAX_RUNNING)] = Field(
        description="every container the agent watches now; the others of this host are removed"
    )
    results: Annotated[list[FleetResult], Field(max_length=MAX_RESULTS)] = []

    @field_validator("running")
    @classmethod
    def _unique_running(cls, running: list[str]) -> list[str]:
        if len(set(running)) != len(running):
            raise ValueError("a container id is listed twice")
        return running

    @model_validator(mode="after")
    def _one_result_each(self) -> FleetBatch:
        seen: set[str] = set()
        for result in self.results:
            if result.container.id in seen:
                raise ValueError(f"container {result.container.id} has two results")
            seen.add(result.container.id)
        return self


class FleetAck(_Out):
    applied: bool = Field(description="false: a redelivered batch, nothing changed")
    sequence: int
    verifications: list[int] = Field(description="ids of the reports stored from this batch")


# --- GET /v1/fleet ---------------------------------------------------------------------------


class FleetContainerView(_Out):
    id: str
    name: str
    image: str
    image_id: str
    labels: dict[str, str]
    manifest_digest: str | None
    policy: str
    verdict: Verdict
    since: str = Field(description="when the verdict last changed")
    checked_at: str = Field(description="when the latest verdict was observed")
    findings: list[str]
    error: str | None
    verification_id: int | None


class FleetHostView(_Out):
    host: str
    agent: str
    last_seen: str
    interval_s: int
    state: HostState
    containers: list[FleetContainerView]


class FleetView(_Out):
    generated_at: str
    stale_after_s: int
    hosts: list[FleetHostView]


# --- the webhook ----------------------------------------------------------------------------


class TransitionEvent(_Out):
    """The webhook's JSON body: one transition of one container. ``id`` is unique and stable
    across retries (also sent as the X-Lockd-Event header)."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    id: int
    type: Literal["fleet.transition"] = "fleet.transition"
    host: str
    container: dict[str, str] = Field(description='{"id", "name"}')
    image: str
    image_id: str
    from_: Previous = Field(alias="from")
    to: Verdict
    findings: list[str]
    manifest_digest: str | None
    verification_id: int | None
    at: str = Field(description="when the agent observed the new verdict")

    def body(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode("utf-8")


def sign(secret: str, body: bytes) -> str:
    """The X-Lockd-Signature value: ``sha256=`` and the hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


# --- rules ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transition:
    container: str
    before: Previous
    after: Verdict

    @property
    def alerts(self) -> bool:
        """Whether this transition fires the webhook."""
        return self.after in ALERTING


def is_transition(before: str | None, after: str) -> bool:
    return before != after


def transitions(current: Mapping[str, str], results: Sequence[FleetResult]) -> list[Transition]:
    """The results of a batch that change a container's verdict, given each known container's
    current verdict (``current``: container id -> verdict)."""
    found = []
    for result in results:
        before = current.get(result.container.id)
        if is_transition(before, result.verdict):
            previous: Previous = before if before in VERDICTS else "none"
            found.append(Transition(result.container.id, previous, result.verdict))
    return found


def host_state(last_seen: dt.datetime, now: dt.datetime, stale_after_s: float) -> HostState:
    return "stale" if (now - last_seen).total_seconds() > stale_after_s else "ok"


def fleet_ok(view: FleetView) -> bool:
    """``lockd status``'s verdict: every host reports and every container passes."""
    return all(
        host.state == "ok" and all(c.verdict == "pass" for c in host.containers)
        for host in view.hosts
    )


def summary(view: FleetView) -> str:
    """One line: hosts (stale ones) and containers by verdict."""
    stale = sum(host.state == "stale" for host in view.hosts)
    verdicts = [c.verdict for host in view.hosts for c in host.containers]
    counts = ", ".join(f"{verdicts.count(v)} {v}" for v in VERDICTS if v in verdicts)
    hosts = f"{len(view.hosts)} host{'s' if len(view.hosts) != 1 else ''}"
    return (
        f"{hosts} ({stale} stale), {len(verdicts)} container{'s' if len(verdicts) != 1 else ''}"
        + (f": {counts}" if counts else "")
    )


def render_fleet(view: FleetView) -> str:
    """The fleet as a plain text table, one line per container (a host without containers
    gets a line of its own)."""
    header = ("HOST", "STATE", "CONTAINER", "IMAGE", "VERDICT", "SINCE", "FINDINGS")
    rows: list[tuple[str, ...]] = []
    for host in view.hosts:
        if not host.containers:
            rows.append((host.host, host.state, "-", "-", "-", "-", ""))
        for c in host.containers:
            why = c.error if c.verdict == "error" and c.error else "; ".join(c.findings)
            why = " ".join(why.split())  # an error's lines on one line
            rows.append(
                (host.host, host.state, c.name, c.image, c.verdict, c.since[:19] + "Z", why)
            )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, _clip(row[-1])]).rstrip())
    return "\n".join(lines)


def _clip(text: str, width: int = 120) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
