"""Queueing before the first user message, with a real Chainlit WebsocketSession."""

from __future__ import annotations

import uuid

from chainlit.context import init_ws_context
from chainlit.session import WebsocketSession

from chainlit_orm import SQLDataLayer
from tests.sql.conftest import new_id


async def test_writes_are_queued_until_the_first_interaction_then_flushed(
    sql_layer: SQLDataLayer,
) -> None:
    thread_id = new_id()
    session = WebsocketSession(
        id=str(uuid.uuid4()), socket_id=str(uuid.uuid4()), emit=lambda *a: None,
        emit_call=lambda *a: None, user_env={}, client_type="webapp", thread_id=thread_id,
    )
    try:
        init_ws_context(session)
        step = {"id": new_id(), "threadId": thread_id, "type": "assistant_message",
                "name": "bot", "output": "welcome", "streaming": False, "metadata": {}}
        assert await sql_layer.create_step(step) is None
        assert await sql_layer.update_step({**step, "output": "welcome!"}) is None
        assert await sql_layer.delete_step(new_id()) is None
        # nothing written yet; queued under Chainlit's own method names, unwrapped
        assert await sql_layer.get_step(step["id"]) is None
        assert list(session.thread_queues) == ["create_step", "update_step", "delete_step"]
        method, owner, args, _ = session.thread_queues["create_step"][0]
        assert owner is sql_layer and args == (step,)
        assert method.__name__ == "create_step" and not hasattr(method, "__wrapped__")
        # Chainlit's own flush at the first interaction
        session.has_first_interaction = True
        await session.flush_method_queue()
        stored = await sql_layer.get_step(step["id"])
        assert stored is not None and stored["output"] == "welcome!"
        # after the first interaction, calls run at once
        other = {**step, "id": new_id(), "output": "now"}
        await sql_layer.create_step(other)
        assert (await sql_layer.get_step(other["id"])) is not None
    finally:
        await session.delete()


async def test_without_any_chainlit_context_calls_run_at_once(sql_layer: SQLDataLayer) -> None:
    import contextvars

    async def outside() -> None:
        step = {"id": new_id(), "threadId": new_id(), "type": "run", "name": "n", "output": "o",
                "streaming": False, "metadata": {}}
        await sql_layer.create_step(step)
        assert (await sql_layer.get_step(step["id"])) is not None

    await contextvars.Context().run(lambda: __import__("asyncio").ensure_future(outside()))
