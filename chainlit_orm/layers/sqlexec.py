"""Run compiled SQLAlchemy Core statements on the pooled driver connection.

Why: SQLAlchemy compiles our statements, renders each dialect's SQL and gives the type processors
(JSON, UUID, timestamps, arrays); that is the part worth reusing. Its per-execution machinery
(execution context, cursor adaptation, result metadata, three thread hops per statement on
aiosqlite) costs about 0.5 ms per statement, which is more than a PostgreSQL round trip on
loopback. So each statement is compiled once into a :class:`Prepared` (SQL text, positional
parameter order, bind and result processors, all taken from SQLAlchemy's compiled object), and is
then run directly on the asyncpg / aiosqlite / asyncmy connection that SQLAlchemy's pool hands out.
The pool still owns connecting, recycling, ``pool_pre_ping`` and invalidation, and the connect
events (SQLite pragmas, asyncpg JSON codecs) still run, so a row reads back exactly as it would
through ``Connection.execute``.

Only the three drivers of :data:`chainlit_orm.urls.SUPPORTED_DRIVERS` are handled; each one is
driven through its public API, except aiosqlite's ``_execute`` for a SQLite transaction run in
one hop (:meth:`RawConnection.transaction_in_thread`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn

from chainlit_orm.errors import TimeoutExceededError
from chainlit_orm.layers.sqlite import BEGIN_IMMEDIATE

__all__ = ["Abandoned", "Prepared", "RawConnection", "RawPool", "Statement", "SyncConnection",
           "TxScript", "json_path", "prepare", "tracking_sent"]

logger = logging.getLogger(__name__)

#: What the backend call running in this context sent (see :func:`tracking_sent`): ``[statements
#: handed to the driver, rows fetched]``; None outside a tracked call.
_SENT: ContextVar[list[int] | None] = ContextVar("chainlit_orm_statement_sent", default=None)


@contextlib.contextmanager
def tracking_sent() -> Iterator[list[int]]:
    """Within the body, ``box[0]`` counts the statements (BEGIN included) handed to the driver
    and ``box[1]`` the rows fetched (on the event loop; a SQLite transaction run in its
    connection's thread counts its statements, not its rows).

    Why: after a failure, 0 statements means the write certainly did not reach the server
    (every attempt failed while connecting), so what it depended on (an uploaded file) can be
    undone; more means its outcome is unknown. Counted before the driver is called, so a
    statement that failed before it left the client still counts: the error is on the safe
    side. The counts are also what a tracing span reports (:mod:`chainlit_orm.tracing`), at no
    extra cost: the box exists for the first reason anyway."""
    box = [0, 0]
    token = _SENT.set(box)
    try:
        yield box
    finally:
        _SENT.reset(token)


def _mark_sent(statements: int = 1) -> None:
    box = _SENT.get()
    if box is not None:
        box[0] += statements


def _count_rows(rows: int) -> None:
    box = _SENT.get()
    if box is not None:
        box[1] += rows

_REQUIRED = object()
IDLE_REUSE = 30.0  # seconds a kept connection may sit idle before it goes back to the pool
StatementListener = Callable[[str], None]
T = TypeVar("T")
#: A transaction's statements, written once for every driver: a generator that yields
#: ``("execute", statement, params)`` (sent back: the changed row count) or
#: ``("fetch", statement, params)`` (sent back: the rows), and returns the result.
#: :meth:`RawConnection.run_transaction` runs it.
TxScript = Generator[tuple[str, "Statement", Mapping[str, Any]], Any, T]


@dataclass(frozen=True, slots=True)
class Prepared:
    """One statement compiled for one dialect: everything needed to run it without SQLAlchemy's
    execution path."""

    sql: str
    keys: tuple[str | None, ...]  # the caller's parameter key per position (None: a constant)
    defaults: tuple[Any, ...]  # the compiled-in value per position, or _REQUIRED
    bind: tuple[Callable[[Any], Any] | None, ...]
    columns: tuple[str, ...]
    result: tuple[tuple[int, Callable[[Any], Any]], ...]  # (column index, processor)
    word: str  # the statement's first keyword, for listeners

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        """Positional driver arguments for ``params`` (keys are the bind parameter names)."""
        out = []
        for key, default, proc in zip(self.keys, self.defaults, self.bind, strict=True):
            if key is None:
                value = default
            elif default is _REQUIRED:
                value = params[key]
            else:
                value = params.get(key, default)
            out.append(value if proc is None or value is None else proc(value))
        return out

    def rows(self, raw: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
        """Driver rows as dicts keyed by column label, through the result processors."""
        columns, procs = self.columns, self.result
        if not procs:
            return [dict(zip(columns, row, strict=True)) for row in raw]
        out = []
        for row in raw:
            values = list(row)
            for i, proc in procs:
                value = values[i]
                if value is not None:  # every processor here maps NULL to None
                    values[i] = proc(value)
            out.append(dict(zip(columns, values, strict=True)))
        return out


def prepare(
    stmt: Any, dialect: Dialect, translate: Mapping[str | None, str | None] | None
) -> Prepared:
    """Compile ``stmt`` once for ``dialect`` (schema names translated) into a :class:`Prepared`."""
    compiled: Any = stmt.compile(
        dialect=dialect,
        schema_translate_map=dict(translate) if translate else None,
        render_schema_translate=bool(translate),
    )
    if compiled.post_compile_params or compiled.literal_execute_params:
        raise AssertionError("expanding parameters are not supported; bind each value")
    if not compiled.positional:  # pragma: no cover - every supported driver is positional
        raise AssertionError(f"{dialect.name} uses a named paramstyle")
    by_name = {name: bp for bp, name in compiled.bind_names.items()}
    constants = compiled.construct_params(_check=False)
    processors = compiled._bind_processors  # the processors SQLAlchemy itself applies
    keys: list[str | None] = []
    defaults: list[Any] = []
    bind: list[Callable[[Any], Any] | None] = []
    for name in compiled.positiontup or ():
        bp = by_name[name]
        user_key = None if bp.key.startswith("%(") else bp.key  # "%(...)": an anonymous bind
        keys.append(user_key)
        if user_key is not None and (bp.required or bp.value is None) and bp.callable is None:
            defaults.append(_REQUIRED if bp.required else None)
        else:
            defaults.append(constants.get(name))
        bind.append(processors.get(name))
    columns: list[str] = []
    result: list[tuple[int, Callable[[Any], Any]]] = []
    for i, entry in enumerate(compiled._result_columns):
        columns.append(entry.keyname)
        proc = entry.type._cached_result_processor(dialect, None)
        if proc is not None:
            result.append((i, proc))
    text = compiled.string
    return Prepared(
        sql=text,
        keys=tuple(keys),
        defaults=tuple(defaults),
        bind=tuple(bind),
        columns=tuple(columns),
        result=tuple(result),
        word=(text.lstrip().split(None, 1) or ["?"])[0].upper(),
    )


class Statement:
    """A Core statement and its :class:`Prepared` form, compiled on first execution: by then the
    pool has connected, so the dialect knows the server (version-dependent features such as
    MariaDB's ``RETURNING``, the default schema a translated schema maps to)."""

    __slots__ = ("_prepared", "core", "dialect", "translate")

    def __init__(
        self, core: Any, dialect: Dialect, translate: Mapping[str | None, str | None] | None
    ) -> None:
        self.core = core
        self.dialect = dialect
        self.translate = translate
        self._prepared: Prepared | None = None

    @property
    def prepared(self) -> Prepared:
        p = self._prepared
        if p is None:
            p = self._prepared = prepare(self.core, self.dialect, self.translate)
        return p


class Abandoned(Exception):
    """Raised in a SQLite connection's thread when the caller of the transaction it runs has
    given up (its timeout, a cancellation): the transaction rolls back instead of going on."""


class SyncConnection:
    """The statements of :meth:`RawConnection.transaction_in_thread`, run synchronously on the
    sqlite3 connection in its own thread (the words are reported to the listeners after)."""

    __slots__ = ("_abandoned", "_raw", "_words")

    def __init__(self, raw: Any, words: list[str], abandoned: list[bool] | None = None) -> None:
        self._raw = raw
        self._words = words
        self._abandoned = abandoned or [False]

    def _run(self, stmt: Statement, params: Mapping[str, Any]) -> tuple[Prepared, Any]:
        if self._abandoned[0]:
            raise Abandoned
        p = stmt.prepared
        self._words.append(p.word)
        return p, self._raw.execute(p.sql, p.args(params))

    def execute(self, stmt: Statement, params: Mapping[str, Any]) -> int:
        """Run a statement that returns no rows; the number of rows it changed."""
        count: int = self._run(stmt, params)[1].rowcount
        return count

    def fetch(self, stmt: Statement, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Rows of a statement that returns rows."""
        p, cursor = self._run(stmt, params)
        return p.rows(cursor.fetchall())

    def run(self, steps: TxScript[T]) -> T:
        """A :data:`TxScript`'s statements, one after the other; its result."""
        sent: Any = None
        while True:
            try:
                kind, stmt, params = steps.send(sent)
            except StopIteration as done:
                result: T = done.value
                return result
            sent = self.fetch(stmt, params) if kind == "fetch" else self.execute(stmt, params)


class RawConnection:
    """A pooled driver connection with the operations the backend needs: fetch rows, execute for
    a row count, run a transaction. Statement listeners see every statement, BEGIN and COMMIT."""

    def __init__(self, driver: Any, dialect: str, listeners: list[StatementListener],
                 generation: int = 0) -> None:
        self.driver = driver
        self.dialect = dialect
        self.listeners = listeners
        #: the pool's generation when this connection was checked out (:class:`RawPool`)
        self.generation = generation

    def known_closed(self) -> bool:
        """Whether the driver already knows the connection is gone, without a round trip:
        asyncpg reads the server's close (a terminated backend, a restart, a cut) as soon as it
        arrives, even while the connection sits idle. asyncmy and aiosqlite only learn it on
        the next use, which then fails and is retried."""
        return self.dialect == "postgresql" and bool(self.driver.is_closed())

    def _notify(self, word: str) -> None:
        for listener in self.listeners:
            listener(word)

    def _start(self, stmt: Statement, params: Mapping[str, Any]) -> tuple[Prepared, list[Any]]:
        """The compiled form and driver arguments of a statement about to run (listeners told)."""
        p = stmt.prepared
        _mark_sent()
        if self.listeners:
            self._notify(p.word)
        return p, p.args(params)

    async def fetch(self, stmt: Statement, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Rows of a statement that returns rows (SELECT, or a write with RETURNING)."""
        p, args = self._start(stmt, params)
        d = self.driver
        if self.dialect == "postgresql":
            raw: Sequence[Sequence[Any]] = await d.fetch(p.sql, *args)
        elif self.dialect == "sqlite":
            raw = await d.execute_fetchall(p.sql, args)
        else:
            async with d.cursor() as cur:
                await cur.execute(p.sql, args)
                raw = await cur.fetchall()
        _count_rows(len(raw))
        return p.rows(raw)

    async def fetch_pair(self, first: Statement, second: Statement, params: Mapping[str, Any]
                         ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Rows of ``first``, then, only if it returned any, rows of ``second`` (both with
        ``params``; ``([], [])`` otherwise).

        Why: on SQLite both statements run in one call to the connection's thread, one hop
        instead of two (a thread and its steps: the floor of issue 19 reads them in one hop).
        Elsewhere they are awaited one after the other, as two fetches would be."""
        if not (self.dialect == "sqlite" and self.runs_in_thread):
            head = await self.fetch(first, params)
            return (head, await self.fetch(second, params)) if head else (head, [])
        p1, args1 = self._start(first, params)
        p2 = second.prepared
        args2 = p2.args(params)
        driver = self.driver
        second_sent = [False]  # set in the thread, read here once the call is over

        def run() -> tuple[list[Any], list[Any] | None]:
            raw = driver._conn  # the sqlite3 connection, used only in its own thread
            head = raw.execute(p1.sql, args1).fetchall()
            if not head:
                return head, None
            second_sent[0] = True
            return head, raw.execute(p2.sql, args2).fetchall()

        try:
            head, rest = await driver._execute(run)
        finally:
            if second_sent[0] and self.listeners:
                self._notify(p2.word)
        if rest is None:
            return p1.rows(head), []
        return p1.rows(head), p2.rows(rest)

    async def execute(self, stmt: Statement, params: Mapping[str, Any]) -> int:
        """Run a statement that returns no rows; the number of rows it changed."""
        p, args = self._start(stmt, params)
        d = self.driver
        if self.dialect == "postgresql":
            status: str = await d.execute(p.sql, *args)
            tail = status.rpartition(" ")[2]
            return int(tail) if tail.isdigit() else 0
        if self.dialect == "sqlite":
            # the cursor of a statement that returns no rows holds nothing: not closing it saves a
            # thread hop per write
            cursor = await d.execute(p.sql, args)
            count: int = cursor.rowcount
            return count
        async with d.cursor() as cur:
            return int(await cur.execute(p.sql, args))

    async def _command(self, sql: str) -> None:
        _mark_sent()
        if self.listeners:
            self._notify(sql.split()[0])
        if self.dialect == "postgresql":
            await self.driver.execute(sql)
        elif self.dialect == "sqlite":
            await self.driver.execute(sql)  # no rows: the cursor need not be closed (a hop)
        else:
            async with self.driver.cursor() as cur:
                await cur.execute(sql)

    async def run_transaction(self, script: Callable[[], TxScript[T]]) -> T:
        """``script``'s statements in one transaction (ROLLBACK on any error); its result.

        On SQLite the whole transaction runs in the connection's thread, in one hop
        (:meth:`transaction_in_thread`); elsewhere each statement is awaited between BEGIN and
        COMMIT. The statements are the same either way, written once in ``script``.
        """
        if self.runs_in_thread:
            return await self.transaction_in_thread(lambda sync: sync.run(script()))
        async with self.transaction():
            steps = script()
            sent: Any = None
            while True:
                try:
                    kind, stmt, params = steps.send(sent)
                except StopIteration as done:
                    result: T = done.value
                    return result
                sent = await (self.fetch(stmt, params) if kind == "fetch"
                              else self.execute(stmt, params))

    @property
    def runs_in_thread(self) -> bool:
        """Whether :meth:`transaction_in_thread` is available (aiosqlite connections)."""
        return self.dialect == "sqlite" and callable(getattr(self.driver, "_execute", None))

    async def transaction_in_thread(self, body: Callable[[SyncConnection], T]) -> T:
        """SQLite: BEGIN IMMEDIATE, ``body``, COMMIT (ROLLBACK on any error), all in the
        connection's own worker thread, in one hop.

        Why: aiosqlite runs each call in the connection's thread; a hop there and back costs
        65-85 us (thread wake-up, the loop's self-pipe), while SQLite runs one of our upserts in
        about 26 us. A user message is a transaction of 2 statements: 4 hops one by one, 1 here.
        ``body`` gets a :class:`SyncConnection` (``execute`` and ``fetch``, synchronous); it
        must not block on anything but SQLite. This uses aiosqlite's ``_execute`` (how its own
        public methods run; the one private name used here, ``runs_in_thread`` checks it).

        A caller that gives up while the thread still waits (for another process's write lock,
        in SQLite's busy handler, which nothing interrupts) sets ``abandoned``: the thread then
        rolls back at its next statement or before COMMIT, instead of writing what its caller
        was told failed. (Past the last check, the COMMIT lands: a timed-out write may or may
        not have taken effect, as documented.)
        """
        words: list[str] = []
        driver = self.driver
        abandoned = [False]  # set on the loop, read in the thread (a list item: atomic)

        def run() -> T:
            raw = driver._conn  # the sqlite3 connection, used only in its own thread
            words.append("BEGIN")
            raw.execute(BEGIN_IMMEDIATE)
            try:
                result = body(SyncConnection(raw, words, abandoned))
                if abandoned[0]:
                    raise Abandoned
            except BaseException:
                with contextlib.suppress(Exception):  # the error that got us here is raised
                    raw.execute("ROLLBACK")
                words.append("ROLLBACK")
                raise
            raw.execute("COMMIT")
            words.append("COMMIT")
            return result

        _mark_sent()
        try:
            result: T = await driver._execute(run)
        except BaseException:
            abandoned[0] = True
            raise
        finally:
            _mark_sent(max(len(words) - 1, 0))  # the statements of the thread (one counted above)
            if self.listeners:
                for word in words:
                    self._notify(word)
        return result

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[RawConnection]:
        """BEGIN (``BEGIN IMMEDIATE`` on SQLite: a deferred transaction that later writes fails
        with "database is locked" instead of waiting) ... COMMIT, or ROLLBACK on any error."""
        await self._command(BEGIN_IMMEDIATE if self.dialect == "sqlite" else "BEGIN")
        try:
            yield self
        except BaseException:
            with contextlib.suppress(Exception):  # the error that got us here is raised instead
                await self._command("ROLLBACK")
            raise
        await self._command("COMMIT")


class RawPool:
    """Checks driver connections out of an engine's pool, in autocommit mode.

    **Generations.** After a restart, a failover or a middlebox's idle timeout, every connection
    opened before it is dead, and the pool must not hand them out one failed call at a time. So
    the pool counts generations; a connection belongs to the generation that was current when it
    was checked out. The first disconnect error of the current generation (or a kept connection
    the driver already knows is closed) ends it: that connection and every kept idle one are
    discarded at once, the ones in use are discarded when they come back, and SQLAlchemy's pool
    recycles the ones it holds on their next checkout (its pool-wide invalidation, what SQLAlchemy
    itself does on a disconnect). A failure of a connection of an ended generation discards only
    that connection. The caller's retry (:meth:`SQLBackend._run`) then runs on a fresh connection.
    Nothing is added to the healthy path: no ping, no statement.

    **Interrupted connections.** A statement cancelled mid-flight (the call's timeout, a cancelled
    task) can leave the driver mid-protocol, so its connection is never handed out again. It is
    closed in the background, so the caller's error is not delayed: asyncpg gets to send its
    cancel request (the server stops the statement), and a SQLite connection's thread, which
    cannot be stopped from outside, finishes what it runs first (it is asked to stop with
    ``sqlite3.Connection.interrupt``). Until it is closed the connection keeps its slot of the
    pool's capacity (and no new SQLite writer is opened): it is out of the pool. A SQLite
    connection shared by other callers at that moment is not interrupted (see
    :class:`_SharedLease`, :class:`_WriterLease`).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        dialect: str,
        disconnect: Callable[[BaseException], bool],
        *,
        keep_idle: bool = False,
        capacity: int = 16,
        connect_timeout: float = 10.0,
        shared_readers: int = 0,
    ) -> None:
        self.engine = engine
        self.dialect = dialect
        self.disconnect = disconnect
        self.connect_timeout = connect_timeout
        # Connections of the layer's own engine that were used in the last IDLE_REUSE seconds are
        # kept here, checked out, instead of going back to SQLAlchemy's pool: a checkout and a
        # check-in through the pool take two greenlet switches and the pool's bookkeeping, a
        # noticeable part of a one-row statement (bench/results/design.md D6). One idle longer
        # goes back to the pool, which recycles (and pre-pings, if asked) on its next checkout.
        # A borrowed engine's pool is shared, so nothing is kept from it. Callers then wait for
        # a connection here, on a semaphore of the pool's capacity, not inside the pool (which
        # would never see the connections kept here come back).
        self._keep_idle = keep_idle
        self._idle: list[tuple[Any, RawConnection, float]] = []
        self._capacity = max(1, capacity)
        self._slots: asyncio.Semaphore | None = None
        self.listeners: list[StatementListener] = []
        self.generation = 0
        self._retiring: set[asyncio.Task[None]] = set()
        self._write_lock: asyncio.Lock | None = None
        self._writer: Any = None  # SQLite: the pooled connection all writes share, while held
        self._writer_restore: Any = None
        self._writer_state: _Shared | None = None  # the writer and its calls in flight
        #: set while an interrupted writer is being closed: no new writer is opened until then
        self._writer_gone: asyncio.Event | None = None
        # SQLite, the layer's own engine: reads share up to this many connections, each serving
        # any number of callers at once (see :class:`_SharedLease`); 0: one caller per connection
        self._shared_readers = shared_readers if dialect == "sqlite" and keep_idle else 0
        self._shared: list[_Shared] = []
        self._open_lock: asyncio.Lock | None = None

    def connect(self, *, write: bool = False) -> contextlib.AbstractAsyncContextManager[
            RawConnection]:
        """A pooled connection; see the class docstring for what happens to one that fails.

        ``write=True`` on SQLite gives the one connection all writes share (held out of the pool
        until :meth:`close`): SQLite has one writer, and writers that meet in the database wait
        in its busy handler, which sleeps in steps of milliseconds; queued on the writer's
        thread (:class:`_WriterLease`), the next write starts the moment the last one commits.
        (Writers in other processes still meet in the busy handler.) A read on SQLite shares
        one of ``shared_readers`` connections with the other reads (:class:`_SharedLease`)."""
        if write and self.dialect == "sqlite":
            return self._connect_writer()
        if self._shared_readers:
            return _SharedLease(self)
        if self._keep_idle:
            return _KeptLease(self)
        return self._connect_borrowed()

    async def _checkout(self) -> Any:
        """A connection from SQLAlchemy's pool; one it must open is opened within
        ``connect_timeout`` (TCP, TLS, authentication and the dialect's first queries)."""
        try:
            async with asyncio.timeout(self.connect_timeout):
                return await self.engine.raw_connection()
        except TimeoutError as exc:
            raise TimeoutExceededError(
                f"no database connection within connect_timeout={self.connect_timeout:g} s"
            ) from exc

    def _connect_writer(self) -> _WriterLease:
        return _WriterLease(self)

    async def _open_writer(self) -> _Shared:
        """The writer all writes share, opened under the write lock if there is none; while an
        interrupted writer is being closed (``_writer_gone``), no new one is opened."""
        lock = self._write_lock
        if lock is None:
            lock = self._write_lock = asyncio.Lock()
        async with lock:
            while self._writer_state is None:
                gone = self._writer_gone
                if gone is not None:
                    await gone.wait()
                    continue
                fairy: Any = await self._checkout()
                self._writer_restore = await self._autocommit(fairy.driver_connection)
                self._writer = fairy
                self._writer_state = _Shared(fairy, RawConnection(
                    fairy.driver_connection, self.dialect, self.listeners))
            return self._writer_state

    def _drop_writer(self, writer: _Shared) -> None:
        """No new write gets ``writer``."""
        if self._writer_state is writer:
            self._writer_state = None
            self._writer = None
        writer.closing = True

    def _fail(self, fairy: Any, generation: int, exc: BaseException | None) -> None:
        """``fairy`` failed with a disconnect error, or is known to be closed: discard it, and
        end its generation if it is the current one (see the class docstring)."""
        if generation == self.generation:
            self.generation += 1
            # SQLAlchemy's pool-wide invalidation (what it runs itself on a disconnect error or a
            # failed pre-ping): the connections it holds that were opened before now are
            # recycled on their next checkout
            self.engine.sync_engine.pool._invalidate(fairy, exc, _checkin=False)
            stale, self._idle = self._idle, []
            for old, _, _ in stale:
                _discard(old, exc)
        _discard(fairy, exc)

    def _retire(self, fairy: Any, exc: BaseException, release: Callable[[], None] | None
                ) -> None:
        """Close an interrupted connection in the background; ``release`` (its slot, the write
        lock) is called once it is closed."""
        if self.dialect == "sqlite":
            raw = getattr(fairy.driver_connection, "_connection", None)  # sqlite3's connection
            if raw is not None:
                # documented as callable from any thread: aborts the statement the
                # connection's thread is running, so the thread is free sooner
                raw.interrupt()
        task = asyncio.get_running_loop().create_task(self._close_retired(fairy, exc, release))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _close_retired(self, fairy: Any, exc: BaseException,
                             release: Callable[[], None] | None) -> None:
        try:
            if self.dialect == "sqlite":
                # the close is queued behind what the connection's thread runs: it returns
                # once the thread is done with it
                await greenlet_spawn(fairy.invalidate, exc)
            else:
                try:
                    async with asyncio.timeout(self.connect_timeout):
                        # a graceful close: asyncpg first sends the cancel request for the
                        # interrupted statement
                        await greenlet_spawn(fairy.invalidate, exc)
                except TimeoutError:
                    pass  # SQLAlchemy's terminate() closed it forcibly when cut short
            await greenlet_spawn(fairy.close)
        except Exception as err:  # a close: the connection is being thrown away anyway
            logger.debug("error while closing an interrupted connection: %r", err)
        finally:
            if release is not None:
                release()

    async def settle(self) -> None:
        """Wait until every interrupted connection is closed and out of the pool."""
        while self._retiring:
            await asyncio.wait(set(self._retiring))

    async def close(self) -> None:
        """Give the kept and held connections back to the pool (before the engine is
        disposed), once the interrupted ones are closed."""
        idle, self._idle = self._idle, []
        for fairy, _, _ in idle:
            await greenlet_spawn(fairy.close)
        shared, self._shared = self._shared, []
        for reader in shared:
            if reader.close_once():
                await greenlet_spawn(reader.fairy.close)
        await self.settle()
        if self._write_lock is None:
            await self._release_writer()
            return
        async with self._write_lock:
            await self._release_writer()

    async def _release_writer(self) -> None:
        fairy, self._writer = self._writer, None
        self._writer_state = None
        if fairy is None:
            return
        await self._restore(fairy.driver_connection, self._writer_restore)
        await greenlet_spawn(fairy.close)

    async def _shared_reader(self) -> _Shared:
        """The shared reader with the fewest calls in flight; one more is opened (one at a
        time) while every open one is busy and fewer than ``shared_readers`` are open."""
        best: _Shared | None = None
        for reader in self._shared:
            if best is None or reader.inflight < best.inflight:
                best = reader
        if best is not None and (best.inflight == 0 or len(self._shared) >= self._shared_readers):
            return best
        lock = self._open_lock
        if lock is None:
            lock = self._open_lock = asyncio.Lock()
        async with lock:
            if len(self._shared) < self._shared_readers:
                fairy = await self._checkout()
                reader = _Shared(fairy, RawConnection(fairy.driver_connection, self.dialect,
                                                      self.listeners, self.generation))
                self._shared.append(reader)
                return reader
        return min(self._shared, key=lambda r: r.inflight)

    def _unlist(self, reader: _Shared, exc: BaseException | None) -> None:
        """No new call gets ``reader``; it is discarded once its calls in flight are done."""
        if reader in self._shared:
            self._shared.remove(reader)
        reader.closing = True
        if reader.inflight == 0 and reader.close_once():
            _discard(reader.fairy, exc)

    def _fail_shared(self, reader: _Shared, exc: BaseException) -> None:
        """:meth:`_fail` for a shared reader: its generation ends (if it is the current one),
        and every shared reader of it is discarded once its calls in flight are done."""
        if reader.conn.generation == self.generation:
            self.generation += 1
            self.engine.sync_engine.pool._invalidate(reader.fairy, exc, _checkin=False)
            for other in list(self._shared):
                self._unlist(other, exc)
        self._unlist(reader, exc)

    @contextlib.asynccontextmanager
    async def _connect_borrowed(self) -> AsyncIterator[RawConnection]:
        """A connection of a borrowed engine: from its pool and back, autocommit while lent."""
        fairy: Any = await self._checkout()
        generation = self.generation
        driver = fairy.driver_connection
        restore = None
        try:
            restore = await self._autocommit(driver)
            yield RawConnection(driver, self.dialect, self.listeners, generation)
        except BaseException as exc:
            if not isinstance(exc, Exception):
                self._retire(fairy, exc, None)
            elif self.disconnect(exc):
                self._fail(fairy, generation, exc)
            else:
                await self._restore(driver, restore)
                await greenlet_spawn(fairy.close)
            raise
        await self._restore(driver, restore)
        await greenlet_spawn(fairy.close)

    async def _take_kept(self) -> tuple[Any, RawConnection]:
        """A kept connection used within IDLE_REUSE seconds (the latest first), or one from the
        pool; older kept ones go back to the pool, and one the driver knows is closed ends its
        generation."""
        now = time.monotonic()
        while self._idle:
            fairy, conn, since = self._idle.pop()
            if conn.known_closed():
                self._fail(fairy, conn.generation, None)
            elif now - since < IDLE_REUSE:
                return fairy, conn
            else:
                await greenlet_spawn(fairy.close)
        fairy = await self._checkout()
        return fairy, RawConnection(fairy.driver_connection, self.dialect, self.listeners,
                                    self.generation)

    async def _autocommit(self, driver: Any) -> Any:
        """Put a connection of a shared (borrowed) engine into autocommit; returns what to
        restore. The layer's own AUTOCOMMIT engine's connections are already there."""
        if self.dialect == "sqlite":
            if driver.isolation_level is not None:
                previous = driver.isolation_level
                driver.isolation_level = None
                return previous
        elif self.dialect != "postgresql" and not driver.get_autocommit():
            await driver.autocommit(True)
            return False
        return None

    async def _restore(self, driver: Any, restore: Any) -> None:
        if restore is None:
            return
        if self.dialect == "sqlite":
            driver.isolation_level = restore
        else:
            await driver.autocommit(False)


def _discard(fairy: Any, exc: BaseException | None) -> None:
    """Close a connection that must not be used again, without waiting on the network: called
    outside a greenlet, SQLAlchemy's invalidation terminates the driver connection at once
    (asyncpg's ``terminate()``, asyncmy's ``close()``, aiosqlite's ``stop()``) and checks the
    fairy back in as a record without a connection."""
    fairy.invalidate(exc)


class _KeptLease:
    """``async with pool.connect()`` on the layer's own engine: a slot of the pool's capacity,
    then a kept connection, given back to the kept list, or discarded (a disconnect error, an
    ended generation) or retired (an interruption); see :class:`RawPool`.

    Why a class and not a generator context manager: this runs around every statement, and
    the three nested generator managers it replaced cost about 6 us per use (each one an async
    generator registered with the loop), as much as a tenth of a short read. The driver
    connection's :class:`RawConnection` is kept with it for the same reason.
    """

    __slots__ = ("_conn", "_fairy", "_pool")

    def __init__(self, pool: RawPool) -> None:
        self._pool = pool
        self._fairy: Any = None
        self._conn: RawConnection | None = None

    async def __aenter__(self) -> RawConnection:
        pool = self._pool
        slots = pool._slots
        if slots is None:
            slots = pool._slots = asyncio.Semaphore(pool._capacity)
        await slots.acquire()
        try:
            self._fairy, conn = await pool._take_kept()
        except BaseException:
            slots.release()
            raise
        self._conn = conn
        return conn

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        pool, fairy, conn = self._pool, self._fairy, self._conn
        self._fairy = self._conn = None
        slots = pool._slots
        assert slots is not None and conn is not None
        if exc is not None and not isinstance(exc, Exception):
            pool._retire(fairy, exc, slots.release)  # the slot is released once it is closed
            return
        try:
            if exc is not None and pool.disconnect(exc):
                pool._fail(fairy, conn.generation, exc)
            elif conn.generation != pool.generation:
                _discard(fairy, None)  # opened before a failure: its generation is over
            else:
                pool._idle.append((fairy, conn, time.monotonic()))
        finally:
            slots.release()


class _Shared:
    """A SQLite connection that serves several callers at once, and how many it serves now:
    a reader (:class:`_SharedLease`) or the writer (:class:`_WriterLease`)."""

    __slots__ = ("closed", "closing", "conn", "fairy", "inflight")

    def __init__(self, fairy: Any, conn: RawConnection) -> None:
        self.fairy = fairy
        self.conn = conn
        self.inflight = 0
        self.closing = False  # no new caller gets it; closed once ``inflight`` is 0
        self.closed = False

    def close_once(self) -> bool:
        """True the first time only: whoever gets True closes the connection."""
        first, self.closed = not self.closed, True
        return first


class _WriterLease:
    """``async with pool.connect(write=True)`` on SQLite: the one writer connection, shared by
    every write at once.

    Why no lock around the write: every write on SQLite is one call to the writer's thread (a
    statement in autocommit, or a whole transaction in one hop:
    :meth:`RawConnection.transaction_in_thread`), and aiosqlite runs a connection's calls in the
    order they were made, one after the other. So writes need no asyncio lock to take turns:
    they queue on the writer's thread, which finds the next one waiting the moment the last one
    commits, instead of sleeping while the event loop hands a lock to the next writer and that
    writer builds its statement (the bench's W1 at 32 concurrent writers: the writer's thread
    was idle most of the time). A write made of several calls (a step whose thread is created
    on the way) may have other writes between its calls; each call is atomic and every write
    is an idempotent upsert, as on the servers, where writes run side by side.

    A write interrupted (its timeout, a cancellation) while others share the writer leaves
    what it sent to run: a transaction checks that its caller is still there before each
    statement and before COMMIT (``abandoned``), and rolls back otherwise. Alone on it, the
    writer is retired as before: closed in the background, and no new writer is opened until
    it is (its thread may still hold SQLite's write lock, waiting for another process's).
    """

    __slots__ = ("_pool", "_writer")

    def __init__(self, pool: RawPool) -> None:
        self._pool = pool
        self._writer: _Shared | None = None

    async def __aenter__(self) -> RawConnection:
        pool = self._pool
        writer = pool._writer_state
        if writer is None:
            writer = await pool._open_writer()
        writer.inflight += 1
        self._writer = writer
        return writer.conn

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        pool, writer = self._pool, self._writer
        self._writer = None
        assert writer is not None
        writer.inflight -= 1
        if exc is not None and not isinstance(exc, Exception):
            if writer.inflight == 0 and not writer.closing:
                pool._drop_writer(writer)
                if writer.close_once():
                    gone = pool._writer_gone = asyncio.Event()

                    def closed() -> None:
                        pool._writer_gone = None
                        gone.set()

                    pool._retire(writer.fairy, exc, closed)
                return
        elif exc is not None and pool.disconnect(exc):
            pool._drop_writer(writer)
        if writer.closing and writer.inflight == 0 and writer.close_once():
            _discard(writer.fairy, exc)


class _SharedLease:
    """``async with pool.connect()`` for a read on SQLite (the layer's own engine): one of a few
    reader connections, shared by every reader at once.

    Why: aiosqlite runs a connection's calls one after the other on its own thread. With one
    caller per connection, a thread runs one statement, wakes the event loop and sleeps until
    its next caller has been scheduled, so under 32 concurrent users every statement pays a
    thread wake-up on both sides and the threads sit idle in between (on 2 cores, the bench's
    W5 mix ran at a third of one raw connection serving everyone). Shared, a thread finds the
    next statement already queued, and the loop collects several results per wake-up. Every
    read is autocommit statements (no transaction is ever opened on a reader), so callers
    sharing a connection see what they would see on connections of their own.

    A caller interrupted (its timeout, a cancellation) while others share its connection
    leaves what it sent to run (its result is dropped): interrupting the connection could stop
    another caller's statement. Alone on it, the connection is retired as in :class:`RawPool`.
    A disconnect error ends the generation: no new caller gets these connections, and each is
    discarded once its calls in flight are done.
    """

    __slots__ = ("_pool", "_reader")

    def __init__(self, pool: RawPool) -> None:
        self._pool = pool
        self._reader: _Shared | None = None

    async def __aenter__(self) -> RawConnection:
        reader = await self._pool._shared_reader()
        reader.inflight += 1
        self._reader = reader
        return reader.conn

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        pool, reader = self._pool, self._reader
        self._reader = None
        assert reader is not None
        reader.inflight -= 1
        if exc is not None and not isinstance(exc, Exception):
            if reader.inflight == 0 and not reader.closing:
                # alone on it: interrupted mid-statement, it is retired (closed in the
                # background, its thread asked to stop)
                if reader in pool._shared:
                    pool._shared.remove(reader)
                reader.closing = True
                if reader.close_once():
                    pool._retire(reader.fairy, exc, None)
                return
        elif exc is not None and pool.disconnect(exc):
            pool._fail_shared(reader, exc)
        elif reader.conn.generation != pool.generation:
            pool._unlist(reader, None)  # opened before a failure: its generation is over
        if reader.closing and reader.inflight == 0 and reader.close_once():
            _discard(reader.fairy, exc)


def json_path(key: str) -> str:
    """A MySQL/MariaDB JSON path for one top-level key, quoted so any key is literal.

    The key is escaped as a JSON string (MariaDB refuses a raw control character in a path, and
    matches escaped and raw keys alike), and a leading ``-`` is written ``\\u002d``: MariaDB
    refuses ``$."-..."`` even quoted (error 4042)."""
    body = json.dumps(key, ensure_ascii=False)[1:-1]
    if body.startswith("-"):
        body = "\\u002d" + body[1:]
    return '$."' + body + '"'
