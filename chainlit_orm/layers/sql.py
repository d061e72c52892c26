"""``SQLDataLayer``: the Chainlit layer on SQLite, PostgreSQL and MySQL/MariaDB (SQLAlchemy async).

Design points (each one is a defect of Chainlit's own SQL layers, contract §2/§4):

* Core statements built once per shape from the model set's tables, compiled once, and run on
  the pooled driver connection (:mod:`chainlit_orm.layers.sqlexec`: SQLAlchemy's per-execution
  path costs more than a loopback round trip). Connections are in autocommit: a write that is one
  statement needs no BEGIN/COMMIT round trips. Multi-statement writes run in one transaction.
* Every write is an idempotent upsert; a write whose thread does not exist yet (Chainlit fires
  ``create_step`` before the first ``update_thread``) creates a stub thread and retries, so the
  normal case stays one statement.
* Transient failures (deadlocks, serialization failures, dropped connections) are retried a
  bounded number of times with backoff, which is safe because every write is idempotent; then a
  typed error is raised ``from`` the driver error. Nothing is swallowed.
* ``list_threads`` is one keyset-paginated statement over an index. Search compares the term,
  case-folded in Python, with the folded copies every write stores (``nameFolded``,
  ``outputFolded``: :mod:`chainlit_orm.models.search`), binary, every character literal; see
  :meth:`SQLBackend.list_threads` for how the search index is used.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from chainlit.data.storage_clients.base import BaseStorageClient
from sqlalchemy import event
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from chainlit_orm import tracing as _tracing
from chainlit_orm.errors import (
    BackendUnavailableError,
    ChainlitORMError,
    ConfigurationError,
    ConflictError,
    InvalidIdentifierError,
    InvalidInputError,
    NotFoundError,
    SchemaError,
    SchemaOutdatedError,
    TimeoutExceededError,
    mask_url,
)
from chainlit_orm.layers.base import ChainlitLayer, ThreadOrder
from chainlit_orm.layers.combine import WriteCombiner
from chainlit_orm.layers.deadline import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MIGRATE_TIMEOUT,
    DEFAULT_TIMEOUT,
    check_timeout,
)
from chainlit_orm.layers.pooler import PoolerProbe, direct_migrate_command
from chainlit_orm.layers.sql_lifecycle import SQLLifecycle
from chainlit_orm.layers.sqlexec import (
    RawPool,
    Statement,
    StatementListener,
    TxScript,
    json_path,
    tracking_sent,
)
from chainlit_orm.layers.sqlite import SQLITE_BUSY_TIMEOUT, begin_immediate_on
from chainlit_orm.lifecycle.hooks import DEFAULT_HOOK_BREAKER, DEFAULT_HOOK_TIMEOUT, OnDelete
from chainlit_orm.models.modelset import DEFAULT_MODELS, ENTITIES, ModelSet
from chainlit_orm.models.rules import STEP_ORDER, element_order, feedback_dict
from chainlit_orm.models.search import FOLDED_FROM, MESSAGE_TYPES, folded_values
from chainlit_orm.models.types import normalize_id
from chainlit_orm.retry import transient_retry
from chainlit_orm.schema_gen.search import SearchIndex, fts_pending_name, search_indexes
from chainlit_orm.schema_gen.sql import tombstone_table
from chainlit_orm.urls import ISOLATION_LEVEL_REFUSED, SUPPORTED_DRIVERS, parse_sql_url

__all__ = ["SQLBackend", "SQLDataLayer"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# PostgreSQL SQLSTATEs and MySQL error numbers worth retrying: serialization failure, deadlock,
# lock wait timeout, server shutting down, connection lost.
_PG_TRANSIENT = {"40001", "40P01", "57P01", "57P02", "57P03", "08000", "08003", "08006", "08001",
                 "53300"}
_MY_TRANSIENT = {1205, 1213, 2003, 2006, 2013, 1927, 4031}
# MySQL/MariaDB errors after which the connection is gone: server gone away, lost connection
# (during a query, or at a system call), connection killed, server shutting down, disconnected for
# inactivity. The messages do not all say "connection", so the numbers decide.
_MY_DISCONNECT = {2006, 2013, 2055, 1927, 1053, 4031}

#: A search reads the search index's candidates only while they are fewer than this many across
#: the store; a term with more (a common word) is answered by scanning the user's threads, newest
#: first, which stops at the page's end (see SQLBackend.list_threads).
SEARCH_CANDIDATES = 1000

#: SQLite: the reader connections every read shares (see ``sqlexec._SharedLease``).
SQLITE_SHARED_READERS = 2


class SQLBackend(SQLLifecycle):
    """Stores rows of a :class:`ModelSet` in one SQL database. See the module docstring.

    A thread in the trash (``deletedAt`` set) is left out of every read: get, author lookup,
    list and search, favorites. Writes leave ``deletedAt`` alone, so a late write to a trashed
    thread never brings it back. The erase, purge and trash primitives are in
    :class:`~chainlit_orm.layers.sql_lifecycle.SQLLifecycle`."""

    def __init__(
        self,
        url_or_engine: str | URL | AsyncEngine,
        *,
        models: ModelSet = DEFAULT_MODELS,
        retries: int = 5,
        create_schema: bool | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        migrate_timeout: float = DEFAULT_MIGRATE_TIMEOUT,
        check_schema: bool = True,
        **engine_options: Any,
    ) -> None:
        """``check_schema=False``: no first-use schema check (nor creation); for a database
        that is not chainlit-orm's, which the transfer reads (Chainlit's official schema) and
        nothing writes through this backend. The other arguments are
        :class:`SQLDataLayer`'s."""
        self.models = models
        self.retries = max(1, retries)
        self._retry = transient_retry(self.retries)
        #: threads ``erase_user`` removed in this process (bounded, oldest dropped): a late
        #: step or element of one is refused (NotFoundError) instead of given a stub thread,
        #: since its content is the erased user's (create_element then removes its file)
        self._erased: OrderedDict[str, None] = OrderedDict()
        self.timeout = check_timeout(timeout, "timeout")
        self.connect_timeout = check_timeout(connect_timeout, "connect_timeout")
        self.migrate_timeout = check_timeout(migrate_timeout, "migrate_timeout")
        if isinstance(url_or_engine, AsyncEngine):
            if engine_options:
                raise ConfigurationError("engine options cannot be combined with an AsyncEngine")
            self.engine = url_or_engine
            self.owns_engine = False
            #: no probe on a borrowed engine: its pool and events are the caller's
            self.pooler: PoolerProbe | None = None
            # a borrowed engine: its pool is shared, so AUTOCOMMIT is set per checkout
            self.auto = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        else:
            parsed = parse_sql_url(url_or_engine)
            url = parsed.async_url()
            _refuse_isolation_level(engine_options)
            options = dict(engine_options)
            # the URL's typed parameters (command_timeout=30 as a number), the caller's win
            connect_args = options["connect_args"] = {**parsed.connect_args,
                                                      **(options.get("connect_args") or {})}
            if parsed.transaction_pooler:
                _configure_transaction_pooler(connect_args)
            if url.get_backend_name() == "sqlite":
                connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT)
            else:
                options.setdefault("pool_recycle", 1800)
                # the driver's own limit on opening a connection, for the transactional engine
                # too (the layer's pool also bounds each checkout: RawPool._checkout)
                connect_args.setdefault(
                    "timeout" if url.get_backend_name() == "postgresql" else "connect_timeout",
                    self.connect_timeout)
            # The layer's work runs on a pool whose connections are AUTOCOMMIT from the start:
            # no BEGIN/COMMIT round trips for one-statement writes, nothing to roll back when a
            # connection goes back. It keeps up to 16 connections and opens no overflow ones:
            # an overflow connection is closed when it comes back, and opening one costs more
            # than ten statements, so under a burst of callers an overflow pool spends its time
            # connecting; callers beyond 16 queue, as in asyncpg's pool (bench/results/design.md
            # D1).
            # LIFO: at low concurrency the same few connections serve every call, so their
            # prepared statements (asyncpg caches them per connection) stay warm.
            # SQLite is the exception: its connections are threads of this process (aiosqlite),
            # so readers beyond the cores only take turns on the GIL; a pool of cores + 2 (one is
            # the writer) serves 32 concurrent users faster than 16 does (2 cores: 3,137 -> 3,570
            # calls/s of the bench's W5 mix with 4 connections). Reads share
            # SQLITE_SHARED_READERS of them, each serving many callers at once (issue 19).
            size = _sqlite_pool_size() if url.get_backend_name() == "sqlite" else 16
            auto_options = dict(options)
            engine_options_ = dict(options)
            if not _in_memory(url):  # an in-memory SQLite database has a static pool
                auto_options = {"pool_size": size, "max_overflow": 0, "pool_use_lifo": True,
                                **options}
                engine_options_ = {"pool_size": 1, "max_overflow": 4, **options}
            # Behind a transaction-mode pooler, PostgreSQL's engine for the layer's own
            # statements is left in SQLAlchemy's default (transactional) mode. Its only use of
            # SQLAlchemy's execution path is the dialect's first-connect queries (server version,
            # schema, ...), which prepare named statements: in one transaction they stay on one
            # server connection, while in AUTOCOMMIT the prepare and the execution may land on
            # two (40 layers starting at once through PgBouncer: 40 failed). The layer's
            # statements run on the asyncpg connection itself, which has no implicit transaction
            # either way (RawPool puts only MySQL and SQLite connections into autocommit).
            auto_level = {} if parsed.transaction_pooler else {"isolation_level": "AUTOCOMMIT"}
            self.auto = create_async_engine(
                url, pool_reset_on_return=None, **auto_level, **auto_options
            )
            # the transactional engine only checks the schema (and serves migrate)
            self.engine = create_async_engine(url, **engine_options_)
            self.owns_engine = True
            # Every new PostgreSQL connection of both engines is probed once for a pooler
            # (layers.pooler: one plain SELECT on the simple protocol, before SQLAlchemy's
            # first-connect queries, not counted as a call's statement). Without the URL flag
            # a pooler is refused there, before any statement of a call: asyncpg's named
            # statements would be mixed up between the pooler's clients. With it, what was
            # seen only changes the migrate hint (migrate needs a direct URL).
            flagged = parsed.transaction_pooler
            self.pooler = PoolerProbe.of(
                self.engine, lambda where: None if flagged else self._refuse_pooler(where))
            self.pooler.install(self.auto)
            self.pooler.install(self.engine)
        self.dialect = self.engine.dialect.name  # "postgresql" | "sqlite" | "mysql" | "mariadb"
        #: what a tracing span says of this backend (:mod:`chainlit_orm.tracing`)
        self.tracing_system, self.tracing_backend = self.dialect, "sql"
        self.is_mysql = self.dialect in ("mysql", "mariadb")
        if self.is_mysql and self.engine.dialect.driver != "asyncmy":
            raise ConfigurationError(f"unsupported MySQL driver; supported: {SUPPORTED_DRIVERS}")
        if self.dialect == "sqlite":
            _configure_sqlite(self.engine, autocommit=False)
            if self.owns_engine:
                _configure_sqlite(self.auto, autocommit=True)
        self._translate: dict[str | None, str | None] | None = None
        if models.schema is not None and self.dialect != "postgresql":
            # a set's schema is a PostgreSQL notion; elsewhere its tables live unqualified,
            # as the generated DDL and migrate create them
            self._translate = {models.schema: None}
            self.engine = self.engine.execution_options(schema_translate_map=self._translate)
            self.auto = self.auto.execution_options(schema_translate_map=self._translate)
        self.raw = RawPool(self.auto, self.dialect, self._disconnected,
                           keep_idle=self.owns_engine, connect_timeout=self.connect_timeout,
                           # SQLite's writer holds one of the pool's connections for good
                           capacity=self._pool_capacity() - (self.dialect == "sqlite"),
                           shared_readers=self._shared_readers())
        # the driver's errors, and the DB-API errors of SQLAlchemy's adapter (a connection the
        # pool fails to open raises those, unwrapped)
        adapter_errors = self.engine.dialect.loaded_dbapi.Error
        self._driver_errors = (*_driver_errors(self.dialect), adapter_errors)
        self._all_errors: tuple[type[Exception], ...] = (DBAPIError, *self._driver_errors)
        self.url_text = mask_url(self.engine.url.render_as_string(hide_password=True))
        self.create_schema = self.dialect == "sqlite" if create_schema is None else create_schema
        self._is_ready = not check_schema
        self._ready_task: asyncio.Task[None] | None = None
        self._cache: dict[Any, Any] = {}
        self._cascade = True
        t = models.table
        self.users, self.threads, self.steps = t("user"), t("thread"), t("step")
        self.elements, self.feedbacks = t("element"), t("feedback")
        #: the ids of erased threads: a statement that can create a thread row checks it
        self.tombstones = tombstone_table(models)
        # column names, computed once: they are read on every write or read of these rows
        self._step_columns = [c.name for c in self.steps.columns]
        self._element_columns = [c.name for c in self.elements.columns]
        self._thread_columns = [c.name for c in self.threads.columns]
        self._joined_element_columns = [(_ELEMENT + name, name) for name in self._element_columns]
        #: see :data:`SEARCH_CANDIDATES`; read when a search statement is first built
        self.search_candidates = SEARCH_CANDIDATES
        # the search index of each folded column, by table (none on MySQL/MariaDB)
        self._search_index: dict[tuple[str, str], SearchIndex] = {
            (ix.table.name, ix.column): ix
            for ix in search_indexes([self.threads, self.steps], self.dialect)
        }
        # Step writes beyond this many in flight are combined into multi-row statements (each
        # caller still returns only after its row committed). SQLite has one writer, so there
        # every write that waits for it is combined. On a server, beyond 2 in flight: a statement
        # of many rows is one parse, one commit and one log flush, and that beats running them
        # side by side (bench/results/design.md D2).
        self._combine_after = 1 if self.dialect == "sqlite" else 2
        self._step_combiners: dict[bool, WriteCombiner[tuple[dict[str, Any], str, str]]] = {}

    def _shared_readers(self) -> int:
        """SQLite with a pool of its own (a file): how many reader connections the reads share
        (``RawPool``'s ``shared_readers``), at most the pool's connections besides the writer.
        0 elsewhere: an in-memory database's static pool, a borrowed engine, a server."""
        if self.dialect != "sqlite" or not self.owns_engine:
            return 0
        capacity = self._pool_capacity()
        if capacity >= 1_000_000:  # a static pool (in-memory): one connection, not shared
            return 0
        return max(1, min(SQLITE_SHARED_READERS, capacity - 1))

    def _pool_capacity(self) -> int:
        """How many connections the AUTOCOMMIT pool hands out at most (a static pool: any)."""
        pool = self.auto.sync_engine.pool
        size = getattr(pool, "size", None)
        if not callable(size):
            return 1_000_000
        overflow = getattr(pool, "_max_overflow", 0)
        return 1_000_000 if overflow < 0 else int(size()) + int(overflow)

    @property
    def on_statement(self) -> list[StatementListener]:
        """Callables that receive the first keyword of every statement the layer runs
        (``SELECT``, ``INSERT``, ``BEGIN``, ``COMMIT``...): for counting round trips."""
        return self.raw.listeners

    # ---------------------------------------------------------------- plumbing

    async def ensure_ready(self) -> None:
        """Check (or, for an empty embedded database, create) the schema once, on first use.

        The check runs in a task of its own, bounded by ``migrate_timeout`` and shared by the
        calls that arrive meanwhile; a caller that gives up (its ``timeout``, a cancellation)
        does not cut it short, so a schema being created is not left half-made. A failed check
        is run again by the next call.
        """
        if self._is_ready:
            return
        loop = asyncio.get_running_loop()
        task = self._ready_task
        if task is None or task.get_loop() is not loop or (
                task.done() and (task.cancelled() or task.exception() is not None)):
            task = self._ready_task = loop.create_task(self._check_schema())
            task.add_done_callback(_retrieve)
        await asyncio.shield(task)

    async def _check_schema(self) -> None:
        from chainlit_orm.logs import quiet_alembic

        try:
            async with asyncio.timeout(self.migrate_timeout):
                with quiet_alembic():
                    from chainlit_orm.migrations.sql import ensure_schema

                    self._cascade = await ensure_schema(
                        self.engine, self.models, create=self.create_schema,
                        pooler=self.pooler)
        except TimeoutError as exc:
            raise TimeoutExceededError(
                f"the schema check of {self.url_text} did not finish within "
                f"migrate_timeout={self.migrate_timeout:g} s") from exc
        self._is_ready = True

    async def run(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn`` with bounded retries of transient errors and typed error mapping, after
        the first-use schema check. Every statement the backend sends goes through here, and
        so does the transfer's work on a SQL database (``transfer._layer.SQLHandle``): ``fn``
        must be idempotent, since it may run again.

        A disconnect on a connection opened before the failure is retried on a fresh one: the
        pool has discarded that connection's whole generation (:class:`~chainlit_orm.layers.
        sqlexec.RawPool`). Every retry backs off (:func:`chainlit_orm.retry.transient_retry`;
        the first window is 20 ms, so a retry after a disconnect still comes quickly). Nothing
        is retried once the calling task is being cancelled (its ``timeout``).
        """
        with tracking_sent() as sent:
            try:
                return await self._attempts(fn)
            except BackendUnavailableError as exc:
                exc.sent = sent[0] > 0  # False: no statement left the client (create_element)
                raise
            finally:
                if _tracing.ACTIVE:  # the one check paid when tracing is off
                    _tracing.count(statements=sent[0], rows=sent[1])

    async def _attempts(self, fn: Callable[[], Awaitable[T]]) -> T:
        """:meth:`run`'s loop, under the package's one retry policy (each retry backs off)."""
        async for attempt in self._retry.tries():
            try:
                if not self._is_ready:
                    await self.ensure_ready()
                return await fn()
            except self._all_errors as exc:
                orig: BaseException = exc.orig if isinstance(exc, DBAPIError) and exc.orig else exc
                invalidated = isinstance(exc, DBAPIError) and exc.connection_invalidated
                if attempt + 1 < self.retries and (invalidated or self._transient(orig)) and (
                        not _cancelling()):
                    logger.info("retrying after transient database error: %s", _short(exc))
                    continue
                raise self._map_error(orig) from exc
            except (OSError, ConnectionError, TimeoutError) as exc:
                if attempt + 1 < self.retries and not _cancelling():
                    continue
                if isinstance(exc, TimeoutExceededError):
                    raise
                kind = TimeoutExceededError if isinstance(exc, TimeoutError) else (
                    BackendUnavailableError)
                raise kind(f"database {self.url_text} unavailable: {exc!r}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _transient(self, orig: BaseException) -> bool:
        """Worth retrying: deadlock, serialization failure, lock timeout, lost connection."""
        return _classify(self.dialect, orig) == "transient" or self._disconnected(orig)

    def _client_side(self, exc: BaseException) -> bool:
        """An error the client raised, not the server (asyncpg's errors without a SQLSTATE,
        asyncmy's ``InterfaceError`` such as "Not connected"): the connection's state is
        unknown, so it is dropped and the idempotent write retried."""
        if self.dialect == "postgresql":
            return not hasattr(exc, "sqlstate")
        return self.is_mysql and type(exc).__name__ == "InterfaceError"

    def _disconnected(self, exc: BaseException) -> bool:
        """The connection is unusable after ``exc``: the pool must not hand it out again."""
        if isinstance(exc, OSError | ConnectionError | TimeoutError):
            return True
        if not isinstance(exc, self._driver_errors):
            return False
        if self._client_side(exc):
            return True
        if self.is_mysql and exc.args and exc.args[0] in _MY_DISCONNECT:
            return True
        return _classify(self.dialect, exc) in ("transient", "unavailable") and (
            _looks_disconnected(exc) or (self.dialect == "postgresql"
            and str(getattr(exc, "sqlstate", "") or "")[:2] in ("08", "57")))

    def _map_error(self, orig: BaseException) -> ChainlitORMError:
        """A typed error for a driver error; the driver's text, never the parameters."""
        text = _short(orig)
        kind = _classify(self.dialect, orig)
        if kind == "fk":
            return NotFoundError(f"referenced row does not exist: {text}")
        if kind == "null":
            return InvalidInputError(f"missing required value: {text}")
        if kind == "conflict":
            return ConflictError(f"constraint violated: {text}")
        if kind == "data":
            return InvalidInputError(f"value rejected by the database: {text}")
        if kind == "schema":  # a missing table or column: migrate adds it (docs: troubleshooting)
            return SchemaOutdatedError(
                f"database schema does not match the models ({text}); run: "
                f"{self.migrate_command()}"
            )
        if kind in ("unavailable", "transient"):
            return BackendUnavailableError(f"database {self.url_text} failed: {text}")
        if kind == "pooler":
            return ConfigurationError(
                f"{text}: the server looks to be behind a transaction-mode pooler (PgBouncer, "
                "Supavisor, Neon's pooler), where named prepared statements do not survive; add "
                f"?prepared_statement_cache_size=0 to the database URL ({self.url_text})")
        return ChainlitORMError(f"database error: {text}")

    async def check(self) -> list[str]:
        """The database part of :meth:`ChainlitLayer.check`: the first-use schema check (run
        now: connects, reads the recorded version; creates an empty embedded database's schema
        as first use would), then every column of the model set, read from the database, so a
        custom column the database lacks is found before a write needs it (first use checks
        tables and version only: the schema version does not change with custom columns).

        Raises:
            SchemaOutdatedError: the first-use check refused the schema (its message names the
                command that fixes it).
            BackendUnavailableError: the database cannot be reached.
        """
        await self.ensure_ready()
        schema = self.models.schema if self.dialect == "postgresql" else None
        tables = [table for _, table in self.models.tables()]

        def missing_columns(conn: sa.Connection) -> dict[str, list[str]]:
            inspector = sa.inspect(conn)
            missing: dict[str, list[str]] = {}
            for table in tables:
                found = {c["name"] for c in inspector.get_columns(table.name, schema=schema)}
                lacking = [c.name for c in table.columns if c.name not in found]
                if lacking:
                    missing[table.name] = lacking
            return missing

        failures: tuple[type[Exception], ...] = (*self._all_errors, OSError)
        try:
            async with self.engine.connect() as conn:
                missing = await conn.run_sync(missing_columns)
        except failures as exc:
            orig = exc.orig if isinstance(exc, DBAPIError) and exc.orig else exc
            raise BackendUnavailableError(
                f"database {self.url_text}: reading its columns failed: {_short(orig)}"
            ) from exc
        return [f"table {name} lacks the column(s) {', '.join(columns)} of the model set; add "
                f"them with: {self.migrate_command()}" for name, columns in missing.items()]

    def migrate_command(self) -> str:
        """The exact ``chainlit-orm migrate`` command for this database and model set (the
        package's one hint, :func:`chainlit_orm.errors.migrate_command`)."""
        return direct_migrate_command(self.url_text, self.models,
                                      self.pooler.seen if self.pooler else None)

    def _refuse_pooler(self, where: str) -> ConfigurationError:
        """The error for a new connection that reached a pooler while the URL lacks the flag:
        raised before the connection serves any statement, so every call is refused the same
        way and none runs on another client's prepared statement."""
        return ConfigurationError(
            f"{where} is a connection pooler (PgBouncer, Supavisor, Neon's pooler), where "
            "asyncpg's named prepared statements are mixed up between clients; add "
            f"?prepared_statement_cache_size=0 to the database URL ({self.url_text}); nothing "
            "was sent", detail="pooler")

    def _refuse_erased(self, thread_id: str) -> None:
        """Before a stub thread is made for a late write: refuse it if ``erase_user`` removed
        the thread in this process (see ``_erased``; other processes: :meth:`_not_erased`)."""
        if thread_id in self._erased:
            raise _erased_error(thread_id)

    def _not_erased(self, tid: Any) -> Any:
        """``NOT EXISTS`` a tombstone for the thread id ``tid`` (a bind parameter): the condition
        under which a statement may create a thread row. It is part of that statement, so the
        healthy path costs nothing more; the erasure writes tombstones so that no statement of
        another process can miss them (see ``SQLLifecycle.remove_threads``)."""
        x = self.tombstones
        return ~sa.exists().where(x.c.id == tid)

    def _tombstone_lookup(self) -> Statement:
        x = self.tombstones
        stmt: Statement = self._cached("tombstone", lambda: sa.select(x.c.id).where(
            x.c.id == sa.bindparam("tid", type_=x.c.id.type)))
        return stmt

    def _erased_now(self, thread_id: str) -> NotFoundError:
        """The refusal of a write to an erased thread, remembered in this process too."""
        self._mark_erased([thread_id])
        return _erased_error(thread_id)

    def _is_fk_violation(self, exc: BaseException) -> bool:
        return isinstance(exc, self._driver_errors) and _classify(self.dialect, exc) == "fk"

    def _insert(self, table: sa.Table) -> Any:
        if self.dialect == "postgresql":
            return postgresql.insert(table)
        if self.dialect == "sqlite":
            return sqlite.insert(table)
        return mysql.insert(table)

    def _upsert(
        self,
        table: sa.Table,
        columns: list[str],
        conflict: list[str],
        set_: Callable[[Any], list[tuple[str, Any]]] | None,
        *,
        prefix: str = "",
        rows: int = 0,
    ) -> Any:
        """``INSERT ... ON CONFLICT DO UPDATE`` / ``ON DUPLICATE KEY UPDATE`` with bind params
        named after the columns (plus ``prefix``). ``set_`` receives the "excluded"/"inserted"
        namespace; None means do nothing on conflict. ``rows=n`` makes an n-row statement whose
        parameters are named ``{column}__{i}`` (see :func:`_row_params`)."""
        def values(suffix: str) -> dict[str, Any]:
            return {name: sa.bindparam(prefix + name + suffix, type_=table.c[name].type)
                    for name in columns}

        stmt = self._insert(table).values(
            [values(f"__{i}") for i in range(rows)] if rows else values("")
        )
        if self.is_mysql:
            pairs = set_(stmt.inserted) if set_ else [(conflict[0], table.c[conflict[0]])]
            return stmt.on_duplicate_key_update(list(pairs))
        if set_ is None:
            return stmt.on_conflict_do_nothing(index_elements=conflict)
        return stmt.on_conflict_do_update(index_elements=conflict, set_=dict(set_(stmt.excluded)))

    def _cached(self, key: Any, build: Callable[[], Any]) -> Any:
        """The :class:`Statement` (or tuple/list of them) for the Core statement(s) ``build``
        returns: built once per key, compiled once on first execution."""
        try:
            return self._cache[key]
        except KeyError:
            value = self._cache[key] = self._compile(build())
            return value

    def _compile(self, value: Any) -> Any:
        if isinstance(value, tuple | list):
            return type(value)(self._compile(v) for v in value)
        return Statement(value, self.auto.dialect, self._translate)

    # ------------------------------------------------------------------- users

    def _user_by_identifier(self) -> Statement:
        users = self.users
        stmt: Statement = self._cached("get_user", lambda: sa.select(users).where(
            users.c.identifier == sa.bindparam("identifier")))
        return stmt

    def normalize_user_id(self, value: str, what: str) -> str | None:
        """User ids are UUIDs here (see
        :meth:`~chainlit_orm.layers.base.Backend.normalize_user_id`): any other text is no stored
        user's id."""
        try:
            return normalize_id(value, what=what)
        except InvalidIdentifierError:
            return None

    async def get_user(self, identifier: str) -> dict[str, Any] | None:
        stmt = self._user_by_identifier()

        async def op() -> dict[str, Any] | None:
            async with self.raw.connect() as conn:
                rows = await conn.fetch(stmt, {"identifier": identifier})
            return rows[0] if rows else None

        return await self.run(op)

    async def upsert_user(self, row: dict[str, Any]) -> dict[str, Any]:
        users = self.users

        def build() -> Any:
            def set_(ex: Any) -> list[tuple[str, Any]]:
                pairs = [
                    ("metadata", ex.metadata),
                    ("display_name", sa.func.coalesce(ex.display_name, users.c.display_name)),
                ]
                if not self.is_mysql:
                    return pairs
                # a table whose identifier column predates its binary collation matches "alice"
                # to "Alice": leave that other user's row alone (the layer then refuses)
                same = (sa.cast(users.c.identifier, mysql.BINARY())
                        == sa.cast(ex.identifier, mysql.BINARY()))
                return [(name, sa.case((same, value), else_=users.c[name]))
                        for name, value in pairs]

            stmt = self._upsert(users, list(row), ["identifier"], set_)
            return stmt if self.is_mysql else stmt.returning(*users.c)

        stmt = self._cached(("upsert_user", tuple(row)), build)
        lookup = self._user_by_identifier()

        async def op() -> dict[str, Any]:
            async with self.raw.connect(write=True) as conn:
                if not self.is_mysql:
                    return (await conn.fetch(stmt, row))[0]
                await conn.execute(stmt, row)
                return (await conn.fetch(lookup, row))[0]

        return await self.run(op)

    async def user_exists(self, user_id: str) -> bool:
        users = self.users
        stmt = self._cached("user_exists", lambda: sa.select(users.c.id).where(
            users.c.id == sa.bindparam("uid", type_=users.c.id.type)))

        async def op() -> bool:
            async with self.raw.connect() as conn:
                return bool(await conn.fetch(stmt, {"uid": user_id}))

        return await self.run(op)

    # ----------------------------------------------------------------- threads

    def _meta_merge(self, column: sa.Column[Any], n_set: int, n_del: int) -> Any:
        """SQL that shallow-merges bound metadata into ``column`` and deletes keys, atomically."""
        if self.dialect == "postgresql":
            expr: Any = sa.func.coalesce(column, sa.cast(sa.literal("{}"), postgresql.JSONB))
            expr = expr.op("||")(sa.bindparam("meta_set", type_=postgresql.JSONB))
            return expr.op("-")(sa.bindparam("meta_del", type_=postgresql.ARRAY(sa.Text)))
        if self.dialect == "sqlite":
            return sa.func.chainlit_merge(column, sa.bindparam("meta_patch", type_=sa.Text))
        expr = sa.func.coalesce(column, sa.literal("{}"))
        if n_set:
            args: list[Any] = []
            for i in range(n_set):
                args += [sa.bindparam(f"mp{i}", type_=sa.Text),
                         sa.func.json_extract(sa.bindparam(f"mv{i}", type_=sa.Text), "$")]
            expr = sa.func.json_set(expr, *args)
        if n_del:
            expr = sa.func.json_remove(
                expr, *(sa.bindparam(f"md{i}", type_=sa.Text) for i in range(n_del))
            )
        return expr

    def _meta_params(self, meta_set: dict[str, Any], meta_del: list[str]) -> dict[str, Any]:
        if self.dialect == "postgresql":
            return {"meta_set": meta_set, "meta_del": meta_del}
        if self.dialect == "sqlite":
            patch = dict(meta_set)
            patch.update(dict.fromkeys(meta_del))
            return {"meta_patch": json.dumps(patch)}
        params: dict[str, Any] = {}
        for i, (key, value) in enumerate(meta_set.items()):
            params[f"mp{i}"] = json_path(key)
            params[f"mv{i}"] = json.dumps(value)
        for i, key in enumerate(meta_del):
            params[f"md{i}"] = json_path(key)
        return params

    async def update_thread(
        self,
        thread_id: str,
        fields: dict[str, Any],
        meta_set: dict[str, Any] | None,
        meta_delete: list[str] | None,
        create: bool,
        now: str,
    ) -> None:
        threads, users = self.threads, self.users
        # the folded copy of the name, written in the same statement (models.search)
        fields = {**fields, **folded_values(threads, fields)}
        has_meta = meta_set is not None
        meta_set = meta_set or {}
        meta_delete = meta_delete or []
        shape_meta = (len(meta_set), len(meta_delete)) if self.is_mysql else ()
        key = ("update_thread", create, tuple(fields), has_meta, shape_meta)

        def build() -> Any:
            if not create:
                values: dict[str, Any] = {
                    name: sa.bindparam(name, type_=threads.c[name].type) for name in fields
                }
                if has_meta:
                    values["metadata"] = self._meta_merge(threads.c.metadata, *shape_meta or (0, 0))
                return (
                    sa.update(threads).where(threads.c.id == sa.bindparam("tid")).values(values)
                )
            insert_values: dict[str, Any] = {
                "id": sa.bindparam("tid", type_=threads.c.id.type),
                "createdAt": sa.bindparam("now", type_=threads.c.createdAt.type),
                "activityAt": sa.bindparam("now", type_=threads.c.activityAt.type),
            }
            for name in fields:
                insert_values[name] = sa.bindparam(name, type_=threads.c[name].type)
            if "userId" in fields:
                insert_values["userIdentifier"] = (
                    sa.select(users.c.identifier)
                    .where(users.c.id == sa.bindparam("userId", type_=users.c.id.type))
                    .scalar_subquery()
                )
            if has_meta:
                insert_values["metadata"] = sa.bindparam(
                    "meta_insert", type_=threads.c.metadata.type
                )
            # INSERT ... SELECT ... WHERE NOT EXISTS (tombstone): an erased thread is never
            # created again, in the same statement (no row inserted nor updated: refused below)
            rows = sa.select(*(value.label(name) for name, value in insert_values.items())
                             ).where(self._not_erased(insert_values["id"]))
            stmt = self._insert(threads).from_select(list(insert_values), rows)
            ex = stmt.inserted if self.is_mysql else stmt.excluded
            pairs: list[tuple[Any, Any]] = []
            for name in fields:
                if name == "userId":
                    # the owner is set once and never changed; identifier first (MySQL applies
                    # assignments left to right)
                    pairs.append((threads.c.userIdentifier, sa.func.coalesce(
                        threads.c.userIdentifier, ex.userIdentifier)))
                    pairs.append((threads.c.userId, sa.func.coalesce(threads.c.userId, ex.userId)))
                else:
                    pairs.append((threads.c[name], ex[name]))
            if has_meta:
                pairs.append((threads.c.metadata, self._meta_merge(threads.c.metadata,
                                                                     *shape_meta or (0, 0))))
            if not pairs:
                pairs.append((threads.c.id, threads.c.id))
            if self.is_mysql:
                return stmt.on_duplicate_key_update([(c.name, v) for c, v in pairs])
            return stmt.on_conflict_do_update(
                index_elements=["id"], set_={c.name: v for c, v in pairs}
            )

        stmt = self._cached(key, build)
        params: dict[str, Any] = {"tid": thread_id, "now": now, **fields}
        if has_meta:
            params.update(self._meta_params(meta_set, meta_delete))
            if create:
                params["meta_insert"] = meta_set

        async def op() -> int:
            async with self.raw.connect(write=True) as conn:
                return await conn.execute(stmt, params)

        if not await self.run(op) and create:
            # the upsert neither inserted nor updated: a tombstone names the thread (a plain
            # update of a missing thread, create=False, also changes nothing: not an error)
            raise self._erased_now(thread_id)

    async def get_thread_author(self, thread_id: str) -> str | None:
        t = self.threads
        stmt = self._cached("author", lambda: sa.select(t.c.userIdentifier).where(
            t.c.id == sa.bindparam("tid", type_=t.c.id.type), t.c.deletedAt.is_(None)))

        async def op() -> str | None:
            async with self.raw.connect() as conn:
                rows = await conn.fetch(stmt, {"tid": thread_id})
            return rows[0]["userIdentifier"] if rows else None

        return await self.run(op)

    def _steps_with_feedback(self) -> Any:
        s, f = self.steps, self.feedbacks
        return sa.select(
            s,
            f.c.id.label("fb_id"),
            f.c.value.label("fb_value"),
            f.c.comment.label("fb_comment"),
        ).select_from(s.outerjoin(f, f.c.forId == s.c.id))

    @staticmethod
    def _with_feedback(data: dict[str, Any]) -> dict[str, Any]:
        """Move the joined feedback columns of a step row (changed in place) into ``feedback``."""
        fb_id = data.pop("fb_id", None)
        value = data.pop("fb_value", None)
        comment = data.pop("fb_comment", None)
        if fb_id is not None:
            data["feedback"] = feedback_dict(fb_id, data["id"], value, comment)
        return data

    async def get_thread(
        self, thread_id: str
    ) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]] | None:
        t, s, e = self.threads, self.steps, self.elements

        def build() -> tuple[Any, Any]:
            tid = sa.bindparam("tid", type_=t.c.id.type)
            # two round trips, not three: the thread comes with its elements (a thread has
            # few), the steps with their feedback. The elements are sorted here, not in SQL:
            # MariaDB sorts a join through a temporary table
            head = (
                sa.select(t, *(c.label(_ELEMENT + c.name) for c in e.columns))
                .select_from(t.outerjoin(e, e.c.threadId == t.c.id))
                .where(t.c.id == tid, t.c.deletedAt.is_(None))
            )
            steps = (self._steps_with_feedback().where(s.c.threadId == tid)
                     .order_by(*(s.c[name] for name in STEP_ORDER)))
            return head, steps

        q_head, q_steps = self._cached("get_thread", build)
        thread_columns, element_columns = self._thread_columns, self._joined_element_columns

        async def op() -> Any:
            params = {"tid": thread_id}
            async with self.raw.connect() as conn:
                head, steps = await conn.fetch_pair(q_head, q_steps, params)
            if not head:
                return None
            thread = {name: head[0][name] for name in thread_columns}
            elements = sorted(({name: row[label] for label, name in element_columns}
                               for row in head if row[_ELEMENT + "id"] is not None),
                              key=element_order)
            return thread, [self._with_feedback(r) for r in steps], elements

        return await self.run(op)

    def _list_index(self, sort_col: sa.Column[Any]) -> str:
        """The threads index on (userId, sort column, id) that serves a user's list."""
        want = ["userId", sort_col.name, "id"]
        for index in self.threads.indexes:
            if [c.name for c in index.columns] == want and index.name:
                return str(index.name)
        raise SchemaError(f"the threads table has no index on ({', '.join(want)})")

    async def list_threads(
        self,
        *,
        user_id: str | None,
        limit: int,
        after: tuple[str, str] | None,
        search: str | None,
        feedback: int | None,
        order: ThreadOrder,
    ) -> list[dict[str, Any]]:
        """One statement: the user's threads newest first, from the keyset cursor on.

        Search (``search`` is the case-folded term) compares it with the folded copies of the
        thread's name and of its message texts, binary: ``GLOB`` on SQLite (its ``LIKE`` folds
        ASCII), ``LIKE ... ESCAPE`` elsewhere (on MariaDB over ``utf8mb4_bin`` columns), the
        term's wildcard characters escaped. Two ways to find the matches, both in the statement,
        one of them switched off by a condition the database evaluates once:

        * *through the search index* (PostgreSQL's trigram GIN, SQLite's FTS5 trigram table),
          when the term has a run of three characters the index can use and the index finds
          fewer than ``search_candidates`` (:data:`SEARCH_CANDIDATES`) candidate threads across
          the store: the page is then made from those candidates (rechecked, scoped to the user
          and the filters), and its cost does not grow with the store;
        * *by scanning* the user's threads newest first otherwise (a short term, a common word,
          MySQL/MariaDB, which has no usable index): the scan stops at the page's end, which a
          common word reaches quickly.
        """
        t, f = self.threads, self.feedbacks
        sort_col = t.c.activityAt if order == "activity" else t.c.createdAt
        via_index = search is not None and self._indexable(search)
        key = ("list", user_id is None, after is None, search is None, via_index,
               feedback is None, order)

        def build() -> Any:
            columns = [c for c in t.columns if c.name != "extra" and FOLDED_FROM not in c.info]
            conditions: list[Any] = [t.c.deletedAt.is_(None)]  # the trash is never listed
            uid = sa.bindparam("uid", type_=t.c.userId.type)
            if after is not None:
                after_ts = sa.bindparam("after_ts", type_=sort_col.type)
                after_id = sa.bindparam("after_id", type_=t.c.id.type)
                if self.is_mysql:
                    # MariaDB does not seek an index with a row comparison (it reads the user's
                    # whole index prefix); spelled out, the same condition is an index range
                    # (bench/results/design.md D3)
                    conditions.append(sa.or_(sort_col < after_ts, sa.and_(
                        sort_col == after_ts, t.c.id < after_id)))
                else:
                    conditions.append(
                        sa.tuple_(sort_col, t.c.id) < sa.tuple_(after_ts, after_id))
            if feedback is not None:
                conditions.append(sa.exists().where(
                    f.c.threadId == t.c.id, f.c.value == sa.bindparam("fb", type_=sa.Integer)))

            def page(*more: Any, from_candidates: bool = False, unless: Any = None) -> Any:
                owner: Any = t.c.userId
                key: Any = uid
                if from_candidates and self.dialect == "sqlite":
                    # unary "+": SQLite must not read the user's index and probe the candidates
                    # per thread (that grows with the user's threads); from the few candidates
                    # by primary key, then the owner is checked
                    owner = sa.sql.expression.UnaryExpression(
                        owner, operator=sa.sql.operators.custom_op("+"), type_=owner.type)
                if unless is not None and self.dialect == "sqlite":
                    # SQLite checks a condition on a subquery row by row (it would walk the
                    # user's whole index to find none); a key that is NULL when the page is not
                    # wanted makes the index seek itself find nothing. PostgreSQL evaluates the
                    # condition once, before the scan ("One-Time Filter")
                    key = sa.select(uid).where(sa.not_(unless)).scalar_subquery()
                mine = [owner == key] if user_id is not None else []
                stmt = sa.select(*columns).where(*mine, *conditions, *more)
                if self.is_mysql and user_id is not None:
                    # With every column selected, MariaDB reads the user's rows through the
                    # index's userId prefix and sorts them, so a page costs more as the user's
                    # threads grow; the keyset range on the list index is what it should read
                    # (bench/results/design.md D4).
                    stmt = stmt.with_hint(t, f"FORCE INDEX ({self._list_index(sort_col)})")
                if from_candidates and self.dialect == "postgresql":
                    # the matching threads first, as a materialized CTE (at most
                    # search_candidates rows, by primary key), then sorted: asyncpg reuses the
                    # prepared statement, and PostgreSQL's generic plan for it (from the sixth
                    # run on) walked the user's whole list index probing the candidates per
                    # thread, 18-30 ms at 10,000 threads against 0.6 ms
                    hits = stmt.cte("hits").prefix_with("MATERIALIZED")
                    return (sa.select(*hits.c)
                            .order_by(hits.c[sort_col.name].desc(), hits.c.id.desc())
                            .limit(sa.bindparam("lim")))
                return stmt.order_by(sort_col.desc(), t.c.id.desc()).limit(sa.bindparam("lim"))

            if search is None:
                return page()
            if not via_index:
                return page(self._search_scan())
            candidates = self._search_candidates()
            few = sa.select(sa.func.count()).select_from(candidates).scalar_subquery() < (
                self.search_candidates)
            through_index = page(few, t.c.id.in_(sa.select(candidates.c.cid)),
                                 from_candidates=True)
            scanned = page(sa.not_(few), self._search_scan(), unless=few)
            found = sa.union_all(sa.select(through_index.subquery()),
                                 sa.select(scanned.subquery())).subquery("found")
            return (sa.select(*found.c)
                    .order_by(found.c[sort_col.name].desc(), found.c.id.desc())
                    .limit(sa.bindparam("lim")))

        stmt = self._cached(key, build)
        params: dict[str, Any] = {"lim": limit}
        if user_id is not None:
            params["uid"] = user_id
        if after is not None:
            params["after_ts"], params["after_id"] = after
        if search is not None:
            params["pattern"] = self._search_pattern(search)
        if feedback is not None:
            params["fb"] = feedback

        async def op() -> list[dict[str, Any]]:
            async with self.raw.connect() as conn:
                return await conn.fetch(stmt, params)

        return await self.run(op)

    # ------------------------------------------------------------------ search

    def _matches(self, column: sa.Column[Any]) -> Any:
        """``column`` (a folded copy) contains the bound ``pattern``, compared binary."""
        pattern = sa.bindparam("pattern", type_=sa.Text)
        if self.dialect == "sqlite":
            return column.op("GLOB")(pattern)
        return column.like(pattern, escape="\\")

    def _search_pattern(self, folded: str) -> str:
        """The bound pattern for a folded term: every character literal."""
        if self.dialect == "sqlite":  # GLOB: "*", "?" and "[" are special; a class escapes each
            return "*" + "".join(f"[{ch}]" if ch in "*?[" else ch for ch in folded) + "*"
        escaped = folded.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return f"%{escaped}%"

    def _indexable(self, folded: str) -> bool:
        """Whether the search index can narrow the term down: it needs a run of three characters
        (pg_trgm's trigrams are made of a word's letters and digits; FTS5's trigram tokenizer
        takes any character but the GLOB wildcards). A shorter term is answered by the scan, as
        the index would read every row (same answers either way)."""
        if not self._search_index:
            return False
        run = best = 0
        for ch in folded:
            usable = ch.isalnum() if self.dialect == "postgresql" else ch not in "*?["
            run = run + 1 if usable else 0
            best = max(best, run)
        return best >= 3

    def _search_scan(self) -> Any:
        """The thread's folded name, or the folded text of one of its messages, matches."""
        t, s = self.threads, self.steps
        conditions = (
            s.c.threadId == t.c.id,
            # one bound value each (not an "expanding" IN): compiled once, run as is
            s.c.type.in_([sa.literal(kind) for kind in MESSAGE_TYPES]),
            self._matches(s.c.outputFolded),
        )
        in_steps: Any
        if self.is_mysql:
            # MariaDB runs EXISTS as a semi-join probe per thread, the scalar subquery below as
            # a slower dependent subquery (bench/results/design.md D5)
            in_steps = sa.exists().where(*conditions)
        else:
            # a correlated scalar subquery, not EXISTS: PostgreSQL turns ``OR EXISTS`` into a
            # hashed subplan that scans every step of the table, while this one probes the
            # thread's steps by index (bench/results/design.md D5)
            in_steps = sa.select(sa.true()).where(*conditions).limit(1).scalar_subquery()
        return sa.or_(self._matches(t.c.nameFolded), in_steps)

    def _search_candidates(self) -> Any:
        """The ids of threads whose folded name or message text matches, found through the
        search index, at most ``search_candidates`` of them, as a materialized CTE ``cand``
        (column ``cid``): read once, counted and joined."""
        t, s = self.threads, self.steps
        ct, cs = t.alias("ct"), s.alias("cs")
        messages = cs.c.type.in_([sa.literal(kind) for kind in MESSAGE_TYPES])
        if self.dialect == "sqlite":
            # FTS5 rows are keyed by the content table's rowid; "rowid IN (FTS query)" makes
            # SQLite read the FTS table first and fetch the few rows it names (a join lets it
            # probe the FTS table once per thread instead)
            names = sa.select(ct.c.id.label("cid")).where(
                sa.literal_column("ct.rowid").in_(self._fts_rowids(t, "nameFolded")))
            texts = sa.select(cs.c.threadId).where(
                sa.literal_column("cs.rowid").in_(self._fts_rowids(s, "outputFolded")),
                messages)
        else:
            names = sa.select(ct.c.id.label("cid")).where(self._matches(ct.c.nameFolded))
            texts = sa.select(cs.c.threadId).where(self._matches(cs.c.outputFolded), messages)
        return (sa.union_all(names, texts).limit(self.search_candidates).cte("cand")
                .prefix_with("MATERIALIZED"))

    def _fts_rowids(self, table: sa.Table, column: str) -> Any:
        """The rowids of ``table``'s rows whose folded ``column`` matches: what its FTS5 table
        finds, and the rows on its pending list that match (rechecked: at most
        ``FTS_PENDING_LIMIT``; a row is on one of the two, never both)."""
        ix = self._search_index[(table.name, column)]
        fts: Any = sa.table(ix.name, sa.column("rowid"), sa.column(column, sa.Text))
        found = sa.select(fts.c.rowid).where(self._matches(fts.c[column]))
        pending = sa.table(fts_pending_name(ix), sa.column("r", sa.Integer))
        listed = table.alias("listed")
        # "rowid IN (list)": read the short list and fetch those rows (a join let SQLite scan
        # the table and probe the list per row)
        rowid: Any = sa.literal_column("listed.rowid")
        rechecked = sa.select(rowid).select_from(listed).where(
            rowid.in_(sa.select(pending.c.r)), self._matches(listed.c[column]))
        return sa.union_all(found, rechecked)

    async def thread_object_keys(self, thread_id: str) -> list[str]:
        e = self.elements
        stmt = self._cached("thread_object_keys", lambda: sa.select(e.c.objectKey).where(
            e.c.threadId == sa.bindparam("tid", type_=e.c.threadId.type),
            e.c.objectKey.is_not(None)))

        async def op() -> list[str]:
            async with self.raw.connect() as conn:
                return [r["objectKey"] for r in await conn.fetch(stmt, {"tid": thread_id})
                        if r["objectKey"]]

        return await self.run(op)

    async def delete_thread(self, thread_id: str) -> list[str]:
        t, s, e, f = self.threads, self.steps, self.elements, self.feedbacks
        params = {"tid": thread_id}
        if self.dialect == "postgresql":
            # The thread row is locked first, in a statement of its own. Why: one statement
            # sees the rows committed before it started, and an element inserted meanwhile
            # (its foreign-key check holds a KEY SHARE lock on the thread row, so the delete
            # waits for it) would then be removed by the cascade without its object key being
            # returned: a file no row refers to. FOR UPDATE waits for those inserts to commit
            # and holds off new ones (they recreate a stub thread after this commits, their row
            # and object intact); the delete, a new statement under READ COMMITTED, sees them.
            # Works with or without the cascading foreign keys.
            def build_pg() -> tuple[Any, Any]:
                tid = sa.bindparam("tid", type_=t.c.id.type)
                lock = sa.select(t.c.id).where(t.c.id == tid).with_for_update()
                de = sa.delete(e).where(e.c.threadId == tid).returning(e.c.objectKey).cte("de")
                df = sa.delete(f).where(f.c.threadId == tid).returning(f.c.id).cte("df")
                ds = sa.delete(s).where(s.c.threadId == tid).returning(s.c.id).cte("ds")
                dt = sa.delete(t).where(t.c.id == tid).returning(t.c.id).cte("dt")
                return lock, sa.select(de.c.objectKey).add_cte(df, ds, dt)

            lock, stmt = self._cached("delete_thread", build_pg)

            def script_pg() -> TxScript[list[str]]:
                yield ("fetch", lock, params)
                rows = yield ("fetch", stmt, params)
                return [r["objectKey"] for r in rows if r["objectKey"]]

            async def op_pg() -> list[str]:
                async with self.raw.connect(write=True) as conn:
                    return await conn.run_transaction(script_pg)

            return await self.run(op_pg)

        def build() -> list[Any]:
            tid = sa.bindparam("tid", type_=t.c.id.type)
            stmts: list[Any] = [sa.delete(e).where(e.c.threadId == tid).returning(e.c.objectKey)]
            if not self._cascade:  # legacy schema without cascading foreign keys
                stmts += [sa.delete(f).where(f.c.threadId == tid),
                          sa.delete(s).where(s.c.threadId == tid)]
            stmts.append(sa.delete(t).where(t.c.id == tid))
            return stmts

        stmts = self._cached(("delete_thread", self._cascade), build)

        return await self.run(lambda: self._delete_in_transaction(stmts, params))

    async def _delete_in_transaction(
        self, stmts: list[Statement], params: dict[str, Any]
    ) -> list[str]:
        """Run ``stmts`` in one transaction; the first one returns the object keys to delete."""
        def script() -> TxScript[list[str]]:
            rows = yield ("fetch", stmts[0], params)
            for stmt in stmts[1:]:
                yield ("execute", stmt, params)
            return [r["objectKey"] for r in rows if r["objectKey"]]

        async with self.raw.connect(write=True) as conn:
            return await conn.run_transaction(script)

    # ------------------------------------------------------------------- steps

    def _stub_thread(self) -> Any:
        """Insert the stub thread ``id`` unless it exists or is erased; changes one row or none
        (then :meth:`_stub_refused` tells which)."""
        t = self.threads

        def build() -> Any:
            columns = ["id", "createdAt", "activityAt"]
            binds = [sa.bindparam(name, type_=t.c[name].type) for name in columns]
            rows = sa.select(*(b.label(n) for b, n in zip(binds, columns, strict=True))).where(
                self._not_erased(binds[0]))
            stmt = self._insert(t).from_select(columns, rows)
            if self.is_mysql:
                return stmt.on_duplicate_key_update([("id", t.c.id)])
            return stmt.on_conflict_do_nothing(index_elements=["id"])

        return self._cached("stub_thread", build)

    async def _execute_creating_thread(
        self, stmt: Statement, params: dict[str, Any], thread_id: str, now: str
    ) -> None:
        """One statement; if its thread does not exist yet (Chainlit writes steps and elements
        before the thread), create a stub thread and run it again."""
        async with self.raw.connect(write=True) as conn:
            try:
                await conn.execute(stmt, params)
            except Exception as exc:
                if not self._is_fk_violation(exc):
                    raise
                self._refuse_erased(thread_id)
                created = await conn.execute(
                    self._stub_thread(), {"id": thread_id, "createdAt": now, "activityAt": now})
                if not created and await conn.fetch(self._tombstone_lookup(),
                                                    {"tid": thread_id}):
                    raise self._erased_now(thread_id) from exc
                await conn.execute(stmt, params)

    async def upsert_step(
        self, row: dict[str, Any], *, create: bool, activity: str | None, now: str
    ) -> None:
        s, t = self.steps, self.threads
        columns = self._step_columns
        params = {name: row.get(name) for name in columns}
        # the folded copy of a message's text, written in the same statement (models.search)
        params.update(folded_values(s, row))
        if "metadata" not in row:
            params["favorite"] = None  # unknown: leave the stored flag alone

        def build(prefix: str = "", rows: int = 0) -> Any:
            def set_(ex: Any) -> list[tuple[str, Any]]:
                pairs = []
                for name in columns:
                    if name == "id":
                        continue
                    if create:  # a late create never overwrites what an update already wrote
                        pairs.append((name, sa.func.coalesce(s.c[name], ex[name])))
                    else:
                        pairs.append((name, sa.func.coalesce(ex[name], s.c[name])))
                return pairs

            return self._upsert(s, columns, ["id"], set_, prefix=prefix, rows=rows)

        stmt = self._cached(("upsert_step", create), build)
        thread_id = row["threadId"]

        if activity is None:
            combiner = self._step_combiners.get(create)
            if combiner is None:
                combiner = self._step_combiners[create] = self._step_combiner(create, stmt, build)
            return await combiner.write((params, thread_id, now))

        def build_bump() -> Any:
            return sa.update(t).where(t.c.id == sa.bindparam("tid", type_=t.c.id.type)).values(
                activityAt=sa.case(
                    (sa.or_(t.c.activityAt.is_(None),
                            t.c.activityAt < sa.bindparam("ts", type_=t.c.activityAt.type)),
                     sa.bindparam("ts", type_=t.c.activityAt.type)),
                    else_=t.c.activityAt))

        bump = self._cached("bump_activity", build_bump)
        bump_params = {"tid": thread_id, "ts": activity}

        if self.dialect == "postgresql":
            # One statement: a data-modifying CTE moves the activity, the INSERT upserts the step;
            # atomic, and no BEGIN/COMMIT round trips. A missing thread (foreign-key violation)
            # takes the transactional path below, which creates it.
            # the step's bind names get a prefix: execution parameters named like a column of
            # ``threads`` would otherwise become extra SET clauses of the CTE's UPDATE
            prefix = "s_"
            combined = self._cached(("upsert_step_bump", create), lambda: build(prefix).add_cte(
                build_bump().returning(t.c.id).cte("bump")))
            combined_params = {prefix + k: v for k, v in params.items()} | bump_params

            async def op_pg() -> bool:
                async with self.raw.connect(write=True) as conn:
                    try:
                        await conn.execute(combined, combined_params)
                    except Exception as exc:
                        if not self._is_fk_violation(exc):
                            raise
                        return False
                return True

            if await self.run(op_pg):
                return

        def script() -> TxScript[None]:
            # thread row first: the opposite lock order deadlocks concurrent writers on MariaDB
            if (yield ("execute", bump, bump_params)) == 0:  # no thread yet: a stub
                self._refuse_erased(thread_id)
                created = yield ("execute", self._stub_thread(),
                                 {"id": thread_id, "createdAt": now, "activityAt": activity})
                if not created and (yield ("fetch", self._tombstone_lookup(),
                                           {"tid": thread_id})):
                    raise self._erased_now(thread_id)
            yield ("execute", stmt, params)

        async def op_tx() -> None:
            async with self.raw.connect(write=True) as conn:
                await conn.run_transaction(script)

        await self.run(op_tx)

    def _step_combiner(
        self, create: bool, stmt: Statement, build: Callable[..., Any]
    ) -> WriteCombiner[tuple[dict[str, Any], str, str]]:
        """Concurrent step writes of one kind (create or update) as multi-row upserts."""
        async def single(call: tuple[dict[str, Any], str, str]) -> None:
            params, thread_id, now = call
            await self.run(lambda: self._execute_creating_thread(stmt, params, thread_id, now))

        async def many(calls: list[tuple[dict[str, Any], str, str]]) -> None:
            combined = self._cached(("upsert_step", create, len(calls)),
                                    lambda: build(rows=len(calls)))
            params = _row_params([call[0] for call in calls])

            async def op() -> None:
                async with self.raw.connect(write=True) as conn:
                    await conn.execute(combined, params)

            await self.run(op)

        return WriteCombiner(single, many, key=lambda call: call[0]["id"],
                             concurrency=self._combine_after, timeout=self.timeout)

    async def delete_step(self, step_id: str) -> list[str]:
        s, e, f = self.steps, self.elements, self.feedbacks
        params = {"sid": step_id}

        def build() -> list[Any]:
            sid = sa.bindparam("sid", type_=s.c.id.type)
            return [
                sa.delete(e).where(e.c.forId == sid).returning(e.c.objectKey),
                sa.delete(f).where(f.c.forId == sid),
                sa.delete(s).where(s.c.id == sid),
            ]

        stmts = self._cached("delete_step", build)

        return await self.run(lambda: self._delete_in_transaction(stmts, params))

    async def get_step(self, step_id: str) -> dict[str, Any] | None:
        s, t = self.steps, self.threads
        # a trashed thread's steps are as hidden as the thread (outer join: a step is found
        # whether or not its thread row exists, as before the trash)
        stmt = self._cached("get_step", lambda: self._steps_with_feedback().outerjoin(
            t, t.c.id == s.c.threadId).where(
            s.c.id == sa.bindparam("sid", type_=s.c.id.type), t.c.deletedAt.is_(None)))

        async def op() -> dict[str, Any] | None:
            async with self.raw.connect() as conn:
                rows = await conn.fetch(stmt, {"sid": step_id})
            return self._with_feedback(rows[0]) if rows else None

        return await self.run(op)

    async def get_favorite_steps(self, user_id: str) -> list[dict[str, Any]]:
        s, t = self.steps, self.threads
        stmt = self._cached("favorites", lambda: self._steps_with_feedback().join(
            t, t.c.id == s.c.threadId).where(
            s.c.favorite.is_(True), t.c.userId == sa.bindparam("uid", type_=t.c.userId.type),
            t.c.deletedAt.is_(None),
        ).order_by(*(s.c[name].desc() for name in STEP_ORDER)))

        async def op() -> list[dict[str, Any]]:
            async with self.raw.connect() as conn:
                rows = await conn.fetch(stmt, {"uid": user_id})
            return [self._with_feedback(r) for r in rows]

        return await self.run(op)

    # ---------------------------------------------------------------- elements

    async def upsert_element(self, row: dict[str, Any], now: str) -> None:
        e = self.elements
        columns = self._element_columns
        params = {name: row.get(name) for name in columns}
        stmt = self._cached("upsert_element", lambda: self._upsert(
            e, columns, ["id"],
            lambda ex: [(n, sa.func.coalesce(ex[n], e.c[n])) for n in columns if n != "id"]))

        await self.run(
            lambda: self._execute_creating_thread(stmt, params, row["threadId"], now))

    async def get_element(self, thread_id: str, element_id: str) -> dict[str, Any] | None:
        e, t = self.elements, self.threads
        # a trashed thread's elements are as hidden as the thread
        stmt = self._cached("get_element", lambda: sa.select(e).outerjoin(
            t, t.c.id == e.c.threadId).where(
            e.c.id == sa.bindparam("eid", type_=e.c.id.type),
            e.c.threadId == sa.bindparam("tid", type_=e.c.threadId.type),
            t.c.deletedAt.is_(None)))

        async def op() -> dict[str, Any] | None:
            async with self.raw.connect() as conn:
                rows = await conn.fetch(stmt, {"eid": element_id, "tid": thread_id})
            return rows[0] if rows else None

        return await self.run(op)

    async def delete_element(self, element_id: str, thread_id: str | None) -> str | None:
        e = self.elements

        def build() -> Any:
            stmt = sa.delete(e).where(e.c.id == sa.bindparam("eid", type_=e.c.id.type))
            if thread_id is not None:
                stmt = stmt.where(e.c.threadId == sa.bindparam("tid", type_=e.c.threadId.type))
            return stmt.returning(e.c.objectKey)

        stmt = self._cached(("delete_element", thread_id is None), build)
        params = {"eid": element_id, "tid": thread_id}

        async def op() -> str | None:
            async with self.raw.connect(write=True) as conn:
                rows = await conn.fetch(stmt, params)
            return rows[0]["objectKey"] if rows else None

        return await self.run(op)

    # ---------------------------------------------------------------- feedback

    async def upsert_feedback(self, row: dict[str, Any]) -> str:
        f, s = self.feedbacks, self.steps

        def build() -> tuple[Any, Any]:
            p = {name: sa.bindparam(name, type_=f.c[name].type) for name in
                 ("id", "forId", "threadId", "value", "comment")}
            step_thread = (sa.select(s.c.threadId).where(s.c.id == p["forId"])
                           .scalar_subquery())
            thread = sa.func.coalesce(p["threadId"], step_thread)
            wrong_thread = sa.exists().where(s.c.id == p["forId"], s.c.threadId != thread)
            select = sa.select(p["id"], p["forId"], thread, p["value"], p["comment"]).where(
                ~wrong_thread)
            stmt = self._insert(f).from_select(["id", "forId", "threadId", "value", "comment"],
                                               select)
            if self.is_mysql:
                stmt = stmt.on_duplicate_key_update(
                    [("value", stmt.inserted.value), ("comment", stmt.inserted.comment)])
            else:
                stmt = stmt.on_conflict_do_update(
                    index_elements=["forId"],
                    set_={"value": stmt.excluded.value, "comment": stmt.excluded.comment},
                ).returning(f.c.id)
            lookup = sa.select(f.c.id).where(f.c.forId == p["forId"])
            return stmt, lookup

        stmt, lookup = self._cached("upsert_feedback", build)

        async def op() -> str:
            async with self.raw.connect(write=True) as conn:
                found: Any = None
                if self.is_mysql:
                    if await conn.execute(stmt, row):
                        rows = await conn.fetch(lookup, row)
                        found = rows[0]["id"] if rows else None
                else:
                    rows = await conn.fetch(stmt, row)
                    found = rows[0]["id"] if rows else None
            if found is None:
                raise ConflictError(
                    f"step {row['forId']} does not belong to thread {row['threadId']}",
                    detail=row["forId"],
                )
            return str(found)

        return await self.run(op)

    async def delete_feedback(self, feedback_id: str) -> bool:
        f = self.feedbacks
        stmt = self._cached("delete_feedback", lambda: sa.delete(f).where(
            f.c.id == sa.bindparam("fid", type_=f.c.id.type)))

        async def op() -> bool:
            async with self.raw.connect(write=True) as conn:
                return bool(await conn.execute(stmt, {"fid": feedback_id}))

        return await self.run(op)

    async def close(self) -> None:
        task, self._ready_task = self._ready_task, None
        if task is not None and not task.done() and task.get_loop() is (
                asyncio.get_running_loop()):
            task.cancel()
            await asyncio.wait({task})
        await self.raw.close()
        if self.owns_engine:
            await self.engine.dispose()
            await self.auto.dispose()


class SQLDataLayer(ChainlitLayer):
    """The Chainlit data layer on SQLite, PostgreSQL or MySQL/MariaDB.

    Args:
        url_or_engine: a database URL (``sqlite+aiosqlite:///chat.db``,
            ``postgresql+asyncpg://...``, ``mysql+asyncmy://...`` or ``mariadb+asyncmy://...``;
            the bare dialect names pick these drivers) or an existing ``AsyncEngine``.
        storage: any Chainlit ``BaseStorageClient`` for element bytes (e.g.
            :class:`chainlit_orm.FsspecStorage`).
        models: the model set (default: Chainlit's documented tables).
        thread_order: ``"activity"`` or ``"created"``; see :class:`ChainlitLayer`.
        create_schema: create the schema on first use when the database is empty (default: only
            for SQLite, the embedded default). Otherwise the layer checks the recorded schema
            version and refuses with an error naming ``chainlit-orm migrate``.
        retries: attempts for transient errors (deadlock, serialization failure, lost connection).
        timeout: seconds each call may take, retries and waits for a free connection included
            (default 30); past it the call raises :class:`~chainlit_orm.errors.
            TimeoutExceededError` and its connection is closed, never reused. Client-side, so
            it holds behind a transaction-mode pooler (PgBouncer) where a session's
            ``statement_timeout`` would not. A write that timed out may or may not have been
            committed; every write is an idempotent upsert, so it may be sent again.
        connect_timeout: seconds to open one connection (default 10); a connect that takes
            longer is retried like a refused one, within ``timeout``.
        migrate_timeout: seconds the schema check of the first call may take, including
            creating the schema with ``create_schema`` (default 600). It runs once, shared by
            the calls that wait for it, and is not cut short by their ``timeout``.
        on_delete, soft_delete, on_delete_timeout, on_delete_breaker: the on-delete hook, the
            opt-in trash, the bound of one hook call (seconds, default 30) and the hook calls in
            a row past it after which a purge or an erasure stops calling the hook (default
            16); see :class:`~chainlit_orm.layers.base.ChainlitLayer`.
        tracing: an OpenTelemetry span per call (``otel`` extra); None (default) follows
            ``CHAINLIT_ORM_TRACING``. See :mod:`chainlit_orm.tracing`.
        **engine_options: passed to ``create_async_engine`` (pool size, ``connect_args``, ...),
            except ``isolation_level``, which is refused with a
            :class:`~chainlit_orm.errors.ConfigurationError` (the connections are AUTOCOMMIT by
            design; set the default isolation on the server instead).

    Your own queries (a custom column, a report) run on :attr:`engine` over :meth:`table`:
    SQLAlchemy Core on the layer's own database and model set, so they cannot name a table or
    column the layer does not write (``docs/custom-models.md``, step 5)::

        threads = layer.table("thread")
        async with layer.engine.connect() as conn:
            rows = await conn.execute(sa.select(threads.c.name).where(threads.c.tenant == "acme"))
    """

    def __init__(
        self,
        url_or_engine: str | URL | AsyncEngine,
        storage: BaseStorageClient | None = None,
        *,
        models: ModelSet = DEFAULT_MODELS,
        thread_order: ThreadOrder = "activity",
        create_schema: bool | None = None,
        retries: int = 5,
        max_text_bytes: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        migrate_timeout: float = DEFAULT_MIGRATE_TIMEOUT,
        on_delete: OnDelete | None = None,
        soft_delete: timedelta | None = None,
        on_delete_timeout: float = DEFAULT_HOOK_TIMEOUT,
        on_delete_breaker: int = DEFAULT_HOOK_BREAKER,
        tracing: bool | None = None,
        **engine_options: Any,
    ) -> None:
        backend = SQLBackend(url_or_engine, models=models, retries=retries,
                             create_schema=create_schema, timeout=timeout,
                             connect_timeout=connect_timeout, migrate_timeout=migrate_timeout,
                             **engine_options)
        kwargs: dict[str, Any] = {}
        if max_text_bytes is not None:
            kwargs["max_text_bytes"] = max_text_bytes
        super().__init__(backend, storage=storage, thread_order=thread_order, timeout=timeout,
                         on_delete=on_delete, soft_delete=soft_delete,
                         on_delete_timeout=on_delete_timeout,
                         on_delete_breaker=on_delete_breaker, tracing=tracing, **kwargs)
        self.sql: SQLBackend = backend

    @property
    def engine(self) -> AsyncEngine:
        """The SQLAlchemy ``AsyncEngine`` of the layer's database, for queries of your own.

        The engine you passed, or the one the layer made from the URL (with the layer's
        connection options; a set's ``schema`` on SQLite/MySQL is translated away here as in
        the layer's own statements). Its connections are transactional (SQLAlchemy's default):
        ``engine.connect()`` for reads, ``engine.begin()`` for writes. :meth:`close` disposes of
        it when the layer made it."""
        return self.sql.engine

    def table(self, entity: str) -> sa.Table:
        """The SQLAlchemy ``Table`` the layer stores ``entity`` in (``user``, ``thread``,
        ``step``, ``element``, ``feedback``), custom columns, prefix and schema included: the
        layer's model set's (``layer.models.table(entity)``).

        Raises:
            InvalidInputError: ``entity`` is not one of the five.
        """
        if entity not in ENTITIES:
            raise InvalidInputError(
                f"no table for {entity!r}: the entities are {', '.join(ENTITIES)}", detail=entity)
        return self.models.table(entity)


# ------------------------------------------------------------------- helpers


_ELEMENT = "element__"  # label prefix of the element columns joined to a thread


def _erased_error(thread_id: str) -> NotFoundError:
    """What a write to a thread ``erase_user`` removed raises, whichever process erased it."""
    return NotFoundError(f"thread {thread_id} was erased with its user", detail=thread_id)


def _row_params(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The parameters of an n-row statement built with ``_upsert(..., rows=n)``."""
    return {f"{key}__{i}": value for i, row in enumerate(rows) for key, value in row.items()}


def _refuse_isolation_level(options: dict[str, Any]) -> None:
    """Refuse an ``isolation_level`` engine option (also one inside ``execution_options``).

    It was once dropped silently, so an app asking for SERIALIZABLE ran at the server's default
    without knowing. It cannot be honoured: the layer's connections are AUTOCOMMIT by design
    (a one-statement write needs no BEGIN/COMMIT round trips), and its few multi-statement writes
    open their own transactions, at the server's default level.

    Raises:
        ConfigurationError: the option is given; the message says what to do instead.
    """
    nested = options.get("execution_options") or {}
    if "isolation_level" in options or "isolation_level" in nested:
        raise ConfigurationError(f"the engine option {ISOLATION_LEVEL_REFUSED}",
                                 detail="isolation_level")


def _configure_transaction_pooler(connect_args: dict[str, Any]) -> None:
    """Connection arguments for a server behind a transaction-mode pooler (PgBouncer with
    ``pool_mode = transaction``), asked for by ``prepared_statement_cache_size=0`` in the URL.

    Why: the pooler hands each transaction (each statement, in autocommit) to whichever server
    connection is free, so a named prepared statement made on one is missing on the next
    (``prepared statement "__asyncpg_stmt_…__" does not exist``), or a name reused by another
    client already exists there. Two settings, one per path:

    * asyncpg's ``statement_cache_size=0``: the layer's own statements (:mod:`~chainlit_orm.
      layers.sqlexec`, every data call) then run as unnamed statements, which asyncpg parses
      again with each execution, so nothing outlives its round trip.
    * SQLAlchemy's path, used only by the queries SQLAlchemy makes on a new connection and by
      the schema check of the first call, always prepares a named statement
      (``prepared_statement_cache_size=0`` alone only stops it caching them). Both run in a
      transaction (the caller keeps the layer's engine out of AUTOCOMMIT), which the pooler
      keeps on one server connection; a unique name per statement keeps a statement left on
      that server connection from clashing with the next client's. Data calls never take this
      path: through PgBouncer 1.18 it failed about half of 400 concurrent autocommit calls.
    """
    connect_args.setdefault("statement_cache_size", 0)
    connect_args.setdefault("prepared_statement_name_func", _unique_statement_name)


def _unique_statement_name() -> str:
    """A prepared statement name no other client of the pooler's server connections uses."""
    return f"__clorm_{uuid.uuid4().hex}__"


def _sqlite_pool_size() -> int:
    """The default pool of a SQLite file: one writer plus a reader per core and one more,
    between 4 and 16."""
    return max(4, min(16, (os.cpu_count() or 2) + 2))


def _in_memory(url: URL) -> bool:
    database = url.database or ""
    return url.get_backend_name() == "sqlite" and (
        database in ("", ":memory:") or "mode=memory" in str(url.query))


def _driver_errors(dialect: str) -> tuple[type[Exception], ...]:
    """The base classes of the errors the dialect's driver raises."""
    if dialect == "postgresql":
        import asyncpg  # type: ignore[import-untyped]

        # InternalClientError: e.g. the server's "terminating connection" arrived while the
        # connection sat idle in the pool, and the protocol still waits for the end of it
        return (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)
    if dialect == "sqlite":
        import sqlite3

        return (sqlite3.Error,)
    import asyncmy.errors

    return (asyncmy.errors.MySQLError,)


_MY_SCHEMA = {1146, 1054, 1049}  # no such table, unknown column, unknown database
_MY_NULL = {1048, 1364}  # column cannot be null, field has no default
#: Values the server refuses (invalid input, not an outage): a CHECK constraint (MariaDB's JSON
#: columns are ``CHECK (json_valid(...))``: 4025), MariaDB's JSON errors (bad text, depth over 32,
#: bad path: 4036-4046), MySQL's (3140-3160, 3819), out of range, too long, incorrect values.
_MY_DATA = {4025, *range(4036, 4047), *range(3140, 3161), 3819, 1264, 1265, 1292, 1366, 1406}


def _classify(dialect: str, orig: BaseException) -> str:
    """What a driver error means: ``fk``, ``null``, ``conflict``, ``data``, ``schema``,
    ``transient``, ``unavailable``, ``pooler`` (a named prepared statement lost or clashing:
    a transaction-mode pooler without the URL flag) or ``other``. Works on the driver's own
    exceptions and on the ones SQLAlchemy's adapters wrap them in (same SQLSTATE, error number and
    class names)."""
    text = str(orig)
    names = {cls.__name__ for cls in type(orig).__mro__}
    if dialect == "postgresql":
        state = str(getattr(orig, "sqlstate", "") or "")
        if state == "23503":
            return "fk"
        if state == "23502":
            return "null"
        if state.startswith("23"):
            return "conflict"
        if state.startswith("22") or state in ("54000", "54001"):  # bad value; value too big
            return "data"
        if state in ("42P01", "42703", "3F000") or ("does not exist" in text and state[:2] == "42"):
            return "schema"
        if state in _PG_TRANSIENT:
            return "transient"
        if state in ("26000", "42P05"):  # prepared statement does not exist / already exists
            return "pooler"
        if state[:2] in ("08", "53", "57") or names & {
            "InterfaceError", "OperationalError", "InternalClientError"
        }:
            return "unavailable"
        return "other"
    if dialect == "sqlite":
        if "IntegrityError" in names:
            if "FOREIGN KEY constraint failed" in text:
                return "fk"
            return "null" if "NOT NULL" in text else "conflict"
        if "DataError" in names:
            return "data"
        if "no such table" in text or "no such column" in text or "has no column" in text:
            return "schema"
        if "database is locked" in text:
            return "transient"
        if "OperationalError" in names:
            return "unavailable"
        return "other"
    code = orig.args[0] if orig.args and isinstance(orig.args[0], int) else None
    if code in (1452, 1216):
        return "fk"
    if code in _MY_NULL:
        return "null"
    if code in _MY_DATA:
        return "data"
    if "IntegrityError" in names:
        return "conflict"
    if "DataError" in names:
        return "data"
    if code in _MY_SCHEMA:
        return "schema"
    if code in _MY_TRANSIENT:
        return "transient"
    if "OperationalError" in names or "InterfaceError" in names:
        return "unavailable"
    return "other"


def _cancelling() -> bool:
    """Whether the current task is being cancelled (its call's deadline passed, or its caller
    gave up): a retry would only run past it."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a shared task's failure as seen: each caller that awaited it got it raised, and
    the next call runs the task again."""
    if not task.cancelled():
        task.exception()


def _short(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return f"{type(orig).__name__}: {str(orig).splitlines()[0] if str(orig) else ''}"[:300]


def _looks_disconnected(orig: object) -> bool:
    text = f"{type(orig).__name__} {orig}".lower()
    return any(s in text for s in ("connection", "closed", "terminat", "lost", "reset", "broken"))


def _sqlite_merge(existing: str | None, patch: str) -> str:
    """Shallow metadata merge for SQLite, run inside the UPSERT (so it is atomic): keys of
    ``patch`` replace those of ``existing``; a key whose patch value is null is deleted."""
    base = json.loads(existing) if existing else {}
    if not isinstance(base, dict):
        base = {}
    for key, value in json.loads(patch).items():
        if value is None:
            base.pop(key, None)
        else:
            base[key] = value
    return json.dumps(base)


def _configure_sqlite(engine: AsyncEngine, *, autocommit: bool) -> None:
    """WAL, enforced foreign keys, the merge function, and ``BEGIN IMMEDIATE`` for transactions
    (a deferred transaction that later writes fails with "database is locked" under concurrency
    instead of waiting)."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in ("journal_mode=WAL", "foreign_keys=ON", "synchronous=NORMAL",
                       f"busy_timeout={SQLITE_BUSY_TIMEOUT * 1000}"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()
        dbapi_connection.create_function("chainlit_merge", 2, _sqlite_merge, deterministic=True)

    begin_immediate_on(engine, lambda conn: not autocommit and conn.get_execution_options().get(
        "isolation_level") != "AUTOCOMMIT")
