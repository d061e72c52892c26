"""A store written through chainlit-orm's layer with Chainlit's own objects, and the answers a
Chainlit app gets from it (lists, searches, feedback filters, favorites, whole threads).

The seeded data carry every key Chainlit puts in its dicts, unicode everywhere, integral and
fractional floats in JSON, element files, both feedback values, a shared thread, favorited
steps, a key no column has (the overflow), a step text above DynamoDB's offload threshold, and
an ownerless stub thread (a step written before its thread).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import chainlit as cl
from chainlit.context import init_http_context
from chainlit.types import Feedback, Pagination, ThreadFilter
from chainlit.user import User

from chainlit_orm.layers.base import ChainlitLayer

PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00"
       b"\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00"
       b"\x00\x00\x00IEND\xaeB`\x82")
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"

BASE = datetime(2025, 3, 1, 12, 0, 0, 250000, tzinfo=UTC)

#: Search terms: in a thread name only; in message text only (SQL backends search both); a
#: case-folded match of a name.
NAME_TERM = "ça va"
MESSAGE_TERM = "zebra"
FOLDED_TERM = "STRASSE"


def ts(seconds: float) -> str:
    return (BASE + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Seeded:
    users: dict[str, Any] = field(default_factory=dict)  # identifier -> PersistedUser
    threads: dict[str, str] = field(default_factory=dict)  # label -> id
    files: int = 0
    big_step: str = ""  # the step whose output is above DynamoDB's offload threshold


def _step(thread_id: str, at: float, **kwargs: Any) -> dict[str, Any]:
    kind = kwargs.pop("kind", "message")
    if kind == "message":
        msg = cl.Message(content=kwargs.pop("content"), author=kwargs.pop("author", "alice"),
                         type=kwargs.pop("type_", "user_message"))
        data = dict(msg.to_dict())
    else:
        step = cl.Step(name=kwargs.pop("name"), type=kwargs.pop("type_", "tool"),
                       **kwargs.pop("options", {}))
        step.input = kwargs.pop("input", "")
        step.output = kwargs.pop("output", "")
        data = dict(step.to_dict())
    data["threadId"] = thread_id
    data["createdAt"] = data["start"] = ts(at)
    data["end"] = ts(at + 0.5)
    data.update(kwargs)
    return data


async def seed(layer: ChainlitLayer, *, big_text: bool = True) -> Seeded:
    """Write the seeded store through ``layer`` (whose storage keeps the element files)."""
    init_http_context(thread_id=str(uuid.uuid4()))
    out = Seeded()
    for identifier, metadata in (
        ("alice@example.com", {"role": "admin", "prefs": {"theme": "dark", "scale": 1.0}}),
        ("bob 🐢@example.com", {"provider": "github", "ünïcödé": "çødé", "ratio": 0.25}),
        ("carol@example.com", {}),
    ):
        user = await layer.create_user(User(identifier=identifier, metadata=metadata,
                                            display_name=identifier.split("@")[0].title()))
        assert user is not None
        out.users[identifier] = user
    alice, bob = out.users["alice@example.com"], out.users["bob 🐢@example.com"]

    def new(label: str) -> str:
        out.threads[label] = str(uuid.uuid4())
        return out.threads[label]

    # --- alice 1: shared, every step key, files, feedback 1, a favorite, an unknown key
    t = new("alice-1")
    await layer.update_thread(t, name="Bonjour, ça va ? 👋", user_id=alice.id,
                              tags=["chat", "профиль"])
    await layer.update_thread(t, metadata={"chat_profile": "gpt-4o", "is_shared": True,
                                           "nested": {"x": 1.5, "y": [1, 2.0, None]},
                                           "env": {"language": "fr-FR"}})
    question = _step(t, 1, content="Quelle est la capitale de la France ?", command="search")
    await layer.create_step(question)
    tool = _step(t, 2, kind="step", name="lookup ⚙", type_="tool",
                 options={"tags": ["a", "b"], "language": "python", "icon": "wrench",
                          "default_open": True, "auto_collapse": True, "show_input": "python",
                          "metadata": {"k": "v"}},
                 input='{"q": "capitale"}', output="Paris", parentId=question["id"],
                 isError=False, waitForAnswer=False,
                 generation={"provider": "openai", "tokenCount": 12, "settings":
                             {"temperature": 0.2, "top_p": 1.0}, "messages":
                             [{"role": "user", "content": "hi ✨"}]})
    await layer.create_step(tool)
    answer = _step(t, 3, content="Paris, bien sûr. 🗼", author="Assistant",
                   type_="assistant_message", modes={"model": "gpt-4o"},
                   metadata={"favorite": True, "source": "kb"}, someFutureKey={"n": [1, 2]})
    await layer.create_step(answer)
    await layer.upsert_feedback(Feedback(forId=answer["id"], threadId=t, value=1,
                                         comment="très bien 👍"))
    for element in (
        cl.Image(name="pixel ü.png", content=PNG, display="inline", size="small",
                 for_id=answer["id"]),
        cl.File(name="capitale.pdf", content=PDF, display="side", for_id=question["id"]),
        cl.File(name="remote.pdf", url="https://example.com/remote.pdf", for_id=answer["id"]),
        cl.CustomElement(name="Widget", props={"count": 3, "ok": True, "w": 2.0},
                         for_id=answer["id"]),
        cl.Audio(name="bip.mp3", content=b"ID3\x03bip", auto_play=True, for_id=answer["id"]),
    ):
        element.thread_id = t
        await layer.create_element(element)
    out.files += 4  # the image, the PDF, the audio and the custom element's props (JSON)

    # --- alice 2: feedback 0, a message-only search term, a big text
    t = new("alice-2")
    await layer.update_thread(t, name="Straße und Weg", user_id=alice.id)
    await layer.create_step(_step(t, 10, content="Tell me about the zebra crossing"))
    reply = _step(t, 11, content="A zebra crossing is… " + ("🦓" * 30_000 if big_text else "x"),
                  author="Assistant", type_="assistant_message")
    await layer.create_step(reply)
    out.big_step = reply["id"]
    await layer.upsert_feedback(Feedback(forId=reply["id"], threadId=t, value=0, comment=None))

    # --- bob 1: a text element, feedback 0 with a comment, a favorite
    t = new("bob-1")
    await layer.update_thread(t, name="Ça va bien ? 🐢", user_id=bob.id,
                              metadata={"is_shared": False})
    first = _step(t, 20, content="Write a haiku", author="bob")
    await layer.create_step(first)
    haiku = _step(t, 21, content="Old pond / frog leaps in", author="Assistant",
                  type_="assistant_message", metadata={"favorite": True})
    await layer.create_step(haiku)
    for element in (
        cl.Text(name="notes.txt", content="notes — ünïcödé ✓", language="markdown",
                for_id=haiku["id"]),
        cl.Pdf(name="doc.pdf", content=PDF, page=2, for_id=haiku["id"]),
        cl.Video(name="clip.mp4", url="https://example.com/clip.mp4",
                 player_config={"controls": True, "volume": 0.5}, for_id=haiku["id"]),
    ):
        element.thread_id = t
        await layer.create_element(element)
    out.files += 2
    await layer.upsert_feedback(Feedback(forId=haiku["id"], threadId=t, value=0,
                                         comment="too short"))

    # --- bob 2: no feedback, steps only
    t = new("bob-2")
    await layer.update_thread(t, name="Empty-ish", user_id=bob.id)
    await layer.create_step(_step(t, 30, content="hello", author="bob"))
    await layer.create_step(_step(t, 31, kind="step", name="run", type_="run",
                                  options={"show_input": False}, output="done"))

    # --- a stub: a step written before (and without) its thread
    t = new("stub")
    await layer.create_step(_step(t, 40, content="orphan message"))
    return out


async def answers(layer: ChainlitLayer, seeded: Seeded, *, messages: bool) -> dict[str, Any]:
    """Everything a Chainlit app reads, in comparable form. ``messages``: whether the backend's
    search covers message text (SQL) or names only (DynamoDB)."""
    out: dict[str, Any] = {}
    for identifier, user in seeded.users.items():
        got = await layer.get_user(identifier)
        assert got is not None
        out[f"user {identifier}"] = {"id": got.id, "identifier": got.identifier,
                                     "metadata": got.metadata, "display_name": got.display_name,
                                     "createdAt": got.createdAt}
        listing = []
        cursor = None
        while True:
            page = await layer.list_threads(Pagination(first=2, cursor=cursor),
                                            ThreadFilter(userId=user.id))
            listing += [(d["id"], d["name"], d["createdAt"], d.get("tags"), d["metadata"],
                         d.get("userIdentifier")) for d in page.data]
            if not page.pageInfo.hasNextPage:
                break
            cursor = page.pageInfo.endCursor
        out[f"list {identifier}"] = listing
        for label, filters in (
            ("name", ThreadFilter(userId=user.id, search=NAME_TERM)),
            ("folded", ThreadFilter(userId=user.id, search=FOLDED_TERM)),
            ("message", ThreadFilter(userId=user.id, search=MESSAGE_TERM)),
            ("feedback 0", ThreadFilter(userId=user.id, feedback=0)),
            ("feedback 1", ThreadFilter(userId=user.id, feedback=1)),
        ):
            page = await layer.list_threads(Pagination(first=20), filters)
            out[f"{label} {identifier}"] = [d["id"] for d in page.data]
        favorites = await layer.get_favorite_steps(user.id)
        out[f"favorites {identifier}"] = sorted(s["id"] for s in favorites)
    if not messages:  # DynamoDB's one documented deviation: names only
        for identifier in seeded.users:
            out[f"message {identifier}"] = None
    for label, thread_id in seeded.threads.items():
        thread = await layer.get_thread(thread_id)
        assert thread is not None, label
        for element in thread.get("elements") or []:
            element["url"] = bool(element.get("url")) if element.get("objectKey") else element.get(
                "url")
        out[f"thread {label}"] = thread
    return out


async def seed_many(layer: ChainlitLayer, users: list[Any], count: int, *,
                    files: bool = True) -> list[str]:
    """``count`` small threads (3 steps, one element with a file, feedback on every other one),
    owned in turn by ``users``; returns their ids."""
    init_http_context(thread_id=str(uuid.uuid4()))
    ids = []
    for number in range(count):
        tid = str(uuid.uuid4())
        ids.append(tid)
        owner = users[number % len(users)]
        await layer.update_thread(tid, name=f"thread {number} ✓", user_id=owner.id)
        question = _step(tid, 100 + number, content=f"question {number}")
        await layer.create_step(question)
        await layer.create_step(_step(tid, 100.2 + number, kind="step", name="tool",
                                      output=f"tool {number}"))
        answer = _step(tid, 100.4 + number, content=f"answer {number}", author="Assistant",
                       type_="assistant_message")
        await layer.create_step(answer)
        if files:
            text = cl.Text(name=f"n{number}.txt", content=f"file {number} ✓",
                           for_id=answer["id"])
            text.thread_id = tid
            await layer.create_element(text)
        if number % 2:
            await layer.upsert_feedback(Feedback(forId=answer["id"], threadId=tid,
                                                 value=number % 4 // 2, comment=f"c{number}"))
    return ids
