"""Group commit: the writes of requests that arrive together go to the database in one
transaction, and each request is answered only after that transaction has committed.

A request hands its item to :meth:`GroupCommit.submit` and waits. The first item of a quiet
moment starts a drain on the event loop; it runs after the callbacks already queued (the other
requests read in the same turn of the loop), so it finds them waiting too and writes them all
with one call of ``write``. Items that arrive while a write is in flight (PostgreSQL's writes run
on a worker thread) make the next batch. One commit then stands for many requests: SQLite's
per-transaction work and PostgreSQL's round trips and WAL flush are paid once per batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

Write = Callable[[Sequence[T]], Sequence[R]]
Run = Callable[[Write[T, R], Sequence[T]], Awaitable[Sequence[R]]]

__all__ = ["GroupCommit"]


class GroupCommit(Generic[T, R]):
    """Batches calls of ``write`` (one transaction per call, results in the order of its items).

    ``run(write, items)`` calls ``write``: right on the event loop, or on a worker thread.
    A batch whose write fails is retried item by item, so a bad item fails only its own request.
    """

    def __init__(self, write: Write[T, R], run: Run[T, R], *, max_batch: int = 256) -> None:
        self._write = write
        self._run = run
        self._max_batch = max_batch
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._drainer: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def submit(self, item: T) -> R:
        """Write ``item`` with whatever else is waiting; returns once it is committed.

        Raises:
            Exception: what the write of this item raised.
        """
        loop = asyncio.get_running_loop()
        if self._drainer is not None and self._loop is not loop:
            # Another event loop is draining (test clients run one loop per request).
            return (await self._run(self._write, [item]))[0]
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future))
        if self._drainer is None:
            self._loop = loop
            self._drainer = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                await self._commit(batch)
        except BaseException:  # cancelled at shutdown: nobody is left waiting
            for _, future in [*batch, *self._pending]:
                future.cancel()
            self._pending.clear()
            raise
        finally:
            self._drainer = None

    async def _commit(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._run(self._write, [item for item, _ in batch])
        except Exception as e:
            if len(batch) == 1:
                _settle(batch[0][1], error=e)
                return
            for item, future in batch:  # one at a time: each request gets its own outcome
                try:
                    result = (await self._run(self._write, [item]))[0]
                except Exception as single:
                    _settle(future, error=single)
                else:
                    _settle(future, result=result)
            return
        for (_, future), result in zip(batch, results, strict=True):
            _settle(future, result=result)


def _settle(
    future: asyncio.Future[R], *, result: R | None = None, error: Exception | None = None
) -> None:
    if future.done():  # the request was cancelled (client gone); its item is stored all the same
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]
