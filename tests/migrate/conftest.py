"""Fixtures for the migration tests: databases made from Chainlit's documented DDL, seeded through
Chainlit's own layer, on real PostgreSQL and SQLite; helpers that inspect a database's structure.

Every database is created with a unique name and dropped afterwards (``tests.fixtures.legacy``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from tests.fixtures.legacy import (
    VARIANTS,
    SeedResult,
    create_legacy_schema,
    seed_with_chainlit,
    temp_postgres_db,
    temp_sqlite_url,
)

LEGACY_BACKENDS = (
    pytest.param("postgresql", marks=pytest.mark.postgres, id="pg"),
    pytest.param("sqlite", marks=pytest.mark.sqlite, id="sqlite"),
)


@dataclass
class Seeded:
    """A database created from one Chainlit DDL variant and seeded through Chainlit's layer."""

    url: str
    backend: str
    variant: str
    seed: SeedResult


@pytest.fixture(params=LEGACY_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=VARIANTS)
def variant(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def seeded(backend: str, variant: str, tmp_path: Path) -> AsyncIterator[Seeded]:
    database = temp_postgres_db() if backend == "postgresql" else temp_sqlite_url(tmp_path)
    async with database as url:
        await create_legacy_schema(url, variant)
        seed = await seed_with_chainlit(url, variant)
        yield Seeded(url, backend, variant, seed)


async def structure(url: str, schema: str | None = None) -> dict[str, dict[str, Any]]:
    """Tables -> columns (name -> nullable), indexes, foreign keys: what a migration may change."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_structure, schema)
    finally:
        await engine.dispose()


def _structure(conn: sa.Connection, schema: str | None) -> dict[str, dict[str, Any]]:
    inspector = sa.inspect(conn)
    out: dict[str, dict[str, Any]] = {}
    for table in sorted(inspector.get_table_names(schema=schema)):
        out[table] = {
            "columns": {c["name"]: c["nullable"] for c in inspector.get_columns(table, schema)},
            "indexes": sorted(
                (str(i["name"]), tuple(str(c) for c in i["column_names"]), bool(i["unique"]))
                for i in inspector.get_indexes(table, schema)
            ),
            "fks": sorted(
                (tuple(f["constrained_columns"]), f["referred_table"],
                 str((f.get("options") or {}).get("ondelete")))
                for f in inspector.get_foreign_keys(table, schema)
            ),
        }
    return out


async def scalar_rows(url: str, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(sa.text(sql), params or {})).all())
    finally:
        await engine.dispose()


async def execute(url: str, sql: str, params: dict[str, Any] | None = None) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text(sql), params or {})
    finally:
        await engine.dispose()


async def set_step_metadata(url: str, step_id: str, metadata: dict[str, Any]) -> None:
    """Write a step's metadata the way Chainlit's SQL layer stores it (JSONB / JSON text)."""
    cast = "CAST(:m AS JSONB)" if url.startswith("postgresql") else ":m"
    await execute(url, f'UPDATE steps SET "metadata" = {cast} WHERE "id" = :id',
                  {"m": json.dumps(metadata), "id": step_id})
