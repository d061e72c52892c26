"""Transient failures are retried; nothing acknowledged is lost; errors are typed, never silent."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from chainlit_orm import SQLDataLayer
from chainlit_orm.errors import BackendUnavailableError, ConfigurationError
from chainlit_orm.layers.sqlexec import Statement
from tests.backends import SQL_BACKENDS
from tests.reliability.private_pg import private_postgres
from tests.sql.conftest import new_id


def _step(tid: str, i: int) -> dict[str, object]:
    return {"id": new_id(), "threadId": tid, "type": "assistant_message", "name": "bot",
            "output": f"m{i}", "streaming": False, "metadata": {}}


async def _write_loop(layer: SQLDataLayer, tid: str, n: int, acknowledged: list[str]) -> None:
    for i in range(n):
        step = _step(tid, i)
        await layer.create_step(step)  # raises if it could not be written after the retries
        acknowledged.append(str(step["id"]))
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("backend", ["postgres", "mariadb"])
async def test_killed_connections_lose_no_acknowledged_write(backend: str, tmp_path: Path) -> None:
    """Every connection of the database is killed over and over while writes run: each kill
    lands wherever the writer happens to be (idle in the kept list, connecting, mid-statement).
    After a kill, the next one waits until two more writes are acknowledged (the first may be
    the call the kill interrupted, its retry having succeeded): the server is up between kills,
    as after a restart or a failover, and so each call meets at most one kill, which its retries
    must absorb. (Killing on a fixed period instead failed this test under CPU load: opening a
    connection took 40-90 ms, as long as the period, so one call's five attempts could each meet
    a kill, and it rightly raised ``BackendUnavailableError`` once its retries were spent.)"""
    async with SQL_BACKENDS[backend].database(tmp_path) as url:
        layer = SQLDataLayer(url, create_schema=True, pool_size=2)
        admin = create_async_engine(url, isolation_level="AUTOCOMMIT")
        tid, acknowledged = new_id(), []
        await layer.sql.ensure_ready()
        try:
            loop = asyncio.create_task(_write_loop(layer, tid, 150, acknowledged))
            killed, kills, after_kill = 0, 0, -2
            while not loop.done():
                await asyncio.sleep(0.05)
                if len(acknowledged) < after_kill + 2:
                    continue  # the server stays up until a call that started after the kill ended
                kills += 1
                async with admin.connect() as conn:
                    if backend == "postgres":
                        result = await conn.execute(sa.text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
                        killed += sum(1 for (ok,) in result if ok)
                    else:
                        ids = (await conn.execute(sa.text(
                            "SELECT id FROM information_schema.processlist "
                            "WHERE db = DATABASE() AND id <> CONNECTION_ID()"))).scalars().all()
                        for pid in ids:
                            await conn.execute(sa.text(f"KILL {int(pid)}"))
                        killed += len(ids)
                after_kill = len(acknowledged)
            await loop
            assert kills >= 3 and killed >= 3  # at least one connection per kill, usually
            thread = await layer.get_thread(tid)
            assert thread is not None
            assert sorted(s["id"] for s in thread["steps"]) == sorted(acknowledged)
            assert len(acknowledged) == 150
        finally:
            await admin.dispose()
            await layer.close()


@pytest.mark.parametrize("backend", ["postgres", "mariadb"])
async def test_a_cancelled_statement_never_hands_its_connection_out_again(
    backend: str, tmp_path: Path
) -> None:
    """A statement cancelled mid-flight can leave the driver mid-protocol: the connection is
    invalidated (not kept), its slot is freed, and the next calls run on fresh connections."""
    async with SQL_BACKENDS[backend].database(tmp_path) as url:
        layer = SQLDataLayer(url, create_schema=True, pool_size=2)
        try:
            await layer.sql.ensure_ready()
            pool = layer.sql.raw
            await layer.update_thread(new_id(), name="warm")  # one kept connection
            assert len(pool._idle) == 1
            kept = pool._idle[0][0]
            sleep = sa.select(sa.func.pg_sleep(5) if backend == "postgres" else sa.func.sleep(5))
            slow = Statement(sleep, layer.sql.auto.dialect, None)

            async def stuck() -> None:
                async with pool.connect() as conn:
                    await conn.fetch(slow, {})

            task = asyncio.create_task(stuck())
            await asyncio.sleep(0.3)
            assert pool._idle == []  # the kept connection is the one in use
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert pool._idle == []
            # it is closed in the background (asyncpg sends its cancel request first), so the
            # cancelled caller is not delayed; it keeps its slot until then
            await pool.settle()
            assert not kept.is_valid
            # both slots are free again: two leases at once do not wait
            async with pool.connect() as one, pool.connect() as two:
                assert one is not two
            assert len(pool._idle) == 2
            assert all(fairy.is_valid for fairy, _, _ in pool._idle)
            tid = new_id()
            await layer.update_thread(tid, name="after")
            thread = await layer.get_thread(tid)
            assert thread is not None and thread["name"] == "after"
        finally:
            await layer.close()


async def _acknowledged(acknowledged: list[str], count: int) -> None:
    """Wait until ``count`` writes are acknowledged (failing loudly after 30 s)."""
    for _ in range(3000):
        if len(acknowledged) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"only {len(acknowledged)} of {count} writes acknowledged")


async def test_postgres_restart_during_writes_loses_no_acknowledged_write() -> None:
    """A real restart while writes run (before, during and after it), on a private server:
    restarting the shared one would break every other test using it at that moment."""
    with private_postgres() as server:
        layer = SQLDataLayer(server.url, create_schema=True, retries=12)
        tid, acknowledged, stop = new_id(), [], asyncio.Event()

        async def writes() -> None:
            i = 0
            while not stop.is_set():
                step = _step(tid, i)
                await layer.create_step(step)  # raises if not written after the retries
                acknowledged.append(str(step["id"]))
                i += 1
                await asyncio.sleep(0.005)

        await layer.sql.ensure_ready()
        try:
            loop = asyncio.create_task(writes())
            await _acknowledged(acknowledged, 10)
            await asyncio.to_thread(server.restart)
            restarted = len(acknowledged)
            await _acknowledged(acknowledged, restarted + 10)
            stop.set()
            await loop
            thread = await layer.get_thread(tid)
            assert thread is not None
            assert sorted(s["id"] for s in thread["steps"]) == sorted(acknowledged)
            assert layer.sql.raw.generation >= 1  # the restart ended a generation
        finally:
            stop.set()
            await layer.close()


async def test_unreachable_database_gives_a_typed_error_with_the_password_masked() -> None:
    layer = SQLDataLayer("postgresql://user:sekret@127.0.0.1:1/nowhere", retries=2)
    with pytest.raises(BackendUnavailableError) as info:
        await layer.get_user("x")
    assert "sekret" not in str(info.value)
    assert "127.0.0.1:1" in str(info.value)
    await layer.close()


def test_unsupported_dialect_is_refused_naming_the_supported_ones() -> None:
    with pytest.raises(ConfigurationError, match="postgresql\\+asyncpg"):
        SQLDataLayer("oracle://u:p@h/db")
    with pytest.raises(ConfigurationError, match="supported"):
        SQLDataLayer("postgresql+psycopg2://u:p@h/db")
