"""Concurrent step writes beyond the in-flight limit are combined into multi-row upserts; every
caller still gets its own write, and its own outcome."""

from __future__ import annotations

import asyncio
from typing import Any

from chainlit.context import init_http_context

from chainlit_orm import SQLDataLayer
from tests.sql.conftest import count_round_trips, new_id


def _step(tid: str, output: str, sid: str | None = None) -> dict[str, Any]:
    return {"id": sid or new_id(), "threadId": tid, "type": "assistant_message", "name": "bot",
            "output": output, "streaming": False, "metadata": {},
            "createdAt": "2026-01-01T00:00:00.000001Z"}


async def _outputs(layer: SQLDataLayer, tid: str) -> dict[str, str]:
    thread = await layer.get_thread(tid)
    assert thread is not None
    return {str(s["id"]): str(s["output"]) for s in thread["steps"]}


async def test_writes_beyond_the_limit_share_one_statement(sql_layer: SQLDataLayer) -> None:
    layer = sql_layer
    init_http_context()
    tid = new_id()
    await layer.update_thread(tid, name="combined")
    # SQLite has one writer: every write that waits for it is combined. Elsewhere writes beyond
    # 2 in flight are (a statement of many rows is one commit and one log flush).
    singles = 1 if layer.sql.dialect == "sqlite" else 2
    steps = [_step(tid, f"out {i}") for i in range(singles + 10)]
    await asyncio.gather(*(layer.create_step(s) for s in steps))  # warm the pool
    trips = count_round_trips(layer.sql)
    # the first writes run alone; the 8 queued behind them go out as one statement
    first = [dict(s, output=f"first {i}") for i, s in enumerate(steps[:singles + 8])]
    await asyncio.gather(*(layer.update_step(s) for s in first))
    assert trips.events == ["INSERT"] * (singles + 1)
    # statements carry a power of two rows (each size is a statement to compile and prepare):
    # a queue of 10 goes out as 8 + 2
    trips.reset()
    final = [dict(s, output=f"final {i}") for i, s in enumerate(steps)]
    await asyncio.gather(*(layer.update_step(s) for s in final))
    assert trips.events == ["INSERT"] * (singles + 2)
    assert await _outputs(layer, tid) == {s["id"]: s["output"] for s in final}


async def test_a_row_whose_thread_is_missing_does_not_fail_the_others(
    sql_layer: SQLDataLayer,
) -> None:
    layer = sql_layer
    init_http_context()
    tid, orphan_tid = new_id(), new_id()
    await layer.update_thread(tid, name="known")
    n = 6 if layer.sql.dialect == "sqlite" else 24
    steps = [_step(tid, f"out {i}") for i in range(n)]
    orphan = _step(orphan_tid, "written before its thread")
    # the orphan is queued among the others: the combined statement fails on its foreign key,
    # and each row is written alone, the orphan with a stub thread
    await asyncio.gather(*(layer.create_step(s) for s in [*steps[:n // 2], orphan,
                                                          *steps[n // 2:]]))
    assert await _outputs(layer, tid) == {s["id"]: s["output"] for s in steps}
    assert await _outputs(layer, orphan_tid) == {orphan["id"]: "written before its thread"}


async def test_repeated_writes_of_one_step_keep_the_last(sql_layer: SQLDataLayer) -> None:
    layer = sql_layer
    init_http_context()
    tid, sid = new_id(), new_id()
    await layer.update_thread(tid, name="repeated")
    await layer.create_step(_step(tid, "first", sid))
    n = 10 if layer.sql.dialect == "sqlite" else 40
    await asyncio.gather(*(layer.update_step(_step(tid, f"v{i}", sid)) for i in range(n)))
    final = (await _outputs(layer, tid))[sid]
    if layer.sql.dialect == "sqlite":
        # one writer: the writes reach the database in call order (a key is never repeated
        # within a statement; the repeats go out one per statement, in order)
        assert final == f"v{n - 1}"
    else:
        # concurrent connections give no order among the first writes; the row is one of them
        assert final in {f"v{i}" for i in range(n)}


async def test_a_small_pool_serves_concurrent_reads_and_writes(sql_url: str) -> None:
    """Connections kept between calls and SQLite's held writer stay within the pool: with two
    connections and a 3-second pool timeout, 40 concurrent reads and writes all complete."""
    layer = SQLDataLayer(sql_url, create_schema=True, pool_size=2, pool_timeout=3)
    try:
        init_http_context()
        tid = new_id()
        await layer.update_thread(tid, name="small pool")
        steps = [_step(tid, f"out {i}") for i in range(20)]
        await asyncio.gather(*(layer.create_step(s) for s in steps),
                             *(layer.get_thread(tid) for _ in range(20)))
        assert await _outputs(layer, tid) == {s["id"]: s["output"] for s in steps}
    finally:
        await layer.close()
