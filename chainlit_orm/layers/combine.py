"""Combine concurrent single-row writes into one multi-row statement (group commit).

Why: under load, Chainlit writes many steps at once (every streaming message of every user), and
each one-row upsert costs a round trip, a statement and a commit on the server. While up to
``concurrency`` writes are in flight, a new write runs at once, alone, so a lone user waits for
nothing. Beyond that, writes queue here instead of in the connection pool, and each time a write
finishes, everything queued goes out as one multi-row statement. Every caller still returns only
after the statement that carries its row has committed, and gets its own outcome: if a combined
statement fails (one row's thread is not written yet, one value is refused), each of its rows is
written again alone, through the single-row path that handles those cases.

A key (the row's id) appears at most once per statement: PostgreSQL refuses an upsert that
touches a row twice, and the later write must win. A repeated key waits for the next statement.

A combined statement runs in a task of its own, outside every caller's deadline, so it gets one
of its own (``timeout``): a statement stuck on a dead network must not hold the combiner's
in-flight count for ever, or every later write would queue behind it after the fault cleared.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from chainlit_orm.errors import TimeoutExceededError

__all__ = ["WriteCombiner"]

logger = logging.getLogger(__name__)

C = TypeVar("C")


class WriteCombiner(Generic[C]):
    """Runs ``single(call)`` for each call while few are in flight, ``many(calls)`` for the
    calls that queued behind them. See the module docstring."""

    def __init__(
        self,
        single: Callable[[C], Awaitable[None]],
        many: Callable[[list[C]], Awaitable[None]],
        key: Callable[[C], Hashable],
        *,
        concurrency: int,
        max_rows: int = 32,
        timeout: float | None = None,
    ) -> None:
        self._single = single
        self._many = many
        self._key = key
        self._concurrency = max(1, concurrency)
        self._max_rows = max(1, max_rows)
        self._timeout = timeout
        self._inflight = 0
        self._pending: list[tuple[C, asyncio.Future[None]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def write(self, call: C) -> None:
        """Write ``call``; returns once it is committed, raises what writing it alone raises."""
        if self._inflight < self._concurrency and not self._pending:
            self._inflight += 1
            try:
                await self._single(call)
            finally:
                self._inflight -= 1
                self._drain()
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((call, future))
        self._drain()
        await future

    def _drain(self) -> None:
        """Start a combined statement for the queued calls while there is room in flight."""
        while self._pending and self._inflight < self._concurrency:
            # drop callers cancelled before their write started
            self._pending = [item for item in self._pending if not item[1].done()]
            chosen: list[int] = []
            keys: set[Hashable] = set()
            for i, (call, _) in enumerate(self._pending):
                key = self._key(call)
                if key not in keys:
                    keys.add(key)
                    chosen.append(i)
                    if len(chosen) == self._max_rows:
                        break
            if not chosen:
                return
            # a power of two rows: each size is a statement to build, compile and prepare on
            # every connection, so only log2(max_rows) sizes ever exist
            chosen = chosen[:1 << (len(chosen).bit_length() - 1)]
            taken = set(chosen)
            batch = [self._pending[i] for i in chosen]
            self._pending = [item for i, item in enumerate(self._pending) if i not in taken]
            self._inflight += 1
            task = asyncio.get_running_loop().create_task(self._flush(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush(self, batch: list[tuple[C, asyncio.Future[None]]]) -> None:
        try:
            if len(batch) > 1:
                try:
                    await self._bounded(self._many([call for call, _ in batch]))
                except TimeoutExceededError as exc:
                    # the network or the server is stuck: writing each row alone would only
                    # wait as long again (every caller's own deadline has passed by now)
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    return
                except Exception as exc:
                    # not swallowed: each row is written alone below and gets its own outcome
                    logger.debug("a combined write of %d rows failed (%s); writing them one "
                                 "by one", len(batch), type(exc).__name__)
                else:
                    for _, future in batch:
                        if not future.done():
                            future.set_result(None)
                    return
            outcomes = await asyncio.gather(
                *(self._bounded(self._single(call)) for call, _ in batch), return_exceptions=True)
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(None)
        except BaseException as exc:  # cancelled (the loop is closing): nobody waits in vain
            for _, future in batch:
                if not future.done():
                    if isinstance(exc, asyncio.CancelledError):
                        future.cancel()
                    else:
                        future.set_exception(exc)
            raise
        finally:
            self._inflight -= 1
            self._drain()

    async def _bounded(self, write: Awaitable[None]) -> None:
        """``write`` within ``timeout`` seconds (a :class:`TimeoutExceededError` after)."""
        if self._timeout is None:
            await write
            return
        try:
            async with asyncio.timeout(self._timeout):
                await write
        except TimeoutError as exc:
            if isinstance(exc, TimeoutExceededError):
                raise
            raise TimeoutExceededError(
                f"a combined write did not finish within the timeout of {self._timeout:g} s"
            ) from exc
