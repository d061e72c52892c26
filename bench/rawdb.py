"""Thin async wrappers over the raw drivers (asyncpg, aiosqlite, asyncmy), counting statements.

SQL is written once with ``?`` placeholders and ``"quoted"`` identifiers; ``convert`` rewrites it
for asyncpg (``$n``) and asyncmy (``%s``, backticks). Rows are tuples in SELECT order.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

from . import counting

PG_DSN = "postgresql://postgres@127.0.0.1:5432/{db}"
MY_KW = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}


@functools.lru_cache(maxsize=512)
def convert(sql: str, dialect: str) -> str:
    if dialect == "postgresql":
        n = itertools.count(1)
        return re.sub(r"\?", lambda _m: f"${next(n)}", sql)
    if dialect == "mariadb":
        return sql.replace("?", "%s").replace('"', "`")
    return sql


class RawDB:
    dialect: str

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        raise NotImplementedError

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        raise NotImplementedError

    async def executemany(self, sql: str, rows: list[Sequence[Any]]) -> None:
        raise NotImplementedError

    def transaction(self) -> contextlib.AbstractAsyncContextManager[Any]:
        raise NotImplementedError

    async def transact(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        """Run ``statements`` in one transaction (BEGIN .. COMMIT; ROLLBACK on error)."""
        async with self.transaction() as tx:
            for sql, args in statements:
                await tx.execute(sql, args)

    async def fetch_seq(self, queries: Sequence[tuple[str, Sequence[Any]]]) -> list[list[Any]]:
        """The rows of each query, in order (no snapshot shared between them)."""
        return [await self.fetch(sql, args) for sql, args in queries]

    async def close(self) -> None:
        raise NotImplementedError


async def pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_DSN.format(db="postgres"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


# ``--pg-sync-commit on|off``: set on every PostgreSQL database the bench creates (ALTER DATABASE,
# so it applies to each new connection to that database only; the server's setting is untouched).
# None: the server's setting.
PG_SYNC_COMMIT: list[str | None] = [None]


async def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something listens on ``host:port`` (an optional service, such as PgBouncer)."""
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


async def pg_recreate(db: str) -> None:
    await pg_admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    await pg_admin(f'CREATE DATABASE "{db}"')
    await pg_apply_settings(db)


async def pg_apply_settings(db: str) -> None:
    """The bench's durability setting on its own database ``db`` (before any pool opens)."""
    mode = PG_SYNC_COMMIT[0]
    if mode is None:  # a cached database may keep an earlier run's setting
        await pg_admin(f'ALTER DATABASE "{db}" RESET synchronous_commit')
    elif mode in ("on", "off"):
        await pg_admin(f'ALTER DATABASE "{db}" SET synchronous_commit = {mode}')
    else:
        raise ValueError(f"synchronous_commit must be on or off: {mode!r}")


async def pg_show(db: str, setting: str) -> str:
    """``SHOW setting`` on a new connection to ``db`` (per-database settings apply)."""
    import asyncpg

    conn = await asyncpg.connect(PG_DSN.format(db=db))
    try:
        return str(await conn.fetchval(f"SHOW {setting}"))
    finally:
        await conn.close()


async def my_recreate(db: str) -> None:
    import asyncmy

    conn = await asyncmy.connect(**MY_KW)
    try:
        async with conn.cursor() as cur:
            await cur.execute(f"DROP DATABASE IF EXISTS `{db}`")
            await cur.execute(f"CREATE DATABASE `{db}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    finally:
        conn.close()


class PgDB(RawDB):
    dialect = "postgresql"

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    @classmethod
    async def open(cls, db: str, size: int = 16,
                   server_settings: dict[str, str] | None = None) -> PgDB:
        import asyncpg

        pool = await asyncpg.create_pool(PG_DSN.format(db=db), min_size=2, max_size=size,
                                         server_settings=server_settings)
        return cls(pool)

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        counting.statement()
        return await self.pool.fetch(convert(sql, self.dialect), *args)

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        counting.statement()
        await self.pool.execute(convert(sql, self.dialect), *args)

    async def executemany(self, sql: str, rows: list[Sequence[Any]]) -> None:
        counting.statement()
        await self.pool.executemany(convert(sql, self.dialect), rows)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        async with self.pool.acquire() as conn, conn.transaction():
            counting.transaction()
            yield _PgConn(conn)

    async def script(self, sql: str) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(sql)

    async def close(self) -> None:
        await self.pool.close()


class _PgConn:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        counting.statement()
        return await self.conn.fetch(convert(sql, "postgresql"), *args)

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        counting.statement()
        await self.conn.execute(convert(sql, "postgresql"), *args)


class SqliteDB(RawDB):
    """One writer connection (SQLite has one writer) behind a lock, plus reader connections."""

    dialect = "sqlite"

    def __init__(self, writer: Any, readers: list[Any]) -> None:
        self.writer = writer
        self.readers = readers
        self.lock = asyncio.Lock()
        self._rr = itertools.cycle(readers)

    @classmethod
    async def open(cls, path: str, *, journal_mode: str | None = None, synchronous: str | None = None,
                   readers: int = 2) -> SqliteDB:
        import aiosqlite

        async def pragma(c: Any, sql: str) -> None:
            async with c.execute(sql) as cur:  # a PRAGMA's open cursor would hold a lock
                await cur.fetchall()

        async def conn() -> Any:
            c = await aiosqlite.connect(path)
            await pragma(c, "PRAGMA busy_timeout = 10000")
            if synchronous:
                await pragma(c, f"PRAGMA synchronous = {synchronous}")
            return c

        w = await conn()
        if journal_mode:
            await pragma(w, f"PRAGMA journal_mode = {journal_mode}")
        return cls(w, [await conn() for _ in range(readers)])

    async def pragmas(self) -> dict[str, Any]:
        out = {}
        for p in ("journal_mode", "synchronous"):
            async with self.writer.execute(f"PRAGMA {p}") as cur:
                out[p] = (await cur.fetchone())[0]
        return out

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        counting.statement()
        # one hop to the reader's thread (execute + fetchall + close would be three)
        return list(await next(self._rr).execute_fetchall(sql, args))

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        async with self.lock:
            counting.statement()
            counting.transaction()
            await self.writer.execute(sql, args)
            await self.writer.commit()

    async def executemany(self, sql: str, rows: list[Sequence[Any]]) -> None:
        async with self.lock:
            counting.statement()
            await self.writer.executemany(sql, rows)
            await self.writer.commit()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        async with self.lock:
            counting.transaction()
            try:
                yield _SqliteConn(self.writer)
            except BaseException:
                await self.writer.rollback()
                raise
            await self.writer.commit()

    async def script(self, sql: str) -> None:
        async with self.lock:
            await self.writer.executescript(sql)
            await self.writer.commit()

    async def close(self) -> None:
        for c in [self.writer, *self.readers]:
            await c.close()


class SqliteOneDB(RawDB):
    """One aiosqlite connection in autocommit serving every caller, as the second harness of
    issue 19 ran its SQLite floor.

    aiosqlite runs a connection's calls one after the other on its own thread, so each call is
    one hop to that thread and back. A single statement is one hop and its own transaction
    (autocommit). A transaction of several statements, and a read of several, run as one function
    on that thread (one hop): no other caller's statement can come between them, and a
    transaction is never seen half-done."""

    dialect = "sqlite"

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    @classmethod
    async def open(cls, path: str, *, journal_mode: str | None = None,
                   synchronous: str | None = None) -> SqliteOneDB:
        import aiosqlite

        c = await aiosqlite.connect(path, isolation_level=None)  # autocommit
        for p in ("busy_timeout = 10000", *([f"synchronous = {synchronous}"] if synchronous
                                             else []),
                  *([f"journal_mode = {journal_mode}"] if journal_mode else [])):
            await c.execute_fetchall(f"PRAGMA {p}")
        return cls(c)

    async def pragmas(self) -> dict[str, Any]:
        return {p: (await self.conn.execute_fetchall(f"PRAGMA {p}"))[0][0]
                for p in ("journal_mode", "synchronous")}

    def _run(self, fn: Any) -> Any:
        """``fn(sqlite3_connection)`` on the connection's thread: one hop (aiosqlite's own
        mechanism for every call it makes)."""
        return self.conn._execute(fn, self.conn._conn)

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        counting.statement()
        return list(await self.conn.execute_fetchall(sql, args))

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        counting.statement()

        def run(c: Any) -> None:
            c.execute(sql, args).close()

        await self._run(run)

    async def executemany(self, sql: str, rows: list[Sequence[Any]]) -> None:
        counting.statement()

        def run(c: Any) -> None:
            c.execute("BEGIN")
            try:
                c.executemany(sql, rows).close()
            except BaseException:
                c.execute("ROLLBACK")
                raise
            c.execute("COMMIT")

        await self._run(run)

    async def transact(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        counting.transaction()
        for _ in statements:
            counting.statement()

        def run(c: Any) -> None:
            c.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    c.execute(sql, args).close()
            except BaseException:
                c.execute("ROLLBACK")
                raise
            c.execute("COMMIT")

        await self._run(run)

    async def fetch_seq(self, queries: Sequence[tuple[str, Sequence[Any]]]) -> list[list[Any]]:
        for _ in queries:
            counting.statement()

        def run(c: Any) -> list[list[Any]]:
            return [c.execute(sql, args).fetchall() for sql, args in queries]

        return list(await self._run(run))

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        raise NotImplementedError("SqliteOneDB runs transactions with transact() (one hop)")
        yield  # pragma: no cover

    async def script(self, sql: str) -> None:
        await self.conn.executescript(sql)

    async def close(self) -> None:
        await self.conn.close()


class _SqliteConn:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        counting.statement()
        async with self.conn.execute(sql, args) as cur:
            return list(await cur.fetchall())

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        counting.statement()
        await self.conn.execute(sql, args)


class MyDB(RawDB):
    dialect = "mariadb"

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    @classmethod
    async def open(cls, db: str, size: int = 16) -> MyDB:
        import asyncmy

        pool = await asyncmy.create_pool(**MY_KW, db=db, minsize=2, maxsize=size, autocommit=True)
        return cls(pool)

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        counting.statement()
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(convert(sql, self.dialect), tuple(args))
            return list(await cur.fetchall())

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        counting.statement()
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(convert(sql, self.dialect), tuple(args))

    async def executemany(self, sql: str, rows: list[Sequence[Any]]) -> None:
        counting.statement()
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await cur.executemany(convert(sql, self.dialect), [tuple(r) for r in rows])

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        async with self.pool.acquire() as conn:
            await conn.begin()
            counting.transaction()
            try:
                yield _MyConn(conn)
            except BaseException:
                await conn.rollback()
                raise
            await conn.commit()

    async def script(self, sql: str) -> None:
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            for stmt in [s for s in sql.split(";") if s.strip()]:
                await cur.execute(stmt)

    async def close(self) -> None:
        self.pool.close()
        await self.pool.wait_closed()


class _MyConn:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        counting.statement()
        async with self.conn.cursor() as cur:
            await cur.execute(convert(sql, "mariadb"), tuple(args))
            return list(await cur.fetchall())

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        counting.statement()
        async with self.conn.cursor() as cur:
            await cur.execute(convert(sql, "mariadb"), tuple(args))
