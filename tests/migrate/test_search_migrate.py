"""``migrate`` adds, backfills and indexes the case-folded search copies on existing databases.

* Databases made from Chainlit's documented DDL (both variants, PostgreSQL and SQLite) and seeded
  through Chainlit's own layer: every name and every message text gets its exact folded copy,
  other steps none, and the search indexes are built over them.
* Databases of chainlit-orm's schema version 1 (``tests/fixtures/schema_v1``: the DDL that
  version generated) on SQLite, PostgreSQL and MariaDB: the layer refuses them until migrated;
  the dry run prints what the real run does; search then answers like the reference.
* A SQLite search index that lost a trigger is repaired (and rebuilt) by ``migrate``.
* A PostgreSQL role that may not create ``pg_trgm`` gets a typed error naming the fix, with
  nothing changed; once the extension exists, the same role migrates.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
import sqlalchemy as sa
from chainlit.types import Pagination, ThreadFilter
from sqlalchemy.ext.asyncio import create_async_engine

from chainlit_orm import SQLDataLayer
from chainlit_orm.errors import SchemaError, SchemaOutdatedError
from chainlit_orm.migrations import migrate
from chainlit_orm.schema_gen import SCHEMA_VERSION
from tests.fixtures.legacy import (
    PG_ADMIN_DSN,
    temp_mariadb_db,
    temp_postgres_db,
    temp_sqlite_url,
)
from tests.fixtures.search import check_fts_integrity, split_rows
from tests.migrate.conftest import Seeded, execute, scalar_rows, structure
from tests.migrate.test_migrate import UP_TO_DATE, without_appliedat

MESSAGES = ("user_message", "assistant_message")
V1 = Path(__file__).resolve().parents[1] / "fixtures" / "schema_v1"


def _fold(value: Any) -> Any:
    return None if value is None else str(value).casefold()


async def _folded_rows(url: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    q = "`" if url.startswith("mysql") else '"'
    threads = await scalar_rows(url, f"SELECT id, name, {q}nameFolded{q} FROM threads")
    steps = await scalar_rows(url, f"SELECT id, type, output, {q}outputFolded{q} FROM steps")
    return [tuple(r) for r in threads], [tuple(r) for r in steps]


def _assert_exact_copies(threads: list[tuple[Any, ...]], steps: list[tuple[Any, ...]]) -> None:
    for _, name, folded in threads:
        assert folded == _fold(name), name
    for _, kind, output, folded in steps:
        assert folded == (_fold(output) if kind in MESSAGES else None), (kind, output)


async def _search(layer: SQLDataLayer, user_id: str, term: str) -> set[str]:
    page = await layer.list_threads(Pagination(first=100),
                                    ThreadFilter(userId=user_id, search=term))
    return {t["id"] for t in page.data}


def _sqlite_integrity(url: str) -> None:
    check_fts_integrity(url.removeprefix("sqlite+aiosqlite:///"))


async def test_a_chainlit_database_gains_exact_folded_copies_and_search_indexes(
    seeded: Seeded
) -> None:
    url, seed = seeded.url, seeded.seed
    names = {r["id"]: r["name"] for r in seed.rows("threads")}
    messages = [r for r in seed.rows("steps") if r["type"] in MESSAGES and r["output"]]

    report = await migrate(url, dedupe_feedback=True)

    assert "add column threads.nameFolded (TEXT)" in report.lines
    assert "add column steps.outputFolded (TEXT)" in report.lines
    named = sum(1 for name in names.values() if name is not None)
    assert (f"backfill threads.nameFolded on {named} rows: the case-folded name"
            in report.lines)
    assert (f"backfill steps.outputFolded on {len(messages)} rows: the case-folded output"
            in report.lines)
    threads, steps = await _folded_rows(url)
    assert len(threads) == len(names) and len(steps) == len(seed.rows("steps"))
    _assert_exact_copies(threads, steps)
    if seeded.backend == "sqlite":
        _sqlite_integrity(url)
        assert ("create search index steps_output_fts (FTS5 trigram) on steps (outputFolded), "
                "its pending list and their triggers; index the existing rows") in report.lines
    else:
        indexes = {r[0] for r in await scalar_rows(
            url, "SELECT indexname FROM pg_indexes WHERE indexname LIKE '%trgm'")}
        assert indexes == {"ix_threads_name_trgm", "ix_steps_output_trgm"}
        assert ("create search index ix_steps_output_trgm on steps using gin (outputFolded "
                "gin_trgm_ops)") in report.lines

    layer = SQLDataLayer(url)
    try:
        for step in messages:  # each seeded message is found by a piece of it, any case
            owner = seed.row("threads", step["threadId"])["userId"]
            term = step["output"].strip()[:12].swapcase()
            needle = term.strip().casefold()
            want = {tid for tid in names if seed.row("threads", tid)["userId"] == owner and (
                needle in (_fold(names[tid]) or "") or any(
                    needle in s["output"].casefold() for s in messages
                    if s["threadId"] == tid))}
            assert step["threadId"] in want
            assert await _search(layer, owner, term) == want, term
    finally:
        await layer.close()
    again = await migrate(url)
    assert (again.lines, again.changed) == (UP_TO_DATE, False)


# --------------------------------------------------------------------------- schema version 1


@asynccontextmanager
async def _database(dialect: str, tmp_path: Path) -> AsyncIterator[str]:
    if dialect == "sqlite":
        async with temp_sqlite_url(tmp_path) as url:
            yield url
    elif dialect == "postgresql":
        async with temp_postgres_db() as url:
            yield url
    else:
        async with temp_mariadb_db() as url:
            yield url


USER = "5d8e1c3a-2b4f-4a6e-9c1d-000000000001"
#: thread id -> (name, [(step type, output)]), written as schema version 1 stored them
V1_ROWS: dict[str, tuple[str | None, list[tuple[str, str | None]]]] = {
    "5d8e1c3a-2b4f-4a6e-9c1d-00000000000a": ("Straße nach İstanbul", [
        ("user_message", "Grüße aus İSTANBUL"), ("assistant_message", "RÉSUMÉ attached"),
        ("tool", "TOOL OUTPUT strasse")]),
    "5d8e1c3a-2b4f-4a6e-9c1d-00000000000b": ("resume", [
        ("user_message", "100% of snake_case"), ("assistant_message", None)]),
    "5d8e1c3a-2b4f-4a6e-9c1d-00000000000c": (None, [("assistant_message", "ılık STRASSE")]),
}


async def _create_v1(url: str, dialect: str) -> None:
    """Schema version 1 from its generated DDL, recorded at version 1, with rows written as the
    version-1 layer wrote them (no folded copies)."""
    script = (V1 / f"{'mysql' if dialect == 'mariadb' else dialect}.sql").read_text()
    body = "\n".join(line for line in script.splitlines() if not line.startswith("--"))
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            for statement in body.split(";\n\n"):
                if statement.strip():
                    await conn.exec_driver_sql(statement.strip().removesuffix(";"))
            await conn.execute(sa.text(
                'INSERT INTO chainlit_orm_version (id, version, "appliedAt") '
                "VALUES (1, 1, '2026-01-01T00:00:00.000000Z')".replace(
                    '"', "`" if dialect == "mariadb" else '"')))
    finally:
        await engine.dispose()
    q = "`" if dialect == "mariadb" else '"'

    def cols(*names: str) -> str:
        return ", ".join(f"{q}{n}{q}" for n in names)

    meta = "CAST(:m AS JSONB)" if dialect == "postgresql" else ":m"
    await execute(url, f"INSERT INTO users ({cols('id', 'identifier', 'metadata')}) "
                       f"VALUES (:id, :i, {meta})", {"id": USER, "i": "v1-user", "m": "{}"})
    thread_sql = (f"INSERT INTO threads ({cols('id', 'name', 'userId', 'createdAt', 'activityAt')})"
                  " VALUES (:id, :n, :u, :c, :c)")
    step_sql = (f"INSERT INTO steps ({cols('id', 'name', 'type', 'threadId', 'streaming')}, "
                f"{cols('output', 'createdAt')}) VALUES (:id, 'n', :t, :tid, false, :o, :c)")
    for n, (tid, (name, steps)) in enumerate(V1_ROWS.items()):
        created = f"2026-01-0{n + 1}T00:00:00.000000Z"
        await execute(url, thread_sql, {"id": tid, "n": name, "u": USER, "c": created})
        for k, (kind, output) in enumerate(steps):
            await execute(url, step_sql, {"id": str(uuid.uuid4()), "t": kind, "tid": tid,
                                          "o": output, "c": f"2026-01-0{n + 1}T00:00:0{k}.0Z"})


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql", "mariadb"])
async def test_a_schema_version_1_database_is_upgraded(dialect: str, tmp_path: Path) -> None:
    async with _database(dialect, tmp_path) as url:
        await _create_v1(url, dialect)
        layer = SQLDataLayer(url)
        try:
            with pytest.raises(SchemaOutdatedError) as info:
                await layer.list_threads(Pagination(first=5), ThreadFilter(userId=USER))
            assert "is at schema version 1" in str(info.value)
            assert "chainlit-orm migrate" in str(info.value)
        finally:
            await layer.close()

        dry = await migrate(url, dry_run=True)
        real = await migrate(url)

        assert without_appliedat(real.statements) == without_appliedat(dry.statements)
        assert real.changed and real.lines[0].endswith(f"schema version 1 -> {SCHEMA_VERSION}")
        assert "backfill threads.nameFolded on 2 rows: the case-folded name" in real.lines
        assert "backfill steps.outputFolded on 4 rows: the case-folded output" in real.lines
        if dialect == "postgresql":
            assert "CREATE EXTENSION IF NOT EXISTS pg_trgm" in real.statements
            # built without blocking writes: the tables already exist (an online migration)
            assert ('CREATE INDEX CONCURRENTLY ix_threads_name_trgm ON threads USING gin '
                    '("nameFolded" gin_trgm_ops)') in real.statements
        elif dialect == "sqlite":
            assert "INSERT INTO \"steps_output_fts\"(\"steps_output_fts\") VALUES ('rebuild')" in (
                real.statements)
            _sqlite_integrity(url)
        else:  # MariaDB: binary columns, no search index
            assert ("ALTER TABLE threads ADD COLUMN `nameFolded` LONGTEXT CHARACTER SET utf8mb4 "
                    "COLLATE utf8mb4_bin") in real.statements
            assert not [s for s in real.statements if "INDEX" in s and "Folded" in s]
        threads, steps = await _folded_rows(url)
        assert len(threads) == 3 and len(steps) == 6
        _assert_exact_copies(threads, steps)

        a, b, c = V1_ROWS
        layer = SQLDataLayer(url)
        try:
            expected = {
                "İstanbul": {a}, "istanbul": set(), "ß": {a, c}, "STRASSE": {a, c},
                "résumé": {a}, "resume": {b}, "ı": {c}, "%": {b}, "_c": {b},
                "tool output": set(), "GRÜSSE": {a},
            }
            for term, want in expected.items():
                assert await _search(layer, USER, term) == want, term
        finally:
            await layer.close()
        again = await migrate(url)
        assert (again.lines, again.changed) == (UP_TO_DATE, False)


async def test_sqlite_search_index_that_lost_a_trigger_is_repaired(tmp_path: Path) -> None:
    from chainlit.user import User

    thread = str(uuid.uuid4())
    async with temp_sqlite_url(tmp_path) as url:
        layer = SQLDataLayer(url)
        try:
            user = await layer.create_user(User(identifier="repair", metadata={}))
            assert user is not None
            await execute(url, 'DROP TRIGGER "steps_output_fts_pi"')
            await layer.update_thread(thread, name="plain", user_id=user.id)
            await layer.create_step({"id": str(uuid.uuid4()), "threadId": thread,
                                     "type": "assistant_message", "name": "n",
                                     "output": "Some Unindexed Words", "streaming": False})
            # written without the trigger, the message is not in the FTS table, and the search
            # (through the index) misses it: what migrate repairs
            assert await _search(layer, user.id, "unindexed words") == set()
        finally:
            await layer.close()

        report = await migrate(url)

        assert ("repair search index steps_output_fts: steps lacks steps_output_fts_pi; recreate "
                "the triggers and rebuild it from the table") in report.lines
        _sqlite_integrity(url)
        layer = SQLDataLayer(url)
        try:
            assert await _search(layer, user.id, "UNINDEXED WORDS") == {thread}
        finally:
            await layer.close()
        again = await migrate(url)
        assert (again.lines, again.changed) == (UP_TO_DATE, False)


async def test_a_postgres_role_that_cannot_create_pg_trgm_is_told_the_fix() -> None:
    role = f"clorm_role_{uuid.uuid4().hex[:12]}"
    server = await asyncpg.connect(PG_ADMIN_DSN)
    await server.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        async with temp_postgres_db() as admin_url:
            database = admin_url.rsplit("/", 1)[1]
            role_url = admin_url.replace("postgres@", f"{role}@", 1)
            admin = await asyncpg.connect(admin_url.replace("postgresql+asyncpg", "postgresql"))
            try:
                # may create tables in the public schema, not extensions in the database
                await admin.execute(f'GRANT USAGE, CREATE ON SCHEMA public TO "{role}"')
                with pytest.raises(SchemaError) as info:
                    await migrate(role_url)
                message = str(info.value)
                assert info.value.detail == "pg_trgm"
                assert f"role {role} may not create it. Nothing was changed." in message
                assert f"run CREATE EXTENSION pg_trgm; in database {database}" in message
                assert f"GRANT CREATE ON DATABASE {database} TO {role}" in message
                assert await structure(admin_url) == {}

                await admin.execute("CREATE EXTENSION pg_trgm")  # what the message says
                report = await migrate(role_url)
                assert report.changed
                assert not [line for line in report.lines if "create extension" in line]
                indexes = {r[0] for r in await scalar_rows(
                    admin_url, "SELECT indexname FROM pg_indexes WHERE indexname LIKE '%trgm'")}
                assert indexes == {"ix_threads_name_trgm", "ix_steps_output_trgm"}
                await admin.execute(f'REASSIGN OWNED BY "{role}" TO postgres')
                await admin.execute(f'DROP OWNED BY "{role}"')
            finally:
                await admin.close()
    finally:
        await server.execute(f'DROP ROLE "{role}"')
        await server.close()


#: The SQLite search triggers of schema versions 2 to 4 (each write indexed in its own
#: transaction), as those versions created them.
LEGACY_TRIGGERS = [
    f'CREATE TRIGGER "{fts}_ai" AFTER INSERT ON "{table}" BEGIN '
    f'INSERT INTO "{fts}"(rowid, "{col}") VALUES (new.rowid, new."{col}"); END'
    for table, col, fts in (("threads", "nameFolded", "threads_name_fts"),
                            ("steps", "outputFolded", "steps_output_fts"))
] + [
    f'CREATE TRIGGER "{fts}_ad" AFTER DELETE ON "{table}" BEGIN '
    f'INSERT INTO "{fts}"("{fts}", rowid, "{col}") VALUES (\'delete\', old.rowid, old."{col}"); '
    "END"
    for table, col, fts in (("threads", "nameFolded", "threads_name_fts"),
                            ("steps", "outputFolded", "steps_output_fts"))
] + [
    f'CREATE TRIGGER "{fts}_au" AFTER UPDATE OF "{col}" ON "{table}" '
    f'WHEN old."{col}" IS NOT new."{col}" BEGIN '
    f'INSERT INTO "{fts}"("{fts}", rowid, "{col}") VALUES (\'delete\', old.rowid, old."{col}"); '
    f'INSERT INTO "{fts}"(rowid, "{col}") VALUES (new.rowid, new."{col}"); END'
    for table, col, fts in (("threads", "nameFolded", "threads_name_fts"),
                            ("steps", "outputFolded", "steps_output_fts"))
]


async def test_a_sqlite_search_index_of_version_4_gets_its_pending_list(tmp_path: Path) -> None:
    """A database of version 4, whose search indexes index each write at once (triggers
    ``_ai/_ad/_au``), is refused by this layer (it would miss nothing, but version 4's code must
    not run migrate on the new layout: see the next test) until migrate moves it to the pending
    list: the old triggers dropped, the list and its four triggers made, the index rebuilt,
    version 5 recorded; a second migrate has nothing to do."""
    from chainlit.user import User

    async with temp_sqlite_url(tmp_path) as url:
        path = url.removeprefix("sqlite+aiosqlite:///")
        layer = SQLDataLayer(url)
        try:
            user = await layer.create_user(User(identifier="legacy-layout", metadata={}))
            assert user is not None
        finally:
            await layer.close()
        thread, step = str(uuid.uuid4()), str(uuid.uuid4())
        _to_version_4(path)
        with sqlite3.connect(path) as raw:  # written by version 4: indexed at once
            raw.execute('INSERT INTO threads (id, "createdAt", "activityAt", name, "nameFolded", '
                        '"userId", metadata) VALUES (?, ?, ?, ?, ?, ?, ?)',
                        (thread, "2026-01-01T00:00:00.000000Z", "2026-01-01T00:00:00.000000Z",
                         "Old Layout", "old layout", user.id, "{}"))
            raw.execute('INSERT INTO steps (id, name, type, "threadId", streaming, output, '
                        '"outputFolded") VALUES (?, ?, ?, ?, ?, ?, ?)',
                        (step, "n", "assistant_message", thread, 0, "Indexed At Once",
                         "indexed at once"))
        layer = SQLDataLayer(url)
        try:
            with pytest.raises(SchemaOutdatedError) as info:
                await layer.list_threads(Pagination(first=5),
                                         ThreadFilter(userId=user.id, search="old layout"))
            assert f"is at schema version 4 but this chainlit-orm needs version {SCHEMA_VERSION}" \
                in str(info.value)
        finally:
            await layer.close()

        report = await migrate(url)

        assert report.lines[0].endswith(f"schema version 4 -> {SCHEMA_VERSION}")
        for fts, table in (("threads_name_fts", "threads"), ("steps_output_fts", "steps")):
            assert (f"repair search index {fts}: {table} has triggers that index each write in "
                    f"its own transaction ({fts}_ai, {fts}_ad, {fts}_au); writes now go through "
                    "a pending list; recreate the triggers and rebuild it from the table"
                    ) in report.lines
        with sqlite3.connect(path) as raw:
            triggers = sorted(r[0] for r in raw.execute(
                "SELECT name FROM sqlite_master WHERE type = 'trigger'"))
        assert triggers == sorted(f"{fts}{suffix}" for fts in ("threads_name_fts",
                                                               "steps_output_fts")
                                  for suffix in ("_pi", "_pd", "_pu", "_pf"))
        assert split_rows(path) == {"threads_name_fts": (1, 0, 0), "steps_output_fts": (1, 0, 0)}
        layer = SQLDataLayer(url)
        try:
            assert await _search(layer, user.id, "indexed at once") == {thread}
            await layer.update_step({"id": step, "threadId": thread, "type": "assistant_message",
                                     "name": "n", "output": "Now Listed", "streaming": False})
            assert await _search(layer, user.id, "indexed at once") == set()
            assert await _search(layer, user.id, "now listed") == {thread}
        finally:
            await layer.close()
        again = await migrate(url)
        assert (again.lines, again.changed) == (UP_TO_DATE, False)
        _sqlite_integrity(url)


def _to_version_4(path: str) -> None:
    """Turn a database made by this migrate into what version 4 made: the search triggers that
    index at once, no pending lists, version 4 recorded."""
    with sqlite3.connect(path) as raw:
        for fts in ("threads_name_fts", "steps_output_fts"):
            for suffix in ("_pi", "_pd", "_pu", "_pf"):
                raw.execute(f'DROP TRIGGER "{fts}{suffix}"')
            raw.execute(f'DROP TABLE "{fts}_pending"')
        for sql in LEGACY_TRIGGERS:
            raw.execute(sql)
        raw.execute("UPDATE chainlit_orm_version SET version = 4")
