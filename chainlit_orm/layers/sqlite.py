"""SQLite's transaction start and lock wait, written once for the SQL layer, its raw statement
pool and the migrator.

Python's sqlite3 module opens a *deferred* transaction, and only before DML: a transaction that
reads first and writes later fails with "database is locked" under concurrency instead of
waiting, and DDL commits statement by statement. Every chainlit-orm transaction on SQLite
therefore runs with driver-level autocommit and begins with ``BEGIN IMMEDIATE``, which takes the
write lock up front and waits up to :data:`SQLITE_BUSY_TIMEOUT` for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["BEGIN_IMMEDIATE", "SQLITE_BUSY_TIMEOUT", "begin_immediate_on"]

#: Seconds a connection waits for another one's write lock (sqlite3's ``timeout``, the
#: ``busy_timeout`` pragma): a local file's writers take turns in milliseconds.
SQLITE_BUSY_TIMEOUT = 30

#: The statement every chainlit-orm transaction on SQLite begins with.
BEGIN_IMMEDIATE = "BEGIN IMMEDIATE"


def begin_immediate_on(engine: AsyncEngine,
                       applies: Callable[[Any], bool] = lambda _conn: True) -> None:
    """Begin the transactions of ``engine`` with :data:`BEGIN_IMMEDIATE` (when ``applies`` to the
    SQLAlchemy connection). The connections must be in driver-level autocommit
    (``isolation_level = None``), or sqlite3 would open its own deferred transaction too."""

    @event.listens_for(engine.sync_engine, "begin")
    def _begin_immediately(conn: Any) -> None:
        if applies(conn):
            conn.exec_driver_sql(BEGIN_IMMEDIATE)
