"""Named backends for the test suite: one place that says which databases the suites run on.

Each entry makes a fresh, empty database (``pgbouncer``: one already migrated, reached through
PgBouncer in transaction mode) with a unique name on a real server on 127.0.0.1 and
drops it afterwards. A backend whose service is down fails loudly: nothing here skips.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from chainlit_orm.models import DEFAULT_MODELS, IndexSpec, ModelSet, ThreadFields
from chainlit_orm.models.modelset import metadata_column
from tests.fixtures.legacy import temp_mariadb_db, temp_postgres_db, temp_sqlite_url


class TenantThreadFields(ThreadFields):
    """A custom thread model: an indexed ``tenant`` column filled from ``metadata["tenant"]``."""

    __indexes__ = (*ThreadFields.__indexes__, IndexSpec("tenant", ("tenant", "activityAt")))
    tenant: str | None = metadata_column("tenant", "tenant")


def custom_models(*, schema: str | None) -> ModelSet:
    return ModelSet.build(thread=TenantThreadFields, prefix="acme_", schema=schema)


@dataclass(frozen=True)
class Backend:
    """A database URL factory plus the model set the suite runs with."""

    name: str
    dialect: str
    database: Callable[[Path], AbstractAsyncContextManager[str]]
    models: ModelSet = DEFAULT_MODELS


@asynccontextmanager
async def _postgres_with_schema(schema: str) -> AsyncIterator[str]:
    async with temp_postgres_db() as url:
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine(url)
        async with engine.begin() as conn:
            await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        await engine.dispose()
        yield url


#: PgBouncer in transaction mode in front of the PostgreSQL on :5432 (scripts/services.sh).
PGBOUNCER_PORT = int(os.environ.get("PGBOUNCER_PORT", "6432"))
#: The URL flag that makes the layer safe behind a transaction-mode pooler.
POOLER_FLAG = "prepared_statement_cache_size=0"


def through_pgbouncer(direct_url: str) -> str:
    """``direct_url`` (a database on :5432) as reached through PgBouncer, with the flag."""
    url = make_url(direct_url).set(port=PGBOUNCER_PORT)
    text = url.render_as_string(hide_password=False)
    return text + ("&" if "?" in text else "?") + POOLER_FLAG


@asynccontextmanager
async def _pgbouncer_db() -> AsyncIterator[str]:
    """A fresh database made and migrated on :5432 directly (``migrate`` holds a session lock,
    which a transaction-mode pooler cannot give), then used by the layer through PgBouncer."""
    from chainlit_orm import migrate

    async with temp_postgres_db() as url:
        await migrate(url)
        yield through_pgbouncer(url)


def _pgbouncer(_tmp: Path) -> AbstractAsyncContextManager[str]:
    return _pgbouncer_db()


def _sqlite(tmp: Path) -> AbstractAsyncContextManager[str]:
    return temp_sqlite_url(tmp)


def _pg(_tmp: Path) -> AbstractAsyncContextManager[str]:
    return temp_postgres_db()


def _maria(_tmp: Path) -> AbstractAsyncContextManager[str]:
    return temp_mariadb_db()


def _pg_chat(_tmp: Path) -> AbstractAsyncContextManager[str]:
    return _postgres_with_schema("chat")


SQL_BACKENDS: dict[str, Backend] = {
    "sqlite": Backend("sqlite", "sqlite", _sqlite),
    "postgres": Backend("postgres", "postgresql", _pg),
    "mariadb": Backend("mariadb", "mariadb", _maria),
    "sqlite-custom": Backend("sqlite-custom", "sqlite", _sqlite, custom_models(schema=None)),
    "postgres-custom": Backend("postgres-custom", "postgresql", _pg_chat,
                               custom_models(schema="chat")),
    "pgbouncer": Backend("pgbouncer", "postgresql", _pgbouncer),
}

__all__ = ["PGBOUNCER_PORT", "POOLER_FLAG", "SQL_BACKENDS", "Backend", "TenantThreadFields",
           "custom_models", "through_pgbouncer"]
_ = Any
