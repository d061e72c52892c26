"""The generated DDL, applied with each database's own client to a fresh database, then reflected.

The script is run the way a user runs it (``sqlite3``, ``psql -f``, ``mariadb <``), and what the
server built is compared with the models: tables, columns (order, type family, nullability,
primary key), indexes (name, columns, uniqueness), unique constraints and foreign keys.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import create_async_engine

from chainlit_orm.models import DEFAULT_MODELS, ModelSet
from chainlit_orm.schema_gen import SCHEMA_VERSION, ddl, tables_for_dialect, version_table
from chainlit_orm.schema_gen.search import fts_pending_name, fts_trigger_names, search_indexes
from tests.fixtures.legacy import temp_mariadb_db, temp_postgres_db, temp_sqlite_url
from tests.schema.custom_models import MODELS as CUSTOM_MODELS

REPO = Path(__file__).resolve().parents[2]
SETS = {"default": DEFAULT_MODELS, "custom": CUSTOM_MODELS}


def family(type_text: str, dialect: str) -> str:
    """A type's family, from its DDL text: what must agree between the models and the server."""
    text = type_text.upper()
    if text.endswith("[]"):
        return "array"
    if text in ("JSON", "JSONB"):
        # MariaDB's JSON is an alias of LONGTEXT (with a json_valid CHECK); it reflects as text.
        return "text" if dialect == "mariadb" else "json"
    if text in ("BOOLEAN", "BOOL", "TINYINT(1)", "TINYINT"):
        return "bool"
    if text.startswith(("INTEGER", "INT", "BIGINT")):
        return "int"
    if text == "UUID":
        return "uuid"
    if text.startswith(("VARCHAR", "TEXT", "LONGTEXT", "CHAR", "MEDIUMTEXT")):
        return "text"
    raise AssertionError(f"unexpected type {type_text}")


def expected_schema(models: ModelSet, dialect: str, sa_dialect: Dialect) -> dict[str, Any]:
    """What the models say the database must contain, in the reflected shape (PostgreSQL's
    trigram search indexes among the indexes; SQLite's FTS5 tables are checked apart)."""
    name = "mysql" if dialect == "mariadb" else dialect
    out: dict[str, Any] = {}
    tables = tables_for_dialect(models, name)
    trigram = search_indexes(tables, "postgresql") if dialect == "postgresql" else []
    for table in tables:
        out[table.name] = {
            "columns": [
                (c.name, family(c.type.compile(dialect=sa_dialect), dialect), c.nullable)
                for c in table.columns
            ],
            "pk": [c.name for c in table.primary_key.columns],
            "indexes": sorted(
                [(ix.name, [c.name for c in ix.columns], bool(ix.unique)) for ix in table.indexes]
                + [(ix.name, [ix.column], False) for ix in trigram if ix.table is table]
            ),
            "unique": sorted([c.name] for c in table.columns if c.unique),
            "fks": sorted(
                (list(fk.column_keys), fk.elements[0].column.table.name,
                 [e.column.name for e in fk.elements], fk.ondelete)
                for fk in table.foreign_key_constraints
            ),
        }
    return out


def reflect(conn: sa.Connection, schema: str | None, dialect: str,
            skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    inspector = sa.inspect(conn)
    out: dict[str, Any] = {}
    for name in inspector.get_table_names(schema=schema):
        if name in skip:
            out[name] = None
            continue
        columns = inspector.get_columns(name, schema=schema)
        indexes = [ix for ix in inspector.get_indexes(name, schema=schema)
                   if not ix.get("duplicates_constraint")]
        # MySQL/MariaDB have no unique constraints apart from unique indexes: each is reported
        # both ways, and a UNIQUE column's index is named after the column.
        auto = [ix for ix in indexes if ix["unique"] and ix["name"] == ix["column_names"][0]]
        indexes = [ix for ix in indexes if ix not in auto]
        index_names = {ix["name"] for ix in indexes}
        uniques = [u["column_names"] for u in inspector.get_unique_constraints(name, schema=schema)
                   if u["name"] not in index_names]
        uniques += [ix["column_names"] for ix in auto]
        out[name] = {
            "columns": [
                (c["name"], family(c["type"].compile(dialect=conn.dialect), dialect),
                 c["nullable"])
                for c in columns
            ],
            "pk": inspector.get_pk_constraint(name, schema=schema)["constrained_columns"],
            "indexes": sorted(
                (ix["name"], list(ix["column_names"]), bool(ix["unique"])) for ix in indexes
            ),
            "unique": sorted(list(u) for u in {tuple(u) for u in uniques}),
            "fks": sorted(
                (fk["constrained_columns"], fk["referred_table"], fk["referred_columns"],
                 (fk.get("options") or {}).get("ondelete", "").upper() or None)
                for fk in inspector.get_foreign_keys(name, schema=schema)
            ),
        }
    return out


def run(command: list[str], script: str) -> None:
    done = subprocess.run(command, input=script, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "ERROR" not in done.stderr, done.stderr


@pytest.mark.parametrize("set_name", list(SETS))
@pytest.mark.parametrize("dialect", ["sqlite", "postgresql", "mariadb"])
async def test_ddl_applies_and_matches_models(dialect: str, set_name: str, tmp_path: Path) -> None:
    models = SETS[set_name]
    script = ddl(models, "mysql" if dialect == "mariadb" else dialect)
    if dialect == "sqlite":
        async with temp_sqlite_url(tmp_path) as url:
            path = url.removeprefix("sqlite+aiosqlite:///")
            run(["sqlite3", "-bail", path], script)
            await check(url, models, dialect, schema=None)
    elif dialect == "postgresql":
        async with temp_postgres_db() as url:
            database = url.rsplit("/", 1)[1]
            run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres",
                 "-d", database, "-f", "-"], script)
            await check(url, models, dialect, schema=models.schema)
    else:
        async with temp_mariadb_db() as url:
            database = url.rsplit("/", 1)[1].split("?")[0]
            run(["mariadb", "-h", "127.0.0.1", "-P", "3306", "-u", "root", database], script)
            await check(url, models, dialect, schema=None)


async def check(url: str, models: ModelSet, dialect: str, schema: str | None) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            fts = frozenset(
                ix.name + suffix
                for ix in search_indexes(tables_for_dialect(models, "sqlite"), dialect)
                for suffix in ("", "_data", "_idx", "_docsize", "_config"))
            actual = await conn.run_sync(reflect, schema, dialect, fts)
            if dialect == "sqlite":
                await check_fts(conn, models, actual)
            expected = expected_schema(models, dialect, engine.dialect)
            assert sorted(actual) == sorted(expected)
            for table in expected:
                assert actual[table] == expected[table], table
            prefix = models.prefix
            # the names the models promise, spelled out once so a silent rename fails here
            assert sorted(actual) == sorted(
                [f"{prefix}{t}" for t in ("users", "threads", "steps", "elements", "feedbacks")]
                + [f"{prefix}chainlit_orm_erased", f"{prefix}chainlit_orm_version"]
            )
            if models is CUSTOM_MODELS:
                threads = actual["acme_threads"]
                assert ("tenant", "text", True) in threads["columns"]
                assert ("ix_acme_threads_tenant", ["tenant", "activityAt"], False) in threads[
                    "indexes"]
            # the version table takes the row migrate writes
            table = version_table(models)
            if dialect != "postgresql":
                table = table.to_metadata(sa.MetaData(), schema=None)
            await conn.execute(table.insert().values(
                id=1, version=SCHEMA_VERSION, appliedAt="2026-01-02T03:04:05Z"))
            row = (await conn.execute(sa.select(table))).one()
            # (the schema history's fingerprint and changes: NULL when only the version is set)
            assert tuple(row) == (1, SCHEMA_VERSION, "2026-01-02T03:04:05.000000Z", None, None)
            await conn.rollback()
    finally:
        await engine.dispose()


async def check_fts(conn: Any, models: ModelSet, actual: dict[str, Any]) -> None:
    """SQLite: one FTS5 trigram table per folded column (its shadow tables with it), its pending
    list and their four triggers; removed from ``actual``, which then holds the model tables
    only."""
    indexes = search_indexes(tables_for_dialect(models, "sqlite"), "sqlite")
    assert [(ix.table.name, ix.column) for ix in indexes] == [
        (f"{models.prefix}threads", "nameFolded"), (f"{models.prefix}steps", "outputFolded")]
    for ix in indexes:
        for suffix in ("", "_data", "_idx", "_docsize", "_config"):
            assert actual.pop(ix.name + suffix) is None  # present (and skipped by reflect)
        pending = actual.pop(fts_pending_name(ix))
        assert pending["columns"] == [("r", "int", True)], pending
        assert pending["pk"] == ["r"], pending
    rows = (await conn.execute(sa.text(
        "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE type = 'trigger' "
        "OR name LIKE '%fts'"))).all()
    found = {(r[0], r[1], r[2]) for r in rows}
    for ix in indexes:
        assert ("table", ix.name, ix.name) in found
        pi, pd, pu, pf = fts_trigger_names(ix)
        for trigger in (pi, pd, pu):
            assert ("trigger", trigger, ix.table.name) in found
        assert ("trigger", pf, fts_pending_name(ix)) in found
    create = next(r[3] for r in rows if r[1] == indexes[0].name)
    assert "tokenize='trigram case_sensitive 1'" in create
    assert f"content='{indexes[0].table.name}'" in create


def test_ddl_rejects_unknown_dialect() -> None:
    from chainlit_orm.errors import ConfigurationError

    with pytest.raises(ConfigurationError) as info:
        ddl(DEFAULT_MODELS, "oracle")
    assert str(info.value) == (
        "unsupported SQL dialect 'oracle'; supported: postgresql, sqlite, mysql "
        "(mysql also covers MariaDB)"
    )


def test_postgres_schema_is_created_first_and_other_dialects_have_none() -> None:
    statements = ddl(CUSTOM_MODELS, "postgresql").split(";\n\n")
    assert statements[0].splitlines()[-1] == "CREATE SCHEMA IF NOT EXISTS chat"
    assert "CREATE TABLE chat.acme_threads (" in statements[2]
    for dialect in ("sqlite", "mysql"):
        text = ddl(CUSTOM_MODELS, dialect)
        assert "chat." not in text
        assert "CREATE SCHEMA" not in text


def test_checked_in_ddl_is_what_ddl_returns() -> None:
    for dialect in ("postgresql", "sqlite", "mysql"):
        assert (REPO / "generated" / f"{dialect}.sql").read_text() == ddl(DEFAULT_MODELS, dialect)
