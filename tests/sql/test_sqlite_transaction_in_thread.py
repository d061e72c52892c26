"""SQLite runs a user message's transaction (activity bump, stub thread, step) in one hop to the
connection's thread (``RawConnection.transaction_in_thread``). It must stay one transaction: a
statement that fails inside it leaves nothing of the others, the error reaches the caller typed,
and the connection is usable afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from chainlit.context import init_http_context

from chainlit_orm import SQLDataLayer, migrate
from chainlit_orm.errors import ChainlitORMError
from tests.sql.conftest import new_id
from tests.sql.test_round_trips import _step


@pytest.fixture
async def layer(tmp_path: Path) -> AsyncIterator[SQLDataLayer]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'one_hop.sqlite'}"
    await migrate(url)
    instance = SQLDataLayer(url)
    yield instance
    await instance.close()


async def _fail_steps_named_boom(layer: SQLDataLayer) -> None:
    async with layer.sql.engine.begin() as conn:
        await conn.exec_driver_sql(
            "CREATE TRIGGER boom BEFORE INSERT ON steps WHEN NEW.name = 'boom' "
            "BEGIN SELECT RAISE(ABORT, 'refused by the test trigger'); END")


async def _activity(layer: SQLDataLayer, tid: str) -> list[tuple[str, str | None]]:
    async with layer.sql.engine.connect() as conn:
        rows = await conn.exec_driver_sql(
            'SELECT id, "activityAt" FROM threads WHERE id = ?', (tid,))
        return [(r[0], r[1]) for r in rows]


async def test_a_user_message_is_one_hop_and_one_transaction(layer: SQLDataLayer) -> None:
    init_http_context()
    tid = new_id()
    await layer.update_thread(tid, name="t")
    before = await _activity(layer, tid)
    words: list[str] = []
    layer.sql.on_statement.append(words.append)
    step = {**_step(tid, "user_message"), "createdAt": "2030-01-01T00:00:00.000000Z"}
    await layer.create_step(step)
    assert words == ["BEGIN", "UPDATE", "INSERT", "COMMIT"]
    assert await _activity(layer, tid) == [(tid, "2030-01-01T00:00:00.000000Z")]
    assert before != await _activity(layer, tid)
    thread = await layer.get_thread(tid)
    assert thread is not None and [s["id"] for s in thread["steps"]] == [step["id"]]


async def test_a_failed_step_rolls_back_the_bump(layer: SQLDataLayer) -> None:
    init_http_context()
    await _fail_steps_named_boom(layer)
    tid = new_id()
    await layer.update_thread(tid, name="t")
    before = await _activity(layer, tid)
    words: list[str] = []
    layer.sql.on_statement.append(words.append)
    step = {**_step(tid, "user_message"), "name": "boom",
            "createdAt": "2030-01-01T00:00:00.000000Z"}
    with pytest.raises(ChainlitORMError):
        await layer.create_step(step)
    assert words[:3] == ["BEGIN", "UPDATE", "INSERT"] and words[-1] == "ROLLBACK"
    assert await _activity(layer, tid) == before  # the bump did not survive
    thread = await layer.get_thread(tid)
    assert thread is not None and thread["steps"] == []
    # the held writer connection is still usable
    ok = {**_step(tid, "user_message"), "createdAt": "2030-01-02T00:00:00.000000Z"}
    await layer.create_step(ok)
    assert await _activity(layer, tid) == [(tid, "2030-01-02T00:00:00.000000Z")]


async def test_a_failed_step_rolls_back_the_stub_thread(layer: SQLDataLayer) -> None:
    init_http_context()
    await _fail_steps_named_boom(layer)
    tid = new_id()  # no thread yet: the transaction would create a stub
    with pytest.raises(ChainlitORMError):
        await layer.create_step({**_step(tid, "user_message"), "name": "boom"})
    assert await _activity(layer, tid) == []
    assert await layer.get_thread(tid) is None


async def _thread_with_children(layer: SQLDataLayer) -> tuple[str, dict[str, object], str]:
    import chainlit as cl

    tid = new_id()
    await layer.update_thread(tid, name="to delete")
    step = _step(tid, "assistant_message")
    await layer.create_step(step)
    element = cl.Text(name="n.txt", url="https://example.com/n.txt", for_id=str(step["id"]))
    element.thread_id = tid
    await layer.create_element(element)
    return tid, step, element.id


async def test_delete_thread_is_one_hop_and_one_transaction(layer: SQLDataLayer) -> None:
    init_http_context()
    tid, _, _ = await _thread_with_children(layer)
    words: list[str] = []
    layer.sql.on_statement.append(words.append)
    await layer.delete_thread(tid)
    assert words == ["BEGIN", "DELETE", "DELETE", "COMMIT"]
    assert await layer.get_thread(tid) is None
    async with layer.sql.engine.connect() as conn:
        left = [(await conn.exec_driver_sql(
            f'SELECT count(*) FROM {table} WHERE "threadId" = ?', (tid,))).scalar()
            for table in ("steps", "elements")]
    assert left == [0, 0]


async def test_a_failed_delete_leaves_the_whole_thread(layer: SQLDataLayer) -> None:
    init_http_context()
    tid, step, element_id = await _thread_with_children(layer)
    async with layer.sql.engine.begin() as conn:
        await conn.exec_driver_sql(
            "CREATE TRIGGER keep BEFORE DELETE ON threads "
            "BEGIN SELECT RAISE(ABORT, 'refused by the test trigger'); END")
    with pytest.raises(ChainlitORMError):
        await layer.delete_thread(tid)
    thread = await layer.get_thread(tid)
    assert thread is not None
    assert [s["id"] for s in thread["steps"]] == [step["id"]]
    assert [e["id"] for e in thread["elements"] or []] == [element_id]
