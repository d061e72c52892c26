"""Fixtures for SQL-only tests: a fresh database per backend, and a round-trip counter."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from chainlit_orm import SQLDataLayer
from chainlit_orm.layers.sql import SQLBackend
from tests.backends import SQL_BACKENDS

PLAIN = ["sqlite", "postgres", "mariadb"]


@pytest.fixture(params=PLAIN)
async def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with SQL_BACKENDS[request.param].database(tmp_path) as url:
        yield url


@pytest.fixture
async def sql_layer(sql_url: str) -> AsyncIterator[SQLDataLayer]:
    layer = SQLDataLayer(sql_url, create_schema=True)
    await layer.sql.ensure_ready()
    yield layer
    await layer.close()


@dataclass
class RoundTrips:
    """Every round trip a call makes: statements, plus BEGIN and COMMIT/ROLLBACK."""

    events: list[str] = field(default_factory=list)

    def reset(self) -> None:
        self.events.clear()

    @property
    def count(self) -> int:
        return len(self.events)


def _autocommit(conn: Any) -> bool:
    return (conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
            or getattr(conn.dialect, "_on_connect_isolation_level", None) == "AUTOCOMMIT")


def count_round_trips(backend: SQLBackend) -> RoundTrips:
    """Attach listeners to the backend and to every engine of it. On SQLite ``BEGIN IMMEDIATE``
    is a statement (seen by ``before_cursor_execute``), so the begin event is not counted twice
    there."""
    trips = RoundTrips()
    # the layer runs its statements on the driver connection and reports each one, BEGIN and
    # COMMIT included; SQLAlchemy's events below see whatever still goes through SQLAlchemy
    backend.on_statement.append(trips.events.append)
    # an OptionEngine shares its parent's events: listen on each underlying engine once
    engines = {}
    for async_engine in (backend.engine, backend.auto):
        base = getattr(async_engine.sync_engine, "_proxied", async_engine.sync_engine)
        engines[id(base)] = base
    for engine in engines.values():
        @event.listens_for(engine, "before_cursor_execute")
        def _stmt(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            trips.events.append(statement.split()[0].upper())

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            if not _autocommit(conn) and conn.dialect.name != "sqlite":
                trips.events.append("BEGIN")

        @event.listens_for(engine, "commit")
        def _commit(conn: Any) -> None:
            if not _autocommit(conn):
                trips.events.append("COMMIT")

        @event.listens_for(engine, "rollback")
        def _rollback(conn: Any) -> None:
            if not _autocommit(conn):
                trips.events.append("ROLLBACK")
    return trips


def new_id() -> str:
    return str(uuid.uuid4())
