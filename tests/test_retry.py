"""The package's one retry policy (chainlit_orm.retry): bounded tries, a backoff before every
retry (tenacity's full-jitter rule), and no other loop of the package sleeping on its own."""

from __future__ import annotations

import ast
import asyncio
import random
import time
from pathlib import Path

import pytest
from tenacity import AsyncRetrying, RetryCallState

from chainlit_orm.layers.dynamodb.table import BATCH_RETRY as TABLE_BATCH_RETRY
from chainlit_orm.layers.dynamodb.table import CONFLICT_RETRY as TABLE_CONFLICT_RETRY
from chainlit_orm.retry import BATCH_RETRY, CONFLICT_RETRY, RetryPolicy, transient_retry

PACKAGE = Path(__file__).resolve().parents[1] / "chainlit_orm"


class Busy(Exception):
    pass


def _windows(policy: RetryPolicy) -> list[float]:
    """The upper bound of each retry's backoff, retry 1 first."""
    return [min(policy.cap, policy.base * 2 ** (k - 1)) for k in range(1, policy.attempts)]


def test_the_policies_and_their_windows() -> None:
    assert (CONFLICT_RETRY, BATCH_RETRY, transient_retry(5), transient_retry(0)) == (
        RetryPolicy(10, 0.01, 1.0), RetryPolicy(10, 0.05, 2.0), RetryPolicy(5, 0.02, 1.0),
        RetryPolicy(1, 0.02, 1.0))
    assert TABLE_CONFLICT_RETRY is CONFLICT_RETRY and TABLE_BATCH_RETRY is BATCH_RETRY
    assert _windows(CONFLICT_RETRY) == [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.0, 1.0]
    assert round(sum(_windows(CONFLICT_RETRY)), 6) == 3.27  # at most ~3.3 s asleep in all
    assert round(sum(_windows(BATCH_RETRY)), 6) == 9.15
    with pytest.raises(ValueError, match="attempts >= 1"):
        RetryPolicy(0, 0.01, 1.0)


def test_the_wait_rule_is_tenacitys_full_jitter() -> None:
    state = RetryCallState(AsyncRetrying(), None, (), {})
    random.seed(20)
    drawn = []
    for k in range(1, 10):
        state.attempt_number = k
        drawn.append(CONFLICT_RETRY.wait()(state))
    expected = random.Random(20)
    assert drawn == [w * expected.random() for w in _windows(CONFLICT_RETRY)]


async def test_tries_yields_each_try_and_sleeps_before_every_retry() -> None:
    policy = RetryPolicy(attempts=4, base=0.05, cap=0.1)
    random.seed(3)
    expected = random.Random(3)
    sleeps = [w * expected.random() for w in _windows(policy)]
    seen: list[tuple[int, float]] = []
    start = time.monotonic()
    async for attempt in policy.tries():
        seen.append((attempt, time.monotonic() - start))
    assert [a for a, _ in seen] == [0, 1, 2, 3]
    assert seen[0][1] < 0.01  # the first try runs at once
    for (_, at), (_, before), slept in zip(seen[1:], seen[:-1], sleeps, strict=True):
        assert at - before >= slept - 0.001  # each retry waited its drawn backoff


async def test_call_retries_only_what_it_is_told_and_reraises_the_last() -> None:
    policy = RetryPolicy(attempts=3, base=0.001, cap=0.001)
    calls: list[int] = []
    raised = [Busy(1), Busy(2), Busy(3)]

    async def always_busy() -> int:
        calls.append(1)
        raise raised[len(calls) - 1]

    with pytest.raises(Busy) as caught:
        await policy.call(always_busy, retry_on=Busy)
    assert (len(calls), caught.value) == (3, raised[2])

    async def busy_once() -> str:
        calls.append(1)
        if len(calls) == 4:
            raise Busy()
        return "done"

    assert await policy.call(busy_once, retry_on=Busy) == "done"
    assert len(calls) == 5

    async def broken() -> None:
        calls.append(1)
        raise KeyError("not retried")

    with pytest.raises(KeyError):
        await policy.call(broken, retry_on=Busy)
    assert len(calls) == 6


async def test_a_loop_left_early_schedules_nothing() -> None:
    """Tries is a class, not an async generator: leaving the loop at the first try leaves no
    generator for the event loop to finalize (a task per call)."""
    before = len(asyncio.all_tasks())
    for _ in range(100):
        async for _attempt in CONFLICT_RETRY.tries():
            break
    await asyncio.sleep(0)
    assert len(asyncio.all_tasks()) == before


def test_no_other_code_sleeps_between_tries() -> None:
    """Every retry loop goes through chainlit_orm.retry: no other module of the package calls
    asyncio.sleep or draws its own jitter, and no loop counts tries with range(...attempts)."""
    found: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and (
                    isinstance(node.func.value, ast.Name)):
                name = f"{node.func.value.id}.{node.func.attr}"
                if name in ("asyncio.sleep", "time.sleep", "random.uniform", "random.random"):
                    found.append(f"{rel}: {name}")
            if isinstance(node, ast.For) and "attempts" in ast.unparse(node.iter):
                found.append(f"{rel}: for ... in {ast.unparse(node.iter)}")
    # the exceptions wait for another process, they do not retry a failure (polling): migrate
    # waits for a DynamoDB table to become ACTIVE and for the migration lock another process
    # holds (migrations/lock.py, migrations/dynamo.py), and the DynamoDB first-use check waits
    # for a running migration (layers/dynamodb/table.py)
    assert sorted(set(found)) == [
        "layers/dynamodb/table.py: asyncio.sleep", "migrations/dynamo.py: asyncio.sleep",
        "migrations/dynamo.py: time.sleep", "migrations/lock.py: asyncio.sleep",
        "retry.py: asyncio.sleep"]
