"""Online migrations: writers keep landing while PostgreSQL is migrated, a migration killed at
any step is finished by running it again, an index left INVALID is built again, MariaDB builds
indexes with ``ALGORITHM=INPLACE, LOCK=NONE``.

The databases are made from Chainlit's documented DDL and loaded with ``COPY``
(:func:`bench.migration_stall.load_legacy`: one thread per 10 steps).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import asyncpg
import pytest

from bench.migration_stall import ROOT, drop_database, load_legacy, measure
from chainlit_orm.migrations import migrate, schema_history
from chainlit_orm.models import DEFAULT_MODELS
from chainlit_orm.schema_gen import SCHEMA_VERSION
from tests.fixtures.legacy import temp_mariadb_db, temp_postgres_db
from tests.migrate.conftest import execute, scalar_rows, structure
from tests.migrate.processes import Workers

PG_URL = "postgresql://postgres@127.0.0.1:5432/{name}"


async def _pg(name: str, sql: str) -> list[tuple[object, ...]]:
    conn = await asyncpg.connect(PG_URL.format(name=name))
    try:
        return [tuple(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


async def _assert_complete(name: str) -> None:
    """The schema is the models', every index valid, the version recorded once, and every row
    that existed before the migration backfilled."""
    url = PG_URL.format(name=name)
    struct = await structure(url.replace("postgresql://", "postgresql+asyncpg://"))
    for _, table in DEFAULT_MODELS.tables():
        assert set(table.columns.keys()) <= set(struct[table.name]["columns"]), table.name
        assert {str(i.name) for i in table.indexes} <= {
            i[0] for i in struct[table.name]["indexes"]}, table.name
    assert await _pg(name, "SELECT count(*) FROM pg_index WHERE NOT indisvalid") == [(0,)]
    assert await _pg(name, "SELECT indexrelid::regclass::text FROM pg_index i JOIN pg_class c "
                           "ON c.oid = i.indrelid WHERE c.relname IN ('threads', 'steps') AND "
                           "indexrelid::regclass::text LIKE '%trgm' ORDER BY 1") == [
        ("ix_steps_output_trgm",), ("ix_threads_name_trgm",)]
    assert await _pg(name, "SELECT id, version FROM chainlit_orm_version") == [
        (1, SCHEMA_VERSION)]
    # the COPY-loaded rows (createdAt in 2025-01; the writers' rows are not counted)
    assert await _pg(name, 'SELECT count(*) FROM threads WHERE "activityAt" IS NULL') == [(0,)]
    assert await _pg(
        name, 'SELECT count(*) FROM steps WHERE "outputFolded" IS NULL AND output LIKE '
              "'Message %' AND type IN ('user_message', 'assistant_message')") == [(0,)]
    assert await _pg(name, "SELECT count(*) FROM steps WHERE favorite IS NULL AND output LIKE "
                           "'Message %'") == [(0,)]


@pytest.mark.postgres
async def test_writers_keep_landing_during_a_postgres_migration() -> None:
    """~50,000 steps in Chainlit's documented schema, 8 writers writing as the previous app
    version does (a step, then a thread rename) while migrate runs in its own process: every
    writer commits during the migration, none fails, and the result is complete."""
    steps = 50_000
    result = await measure("ci", steps, ROOT, writers=8, keep=True)
    try:
        print(f"migrate {result.migrate_seconds:.1f} s; longest write stall "
              f"{result.longest_stall:.3f} s; p99 {result.p99():.3f} s; writes during "
              f"migrate per writer {result.per_writer}")
        assert result.exit_code == 0, result.output
        assert result.errors == []
        assert len(result.per_writer) == 8
        assert all(count > 0 for count in result.per_writer), result.per_writer
        assert result.output.splitlines()[-1].startswith(
            f"done: schema version {SCHEMA_VERSION} recorded; ")
        await _assert_complete(result.database)
        inserted = sum(len(w.writes) for w in result.writers) // 2
        total = await _pg(result.database, "SELECT count(*) FROM steps")
        assert total[0][0] in range(steps + inserted, steps + inserted + 9)
    finally:
        await drop_database(result.database)


@pytest.mark.postgres
@pytest.mark.parametrize("after_step", [3, 18, 26])
async def test_a_killed_migration_is_finished_by_running_it_again(
        tmp_path: Path, after_step: int) -> None:
    """Killed (SIGKILL) after a column, after some concurrent index builds, during the
    backfills: the database is not recorded as migrated, and migrate run again completes it."""
    async with temp_postgres_db() as url:
        name = url.rsplit("/", 1)[1]
        await load_legacy(name, 20_000)
        workers = Workers(tmp_path, 1, ["migrate", url])
        try:
            await workers.ready()
            workers.go()
            await workers.wait_for(f"step {after_step}/")
            workers.kill(0)
        finally:
            workers.close()
        recorded = await _pg(name, "SELECT to_regclass('chainlit_orm_version') IS NOT NULL")
        if recorded == [(True,)]:
            assert await _pg(name, "SELECT count(*) FROM chainlit_orm_version") == [(0,)]

        report = await migrate(url)

        assert report.changed is True
        assert report.lines[-1].startswith(f"done: schema version {SCHEMA_VERSION} recorded; ")
        await _assert_complete(name)
        again = await migrate(url)
        assert (again.changed, again.lines) == (
            False, [f"schema is up to date at version {SCHEMA_VERSION}; nothing to do"])


@pytest.mark.postgres
@pytest.mark.parametrize(("index", "table", "definition"), [
    ("ix_steps_thread_created", "steps", '("threadId", "createdAt", id)'),
    ("ix_steps_output_trgm", "steps", 'USING gin ("outputFolded" gin_trgm_ops)'),
])
async def test_an_invalid_index_is_dropped_and_built_again(index: str, table: str,
                                                           definition: str) -> None:
    """What an interrupted ``CREATE INDEX CONCURRENTLY`` leaves (``pg_index.indisvalid``
    false) is not taken for a built index: migrate drops it and builds it again."""
    async with temp_postgres_db() as url:
        name = url.rsplit("/", 1)[1]
        await load_legacy(name, 2_000)
        await migrate(url)
        await execute(url, f"UPDATE pg_index SET indisvalid = false WHERE indexrelid = "
                           f"'{index}'::regclass")

        report = await migrate(url)

        assert report.changed is True
        assert report.lines[0] == (f"migrating {url}: schema version {SCHEMA_VERSION} "
                                   "(unchanged)")
        assert (f"drop invalid index {index} on {table} (left by an interrupted build); it is "
                "built again below") in report.lines
        assert f"DROP INDEX CONCURRENTLY IF EXISTS {index}" in report.statements
        assert f"CREATE INDEX CONCURRENTLY {index} ON {table} {definition}" in report.statements
        assert report.lines[-2] == (f"schema history entry #2: added indexes {table}.{index}; "
                                    f"rebuilt the invalid index {index}")
        assert await _pg(name, "SELECT count(*) FROM pg_index WHERE NOT indisvalid") == [(0,)]
        history = await schema_history(url)
        assert [(e.number, e.indexes, e.other) for e in history[1:]] == [
            (2, (f"{table}.{index}",), (f"rebuilt the invalid index {index}",))]


@pytest.mark.mariadb
async def test_mariadb_builds_indexes_without_locking_the_table() -> None:
    """A missing index on an existing MariaDB table is built with ``ALGORITHM=INPLACE,
    LOCK=NONE`` (the server refuses rather than locking writes), a column added on its own."""
    async with temp_mariadb_db() as url:
        await migrate(url)
        await execute(url, "DROP INDEX ix_steps_favorite ON steps")
        await execute(url, "ALTER TABLE steps DROP COLUMN icon")
        await execute(url, "INSERT INTO threads (id, `createdAt`, name) VALUES "
                           f"('{uuid.uuid4()}', '2025-01-01T00:00:00.000000Z', 'x')")

        report = await migrate(url)

        assert report.statements[:2] == [
            "ALTER TABLE steps ADD COLUMN icon LONGTEXT",
            "CREATE INDEX ix_steps_favorite ON steps (favorite, `createdAt`) "
            "ALGORITHM=INPLACE LOCK=NONE"]
        indexes = {i[0]: i for i in (await structure(url))["steps"]["indexes"]}
        assert indexes["ix_steps_favorite"] == (
            "ix_steps_favorite", ("favorite", "createdAt"), False)
        rows = await scalar_rows(url, "SELECT id, version FROM chainlit_orm_version ORDER BY id")
        assert [tuple(r) for r in rows] == [(1, SCHEMA_VERSION), (2, SCHEMA_VERSION)]
