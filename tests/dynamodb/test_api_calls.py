"""API calls per hot-path method, counted with botocore's ``before-call`` event on the client
PynamoDB uses (one per API call; botocore's own retries of a throttled or failed attempt are
``before-send`` events and are not counted), on a table made by ``chainlit-orm migrate``. Each
count is exact."""

from __future__ import annotations

import math
from typing import Any

import chainlit as cl
from chainlit.context import init_http_context
from chainlit.types import Feedback, Pagination, ThreadFilter
from chainlit.user import User

from chainlit_orm.layers.dynamodb import DynamoDataLayer
from tests.contract.conftest import message, new_id
from tests.dynamodb.conftest import Recorder


async def _owned_thread(layer: DynamoDataLayer) -> tuple[str, str, str]:
    user = await layer.create_user(User(identifier=f"counted-{new_id()}", metadata={}))
    assert user is not None
    tid = new_id()
    await layer.update_thread(tid, name="counted", user_id=user.id)
    return tid, user.id, user.identifier


async def test_hot_paths_cost_one_call(layer: DynamoDataLayer, recorder: Recorder) -> None:
    init_http_context(thread_id=new_id())
    tid, _, identifier = await _owned_thread(layer)

    recorder.clear()
    assert (await layer.get_user(identifier)) is not None
    assert recorder.operations == ["GetItem"]

    recorder.clear()
    assert await layer.get_thread_author(tid) == identifier
    assert recorder.operations == ["GetItem"]

    reply = message(tid, "an answer", type_="assistant_message")
    recorder.clear()
    await layer.create_step(reply)
    assert recorder.operations == ["PutItem"]  # a new step: one conditional PutItem

    recorder.clear()
    await layer.update_step({**reply, "output": "a better answer"})
    assert recorder.operations == ["UpdateItem"]

    question = message(tid, "a question")  # a user message bumps the thread's activity
    recorder.clear()
    await layer.create_step(question)
    assert recorder.operations == ["TransactWriteItems"]

    recorder.clear()  # its creation was the activity: an update is a plain write
    await layer.update_step({**question, "output": "an edited question"})
    assert recorder.operations == ["UpdateItem"]

    step = cl.Step(name="tool", type="tool")
    step.input, step.output = "x", "y"
    step_dict = {**step.to_dict(), "threadId": tid}
    recorder.clear()
    await layer.create_step(step_dict)
    assert recorder.operations == ["PutItem"]

    # Chainlit may send update_step before create_step: the create's PutItem finds the item and
    # falls back to the update that keeps what the update wrote
    late = message(tid, "streamed first", type_="assistant_message")
    recorder.clear()
    await layer.update_step({**late, "output": "the final answer"})
    await layer.create_step({**late, "output": ""})
    assert recorder.operations == ["UpdateItem", "PutItem", "UpdateItem"]

    recorder.clear()
    thread = await layer.get_thread(tid)
    assert thread is not None and len(thread["steps"]) == 4
    assert {s["id"]: s["output"] for s in thread["steps"]}[late["id"]] == "the final answer"
    assert recorder.operations == ["Query"]

    # the same order for a user message: in its transaction the step is always the keeping
    # update (it cannot be cancelled by the step existing), so the create is one call, and the
    # thread's activity still moves
    asked = message(tid, "asked while offline")
    recorder.clear()
    await layer.update_step({**asked, "output": "asked, edited"})
    await layer.create_step({**asked, "output": "asked"})
    assert recorder.operations == ["UpdateItem", "TransactWriteItems"]
    thread = await layer.get_thread(tid)
    assert thread is not None
    assert {s["id"]: s["output"] for s in thread["steps"]}[asked["id"]] == "asked, edited"
    stored = await layer.dynamo.call("get_item", Key=layer.dynamo.layout.key_of("thread", id=tid))
    assert stored["Item"]["activityAt"] == {"S": asked["createdAt"]}

    recorder.clear()
    await layer.update_thread(tid, name="renamed")
    assert recorder.operations == ["UpdateItem"]

    recorder.clear()
    await layer.update_thread(tid, metadata={"is_shared": True})  # a disconnect's persist
    assert recorder.operations == ["UpdateItem", "UpdateItem"]  # first merge: no map yet
    recorder.clear()
    await layer.update_thread(tid, metadata={"shared_at": "now", "is_shared": None})
    assert recorder.operations == ["UpdateItem"]  # merged in place

    element = cl.Text(name="n.txt", content="bytes", for_id=reply["id"])
    element.thread_id = tid
    await layer.create_element(element)
    recorder.clear()
    assert (await layer.get_element(tid, element.id)) is not None
    # one call still: the element and its thread item (a trashed thread hides its elements)
    assert recorder.operations == ["BatchGetItem"]


async def test_list_threads_is_one_query_per_page(
    layer: DynamoDataLayer, recorder: Recorder
) -> None:
    init_http_context(thread_id=new_id())
    user = await layer.create_user(User(identifier=f"lister-{new_id()}", metadata={}))
    assert user is not None
    ids = [new_id() for _ in range(7)]
    for tid in ids:
        await layer.update_thread(tid, name=f"thread {tid}", user_id=user.id)
    answer = message(ids[2], "rated", type_="assistant_message")
    await layer.create_step(answer)
    await layer.upsert_feedback(Feedback(forId=answer["id"], threadId=ids[2], value=1))

    recorder.clear()
    cursor, pages = None, []
    while True:
        page = await layer.list_threads(Pagination(first=3, cursor=cursor),
                                        ThreadFilter(userId=user.id))
        pages.append(len(page.data))
        if not page.pageInfo.hasNextPage:
            break
        cursor = page.pageInfo.endCursor
    assert pages == [3, 3, 1]
    assert recorder.operations == ["Query", "Query", "Query"]

    recorder.clear()
    rated = await layer.list_threads(Pagination(first=5), ThreadFilter(userId=user.id, feedback=1))
    assert [t["id"] for t in rated.data] == [ids[2]]
    assert recorder.operations == ["Query"]  # the sparse UserFeedback1 index: no filtering


async def test_delete_thread_is_two_queries_and_batches_of_25(
    layer: DynamoDataLayer, recorder: Recorder
) -> None:
    init_http_context(thread_id=new_id())
    tid, _, _ = await _owned_thread(layer)
    for i in range(60):
        await layer.create_step(message(tid, f"step {i}", type_="assistant_message"))
    items = 61  # the thread item and its 60 steps
    recorder.clear()
    await layer.delete_thread(tid)
    # with a storage configured, the files go first (one Query of the object keys) so that a
    # storage failure leaves the thread whole and the call can be repeated; then one Query of the
    # partition and its deletion in batches of 25
    assert recorder.operations == ["Query", "Query"] + ["BatchWriteItem"] * math.ceil(items / 25)
    assert await layer.get_thread(tid) is None


async def test_counts_hold_after_a_cold_start(layer: DynamoDataLayer, table: str, storage: Any
                                              ) -> None:
    """The table check runs once per layer, on first use: DescribeTable + one Query of the
    schema partition (the version item, and the migration's lock item if one is held)."""
    cold = DynamoDataLayer(table, storage=storage, region="us-east-1",
                           endpoint_url=layer.dynamo.endpoint_url)
    recording = Recorder().attach(cold.dynamo.client)
    try:
        assert await cold.get_user("nobody") is None
        assert recording.operations == ["DescribeTable", "Query", "GetItem"]
        recording.clear()
        assert await cold.get_user("nobody") is None
        assert recording.operations == ["GetItem"]
    finally:
        await cold.close()
