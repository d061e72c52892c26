"""What one app process does in the cross-process storms (run in spawned workers).

Each function is the body of one worker: it builds its own layer on the :class:`Target` (its own
connection pool or botocore client, as a separate app process has), runs its share of the storm
on its own event loop and returns what it wrote, for the parent test to check.
"""

from __future__ import annotations

import asyncio
import random
import uuid

from chainlit.context import init_http_context

from tests.contract.conftest import message
from tests.reliability.storm_targets import Target, aws_test_env, open_layer

#: What ``socket.persist_user_session`` writes for a session (Chainlit 2.12 sends the session's
#: id, env, chat settings, profile and memory).
SESSION_METADATA = {"id": "session-1", "env": "{}", "chat_settings": {}, "chat_profile": None,
                    "client_type": "webapp"}


def first_message_race(target: Target, user_id: str, seed: int, threads: int,
                       at_once: int) -> list[str]:
    """Start ``threads`` conversations, ``at_once`` at a time, each as Chainlit 2.12 starts one.

    ``emitter.process_message`` starts ``message._create()`` (whose ``create_step`` makes the
    stub thread) and ``init_thread()`` (its ``update_thread(name, user_id)``) as two unawaited
    tasks, and ``socket.persist_user_session`` writes ``update_thread(metadata)``. Which lands
    first is up to the scheduler; here a seeded random order and small random delays make every
    order happen. Returns the thread ids.
    """
    aws_test_env()
    return asyncio.run(_first_message_race(target, user_id, seed, threads, at_once))


async def _first_message_race(target: Target, user_id: str, seed: int, threads: int,
                              at_once: int) -> list[str]:
    init_http_context(thread_id=str(uuid.uuid4()))
    layer = open_layer(target)
    rnd = random.Random(seed)
    started: list[str] = []

    async def conversation() -> None:
        tid = str(uuid.uuid4())
        started.append(tid)
        first = message(tid, f"first message of {tid}")
        calls = [
            lambda: layer.create_step(first),
            lambda: layer.update_thread(tid, name=first["output"], user_id=user_id),
            lambda: layer.update_thread(tid, metadata=dict(SESSION_METADATA)),
        ]
        rnd.shuffle(calls)
        delays = [rnd.random() * 0.004 for _ in calls]

        async def after(delay: float, call: object) -> None:
            await asyncio.sleep(delay)
            await call()  # type: ignore[operator]

        await asyncio.gather(*(asyncio.create_task(after(d, c))
                               for d, c in zip(delays, calls, strict=True)))

    try:
        for _ in range(threads // at_once):
            await asyncio.gather(*(conversation() for _ in range(at_once)))
    finally:
        await layer.close()
    return started


def feedback_rounds(target: Target, thread_id: str, ratings: dict[str, int], rounds: int
                    ) -> dict[str, str]:
    """Rate each step of ``ratings`` (step id -> value) of one shared thread, ``rounds`` times,
    all steps at once in each round, with the comment ``round {r}``. Returns the feedback id
    each step's last upsert reported."""
    aws_test_env()
    return asyncio.run(_feedback_rounds(target, thread_id, ratings, rounds))


async def _feedback_rounds(target: Target, thread_id: str, ratings: dict[str, int], rounds: int
                           ) -> dict[str, str]:
    from chainlit.types import Feedback

    layer = open_layer(target)
    ids: dict[str, str] = {}
    try:
        for r in range(rounds):
            got = await asyncio.gather(*(
                layer.upsert_feedback(Feedback(forId=step_id, threadId=thread_id, value=value,
                                               comment=f"round {r}"))
                for step_id, value in ratings.items()))
            ids = dict(zip(ratings, got, strict=True))
    finally:
        await layer.close()
    return ids


__all__ = ["SESSION_METADATA", "feedback_rounds", "first_message_race"]
