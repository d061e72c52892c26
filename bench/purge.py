"""Purge of a large PostgreSQL store, with the app writing meanwhile (issue #17's measurement).

    python -m bench.purge [--threads 100000] [--steps 2] [--batch 500] [--out bench/results/purge.md]

A fresh database gets ``--threads`` expired threads (last activity 200 days ago, ``--steps``
steps and one feedback each, bulk-loaded with COPY) and 1,000 live ones. Then ``chainlit-orm
purge URL --older-than 90d`` runs in a child process (as an operator runs it) while this process
plays the app: one user message after another (``create_step``, which also moves the thread's
activity), half on live threads and half on random expired ones (those are the writes that can
meet a purge batch's row locks). Reported: the purge's time and threads/s, and the app
writes' latencies during the purge (count, median, p99, max) next to the same writes measured
before it. Not a CI test: a measurement for the issue's note. The database is dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/{}"


def _ts(moment: datetime) -> str:
    from chainlit_orm.models.types import format_timestamp

    return format_timestamp(moment)


async def _load(url: str, name: str, n_threads: int, n_steps: int) -> tuple[str, list[str],
                                                                          list[str]]:
    """Schema by the layer, rows by COPY. Returns the user id, expired and live thread ids."""
    import asyncpg  # type: ignore[import-untyped]

    from chainlit_orm import SQLDataLayer
    from chainlit_orm.models.search import fold

    layer = SQLDataLayer(url, create_schema=True)
    user = await layer.create_user(_user())
    await layer.close()
    assert user is not None
    conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{name}")
    old = datetime.now(UTC) - timedelta(days=200)
    expired = [str(uuid.uuid4()) for _ in range(n_threads)]
    live = [str(uuid.uuid4()) for _ in range(1000)]
    now = datetime.now(UTC)
    threads, steps, feedback = [], [], []
    for i, tid in enumerate([*expired, *live]):
        at = _ts(old + timedelta(seconds=i)) if i < n_threads else _ts(now)
        threads.append((uuid.UUID(tid), at, at, f"thread {i}", uuid.UUID(user.id),
                        user.identifier, json.dumps({"k": i}), fold(f"thread {i}")))
        for k in range(n_steps):
            sid = uuid.uuid4()
            kind = "user_message" if k % 2 == 0 else "assistant_message"
            steps.append((sid, "step", kind, uuid.UUID(tid), False, at, f"text {k}",
                          fold(f"text {k}")))
            if k == 1:
                feedback.append((uuid.uuid4(), sid, uuid.UUID(tid), 1))
    await conn.copy_records_to_table("threads", records=threads, columns=[
        "id", "createdAt", "activityAt", "name", "userId", "userIdentifier", "metadata",
        "nameFolded"])
    await conn.copy_records_to_table("steps", records=steps, columns=[
        "id", "name", "type", "threadId", "streaming", "createdAt", "output", "outputFolded"])
    await conn.copy_records_to_table("feedbacks", records=feedback, columns=[
        "id", "forId", "threadId", "value"])
    await conn.execute("ANALYZE")
    await conn.close()
    return user.id, expired, live


def _user() -> Any:
    from chainlit.user import User

    return User(identifier=f"bench-purge-{uuid.uuid4().hex}@example.com", metadata={})


async def _writes(url: str, expired: list[str], live: list[str], stop: asyncio.Event,
                  latencies: list[tuple[float, float]]) -> None:
    """The app: one user message at a time until ``stop``, each write's seconds recorded."""
    from chainlit_orm import SQLDataLayer
    from chainlit_orm.models.types import utc_now

    layer = SQLDataLayer(url)
    rng = random.Random(7)
    try:
        while not stop.is_set():
            tid = rng.choice(live if rng.random() < 0.5 else expired)
            now = utc_now()
            step = {"id": str(uuid.uuid4()), "threadId": tid, "name": "user",
                    "type": "user_message", "streaming": False, "output": "hello",
                    "createdAt": now, "start": now, "end": now, "metadata": {}}
            wall, started = time.time(), time.perf_counter()
            await layer.create_step(step)  # type: ignore[arg-type]
            latencies.append((wall, time.perf_counter() - started))
    finally:
        await layer.close()


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"n": len(ordered), "median_ms": statistics.median(ordered) * 1000,
            "p99_ms": ordered[max(0, int(len(ordered) * 0.99) - 1)] * 1000,
            "max_ms": ordered[-1] * 1000}


async def run(n_threads: int, n_steps: int, batch: int) -> dict[str, Any]:
    import asyncpg

    name = f"clorm_bench_purge_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = PG.format(name)
    try:
        started = time.perf_counter()
        _, expired, live = await _load(url, name, n_threads, n_steps)
        load_s = time.perf_counter() - started

        before: list[tuple[float, float]] = []
        stop = asyncio.Event()
        writer = asyncio.create_task(_writes(url, expired, live, stop, before))
        await asyncio.sleep(5)
        stop.set()
        await writer

        during: list[tuple[float, float]] = []
        stop = asyncio.Event()
        writer = asyncio.create_task(_writes(url, expired, live, stop, during))
        env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.purge", "--child", url, "--batch", str(batch),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        out, err = await proc.communicate()
        wall_s = time.perf_counter() - started
        stop.set()
        await writer
        if proc.returncode != 0:
            raise RuntimeError(err.decode())
        child = json.loads(out.decode().strip().splitlines()[-1])
        purge_s = child["purge_s"]
        # the writes that started while the purge ran (not during the child's start-up)
        window = [s for wall, s in during if child["started"] <= wall <= child["ended"]]
        conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{name}")
        left = await conn.fetchval("SELECT count(*) FROM threads")
        await conn.close()
        return {"load": os.getloadavg()[0], "threads": n_threads, "steps_per_thread": n_steps, "batch": batch,
                "load_s": load_s, "purge_s": purge_s, "child_wall_s": wall_s,
                "removed": child["removed"], "batches": child["batches"],
                "threads_per_s": child["removed"] / purge_s,
                "purge_output": child["lines"],
                "threads_left": left, "writes_before": _summary([s for _, s in before]),
                "writes_during": _summary(window)}
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def _markdown(result: dict[str, Any]) -> str:
    b, d = result["writes_before"], result["writes_during"]
    lines = [
        "# Purge of a PostgreSQL store while the app writes",
        "",
        "Measured with `python -m bench.purge` (2 CPU cores shared with other sessions: load "
        f"average {result['load']:.1f} at the end; PostgreSQL on loopback). "
        f"{result['threads']:,} expired threads ({result['steps_per_thread']} steps and one "
        "feedback each) plus 1,000 live ones; the purge of `chainlit-orm purge URL --older-than 90d "
        f"--batch {result['batch']}` in a child process; the app meanwhile sends one user "
        "message at a time (`create_step`), half on live threads, half on random expired ones.",
        "",
        f"* purge: {result['removed']:,} threads removed in {result['batches']} batches in "
        f"{result['purge_s']:.1f} s = **{result['threads_per_s']:,.0f} threads/s** (timed "
        "from the first batch to the last; the child process took "
        f"{result['child_wall_s']:.1f} s with start-up; "
        f"{result['purge_s'] / max(1, result['batches']) * 1000:.0f} ms per batch on average; "
        f"threads left afterwards: {result['threads_left']:,}: the 1,000 live ones plus the "
        "expired ones an app message made active again before their batch, or recreated as "
        "a stub after it)",
        "",
        "| app writes (`create_step`, user message) | n | median ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|",
        f"| before the purge (5 s) | {b['n']} | {b['median_ms']:.2f} | {b['p99_ms']:.2f} | "
        f"{b['max_ms']:.2f} |",
        f"| while the purge ran | {d['n']} | {d['median_ms']:.2f} | {d['p99_ms']:.2f} | "
        f"**{d['max_ms']:.2f}** |",
        "",
        "The longest wait of an app write during the purge is the max above: a write that meets "
        "a thread row locked by a batch waits for that batch's commit, never longer.",
        "",
        "CLI output:",
        "",
        "```",
        *result["purge_output"],
        "```",
        "",
    ]
    return "\n".join(lines)


async def _child(url: str, batch: int) -> dict[str, Any]:
    """The purge, as ``chainlit-orm purge URL --older-than 90d`` runs it, timed from the first
    batch to the last (process start-up and imports excluded)."""
    from chainlit_orm import SQLDataLayer

    layer = SQLDataLayer(url)
    try:
        await layer.get_user("warm-up")  # the schema check, outside the timing
        wall, started = time.time(), time.perf_counter()
        report = await layer.purge(older_than=timedelta(days=90), batch=batch)
        elapsed = time.perf_counter() - started
    finally:
        await layer.close()
    return {"purge_s": elapsed, "started": wall, "ended": wall + elapsed, "removed": report.counts["thread"], "batches": report.batches,
            "lines": [f"purge {url}", *report.lines()]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--out", default=str(HERE / "results" / "purge.md"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(_child(args.child, args.batch))))
        return
    result = asyncio.run(run(args.threads, args.steps, args.batch))
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(_markdown(result), encoding="utf-8")


if __name__ == "__main__":
    main()
