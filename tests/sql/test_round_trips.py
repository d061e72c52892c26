"""Round trips per call, asserted exactly per dialect (BEGIN and COMMIT counted too)."""

from __future__ import annotations

from typing import Any

import chainlit as cl
from chainlit.context import init_http_context
from chainlit.types import Feedback, Pagination, ThreadFilter
from chainlit.user import User

from chainlit_orm import SQLDataLayer
from tests.sql.conftest import count_round_trips, new_id


def _step(tid: str, type_: str, output: str = "x") -> dict[str, Any]:
    return {"id": new_id(), "threadId": tid, "type": type_, "name": "n", "output": output,
            "streaming": False, "metadata": {}, "createdAt": "2026-01-01T00:00:00.000001Z"}


async def test_round_trips_per_call(sql_layer: SQLDataLayer) -> None:
    layer = sql_layer
    dialect = layer.sql.dialect
    mysql = dialect in ("mysql", "mariadb")
    init_http_context()
    # warm the pools: a new connection's first checkout runs the dialect's own set-up queries
    await layer.get_user("warm-up")
    await layer.delete_thread(new_id())
    trips = count_round_trips(layer.sql)

    async def measure(call: Any) -> list[str]:
        trips.reset()
        await call
        return list(trips.events)

    assert len(await measure(layer.get_user("nobody"))) == 1
    created = await measure(layer.create_user(User(identifier="rt@example.com", metadata={})))
    assert len(created) == (2 if mysql else 1), created
    user = await layer.get_user("rt@example.com")
    assert user is not None
    tid = new_id()
    assert len(await measure(layer.update_thread(tid, name="rt", user_id=user.id,
                                                 metadata={"a": 1}, tags=["t"]))) == 1
    assert len(await measure(layer.update_thread(tid, metadata={"b": 2, "a": None}))) == 1
    run = _step(tid, "run")
    assert await measure(layer.create_step(run)) == ["INSERT"]
    assert await measure(layer.update_step({**run, "output": "done"})) == ["INSERT"]
    # an assistant message's folded copy (and on SQLite its FTS row, by trigger) is written by
    # the same statement
    reply = _step(tid, "assistant_message", "Grüße")
    assert await measure(layer.create_step(reply)) == ["INSERT"]
    assert await measure(layer.update_step({**reply, "output": "STRASSE"})) == ["INSERT"]
    user_message = await measure(layer.create_step(_step(tid, "user_message")))
    if dialect == "postgresql":  # a data-modifying CTE: one statement, no transaction
        assert user_message == ["WITH"], user_message
    else:
        assert user_message == ["BEGIN", "UPDATE", "INSERT", "COMMIT"], user_message
    listed = await measure(layer.list_threads(Pagination(first=20), ThreadFilter(userId=user.id)))
    assert listed == ["SELECT"]
    searched = await measure(layer.list_threads(
        Pagination(first=20), ThreadFilter(userId=user.id, search="x", feedback=1)))
    assert searched == ["SELECT"]
    # a term the search index serves: still one statement (its candidates are a CTE)
    indexed = await measure(layer.list_threads(
        Pagination(first=20), ThreadFilter(userId=user.id, search="straße")))
    assert indexed == (["SELECT"] if mysql else ["WITH"]), indexed
    page = await layer.list_threads(Pagination(first=20),
                                    ThreadFilter(userId=user.id, search="straße"))
    assert [t["id"] for t in page.data] == [tid]
    await layer.upsert_feedback(Feedback(forId=run["id"], threadId=tid, value=1))
    element = cl.Text(name="n.txt", url="https://example.com/n.txt", for_id=run["id"])
    element.thread_id = tid
    await layer.create_element(element)
    assert await measure(layer.get_thread(tid)) == ["SELECT", "SELECT"]
    assert len(await measure(layer.get_thread_author(tid))) == 1
    deleted = await measure(layer.delete_thread(tid))
    if dialect == "postgresql":
        # the thread row is locked by a statement of its own, so that the delete (a new
        # statement under READ COMMITTED) sees elements committed while it waited: one CTE
        # alone would drop their rows without returning their object keys
        assert deleted == ["BEGIN", "SELECT", "WITH", "COMMIT"], deleted
    else:
        assert deleted == ["BEGIN", "DELETE", "DELETE", "COMMIT"], deleted
    assert await layer.get_thread(tid) is None
