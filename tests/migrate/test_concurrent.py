"""Four ``chainlit-orm migrate`` processes on one database, started at the same moment.

Each backend, fresh and (SQL) made from Chainlit's documented DDL: every process exits 0, the
schema is built once, the version table has one record, and exactly three processes report that
they waited for the migration lock and found nothing to do.

To make "they all started while another held the lock" certain rather than likely, the test
takes the migration lock itself first (PostgreSQL's advisory lock, MariaDB's ``GET_LOCK``,
SQLite's write lock, the DynamoDB lock item), starts the four processes on one start file,
waits until each has logged that it is waiting, and then lets go: the four race for the lock at
the same moment, one migrates, three wait again and find the work done. The race to *create* a
DynamoDB table has no lock to hold before the table exists; that test races for real.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from chainlit_orm.migrations import schema_history
from chainlit_orm.migrations.dynamo import LOCK_KEY
from chainlit_orm.migrations.lock import lock_key, lock_name
from chainlit_orm.models import DEFAULT_MODELS
from chainlit_orm.schema_gen import SCHEMA_VERSION
from chainlit_orm.schema_gen.dynamo import SCHEMA_VERSION_KEY, dynamo_table_spec
from tests.aws import MOTO_ENDPOINT, REGION, aws_env, docs_table, dynamodb
from tests.fixtures.legacy import (
    create_legacy_schema,
    temp_mariadb_db,
    temp_postgres_db,
    temp_sqlite_url,
)
from tests.migrate.conftest import scalar_rows, structure
from tests.migrate.processes import WAITING_LOG, Outcome, Workers

__all__ = ["aws_env", "dynamodb"]  # fixtures, imported for the DynamoDB tests

WAITED = "waited for the migration lock held by another process"
WAITED_NOTHING = [f"{WAITED}; schema already at version {SCHEMA_VERSION}: nothing to do"]
Release = Callable[[], Awaitable[None]]


async def _four_behind_a_held_lock(tmp_path: Path, url: str, release: Release) -> list[Outcome]:
    """Start four migrations while the test holds the lock; release it once all four wait."""
    workers = Workers(tmp_path, 4, ["migrate", url])
    try:
        await workers.ready()
        workers.go()
        await workers.wait_for(WAITING_LOG)
        await release()
        return await workers.finished()
    finally:
        workers.close()


def _one_built_three_waited(outcomes: list[Outcome]) -> Outcome:
    """Every process exited 0; three say exactly "waited ... nothing to do"; the fourth waited
    too, then migrated. Returns the fourth."""
    assert [o.code for o in outcomes] == [0, 0, 0, 0], [o.stderr for o in outcomes]
    assert all(WAITING_LOG in o.stderr for o in outcomes)
    nothing = [o for o in outcomes if o.lines == WAITED_NOTHING]
    built = [o for o in outcomes if o.lines != WAITED_NOTHING]
    assert (len(nothing), len(built)) == (3, 1), [o.lines for o in outcomes]
    return built[0]


async def _sql_checks(url: str, built: Outcome, *, fresh: bool) -> None:
    assert built.lines[0] == WAITED
    assert built.lines[-1].startswith(f"done: schema version {SCHEMA_VERSION} recorded; ")
    created = [line for line in built.lines if line.startswith("create table ")]
    assert created == [f"create table {t}" for t in (
        ("users", "threads", "steps", "elements", "feedbacks") if fresh else ()) + (
        "chainlit_orm_erased", "chainlit_orm_version")]
    assert [tuple(r) for r in await scalar_rows(
        url, "SELECT id, version FROM chainlit_orm_version")] == [(1, SCHEMA_VERSION)]
    struct = await structure(url)
    for _, table in DEFAULT_MODELS.tables():
        assert set(table.columns.keys()) <= set(struct[table.name]["columns"])
        assert {str(i.name) for i in table.indexes} <= {i[0] for i in
                                                        struct[table.name]["indexes"]}
    history = await schema_history(url)
    assert [(e.number, e.version, e.known) for e in history] == [(1, SCHEMA_VERSION, True)]


# --------------------------------------------------------------------------- PostgreSQL


async def _hold_pg(url: str) -> tuple[Any, Release]:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    key = lock_key(DEFAULT_MODELS)
    await conn.execute("SELECT pg_advisory_lock($1)", key)

    async def release() -> None:
        await conn.execute("SELECT pg_advisory_unlock($1)", key)
        await conn.close()
    return conn, release


@pytest.mark.postgres
@pytest.mark.parametrize("ddl", [None, "docs"], ids=["fresh", "chainlit-docs"])
async def test_four_processes_migrate_postgres(tmp_path: Path, ddl: str | None) -> None:
    async with temp_postgres_db() as url:
        if ddl:
            await create_legacy_schema(url, ddl)
        _, release = await _hold_pg(url)
        built = _one_built_three_waited(await _four_behind_a_held_lock(tmp_path, url, release))
        await _sql_checks(url, built, fresh=ddl is None)
        if ddl:
            assert "add column threads.activityAt (TEXT)" in built.lines


# --------------------------------------------------------------------------- MariaDB


@pytest.mark.mariadb
async def test_four_processes_migrate_mariadb(tmp_path: Path) -> None:
    """Chainlit documents no MySQL/MariaDB schema (its SQL layer is PostgreSQL-only in practice,
    contract §2), so MariaDB has the fresh case only."""
    import asyncmy

    async with temp_mariadb_db() as url:
        database = url.rsplit("/", 1)[1]
        conn = await asyncmy.connect(host="127.0.0.1", port=3306, user="root", password="",
                                     database=database, autocommit=True)
        name = lock_name(database, DEFAULT_MODELS)
        async with conn.cursor() as cur:
            await cur.execute("SELECT GET_LOCK(%s, 0)", (name,))
            assert (await cur.fetchone())[0] == 1

        async def release() -> None:
            async with conn.cursor() as cur:
                await cur.execute("SELECT RELEASE_LOCK(%s)", (name,))
            conn.close()

        built = _one_built_three_waited(await _four_behind_a_held_lock(tmp_path, url, release))
        await _sql_checks(url, built, fresh=True)


# --------------------------------------------------------------------------- SQLite


@pytest.mark.sqlite
@pytest.mark.parametrize("ddl", [None, "docs"], ids=["fresh", "chainlit-docs"])
async def test_four_processes_migrate_sqlite(tmp_path: Path, ddl: str | None) -> None:
    async with temp_sqlite_url(tmp_path) as url:
        if ddl:
            await create_legacy_schema(url, ddl)
        holder = sqlite3.connect(url.split("///", 1)[1], isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")

        async def release() -> None:
            holder.execute("COMMIT")
            holder.close()

        built = _one_built_three_waited(await _four_behind_a_held_lock(tmp_path, url, release))
        await _sql_checks(url, built, fresh=ddl is None)


# --------------------------------------------------------------------------- DynamoDB


def _dynamo_url(table: str) -> str:
    return f"dynamodb://{table}?region={REGION}&endpoint_url={MOTO_ENDPOINT}"


@pytest.mark.dynamodb
async def test_four_processes_create_one_dynamodb_table(tmp_path: Path,
                                                        dynamodb: Any) -> None:
    """No table yet: the four race to CreateTable; DynamoDB lets one succeed, the others get
    ResourceInUseException, wait for ACTIVE and for the creator's lock, and find it done."""
    table = f"clorm_{uuid.uuid4().hex}"
    url = _dynamo_url(table)
    workers = Workers(tmp_path, 4, ["migrate", url])
    try:
        await workers.ready()
        workers.go()
        outcomes = await workers.finished()
        assert [o.code for o in outcomes] == [0, 0, 0, 0], [o.stderr for o in outcomes]
        names = [g["IndexName"] for g in
                 dynamo_table_spec(DEFAULT_MODELS, table)["GlobalSecondaryIndexes"]]
        creators = [o for o in outcomes if
                    f"create table {table} ({url}) with PK/SK and GSIs {', '.join(names)}"
                    in o.lines]
        assert len(creators) == 1, [o.lines for o in outcomes]
        assert creators[0].lines[-1] == f"record schema version {SCHEMA_VERSION}"
        others = [o for o in outcomes if o is not creators[0]]
        # a process that started after the table existed and the creator was done did not
        # wait (the creator takes well under a second): it says the table is up to date
        up_to_date = [f"table {table} ({url}) is up to date (schema version "
                      f"{SCHEMA_VERSION})"]
        assert all(o.lines in (WAITED_NOTHING, up_to_date) for o in others), [
            o.lines for o in others]
        print("DynamoDB fresh race: waited and found nothing to do:",
              sum(o.lines == WAITED_NOTHING for o in others), "of 3")
        described = dynamodb.describe_table(TableName=table)["Table"]
        assert sorted(g["IndexName"] for g in described["GlobalSecondaryIndexes"]) == sorted(
            names)
        items = dynamodb.scan(TableName=table, ConsistentRead=True)["Items"]
        assert [{k: v["S"] for k, v in i.items() if k in ("PK", "SK")} for i in items] == [
            dict(SCHEMA_VERSION_KEY)]  # the version item, once; no lock item left
        history = await schema_history(url)
        assert [(e.number, e.tables, e.indexes) for e in history] == [
            (1, (table,), tuple(names))]
    finally:
        workers.close()
        if table in dynamodb.list_tables()["TableNames"]:
            dynamodb.delete_table(TableName=table)


@pytest.mark.dynamodb
async def test_four_processes_migrate_a_chainlit_dynamodb_table(tmp_path: Path,
                                                                dynamodb: Any) -> None:
    """A table as Chainlit's docs make it (PK/SK, GSI UserThread): the four wait behind a lock
    item the test holds; one adds the GSIs, three find nothing to do."""
    table = f"clorm_{uuid.uuid4().hex}"
    url = _dynamo_url(table)
    docs_table(dynamodb, table)
    key = {k: {"S": v} for k, v in LOCK_KEY.items()}
    dynamodb.put_item(TableName=table, Item={**key, "owner": {"S": "the test"},
                                             "lockExpiresAt": {"N": "99999999999"}})

    async def release() -> None:
        dynamodb.delete_item(TableName=table, Key=key)

    try:
        built = _one_built_three_waited(await _four_behind_a_held_lock(tmp_path, url, release))
        assert built.lines[0] == WAITED
        added = [line for line in built.lines if line.startswith("add GSI ")]
        names = [g["IndexName"] for g in
                 dynamo_table_spec(DEFAULT_MODELS, table)["GlobalSecondaryIndexes"]]
        assert [line.split()[2] for line in added] == [n for n in names if n != "UserThread"]
        described = dynamodb.describe_table(TableName=table)["Table"]
        assert sorted(g["IndexName"] for g in described["GlobalSecondaryIndexes"]) == sorted(
            names)
        history = await schema_history(url)
        assert [(e.number, e.version, e.tables) for e in history] == [
            (1, SCHEMA_VERSION, ())]
        assert "Item" not in dynamodb.get_item(TableName=table, Key=key, ConsistentRead=True)
    finally:
        dynamodb.delete_table(TableName=table)


def test_the_lock_names_fit_the_servers_limits() -> None:
    """MariaDB's GET_LOCK takes names of at most 64 characters; PostgreSQL's key is a bigint."""
    name = lock_name("a" * 64, DEFAULT_MODELS)
    assert (len(name), name.startswith("chainlit-orm:")) == (45, True)
    assert 0 <= lock_key(DEFAULT_MODELS) < 2**63


@pytest.mark.postgres
@pytest.mark.parametrize("flag", [False, True], ids=["without-flag", "with-flag"])
async def test_four_processes_migrate_through_pgbouncer_all_refuse(tmp_path: Path,
                                                                   flag: bool) -> None:
    """outside attack #18 F2: 4 ``chainlit-orm migrate`` at once through PgBouncer (transaction
    mode). Before: without the flag 1-2 died with a 154-line SQLAlchemy traceback and one
    migrated; with it, two processes both "held" the lock on one server session and tables were
    made. Now each refuses when its first connection opens, before the lock and any DDL: exit 1,
    one typed line on stderr, nothing migrated."""
    from chainlit_orm.migrations.sql import refuse_pooler
    from tests.backends import PGBOUNCER_PORT, through_pgbouncer

    async with temp_postgres_db() as url:
        pooled = through_pgbouncer(url)
        if not flag:
            pooled = pooled.replace("?prepared_statement_cache_size=0", "")
        workers = Workers(tmp_path, 4, ["migrate", pooled, "--timeout", "60"])
        try:
            await workers.ready()
            workers.go()
            outcomes = await workers.finished()
        finally:
            workers.close()
        line = f"chainlit-orm: error: {refuse_pooler(pooled, f'127.0.0.1:{PGBOUNCER_PORT}')}"
        assert [(o.code, o.lines, o.stderr) for o in outcomes] == [
            (1, [], f"ready\n{line}\n")] * 4
        assert await schema_history(url) == []
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
        try:
            assert await conn.fetchval(
                "SELECT count(*) FROM information_schema.tables "
                "WHERE table_schema = 'public'") == 0
            assert await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0
        finally:
            await conn.close()
