"""The layers' ``timeout`` option (``chainlit_orm.layers.deadline``): every backend call of a
layer is bounded, the typed error arrives in time, and nothing else changes: a result is a
result, an outside cancellation stays a cancellation, the one timer stops when nothing runs.
The DynamoDB layer shares the mechanism: a black-holed moto call times out the same way."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from chainlit_orm import SQLDataLayer, migrate
from chainlit_orm.errors import ConfigurationError, TimeoutExceededError
from chainlit_orm.layers.deadline import BoundedBackend, CallDeadline
from chainlit_orm.layers.dynamodb import DynamoDataLayer
from tests.aws import MOTO_ENDPOINT, REGION, aws_env, dynamodb
from tests.reliability.faultproxy import fault_proxy

__all__ = ["aws_env", "dynamodb"]

LIMIT = 0.2


async def _wait(seconds: float, result: str = "done") -> str:
    await asyncio.sleep(seconds)
    return result


async def _until(condition: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + 10
    while not condition():
        if loop.time() > end:
            raise AssertionError(f"still waiting for {what}")
        await asyncio.sleep(0.005)


async def test_a_call_past_its_deadline_raises_the_typed_error_in_time() -> None:
    deadline = CallDeadline(LIMIT)
    bounded = deadline.wrap(_wait, "get_thread")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutExceededError) as info:
        await bounded(60)
    assert LIMIT <= loop.time() - started < 2 * LIMIT
    assert info.value.detail == "get_thread"
    assert str(info.value) == "get_thread did not finish within the data-layer call timeout of 0.2 s"
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_calls_within_the_deadline_return_and_the_timer_stops_when_idle() -> None:
    deadline = CallDeadline(LIMIT)
    bounded = deadline.wrap(_wait, "get_user")
    results = await asyncio.gather(*(bounded(LIMIT / 4, f"r{i}") for i in range(20)))
    assert results == [f"r{i}" for i in range(20)]
    assert deadline._active == {} and deadline._fired == set()
    await _until(lambda: deadline._timer is None, "the timer to stop")
    # and it starts again with the next call
    assert await bounded(0, "again") == "again"
    assert deadline._timer is not None


async def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    bounded = CallDeadline(10).wrap(_wait, "list_threads")
    task = asyncio.create_task(bounded(60))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_error_of_the_call_is_its_own() -> None:
    async def broken() -> None:
        raise LookupError("not a timeout")

    with pytest.raises(LookupError, match="not a timeout"):
        await CallDeadline(LIMIT).wrap(broken, "get_step")()


def test_one_deadline_serves_one_event_loop_after_another() -> None:
    deadline = CallDeadline(LIMIT)
    bounded = deadline.wrap(_wait, "get_element")

    async def abandoned() -> None:  # the loop ends while the call is still registered
        asyncio.get_running_loop().create_task(bounded(60))
        await asyncio.sleep(0.01)

    asyncio.run(abandoned())
    assert asyncio.run(bounded(0, "next loop")) == "next loop"
    with pytest.raises(TimeoutExceededError):
        asyncio.run(bounded(60))


@pytest.mark.parametrize("value", [0, -0.5, float("inf"), float("nan"), True, None, "30"])
def test_a_timeout_that_bounds_nothing_is_refused(value: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="timeout must be a positive number"):
        CallDeadline(value)
    with pytest.raises(ConfigurationError, match="timeout"):
        SQLDataLayer(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", timeout=value)


async def test_every_backend_call_of_a_layer_is_bounded(tmp_path: Path) -> None:
    layer = SQLDataLayer(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", timeout=7)
    try:
        proxy = layer.backend
        assert isinstance(proxy, BoundedBackend) and proxy.unbounded is layer.sql
        # each coroutine method is the bounded one (created once); anything else is the
        # backend's own attribute
        assert proxy.get_thread is proxy.get_thread
        assert proxy.get_thread.__name__ == "get_thread"
        assert proxy.models is layer.sql.models
        assert await layer.get_user("nobody") is None
    finally:
        await layer.close()


@pytest.mark.dynamodb
async def test_the_dynamodb_layer_shares_the_timeout(dynamodb: Any) -> None:
    """A black-holed DynamoDB endpoint: the call raises TimeoutExceededError within twice the
    layer's timeout, though botocore's own read timeout is much longer; the layer works again
    once the endpoint answers."""
    name = f"clorm_dy_{uuid.uuid4().hex[:16]}"
    await migrate(f"dynamodb://{name}?region={REGION}&endpoint_url={MOTO_ENDPOINT}")
    host, port = MOTO_ENDPOINT.rsplit("//", 1)[1].split(":")
    try:
        with fault_proxy(host, int(port)) as proxy:
            layer = DynamoDataLayer(name, region=REGION, read_timeout=30,
                                    endpoint_url=f"http://127.0.0.1:{proxy.port}", timeout=5.0)
            assert layer.timeout == 5.0
            try:
                tid = str(uuid.uuid4())
                await layer.update_thread(tid, name="t")
                proxy.set_mode("blackhole")
                loop = asyncio.get_running_loop()
                started = loop.time()
                with pytest.raises(TimeoutExceededError):
                    await layer.get_thread(tid)
                assert loop.time() - started < 2 * 5.0
                proxy.set_mode("pass")
                thread = await layer.get_thread(tid)
                assert thread is not None and thread["name"] == "t"
            finally:
                proxy.set_mode("pass")
                await layer.close()
    finally:
        dynamodb.delete_table(TableName=name)
