"""Coalescing the daemon's container events: a flood costs one look per container."""

from __future__ import annotations

from typing import Any

import pytest

from lockd.watch.events import RESYNC, Coalescer, event_filters
from lockd.watch.options import Selector

A = "a" * 64
B = "b" * 64


def event(action: str, container: str = A, **extra: Any) -> dict[str, Any]:
    return {"Type": "container", "Action": action, "Actor": {"ID": container}, **extra}


def test_a_flood_for_one_container_is_one_change_decided_by_the_last_event() -> None:
    gathered = Coalescer()
    for _ in range(5000):
        assert gathered.add(event("start"))
        assert gathered.add(event("die"))
    gathered.add(event("start"))
    changes = gathered.take()
    assert changes.up == {A}
    assert changes.down == frozenset()
    assert changes.events == 10001
    assert not changes.resync
    assert not gathered  # taken: empty again
    assert gathered.take().events == 0


def test_many_containers_each_once() -> None:
    gathered = Coalescer()
    ids = [f"{n:064x}" for n in range(1000)]
    for container in ids:
        gathered.add(event("start", container))
        gathered.add(event("rename", container))
    for container in ids[:10]:
        gathered.add(event("destroy", container))
    changes = gathered.take()
    assert changes.up == set(ids[10:])
    assert changes.down == set(ids[:10])
    assert changes.destroyed == set(ids[:10])


def test_stopped_is_not_removed() -> None:
    gathered = Coalescer()
    gathered.add(event("pause", A))
    gathered.add(event("die", B))
    gathered.add(event("destroy", B))  # `docker rm -f`: kill, die, destroy
    changes = gathered.take()
    assert changes.down == {A, B}
    assert changes.destroyed == {B}


def test_resync_asks_for_a_full_list() -> None:
    gathered = Coalescer()
    assert not gathered
    gathered.add(RESYNC)
    assert gathered
    assert gathered.take().resync
    assert not gathered.take().resync


@pytest.mark.parametrize(
    "bad",
    [
        None,
        "start",
        [],
        {},
        {"Type": "image", "Action": "pull", "Actor": {"ID": A}},
        event("exec_start: python3 -c import sys"),
        event("exec_die"),
        event("start", container="abc"),  # not a full id
        {"Type": "container", "Action": "start", "Actor": "not-a-dict"},
        {"Type": "container", "Action": "start", "Actor": {"ID": 12}},
    ],
)
def test_events_that_are_not_about_a_container_start_or_stop_are_ignored(bad: object) -> None:
    gathered = Coalescer()
    assert gathered.add(bad) is False
    assert not gathered


def test_old_style_events_are_understood() -> None:
    gathered = Coalescer()
    assert gathered.add({"status": "die", "id": B})
    assert gathered.take().down == {B}


def test_the_daemon_filters_events_by_label() -> None:
    filters = event_filters((Selector("team", "ml"), Selector("gpu")))
    assert filters["type"] == ["container"]
    assert filters["label"] == ["team=ml", "gpu"]
    assert "exec_start" not in filters["event"] and "start" in filters["event"]
