"""Steps: lossless round trips of real Chainlit dicts, order tolerance, cascades, favorites."""

from __future__ import annotations

import asyncio
from typing import Any

import chainlit as cl
import pytest
from chainlit.types import Feedback
from chainlit.user import PersistedUser
from chainlit.utils import utc_now as chainlit_utc_now

from chainlit_orm.errors import InvalidIdentifierError, InvalidInputError, PayloadTooLargeError
from chainlit_orm.layers.base import ChainlitLayer
from chainlit_orm.models.types import format_timestamp, parse_timestamp
from tests.contract.conftest import message, new_id

TIMESTAMP_KEYS = ("createdAt", "start", "end")


def assert_round_trip(sent: dict[str, Any], stored: dict[str, Any]) -> None:
    """Every key sent comes back with the same value and the same type; timestamps come back as
    the same instant in the fixed-width form; keys not sent come back as None."""
    for key, value in sent.items():
        got = stored.get(key)
        if key in TIMESTAMP_KEYS and value is not None:
            assert got == format_timestamp(parse_timestamp(value)), key
            continue
        if key == "metadata" and value is None:
            assert got == {}, key
            continue
        assert got == value, (key, value, got)
        assert type(got) is type(value), (key, type(value), type(got))
    for key, value in stored.items():
        if key in ("input", "output") and key not in sent:
            assert value == "", key  # StepDict types them str
        elif key not in sent and key not in ("feedback", "metadata"):
            assert value is None, key


async def test_real_message_and_step_dicts_round_trip_every_key(
    layer: ChainlitLayer, user: PersistedUser, chainlit_ctx: Any
) -> None:
    tid = new_id()
    await layer.update_thread(tid, name="round trip", user_id=user.id)
    msg = cl.Message(content="héllo 👋 wörld", author="alice", type="user_message",
                     command="search", modes={"model": "gpt-4o", "tone": "dry"},
                     metadata={"n": 1, "f": 0.5, "flag": False, "nested": {"list": [1, "a"]}},
                     tags=["t1"], language="markdown")
    msg_dict = dict(msg.to_dict())
    msg_dict["threadId"] = tid
    msg_dict["waitForAnswer"] = True
    step = cl.Step(name="tool ⚙", type="tool", parent_id=msg.id, metadata={"k": "v"},
                   tags=["a", "b"], language="python", icon="wrench", default_open=True,
                   auto_collapse=True, show_input="python")
    step.input = "x = 1"
    step.output = "1"
    step.start = chainlit_utc_now()
    step.end = chainlit_utc_now()
    step.is_error = True
    step_dict = dict(step.to_dict())
    step_dict["threadId"] = tid
    step_dict["generation"] = {"provider": "openai", "tokenCount": 12, "settings": {"t": 0.2},
                               "messages": [{"role": "user", "content": "hi"}]}
    bool_step = dict(cl.Step(name="plain", type="run", show_input=False).to_dict())
    bool_step["threadId"] = tid
    for sent in (msg_dict, step_dict, bool_step):
        sent["createdAt"] = sent.get("createdAt") or chainlit_utc_now()  # stamped on send
        await layer.create_step(sent)
    thread = await layer.get_thread(tid)
    assert thread is not None
    stored = {s["id"]: s for s in thread["steps"]}
    assert set(stored) == {msg.id, step.id, bool_step["id"]}
    assert_round_trip(msg_dict, stored[msg.id])
    assert_round_trip(step_dict, stored[step.id])
    assert_round_trip(bool_step, stored[bool_step["id"]])
    assert stored[step.id]["metadata"] == {"k": "v", "icon": "wrench"}  # Chainlit moved icon
    assert stored[step.id]["showInput"] == "python"
    assert stored[bool_step["id"]]["showInput"] is False
    assert stored[step.id]["defaultOpen"] is True and stored[step.id]["autoCollapse"] is True
    fetched = await layer.get_step(step.id)
    assert fetched is not None
    assert_round_trip(step_dict, fetched)


async def test_unknown_key_survives_in_the_overflow_field(
    layer: ChainlitLayer, user: PersistedUser, chainlit_ctx: Any
) -> None:
    tid = new_id()
    sent = message(tid, "future")
    sent["someFutureKey"] = {"nested": [1, 2, {"x": True}]}
    sent["anotherOne"] = 7
    await layer.create_step(sent)
    stored = await layer.get_step(sent["id"])
    assert stored is not None
    assert stored["someFutureKey"] == {"nested": [1, 2, {"x": True}]}
    assert stored["anotherOne"] == 7 and type(stored["anotherOne"]) is int


async def test_one_megabyte_output_and_unicode_round_trip(
    layer: ChainlitLayer, chainlit_ctx: Any
) -> None:
    tid = new_id()
    big = ("Ünïcødé ✓ 漢字 " * 80_000)[: 1024 * 1024]
    sent = message(tid, big, type_="assistant_message")
    await layer.create_step(sent)
    stored = await layer.get_step(sent["id"])
    assert stored is not None and stored["output"] == big


async def test_nul_character_is_refused_and_nothing_is_written(
    layer: ChainlitLayer, chainlit_ctx: Any
) -> None:
    tid = new_id()
    sent = message(tid, "before\x00after")
    with pytest.raises(InvalidInputError, match="NUL"):
        await layer.create_step(sent)
    assert await layer.get_step(sent["id"]) is None
    assert await layer.get_thread(tid) is None


async def test_payload_above_the_limit_is_refused(
    layer: ChainlitLayer, chainlit_ctx: Any
) -> None:
    layer.max_text_bytes = 1000
    sent = message(new_id(), "x" * 1001)
    with pytest.raises(PayloadTooLargeError):
        await layer.create_step(sent)
    assert await layer.get_step(sent["id"]) is None


async def test_bad_step_input_is_refused(layer: ChainlitLayer, chainlit_ctx: Any) -> None:
    sent = message(new_id(), "x")
    with pytest.raises(InvalidIdentifierError):
        await layer.create_step({**sent, "id": None})
    with pytest.raises(InvalidInputError):
        await layer.create_step({**sent, "threadId": None})
    with pytest.raises(InvalidInputError):
        await layer.create_step({**sent, "metadata": ["not", "a", "dict"]})
    assert await layer.get_step(sent["id"]) is None


async def test_writes_tolerate_any_order(
    layer: ChainlitLayer, user: PersistedUser, chainlit_ctx: Any
) -> None:
    tid = new_id()
    parent = message(tid, "parent", type_="run")
    child = message(tid, "", type_="assistant_message", parent_id=parent["id"])
    # update before create, child before parent, step before thread
    await layer.update_step({**child, "output": "final answer"})
    await layer.create_step(child)  # the late create does not overwrite the update
    await layer.create_step(parent)
    await layer.update_thread(tid, name="ordered", user_id=user.id)
    thread = await layer.get_thread(tid)
    assert thread is not None
    by_id = {s["id"]: s for s in thread["steps"]}
    assert by_id[child["id"]]["output"] == "final answer"
    assert by_id[child["id"]]["parentId"] == parent["id"]
    assert thread["name"] == "ordered" and thread["userId"] == user.id


async def test_update_step_replaces_output_even_with_empty_string(
    layer: ChainlitLayer, chainlit_ctx: Any
) -> None:
    sent = message(new_id(), "first", type_="assistant_message")
    await layer.create_step(sent)
    await layer.update_step({**sent, "output": ""})
    stored = await layer.get_step(sent["id"])
    assert stored is not None and stored["output"] == ""


async def test_200_concurrent_create_step_on_one_thread_all_persist(
    layer: ChainlitLayer, user: PersistedUser, chainlit_ctx: Any
) -> None:
    tid = new_id()
    steps = [message(tid, f"m{i}", type_="user_message" if i % 4 == 0 else "assistant_message")
             for i in range(200)]
    await asyncio.gather(*(layer.create_step(s) for s in steps))
    await layer.update_thread(tid, name="busy", user_id=user.id)
    thread = await layer.get_thread(tid)
    assert thread is not None
    assert sorted(s["id"] for s in thread["steps"]) == sorted(s["id"] for s in steps)


async def test_steps_come_back_in_creation_order_with_their_feedback(
    layer: ChainlitLayer, user: PersistedUser, chainlit_ctx: Any
) -> None:
    tid = new_id()
    await layer.update_thread(tid, name="order", user_id=user.id)
    sent = [message(tid, f"s{i}", type_="assistant_message") for i in range(5)]
    for s in reversed(sent):
        await layer.create_step(s)
    fid = await layer.upsert_feedback(Feedback(forId=sent[2]["id"], value=1, threadId=tid,
                                               comment="nice"))
    thread = await layer.get_thread(tid)
    assert thread is not None
    assert [s["output"] for s in thread["steps"]] == ["s0", "s1", "s2", "s3", "s4"]
    assert thread["steps"][2]["feedback"] == {"id": fid, "forId": sent[2]["id"], "value": 1,
                                               "comment": "nice"}
    assert "feedback" not in thread["steps"][1]


async def test_delete_step_cascades_to_feedback_and_elements(
    layer: ChainlitLayer, user: PersistedUser, chainlit_ctx: Any
) -> None:
    tid = new_id()
    await layer.update_thread(tid, name="del step", user_id=user.id)
    s = message(tid, "bye", type_="assistant_message")
    await layer.create_step(s)
    fid = await layer.upsert_feedback(Feedback(forId=s["id"], value=0, threadId=tid))
    element = cl.Text(name="note.txt", content="bytes here", for_id=s["id"])
    element.thread_id = tid
    await layer.create_element(element)
    assert layer.storage is not None
    key = f"threads/{tid}/files/{element.id}"
    assert (await layer.get_element(tid, element.id)) is not None
    await layer.delete_step(s["id"])
    assert await layer.get_step(s["id"]) is None
    assert await layer.get_element(tid, element.id) is None
    assert await layer.delete_feedback(fid) is False  # already gone with its step
    assert await layer.storage.delete_file(key) is False  # the file went with the element


async def test_favorites_newest_first_and_other_metadata_kept(
    layer: ChainlitLayer, user: PersistedUser, chainlit_ctx: Any
) -> None:
    tid = new_id()
    await layer.update_thread(tid, name="favs", user_id=user.id)
    steps = []
    for i in range(3):
        s = message(tid, f"answer {i}", type_="assistant_message")
        s["metadata"] = {"keep": i}
        s["createdAt"] = f"2026-01-0{i + 1}T00:00:00Z"
        await layer.create_step(s)
        steps.append(s)
    for s in (steps[0], steps[2]):
        returned = await layer.set_step_favorite(dict(s), True)
        assert returned["metadata"]["favorite"] is True
    favorites = await layer.get_favorite_steps(user.id)
    assert [f["id"] for f in favorites] == [steps[2]["id"], steps[0]["id"]]
    assert favorites[0]["metadata"] == {"keep": 2, "favorite": True}
    await layer.set_step_favorite(dict(steps[2]), False)
    assert [f["id"] for f in await layer.get_favorite_steps(user.id)] == [steps[0]["id"]]
