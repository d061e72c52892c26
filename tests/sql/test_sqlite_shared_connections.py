"""SQLite: reads share a few reader connections and writes share the writer, each connection
serving several callers at once (issue 19: a thread per caller slept between statements)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import sqlalchemy as sa

from chainlit_orm import SQLDataLayer
from chainlit_orm.layers.sql import SQLITE_SHARED_READERS
from chainlit_orm.layers.sqlexec import Statement
from tests.sql.conftest import new_id


def _step(tid: str, i: int) -> dict[str, object]:
    return {"id": new_id(), "threadId": tid, "type": "assistant_message", "name": "bot",
            "output": f"m{i}", "streaming": False, "metadata": {}}


def _slow(layer: SQLDataLayer, rows: int) -> Statement:
    """A read that keeps its connection's thread busy: a recursive count to ``rows``."""
    counter = sa.select(sa.literal(1).label("x")).cte("counter", recursive=True)
    counter = counter.union_all(sa.select((counter.c.x + 1).label("x")).where(counter.c.x < rows))
    return Statement(sa.select(sa.func.count().label("n")).select_from(counter),
                     layer.sql.auto.dialect, None)


async def _until(condition: object, what: str) -> None:
    for _ in range(1000):
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


async def test_32_concurrent_users_share_two_readers_and_one_writer(tmp_path: Path) -> None:
    layer = SQLDataLayer(f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}")
    try:
        tids = [new_id() for _ in range(32)]
        for i, tid in enumerate(tids):
            await layer.update_thread(tid, name=f"t{i}")
        steps = {tid: [_step(tid, i) for i in range(3)] for tid in tids}

        async def user(tid: str) -> list[str]:
            for step in steps[tid]:
                await layer.create_step(step)
            thread = await layer.get_thread(tid)
            assert thread is not None
            return sorted(str(s["id"]) for s in thread["steps"])

        got = await asyncio.gather(*(user(tid) for tid in tids))
        assert got == [sorted(str(s["id"]) for s in steps[tid]) for tid in tids]
        pool = layer.sql.raw
        assert SQLITE_SHARED_READERS == 2
        assert 1 <= len(pool._shared) <= 2
        assert all(reader.inflight == 0 for reader in pool._shared)
        assert pool._writer_state is not None and pool._writer_state.inflight == 0
        # a missing thread: one statement, the steps are not read
        assert await layer.get_thread(new_id()) is None
    finally:
        await layer.close()
    assert pool._shared == [] and pool._writer is None


async def test_a_cancelled_read_leaves_the_callers_sharing_its_connection_alone(
    tmp_path: Path,
) -> None:
    """A read cancelled while another caller's statement is queued on the same connection does
    not interrupt that connection (the interruption could stop the other caller's statement):
    the other caller gets its answer and the connection stays in use. A read cancelled alone on
    its connection retires it, as before."""
    layer = SQLDataLayer(f"sqlite+aiosqlite:///{tmp_path / 'cancel.db'}")
    try:
        tid = new_id()
        await layer.update_thread(tid, name="kept")
        pool = layer.sql.raw
        slow = _slow(layer, 300_000)

        async def read_slow() -> int:
            async with pool.connect() as conn:
                return int((await conn.fetch(slow, {}))[0]["n"])

        first = asyncio.create_task(read_slow())
        second = asyncio.create_task(read_slow())
        await _until(lambda: len(pool._shared) == 2
                     and all(r.inflight == 1 for r in pool._shared), "both readers busy")
        shared = pool._shared[0]
        third = asyncio.create_task(layer.get_thread(tid))  # queued behind the first read
        await _until(lambda: shared.inflight == 2, "a caller sharing the first reader")
        first.cancel()
        thread = await third
        assert thread is not None and thread["name"] == "kept"
        assert await second == 300_000
        assert first.cancelled()
        assert shared in pool._shared and shared.fairy.is_valid and not pool._retiring

        # alone on its connection: retired, and the next read runs on an open one
        alone = asyncio.create_task(read_slow())
        await _until(lambda: any(r.inflight == 1 for r in pool._shared), "a busy reader")
        busy = next(r for r in pool._shared if r.inflight == 1)
        alone.cancel()
        await asyncio.gather(alone, return_exceptions=True)
        assert busy not in pool._shared
        await pool.settle()
        assert not busy.fairy.is_valid
        again = await layer.get_thread(tid)
        assert again is not None and again["name"] == "kept"
    finally:
        await layer.close()
