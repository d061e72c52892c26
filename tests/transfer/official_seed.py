"""A database of Chainlit's official data layer, filled by that layer's own code.

The schema is the SQL of chainlit-datalayer's two Prisma migrations
(``bench/fixtures/chainlit_official_prisma.sql``); every row is written by
``chainlit.data.chainlit_data_layer.ChainlitDataLayer`` inside a Chainlit context (its step,
element and delete methods are wrapped in Chainlit's ``queue_until_user_message``), with an
FsspecStorage as its storage client. The one exception is a single ``UPDATE`` setting
``"deletedAt"``, a column the schema has and that layer reads but never writes.

What the official layer does along the way, which the copy must cope with:

* ``create_element`` for a step that does not exist creates a stub step *without a thread*;
* ``delete_thread`` deletes the thread's steps (``ON DELETE CASCADE``) and so sets their
  feedback's ``"stepId"`` to NULL (``ON DELETE SET NULL``): feedback without a step;
* ``upsert_feedback`` without an id adds a second feedback row to a step.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import chainlit as cl
from chainlit.types import Feedback
from chainlit.user import User

from tests.fixtures.legacy import _chainlit_context

DDL = Path(__file__).resolve().parents[2] / "bench" / "fixtures" / "chainlit_official_prisma.sql"
BASE = datetime(2025, 5, 4, 8, 30, 0, 125000, tzinfo=UTC)
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24 + b"IEND\xaeB`\x82"


def ts(seconds: float) -> str:
    return (BASE + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class OfficialSeed:
    """What was written, to compare with what chainlit-orm reads back."""

    users: dict[str, str] = field(default_factory=dict)  # identifier -> id
    threads: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> expectations
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> the dict sent
    elements: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> expectations
    files: dict[str, bytes] = field(default_factory=dict)  # element id -> bytes
    feedback: dict[str, dict[str, Any]] = field(default_factory=dict)  # step id -> kept one
    skipped: dict[str, int] = field(default_factory=dict)


def dsn(url: str) -> str:
    """asyncpg's DSN for a SQLAlchemy URL (ChainlitDataLayer takes a plain postgresql://)."""
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def create_schema(url: str) -> None:
    conn = await asyncpg.connect(dsn(url))
    try:
        await conn.execute(DDL.read_text())
    finally:
        await conn.close()


def _message(thread_id: str, at: float, content: str, *, type_: str = "user_message",
             author: str = "alice", **extra: Any) -> dict[str, Any]:
    msg = cl.Message(content=content, author=author, type=type_)  # type: ignore[arg-type]
    data = dict(msg.to_dict())
    data.update(threadId=thread_id, createdAt=ts(at), start=ts(at), end=ts(at + 1), **extra)
    return data


async def fill(url: str, storage: Any) -> OfficialSeed:
    """Write the official store (see the module docstring); ``storage`` keeps its files."""
    from chainlit.data.chainlit_data_layer import ChainlitDataLayer

    out = OfficialSeed()
    layer = ChainlitDataLayer(dsn(url), storage_client=storage)
    try:
        async with _chainlit_context(str(uuid.uuid4())):
            for identifier, metadata in (("alice@example.com", {"role": "admin", "n": 2.5}),
                                         ("bob 🐢@example.com", {"provider": "github"})):
                user = await layer.create_user(User(identifier=identifier, metadata=metadata))
                assert user is not None
                out.users[identifier] = user.id
            alice, bob = out.users["alice@example.com"], out.users["bob 🐢@example.com"]

            async def thread(name: str, owner: str, metadata: dict[str, Any],
                             tags: list[str]) -> str:
                tid = str(uuid.uuid4())
                await layer.update_thread(tid, name=name, user_id=owner, metadata=metadata,
                                          tags=tags)
                out.threads[tid] = {"name": name, "userId": owner, "metadata": metadata,
                                    "tags": tags}
                return tid

            async def step(data: dict[str, Any]) -> dict[str, Any]:
                await layer.create_step(data)
                out.steps[data["id"]] = data
                return data

            async def element(el: Any, content: bytes | None) -> None:
                await layer.create_element(el)
                out.elements[el.id] = {"name": el.name, "type": el.type, "forId": el.for_id,
                                       "threadId": el.thread_id, "display": el.display,
                                       "size": getattr(el, "size", None),
                                       "language": getattr(el, "language", None),
                                       "page": getattr(el, "page", None), "mime": el.mime,
                                       "url": el.url}
                if content is not None:
                    out.files[el.id] = content

            # alice's first thread: every kind of row, files, a duplicate feedback
            t1 = await thread("Bonjour, ça va ? 👋", alice, {"chat_profile": "gpt-4o"},
                              ["chat", "профиль"])
            q = await step(_message(t1, 1, "Quelle est la capitale ? ✨"))
            tool = cl.Step(name="lookup", type="tool", show_input=True)
            tool_dict = dict(tool.to_dict())
            tool_dict.update(threadId=t1, parentId=q["id"], input='{"q": "capitale"}',
                             output="Paris", createdAt=ts(2), isError=True,
                             metadata={"k": [1, 2]})
            await step(tool_dict)
            a = await step(_message(t1, 3, "Paris. 🗼", type_="assistant_message",
                                    author="Assistant", metadata={"favorite": True}))
            image = cl.Image(name="pixel.png", content=PNG, display="inline", size="small",
                             for_id=a["id"])
            image.thread_id = t1
            await element(image, PNG)
            pdf = cl.Pdf(name="doc.pdf", content=b"%PDF-1.4 tiny", page=3, for_id=q["id"])
            pdf.thread_id = t1
            await element(pdf, b"%PDF-1.4 tiny")
            linked = cl.File(name="remote.pdf", url="https://example.com/r.pdf", for_id=a["id"])
            linked.thread_id = t1
            await element(linked, None)
            first = await layer.upsert_feedback(Feedback(forId=a["id"], value=0, comment="meh"))
            newer = await layer.upsert_feedback(Feedback(forId=a["id"], value=1,
                                                         comment="en fait, très bien"))
            out.feedback[a["id"]] = {"id": newer, "value": 1, "comment": "en fait, très bien"}
            assert first != newer
            out.skipped["feedback superseded by a newer one on the same step"] = 1

            # alice's second thread: a text element, feedback 0
            t2 = await thread("Straße", alice, {}, [])
            await step(_message(t2, 10, "zebra?"))
            b = await step(_message(t2, 11, "zebra!", type_="assistant_message",
                                    author="Assistant"))
            note = cl.Text(name="note.txt", content="ünïcödé ✓", for_id=b["id"])
            note.thread_id = t2
            await element(note, "ünïcödé ✓".encode())
            fid = await layer.upsert_feedback(Feedback(forId=b["id"], value=0, comment=None))
            out.feedback[b["id"]] = {"id": fid, "value": 0, "comment": None}

            # bob's thread
            t3 = await thread("Haiku 🐢", bob, {"is_shared": True}, [])
            await step(_message(t3, 20, "Write a haiku", author="bob"))
            await step(_message(t3, 21, "Old pond", type_="assistant_message",
                                author="Assistant"))

            # an element whose step does not exist yet: the layer creates a stub step with no
            # thread, which chainlit-orm cannot hold
            ghost = cl.Text(name="ghost.txt", content="boo", for_id=str(uuid.uuid4()))
            ghost.thread_id = t3
            await element(ghost, b"boo")
            out.skipped["step without a thread"] = 1

            # a deleted thread leaves its feedback without a step
            gone = await thread("to delete", bob, {}, [])
            g = await step(_message(gone, 30, "bye", type_="assistant_message"))
            await layer.upsert_feedback(Feedback(forId=g["id"], value=1, comment="x"))
            await layer.delete_thread(gone)
            del out.threads[gone]
            del out.steps[g["id"]]
            out.skipped["feedback without a step"] = 1

            # a soft-deleted thread (the one row not written by the layer: it never sets it)
            hidden = await thread("hidden", bob, {}, [])
            await step(_message(hidden, 40, "secret"))
            conn = await asyncpg.connect(dsn(url))
            try:
                await conn.execute('UPDATE "Thread" SET "deletedAt" = now() WHERE id = $1',
                                   hidden)
            finally:
                await conn.close()
            del out.threads[hidden]
            out.steps = {k: v for k, v in out.steps.items() if v.get("threadId") != hidden}
            out.skipped["thread soft-deleted in the official schema (deletedAt set), with its "
                        "rows"] = 2
    finally:
        await layer.close()
    # the ghost element is in a live thread; it refers to the stub step (which is left out)
    return out
