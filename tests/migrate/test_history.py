"""The schema history: each recorded migration stores what it added and the model set's
fingerprint; ``schema_history()`` and ``chainlit-orm migrate --history`` give it back; a custom
column added at the same schema version is reported, not "version 3 -> 3"; version tables
written by an older chainlit-orm keep working (row 1 stays what such a version reads).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from chainlit_orm.cli import main
from chainlit_orm.errors import NotFoundError
from chainlit_orm.migrations import HistoryEntry, fingerprint, migrate, schema_history
from chainlit_orm.models import DEFAULT_MODELS, ModelSet
from chainlit_orm.schema_gen import SCHEMA_VERSION
from tests.backends import TenantThreadFields
from tests.fixtures.legacy import temp_postgres_db, temp_sqlite_url
from tests.migrate.conftest import execute, scalar_rows

#: A custom set: Chainlit's table names plus an indexed ``threads.tenant`` (for ``--models``).
TENANT_MODELS = ModelSet.build(thread=TenantThreadFields)

BACKENDS = (
    pytest.param("postgresql", marks=pytest.mark.postgres, id="pg"),
    pytest.param("sqlite", marks=pytest.mark.sqlite, id="sqlite"),
)


def _database(backend: str, tmp_path: Path) -> Any:
    return temp_postgres_db() if backend == "postgresql" else temp_sqlite_url(tmp_path)


def test_the_fingerprint_follows_the_models_not_the_process() -> None:
    assert fingerprint(DEFAULT_MODELS) == fingerprint(ModelSet.build())
    assert fingerprint(TENANT_MODELS) == fingerprint(ModelSet.build(thread=TenantThreadFields))
    assert fingerprint(TENANT_MODELS) != fingerprint(DEFAULT_MODELS)
    assert len(fingerprint(DEFAULT_MODELS)) == 16


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_custom_column_is_reported_and_recorded(backend: str, tmp_path: Path,
                                                        capsys: Any) -> None:
    async with _database(backend, tmp_path) as url:
        first = await migrate(url)
        assert first.entry is not None and first.entry.number == 1

        report = await migrate(url, models=TENANT_MODELS)

        old, new = fingerprint(DEFAULT_MODELS), fingerprint(TENANT_MODELS)
        assert report.lines[0] == (
            f"migrating {url}: schema version {SCHEMA_VERSION} (unchanged); the model set "
            f"changed (fingerprint {old} -> {new})")
        assert "add column threads.tenant (TEXT)" in report.lines
        assert "create index ix_threads_tenant on threads (tenant, activityAt)" in report.lines
        assert report.lines[-2] == ("schema history entry #2: added columns threads.tenant; "
                                    "added indexes threads.ix_threads_tenant")
        assert report.entry == HistoryEntry(
            2, SCHEMA_VERSION, report.entry.applied_at, new, (), ("threads.tenant",),
            ("threads.ix_threads_tenant",), ())

        history = await schema_history(url, TENANT_MODELS)
        assert [(e.number, e.version, e.fingerprint, e.columns) for e in history] == [
            (1, SCHEMA_VERSION, old, ()), (2, SCHEMA_VERSION, new, ("threads.tenant",))]
        assert history[0].tables == ("users", "threads", "steps", "elements", "feedbacks",
                                     "chainlit_orm_erased", "chainlit_orm_version")
        assert [tuple(r) for r in await scalar_rows(
            url, "SELECT id, version FROM chainlit_orm_version ORDER BY id")] == [
            (1, SCHEMA_VERSION), (2, SCHEMA_VERSION)]

        code = await asyncio.to_thread(
            main, ["migrate", "--history", url, "--models",
                   "tests.migrate.test_history:TENANT_MODELS"])
        assert code == 0
        out = capsys.readouterr().out.splitlines()
        assert out == [e.describe() for e in history]
        assert out[1] == (f"#2 {history[1].applied_at} version {SCHEMA_VERSION} (models {new}): "
                          "added columns threads.tenant; added indexes threads.ix_threads_tenant")

        again = await migrate(url, models=TENANT_MODELS)
        assert (again.changed, again.entry) == (False, None)


@pytest.mark.sqlite
async def test_a_version_table_of_an_older_chainlit_orm(tmp_path: Path) -> None:
    """An older chainlit-orm's table (id, version, appliedAt; row 1 at version 2): migrate adds
    the history columns, keeps row 1 at the current version for older readers, and its history
    says what it knows."""
    async with temp_sqlite_url(tmp_path) as url:
        await migrate(url)
        await execute(url, "DROP TABLE chainlit_orm_version")
        await execute(url, 'CREATE TABLE chainlit_orm_version (id INTEGER NOT NULL, version '
                           'INTEGER NOT NULL, "appliedAt" VARCHAR(32) NOT NULL, PRIMARY KEY (id))')
        await execute(url, "INSERT INTO chainlit_orm_version VALUES "
                           "(1, 2, '2025-06-01T00:00:00.000000Z')")
        old = await schema_history(url)
        assert old == [HistoryEntry(1, 2, "2025-06-01T00:00:00.000000Z", known=False)]
        assert old[0].describe() == ("#1 2025-06-01T00:00:00.000000Z version 2: recorded by an "
                                     "older chainlit-orm, which did not record its changes")

        report = await migrate(url)

        assert report.lines[0] == f"migrating {url}: schema version 2 -> {SCHEMA_VERSION}"
        assert ("add the schema-history columns fingerprint, changes to chainlit_orm_version"
                in report.lines)
        assert [tuple(r) for r in await scalar_rows(
            url, "SELECT id, version FROM chainlit_orm_version ORDER BY id")] == [
            (1, SCHEMA_VERSION), (2, SCHEMA_VERSION)]
        history = await schema_history(url)
        assert [(e.number, e.version, e.known, e.applied_at[:10]) for e in history] == [
            (1, 2, False, "2025-06-01"), (2, SCHEMA_VERSION, True, history[1].applied_at[:10])]
        assert history[1].fingerprint == fingerprint(DEFAULT_MODELS)


@pytest.mark.sqlite
async def test_no_history_before_the_first_migration(tmp_path: Path) -> None:
    async with temp_sqlite_url(tmp_path) as url:
        # a file that does not exist: reading it would create it (outside attack #20 F6)
        path = Path(url.removeprefix("sqlite+aiosqlite:///"))
        with pytest.raises(NotFoundError) as missing:
            await schema_history(url)
        assert str(missing.value) == (
            f"the SQLite database {path} does not exist: no schema history to report")
        assert not path.exists()
        path.touch()  # an empty database: no history yet
        assert await schema_history(url) == []
        assert await asyncio.to_thread(main, ["migrate", "--history", url]) == 0
