"""from_env() and a custom model set's extra column, filled and queryable as documented."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from chainlit.types import Pagination, ThreadFilter
from chainlit.user import User
from sqlalchemy.ext.asyncio import create_async_engine

import chainlit_orm
from chainlit_orm import FsspecStorage, SQLDataLayer
from chainlit_orm.errors import ConfigurationError
from tests.backends import SQL_BACKENDS, custom_models
from tests.sql.conftest import new_id


async def test_from_env_builds_the_sql_layer_with_storage(tmp_path: Path) -> None:
    env = {"CHAINLIT_ORM_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/env.db",
           "CHAINLIT_ORM_STORAGE_URL": f"file://{tmp_path}/files"}
    layer = chainlit_orm.from_env(env)
    try:
        assert isinstance(layer, SQLDataLayer)
        assert isinstance(layer.storage, FsspecStorage)
        assert await layer.get_user("nobody") is None  # the embedded default creates its schema
    finally:
        await layer.close()
    fallback = chainlit_orm.from_env({"DATABASE_URL": f"sqlite:///{tmp_path}/fallback.db"})
    assert isinstance(fallback, SQLDataLayer) and fallback.storage is None
    await fallback.close()


def test_from_env_without_a_database_names_the_variable() -> None:
    with pytest.raises(ConfigurationError, match="CHAINLIT_ORM_DATABASE_URL"):
        chainlit_orm.from_env({})


async def test_custom_tenant_column_is_filled_from_metadata_and_indexed(tmp_path: Path) -> None:
    models = custom_models(schema="chat")
    async with SQL_BACKENDS["postgres-custom"].database(tmp_path) as url:
        await chainlit_orm.migrate(url, models=models)
        layer = SQLDataLayer(url, models=models)
        try:
            user = await layer.create_user(User(identifier="tenant-user", metadata={}))
            assert user is not None
            a, b = new_id(), new_id()
            await layer.update_thread(a, name="a", user_id=user.id, metadata={"tenant": "acme"})
            await layer.update_thread(b, name="b", user_id=user.id, metadata={"tenant": "beta"})
            await layer.update_thread(b, metadata={"tenant": "acme", "other": 1})
            page = await layer.list_threads(Pagination(first=10), ThreadFilter(userId=user.id))
            assert {t["id"] for t in page.data} == {a, b}
        finally:
            await layer.close()
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                threads = models.table("thread")
                rows = (await conn.execute(
                    sa.select(threads.c.id).where(threads.c.tenant == "acme").order_by(threads.c.id)
                )).scalars().all()
                indexes = await conn.run_sync(
                    lambda c: sa.inspect(c).get_indexes("acme_threads", schema="chat"))
        finally:
            await engine.dispose()
        assert sorted(rows) == sorted([a, b])
        assert {"name": "ix_acme_threads_tenant", "columns": ["tenant", "activityAt"]} in [
            {"name": i["name"], "columns": i["column_names"]} for i in indexes]


async def test_a_set_with_a_postgres_schema_also_runs_on_sqlite_and_mariadb(tmp_path: Path) -> None:
    """The schema is a PostgreSQL notion: elsewhere the same set's tables live unqualified."""
    models = custom_models(schema="chat")
    for name in ("sqlite", "mariadb"):
        async with SQL_BACKENDS[name].database(tmp_path) as url:
            await chainlit_orm.migrate(url, models=models)
            layer = SQLDataLayer(url, models=models)
            try:
                user = await layer.create_user(User(identifier="s", metadata={}))
                assert user is not None
                tid = new_id()
                await layer.update_thread(tid, name="n", user_id=user.id, metadata={"tenant": "t"})
                page = await layer.list_threads(Pagination(first=5), ThreadFilter(userId=user.id))
                assert [t["id"] for t in page.data] == [tid]
            finally:
                await layer.close()


@pytest.mark.parametrize(("cores", "expected"), [(1, 4), (2, 4), (6, 8), (64, 16), (None, 4)])
async def test_a_sqlite_file_pool_follows_the_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cores: int | None, expected: int
) -> None:
    """SQLite's connections are threads of this process: the default pool is cores + 2 (the
    writer and a reader per core, one more), between 4 and 16; a server's pool stays 16 and an
    explicit pool_size wins."""
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    layer = SQLDataLayer(f"sqlite+aiosqlite:///{tmp_path / 'p.sqlite'}", create_schema=True)
    chosen = SQLDataLayer(f"sqlite+aiosqlite:///{tmp_path / 'q.sqlite'}", create_schema=True,
                          pool_size=7)
    try:
        assert layer.sql.auto.sync_engine.pool.size() == expected  # type: ignore[attr-defined]
        assert chosen.sql.auto.sync_engine.pool.size() == 7  # type: ignore[attr-defined]
    finally:
        await layer.close()
        await chosen.close()


async def test_the_default_pool_per_backend(
    sql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On 2 cores: 4 connections for a SQLite file, 16 for a server, whatever the cores."""
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    layer = SQLDataLayer(sql_url)
    try:
        expected = 4 if layer.sql.dialect == "sqlite" else 16
        assert layer.sql.auto.sync_engine.pool.size() == expected  # type: ignore[attr-defined]
    finally:
        await layer.close()
