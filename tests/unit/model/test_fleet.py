"""lockd.model.fleet (pure): the contract's models, transitions, stale hosts, the `lockd status`
verdict and table, the webhook's body and signature; the service's fleet settings."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from typing import Any

import pytest
from pydantic import ValidationError

from lockd.errors import InputError
from lockd.model.fleet import (
    FleetBatch,
    FleetContainerView,
    FleetHostView,
    FleetResult,
    FleetView,
    Transition,
    TransitionEvent,
    fleet_ok,
    host_state,
    parse_timestamp,
    render_fleet,
    sign,
    summary,
    timestamp,
    transitions,
)
from lockd.server.settings import Settings
from lockd.server.webhook import backoff_s

UTC = dt.timezone.utc
IMAGE = "sha256:" + "1" * 64
REPORT = {"verified": False, "target": {}, "manifest": {}, "checks": []}


def result(n: int, verdict: str, **changes: Any) -> FleetResult:
    body: dict[str, Any] = {
        "container": {"id": f"{n:064x}", "name": f"web-{n}", "image": "app:1", "image_id": IMAGE},
        "verdict": verdict,
        "observed_at": "2030-01-01T00:00:00Z",
    }
    if verdict in ("pass", "fail"):
        body["report"] = {**REPORT, "verified": verdict == "pass"}
    if verdict == "error":
        body["error"] = "probe hung"
    body.update(changes)
    return FleetResult.model_validate(body)


def test_transitions_are_changes_of_verdict_and_first_verdicts() -> None:
    current = {f"{1:064x}": "pass", f"{2:064x}": "fail"}
    found = transitions(
        current, [result(1, "pass"), result(2, "pass"), result(3, "unrecorded"), result(4, "fail")]
    )
    assert found == [
        Transition(f"{2:064x}", "fail", "pass"),
        Transition(f"{3:064x}", "none", "unrecorded"),
        Transition(f"{4:064x}", "none", "fail"),
    ]
    assert [t.alerts for t in found] == [False, True, True]
    assert not Transition("x", "fail", "error").alerts


def test_a_host_is_stale_only_after_the_limit() -> None:
    seen = dt.datetime(2030, 1, 1, tzinfo=UTC)
    assert host_state(seen, seen + dt.timedelta(seconds=180), 180) == "ok"
    assert host_state(seen, seen + dt.timedelta(seconds=180.001), 180) == "stale"


def test_timestamps_sort_as_text_and_read_back() -> None:
    early = dt.datetime(1, 1, 1, tzinfo=UTC)
    late = dt.datetime(2030, 6, 1, 12, 0, 0, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert timestamp(early) == "0001-01-01T00:00:00.000000Z"
    assert timestamp(late) == "2030-06-01T10:00:00.000005Z"
    assert parse_timestamp(timestamp(late)) == late
    assert timestamp(early) < timestamp(late)


def test_results_must_be_consistent() -> None:
    with pytest.raises(ValidationError, match="a 'fail' result carries its 'report'"):
        result(1, "fail", report=None)
    with pytest.raises(ValidationError, match="an 'error' result carries no 'report'"):
        result(1, "error", report=REPORT)
    with pytest.raises(ValidationError, match="'error' is given with verdict 'error'"):
        result(1, "pass", error="why")
    with pytest.raises(ValidationError, match="the time is out of range once in UTC"):
        result(1, "unrecorded", observed_at="0001-01-01T00:00:00+01:00")
    assert result(1, "error").error == "probe hung"


def test_text_from_containers_has_its_control_characters_replaced() -> None:
    odd = result(1, "error", error="line 1\nline\t2\x1b[0m", findings=["a\x00b", "c\x9bd"])
    assert odd.error == "line 1\nline\t2\ufffd[0m"
    assert odd.findings == ["a\ufffdb", "c\ufffdd"]
    with pytest.raises(ValidationError, match="at most 1024 characters"):
        result(1, "fail", findings=["x" * 1025])


def test_a_batch_serializes_to_what_the_service_reads() -> None:
    batch = FleetBatch(
        host="node-1",
        agent="0" * 32,
        sequence=1,
        sent_at=dt.datetime(2030, 1, 1, tzinfo=UTC),
        interval_s=60,
        running=[f"{1:064x}"],
        results=[result(1, "fail", findings=["packages: numpy changed"])],
    )
    again = FleetBatch.model_validate_json(batch.model_dump_json(exclude_none=True))
    assert again == batch
    with pytest.raises(ValidationError, match="has two results"):
        FleetBatch.model_validate({**batch.model_dump(), "results": [result(1, "pass")] * 2})


def view(*hosts: tuple[str, str, list[tuple[str, str]]]) -> FleetView:
    return FleetView(
        generated_at="2030-01-01T00:00:00.000000Z",
        stale_after_s=180,
        hosts=[
            FleetHostView(
                host=name,
                agent="0" * 32,
                last_seen="2030-01-01T00:00:00.000000Z",
                interval_s=60,
                state=state,  # type: ignore[arg-type]
                containers=[
                    FleetContainerView(
                        id="c" * 64,
                        name=cname,
                        image="app:1",
                        image_id=IMAGE,
                        labels={},
                        manifest_digest=None,
                        policy="default",
                        verdict=verdict,  # type: ignore[arg-type]
                        since="2030-01-01T00:00:00.000000Z",
                        checked_at="2030-01-01T00:00:00.000000Z",
                        findings=["packages: numpy changed"] if verdict == "fail" else [],
                        error="probe hung" if verdict == "error" else None,
                        verification_id=None,
                    )
                    for cname, verdict in containers
                ],
            )
            for name, state, containers in hosts
        ],
    )


def test_the_fleet_is_ok_only_when_everything_passes_and_reports() -> None:
    assert fleet_ok(view())
    assert fleet_ok(view(("n1", "ok", [("a", "pass")]), ("n2", "ok", [])))
    assert not fleet_ok(view(("n1", "ok", [("a", "pass"), ("b", "unrecorded")])))
    assert not fleet_ok(view(("n1", "ok", [("a", "error")])))
    assert not fleet_ok(view(("n1", "stale", [("a", "pass")])))


def test_the_table_has_a_line_per_container() -> None:
    fleet = view(
        ("node-1", "ok", [("web-1", "pass"), ("web-2", "fail"), ("web-3", "error")]),
        ("node-2", "stale", []),
    )
    assert render_fleet(fleet).splitlines() == [
        "HOST    STATE  CONTAINER  IMAGE  VERDICT  SINCE                 FINDINGS",
        "node-1  ok     web-1      app:1  pass     2030-01-01T00:00:00Z",
        "node-1  ok     web-2      app:1  fail     2030-01-01T00:00:00Z  packages: numpy changed",
        "node-1  ok     web-3      app:1  error    2030-01-01T00:00:00Z  probe hung",
        "node-2  stale  -          -      -        -",
    ]
    assert summary(fleet) == "2 hosts (1 stale), 3 containers: 1 pass, 1 fail, 1 error"
    assert summary(view(("n", "ok", [("a", "pass")]))) == "1 host (0 stale), 1 container: 1 pass"


def test_the_webhook_body_and_its_signature() -> None:
    event = TransitionEvent(
        id=7,
        host="node-1",
        container={"id": "c" * 64, "name": "web-1"},
        image="app:1",
        image_id=IMAGE,
        from_="pass",
        to="fail",
        findings=["packages: numpy changed"],
        manifest_digest=None,
        verification_id=3,
        at="2030-01-01T00:00:00.000000Z",
    )
    body = event.body()
    assert json.loads(body) == {
        "id": 7,
        "type": "fleet.transition",
        "host": "node-1",
        "container": {"id": "c" * 64, "name": "web-1"},
        "image": "app:1",
        "image_id": IMAGE,
        "from": "pass",
        "to": "fail",
        "findings": ["packages: numpy changed"],
        "manifest_digest": None,
        "verification_id": 3,
        "at": "2030-01-01T00:00:00.000000Z",
    }
    assert sign("k", body) == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff_s(n, 1.0, 10.0) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff_s(10_000, 0.5, 300.0) == 300.0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LOCKD_STALE_AFTER_S": "soon"}, "LOCKD_STALE_AFTER_S='soon': give a number"),
        ({"LOCKD_STALE_AFTER_S": "0"}, "LOCKD_STALE_AFTER_S: Input should be greater than 0"),
        (
            {"LOCKD_WEBHOOK_MAX_ATTEMPTS": "2.5"},
            "LOCKD_WEBHOOK_MAX_ATTEMPTS: Input should be a valid integer, got a number with a "
            "fractional part",
        ),
        (
            {"LOCKD_WEBHOOK_URL": "file:///etc/passwd"},
            "LOCKD_WEBHOOK_URL 'file:///etc/passwd': give an http:// or https:// URL with a host",
        ),
    ],
)
def test_bad_fleet_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(InputError) as caught:
        Settings.from_env({"LOCKD_DATABASE_URL": "sqlite:////tmp/x.db", **env})
    assert str(caught.value) == message


def test_fleet_settings_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "LOCKD_DATABASE_URL": "sqlite:////tmp/x.db",
            "LOCKD_STALE_AFTER_S": "600",
            "LOCKD_WEBHOOK_URL": "https://hooks.example/lockd",
            "LOCKD_WEBHOOK_SECRET": "s3cret",
            "LOCKD_WEBHOOK_BACKOFF_S": "0.5",
        }
    )
    assert (settings.stale_after_s, settings.webhook_url, settings.webhook_backoff_s) == (
        600,
        "https://hooks.example/lockd",
        0.5,
    )
    assert "s3cret" not in repr(settings)
    defaults = Settings.from_env({"LOCKD_DATABASE_URL": "sqlite:////tmp/x.db"})
    assert (defaults.stale_after_s, defaults.webhook_url) == (180, None)
