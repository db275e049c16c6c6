"""Group commit (lockd.server.groupcommit): requests that wait together are written together,
each gets its own result, and a failing item fails only its own request."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import pytest

from lockd.server.groupcommit import GroupCommit

T = TypeVar("T")


async def inline(write: Callable[[Sequence[int]], T], items: Sequence[int]) -> T:
    return write(items)


async def threaded(write: Callable[[Sequence[int]], T], items: Sequence[int]) -> T:
    return await asyncio.to_thread(write, items)


class Recorder:
    """A ``write`` that records its batches; items in ``bad`` make the whole batch fail."""

    def __init__(self, bad: frozenset[int] = frozenset()) -> None:
        self.batches: list[list[int]] = []
        self.bad = bad

    def __call__(self, items: Sequence[int]) -> list[str]:
        self.batches.append(list(items))
        wrong = sorted(self.bad & set(items))
        if wrong:
            raise ValueError(f"item {wrong[0]} is bad")
        return [f"stored {i}" for i in items]


Run = Callable[[Callable[[Sequence[int]], list[str]], Sequence[int]], Awaitable[list[str]]]


@pytest.mark.parametrize("run", [inline, threaded])
def test_requests_waiting_together_are_written_in_one_batch_in_order(run: Run) -> None:
    write = Recorder()
    commits: GroupCommit[int, str] = GroupCommit(write, run)

    async def main() -> list[str]:
        return await asyncio.gather(*(commits.submit(i) for i in range(8)))

    assert asyncio.run(main()) == [f"stored {i}" for i in range(8)]
    assert write.batches == [list(range(8))]


def test_items_arriving_during_a_write_make_the_next_batch() -> None:
    write = Recorder()
    commits: GroupCommit[int, str] = GroupCommit(write, threaded)

    async def main() -> list[str]:
        first = asyncio.ensure_future(commits.submit(0))
        await asyncio.sleep(0)  # the first write is now in flight on its thread
        rest = [asyncio.ensure_future(commits.submit(i)) for i in range(1, 4)]
        return await asyncio.gather(first, *rest)

    assert asyncio.run(main()) == [f"stored {i}" for i in range(4)]
    assert write.batches == [[0], [1, 2, 3]]


def test_a_batch_is_at_most_max_batch_items() -> None:
    write = Recorder()
    commits: GroupCommit[int, str] = GroupCommit(write, inline, max_batch=3)

    async def main() -> list[str]:
        return await asyncio.gather(*(commits.submit(i) for i in range(7)))

    assert asyncio.run(main()) == [f"stored {i}" for i in range(7)]
    assert write.batches == [[0, 1, 2], [3, 4, 5], [6]]


def test_a_failing_item_fails_only_its_own_request() -> None:
    write = Recorder(bad=frozenset({2}))
    commits: GroupCommit[int, str] = GroupCommit(write, inline)

    async def main() -> list[str | BaseException]:
        return await asyncio.gather(*(commits.submit(i) for i in range(4)), return_exceptions=True)

    results = asyncio.run(main())
    assert results[:2] == ["stored 0", "stored 1"]
    assert isinstance(results[2], ValueError)
    assert str(results[2]) == "item 2 is bad"
    assert results[3] == "stored 3"
    # the batch failed, then each item was written on its own
    assert write.batches == [[0, 1, 2, 3], [0], [1], [2], [3]]


def test_the_committer_works_again_after_a_failure() -> None:
    write = Recorder(bad=frozenset({0}))
    commits: GroupCommit[int, str] = GroupCommit(write, inline)

    async def main() -> str:
        with pytest.raises(ValueError, match="item 0 is bad"):
            await commits.submit(0)
        return await commits.submit(1)

    assert asyncio.run(main()) == "stored 1"


def test_a_cancelled_request_does_not_stop_the_others() -> None:
    write = Recorder()
    commits: GroupCommit[int, str] = GroupCommit(write, threaded)

    async def main() -> list[str]:
        first = asyncio.ensure_future(commits.submit(0))
        second = asyncio.ensure_future(commits.submit(1))
        await asyncio.sleep(0)
        first.cancel()  # its client went away; its item is written all the same
        with pytest.raises(asyncio.CancelledError):
            await first
        return [await second]

    assert asyncio.run(main()) == ["stored 1"]
    assert write.batches == [[0, 1]]
