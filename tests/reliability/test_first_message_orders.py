"""Issue 14 follow-up F2: Chainlit's first message sends three writes without ordering them.

``emitter.py`` starts ``message._create()`` (``create_step``, which makes a stub thread) and
``init_thread()`` (``update_thread(name, user_id)``) as unawaited tasks, and ``socket.py``'s
``persist_user_session`` writes ``update_thread(metadata)``, possibly before either. Every one of
the 6 orders must end with the same thread on every backend: owner, name, the message and the
metadata. A thread this layer deleted is the exception: the disconnect's metadata-only update
must not bring it back (Chainlit issue #1684).
"""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import pytest
from chainlit.user import User

from chainlit_orm.layers.base import ChainlitLayer
from tests.reliability.storage_env import Db, db

__all__ = ["db"]  # fixture

CALLS = ("step", "init", "meta")
METADATA = {"chat_profile": "p", "id": "session", "env": {"a": [1, 2]}}


async def _send(layer: ChainlitLayer, call: str, thread_id: str, step_id: str,
                user_id: str) -> None:
    if call == "step":
        await layer.create_step({
            "id": step_id, "threadId": thread_id, "name": "alice", "type": "user_message",
            "output": "hello", "createdAt": "2026-01-02T03:04:05.000Z", "streaming": False,
        })
    elif call == "init":
        await layer.update_thread(thread_id, name="first question", user_id=user_id)
    else:
        await layer.update_thread(thread_id, metadata=METADATA)


@pytest.mark.parametrize("order", list(itertools.permutations(CALLS)), ids="->".join)
async def test_every_order_of_the_first_message_keeps_everything(
    db: Db, order: tuple[str, ...]
) -> None:
    layer = await db.layer(None)
    try:
        user = await layer.create_user(User(identifier=f"orders-{uuid.uuid4().hex[:8]}"))
        assert user is not None
        thread_id, step_id = str(uuid.uuid4()), str(uuid.uuid4())
        for call in order:
            await _send(layer, call, thread_id, step_id, user.id)
        thread: Any = await layer.get_thread(thread_id)
        assert thread is not None
        steps = thread.pop("steps")
        thread.pop("createdAt")
        assert thread == {
            "id": thread_id, "name": "first question", "userId": user.id,
            "userIdentifier": user.identifier, "tags": None, "metadata": METADATA,
            "elements": [],
        }
        assert [(s["id"], s["type"], s["output"]) for s in steps] == [
            (step_id, "user_message", "hello")]
    finally:
        await layer.close()


async def test_a_deleted_thread_is_not_brought_back_by_metadata(db: Db) -> None:
    layer = await db.layer(None)
    try:
        user = await layer.create_user(User(identifier=f"orders-{uuid.uuid4().hex[:8]}"))
        assert user is not None
        thread_id = str(uuid.uuid4())
        for call in CALLS:
            await _send(layer, call, thread_id, str(uuid.uuid4()), user.id)
        await layer.delete_thread(thread_id)
        await layer.update_thread(thread_id, metadata=METADATA)  # the disconnect's
        assert await layer.get_thread(thread_id) is None
        # written again on purpose (a name or an owner): the thread exists again
        await layer.update_thread(thread_id, name="again")
        await layer.update_thread(thread_id, metadata={"k": 1})
        thread = await layer.get_thread(thread_id)
        assert thread is not None
        assert (thread["name"], thread["userId"], thread["metadata"]) == ("again", None, {"k": 1})
    finally:
        await layer.close()
