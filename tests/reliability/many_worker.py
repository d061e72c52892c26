"""One app process of the many-processes load test (run in spawned workers).

Each worker is what one Chainlit worker process does to the shared database: its own layer (its
own connection pool or botocore client), two logged-in users, and ``tasks`` concurrent
conversations for ``seconds``. Every write that returned is recorded as *acknowledged*, with the
ids and the values it wrote, so the parent can check the store against the acknowledgements once
every process is done (:mod:`tests.reliability.test_many_processes`).

A conversation turn is what Chainlit sends for one exchange: a new thread's ``update_thread``
(name, owner) or a turn on one of the task's earlier threads, then the user message
(``create_step``: the thread's activity), the assistant message (``create_step``, then
``update_step`` with the streamed answer), sometimes an ``update_thread`` (metadata or a new
name), then the reads of a browser: ``get_thread`` of the thread and ``list_threads`` (the
sidebar's first page).

What a worker checks while it runs (read-your-writes in one process: every step it was told was
written is in ``get_thread``; the sidebar is in activity order and holds only its user's
threads) goes into ``violations``; errors of any call go into ``errors``. Neither stops the run.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from typing import Any

from chainlit.context import init_http_context
from chainlit.types import Pagination, ThreadFilter
from chainlit.user import User
from chainlit.utils import utc_now

from chainlit_orm.models.types import canonical_timestamp
from tests.contract.conftest import message
from tests.reliability.storm_targets import Target, aws_test_env, open_layer

#: Users per process; task ``j`` writes as user ``j % USERS_PER_PROCESS``.
USERS_PER_PROCESS = 2
#: The sidebar's page (Chainlit asks for 20 threads at a time).
SIDEBAR = 20


def run_worker(target: Target, run: str, proc: int, tasks: int, seconds: float,
               barrier: Any, layer_options: dict[str, Any]) -> dict[str, Any]:
    """Body of one worker process; returns its acknowledgements (see :func:`_worker`).

    ``barrier`` (a ``multiprocessing.Manager().Barrier``) is passed once the layer is open and
    the users exist, so every process starts writing at the same moment."""
    aws_test_env()
    return asyncio.run(_worker(target, run, proc, tasks, seconds, barrier, layer_options))


async def _worker(target: Target, run: str, proc: int, tasks: int, seconds: float,
                  barrier: Any, layer_options: dict[str, Any]) -> dict[str, Any]:
    opened = time.monotonic()
    init_http_context(thread_id=str(uuid.uuid4()))
    layer = open_layer(target, **layer_options)
    users: dict[str, str] = {}  # identifier -> id
    for k in range(USERS_PER_PROCESS):
        created = await layer.create_user(User(identifier=f"mp-{run}-{proc}-{k}"))
        assert created is not None
        users[created.identifier] = created.id
    idents = list(users)
    #: thread id -> what was acknowledged for it
    threads: dict[str, dict[str, Any]] = {}
    errors: list[str] = []
    violations: list[str] = []
    counts = {"writes": 0, "reads": 0}

    async def call(kind: str, what: str, coro: Any) -> Any:
        try:
            result = await coro
        except Exception as exc:
            errors.append(f"{what}: {type(exc).__name__}: {exc}"[:300])
            return _FAILED
        counts[kind] += 1
        return result

    async def task(j: int, end: float) -> None:
        rnd = random.Random(f"{run}-{proc}-{j}")
        ident = idents[j % USERS_PER_PROCESS]
        uid = users[ident]
        own: list[str] = []
        turn = 0
        while time.monotonic() < end:
            turn += 1
            if not own or rnd.random() < 0.4:
                tid = str(uuid.uuid4())
                name = f"p{proc} t{j} #{turn}"
                if await call("writes", "update_thread(new)",
                              layer.update_thread(tid, name=name, user_id=uid)) is _FAILED:
                    continue
                threads[tid] = {"user": ident, "name": name, "steps": {}, "activity": None,
                                "turns": None}
                own.append(tid)
            else:
                tid = rnd.choice(own)
            acked = threads[tid]
            asked = message(tid, f"question {turn} of p{proc} t{j}")
            asked["createdAt"] = asked["start"] = asked["end"] = utc_now()
            if await call("writes", "create_step(user)", layer.create_step(asked)) is not _FAILED:
                acked["steps"][asked["id"]] = asked["output"]
                at = canonical_timestamp(asked["createdAt"])
                if acked["activity"] is None or at > acked["activity"]:
                    acked["activity"] = at
            # past the deadline a task stops between writes (each acknowledged write is recorded
            # on its own), after the user message that gives a new thread its activity, and
            # then still makes its reads
            answer = message(tid, "", author="assistant", type_="assistant_message")
            if time.monotonic() < end and await call(
                    "writes", "create_step(assistant)", layer.create_step(answer)) is not _FAILED:
                acked["steps"][answer["id"]] = ""
                answer["output"] = f"answer {turn} to p{proc} t{j}"
                if time.monotonic() < end and await call(
                        "writes", "update_step", layer.update_step(answer)) is not _FAILED:
                    acked["steps"][answer["id"]] = answer["output"]
            if time.monotonic() < end and rnd.random() < 0.3:
                if await call("writes", "update_thread(metadata)", layer.update_thread(
                        tid, metadata={"turns": turn})) is not _FAILED:
                    acked["turns"] = turn
            elif time.monotonic() < end and rnd.random() < 0.15:
                renamed = f"p{proc} t{j} renamed at #{turn}"
                if await call("writes", "update_thread(name)",
                              layer.update_thread(tid, name=renamed)) is not _FAILED:
                    acked["name"] = renamed
            thread = await call("reads", "get_thread", layer.get_thread(tid))
            if thread is not _FAILED:
                _check_thread(thread, tid, acked, uid, violations)
            page = await call("reads", "list_threads", layer.list_threads(
                Pagination(first=SIDEBAR), ThreadFilter(userId=uid)))
            if page is not _FAILED:
                _check_sidebar(page.data, uid, violations)

    ready = time.monotonic() - opened
    await asyncio.to_thread(barrier.wait, 120)
    started = time.monotonic()
    end = started + seconds
    try:
        await asyncio.gather(*(task(j, end) for j in range(tasks)))
    finally:
        elapsed = time.monotonic() - started
        await layer.close()
    return {"proc": proc, "users": users, "threads": threads, "errors": errors,
            "violations": violations, "elapsed": elapsed, "ready": ready, **counts}


_FAILED = object()


def _check_thread(thread: Any, tid: str, acked: dict[str, Any], uid: str,
                  violations: list[str]) -> None:
    """Read-your-writes: the thread's owner, and every step acknowledged so far, with its
    latest acknowledged text (only this task writes this thread)."""
    if thread is None:
        violations.append(f"get_thread({tid}) is None after its update_thread returned")
        return
    if thread.get("userId") != uid:
        violations.append(f"thread {tid} owned by {thread.get('userId')}, not {uid}")
    stored = {s["id"]: s["output"] for s in thread["steps"]}
    for sid, output in acked["steps"].items():
        if stored.get(sid) != output:
            violations.append(f"thread {tid} step {sid}: {stored.get(sid)!r} != {output!r}")


def _check_sidebar(rows: list[Any], uid: str, violations: list[str]) -> None:
    """The sidebar's page: only the user's threads, latest activity first (id breaks ties)."""
    keys = [(row["createdAt"], row["id"]) for row in rows]
    if keys != sorted(keys, reverse=True):
        violations.append(f"list_threads of {uid} out of activity order: {keys}")
    strangers = [row["id"] for row in rows if row.get("userId") != uid]
    if strangers:
        violations.append(f"list_threads of {uid} lists threads of others: {strangers}")


__all__ = ["SIDEBAR", "USERS_PER_PROCESS", "run_worker"]
