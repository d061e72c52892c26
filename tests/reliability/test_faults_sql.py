"""Faults between the SQL layer and a real server, and what the layer must do about each.

Through the fault proxy (``faultproxy.py``) in front of PostgreSQL and MariaDB: refused
connections, a black hole, a response cut mid-way, a slow network, every connection cut; on the
real server: every session of the layer terminated (``pg_terminate_backend`` / ``KILL``, the
issue's repro); on a private PostgreSQL of the test's own: a restart. For each fault: the typed
error (or the success) expected, exactly; no acknowledged write lost; the layer working again, on
the healthy path's exact statements, once the fault clears. A SQLite transaction stuck in its
thread gets the typed error on time and its connection stays out of the pool until the thread is
done.

The one timed assertion the suite allows is here: a black-holed call raises
``TimeoutExceededError`` within twice the configured timeout.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from chainlit_orm import SQLDataLayer, migrate
from chainlit_orm.cli import main
from chainlit_orm.errors import BackendUnavailableError, ConfigurationError, TimeoutExceededError
from tests.backends import SQL_BACKENDS
from tests.reliability.faultproxy import FaultProxy, fault_proxy
from tests.reliability.private_pg import private_postgres
from tests.sql.conftest import new_id

SERVERS = {"postgres": ("127.0.0.1", 5432), "mariadb": ("127.0.0.1", 3306)}
BACKENDS = [pytest.param("postgres", marks=pytest.mark.postgres),
            pytest.param("mariadb", marks=pytest.mark.mariadb)]
#: a short limit, so a black-holed call is over quickly (and long enough for a loaded machine)
TIMEOUT = 2.0


def _step(tid: str, text: str, type_: str = "assistant_message") -> dict[str, Any]:
    return {"id": new_id(), "threadId": tid, "type": type_, "name": "bot", "output": text,
            "streaming": False, "metadata": {}}


class Events:
    """The statements the layer runs (``on_statement``), call by call."""

    def __init__(self, layer: SQLDataLayer) -> None:
        self.seen: list[str] = []
        layer.sql.on_statement.append(self.seen.append)

    async def of(self, call: Any) -> tuple[Any, list[str]]:
        self.seen.clear()
        result = await call
        return result, list(self.seen)


async def _until(condition: Callable[[], bool], what: str) -> None:
    """Wait for ``condition`` (something the network delivers), failing loudly after 10 s."""
    loop = asyncio.get_running_loop()
    end = loop.time() + 10
    while not condition():
        if loop.time() > end:
            raise AssertionError(f"still waiting for {what}")
        await asyncio.sleep(0.002)


def _step_ids(thread: Any) -> list[str]:
    assert thread is not None
    return sorted(step["id"] for step in thread["steps"])


@asynccontextmanager
async def _proxied(backend: str, tmp_path: Path, **options: Any
                   ) -> AsyncIterator[tuple[SQLDataLayer, FaultProxy]]:
    """A fresh database, a proxy in front of its server, and a layer connected through it (its
    schema created and checked, so the first call is a plain one)."""
    async with SQL_BACKENDS[backend].database(tmp_path) as url:
        with fault_proxy(*SERVERS[backend]) as proxy:
            layer = SQLDataLayer(make_url(url).set(port=proxy.port), create_schema=True,
                                 **options)
            try:
                await layer.sql.ensure_ready()
                yield layer, proxy
            finally:
                proxy.set_mode("pass")
                await layer.close()


async def _kill_sessions(url: str, backend: str) -> int:
    """Terminate, from another session, every session on the layer's database."""
    admin = create_async_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        async with admin.connect() as conn:
            if backend == "postgres":
                result = await conn.execute(sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
                return sum(1 for (ok,) in result if ok)
            ids = (await conn.execute(sa.text(
                "SELECT id FROM information_schema.processlist "
                "WHERE db = DATABASE() AND id <> CONNECTION_ID()"))).scalars().all()
            for pid in ids:
                await conn.execute(sa.text(f"KILL {int(pid)}"))
            return len(ids)
    finally:
        await admin.dispose()


async def _fill_pool(layer: SQLDataLayer, tid: str, name: str = "t") -> None:
    """The issue's load: 32 concurrent reads leave the pool's 16 connections kept."""
    threads = await asyncio.gather(*(layer.get_thread(tid) for _ in range(32)))
    assert [t["name"] if t else None for t in threads] == [name] * 32
    assert len(layer.sql.raw._idle) == 16


async def _after_dropped_pool(layer: SQLDataLayer, backend: str, tid: str) -> None:
    """Every kept connection is dead: one call succeeds, the whole generation is gone, and the
    healthy path runs exactly the statements it ran before."""
    pool = layer.sql.raw
    events = Events(layer)
    if backend == "postgres":
        # asyncpg reads the server's close while the connection sits idle; the pool then skips
        # it without a round trip (MariaDB's driver only learns it on use)
        await _until(lambda: all(conn.known_closed() for _, conn, _ in pool._idle),
                     "asyncpg to see its connections closed")
    thread, seen = await events.of(layer.get_thread(tid))
    assert thread is not None and thread["name"] == "t"
    # PostgreSQL: the two statements on a fresh connection. MariaDB: one attempt on a dead
    # connection, then the two statements on a fresh one; never one attempt per dead connection
    assert seen == (["SELECT"] * 2 if backend == "postgres" else ["SELECT"] * 3)
    assert pool.generation == 1
    assert len(pool._idle) == 1  # the fresh connection; all 16 of the old generation discarded
    assert layer.sql.auto.sync_engine.pool.checkedout() == 1
    # the healthy path afterwards: no ping, no extra statement
    assert (await events.of(layer.get_thread(tid)))[1] == ["SELECT", "SELECT"]
    assert (await events.of(layer.update_thread(tid, name="t2")))[1] == ["INSERT"]
    step = _step(tid, "after")
    assert (await events.of(layer.create_step(step)))[1] == ["INSERT"]
    thread = await layer.get_thread(tid)
    assert thread is not None and thread["name"] == "t2"
    assert _step_ids(thread) == [step["id"]]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pre_ping", [False, True], ids=["no-pre-ping", "pre-ping"])
async def test_server_terminating_the_pools_connections_then_one_call_succeeds(
    backend: str, pre_ping: bool, tmp_path: Path
) -> None:
    """The issue's repro: ~16 kept connections, every session terminated from another one on a
    healthy server, then one call. It failed 10 of 10 (5 of 5 with ``pool_pre_ping``)."""
    async with SQL_BACKENDS[backend].database(tmp_path) as url:
        options = {"pool_pre_ping": True} if pre_ping else {}
        layer = SQLDataLayer(url, create_schema=True, **options)
        try:
            tid = new_id()
            await layer.update_thread(tid, name="t")
            await _fill_pool(layer, tid)
            # the 16 kept connections and the schema check's (the transactional engine keeps one)
            assert await _kill_sessions(url, backend) == 17
            await _after_dropped_pool(layer, backend, tid)
            # again, with 32 callers meeting the dead connections at once: every one succeeds
            await _fill_pool(layer, tid, "t2")
            assert await _kill_sessions(url, backend) == 16
            threads = await asyncio.gather(*(layer.get_thread(tid) for _ in range(32)))
            assert [t["name"] if t else None for t in threads] == ["t2"] * 32
            assert layer.sql.raw.generation == 2
        finally:
            await layer.close()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_every_connection_cut_then_one_call_succeeds(backend: str, tmp_path: Path) -> None:
    """A middlebox's idle timeout or a failover cuts every connection (the proxy's cut_all)."""
    async with _proxied(backend, tmp_path) as (layer, proxy):
        tid = new_id()
        await layer.update_thread(tid, name="t")
        await _fill_pool(layer, tid)
        proxy.cut_all()
        await _after_dropped_pool(layer, backend, tid)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_refused_connections_raise_a_typed_error_and_the_layer_recovers(
    backend: str, tmp_path: Path
) -> None:
    """A server going down: connections cut and new ones refused. Each call ends, after its
    bounded retries and well within its timeout, in BackendUnavailableError (an outage, not a
    timeout); nothing is written; once connections are accepted again the next call works."""
    async with _proxied(backend, tmp_path, timeout=30) as (layer, proxy):
        tid = new_id()
        await layer.update_thread(tid, name="t")
        before = _step(tid, "before")
        await layer.create_step(before)
        proxy.set_mode("refuse")
        refused = _step(tid, "refused")
        for call in (layer.create_step(refused), layer.get_thread(tid),
                     layer.update_thread(tid, name="refused")):
            with pytest.raises(BackendUnavailableError) as info:
                await call
            assert type(info.value) is BackendUnavailableError, info.value
            assert "127.0.0.1" in str(info.value)
        proxy.set_mode("pass")
        events = Events(layer)
        after = _step(tid, "after")
        assert (await events.of(layer.create_step(after)))[1] == ["INSERT"]
        thread, seen = await events.of(layer.get_thread(tid))
        assert seen == ["SELECT", "SELECT"]
        # the refused writes never reached the server: the connections were cut before them
        assert _step_ids(thread) == sorted([before["id"], after["id"]])
        assert thread is not None and thread["name"] == "t"


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_black_hole_gives_a_typed_timeout_within_twice_the_timeout(
    backend: str, tmp_path: Path
) -> None:
    """A network that swallows every packet: a call that hangs for ever without a client-side
    limit raises TimeoutExceededError in time, its connection is never handed out again, and
    the layer works once the packets flow."""
    async with _proxied(backend, tmp_path, timeout=TIMEOUT, connect_timeout=0.5) as (
            layer, proxy):
        pool = layer.sql.raw
        loop = asyncio.get_running_loop()
        tid = new_id()
        await layer.update_thread(tid, name="t")
        acknowledged = [_step(tid, "before")]
        await layer.create_step(acknowledged[0])
        assert len(pool._idle) == 1
        stuck = pool._idle[0][0]
        proxy.set_mode("blackhole")
        attempted = [_step(tid, "swallowed")]
        for call in (layer.create_step(attempted[0]), layer.get_thread(tid)):
            started = loop.time()
            with pytest.raises(TimeoutExceededError) as info:
                await call
            assert loop.time() - started < 2 * TIMEOUT  # the one timed assertion allowed
            assert type(info.value) is TimeoutExceededError
        await pool.settle()  # the interrupted connections are closed, not kept
        assert not stuck.is_valid
        assert pool._idle == []
        proxy.set_mode("pass")
        after = _step(tid, "after")
        await layer.create_step(after)
        acknowledged.append(after)
        thread = await layer.get_thread(tid)
        # acknowledged writes are all there; the timed-out one may or may not have landed (its
        # bytes were held, not lost), nothing else did
        ids = set(_step_ids(thread))
        assert {s["id"] for s in acknowledged} <= ids
        assert ids <= {s["id"] for s in acknowledged + attempted}
        events = Events(layer)
        assert (await events.of(layer.get_thread(tid)))[1] == ["SELECT", "SELECT"]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_black_hole_met_by_new_connections_and_by_combined_writes(
    backend: str, tmp_path: Path
) -> None:
    """The black hole when no connection is open (each connect hangs: connect_timeout, retried,
    then the call's timeout), and under concurrent step writes on open connections: the writes
    beyond two in flight queue and go out as one combined statement, in a task of the
    combiner's own, outside every caller's deadline. Every caller gets the typed error in time,
    and the combined statement is bounded too: the combiner is free again while the network is
    still black-holed (else every later step write would queue behind it for ever)."""
    async with _proxied(backend, tmp_path, timeout=TIMEOUT, connect_timeout=0.5) as (
            layer, proxy):
        loop = asyncio.get_running_loop()
        tid = new_id()
        await layer.update_thread(tid, name="t")
        await layer.sql.raw.close()  # nothing kept, nothing pooled: the next call connects
        await layer.sql.auto.dispose()
        proxy.set_mode("blackhole")
        started = loop.time()
        with pytest.raises(TimeoutExceededError):
            await layer.get_thread(tid)
        assert loop.time() - started < 2 * TIMEOUT
        proxy.set_mode("pass")
        await layer.sql.raw.settle()
        await asyncio.gather(*(layer.get_thread(tid) for _ in range(8)))
        assert len(layer.sql.raw._idle) >= 3  # the writes below find open connections
        proxy.set_mode("blackhole")

        steps = [_step(tid, f"s{i}") for i in range(8)]
        alone = [asyncio.create_task(layer.create_step(s)) for s in steps[:2]]
        combiners = layer.sql._step_combiners
        await _until(lambda: True in combiners and combiners[True]._inflight == 2,
                     "two writes in flight")
        combiner = combiners[True]
        # the queued writes must outlive the first two, so that their combined statement
        # starts when those give up
        await asyncio.sleep(TIMEOUT / 2)
        started = loop.time()
        queued = [asyncio.create_task(layer.create_step(s)) for s in steps[2:]]
        outcomes = await asyncio.gather(*alone, *queued, return_exceptions=True)
        assert loop.time() - started < 2 * TIMEOUT
        assert [type(o) for o in outcomes] == [TimeoutExceededError] * 8
        assert combiner._tasks  # the combined statements, still stuck in the black hole
        await _until(lambda: combiner._inflight == 0 and not combiner._tasks,
                     "the combined statements' own timeout")
        await layer.sql.raw.settle()
        proxy.set_mode("pass")
        again = [_step(tid, f"again{i}") for i in range(8)]
        await asyncio.gather(*(layer.create_step(s) for s in again))
        ids = set(_step_ids(await layer.get_thread(tid)))
        assert {s["id"] for s in again} <= ids
        assert ids <= {s["id"] for s in again + steps}


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_response_cut_mid_way_is_retried_on_a_fresh_connection(
    backend: str, tmp_path: Path
) -> None:
    """The server dies mid-response: the statement may have run, the answer is lost. The call
    is retried once on a fresh connection (every write is an idempotent upsert) and succeeds;
    the row is there exactly once."""
    async with _proxied(backend, tmp_path) as (layer, proxy):
        pool = layer.sql.raw
        tid = new_id()
        await layer.update_thread(tid, name="t")
        first = _step(tid, "first")
        await layer.create_step(first)  # the statements are prepared on the kept connection
        await layer.get_thread(tid)
        events = Events(layer)
        proxy.set_mode("drop_response")
        cut = _step(tid, "cut")
        assert (await events.of(layer.create_step(cut)))[1] == ["INSERT", "INSERT"]
        assert pool.generation == 1
        proxy.set_mode("drop_response")
        thread, seen = await events.of(layer.get_thread(tid))
        assert seen == ["SELECT", "SELECT", "SELECT"]
        assert pool.generation == 2
        assert _step_ids(thread) == sorted([first["id"], cut["id"]])
        assert [s["output"] for s in thread["steps"] if s["id"] == cut["id"]] == ["cut"]
        assert (await events.of(layer.get_thread(tid)))[1] == ["SELECT", "SELECT"]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_slow_network_below_the_timeout_succeeds(backend: str, tmp_path: Path) -> None:
    """Every answer delayed by a tenth of the timeout: calls are slower, and nothing else."""
    async with _proxied(backend, tmp_path, timeout=TIMEOUT) as (layer, proxy):
        tid = new_id()
        await layer.update_thread(tid, name="t")
        await layer.get_thread(tid)
        proxy.set_mode("slow", delay=TIMEOUT / 10)
        events = Events(layer)
        step = _step(tid, "slow")
        assert (await events.of(layer.create_step(step)))[1] == ["INSERT"]
        assert (await events.of(layer.update_thread(tid, name="slow")))[1] == ["INSERT"]
        thread, seen = await events.of(layer.get_thread(tid))
        assert seen == ["SELECT", "SELECT"]
        assert thread is not None and thread["name"] == "slow"
        assert _step_ids(thread) == [step["id"]]
        assert layer.sql.raw.generation == 0  # nothing failed, nothing was discarded


@pytest.mark.parametrize("backend", BACKENDS)
async def test_maintenance_has_its_own_longer_limit(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``migrate`` (and ``chainlit-orm migrate --timeout``) gives up after its own limit; the
    layer's first-use schema check runs under ``migrate_timeout``, in a task that outlives the
    call that started it (whose ``timeout`` is shorter), so a schema being created is not cut
    short, and the next call waits for that same check."""
    async with SQL_BACKENDS[backend].database(tmp_path) as url:
        with fault_proxy(*SERVERS[backend]) as proxy:
            via = make_url(url).set(port=proxy.port).render_as_string(hide_password=False)
            loop = asyncio.get_running_loop()
            proxy.set_mode("blackhole")
            started = loop.time()
            with pytest.raises(TimeoutExceededError, match=r"within its timeout of 0\.5 s"):
                await migrate(via, timeout=0.5)
            assert loop.time() - started < 2 * 0.5
            assert await asyncio.to_thread(main, ["migrate", via, "--timeout", "0.5"]) == 2
            assert "did not finish within its timeout of 0.5 s" in capsys.readouterr().err

            layer = SQLDataLayer(via, create_schema=True, timeout=TIMEOUT, connect_timeout=30,
                                 migrate_timeout=60)
            try:
                started = loop.time()
                with pytest.raises(TimeoutExceededError):
                    await layer.get_user("nobody")
                assert loop.time() - started < 2 * TIMEOUT
                check = layer.sql._ready_task
                assert check is not None and not check.done()
                proxy.set_mode("pass")
                # the same check goes on (creating the schema can take longer than a call's
                # timeout, on MariaDB) and succeeds; the next call then runs at once
                await asyncio.wait({check})
                assert check.exception() is None and layer.sql._is_ready
                assert await layer.get_user("nobody") is None
                assert layer.sql._ready_task is check
            finally:
                await layer.close()
            assert (await migrate(via)).changed is False  # the layer created all of it


async def test_a_postgres_restart_drops_the_kept_connections_then_one_call_succeeds() -> None:
    """A real restart (fast shutdown: every session terminated, then a new postmaster), on a
    private server so that no other test's server goes down."""
    with private_postgres() as server:
        layer = SQLDataLayer(server.url, create_schema=True)
        try:
            tid = new_id()
            await layer.update_thread(tid, name="t")
            await _fill_pool(layer, tid)
            await asyncio.to_thread(server.restart)
            await _after_dropped_pool(layer, "postgres", tid)
        finally:
            await layer.close()


async def test_a_sqlite_transaction_stuck_in_its_thread_times_out_and_stays_out_of_the_pool(
    tmp_path: Path,
) -> None:
    """SQLite runs a user message's transaction in the connection's thread, in one hop, and
    nothing can stop that thread while it waits for another process's write lock (its busy
    handler ignores ``interrupt``). The call still raises TimeoutExceededError on time; the
    connection is out of the pool until its thread is done, and no new writer is opened until
    then; the next write waits for it (and times out on its own) instead of meeting the stuck
    thread."""
    path = tmp_path / "stuck.db"
    layer = SQLDataLayer(f"sqlite+aiosqlite:///{path}", timeout=TIMEOUT)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        pool = layer.sql.raw
        loop = asyncio.get_running_loop()
        tid = new_id()
        await layer.update_thread(tid, name="t")
        kept = _step(tid, "kept", "user_message")
        await layer.create_step(kept)
        writer = pool._writer
        other.execute("BEGIN IMMEDIATE")  # another process's writer holds the database
        stuck = _step(tid, "stuck", "user_message")
        started = loop.time()
        with pytest.raises(TimeoutExceededError):
            await layer.create_step(stuck)
        assert loop.time() - started < 2 * TIMEOUT
        # the thread still waits in SQLite's busy handler: the connection is not handed out,
        # and no other writer is opened while it is being closed
        assert pool._writer is None and writer.is_valid
        assert pool._writer_gone is not None
        assert len(pool._retiring) == 1
        with pytest.raises(TimeoutExceededError):
            await layer.update_thread(tid, name="waits for the lock")
        assert len(pool._retiring) == 1  # the waiting writer touched no connection
        other.execute("ROLLBACK")
        await pool.settle()
        assert not writer.is_valid and pool._writer_gone is None
        assert pool._write_lock is not None and not pool._write_lock.locked()
        after = _step(tid, "after", "user_message")
        await layer.create_step(after)
        thread = await layer.get_thread(tid)
        assert thread is not None and thread["name"] == "t"
        # the stuck transaction never started: SQLite had not given it the lock
        assert _step_ids(thread) == sorted([kept["id"], after["id"]])
    finally:
        other.close()
        await layer.close()


@pytest.mark.parametrize("option", ["timeout", "connect_timeout", "migrate_timeout"])
@pytest.mark.parametrize("value", [0, -1, float("inf"), float("nan"), True, "5"])
def test_a_limit_that_bounds_nothing_is_refused(option: str, value: object, tmp_path: Path
                                               ) -> None:
    with pytest.raises(ConfigurationError, match=option):
        SQLDataLayer(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", **{option: value})


def test_the_limits_and_their_defaults(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    layer = SQLDataLayer(url)
    assert (layer.timeout, layer.sql.timeout, layer.sql.connect_timeout,
            layer.sql.migrate_timeout) == (30.0, 30.0, 10.0, 600.0)
    layer = SQLDataLayer(url, timeout=2, connect_timeout=1, migrate_timeout=60)
    assert (layer.timeout, layer.sql.timeout, layer.sql.connect_timeout,
            layer.sql.migrate_timeout) == (2.0, 2.0, 1.0, 60.0)
    assert layer.sql.raw.connect_timeout == 1.0
