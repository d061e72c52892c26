"""Many app processes, one database: 4 spawned processes, each a layer with 32 concurrent
conversations, on one PostgreSQL database, one MariaDB database, one SQLite file (WAL, written by
all four processes) and one DynamoDB table (on a moto server of its own), for
``CHAINLIT_ORM_MANY_PROCESSES_SECONDS`` seconds each (default 20;
``CHAINLIT_ORM_MANY_PROCESSES_BACKENDS`` picks the backends, e.g. ``postgres,pgbouncer`` to run
it through PgBouncer in transaction mode too). Past the deadline a task stops between writes
and makes its reads, so a run ends within a few calls of it.

Each process records every write that returned (:mod:`tests.reliability.many_worker`); once all
are done, the parent reads the store through a fresh layer and checks, exactly:

* no call raised, in any process, and no read a process made contradicted what it had written;
* nothing acknowledged is missing: every thread, every step with its last acknowledged text, the
  last acknowledged name and metadata;
* every thread belongs to the user who created it (``userId`` and ``userIdentifier``), and each
  user's ``list_threads``, paged to the end, is exactly that user's threads, in activity order
  (the latest acknowledged user message first, the id breaking ties), each listed with that
  activity as its ``createdAt``.

The figures (writes, reads, errors, threads) are printed per backend (``pytest -s``).

Connection budget: each process's SQL layer runs with ``pool_size=6`` (32 tasks queue for 6
connections, as in a worker sized for a shared server), so 4 processes hold at most 4 x (6 + 1)
server connections (the schema check's engine keeps one).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from chainlit.context import init_http_context
from chainlit.types import Pagination, ThreadFilter

from chainlit_orm.layers.base import ChainlitLayer
from tests.ports import free_port, wait_for_port
from tests.reliability.many_worker import run_worker
from tests.reliability.storm_targets import STORM_BACKENDS, Target, open_layer, open_target

PROCESSES = 4
TASKS = 32
SECONDS = float(os.environ.get("CHAINLIT_ORM_MANY_PROCESSES_SECONDS", "20"))
#: the backends (``tests/backends.py`` names); ``pgbouncer`` may be added, e.g.
#: ``CHAINLIT_ORM_MANY_PROCESSES_BACKENDS=postgres,pgbouncer``
BACKENDS = tuple(os.environ.get("CHAINLIT_ORM_MANY_PROCESSES_BACKENDS", "").split(",")
                 if os.environ.get("CHAINLIT_ORM_MANY_PROCESSES_BACKENDS") else STORM_BACKENDS)
#: the SQL layers' pool in each process (see the module docstring)
POOL_SIZE = 6
#: the DynamoDB layers' call timeout (see the test)
DYNAMODB_TIMEOUT = 120.0


@pytest.fixture(scope="module")
def processes() -> Iterator[tuple[ProcessPoolExecutor, Any]]:
    """4 spawned app processes and a manager for the start barrier, shared by the backends
    (a spawned process pays Chainlit's import once)."""
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, ProcessPoolExecutor(PROCESSES, mp_context=context) as pool:
        yield pool, manager


@pytest.fixture(scope="module")
def private_moto() -> Iterator[str]:
    """A moto server of this module's own. Why: stock moto backs up every table a
    TransactWriteItems touches before running it (a user message is one), and the suite's shared
    server holds every other test's tables; a fresh one holds only this test's table."""
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H",
                               "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, "moto_server")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(params=BACKENDS)
async def target(request: pytest.FixtureRequest, tmp_path: Path, private_moto: str
                 ) -> AsyncIterator[Target]:
    async with open_target(request.param, tmp_path, private_moto) as opened:
        yield opened


async def test_many_processes_one_database(
        target: Target, processes: tuple[ProcessPoolExecutor, Any]) -> None:
    pool, manager = processes
    barrier = manager.Barrier(PROCESSES)
    options: dict[str, Any] = {"pool_size": POOL_SIZE} if target.name in (
        "postgres", "mariadb", "pgbouncer") else {}
    if target.kind == "dynamodb":
        # moto is one Python process answering 128 concurrent callers: on a loaded 2-core
        # machine a call may wait longer than the 30 s default in its queue
        options["timeout"] = DYNAMODB_TIMEOUT
    run = uuid.uuid4().hex[:8]
    loop = asyncio.get_running_loop()
    began = time.monotonic()
    results: list[dict[str, Any]] = await asyncio.gather(*(
        loop.run_in_executor(pool, run_worker, target, run, proc, TASKS, SECONDS, barrier,
                             options)
        for proc in range(PROCESSES)))

    errors = [e for r in results for e in r["errors"]]
    violations = [v for r in results for v in r["violations"]]
    writes = sum(r["writes"] for r in results)
    reads = sum(r["reads"] for r in results)
    threads: dict[str, dict[str, Any]] = {}
    users: dict[str, str] = {}
    for r in results:
        threads.update(r["threads"])
        users.update(r["users"])
    ran = time.monotonic() - began
    print(f"\n{target.name}: {PROCESSES} processes x {TASKS} tasks, {SECONDS:g} s: "
          f"{writes} writes, {reads} reads acknowledged, {len(errors)} errors, "
          f"{len(violations)} violations, {len(threads)} threads of {len(users)} users, "
          f"{sum(len(t['steps']) for t in threads.values())} steps")
    assert errors[:5] == [] and len(errors) == 0
    assert violations[:5] == [] and len(violations) == 0
    assert all(r["elapsed"] >= SECONDS for r in results)
    assert writes > 0 and reads > 0

    init_http_context(thread_id=str(uuid.uuid4()))
    layer = open_layer(target)
    try:
        await _check_store(layer, threads, users)
    finally:
        await layer.close()
    print(f"{target.name}: workers {ran:.1f} s (set-up up to "
          f"{max(r['ready'] for r in results):.1f} s, run up to "
          f"{max(r['elapsed'] for r in results):.1f} s), check "
          f"{time.monotonic() - began - ran:.1f} s")


async def _check_store(layer: ChainlitLayer, threads: dict[str, dict[str, Any]],
                       users: dict[str, str]) -> None:
    """The store against the acknowledgements (see the module docstring)."""
    for ident, uid in users.items():
        mine = [(t["activity"], tid) for tid, t in threads.items() if t["user"] == ident]
        expected = sorted(mine, reverse=True)
        listed = await _list_all(layer, uid)
        assert [(row["createdAt"], row["id"]) for row in listed] == expected, ident
        assert {row["userId"] for row in listed} <= {uid}

    missing: list[str] = []
    wrong: list[str] = []
    semaphore = asyncio.Semaphore(8)

    async def check(tid: str, acked: dict[str, Any]) -> None:
        async with semaphore:
            thread: Any = await layer.get_thread(tid)
        if thread is None:
            missing.append(tid)
            return
        owner = users[acked["user"]]
        stored = {s["id"]: s["output"] for s in thread["steps"]}
        problems = []
        if (thread["userId"], thread["userIdentifier"]) != (owner, acked["user"]):
            problems.append(f"owner {thread['userId']}/{thread['userIdentifier']}")
        if stored != acked["steps"]:
            problems.append(f"steps {len(stored)} stored, {len(acked['steps'])} acknowledged"
                            f" ({len(set(acked['steps']) - set(stored))} missing)")
        if thread["name"] != acked["name"]:
            problems.append(f"name {thread['name']!r} != {acked['name']!r}")
        if thread["metadata"].get("turns") != acked["turns"]:
            problems.append(f"metadata {thread['metadata']} != turns={acked['turns']}")
        if problems:
            wrong.append(f"{tid}: {'; '.join(problems)}")

    await asyncio.gather(*(check(tid, acked) for tid, acked in threads.items()))
    assert missing == []
    assert wrong[:5] == [] and len(wrong) == 0


async def _list_all(layer: ChainlitLayer, uid: str) -> list[Any]:
    """Every thread ``list_threads`` lists for the user, page after page."""
    rows: list[Any] = []
    cursor = None
    while True:
        page = await layer.list_threads(Pagination(first=1000, cursor=cursor),
                                        ThreadFilter(userId=uid))
        rows.extend(page.data)
        if not page.pageInfo.hasNextPage:
            return rows
        cursor = page.pageInfo.endCursor
