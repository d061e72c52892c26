"""The event loop is never blocked: every botocore request runs in the layer's worker threads
(recorded with botocore's ``before-send`` event on the client PynamoDB uses)."""

from __future__ import annotations

import asyncio
import threading
import time

from chainlit.context import init_http_context
from chainlit.user import User

from chainlit_orm.layers.dynamodb import DynamoDataLayer
from tests.contract.conftest import message, new_id
from tests.dynamodb.conftest import Recorder


async def test_100_concurrent_writes_never_run_on_the_loop_thread(
    layer: DynamoDataLayer, recorder: Recorder
) -> None:
    init_http_context(thread_id=new_id())
    user = await layer.create_user(User(identifier=f"loop-{new_id()}", metadata={}))
    assert user is not None
    tid = new_id()
    await layer.update_thread(tid, name="busy", user_id=user.id)
    steps = [message(tid, f"m{i}", type_="user_message" if i % 5 == 0 else "assistant_message")
             for i in range(100)]
    loop_thread = threading.get_ident()
    lags: list[float] = []
    done = asyncio.Event()

    async def heartbeat() -> None:
        while not done.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append(time.perf_counter() - before - 0.005)

    beat = asyncio.create_task(heartbeat())
    recorder.clear()
    await asyncio.gather(*(layer.create_step(s) for s in steps))
    done.set()
    await beat
    assert len(recorder.calls) == 100  # one call per write (user messages: a transaction)
    assert len(recorder.sends) >= 100
    threads = {thread for _, thread in recorder.sends}
    assert loop_thread not in threads
    assert len(threads) <= layer.dynamo.max_pool_connections  # bounded by the pool size
    worst, median = max(lags), sorted(lags)[len(lags) // 2]
    print(f"\nheartbeat lag during 100 concurrent writes: worst {worst * 1000:.1f} ms, "
          f"median {median * 1000:.2f} ms over {len(lags)} beats")
    # The thread assertions above are the proof. The lag is what the loop thread waits for the
    # GIL while up to max_pool_connections workers build, sign and parse requests; it depends on
    # the machine (tens of ms on 2 busy cores), so its bound only catches a blocking call: 100
    # requests made on the loop would block it for seconds.
    assert worst < 1.0
    assert median < 0.05
    thread = await layer.get_thread(tid)
    assert thread is not None and len(thread["steps"]) == 100
