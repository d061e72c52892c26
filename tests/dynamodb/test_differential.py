"""A table written by Chainlit's own ``DynamoDBDataLayer``, upgraded by ``chainlit-orm migrate``,
read by ours: every user, thread, step, element and feedback comes back intact.

The table is made exactly as Chainlit's docs CloudFormation makes it (PK/SK, GSI ``UserThread``
with ``INCLUDE [id, name]``). What Chainlit's layer leaves behind and ours tolerates: the user id
is the identifier (and ``userIdentifier`` holds it), ``createdAt`` rewritten at every
``update_thread`` (local time, no zone), metadata ``{}`` after a rename, numbers as DynamoDB
numbers, feedback embedded in the step item with id ``THREAD#{t}::STEP#{s}``, and a feedback-only
item for a step that was never created.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import boto3
import chainlit as cl
from chainlit.context import init_http_context
from chainlit.data.dynamodb import DynamoDBDataLayer
from chainlit.data.storage_clients.base import BaseStorageClient
from chainlit.types import Feedback, Pagination, ThreadFilter
from chainlit.user import User

from chainlit_orm.layers.dynamodb import DynamoDataLayer
from chainlit_orm.models.types import format_timestamp, parse_timestamp
from tests.aws import docs_table
from tests.contract.conftest import new_id
from tests.dynamodb.conftest import MOTO_ENDPOINT, REGION, table_url

REPO = Path(__file__).resolve().parents[2]


class MemoryStorage(BaseStorageClient):
    """A minimal in-memory storage client, usable by both layers."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    async def upload_file(self, object_key: str, data: bytes | str, mime: str = "",
                          overwrite: bool = True, content_disposition: str | None = None,
                          ) -> dict[str, Any]:
        self.objects[object_key] = data.encode() if isinstance(data, str) else bytes(data)
        return {"object_key": object_key, "url": f"https://files.test/{object_key}"}

    async def delete_file(self, object_key: str) -> bool:
        return self.objects.pop(object_key, None) is not None

    async def get_read_url(self, object_key: str) -> str:
        return f"https://files.test/{object_key}?signed=1"

    async def close(self) -> None:
        return None




STEP_KEYS = ("id", "threadId", "parentId", "name", "type", "input", "output", "metadata", "tags",
             "showInput", "language", "isError", "waitForAnswer", "command", "modes",
             "defaultOpen", "autoCollapse", "generation", "streaming")


async def test_chainlit_written_table_reads_back_intact(dynamodb: Any, table_name: str) -> None:
    docs_table(dynamodb, table_name)
    storage = MemoryStorage()
    theirs = DynamoDBDataLayer(table_name, storage_provider=storage,
                               client=boto3.client("dynamodb", endpoint_url=MOTO_ENDPOINT,
                                                   region_name=REGION))
    user = await theirs.create_user(User(identifier="alice@example.com",
                                         metadata={"role": "admin", "n": 3}))
    assert user is not None and user.id == "alice@example.com"
    init_http_context(thread_id=new_id(), user=user)

    first, second = new_id(), new_id()
    await theirs.update_thread(first, name="Première question", user_id=user.id,
                               metadata={"chat_profile": "gpt", "count": 2, "ratio": 0.5},
                               tags=["gpt", "ünï"])
    question = cl.Message(content="Quelle heure est-il ?", author="alice", type="user_message")
    question_dict = {**question.to_dict(), "threadId": first,
                     "createdAt": "2026-03-01T10:00:00.000000Z"}
    await theirs.create_step(question_dict)
    tool = cl.Step(name="clock", type="tool", parent_id=question.id, show_input="json",
                   language="json", metadata={"k": 1})
    tool.input, tool.output = '{"tz": "UTC"}', "10:00"
    tool_dict = {**tool.to_dict(), "threadId": first, "createdAt": "2026-03-01T10:00:01.000000Z"}
    await theirs.create_step(tool_dict)
    answer = cl.Message(content="Il est 10h.", author="Assistant", type="assistant_message")
    answer_dict = {**answer.to_dict(), "threadId": first,
                   "createdAt": "2026-03-01T10:00:02.000000Z"}
    await theirs.create_step(answer_dict)
    await theirs.update_step({**answer_dict, "output": "Il est 10h00."})
    image = cl.Image(name="clock.png", content=b"\x89PNG fake", mime="image/png",
                     for_id=answer.id, display="inline")
    image.thread_id = first
    await theirs.create_element(image)
    await theirs.upsert_feedback(Feedback(forId=answer.id, threadId=first, value=1,
                                          comment="précis"))
    await theirs.update_thread(second, name="Second", user_id=user.id,
                               metadata={"keep": 7}, tags=[])
    await theirs.update_thread(second, name="Second, renamed")  # wipes metadata to {}
    author_before = await theirs.get_thread_author(first)
    chainlit_view = await theirs.get_thread(first)
    assert chainlit_view is not None
    # feedback for a step that never exists: Chainlit leaves a feedback-only item (after which
    # its own get_thread raises KeyError: 'createdAt', contract §4.3, 10)
    ghost = new_id()
    await theirs.upsert_feedback(Feedback(forId=ghost, threadId=first, value=0))

    done = subprocess.run(
        [str(REPO / ".venv/bin/chainlit-orm"), "migrate", table_url(table_name)],
        capture_output=True, text=True, check=False, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    # 10 items: the user, the version record, the migration's lock item (held while it
    # backfills), two threads, three steps, the element and the orphan; rewritten: the user, both threads, the steps and the element (index keys), the two
    # feedbacks converted into items (the orphan's stays, as feedback for an unknown step does)
    assert lines[-1] == ("backfill: scanned 10 items; 1 users and 2 threads brought to the current "
                         "layout, 9 items rewritten, 1 feedback-only items converted"), lines

    ours = DynamoDataLayer(table_name, storage=storage, region=REGION,
                           endpoint_url=MOTO_ENDPOINT)
    try:
        got = await ours.get_user("alice@example.com")
        assert got is not None
        assert (got.id, got.identifier, got.metadata) == (
            "alice@example.com", "alice@example.com", {"role": "admin", "n": 3})
        assert type(got.metadata["n"]) is int
        assert await ours.get_thread_author(first) == author_before == "alice@example.com"

        page = await ours.list_threads(Pagination(first=10), ThreadFilter(userId=user.id))
        # by activity: the first thread's latest user message (2026-03-01) is older than the
        # second thread, which has none and so is active since its (rewritten) createdAt
        assert [t["id"] for t in page.data] == [second, first]
        assert page.data[1]["createdAt"] == "2026-03-01T10:00:00.000000Z"
        by_id = {t["id"]: t for t in page.data}
        assert by_id[first]["name"] == "Première question"
        assert by_id[first]["metadata"] == {"chat_profile": "gpt", "count": 2, "ratio": 0.5}
        assert by_id[second]["name"] == "Second, renamed" and by_id[second]["metadata"] == {}
        assert page.pageInfo.hasNextPage is False
        rated = await ours.list_threads(Pagination(first=10),
                                        ThreadFilter(userId=user.id, feedback=1))
        assert [t["id"] for t in rated.data] == [first]
        one = await ours.list_threads(Pagination(first=1), ThreadFilter(userId=user.id))
        assert len(one.data) == 1 and one.pageInfo.hasNextPage is True

        thread = await ours.get_thread(first)
        assert thread is not None
        assert thread["name"] == "Première question" and thread["userId"] == user.id
        assert thread["userIdentifier"] == "alice@example.com"
        assert thread["tags"] == ["gpt", "ünï"]
        assert thread["metadata"] == {"chat_profile": "gpt", "count": 2, "ratio": 0.5}
        assert type(thread["metadata"]["count"]) is int
        assert thread["createdAt"] == format_timestamp(parse_timestamp(
            chainlit_view["createdAt"]))
        assert [s["id"] for s in thread["steps"]] == [question.id, tool.id, answer.id]
        theirs_steps = {s["id"]: s for s in chainlit_view["steps"]}
        for step in thread["steps"]:
            for key in STEP_KEYS:
                expected = theirs_steps[step["id"]].get(key)
                if key == "metadata" and expected is None:
                    expected = {}
                if key in ("input", "output") and expected is None:
                    expected = ""  # ChainlitLayer gives StepDict's str for an absent text
                assert step.get(key) == expected, (step["id"], key)
                assert type(step.get(key)) is type(expected), (step["id"], key)
        by_step = {s["id"]: s for s in thread["steps"]}
        assert by_step[answer.id]["output"] == "Il est 10h00."
        assert by_step[tool.id]["showInput"] == "json"
        assert by_step[question.id]["showInput"] is None  # Message.to_dict has no showInput
        feedback = by_step[answer.id]["feedback"]
        assert (feedback["forId"], feedback["value"], feedback["comment"]) == (
            answer.id, 1, "précis")
        assert "feedback" not in by_step[question.id]
        assert ghost not in by_step  # the orphan feedback item is no step

        elements = thread["elements"] or []
        assert [e["id"] for e in elements] == [image.id]
        key = f"{user.id}/{first}/{image.id}"
        assert elements[0]["objectKey"] == key and elements[0]["name"] == "clock.png"
        assert elements[0]["url"] == f"https://files.test/{key}?signed=1"
        assert elements[0]["forId"] == answer.id and elements[0]["mime"] == "image/png"
        element = await ours.get_element(first, image.id)
        assert element is not None and element["objectKey"] == key

        async def with_feedback(value: int) -> list[str]:
            listed = await ours.list_threads(Pagination(first=10),
                                             ThreadFilter(userId=user.id, feedback=value))
            return [t["id"] for t in listed.data]

        assert await with_feedback(0) == [first]  # the orphan's feedback counts, as in SQL
        # the converted feedback is ours now: its id round-trips through upsert and delete
        again = await ours.upsert_feedback(Feedback(forId=answer.id, threadId=first, value=0,
                                                    id=feedback["id"]))
        assert again == feedback["id"]
        assert (await with_feedback(1), await with_feedback(0)) == ([], [first])
        assert await ours.delete_feedback(feedback["id"]) is True
        assert await ours.delete_feedback(feedback["id"]) is False

        # and ours writes to the table with Chainlit's ids
        await ours.update_thread(second, metadata={"is_shared": True})
        await ours.delete_thread(first)
        assert key not in storage.objects
        assert await ours.get_thread(first) is None
    finally:
        await ours.close()
