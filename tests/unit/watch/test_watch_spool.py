"""The watch agent's spool: batches survive a restart, leave in order once, corrupt files are
quarantined with a reason (never dropped silently), and the bound compacts instead of losing
verdicts."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from lockd.errors import InputError
from lockd.model.fleet import FleetBatch, FleetContainer, FleetResult
from lockd.watch.spool import Spool, SpoolError, merge_batches

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def cid(n: int) -> str:
    return f"{n:064x}"


def result(n: int, verdict: str = "error", why: str = "probe timed out") -> FleetResult:
    return FleetResult(
        container=FleetContainer(
            id=cid(n), name=f"c{n}", image="app:1", image_id="sha256:" + "a" * 64
        ),
        verdict=verdict,  # type: ignore[arg-type]
        error=why if verdict == "error" else None,
        observed_at=T0,
    )


def batch_maker(
    spool: Spool, running: list[int], results: list[FleetResult] | None = None
) -> Callable[[int], FleetBatch]:
    def make(sequence: int) -> FleetBatch:
        return FleetBatch(
            host="node-1",
            agent=spool.agent,
            sequence=sequence,
            sent_at=T0,
            interval_s=60,
            running=[cid(n) for n in running],
            results=results or [],
        )

    return make


def add(spool: Spool, running: list[int], results: list[FleetResult] | None = None) -> int:
    return spool.append(batch_maker(spool, running, results)).sequence


def test_batches_survive_a_restart_and_leave_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    assert [add(spool, [1]), add(spool, [1, 2], [result(2)]), add(spool, [2])] == [1, 2, 3]
    again = Spool(tmp_path)
    assert again.agent == spool.agent
    assert again.sequences() == [1, 2, 3]
    loaded = again.load(1)
    assert loaded is not None and loaded.running == [cid(1)]
    again.done(1)
    assert again.sequences() == [2, 3]
    # numbers are never reused, even once everything was delivered
    again.done(2)
    again.done(3)
    assert add(Spool(tmp_path), [1]) == 4


def test_a_corrupt_batch_is_quarantined_with_its_reason(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    add(spool, [1])
    add(spool, [1])
    add(spool, [1])
    (tmp_path / "queue" / "0000000000000000002.json").write_bytes(b'{"host": "node-1", "ag')
    (tmp_path / "queue" / "notes.txt").write_text("hello")
    (tmp_path / "queue" / ".0000000000000000009.json.x1.tmp").write_text("{")  # a cut write
    reopened = Spool(tmp_path)
    assert reopened.sequences() == [1, 3]
    assert reopened.quarantined == 2
    why = (tmp_path / "quarantine" / "0000000000000000002.json.why").read_text()
    assert why.startswith("not a FleetBatch: (document): Invalid JSON")
    assert (tmp_path / "quarantine" / "0000000000000000002.json").read_bytes().startswith(b"{")
    assert (tmp_path / "quarantine" / "notes.txt.why").read_text() == "not a batch file name\n"
    assert not list((tmp_path / "queue").glob(".*.tmp"))
    # numbering goes on past the quarantined one
    assert add(reopened, [1]) == 4


def test_a_batch_file_of_another_sequence_or_agent_is_quarantined(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    add(spool, [1])
    add(spool, [1])
    queue = tmp_path / "queue"
    (queue / "0000000000000000002.json").write_bytes(
        (queue / "0000000000000000001.json").read_bytes()
    )
    assert spool.load(2) is None
    why = (tmp_path / "quarantine" / "0000000000000000002.json.why").read_text()
    assert why == f"holds sequence 1 of agent {spool.agent}, not 2 of {spool.agent}\n"
    assert spool.sequences() == [1]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "agent",
            "not-hex\n",
            "agent: corrupt agent id 'not-hex' (expected 32 hex digits); the batches queued "
            "here cannot be attributed: move {dir} aside to start as a new agent",
        ),
        (
            "sequence",
            "12x\n",
            "sequence: corrupt sequence number '12x'; the service would ignore batches "
            "numbered again from an old point: move {dir} aside to start as a new agent",
        ),
    ],
)
def test_corrupt_state_files_are_a_clear_error(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    Spool(tmp_path)
    (tmp_path / name).write_text(content)
    with pytest.raises(SpoolError) as raised:
        Spool(tmp_path)
    assert str(raised.value) == f"{tmp_path}/" + message.format(dir=tmp_path)
    assert isinstance(raised.value, InputError)
    assert raised.value.exit_code == 2


def test_a_spool_path_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "spool"
    path.write_text("")
    with pytest.raises(SpoolError) as raised:
        Spool(path)
    assert str(raised.value).startswith(f"{path}: cannot make the spool directory: ")


def test_past_the_bound_heartbeats_go_first_then_batches_merge(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_batches=3)
    add(spool, [1, 2], [result(1, why="first")])  # 1: a verdict
    add(spool, [1, 2])  # 2: heartbeat
    add(spool, [1, 2])  # 3: heartbeat
    add(spool, [1, 2])  # 4: over: the oldest heartbeat (2) goes
    assert spool.sequences() == [1, 3, 4]
    assert spool.dropped == 1
    add(spool, [1, 2], [result(1, why="second"), result(2)])  # 5: heartbeat 3 goes
    add(spool, [1, 2], [result(3)])  # 6: heartbeat 4 goes
    assert spool.sequences() == [1, 5, 6]
    add(spool, [1, 2], [result(4)])  # 7: no heartbeat left: 1 merges into 5
    assert spool.sequences() == [5, 6, 7]
    assert spool.merged == 1
    merged = spool.load(5)
    assert merged is not None
    spool.release()
    # batch 1's verdict for container 1 is superseded by batch 5's; none is lost otherwise
    assert {r.container.id: r.error for r in merged.results} == {
        cid(1): "second",
        cid(2): "probe timed out",
    }
    assert spool.lost_results == 0


def test_the_batch_being_delivered_is_not_compacted(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_batches=2)
    add(spool, [1])
    assert spool.load(1) is not None  # busy: on its way to the service
    add(spool, [1])
    add(spool, [1])
    assert spool.sequences() == [1, 3]
    spool.done(1)
    assert spool.sequences() == [3]


def test_merge_keeps_every_container_once_newer_winning() -> None:
    older = FleetBatch(
        host="h",
        agent="a" * 32,
        sequence=1,
        sent_at=T0,
        interval_s=60,
        running=[cid(1), cid(2)],
        results=[result(1, why="old"), result(2, why="only old")],
    )
    newer = older.model_copy(
        update={"sequence": 2, "running": [cid(1)], "results": [result(1, why="new")]}
    )
    merged, lost = merge_batches(older, newer)
    assert lost == 0
    assert merged.sequence == 2
    assert merged.running == [cid(1)]
    assert [(r.container.id, r.error) for r in merged.results] == [
        (cid(2), "only old"),
        (cid(1), "new"),
    ]


# --- whose spool: whoever may write there could send verdicts as this agent -----------------------

TRUST_HINT = (
    "whoever may write there could send verdicts as this agent; make it this user's, writable "
    "by nobody else and no symbolic link"
)


@pytest.mark.parametrize(("inner", "mode"), [("", 0o777), ("", 0o1777), ("queue", 0o770)])
def test_a_spool_others_can_write_is_refused(tmp_path: Path, inner: str, mode: int) -> None:
    spool = tmp_path / "spool"
    Spool(spool)
    (spool / inner).chmod(mode)
    with pytest.raises(SpoolError) as raised:
        Spool(spool)
    where = spool / inner if inner else spool
    assert str(raised.value) == (
        f"{where}: not trusted as the spool ({where} is writable by others (mode "
        f"{mode:04o})): {TRUST_HINT}"
    )
    assert raised.value.exit_code == 2


def test_a_spool_that_is_a_symbolic_link_is_refused(tmp_path: Path) -> None:
    Spool(tmp_path / "real")
    os.symlink(tmp_path / "real", tmp_path / "spool")
    with pytest.raises(SpoolError) as raised:
        Spool(tmp_path / "spool")
    spool = tmp_path / "spool"
    assert str(raised.value) == (
        f"{spool}: not trusted as the spool ({spool} is a symbolic link): {TRUST_HINT}"
    )


@pytest.mark.usefixtures("root_required")  # chown
def test_a_spool_of_another_user_is_refused(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    Spool(spool)
    os.chown(spool / "queue", 65534, 65534)
    with pytest.raises(SpoolError) as raised:
        Spool(spool)
    assert str(raised.value) == (
        f"{spool / 'queue'}: not trusted as the spool ({spool / 'queue'} is owned by uid "
        f"65534): {TRUST_HINT}"
    )


def test_a_state_file_that_is_a_symbolic_link_is_not_followed(tmp_path: Path) -> None:
    Spool(tmp_path)
    elsewhere = tmp_path.parent / f"{tmp_path.name}-agent"
    elsewhere.write_text("f" * 32 + "\n")
    (tmp_path / "agent").unlink()
    os.symlink(elsewhere, tmp_path / "agent")
    with pytest.raises(SpoolError) as raised:
        Spool(tmp_path)
    assert str(raised.value) == f"{tmp_path}/agent: cannot read the agent id: a symbolic link"


def _planted(spool: Spool, tmp_path: Path, how: str) -> Path:
    """A well-formed batch of this agent placed in the queue as a link, or with an unsafe
    owner or mode."""
    good = spool.queue / f"{add(spool, [1], [result(1)]):019d}.json"
    if how == "symbolic link":
        target = tmp_path / "elsewhere.json"
        os.replace(good, target)
        os.symlink(target, good)
    elif how == "writable by others":
        good.chmod(0o666)
    else:
        os.chown(good, 65534, 65534)
    return good


@pytest.mark.parametrize(
    ("how", "why"),
    [
        ("symbolic link", "a symbolic link"),
        ("writable by others", "another user's, or writable by others"),
    ],
)
def test_a_batch_file_that_is_a_link_or_writable_by_others_is_quarantined_unsent(
    tmp_path: Path, how: str, why: str
) -> None:
    _quarantined_unsent(tmp_path, how, why)


@pytest.mark.usefixtures("root_required")  # chown
def test_a_batch_file_of_another_user_is_quarantined_unsent(tmp_path: Path) -> None:
    _quarantined_unsent(tmp_path, "another user's", "another user's, or writable by others")


def _quarantined_unsent(tmp_path: Path, how: str, why: str) -> None:
    spool = Spool(tmp_path / "spool")
    path = _planted(spool, tmp_path, how)
    again = Spool(tmp_path / "spool")
    assert again.sequences() == []
    assert again.quarantined == 1
    note = (tmp_path / "spool" / "quarantine" / (path.name + ".why")).read_text()
    assert note == f"cannot be read: {why}\n"
