"""The migration lock: one migration per database at a time; a first-use check waits for it.

Several app processes (workers, pods) start at once, or a deploy job runs ``chainlit-orm migrate``
while replicas boot: without a lock two migrations interleave (MariaDB's DDL is not
transactional, so two of them fail on each other's half-made tables). What holds the lock, per
backend:

* **PostgreSQL**: a *session* advisory lock (``pg_try_advisory_lock``), on a connection of its
  own held for the whole migration: an online migration (:mod:`.sql`) is many short transactions,
  and a transaction-scoped lock would be released by the first commit. A session lock needs a
  session: behind a transaction-mode pooler (PgBouncer ``pool_mode = transaction``, Supavisor's
  port 6543, Neon's ``-pooler`` host) the lock lands on whatever server connection served that
  one statement. So migrate refuses a pooler when its first connection opens, before the lock
  and any DDL (:mod:`chainlit_orm.layers.pooler`: the connection's key pid is not
  ``pg_backend_pid()``; :class:`ConfigurationError`). Two later checks remain as a second line:
  the backend pid read when the lock is taken and when it is released (a different pid:
  :class:`ConfigurationError`; alone it passes whenever the pooler hands back the same server
  connection), and a lock not taken within the migration's timeout, a
  :class:`MigrationLockError` whose message names the pooler as a likely cause. The layer's
  first-use check takes the same key as a *transaction* lock (shared, or exclusive when it may
  create the schema), which a pooler keeps whole, so it waits for a running migration instead
  of seeing half a schema.
* **MySQL/MariaDB**: ``GET_LOCK(name, 1)`` polled on a connection of its own. The name is
  server-wide, so it carries the database's name.
* **SQLite**: the database's write lock, ``BEGIN IMMEDIATE`` (the whole migration is one
  transaction, see :mod:`.sql`), first tried without waiting so that the report can say it
  waited.
* **DynamoDB**: a lock item next to the schema-version item, written with a condition (absent,
  or expired) and an expiry that the holder renews while it works
  (:mod:`chainlit_orm.migrations.dynamo`).

A migration that waited and then found the schema complete says so in its report
(:attr:`~chainlit_orm.migrations.report.MigrationReport.waited`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chainlit_orm.errors import (
    BackendUnavailableError,
    ConfigurationError,
    MigrationLockError,
    mask_url,
)
from chainlit_orm.models.modelset import ModelSet

__all__ = ["LOCK_POLL", "LockState", "lock_key", "lock_name", "pooler_hint", "session_lock",
           "transaction_lock"]

logger = logging.getLogger(__name__)

#: Seconds between two attempts to take a lock held by another process.
LOCK_POLL = 0.2

#: What the messages say about a lock that could not be held.
_POOLER = ("if the URL goes through a transaction-mode pooler (PgBouncer pool_mode=transaction, "
           "Supavisor/Supabase port 6543, a Neon '-pooler' host), a session lock cannot be held "
           "there: run migrate with a direct (session) URL to the database")


def pooler_hint() -> str:
    """The sentence naming the pooler, for messages about a lock that was not held."""
    return _POOLER


@dataclass
class LockState:
    """What the lock did, for the report and for :func:`chainlit_orm.migrations.migrate`'s
    timeout message.

    Attributes:
        waited: another process held the lock when this one first asked for it.
        held: the lock is held now (False while waiting for it, and after release).
        what: the lock's description, for messages.
    """

    waited: bool = False
    held: bool = False
    what: str = "the migration lock"
    notes: list[str] = field(default_factory=list)

    def waiting(self, shown: str) -> None:
        """Record (once) that the lock was busy at the first try, and log it: a process blocked
        here is visible in the logs, not silent."""
        if not self.waited:
            self.waited = True
            logger.info("waiting for %s of %s, held by another process", self.what, shown)


def lock_key(models: ModelSet) -> int:
    """The PostgreSQL advisory-lock key of a model set's schema: one per version table (a set's
    prefix and schema), so two sets in one database migrate independently. Advisory locks are
    per database already."""
    return zlib.crc32(f"chainlit-orm:{models.schema}.{models.version_table}".encode())


def lock_name(database: str, models: ModelSet) -> str:
    """The MySQL/MariaDB ``GET_LOCK`` name: server-wide, so it names the database; at most 64
    characters (the server's limit), hence hashed."""
    digest = hashlib.sha256(f"{database}.{models.version_table}".encode()).hexdigest()[:32]
    return f"chainlit-orm:{digest}"


@asynccontextmanager
async def session_lock(engine: AsyncEngine, models: ModelSet, shown: str,
                       state: LockState) -> AsyncIterator[AsyncConnection]:
    """Hold the migration lock of ``models`` on a dedicated connection for the block (PostgreSQL
    session advisory lock, MySQL/MariaDB ``GET_LOCK``); yields that connection (in AUTOCOMMIT).

    Waits for another holder, polling every :data:`LOCK_POLL` seconds, for as long as the caller
    lets it (:func:`chainlit_orm.migrations.migrate` bounds it by its timeout and then raises
    :class:`MigrationLockError`).

    Raises:
        BackendUnavailableError: the lock's connection cannot be opened.
        ConfigurationError: the PostgreSQL backend serving the lock changed while it was held: the
            URL goes through a transaction-mode pooler.
    """
    try:
        conn = await engine.connect()
    except (DBAPIError, OSError) as exc:
        orig = getattr(exc, "orig", None) or exc
        raise BackendUnavailableError(
            f"cannot connect to {shown}: {type(orig).__name__}: "
            f"{mask_url(str(orig).strip().splitlines()[0] if str(orig).strip() else '')}"[:300],
            detail=shown) from exc
    try:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        dialect = conn.dialect.name
        if dialect == "postgresql":
            key = lock_key(models)
            take = sa.text("SELECT pg_try_advisory_lock(:k), pg_backend_pid()").bindparams(k=key)
            release = sa.text("SELECT pg_advisory_unlock(:k), pg_backend_pid()").bindparams(k=key)
        else:
            database = (await conn.execute(sa.text("SELECT DATABASE()"))).scalar()
            name = lock_name(str(database), models)
            take = sa.text("SELECT GET_LOCK(:n, 1), CONNECTION_ID()").bindparams(n=name)
            release = sa.text("SELECT RELEASE_LOCK(:n), CONNECTION_ID()").bindparams(n=name)
        while True:
            got, backend = (await conn.execute(take)).one()
            if got == 1 or got is True:
                break
            state.waiting(shown)
            if dialect == "postgresql":  # GET_LOCK(name, 1) waited a second already
                await asyncio.sleep(LOCK_POLL)
        state.held = True
        try:
            yield conn
        finally:
            state.held = False
            released, after = (await conn.execute(release)).one()
            if after != backend or not (released == 1 or released is True):
                raise ConfigurationError(
                    f"{shown}: the migration lock taken on database session {backend} was not "
                    f"held by the session that released it ({after}); {_POOLER}",
                    detail="session lock")
    finally:
        await conn.close()


async def transaction_lock(conn: AsyncConnection, models: ModelSet, shown: str,
                           state: LockState, *, exclusive: bool) -> None:
    """Take the migration lock inside ``conn``'s current transaction (the layer's first-use
    check): a PostgreSQL transaction advisory lock (shared for a check, exclusive when it may
    create the schema; released by the transaction's end, so a pooler cannot leak it), a
    MySQL/MariaDB ``GET_LOCK`` (released by :func:`release_transaction_lock`), and nothing on
    SQLite, whose ``BEGIN IMMEDIATE`` already took the write lock."""
    dialect = conn.dialect.name
    if dialect == "postgresql":
        fn = "pg_try_advisory_xact_lock" if exclusive else "pg_try_advisory_xact_lock_shared"
        take = sa.text(f"SELECT {fn}(:k)").bindparams(k=lock_key(models))
    elif dialect in ("mysql", "mariadb"):
        database = (await conn.execute(sa.text("SELECT DATABASE()"))).scalar()
        take = sa.text("SELECT GET_LOCK(:n, 1)").bindparams(n=lock_name(str(database), models))
    else:
        return
    while True:
        got = (await conn.execute(take)).scalar()
        if got == 1 or got is True:
            state.held = True
            return
        state.waiting(shown)
        if dialect == "postgresql":
            await asyncio.sleep(LOCK_POLL)


async def release_transaction_lock(conn: AsyncConnection, models: ModelSet,
                                   state: LockState) -> None:
    """Release what :func:`transaction_lock` took where the transaction's end does not
    (MySQL/MariaDB ``GET_LOCK`` is a session lock)."""
    if state.held and conn.dialect.name in ("mysql", "mariadb"):
        database = (await conn.execute(sa.text("SELECT DATABASE()"))).scalar()
        await conn.execute(sa.text("SELECT RELEASE_LOCK(:n)").bindparams(
            n=lock_name(str(database), models)))
    state.held = False


def lock_timeout_error(shown: str, limit: float, state: LockState) -> MigrationLockError:
    """The error for a migration that waited its whole timeout for the lock."""
    return MigrationLockError(
        f"migrate of {shown} could not take {state.what} within its timeout of {limit:g} s: "
        f"another migration still holds it (raise --timeout to wait longer), or, {_POOLER}",
        detail=limit)
