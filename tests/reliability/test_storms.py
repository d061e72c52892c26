"""Concurrency storms on every backend (SQLite, PostgreSQL, MariaDB, DynamoDB on moto).

Each storm fires many writes at one thread at once, as Chainlit does (its writes are unawaited
tasks) and as several app processes do, and then checks the exact end state, read through the
layer *and* below it (:func:`~tests.reliability.storm_targets.stored_children`):

* 50 concurrent feedback upserts on one step: every call lands (no error), one feedback remains,
  its value and comment come from the same write, every call returned its id, the feedback
  filter of ``list_threads`` agrees with it, and a later upsert wins as it should.
* 4 processes rating 10 steps each of one thread, at once: every rating lands, counts exact.
* 50 concurrent metadata merges on one thread: all 50 keys are kept.
* 50 concurrent step writes, each step's create and update racing: 50 steps, each with its
  update's text, and the thread's activity is its latest user message.
* deletes racing writes on one thread: every call either lands or raises a typed error, and the
  end state is consistent: a thread that is gone left no step, element or feedback behind, and a
  thread that exists shows every step and element stored for it (and owns every feedback).
* Chainlit 2.12's first-message sequence raced 160 times by 4 processes: every thread ends with
  its owner and is listed for the user (issue 14, item 6).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import chainlit as cl
import pytest
from chainlit.context import init_http_context
from chainlit.types import Feedback, Pagination, ThreadFilter
from chainlit.user import PersistedUser, User

from chainlit_orm.errors import ChainlitORMError, NotFoundError
from chainlit_orm.layers.base import ChainlitLayer
from tests.contract.conftest import message
from tests.reliability.storm_targets import (
    STORM_BACKENDS,
    Target,
    open_layer,
    open_target,
    stored_children,
)
from tests.reliability.storm_worker import (
    SESSION_METADATA,
    feedback_rounds,
    first_message_race,
)

STORM = 50


@pytest.fixture(scope="module")
def processes() -> Iterator[ProcessPoolExecutor]:
    """4 spawned worker processes, the "app processes" of the cross-process storms (spawned
    once: each start imports Chainlit). Each storm call builds its own layer in each worker."""
    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


@pytest.fixture(params=STORM_BACKENDS)
async def target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Target]:
    async with open_target(request.param, tmp_path) as opened:
        yield opened


@pytest.fixture
async def layer(target: Target) -> AsyncIterator[ChainlitLayer]:
    init_http_context(thread_id=str(uuid.uuid4()))
    instance = open_layer(target)
    yield instance
    await instance.close()


@pytest.fixture
async def owner(layer: ChainlitLayer) -> PersistedUser:
    created = await layer.create_user(User(identifier=f"storm-{uuid.uuid4().hex[:8]}"))
    assert created is not None
    return created


async def _listed(layer: ChainlitLayer, user: PersistedUser, feedback: int | None = None
                  ) -> list[str]:
    page = await layer.list_threads(Pagination(first=1000),
                                    ThreadFilter(userId=user.id, feedback=feedback))
    assert not page.pageInfo.hasNextPage
    return [t["id"] for t in page.data]


async def test_feedback_storm_on_one_step(layer: ChainlitLayer, target: Target,
                                          owner: PersistedUser) -> None:
    tid = str(uuid.uuid4())
    await layer.update_thread(tid, name="rated", user_id=owner.id)
    answer = message(tid, "an answer", type_="assistant_message")
    await layer.create_step(answer)

    written = {f"comment {i}": i % 2 for i in range(STORM)}
    ids = await asyncio.gather(*(
        layer.upsert_feedback(Feedback(forId=answer["id"], threadId=tid, value=value,
                                       comment=comment))
        for comment, value in written.items()))

    thread = await layer.get_thread(tid)
    assert thread is not None
    (step,) = thread["steps"]
    stored = step["feedback"]  # type: ignore[typeddict-item]
    assert stored is not None
    assert written[stored["comment"]] == stored["value"]  # value and comment of one write
    assert set(ids) == {stored["id"]}  # one feedback: every upsert reported its id
    value = stored["value"]
    assert await _listed(layer, owner, feedback=value) == [tid]
    assert await _listed(layer, owner, feedback=1 - value) == []
    counts = await stored_children(layer, target, tid)
    assert counts["feedback"] == 1
    if target.kind == "dynamodb":
        item = (await layer.dynamo.call(  # type: ignore[attr-defined]
            "get_item", Key={"PK": {"S": f"THREAD#{tid}"}, "SK": {"S": "THREAD"}},
            ConsistentRead=True))["Item"]
        assert item[f"fbCount{value}"] == {"N": "1"}
        assert item.get(f"fbCount{1 - value}", {"N": "0"}) == {"N": "0"}
        assert f"UserFeedback{1 - value}PK" not in item

    # the storm left nothing that makes the next upsert ambiguous: the last one wins
    last = await layer.upsert_feedback(Feedback(forId=answer["id"], threadId=tid, value=1 - value,
                                                comment="the last word"))
    assert last == stored["id"]
    thread = await layer.get_thread(tid)
    assert thread is not None
    assert thread["steps"][0]["feedback"] == {  # type: ignore[typeddict-item]
        "id": last, "forId": answer["id"], "value": 1 - value, "comment": "the last word"}
    assert await _listed(layer, owner, feedback=1 - value) == [tid]
    assert await _listed(layer, owner, feedback=value) == []


async def test_feedback_of_one_thread_from_4_processes(
        layer: ChainlitLayer, target: Target, owner: PersistedUser,
        processes: ProcessPoolExecutor) -> None:
    """4 app processes rate 10 steps each of one shared thread, all at once, 3 times over:
    every rating lands and the per-value counts are exact (before, the thread's counters were
    written back as read, so writers of different steps invalidated each other)."""
    tid = str(uuid.uuid4())
    await layer.update_thread(tid, name="rated everywhere", user_id=owner.id)
    steps = [message(tid, f"answer {i}", type_="assistant_message") for i in range(40)]
    await asyncio.gather(*(layer.create_step(step) for step in steps))
    shares = [{s["id"]: i % 2 for i, s in enumerate(steps[p * 10:(p + 1) * 10])} for p in range(4)]
    loop = asyncio.get_running_loop()
    reported = await asyncio.gather(*(
        loop.run_in_executor(processes, feedback_rounds, target, tid, share, 3)
        for share in shares))

    thread = await layer.get_thread(tid)
    assert thread is not None
    wanted = {step_id: value for share in shares for step_id, value in share.items()}
    ids = {step_id: fid for got in reported for step_id, fid in got.items()}
    assert {s["id"]: s.get("feedback") for s in thread["steps"]} == {
        step_id: {"id": ids[step_id], "forId": step_id, "value": value, "comment": "round 2"}
        for step_id, value in wanted.items()}
    assert await _listed(layer, owner, feedback=0) == [tid]
    assert await _listed(layer, owner, feedback=1) == [tid]
    assert (await stored_children(layer, target, tid))["feedback"] == 40
    if target.kind == "dynamodb":
        item = (await layer.dynamo.call(  # type: ignore[attr-defined]
            "get_item", Key={"PK": {"S": f"THREAD#{tid}"}, "SK": {"S": "THREAD"}},
            ConsistentRead=True))["Item"]
        assert (item["fbCount0"], item["fbCount1"]) == ({"N": "20"}, {"N": "20"})


async def test_metadata_merge_storm(layer: ChainlitLayer, owner: PersistedUser) -> None:
    tid = str(uuid.uuid4())
    await layer.update_thread(tid, name="merged", user_id=owner.id, metadata={"kept": True})
    await asyncio.gather(*(layer.update_thread(tid, metadata={f"key {i}": i})
                           for i in range(STORM)))
    thread = await layer.get_thread(tid)
    assert thread is not None
    assert thread["metadata"] == {"kept": True, **{f"key {i}": i for i in range(STORM)}}
    assert await _listed(layer, owner) == [tid]


async def test_step_write_storm(layer: ChainlitLayer, target: Target,
                                owner: PersistedUser) -> None:
    tid = str(uuid.uuid4())
    await layer.update_thread(tid, name="busy", user_id=owner.id)
    steps = [message(tid, f"step {i}", type_="user_message" if i % 5 == 0 else "assistant_message")
             for i in range(STORM)]
    rnd = random.Random(14)
    calls = [layer.create_step(step) for step in steps]
    calls += [layer.update_step({**step, "output": f"final {i}"}) for i, step in enumerate(steps)]
    rnd.shuffle(calls)  # an update may land before its create: the create keeps what it wrote
    await asyncio.gather(*calls)

    thread = await layer.get_thread(tid)
    assert thread is not None
    assert {s["id"]: s["output"] for s in thread["steps"]} == {
        step["id"]: f"final {i}" for i, step in enumerate(steps)}
    assert [s["id"] for s in thread["steps"]] == [s["id"] for s in steps]  # creation order
    assert (await stored_children(layer, target, tid))["step"] == STORM
    listed = (await layer.list_threads(Pagination(first=5), ThreadFilter(userId=owner.id))).data
    assert [t["id"] for t in listed] == [tid]
    latest_user_message = max(s["createdAt"] for s in steps if s["type"] == "user_message")
    assert listed[0]["createdAt"] == latest_user_message  # the activity moved to it


async def test_deletes_racing_writes(layer: ChainlitLayer, target: Target,
                                     owner: PersistedUser) -> None:
    """Writes of steps, elements and feedback race three deletes of their thread (started at
    random places among the writes, before all of them and after all of them). Each call lands or
    raises a typed error; the end state is a thread with everything stored for it shown, or
    nothing at all."""
    rnd = random.Random(7)
    for round_, where in enumerate(("random", "first", "last", "random")):
        tid = str(uuid.uuid4())
        await layer.update_thread(tid, name=f"doomed {round_}", user_id=owner.id)
        first = [message(tid, f"early {i}", type_="assistant_message") for i in range(10)]
        for step in first:
            await layer.create_step(step)
        later = [message(tid, f"late {i}", type_="assistant_message" if i % 3 else "user_message")
                 for i in range(20)]
        calls: list[Any] = [layer.create_step(step) for step in later]
        calls += [layer.update_step({**step, "output": "edited"}) for step in first]
        calls += [layer.upsert_feedback(Feedback(forId=step["id"], threadId=tid, value=i % 2))
                  for i, step in enumerate(first)]
        for i in range(10):
            element = cl.CustomElement(name=f"widget {i}", props={"i": i},
                                       for_id=first[i]["id"])
            element.thread_id = tid
            calls.append(layer.create_element(element))
        rnd.shuffle(calls)
        places = {"random": sorted(rnd.sample(range(len(calls)), 3), reverse=True),
                  "first": [0, 0, 0], "last": [len(calls)] * 3}[where]
        for at in places:
            calls.insert(at, layer.delete_thread(tid))
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        untyped = [o for o in outcomes
                   if isinstance(o, BaseException) and not isinstance(o, ChainlitORMError)]
        assert untyped == []

        counts = await stored_children(layer, target, tid)
        thread = await layer.get_thread(tid)
        if thread is None:
            assert counts == dict.fromkeys(counts, 0), counts
        else:
            # feedback may name a step that is not stored (the contract accepts feedback for a
            # step not written yet, and one deleted meanwhile); it is still the thread's
            shown_feedback = sum(1 for s in thread["steps"] if s.get("feedback"))
            assert counts == {"thread": 1, "step": len(thread["steps"]),
                              "element": len(thread["elements"] or []),
                              "feedback": shown_feedback + counts["feedback_without_step"],
                              "feedback_without_step": counts["feedback_without_step"]}, counts
        await layer.delete_thread(tid)  # and a delete after the storm removes everything
        assert await stored_children(layer, target, tid) == dict.fromkeys(counts, 0)
        assert await layer.get_thread(tid) is None


async def test_first_message_race_across_processes(layer: ChainlitLayer, target: Target,
                                                   owner: PersistedUser,
                                                   processes: ProcessPoolExecutor) -> None:
    """Issue 14, item 6: 4 processes, each with its own layer, start 40 conversations each (8 at
    a time) the way Chainlit 2.12 starts one. Every thread must end with its owner (set once the
    user's update arrives, in any order), its name and first message, and be listed for the
    user, with the session metadata whichever order the three writes ran in."""
    loop = asyncio.get_running_loop()
    started = await asyncio.gather(*(
        loop.run_in_executor(processes, first_message_race, target, owner.id, seed, 40, 8)
        for seed in range(4)))
    tids = [tid for group in started for tid in group]
    assert len(set(tids)) == 160

    # a None in a metadata update removes the key (Chainlit's merge rule)
    stored_session = {k: v for k, v in SESSION_METADATA.items() if v is not None}
    ownerless, wrong = [], []
    for tid in tids:
        thread = await layer.get_thread(tid)
        assert thread is not None
        if thread["userId"] != owner.id or thread["userIdentifier"] != owner.identifier:
            ownerless.append(tid)
        if (thread["name"] != f"first message of {tid}"
                or [s["output"] for s in thread["steps"]] != [f"first message of {tid}"]
                or thread["metadata"] != stored_session):
            wrong.append((thread["name"], [s["output"] for s in thread["steps"]],
                          thread["metadata"]))
    assert ownerless == []
    assert wrong == []
    assert sorted(await _listed(layer, owner)) == sorted(tids)
    authors = await asyncio.gather(*(layer.get_thread_author(tid) for tid in tids[:20]))
    assert set(authors) == {owner.identifier}


async def test_writes_after_a_delete(layer: ChainlitLayer, target: Target,
                                     owner: PersistedUser) -> None:
    """A session still writing to a thread its user deleted (in the same process): the steps
    and elements recreate the thread as an ownerless stub holding exactly them, as the SQL
    foreign key does; feedback for the deleted thread is refused (NotFoundError, nothing
    written). Never items without their thread."""
    tid = str(uuid.uuid4())
    await layer.update_thread(tid, name="deleted while answering", user_id=owner.id)
    answer = message(tid, "an answer", type_="assistant_message")
    await layer.create_step(answer)
    await layer.delete_thread(tid)

    with pytest.raises(NotFoundError):
        await layer.upsert_feedback(Feedback(forId=answer["id"], threadId=tid, value=1))
    assert await stored_children(layer, target, tid) == {
        "thread": 0, "step": 0, "element": 0, "feedback": 0, "feedback_without_step": 0}
    late = message(tid, "a late answer", type_="assistant_message")
    await layer.create_step(late)
    await layer.update_step({**late, "output": "a late answer, streamed"})
    element = cl.CustomElement(name="late widget", props={"n": 1}, for_id=late["id"])
    element.thread_id = tid
    await layer.create_element(element)

    thread = await layer.get_thread(tid)
    assert thread is not None
    assert (thread["userId"], thread["name"]) == (None, None)
    assert [s["output"] for s in thread["steps"]] == ["a late answer, streamed"]
    assert [e["name"] for e in thread["elements"] or []] == ["late widget"]
    assert await _listed(layer, owner) == []  # ownerless: in nobody's sidebar
    counts = await stored_children(layer, target, tid)
    assert counts == {"thread": 1, "step": 1, "element": 1, "feedback": 0,
                      "feedback_without_step": 0}
