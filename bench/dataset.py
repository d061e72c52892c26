"""Deterministic benchmark data, in the exact dict shapes Chainlit produces.

Step dicts are built from ``cl.Message(...).to_dict()`` and ``cl.Step(...).to_dict()`` templates
(made once inside a Chainlit HTTP context), then copied with new ids and times. Every target is
loaded from the same records, each converting them into its own schema.
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

T0 = datetime(2025, 1, 1, tzinfo=UTC)

# W2 search terms. Every W2 user (whatever its N) has exactly SEARCH_MATCHES threads with NAME_TERM
# in their name and SEARCH_MATCHES other threads with TEXT_TERM in their assistant message, spread
# evenly over the user's activity order; neither term (nor any substring of 3 characters or more
# of it) occurs anywhere else in any store, and no other text of the dataset contains a "Z" or a
# "z", so ONE_CHAR_TERM matches exactly the NAME_TERM threads, under case-sensitive and
# case-insensitive matching alike. The other texts use the letters of "Question number .. about
# things" and "message .. of thread ..: lorem ipsum dolor sit amet, consectetur adipiscing elit."
NAME_TERM = "Zebra"
TEXT_TERM = "Walrus"
ONE_CHAR_TERM = "Z"
SEARCH_MATCHES = 10


def ts(seconds: float) -> str:
    """Fixed-width ISO-8601 UTC with microseconds and Z (parses with Chainlit's ISO_FORMAT)."""
    return (T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_id() -> str:
    return str(uuid.uuid4())


_TEMPLATES: dict[str, dict[str, Any]] = {}


def templates() -> dict[str, dict[str, Any]]:
    """StepDict/ElementDict templates from Chainlit's own classes (needs a Chainlit context)."""
    if not _TEMPLATES:
        import chainlit as cl

        user = cl.Message(content="", author="user", type="user_message")
        asst = cl.Message(content="", author="Assistant")
        tool = cl.Step(name="search_docs", type="tool")
        _TEMPLATES["user_message"] = user.to_dict()
        _TEMPLATES["assistant_message"] = asst.to_dict()
        _TEMPLATES["tool"] = tool.to_dict()
        el = cl.Text(name="notes.txt", content="hello", display="inline")
        _TEMPLATES["element"] = el.to_dict()
    return _TEMPLATES


KIND_CYCLE = ("user_message", "tool", "assistant_message")


def make_step(kind: str, thread_id: str, at: float, text: str, parent_id: str | None = None,
              final: bool = True) -> dict[str, Any]:
    """A StepDict as ``to_dict()`` gives it at create (final=False) or at update time."""
    d = copy.deepcopy(templates()[kind])
    d["id"] = new_id()
    d["threadId"] = thread_id
    d["createdAt"] = ts(at)
    d["start"] = ts(at)
    d["end"] = ts(at) if final or kind != "tool" else None
    d["output"] = text if final else ""
    if kind == "tool":
        d["input"] = "query: " + text[:40]
        d["parentId"] = parent_id
    return d


def finalize(step: dict[str, Any], text: str, end_at: float) -> dict[str, Any]:
    """The update_step payload: the same dict with output and end filled in."""
    d = dict(step)
    d["output"] = text
    d["end"] = ts(end_at)
    return d


@dataclass
class UserRec:
    id: str
    identifier: str
    created_at: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class ThreadRec:
    id: str
    user: UserRec
    name: str
    created_at: str
    activity: str  # createdAt of the latest user message
    metadata: dict[str, Any]
    steps: list[dict[str, Any]]
    elements: list[dict[str, Any]] = field(default_factory=list)
    feedbacks: list[dict[str, Any]] = field(default_factory=list)


def _text(i: int, j: int, size: int) -> str:
    base = f"message {j} of thread {i}: lorem ipsum dolor sit amet, consectetur adipiscing elit. "
    return (base * (size // len(base) + 1))[:size]


def search_slots(n: int) -> tuple[set[int], set[int]]:
    """Indexes (in creation order, which is activity order) of the threads of a W2 user with
    ``n`` threads that carry NAME_TERM in their name and TEXT_TERM in their assistant message:
    SEARCH_MATCHES of each, evenly spread (``n`` must be a multiple of SEARCH_MATCHES)."""
    if n % SEARCH_MATCHES:
        raise ValueError(f"W2 N must be a multiple of {SEARCH_MATCHES}: {n}")
    step = n // SEARCH_MATCHES
    name = {k * step + step // 3 for k in range(SEARCH_MATCHES)}
    text = {k * step + (2 * step) // 3 for k in range(SEARCH_MATCHES)}
    if name & text:
        raise ValueError(f"W2 N too small for disjoint search slots: {n}")
    return name, text


def make_thread(user: UserRec, i: int, n_steps: int, *, at: float, name: str | None = None,
                n_elements: int = 0, n_feedback: int = 0, text_size: int = 200,
                name_term: bool = False, text_term: bool = False) -> ThreadRec:
    tid = new_id()
    steps: list[dict[str, Any]] = []
    last_user = at
    parent = None
    for j in range(n_steps):
        kind = KIND_CYCLE[j % 3] if n_steps > 2 else ("user_message", "assistant_message")[j % 2]
        t = at + j * 0.001
        text = _text(i, j, text_size)
        if text_term and kind == "assistant_message":
            text = f"{TEXT_TERM} " + text
        s = make_step(kind, tid, t, text, parent_id=parent)
        if kind == "user_message":
            last_user = t
            parent = None
        if kind == "tool":
            parent = None
        steps.append(s)
    thread_name = name or (f"Question number {i} about the {NAME_TERM}" if name_term
                           else f"Question number {i} about things")
    elements = []
    for k in range(n_elements):
        e = copy.deepcopy(templates()["element"])
        e.update(id=new_id(), threadId=tid, forId=steps[min(k, len(steps) - 1)]["id"] if steps else None,
                 name=f"file{k}.txt", url=f"https://example.com/{tid}/{k}.txt", objectKey=None,
                 mime="text/plain", chainlitKey=None, size="small")
        elements.append(e)
    feedbacks = []
    msg_steps = [s for s in steps if s["type"] == "assistant_message"] or steps
    for k in range(min(n_feedback, len(msg_steps))):
        feedbacks.append({"id": new_id(), "forId": msg_steps[k]["id"], "threadId": tid,
                          "value": k % 2, "comment": f"comment {k}"})
    return ThreadRec(id=tid, user=user, name=thread_name, created_at=ts(at), activity=ts(last_user),
                     metadata={"chat_profile": "default", "is_shared": False}, steps=steps,
                     elements=elements, feedbacks=feedbacks)


@dataclass
class Dataset:
    users: list[UserRec]
    threads: list[ThreadRec]
    w2_users: dict[int, UserRec]  # N -> user with N threads
    w3_threads: dict[int, ThreadRec]  # steps -> thread
    w4_threads: list[ThreadRec]  # w4_per_round per round, deleted by W4
    w5_users: list[UserRec]
    w5_threads: dict[str, list[ThreadRec]]  # user id -> threads
    w1_users: list[UserRec]


def make_user(name: str) -> UserRec:
    return UserRec(id=new_id(), identifier=name, created_at=ts(0), metadata={"role": "user"})


def build(scale: Any) -> Dataset:
    users: list[UserRec] = []
    threads: list[ThreadRec] = []
    clock = 1000.0
    w2_users = {}
    for n in scale.w2_ns:
        u = make_user(f"w2-user-{n}")
        users.append(u)
        w2_users[n] = u
        in_name, in_text = search_slots(n)
        for i in range(n):
            clock += 1
            threads.append(make_thread(u, i, 2, at=clock, name_term=i in in_name,
                                       text_term=i in in_text, text_size=120))
    owner = make_user("w3-owner")
    users.append(owner)
    w3 = {}
    for n in scale.w3_steps:
        clock += 1
        w3[n] = make_thread(owner, n, n, at=clock, n_elements=3, n_feedback=max(1, n // 10))
        threads.append(w3[n])
    w4 = []
    for r in range(scale.w4_rounds * scale.w4_per_round):
        clock += 1
        t = make_thread(owner, 90000 + r, 100, at=clock, n_elements=3, n_feedback=10)
        w4.append(t)
        threads.append(t)
    w5_users = [make_user(f"w5-user-{k}") for k in range(scale.w5_users)]
    users.extend(w5_users)
    w5_threads: dict[str, list[ThreadRec]] = {}
    for u in w5_users:
        w5_threads[u.id] = []
        for i in range(scale.w5_threads_per_user):
            clock += 1
            t = make_thread(u, i, 6, at=clock, n_elements=1, n_feedback=1)
            w5_threads[u.id].append(t)
            threads.append(t)
    w1_users = [make_user(f"w1-user-{k}") for k in range(8)]
    users.extend(w1_users)
    return Dataset(users, threads, w2_users, w3, w4, w5_users, w5_threads, w1_users)
