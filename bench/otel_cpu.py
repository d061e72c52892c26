"""``python -m bench.otel_cpu``: the CPU time a W1 step costs with chainlit-orm's tracing off and
on, on SQLite, measured so that a busy machine does not decide the answer.

Why CPU time: W1's figure is wall-clock throughput, which on a shared 2-core machine moves by
more than tracing costs. ``time.process_time()`` counts the CPU this process used (the event
loop, aiosqlite's threads, the span processor's export thread), not the time it waited for a
core. Two layers on two SQLite files, one with ``tracing=True`` (the SDK's ``TracerProvider``,
a ``BatchSpanProcessor`` and an exporter that drops the spans: what an app pays before the
network), one without; W1's shape (``update_thread``, then 3 x ``create_step`` +
``update_step``, the steps of bench/workloads.py) runs in blocks that alternate between them.
Prints the median CPU microseconds per step of each and the difference. ``--provider none``
keeps OpenTelemetry's no-op provider: what chainlit-orm's own instrumentation costs, the SDK's
span handling left out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from typing import Any

from . import dataset, otel


async def _w1(layer: Any, user_id: str, threads: int) -> int:
    """``threads`` W1 threads one after the other; the number of steps written."""
    steps = 0
    for _ in range(threads):
        tid = dataset.new_id()
        await layer.update_thread(tid, name="W1 thread", user_id=user_id)
        base = time.time()
        for j in range(3):
            kind = dataset.KIND_CYCLE[j % 3]
            text = f"W1 step {j} " + "reply text " * 20
            d0 = dataset.make_step(kind, tid, base + j * 0.001, text, final=False)
            d1 = dataset.finalize(d0, text, base + j * 0.001 + 0.0005)
            await layer.create_step(dict(d0))
            await layer.update_step(dict(d1))
            steps += 1
    return steps


async def main(blocks: int, threads: int, provider: str) -> None:
    from chainlit.context import init_http_context
    from chainlit.user import User

    import chainlit_orm

    init_http_context()
    if provider == "sdk":
        otel.install("both")  # the SDK for the traced layer; CHAINLIT_ORM_TRACING=0 for the other
    else:  # OpenTelemetry's API alone (its no-op provider): what chainlit-orm's own code costs
        os.environ["CHAINLIT_ORM_TRACING"] = "0"
    work = tempfile.mkdtemp(prefix="clorm-otel-cpu-")
    layers = {
        "off": chainlit_orm.SQLDataLayer(f"sqlite+aiosqlite:///{os.path.join(work, 'off.db')}"),
        "on": chainlit_orm.SQLDataLayer(f"sqlite+aiosqlite:///{os.path.join(work, 'on.db')}",
                                        tracing=True),
    }
    users = {}
    for name, layer in layers.items():
        user = await layer.create_user(User(identifier="bench"))
        assert user is not None
        users[name] = user.id
        await _w1(layer, user.id, threads)  # warm-up: statements compiled, pool open
    cpu: dict[str, list[float]] = {"off": [], "on": []}
    for block in range(blocks):
        for name in (("off", "on") if block % 2 == 0 else ("on", "off")):
            start = time.process_time()
            steps = await _w1(layers[name], users[name], threads)
            cpu[name].append((time.process_time() - start) / steps * 1e6)
    exported = otel.flush()
    for layer in layers.values():
        await layer.close()
    off, on = statistics.median(cpu["off"]), statistics.median(cpu["on"])
    print(f"provider: {provider}; blocks: {blocks} x {threads} W1 threads ({threads * 3} steps) "
          f"per layer, alternating; spans exported: {exported}")
    print(f"CPU per step, tracing off: median {off:.0f} us "
          f"[{', '.join(f'{v:.0f}' for v in cpu['off'])}]")
    print(f"CPU per step, tracing on:  median {on:.0f} us "
          f"[{', '.join(f'{v:.0f}' for v in cpu['on'])}]")
    print(f"added by tracing: {on - off:+.0f} us per step ({on / off:.3f}x)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.otel_cpu", description=__doc__)
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--threads", type=int, default=40, help="W1 threads per block")
    parser.add_argument("--provider", choices=("sdk", "none"), default="sdk",
                        help="sdk: the SDK with a batch processor and a dropping exporter; none: "
                        "OpenTelemetry's no-op provider (chainlit-orm's own cost alone)")
    args = parser.parse_args()
    asyncio.run(main(args.blocks, args.threads, args.provider))
