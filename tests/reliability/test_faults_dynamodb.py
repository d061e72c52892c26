"""Network faults between the DynamoDB layer and DynamoDB (moto's server behind the TCP fault
proxy of :mod:`tests.reliability.faultproxy`).

For each fault (refused connections, a black hole, a response cut mid-way, slow answers, every
connection cut at once) the layer either answers correctly or raises a typed error within a
bound set by its own options (``connect_timeout``, ``read_timeout``, ``max_attempts``), it works
again as soon as the fault clears, and no acknowledged write is lost or applied twice. The one
timed assertion: a black-holed call ends in ``TimeoutExceededError`` within twice its configured
timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from chainlit.context import init_http_context
from chainlit.types import Feedback, Pagination, ThreadFilter
from chainlit.user import PersistedUser, User

from chainlit_orm.errors import BackendUnavailableError, ChainlitORMError, TimeoutExceededError
from chainlit_orm.layers.dynamodb import DynamoDataLayer
from tests.contract.conftest import message, new_id
from tests.dynamodb.conftest import (  # fixtures: a migrated moto table
    MOTO_ENDPOINT,
    REGION,
    aws_env,
    dynamodb,
    table,
    table_name,
)
from tests.reliability.faultproxy import FaultProxy, fault_proxy

__all__ = ["aws_env", "dynamodb", "table", "table_name"]

READ_TIMEOUT = 1.0


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    moto = urlsplit(MOTO_ENDPOINT)
    with fault_proxy(moto.hostname or "127.0.0.1", moto.port or 5055) as started:
        yield started


def _layer(table: str, proxy: FaultProxy, attempts: int,
           read_timeout: float = READ_TIMEOUT) -> DynamoDataLayer:
    return DynamoDataLayer(table, region=REGION, endpoint_url=f"http://{proxy.address}",
                           connect_timeout=1.0, read_timeout=read_timeout,
                           max_attempts=attempts)


@pytest.fixture
async def layer(table: str, proxy: FaultProxy) -> AsyncIterator[DynamoDataLayer]:
    instance = _layer(table, proxy, attempts=2)
    await instance.dynamo.ensure_ready()  # the once-per-layer table check, before any fault
    yield instance
    await instance.close()


@pytest.fixture
async def direct(table: str) -> AsyncIterator[DynamoDataLayer]:
    """A layer that bypasses the proxy: what is really stored."""
    instance = DynamoDataLayer(table, region=REGION, endpoint_url=MOTO_ENDPOINT)
    yield instance
    await instance.close()


@pytest.fixture
async def owned(layer: DynamoDataLayer) -> tuple[PersistedUser, str]:
    init_http_context(thread_id=new_id())
    user = await layer.create_user(User(identifier=f"faulty-{new_id()}"))
    assert user is not None
    tid = new_id()
    await layer.update_thread(tid, name="under faults", user_id=user.id)
    return user, tid


async def _thread_item(direct: DynamoDataLayer, tid: str) -> dict[str, Any]:
    item: dict[str, Any] = (await direct.dynamo.call(
        "get_item", Key={"PK": {"S": f"THREAD#{tid}"}, "SK": {"S": "THREAD"}},
        ConsistentRead=True))["Item"]
    return item


async def test_refused_connections_raise_a_typed_error_and_the_layer_recovers(
    layer: DynamoDataLayer, proxy: FaultProxy, direct: DynamoDataLayer,
    owned: tuple[PersistedUser, str]
) -> None:
    _, tid = owned
    refused = message(tid, "sent while refused", type_="assistant_message")
    proxy.set_mode("refuse")
    with pytest.raises(BackendUnavailableError) as info:
        await layer.get_thread(tid)
    assert not isinstance(info.value, TimeoutExceededError)
    with pytest.raises(BackendUnavailableError):
        await layer.create_step(refused)
    proxy.set_mode("pass")
    assert await direct.get_step(refused["id"]) is None  # it never reached the server
    await layer.create_step(refused)  # the caller's retry lands
    thread = await layer.get_thread(tid)
    assert thread is not None and [s["output"] for s in thread["steps"]] == ["sent while refused"]


async def test_a_black_hole_ends_in_a_timeout_error_within_twice_the_timeout(
    table: str, proxy: FaultProxy, direct: DynamoDataLayer
) -> None:
    init_http_context(thread_id=new_id())
    # 2 s, not 1: twice the timeout leaves a loaded 2-core machine room to wake the thread
    layer = _layer(table, proxy, attempts=1, read_timeout=2.0)
    try:
        tid = new_id()
        await layer.update_thread(tid, name="before the black hole")
        proxy.set_mode("blackhole")
        started = time.monotonic()
        with pytest.raises(TimeoutExceededError) as info:
            await layer.get_thread(tid)
        elapsed = time.monotonic() - started
        assert elapsed < 2 * 2.0, elapsed  # the one timed assertion the suite allows
        assert "read 2 s, 1 attempts" in str(info.value)
        late = message(tid, "sent into the black hole", type_="assistant_message")
        with pytest.raises(TimeoutExceededError):
            await layer.create_step(late)
        proxy.set_mode("pass")
        # the held request may still reach the server (a late packet): a timed-out write may or
        # may not have been applied, and the caller's retry makes it exactly once either way
        await layer.create_step(late)
        thread = await layer.get_thread(tid)
        assert thread is not None
        assert [s["output"] for s in thread["steps"]] == ["sent into the black hole"]
        assert thread["name"] == "before the black hole"
    finally:
        await layer.close()


async def test_a_black_hole_with_retries_still_ends_typed(
    layer: DynamoDataLayer, proxy: FaultProxy, owned: tuple[PersistedUser, str]
) -> None:
    user, tid = owned
    proxy.set_mode("blackhole")
    with pytest.raises(TimeoutExceededError, match="2 attempts"):
        await layer.list_threads(Pagination(first=5), ThreadFilter(userId=user.id))
    proxy.set_mode("pass")
    page = await layer.list_threads(Pagination(first=5), ThreadFilter(userId=user.id))
    assert [t["id"] for t in page.data] == [tid]


async def test_responses_cut_midway_never_lose_or_double_a_write(
    layer: DynamoDataLayer, proxy: FaultProxy, direct: DynamoDataLayer,
    owned: tuple[PersistedUser, str]
) -> None:
    """The answer to each kind of write is cut half-way (the server applied it), and then the
    answer to reads. The layer (or botocore) sends the request again, or the caller gets a typed
    error and retries. Either way the write is there once: a step once, metadata keys once, and
    a feedback counted once although its transaction, which ADDs to the counters, was applied
    and then sent again; and a read returns what is stored, not an empty answer."""
    user, tid = owned
    operations: list[str] = []

    def cut_next_answer(model: Any, **_: Any) -> None:
        if model.name in cutting:
            cutting.discard(model.name)
            operations.append(model.name)
            proxy.set_mode("drop_response")

    cutting: set[str] = set()
    layer.dynamo.client.meta.events.register("before-call.dynamodb", cut_next_answer)

    async def once(kind: str, call: Any) -> None:
        cutting.add(kind)
        try:
            await call()
        except BackendUnavailableError:
            await call()  # the caller's retry: every write is idempotent
        assert kind not in cutting  # the fault was injected

    answer = message(tid, "an answer", type_="assistant_message")
    await once("PutItem", lambda: layer.create_step(answer))
    await once("UpdateItem", lambda: layer.update_step({**answer, "output": "edited"}))
    question = message(tid, "a question")
    await once("TransactWriteItems", lambda: layer.create_step(question))
    await once("UpdateItem", lambda: layer.update_thread(tid, metadata={"a": 1}))
    await once("TransactWriteItems", lambda: layer.upsert_feedback(
        Feedback(forId=answer["id"], threadId=tid, value=1, comment="good")))
    await once("TransactWriteItems", lambda: layer.upsert_feedback(
        Feedback(forId=answer["id"], threadId=tid, value=0, comment="on second thought")))
    # and reads: an answer cut before its length was known must not read as "no items"
    cutting.add("Query")
    thread = await layer.get_thread(tid)
    assert thread is not None and len(thread["steps"]) == 2
    cutting.add("Query")
    page = await layer.list_threads(Pagination(first=5), ThreadFilter(userId=user.id))
    assert [t["id"] for t in page.data] == [tid]
    assert operations == ["PutItem", "UpdateItem", "TransactWriteItems", "UpdateItem",
                          "TransactWriteItems", "TransactWriteItems", "Query", "Query"]

    thread = await direct.get_thread(tid)
    assert thread is not None
    assert [(s["id"], s["output"]) for s in thread["steps"]] == [
        (answer["id"], "edited"), (question["id"], "a question")]
    assert thread["metadata"] == {"a": 1}
    feedback = thread["steps"][0]["feedback"]  # type: ignore[typeddict-item]
    assert (feedback["value"], feedback["comment"]) == (0, "on second thought")
    item = await _thread_item(direct, tid)
    assert (item["fbCount0"], item["fbCount1"]) == ({"N": "1"}, {"N": "0"})
    assert "UserFeedback1PK" not in item and item["UserFeedback0PK"] == {"S": f"USER#{user.id}"}


async def test_slow_answers_within_the_timeout_are_waited_for(
    layer: DynamoDataLayer, proxy: FaultProxy, owned: tuple[PersistedUser, str]
) -> None:
    _, tid = owned
    proxy.set_mode("slow", delay=0.3)
    step = message(tid, "slowly", type_="assistant_message")
    await layer.create_step(step)
    thread = await layer.get_thread(tid)
    assert thread is not None and [s["output"] for s in thread["steps"]] == ["slowly"]


async def test_connections_cut_while_idle_are_replaced(
    layer: DynamoDataLayer, proxy: FaultProxy, owned: tuple[PersistedUser, str]
) -> None:
    """A middlebox's idle timeout or a failover closes every pooled connection: the next calls
    open new ones."""
    _, tid = owned
    await asyncio.gather(*(layer.get_thread(tid) for _ in range(8)))  # several kept connections
    accepted = proxy.connections_accepted
    proxy.cut_all()
    results = await asyncio.gather(*(layer.get_thread(tid) for _ in range(8)))
    assert [r is not None and r["id"] for r in results] == [tid] * 8
    assert proxy.connections_accepted > accepted


async def test_no_acknowledged_write_is_lost_across_faults(
    layer: DynamoDataLayer, proxy: FaultProxy, direct: DynamoDataLayer,
    owned: tuple[PersistedUser, str]
) -> None:
    """60 writes (steps, metadata keys, feedback) while the link cycles through every fault.
    Every call is acknowledged or raises a typed error; afterwards every acknowledged write is
    stored, and the feedback counters equal the feedback stored."""
    user, tid = owned
    faults = ["pass", "refuse", "pass", "drop_response", "slow", "blackhole", "pass",
              "drop_response", "pass", "refuse"]
    acknowledged_steps: dict[str, str] = {}
    acknowledged_keys: dict[str, int] = {}
    acknowledged_feedback: dict[str, int] = {}
    answers: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    for i in range(60):
        proxy.set_mode(faults[i // 6], delay=0.2)  # type: ignore[arg-type]
        try:
            if i % 3 == 0:
                step = message(tid, f"answer {i}", type_="assistant_message")
                await layer.create_step(step)
                answers.append(step)
                acknowledged_steps[step["id"]] = step["output"]
            elif i % 3 == 1:
                await layer.update_thread(tid, metadata={f"key {i}": i})
                acknowledged_keys[f"key {i}"] = i
            elif answers:
                rated = answers[-1]["id"]
                await layer.upsert_feedback(Feedback(forId=rated, threadId=tid, value=i % 2))
                acknowledged_feedback[rated] = i % 2
        except ChainlitORMError as exc:
            errors.append(exc)
    proxy.set_mode("pass")
    assert errors, "the faults were injected"
    assert all(isinstance(e, BackendUnavailableError) for e in errors), errors

    thread = await direct.get_thread(tid)
    assert thread is not None
    stored = {s["id"]: s for s in thread["steps"]}
    assert {sid: stored[sid]["output"] for sid in acknowledged_steps} == acknowledged_steps
    assert {k: thread["metadata"][k] for k in acknowledged_keys} == acknowledged_keys
    for sid, value in acknowledged_feedback.items():
        assert stored[sid]["feedback"]["value"] == value  # type: ignore[typeddict-item]
    values = [s["feedback"]["value"] for s in stored.values() if s.get("feedback")]  # type: ignore[typeddict-item]
    item = await _thread_item(direct, tid)
    assert (int(item.get("fbCount0", {"N": "0"})["N"]), int(item.get("fbCount1", {"N": "0"})["N"])
            ) == (values.count(0), values.count(1))
    # and the layer works normally again
    await layer.update_thread(tid, name="recovered")
    page = await layer.list_threads(Pagination(first=5), ThreadFilter(userId=user.id))
    assert [(t["id"], t["name"]) for t in page.data] == [(tid, "recovered")]


