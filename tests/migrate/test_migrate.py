"""``migrate`` and ``ensure_schema`` on real databases.

Databases made from Chainlit's documented DDL (both variants) and seeded through Chainlit's own
layer are upgraded without losing or changing a row; empty databases (MariaDB, PostgreSQL with a
custom model set, SQLite through the layer) are created; bad input fails with typed errors.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from chainlit.types import Feedback
from sqlalchemy.ext.asyncio import create_async_engine

from chainlit_orm import SQLDataLayer
from chainlit_orm.errors import (
    BackendUnavailableError,
    ConfigurationError,
    ConflictError,
    SchemaError,
    SchemaOutdatedError,
)
from chainlit_orm.migrations import migrate
from chainlit_orm.migrations.sql import ensure_schema
from chainlit_orm.models import DEFAULT_MODELS, ModelSet
from chainlit_orm.models.types import utc_now
from chainlit_orm.schema_gen import SCHEMA_VERSION
from tests.backends import TenantThreadFields, custom_models
from tests.fixtures.legacy import (
    TABLES,
    create_legacy_schema,
    snapshot,
    temp_mariadb_db,
    temp_postgres_db,
    temp_sqlite_url,
)
from tests.migrate.conftest import (
    Seeded,
    execute,
    scalar_rows,
    set_step_metadata,
    structure,
)

UP_TO_DATE = [f"schema is up to date at version {SCHEMA_VERSION}; nothing to do"]
VERSION_TABLE = "chainlit_orm_version"
#: the erased-thread tombstones (schema version 4)
TOMBSTONE_TABLE = "chainlit_orm_erased"
#: SQLite's search indexes: an FTS5 table per folded column, the FTS5 shadow tables and the
#: index's pending list.
SQLITE_SEARCH_TABLES = {f"{name}{suffix}" for name in ("threads_name_fts", "steps_output_fts")
                        for suffix in ("", "_data", "_idx", "_docsize", "_config", "_pending")}
MOTO = os.environ.get("CHAINLIT_ORM_TEST_MOTO", "http://127.0.0.1:5055")

#: Columns of Chainlit's DDL that the models do not have, per variant (left in place).
LEGACY_ONLY = {
    "docs": {"steps": {"indent"}},
    "legacy": {"steps": {"indent", "disableFeedback"}},
}

#: createdAt of each seeded thread's user message (seed base 2025-01-15T09:30:00.123456Z + i h).
SEEDED_ACTIVITY = [
    "2025-01-15T09:30:00.123456Z",
    "2025-01-15T10:30:00.123456Z",
    "2025-01-15T11:30:00.123456Z",
]


def assert_has_models(
    struct: dict[str, dict[str, Any]], models: ModelSet, extra: dict[str, set[str]] | None = None
) -> None:
    """Every model table has exactly the model's columns (plus the given legacy ones) and every
    model index, with the model's uniqueness."""
    for _, table in models.tables():
        found = struct[table.name]
        assert set(found["columns"]) == set(table.columns.keys()) | (extra or {}).get(
            table.name, set()
        )
        for index in table.indexes:
            entry = (index.name, tuple(c.name for c in index.columns), bool(index.unique))
            assert entry in found["indexes"]


def without_appliedat(statements: list[str]) -> list[str]:
    return [re.sub(r"'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z'", "'<now>'", s) for s in statements]


async def _version(url: str, table: str = VERSION_TABLE) -> list[Any]:
    return [tuple(r) for r in await scalar_rows(url, f"SELECT id, version FROM {table}")]


async def _insert_thread(url: str, thread_id: str, created_at: str | None) -> None:
    pg = url.startswith("postgresql")
    meta = "CAST(:m AS JSONB)" if pg else ":m"
    await execute(
        url,
        f'INSERT INTO threads ("id", "createdAt", "name", "metadata") VALUES (:id, :c, :n, {meta})',
        {"id": thread_id, "c": created_at, "n": "no steps", "m": "{}"},
    )


async def _insert_user_message(url: str, variant: str, thread_id: str, created_at: str) -> str:
    """A user message in an older timestamp shape (no fraction): earlier than the thread's first
    message, yet greater as text ("...:00Z" > "...:00.123456Z")."""
    step_id = str(uuid.uuid4())
    pg = url.startswith("postgresql")
    meta = "CAST(:m AS JSONB)" if pg else ":m"
    columns = '"id", "name", "type", "threadId", "streaming", "createdAt", "metadata"'
    values = f":id, :n, 'user_message', :t, false, :c, {meta}"
    if variant == "legacy":
        columns += ', "disableFeedback"'
        values += ", false"
    await execute(url, f"INSERT INTO steps ({columns}) VALUES ({values})",
                  {"id": step_id, "n": "alice", "t": thread_id, "c": created_at, "m": "{}"})
    return step_id


# --------------------------------------------------------------------------- Chainlit's databases


async def test_refuses_duplicate_feedback_and_changes_nothing(seeded: Seeded) -> None:
    seed = seeded.seed
    step_id = seed.duplicate_feedback_step_id
    first, second = seed.duplicate_feedback_ids
    before, struct_before = await snapshot(seeded.url), await structure(seeded.url)

    with pytest.raises(SchemaError) as info:
        await migrate(seeded.url)

    message = str(info.value)
    assert f"step {step_id}: feedbacks {first}, {second}" in message
    assert "Nothing was changed" in message
    assert "--dedupe-feedback" in message
    assert info.value.detail == {step_id: [first, second]}
    assert await snapshot(seeded.url) == before
    assert await structure(seeded.url) == struct_before
    assert VERSION_TABLE not in struct_before
    assert set(struct_before) == set(TABLES)


async def test_dedupe_migrates_without_losing_a_row(seeded: Seeded) -> None:
    url, seed, variant = seeded.url, seeded.seed, seeded.variant
    t0, t1, t2 = seed.thread_ids
    assert [d for d in seed.dropped if "user_message" in d.description and not d.recovered] == []
    # a thread with no steps, one with no createdAt either, and an older-shaped user message
    no_steps, no_time = str(uuid.uuid4()), str(uuid.uuid4())
    await _insert_thread(url, no_steps, "2024-12-31T23:59:59Z")
    await _insert_thread(url, no_time, None)
    await _insert_user_message(url, variant, t0, "2025-01-15T09:30:00Z")
    favorite_step = seed.threads[t1]["answer_id"]
    meta = seed.row("steps", favorite_step)["metadata"] or {}
    await set_step_metadata(url, favorite_step, {**meta, "favorite": True})
    before = await snapshot(url)
    started = utc_now()

    report = await migrate(url, dedupe_feedback=True)

    finished = utc_now()
    step_id = seed.duplicate_feedback_step_id
    removed, kept = seed.duplicate_feedback_ids
    assert report.changed is True
    assert (
        f"remove duplicate feedback {removed} on step {step_id} (value 1, comment 'Great answer'); "
        f"kept feedback {kept} (value 0, comment 'Actually, wrong'), the most recently written"
    ) in report.lines
    assert "create unique index ix_feedbacks_for on feedbacks (forId)" in report.lines
    assert report.lines[-1] == (
        f"done: schema version {SCHEMA_VERSION} recorded; {len(report.statements)} statements"
    )
    relaxed = ("allow NULL in steps.disableFeedback: a legacy NOT NULL column the models do not "
               "write (it would fail every insert)")
    assert (relaxed in report.lines) is (variant == "legacy")

    # every row intact, on the columns it had (new columns may be added)
    after = await snapshot(url)
    for table in TABLES:
        expected = [r for r in before[table] if not (table == "feedbacks" and r["id"] == removed)]
        got = [{k: row[k] for k in before[table][0]} for row in after[table]]
        assert got == expected, table

    struct = await structure(url)
    assert_has_models(struct, DEFAULT_MODELS, LEGACY_ONLY[variant])
    assert struct["steps"]["columns"].get("disableFeedback") is (True if variant == "legacy"
                                                                 else None)
    assert ("ix_feedbacks_for", ("forId",), True) in struct["feedbacks"]["indexes"]
    # no FK added to the legacy variant's tables
    assert struct["steps"]["fks"] == ([] if variant == "legacy"
                                      else [(("threadId",), "threads", "CASCADE")])
    assert await _version(url) == [(1, SCHEMA_VERSION)]

    activity = {str(r[0]): r[1] for r in
                await scalar_rows(url, 'SELECT "id", "activityAt" FROM threads')}
    assert {k: activity[k] for k in (t0, t1, t2, no_steps)} == {
        t0: SEEDED_ACTIVITY[0], t1: SEEDED_ACTIVITY[1], t2: SEEDED_ACTIVITY[2],
        no_steps: "2024-12-31T23:59:59.000000Z",
    }
    assert started <= activity[no_time] <= finished
    favorites = {str(r[0]): bool(r[1]) for r in
                 await scalar_rows(url, 'SELECT "id", "favorite" FROM steps')}
    assert favorites == {sid: sid == favorite_step for sid in favorites}
    assert len(favorites) == len(before["steps"])

    # the new schema takes what the layer writes: a cl.Step dict with every 2.x key
    layer = SQLDataLayer(url)
    try:
        new_step = {
            "id": str(uuid.uuid4()), "threadId": t0, "parentId": None, "name": "search_web",
            "type": "tool", "streaming": False, "waitForAnswer": None, "isError": False,
            "metadata": {}, "tags": None, "input": '{"q": "paris"}', "output": "3 results",
            "createdAt": "2025-02-01T10:00:00.000000Z", "start": "2025-02-01T10:00:00.000000Z",
            "end": "2025-02-01T10:00:01.000000Z", "generation": None, "showInput": "json",
            "language": None, "defaultOpen": False, "autoCollapse": True, "icon": "search",
            "command": None, "modes": None,
        }
        await layer.create_step(new_step)  # type: ignore[arg-type]
        got = await layer.get_step(new_step["id"])
        assert got is not None
        assert (got["autoCollapse"], got["icon"], got["output"]) == (True, "search", "3 results")
        # one feedback per step: the upsert lands on the row that was kept
        again = await layer.upsert_feedback(
            Feedback(forId=step_id, value=1, threadId=t0, comment="changed my mind")
        )
        assert again == kept
    finally:
        await layer.close()

    engine = create_async_engine(url)
    try:
        assert await ensure_schema(engine, DEFAULT_MODELS, create=False) is (variant == "docs")
    finally:
        await engine.dispose()

    second = await migrate(url, dedupe_feedback=True)
    assert (second.lines, second.statements, second.changed) == (UP_TO_DATE, [], False)


async def test_dry_run_prints_statements_and_changes_nothing(seeded: Seeded) -> None:
    url, variant = seeded.url, seeded.variant
    before, struct_before = await snapshot(url), await structure(url)

    dry = await migrate(url, dry_run=True, dedupe_feedback=True)

    assert dry.changed is False
    assert dry.lines[0].startswith("dry run on ")
    count = len(dry.statements)
    assert f"dry run: {count} statements would run; nothing was changed" in dry.lines
    assert dry.lines[-count:] == [f"{s};" for s in dry.statements]
    batch_copy = variant == "legacy" and seeded.backend == "sqlite"
    if batch_copy:  # Alembic's batch mode: the new steps table is created with every column
        create = next(s for s in dry.statements if s.startswith("CREATE TABLE _alembic_tmp_steps"))
        assert '"autoCollapse" BOOLEAN' in create
        assert '"disableFeedback" BOOLEAN,' in create  # NOT NULL relaxed
        assert "DROP TABLE steps" in dry.statements
        assert "ALTER TABLE _alembic_tmp_steps RENAME TO steps" in dry.statements
    else:
        assert 'ALTER TABLE steps ADD COLUMN "autoCollapse" BOOLEAN' in dry.statements
    concurrently = "CONCURRENTLY " if seeded.backend == "postgresql" else ""  # online
    assert (f'CREATE UNIQUE INDEX {concurrently}ix_feedbacks_for ON feedbacks ("forId")'
            in dry.statements)
    removed = seeded.seed.duplicate_feedback_ids[0]
    assert any(s.startswith("DELETE FROM feedbacks") and removed.replace("-", "") in
               s.replace("-", "") for s in dry.statements)
    if variant == "legacy" and seeded.backend == "postgresql":
        assert 'ALTER TABLE steps ALTER COLUMN "disableFeedback" DROP NOT NULL' in dry.statements
    assert await snapshot(url) == before
    assert await structure(url) == struct_before

    real = await migrate(url, dedupe_feedback=True)
    assert without_appliedat(real.statements) == without_appliedat(dry.statements)


async def test_metadata_columns_of_a_custom_set_are_backfilled(seeded: Seeded) -> None:
    """A custom set over Chainlit's table names: its ``tenant`` column is filled from each
    thread's metadata with the layer's own conversion (a str, None where the key is absent)."""
    url, seed = seeded.url, seeded.seed
    t0, t1, t2 = seed.thread_ids
    models = ModelSet.build(thread=TenantThreadFields)
    pg = url.startswith("postgresql")
    meta = "CAST(:m AS JSONB)" if pg else ":m"
    for thread_id, tenant in ((t0, "acme"), (t1, 42)):
        await execute(url, f'UPDATE threads SET "metadata" = {meta} WHERE "id" = :id',
                      {"m": json.dumps({"tenant": tenant}), "id": thread_id})

    report = await migrate(url, models=models, dedupe_feedback=True)

    assert "add column threads.tenant (TEXT)" in report.lines
    tenants = {str(r[0]): r[1] for r in await scalar_rows(url, 'SELECT "id", tenant FROM threads')}
    assert tenants == {t0: "acme", t1: "42", t2: None}
    assert ("ix_threads_tenant", ("tenant", "activityAt"), False) in (
        (await structure(url))["threads"]["indexes"])
    again = await migrate(url, models=models)
    assert (again.lines, again.changed) == (UP_TO_DATE, False)


async def test_an_equivalent_index_under_another_name_is_kept(seeded: Seeded) -> None:
    url = seeded.url
    await execute(url, 'CREATE INDEX my_feedback_lookup ON feedbacks ("threadId", "value")')

    report = await migrate(url, dedupe_feedback=True)

    assert ("index ix_feedbacks_thread on feedbacks (threadId, value): the existing index "
            "my_feedback_lookup is equivalent; kept") in report.lines
    assert not any("ix_feedbacks_thread" in s for s in report.statements)
    indexes = (await structure(url))["feedbacks"]["indexes"]
    assert [i for i in indexes if i[1] == ("threadId", "value")] == [
        ("my_feedback_lookup", ("threadId", "value"), False)]


@pytest.mark.sqlite
async def test_a_failing_statement_rolls_everything_back(tmp_path: Path) -> None:
    """Index names are per database on SQLite: one taken by another table makes the CREATE INDEX
    fail half-way; SQLite's single transaction leaves the database as it was."""
    async with temp_sqlite_url(tmp_path) as url:
        await create_legacy_schema(url, "docs")
        await execute(url, "CREATE INDEX ix_steps_favorite ON users (identifier)")
        before = await structure(url)

        with pytest.raises(SchemaError) as info:
            await migrate(url)

        assert str(info.value).startswith(f"migrating {url}")
        assert "nothing was changed (the transaction was rolled back)" in str(info.value)
        assert info.value.__cause__ is not None
        assert await structure(url) == before


@pytest.mark.postgres
async def test_a_failing_online_step_keeps_the_steps_before_it() -> None:
    """PostgreSQL migrates online, step by step: a step that fails (an index name taken by
    another table) leaves the steps before it applied and the version unrecorded, so the layer
    still refuses to start; once the cause is fixed, migrate run again finishes the job."""
    async with temp_postgres_db() as url:
        await create_legacy_schema(url, "docs")
        await execute(url, "CREATE INDEX ix_steps_favorite ON users (identifier)")

        with pytest.raises(SchemaError) as info:
            await migrate(url)

        assert str(info.value).startswith(f"migrating {url} failed: ")
        assert ("the steps before it were applied; fix the cause and migrate again to finish"
                in str(info.value))
        assert info.value.__cause__ is not None
        struct = await structure(url)
        assert "activityAt" in struct["threads"]["columns"]
        assert VERSION_TABLE not in struct
        await execute(url, "DROP INDEX ix_steps_favorite")

        report = await migrate(url)

        assert report.lines[0] == f"migrating {url}: schema version none recorded -> {SCHEMA_VERSION}"
        assert "add column threads.activityAt (TEXT)" not in report.lines
        assert_has_models(await structure(url), DEFAULT_MODELS, LEGACY_ONLY["docs"])
        assert await _version(url) == [(1, SCHEMA_VERSION)]


@pytest.mark.sqlite
async def test_a_database_recorded_at_a_newer_version(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'newer.db'}"
    await migrate(url)
    await execute(url, f"UPDATE {VERSION_TABLE} SET version = :v", {"v": SCHEMA_VERSION + 1})

    with pytest.raises(SchemaError) as info:
        await migrate(url)
    assert f"recorded at schema version {SCHEMA_VERSION + 1}, newer than this" in str(info.value)
    engine = create_async_engine(url)
    try:  # the layer accepts it: every migration is additive
        assert await ensure_schema(engine, DEFAULT_MODELS, create=False) is True
    finally:
        await engine.dispose()


# --------------------------------------------------------------------------- empty databases


@pytest.mark.mariadb
async def test_empty_mariadb_is_created_then_left_alone() -> None:
    async with temp_mariadb_db() as url:
        # the app's own tables, and its own Alembic's, are none of migrate's business
        await execute(url, "CREATE TABLE notes (id INT PRIMARY KEY, body TEXT NOT NULL)")
        await execute(url, "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        await execute(url, "INSERT INTO alembic_version VALUES ('abc123')")
        apps = await structure(url)

        report = await migrate(url)

        assert report.changed is True
        assert report.lines[1:6] == [f"create table {t}" for t in TABLES]
        struct = await structure(url)
        assert set(struct) == {*TABLES, TOMBSTONE_TABLE, VERSION_TABLE, "notes",
                               "alembic_version"}
        assert {t: struct[t] for t in apps} == apps
        assert await scalar_rows(url, "SELECT version_num FROM alembic_version") == [("abc123",)]
        assert_has_models(struct, DEFAULT_MODELS)
        assert struct["threads"]["fks"] == [(("userId",), "users", "CASCADE")]
        for table in ("steps", "elements", "feedbacks"):
            assert struct[table]["fks"] == [(("threadId",), "threads", "CASCADE")]
        assert await _version(url) == [(1, SCHEMA_VERSION)]

        again = await migrate(url)
        assert (again.lines, again.statements, again.changed) == (UP_TO_DATE, [], False)
        assert await structure(url) == struct


@pytest.mark.postgres
async def test_empty_postgres_with_custom_model_set() -> None:
    models = custom_models(schema="chat")
    async with temp_postgres_db() as url:
        dry = await migrate(url, models=models, dry_run=True)
        assert dry.statements[0] == "CREATE SCHEMA IF NOT EXISTS chat"
        assert await scalar_rows(
            url, "SELECT 1 FROM information_schema.schemata WHERE schema_name = 'chat'") == []

        report = await migrate(url, models=models)

        assert report.changed is True
        assert without_appliedat(report.statements) == without_appliedat(dry.statements)
        struct = await structure(url, "chat")
        names = [table.name for _, table in models.tables()]
        assert names == [f"acme_{t}" for t in TABLES]
        assert set(struct) == {*names, "acme_chainlit_orm_erased", "acme_chainlit_orm_version"}
        assert_has_models(struct, models)
        assert ("ix_acme_threads_tenant", ("tenant", "activityAt"), False) in (
            struct["acme_threads"]["indexes"])
        assert await structure(url) == {}  # nothing in the public schema
        assert await _version(url, "chat.acme_chainlit_orm_version") == [(1, SCHEMA_VERSION)]

        engine = create_async_engine(url)
        try:
            assert await ensure_schema(engine, models, create=False) is True
            # the default set is a different set of tables: not there
            with pytest.raises(SchemaOutdatedError):
                await ensure_schema(engine, DEFAULT_MODELS, create=False)
        finally:
            await engine.dispose()

        again = await migrate(url, models=models)
        assert (again.lines, again.statements, again.changed) == (UP_TO_DATE, [], False)


# --------------------------------------------------------------------------- ensure_schema


async def test_ensure_schema_refuses_a_chainlit_database(seeded: Seeded) -> None:
    url = seeded.url.replace("postgres@", "postgres:hunter2@")  # trust auth ignores it
    engine = create_async_engine(url)
    try:
        with pytest.raises(SchemaOutdatedError) as info:
            await ensure_schema(engine, DEFAULT_MODELS, create=True)
    finally:
        await engine.dispose()
    message = str(info.value)
    assert "has no chainlit-orm schema version" in message
    assert "chainlit-orm migrate " in message
    assert "hunter2" not in message
    assert set(await structure(seeded.url)) == set(TABLES)


@pytest.mark.sqlite
async def test_ensure_schema_creates_an_empty_sqlite_database(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    engine = create_async_engine(url)
    try:
        with pytest.raises(SchemaOutdatedError) as info:
            await ensure_schema(engine, DEFAULT_MODELS, create=False)
        assert f"chainlit-orm migrate {url}" in str(info.value)

        assert await ensure_schema(engine, DEFAULT_MODELS, create=True) is True
        assert await ensure_schema(engine, DEFAULT_MODELS, create=False) is True
    finally:
        await engine.dispose()
    struct = await structure(url)
    assert set(struct) == {*TABLES, TOMBSTONE_TABLE, VERSION_TABLE, *SQLITE_SEARCH_TABLES}
    assert_has_models(struct, DEFAULT_MODELS)
    assert await _version(url) == [(1, SCHEMA_VERSION)]
    again = await migrate(url)
    assert (again.lines, again.changed) == (UP_TO_DATE, False)


async def test_ensure_schema_after_migrate_detects_cascades(seeded: Seeded) -> None:
    await migrate(seeded.url, dedupe_feedback=True)
    engine = create_async_engine(seeded.url)
    try:
        assert await ensure_schema(engine, DEFAULT_MODELS, create=True) is (
            seeded.variant == "docs")
    finally:
        await engine.dispose()


# --------------------------------------------------------------------------- DynamoDB


@pytest.mark.dynamodb
async def test_dynamodb_urls_go_to_the_dynamodb_migrator(monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    table = f"clorm_{uuid.uuid4().hex}"
    url = f"dynamodb://{table}?region=us-east-1&endpoint_url={MOTO}"
    client = boto3.client("dynamodb", region_name="us-east-1", endpoint_url=MOTO)
    try:
        dry = await migrate(url, dry_run=True)
        assert (dry.changed, dry.statements) == (False, [])
        assert dry.lines[-1] == f"would record schema version {SCHEMA_VERSION}"
        assert table not in client.list_tables()["TableNames"]

        report = await migrate(url)
        assert report.changed is True
        assert report.lines[-1] == f"record schema version {SCHEMA_VERSION}"

        again = await migrate(url)
        assert again.changed is False
        assert again.lines == [
            f"table {table} ({url}) is up to date (schema version {SCHEMA_VERSION})"
        ]
    finally:
        if table in client.list_tables()["TableNames"]:
            client.delete_table(TableName=table)


# --------------------------------------------------------------------------- bad input


@pytest.mark.postgres
async def test_unreachable_server_is_one_clear_line() -> None:
    with pytest.raises(BackendUnavailableError) as info:
        await migrate("postgresql://u:secret@127.0.0.1:1/x")
    message = str(info.value)
    assert message.startswith("cannot connect to postgresql+asyncpg://u:***@127.0.0.1:1/x: ")
    assert "secret" not in message
    assert "\n" not in message


@pytest.mark.mariadb
async def test_wrong_credentials_are_backend_unavailable() -> None:
    with pytest.raises(BackendUnavailableError) as info:
        await migrate("mysql://nobody_clorm:secret@127.0.0.1:3306/x")
    message = str(info.value)
    assert message.startswith("cannot connect to mysql+asyncmy://nobody_clorm:***@127.0.0.1:3306/x")
    assert "secret" not in message


async def test_ensure_schema_unreachable_is_backend_unavailable() -> None:
    engine = create_async_engine("postgresql+asyncpg://u:secret@127.0.0.1:1/x")
    try:
        with pytest.raises(BackendUnavailableError) as info:
            await ensure_schema(engine, DEFAULT_MODELS, create=False)
    finally:
        await engine.dispose()
    assert "secret" not in str(info.value)
    assert "u:***@127.0.0.1:1/x" in str(info.value)


async def test_unsupported_dialect_names_the_supported_ones() -> None:
    with pytest.raises(ConfigurationError) as info:
        await migrate("oracle://u:secret@db.example.com/x")
    # the one URL parser's message, the same as the CLI's and from_env()'s (tests/test_urls.py)
    assert str(info.value) == (
        "unsupported database URL oracle://u:***@db.example.com/x: supported schemes are "
        "postgresql://, sqlite://, mysql://, mariadb://, dynamodb:// (e.g. postgresql+asyncpg://, "
        "sqlite+aiosqlite:///file.db, mysql+asyncmy://, dynamodb://TABLE?region=...)")


@pytest.mark.mariadb
async def test_mariadb_identifier_made_exact_so_alice_and_ALICE_are_two_users() -> None:
    """Issue #14 (fuzzing user identifiers): under the table's case-insensitive collation,
    ``create_user("alice")`` found and updated Alice's row and ``get_user("ALICE")`` returned her
    account. The models now give ``users.identifier`` a binary collation; migrate gives it to an
    existing table whose column predates that."""
    async with temp_mariadb_db() as url:
        await migrate(url)
        await execute(url, "ALTER TABLE users MODIFY identifier VARCHAR(191) "
                           "COLLATE utf8mb4_unicode_ci NOT NULL")  # as the schema was before
        layer = SQLDataLayer(url)
        from chainlit.user import User

        try:
            alice = await layer.create_user(User(identifier="Alice", metadata={"who": "Alice"}))
            assert alice is not None
            # before the migration: no other user's account is handed out
            assert await layer.get_user("ALICE") is None
            with pytest.raises(ConflictError, match="case-insensitive collation"):
                await layer.create_user(User(identifier="alice"))
        finally:
            await layer.close()

        dry = await migrate(url, dry_run=True)
        assert "compare users.identifier exactly (collation utf8mb4_bin)" in dry.lines
        assert dry.statements[0] == (
            "ALTER TABLE users MODIFY identifier VARCHAR(191) COLLATE utf8mb4_bin NOT NULL")
        # then the schema-history entry, and nothing else
        assert [s.split(" (")[0] for s in dry.statements[1:]] == [
            "INSERT INTO chainlit_orm_version"]
        assert dry.entry is not None and dry.entry.other == (
            "made users.identifier compare exactly",)
        report = await migrate(url)
        assert report.changed is True
        again = await migrate(url)
        assert (again.lines, again.statements, again.changed) == (UP_TO_DATE, [], False)

        layer = SQLDataLayer(url)
        try:
            bob = await layer.create_user(User(identifier="alice", metadata={"who": "alice"}))
            assert bob is not None and bob.id != alice.id
            found = await layer.get_user("Alice")
            assert found is not None and (found.id, found.metadata) == (alice.id, {"who": "Alice"})
            assert await layer.get_user("ALICE") is None
        finally:
            await layer.close()
