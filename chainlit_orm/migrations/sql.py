"""Create or upgrade a live database to the schema a model set describes: ``chainlit-orm migrate``.

Why it works the way it does:

* **Drop-in for Chainlit's databases.** A database created from Chainlit's documented DDL (either
  the current docs variant or the older one with ``"disableFeedback"``) already has our table and
  column names, so upgrading it only *adds*: missing tables, columns, indexes and the version
  record. Nothing is dropped, no type is changed, and no foreign key is added to an existing table
  (the older variant has none, and orphan rows would make adding one fail). Three exceptions, each
  needed for the layer to work on such a database, are named and reported:

  a. ``NOT NULL`` is relaxed on columns the models do not have and that have no server default
     (the older variant's ``"disableFeedback" BOOLEAN NOT NULL`` would fail every step insert);
  b. new columns whose value can be derived are backfilled in batches (``threads."activityAt"``
     from the thread's latest ``user_message``; ``steps.favorite`` and custom
     :func:`~chainlit_orm.models.modelset.metadata_column` fields from the row's metadata; the
     case-folded search copies ``threads."nameFolded"`` and ``steps."outputFolded"`` from the text
     they fold; each with the same code the layer writes them with), leaving values already
     present alone;
  c. where Chainlit's layer left several feedback rows for one step, the unique feedback-per-step
     index is not built silently: migrate refuses, listing them, before changing anything; with
     ``dedupe_feedback=True`` it keeps one row per step (see :func:`_dedupe_feedback`);
  d. on MySQL/MariaDB, a ``VARCHAR`` the models give a binary collation (``users.identifier``)
     that an older schema left case-insensitive is changed to it: there "Alice" and "alice" were
     one user. Values unique case-insensitively stay unique, so the change cannot fail on them.

* **Alembic's machinery, not hand-written DDL.** The comparison is Alembic's ``compare_metadata``
  (filtered to the additive operations above) plus a reflection of the existing tables, and every
  change is an :class:`alembic.operations.Operations` call (batch mode, which SQLite needs to relax
  ``NOT NULL``). The same calls run twice: first against an offline ``as_sql`` migration context,
  which renders the exact statements (for ``dry_run`` and for the report), then, unless it is a
  dry run, against the live connection.

* **Existing indexes are found by what they do.** Chainlit's DDL has no indexes beyond the keys,
  but a user may already have created one under another name; an index (or unique constraint)
  over the same columns in the same order, unique if ours is, counts as ours.

* **Online on a server, one transaction on SQLite.** PostgreSQL and MySQL/MariaDB are migrated
  while the app writes (:func:`_migrate_online`): each DDL statement in a short transaction of
  its own, waiting at most :data:`LOCK_TIMEOUT` for its table lock and retried, indexes on
  existing tables built ``CONCURRENTLY`` / ``ALGORITHM=INPLACE, LOCK=NONE``, backfills committed
  per batch. Every step is planned from what the database has and the version is recorded last,
  so a migration stopped anywhere is finished by running it again (an index an interrupted
  concurrent build left INVALID is dropped and built again). SQLite has one writer: its
  migration is one ``BEGIN IMMEDIATE`` transaction, and a failure leaves it as it was.

* **One at a time** (:mod:`.lock`): concurrent migrations take turns on a lock, and the layer's
  first-use check waits for a running one.

* **Search indexes last** (:mod:`chainlit_orm.schema_gen.search`), after the backfills they
  index: PostgreSQL's ``pg_trgm`` extension (checked first: a role that may not create it gets a
  :class:`~chainlit_orm.errors.SchemaError` naming the fix, before anything changed) and its GIN
  indexes; SQLite's FTS5 tables and triggers, rebuilt from the table whenever it was created or
  rewritten (a batch copy gives rows new rowids). MySQL/MariaDB have none.

* **Recorded in our own table** (``models.version_table``, one per table prefix, in the set's
  schema), never in ``alembic_version``, which belongs to the app's own Alembic if it has one:
  one row per migration that changed something, with what it added and the model set's
  fingerprint (the schema history, :func:`schema_history_sql`).
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.operations import Operations
from alembic.operations.ops import CreateTableOp
from alembic.runtime.migration import MigrationContext
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool
from sqlalchemy.schema import CreateIndex, CreateSchema, ExecutableDDLElement

from chainlit_orm.errors import (
    BackendUnavailableError,
    ConfigurationError,
    InvalidInputError,
    MigrationLockError,
    SchemaError,
    SchemaOutdatedError,
    mask_url,
)
from chainlit_orm.layers.pooler import PoolerProbe, direct_migrate_command
from chainlit_orm.layers.sqlite import BEGIN_IMMEDIATE, SQLITE_BUSY_TIMEOUT, begin_immediate_on
from chainlit_orm.migrations.lock import (
    LockState,
    release_transaction_lock,
    session_lock,
    transaction_lock,
)
from chainlit_orm.migrations.report import HistoryEntry, MigrationReport, fingerprint
from chainlit_orm.models.convert import to_row
from chainlit_orm.models.modelset import ENTITIES, FROM_METADATA, ModelSet
from chainlit_orm.models.rules import USER_MESSAGE
from chainlit_orm.models.search import FOLDED_FROM, FOLDED_TYPES, folded_values
from chainlit_orm.models.types import format_timestamp, parse_timestamp, utc_now
from chainlit_orm.retry import RetryPolicy
from chainlit_orm.schema_gen import SCHEMA_VERSION, tables_for_dialect
from chainlit_orm.schema_gen.search import (
    PG_EXTENSION,
    SearchIndex,
    fts_drop_trigger,
    fts_legacy_trigger_names,
    fts_pending_clear,
    fts_pending_name,
    fts_pending_table,
    fts_rebuild,
    fts_table,
    fts_trigger_names,
    fts_triggers,
    gin_index,
    pg_extension,
    search_indexes,
)
from chainlit_orm.urls import SQLURL

__all__ = ["BATCH_SIZE", "LOCK_ATTEMPTS", "LOCK_TIMEOUT", "ensure_schema",
           "migrate_sql", "schema_history_sql"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds an online migration's statement waits for a table lock (PostgreSQL ``lock_timeout``,
#: MySQL/MariaDB ``lock_wait_timeout``). An ``ALTER TABLE`` waiting for its lock makes every
#: later writer of the table wait behind it, so the wait is kept short and retried instead.
LOCK_TIMEOUT = 1.0

#: Attempts of one step whose lock wait timed out, with a jittered pause growing from 0.25 s to
#: 8 s between them (about 30 s in all), before :class:`MigrationLockError`.
LOCK_ATTEMPTS = 8
#: The package's one retry policy (:mod:`chainlit_orm.retry`) for those attempts: full-jitter
#: backoff windows from 0.25 s up to 8 s.
_LOCK_RETRY = RetryPolicy(attempts=LOCK_ATTEMPTS, base=0.25, cap=8.0)

#: Rows read and written per backfill round trip: small enough to keep each statement short on a
#: busy database, large enough that a million rows take a few thousand round trips.
BATCH_SIZE = 500

#: Entities whose rows reference a thread; a cascading FK on all three lets the layer delete a
#: thread with one statement.
_THREAD_CHILDREN = ("step", "element", "feedback")


#: The unique index that allows one feedback row per step.
_FEEDBACK_KEY = ("forId",)

#: How many ids a report line or an error message lists before it says "and N more".
_MAX_LISTED = 20


# ----------------------------------------------------------------------------- public entry points


async def migrate_sql(url: SQLURL, models: ModelSet, *, dry_run: bool, dedupe_feedback: bool,
                      lock: LockState | None = None) -> MigrationReport:
    """Migrate one SQL database (see :func:`chainlit_orm.migrations.migrate`, which bounds it by
    its timeout and dispatches here).

    Under the migration lock (:mod:`.lock`): SQLite in one ``BEGIN IMMEDIATE`` transaction,
    PostgreSQL and MySQL/MariaDB online, step by step (:func:`_migrate_online`), holding a session
    lock on a connection of its own. A dry run takes no lock and changes nothing.

    PostgreSQL through a connection pooler is refused before anything is sent on the connection
    (:func:`refuse_pooler`), a dry run included: the session lock cannot be held there, and
    SQLAlchemy's path that migrate runs on prepares named statements, which a transaction-mode
    pooler mixes up between clients.
    """
    state = lock if lock is not None else LockState()
    sa_url = url.async_url()
    shown = _shown(sa_url)
    engine = create_async_engine(sa_url, poolclass=NullPool, **_engine_options(url))
    PoolerProbe.of(engine, lambda where: refuse_pooler(shown, where)).install(engine)
    if engine.dialect.name == "sqlite":
        _sqlite_transactions(engine, None if dry_run else (state, shown))
    try:
        if dry_run or engine.dialect.name == "sqlite":
            async with _transaction(engine, shown) as conn:
                state.held = not dry_run
                return await _migrate_on(conn, models, shown, dry_run=dry_run,
                                         dedupe_feedback=dedupe_feedback, waited=state.waited,
                                         online=engine.dialect.name != "sqlite")
        async with session_lock(engine, models, shown, state):
            return await _migrate_online(engine, models, shown, dedupe_feedback=dedupe_feedback,
                                         waited=state.waited)
    finally:
        state.held = False
        await engine.dispose()


async def ensure_schema(engine: AsyncEngine, models: ModelSet, *, create: bool,
                        pooler: PoolerProbe | None = None) -> bool:
    """Check, on a layer's first use, that the database has the set's schema; maybe create it.

    One round of inspection: the set's tables, the recorded version, and the foreign keys of the
    thread's children. With ``create`` and none of the set's tables present, everything is
    created on the spot through the same path as :func:`migrate` (this is how an embedded SQLite
    database comes to life). Anything else that is not recorded at :data:`SCHEMA_VERSION` is
    refused rather than altered behind the operator's back: upgrading a shared database is a
    deliberate step (``chainlit-orm migrate``). A database recorded at a *newer* version is
    accepted, since every migration is additive and an older layer still works on it.

    Args:
        engine: the layer's engine.
        models: the layer's model set.
        create: create the schema if the database has none of the set's tables.
        pooler: the layer's pooler probe: when it saw a pooler, the migrate command a message
            names has the server's own address in place of the pooler's (migrate refuses a
            pooler). Creating the schema on first use is safe behind a transaction-mode pooler:
            the lock is a transaction lock, and the creation is one transaction with it, which
            the pooler keeps on one server connection.

    Returns:
        True when ``steps``, ``elements`` and ``feedbacks`` all have a foreign key on
        ``threadId`` to ``threads`` with ``ON DELETE CASCADE`` (so deleting a thread deletes its
        rows), False otherwise (the older Chainlit variant has no such keys).

    Raises:
        SchemaOutdatedError: the schema is missing, partial, unrecorded or older; the message
            names ``chainlit-orm migrate <url>`` with the password masked.
        BackendUnavailableError: the database cannot be reached.
    """
    shown = _shown(engine.url)
    target = _Target.of(models, engine.dialect.name)
    lock = LockState()

    def command() -> str:
        return direct_migrate_command(shown, models, pooler.seen if pooler else None)

    async with _transaction(engine, shown) as conn:
        # wait for a migration that is running (instead of reading half a schema), and let
        # one process at a time create an empty database (SQLite: BEGIN IMMEDIATE already did)
        await transaction_lock(conn, models, shown, lock, exclusive=create)
        try:
            state = await conn.run_sync(_first_use_state, target)
            if not state.existing:
                if create:
                    report = await _migrate_on(conn, models, shown, dry_run=False,
                                               dedupe_feedback=False)
                    for line in report.lines:
                        logger.debug("%s", line)
                    return _declares_cascade(target)
                raise SchemaOutdatedError(
                    f"{shown} has none of the chainlit-orm tables; create them with: "
                    f"{command()}",
                    detail=None,
                )
        finally:
            await release_transaction_lock(conn, models, lock)
    missing = [t.name for t in target.tables.values() if t.name not in state.existing]
    if missing:
        raise SchemaOutdatedError(
            f"{shown} lacks the tables {', '.join(missing)}; upgrade it with: "
            f"{command()}",
            detail=state.version,
        )
    if state.version is None or state.version < SCHEMA_VERSION:
        at = "has no chainlit-orm schema version" if state.version is None else (
            f"is at schema version {state.version}")
        raise SchemaOutdatedError(
            f"{shown} {at} but this chainlit-orm needs version {SCHEMA_VERSION}; upgrade it "
            f"with: {command()}",
            detail=state.version,
        )
    if target.tombstones.name not in state.existing:  # recorded, yet dropped since
        raise SchemaOutdatedError(
            f"{shown} lacks the table {target.tombstones.name}; restore it with: "
            f"{command()}",
            detail=state.version,
        )
    return state.cascade


# ----------------------------------------------------------------------------- connections


def refuse_pooler(shown: str, where: str) -> ConfigurationError:
    """migrate's error for a URL that reaches a connection pooler (see
    :mod:`chainlit_orm.layers.pooler`), raised when the first connection opens: before the lock,
    before any DDL."""
    return ConfigurationError(
        f"migrate of {shown}: {where} is a connection pooler (PgBouncer, Supavisor, Neon's "
        "pooler), not the database server: a transaction-mode pooler cannot hold migrate's "
        "session lock (two migrations could run at once); run migrate with a direct URL to the "
        "server (its own host and port)", detail="pooler")


def _shown(url: URL) -> str:
    """The URL as it may appear in messages: password and secret query values masked."""
    return mask_url(url.render_as_string(hide_password=True))


def _engine_options(url: SQLURL) -> dict[str, Any]:
    """``connect_args``: the URL's typed parameters (:attr:`SQLURL.connect_args`), and SQLite's
    busy timeout."""
    connect_args = dict(url.connect_args)
    if url.dialect == "sqlite":
        connect_args["timeout"] = SQLITE_BUSY_TIMEOUT
    return {"connect_args": connect_args} if connect_args else {}


def _sqlite_transactions(engine: AsyncEngine, lock: tuple[LockState, str] | None) -> None:
    """Make SQLite DDL transactional: Python's sqlite3 module only opens a transaction before DML,
    so by default every ``CREATE``/``ALTER`` (and Alembic's batch table copy) would commit on its
    own. Driver-level autocommit plus an explicit ``BEGIN IMMEDIATE`` puts the whole migration in
    one transaction and takes the write lock up front, so two migrations cannot interleave.

    With ``lock``, the write lock is the migration lock: the first ``BEGIN IMMEDIATE`` does not
    wait (a busy database is recorded as "waited" in the report), the next ones wait a second
    each, for as long as the migration's timeout allows."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    if lock is None:
        begin_immediate_on(engine)
        return
    state, shown = lock

    @event.listens_for(engine.sync_engine, "begin")
    def _begin_when_free(conn: Any) -> None:
        wait_ms = 0
        while True:
            conn.exec_driver_sql(f"PRAGMA busy_timeout = {wait_ms}")
            try:
                conn.exec_driver_sql(BEGIN_IMMEDIATE)
                break
            except DBAPIError as exc:
                if "locked" not in str(exc.orig).lower() and "busy" not in str(exc.orig).lower():
                    raise
                state.waiting(shown)
                wait_ms = 1000
        conn.exec_driver_sql(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT * 1000}")


@asynccontextmanager
async def _transaction(engine: AsyncEngine, shown: str) -> AsyncIterator[AsyncConnection]:
    """A connection in a transaction; a failure to connect becomes one clear typed error."""
    conn = engine.connect()
    try:
        await conn.start()
    except (DBAPIError, OSError) as exc:
        raise BackendUnavailableError(
            f"cannot connect to {shown}: {_short_error(exc)}", detail=shown
        ) from exc
    try:
        async with conn.begin():
            yield conn
    finally:
        await conn.close()


def _short_error(exc: BaseException) -> str:
    """The driver's message, first line, without any URL in it unmasked."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
    return mask_url(f"{type(orig).__name__}: {text}")[:300]


# ----------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class _Target:
    """The tables a model set has on one dialect.

    On PostgreSQL the set's schema is a PostgreSQL schema. On SQLite and MySQL/MariaDB a "schema"
    is an attached file or another database, which the URL already chooses, so the tables are
    copied onto a schema-less ``MetaData`` (as the DDL generator does)."""

    dialect: str
    schema: str | None
    metadata: sa.MetaData
    tables: dict[str, sa.Table]
    version: sa.Table
    #: the erased-thread tombstones (``schema_gen.sql.tombstone_table``): created when missing
    tombstones: sa.Table

    @classmethod
    def of(cls, models: ModelSet, dialect: str) -> _Target:
        copies = tables_for_dialect(models, "mysql" if dialect == "mariadb" else dialect)
        tables = dict(zip(ENTITIES, copies[:-2], strict=True))
        metadata = models.metadata if copies[0] is models.table(ENTITIES[0]) else copies[0].metadata
        return cls(dialect, copies[0].schema, metadata, tables, copies[-1], copies[-2])

    @property
    def is_mysql(self) -> bool:
        return self.dialect in ("mysql", "mariadb")

    @property
    def transactional_ddl(self) -> bool:
        return not self.is_mysql

    def qualified(self, name: str) -> str:
        return f"{self.schema}.{name}" if self.schema else name


def _declares_cascade(target: _Target) -> bool:
    """Whether the target tables themselves declare cascading thread FKs (tables we create)."""
    threads = target.tables["thread"]
    for entity in _THREAD_CHILDREN:
        table = target.tables[entity]
        if not any(
            fk.parent.name == "threadId" and fk.column.table is threads
            and (fk.ondelete or "").upper() == "CASCADE"
            for fk in table.foreign_keys
        ):
            return False
    return True


# ----------------------------------------------------------------------------- first use


@dataclass(frozen=True)
class _FirstUse:
    existing: frozenset[str]
    version: int | None
    cascade: bool


def _first_use_state(conn: Connection, target: _Target) -> _FirstUse:
    inspector = sa.inspect(conn)
    names = set(inspector.get_table_names(schema=target.schema))
    ours = {t.name for t in target.tables.values()}
    existing = frozenset(ours & names) | (
        {target.tombstones.name} & names)
    version = _read_version(conn, target) if target.version.name in names else None
    children = [target.tables[e].name for e in _THREAD_CHILDREN]
    cascade = all(
        name in existing and _has_cascade(inspector, target, name) for name in children
    )
    return _FirstUse(existing, version, cascade)


def _has_cascade(inspector: sa.Inspector, target: _Target, table: str) -> bool:
    threads = target.tables["thread"].name
    for fk in inspector.get_foreign_keys(table, schema=target.schema):
        if (
            fk["constrained_columns"] == ["threadId"]
            and fk["referred_table"] == threads
            and fk["referred_columns"] == ["id"]
            and str((fk.get("options") or {}).get("ondelete", "")).upper() == "CASCADE"
        ):
            return True
    return False


def _read_version(conn: Connection, target: _Target) -> int | None:
    vt = target.version
    value = conn.execute(sa.select(vt.c.version).where(vt.c.id == 1)).scalar()
    return None if value is None else int(value)


# ----------------------------------------------------------------------------- the plan


@dataclass
class _TableChange:
    """Additive changes to one existing table: applied in one Alembic batch."""

    name: str
    reflected: sa.Table
    add: list[sa.Column[Any]] = field(default_factory=list)
    relax: list[sa.Column[Any]] = field(default_factory=list)
    #: (the model's column, the existing one): a collation to change (MySQL/MariaDB)
    collate: list[tuple[sa.Column[Any], sa.Column[Any]]] = field(default_factory=list)


@dataclass(frozen=True)
class _NewIndex:
    name: str
    table: str
    columns: tuple[str, ...]
    unique: bool
    kwargs: dict[str, Any]
    #: False for a unique constraint the model declares without a name (``unique=True``)
    named: bool = True


@dataclass(frozen=True)
class _Feedback:
    id: str
    for_id: str
    value: Any
    comment: str | None


@dataclass(frozen=True)
class _Dedupe:
    step_id: str
    kept: _Feedback
    removed: tuple[_Feedback, ...]


@dataclass(frozen=True)
class _Backfill:
    """Derived values for new columns of an existing table.

    ``kind`` is ``"activity"`` (threads."activityAt"), ``"metadata"`` (columns computed from the
    row's metadata by :func:`~chainlit_orm.models.convert.to_row`) or ``"folded"`` (the search
    copies, computed by :func:`~chainlit_orm.models.search.folded_values`)."""

    entity: str
    kind: str
    columns: tuple[str, ...]
    rows: int


@dataclass(frozen=True)
class _SearchWork:
    """One step of creating or repairing a search index: a report line and its statements."""

    line: str
    statements: tuple[ExecutableDDLElement, ...]
    #: built ``CONCURRENTLY``, outside a transaction (PostgreSQL, an online migration)
    concurrent: bool = False
    #: the index (or FTS5 table) it creates, for the schema history
    index: str | None = None


@dataclass
class _Plan:
    target: _Target
    shown: str
    version: int | None
    version_table_exists: bool
    #: applied step by step (PostgreSQL, MySQL/MariaDB migrate), not in one transaction
    online: bool = False
    create_schema: bool = False
    new_tables: list[sa.Table] = field(default_factory=list)
    changes: list[_TableChange] = field(default_factory=list)
    #: (index, table) of our indexes left INVALID by an interrupted concurrent build (PostgreSQL)
    invalid: list[tuple[str, str]] = field(default_factory=list)
    indexes: list[_NewIndex] = field(default_factory=list)
    dedupe: list[_Dedupe] = field(default_factory=list)
    backfills: list[_Backfill] = field(default_factory=list)
    search: list[_SearchWork] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reflected: dict[str, sa.Table] = field(default_factory=dict)
    #: the history columns a version table of an older chainlit-orm lacks
    history_columns_missing: list[str] = field(default_factory=list)
    #: row 1 has no ``changes`` yet (written by an older chainlit-orm)
    first_changes_missing: bool = False
    #: the fingerprint of the latest recorded entry
    stored_fingerprint: str | None = None
    #: the entry this migration records (set once the plan is complete)
    entry: HistoryEntry = field(default_factory=lambda: HistoryEntry(1, SCHEMA_VERSION, ""))

    @property
    def record_version(self) -> bool:
        return (self.version != SCHEMA_VERSION or not self.version_table_exists
                or self.has_changes)

    @property
    def has_changes(self) -> bool:
        return bool(self.create_schema or self.new_tables or self.changes or self.indexes
                    or self.invalid or self.dedupe or self.backfills or self.search)

    @property
    def empty(self) -> bool:
        return not self.record_version


def _plan(conn: Connection, models: ModelSet, shown: str, dedupe_feedback: bool,
          online: bool = False, now: str = "") -> _Plan:
    """Compare the database with the models and decide every change, before changing anything.

    Every refusal (duplicates, a newer recorded version, an index name taken, a column that
    cannot be added) is raised from here, so a refused migration has changed nothing even on
    MySQL/MariaDB, whose DDL cannot be rolled back.
    """
    target = _Target.of(models, conn.dialect.name)
    inspector = sa.inspect(conn)
    schema = target.schema
    names = set(inspector.get_table_names(schema=schema))
    ours = {table.name: entity for entity, table in target.tables.items()}
    existing = [t.name for t in target.tables.values() if t.name in names]
    version_exists = target.version.name in names
    version = _read_version(conn, target) if version_exists else None
    if version is not None and version > SCHEMA_VERSION:
        raise SchemaError(
            f"{shown} is recorded at schema version {version}, newer than this chainlit-orm "
            f"({SCHEMA_VERSION}); upgrade chainlit-orm instead of migrating",
            detail=version,
        )
    plan = _Plan(target, shown, version, version_exists, online=online)
    if version_exists:
        _plan_history(conn, plan, inspector)
    if schema is not None and schema not in inspector.get_schema_names():
        plan.create_schema = True

    reflected_md = sa.MetaData()
    if existing:
        reflected_md.reflect(conn, schema=schema, only=existing, resolve_fks=False)
    reflected = {name: reflected_md.tables[_key(schema, name)] for name in existing}

    # Alembic's comparison, filtered to what is allowed: new tables and new columns. Removals,
    # type and default differences, foreign keys on existing tables and tables outside the set
    # are ignored (module docstring); indexes are matched by definition below, not by name.
    def include_name(name: str | None, type_: str, parent_names: dict[str, Any]) -> bool:
        if type_ == "schema":
            return name == schema
        if type_ == "table":
            return name in ours and parent_names.get("schema_name") == schema
        return True

    context = MigrationContext.configure(conn, opts={
        "compare_type": False,
        "compare_server_default": False,
        "include_schemas": schema is not None,
        "include_name": include_name,
    })
    changes: dict[str, _TableChange] = {}
    new_names: set[str] = set()
    for diff in compare_metadata(context, target.metadata):
        if not isinstance(diff, tuple):
            continue  # lists hold column modifications (nullable, type, default): left alone
        if diff[0] == "add_table" and diff[1].name in ours:
            new_names.add(diff[1].name)
        elif diff[0] == "add_column" and diff[2] in reflected:
            column: sa.Column[Any] = diff[3]
            if not column.nullable and column.server_default is None:
                raise SchemaError(
                    f"cannot add {diff[2]}.{column.name} to {shown}: it is NOT NULL without a "
                    "server default, and the table has rows written before it existed; make it "
                    "nullable or give it a server_default in the model",
                    detail=f"{diff[2]}.{column.name}",
                )
            changes.setdefault(diff[2], _TableChange(diff[2], reflected[diff[2]])).add.append(
                column)
    plan.new_tables = [t for t in target.tables.values() if t.name in new_names]
    if target.tombstones.name not in names:  # bookkeeping, outside the compared MetaData
        plan.new_tables.append(target.tombstones)

    # (a) legacy NOT NULL columns the models never write would fail every insert
    for name, table in reflected.items():
        model_columns = set(target.tables[ours[name]].columns.keys())
        for col in table.columns:
            if (col.name not in model_columns and not col.nullable and not col.primary_key
                    and col.server_default is None):
                changes.setdefault(name, _TableChange(name, table)).relax.append(col)
    # (d) MySQL/MariaDB: a column the models compare exactly, left case-insensitive by an older
    # schema (only a VARCHAR of the models' length: nothing can be truncated)
    if target.is_mysql:
        for name, table in reflected.items():
            for col in target.tables[ours[name]].columns:
                want = getattr(col.type.dialect_impl(conn.dialect), "collation", None)
                have = table.columns.get(col.name)
                if (want and have is not None and isinstance(have.type, sa.String)
                        and have.type.length == getattr(col.type.dialect_impl(conn.dialect),
                                                        "length", None)
                        and have.type.collation != want):
                    changes.setdefault(name, _TableChange(name, table)).collate.append(
                        (col, have))
    plan.changes = [changes[t.name] for t in target.tables.values() if t.name in changes]

    plan.reflected = reflected
    invalid = _invalid_indexes(conn, target)
    _plan_indexes(conn, plan, reflected, ours, dedupe_feedback, invalid)
    _plan_backfills(conn, plan, reflected, ours, changes)
    _plan_search(conn, plan, reflected, changes, invalid)
    plan.entry = _entry(conn, plan, models, now)
    return plan


def _plan_history(conn: Connection, plan: _Plan, inspector: sa.Inspector) -> None:
    """What the version table holds: its history columns, the latest entry's fingerprint, and
    whether row 1 still lacks its ``changes`` (an older chainlit-orm wrote it)."""
    vt = plan.target.version
    have = {c["name"] for c in inspector.get_columns(vt.name, schema=plan.target.schema)}
    plan.history_columns_missing = [c.name for c in vt.columns if c.name not in have]
    if plan.history_columns_missing:
        plan.first_changes_missing = plan.version is not None
        return
    latest = conn.execute(sa.select(vt.c.fingerprint).order_by(vt.c.id.desc()).limit(1)).first()
    plan.stored_fingerprint = None if latest is None else latest[0]
    first = conn.execute(sa.select(vt.c.changes).where(vt.c.id == 1)).first()
    plan.first_changes_missing = first is not None and first[0] is None


def _next_entry(conn: Connection, plan: _Plan) -> int:
    if not plan.version_table_exists or plan.version is None:
        return 1
    vt = plan.target.version
    return int(conn.execute(sa.select(sa.func.max(vt.c.id))).scalar() or 0) + 1


def _entry(conn: Connection, plan: _Plan, models: ModelSet, now: str) -> HistoryEntry:
    """The history entry of this plan: what it creates, named the way the report names it."""
    number = _next_entry(conn, plan)
    tables = [t.name for t in plan.new_tables]
    if not plan.version_table_exists:
        tables.append(plan.target.version.name)
    indexes = [f"{t.name}.{i.name}" for t in plan.new_tables for i in sorted(
        t.indexes, key=lambda i: str(i.name))]
    indexes += [f"{ix.table}.{ix.name}" for ix in plan.indexes]
    indexes += [w.index for w in plan.search if w.index]
    columns = [f"{c.name}.{col.name}" for c in plan.changes for col in c.add]
    other: list[str] = []
    if plan.create_schema and plan.target.schema:
        other.append(f"created schema {plan.target.schema}")
    other += [f"allowed NULL in {c.name}.{col.name}" for c in plan.changes for col in c.relax]
    other += [f"made {c.name}.{col.name} compare exactly" for c in plan.changes
              for col, _ in c.collate]
    if plan.dedupe:
        other.append(f"removed {sum(len(d.removed) for d in plan.dedupe)} duplicate feedback "
                     "rows")
    other += [f"rebuilt the invalid index {name}" for name, _ in plan.invalid]
    other += [f"backfilled {', '.join(f'{b.entity}.{c}' for c in b.columns)}"
              for b in plan.backfills]
    other += [w.line for w in plan.search if not w.index]
    return HistoryEntry(number, SCHEMA_VERSION, now, fingerprint(models), tuple(tables),
                        tuple(columns), tuple(indexes), tuple(other))


def _invalid_indexes(conn: Connection, target: _Target) -> set[str]:
    """PostgreSQL indexes marked invalid (``pg_index.indisvalid`` false) in the target's schema:
    what a ``CREATE INDEX CONCURRENTLY`` that was interrupted, or failed, leaves behind. They
    exist, so they must not count as built; migrate drops and builds again the ones it owns."""
    if target.dialect != "postgresql":
        return set()
    rows = conn.execute(sa.text(
        "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE NOT i.indisvalid AND n.nspname = COALESCE(:s, current_schema())"),
        {"s": target.schema})
    return {str(name) for (name,) in rows}


def _key(schema: str | None, name: str) -> str:
    return f"{schema}.{name}" if schema else name


def _plan_indexes(
    conn: Connection,
    plan: _Plan,
    reflected: dict[str, sa.Table],
    ours: dict[str, str],
    dedupe_feedback: bool,
    invalid: set[str],
) -> None:
    """Indexes (and unique constraints) the models need on existing tables, matched by columns
    and uniqueness; duplicates checked before a unique one is planned. An index of ours left
    INVALID by an interrupted build is planned again, after dropping it."""
    target = plan.target
    for name, table in reflected.items():
        entity = ours[name]
        model = target.tables[entity]
        have: list[tuple[tuple[str, ...], bool, str]] = []
        for existing in table.indexes:
            if str(existing.name) in invalid:
                continue
            have.append((tuple(str(c.name) for c in existing.columns), bool(existing.unique),
                         str(existing.name)))
        for cons in table.constraints:
            if isinstance(cons, sa.UniqueConstraint | sa.PrimaryKeyConstraint):
                have.append((tuple(c.name for c in cons.columns), True, str(cons.name)))
        wanted: list[_NewIndex] = [
            _NewIndex(str(index.name), name, tuple(c.name for c in index.columns),
                      bool(index.unique), dict(index.dialect_kwargs))
            for index in sorted(model.indexes, key=lambda index: str(index.name))
        ]
        for cons in model.constraints:
            if isinstance(cons, sa.UniqueConstraint):
                cols = tuple(c.name for c in cons.columns)
                named = isinstance(cons.name, str)
                wanted.append(_NewIndex(str(cons.name) if named else
                                        f"uq_{name}_{'_'.join(cols)}", name, cols, True, {},
                                        named))
        for ix in wanted:
            if ix.name in invalid:
                plan.invalid.append((ix.name, name))
                if ix.unique and all(c in table.columns for c in ix.columns):
                    _check_duplicates(conn, plan, entity, table, ix, dedupe_feedback)
                plan.indexes.append(ix)
                continue
            match = next((h for h in have if h[0] == ix.columns and (h[1] or not ix.unique)), None)
            if match is not None:
                if ix.named and match[2] != ix.name:
                    plan.notes.append(
                        f"index {ix.name} on {name} ({', '.join(ix.columns)}): the existing "
                        f"{'unique ' if match[1] else ''}index {match[2]} is equivalent; kept"
                    )
                continue
            clash = next((h for h in have if h[2] == ix.name), None)
            if clash is not None:
                raise SchemaError(
                    f"{plan.shown}: an index named {ix.name} already exists on {name} over "
                    f"({', '.join(clash[0])}), but the models define it over "
                    f"({', '.join(ix.columns)}); drop or rename it, then migrate again",
                    detail=ix.name,
                )
            if ix.unique and all(c in table.columns for c in ix.columns):
                _check_duplicates(conn, plan, entity, table, ix, dedupe_feedback)
            plan.indexes.append(ix)


def _check_duplicates(
    conn: Connection,
    plan: _Plan,
    entity: str,
    table: sa.Table,
    ix: _NewIndex,
    dedupe_feedback: bool,
) -> None:
    cols = [table.c[name] for name in ix.columns]
    groups = (
        sa.select(*cols).where(*(c.is_not(None) for c in cols)).group_by(*cols)
        .having(sa.func.count() > 1)
    )
    if entity == "feedback" and ix.columns == _FEEDBACK_KEY:
        dupes = _feedback_duplicates(conn, table, groups)
        if not dupes:
            return
        if not dedupe_feedback:
            listed = "; ".join(
                f"step {d.step_id}: feedbacks {', '.join(f.id for f in (*d.removed, d.kept))}"
                for d in dupes[:_MAX_LISTED]
            )
            more = (f"; and {len(dupes) - _MAX_LISTED} more steps"
                    if len(dupes) > _MAX_LISTED else "")
            raise SchemaError(
                f"{plan.shown}: {len(dupes)} step(s) have several feedback rows (Chainlit's layer "
                f"allowed it), so the unique index {ix.name} on {table.name}(forId) cannot be "
                f"built: {listed}{more}. Nothing was changed. Run again with --dedupe-feedback "
                "(dedupe_feedback=True) to keep the most recently written row per step, or "
                "delete the extra rows yourself",
                detail={d.step_id: [f.id for f in (*d.removed, d.kept)] for d in dupes},
            )
        plan.dedupe = dupes
        return
    sample = conn.execute(groups.limit(_MAX_LISTED)).all()
    if sample:
        keys = "; ".join(", ".join(str(v) for v in row) for row in sample)
        raise SchemaError(
            f"{plan.shown}: {table.name} has duplicate values in ({', '.join(ix.columns)}), so "
            f"the unique index {ix.name} cannot be built: {keys}. Nothing was changed; remove "
            "the duplicates, then migrate again",
            detail=ix.name,
        )


def _feedback_duplicates(
    conn: Connection, table: sa.Table, groups: sa.Select[Any]
) -> list[_Dedupe]:
    """Group the feedback rows of steps that have several and pick the one to keep.

    Which row to keep: there is no timestamp on feedback rows, so "most recent" is taken from the
    only place a database records write order. In Chainlit's UI the thumbs a user sees on a
    message are those of their last click, so the most recently written row is the user's current
    opinion. PostgreSQL: the greatest ``ctid`` (a row's physical position; an ``UPDATE`` writes a
    new version at the end, so a re-rated row counts as recent; space freed by ``VACUUM`` can be
    reused, which is why this is the best available approximation, not a guarantee). SQLite: the
    greatest ``rowid`` (insertion order). MySQL/MariaDB keep no write order (InnoDB orders rows by
    primary key, which is also the order Chainlit's query returned them in): the greatest id.
    """
    dialect = conn.dialect.name
    order: Any
    if dialect == "postgresql":
        order = sa.cast(sa.literal_column("ctid"), sa.Text)
    elif dialect == "sqlite":
        order = sa.literal_column("rowid")
    else:
        order = sa.cast(table.c.id, sa.String(64))
    keys = groups.subquery()
    rows = conn.execute(
        sa.select(table.c.id, table.c.forId, table.c.value, table.c.comment, order)
        .where(table.c.forId.in_(sa.select(keys.c.forId)))
    ).all()
    by_step: dict[str, list[tuple[Any, _Feedback]]] = {}
    for fid, for_id, value, comment, position in rows:
        feedback = _Feedback(str(fid), str(for_id), value, comment)
        by_step.setdefault(str(for_id), []).append((_position(position), feedback))
    result = []
    for step_id in sorted(by_step):
        ranked = [f for _, f in sorted(by_step[step_id], key=lambda pair: pair[0])]
        result.append(_Dedupe(step_id, ranked[-1], tuple(ranked[:-1])))
    return result


def _position(value: Any) -> tuple[Any, ...]:
    """A sortable write position: a PostgreSQL ctid ``(block,offset)``, a rowid, or an id."""
    if isinstance(value, str):
        match = re.fullmatch(r"\((\d+),(\d+)\)", value)
        if match:
            return (int(match[1]), int(match[2]))
        return (value,)
    return (value,)


def _plan_backfills(
    conn: Connection,
    plan: _Plan,
    reflected: dict[str, sa.Table],
    ours: dict[str, str],
    changes: dict[str, _TableChange],
) -> None:
    """Derived columns to fill on existing tables: those added now and, while the version is not
    yet recorded as current (a run that stopped half-way on MySQL/MariaDB), those added before."""
    catching_up = plan.version != SCHEMA_VERSION
    for name, table in reflected.items():
        entity = ours[name]
        model = plan.target.tables[entity]
        added = {c.name for c in changes[name].add} if name in changes else set()
        derived: list[tuple[str, tuple[str, ...]]] = []
        if entity == "thread" and "activityAt" in model.columns:
            derived.append(("activity", ("activityAt",)))
        metadata_cols = tuple(
            c.name for c in model.columns
            if (c.name == "favorite" or FROM_METADATA in c.info) and "metadata" in table.columns
        )
        if metadata_cols:
            derived.append(("metadata", metadata_cols))
        for kind, columns in derived:
            todo = tuple(c for c in columns if c in added or (catching_up and c in table.columns))
            if not todo:
                continue
            if any(c in added for c in todo):
                count = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            else:
                count = conn.execute(
                    sa.select(sa.func.count()).select_from(table)
                    .where(sa.or_(*(table.c[c].is_(None) for c in todo)))
                ).scalar_one()
            if count:
                plan.backfills.append(_Backfill(entity, kind, todo, int(count)))
        for column in model.columns:
            source = column.info.get(FOLDED_FROM)
            if source is None or source not in table.columns:
                continue
            if column.name not in added and not (catching_up and column.name in table.columns):
                continue
            wanted = _folded_wanted(table, column)
            if column.name not in added:
                wanted = sa.and_(wanted, table.c[column.name].is_(None))
            count = conn.execute(
                sa.select(sa.func.count()).select_from(table).where(wanted)).scalar_one()
            if count:
                plan.backfills.append(_Backfill(entity, "folded", (column.name,), int(count)))


def _folded_wanted(table: sa.Table, folded: sa.Column[Any]) -> Any:
    """Rows of ``table`` (reflected or target) that get a folded copy of ``folded``'s source:
    a text is there and, for a copy kept for some step types only, the row is of one of them."""
    wanted: Any = table.c[folded.info[FOLDED_FROM]].is_not(None)
    types = folded.info.get(FOLDED_TYPES)
    if types is not None and "type" in table.columns:
        wanted = sa.and_(wanted, table.c.type.in_(types))
    return wanted


def _plan_search(
    conn: Connection,
    plan: _Plan,
    reflected: dict[str, sa.Table],
    changes: dict[str, _TableChange],
    invalid: set[str],
) -> None:
    """The search indexes (:mod:`chainlit_orm.schema_gen.search`) to create or repair; runs last,
    after the backfills fill what they index."""
    target = plan.target
    tables = [target.tables[entity] for entity in ENTITIES]
    indexes = search_indexes(tables, target.dialect)
    if not indexes:
        return
    if target.dialect == "postgresql":
        _plan_pg_search(conn, plan, reflected, indexes, invalid)
        return
    known = {(str(kind), str(name)) for kind, name in conn.execute(
        sa.text("SELECT type, name FROM sqlite_master WHERE type IN ('table', 'trigger')"))}
    for ix in indexes:
        table = ix.table.name
        # Alembic's batch mode rewrites a SQLite table to relax NOT NULL: new rowids, and its
        # triggers are dropped with the old table
        rewritten = table in changes and bool(changes[table].relax)
        missing = [n for n in fts_trigger_names(ix) if ("trigger", n) not in known]
        if ("table", fts_pending_name(ix)) not in known:
            missing.insert(0, fts_pending_name(ix))
        legacy = [n for n in fts_legacy_trigger_names(ix) if ("trigger", n) in known]
        drop_legacy = [fts_drop_trigger(n) for n in legacy]
        if ("table", ix.name) not in known:
            plan.search.append(_SearchWork(
                f"create search index {ix.name} (FTS5 trigram) on {table} ({ix.column}), its "
                "pending list and their triggers; index the existing rows",
                (*drop_legacy, fts_table(ix), fts_pending_table(ix, if_not_exists=True),
                 *fts_triggers(ix, if_not_exists=True), fts_rebuild(ix), fts_pending_clear(ix)),
                index=f"{table}.{ix.name}"))
        elif rewritten or missing or legacy:
            if rewritten:
                why = "is rewritten above"
            elif legacy:
                why = (f"has triggers that index each write in its own transaction "
                       f"({', '.join(legacy)}); writes now go through a pending list")
            else:
                why = f"lacks {', '.join(missing)}"
            plan.search.append(_SearchWork(
                f"repair search index {ix.name}: {table} {why}; recreate the triggers and "
                "rebuild it from the table",
                (*drop_legacy, fts_pending_table(ix, if_not_exists=True),
                 *fts_triggers(ix, if_not_exists=True), fts_rebuild(ix), fts_pending_clear(ix))))


def _plan_pg_search(conn: Connection, plan: _Plan, reflected: dict[str, sa.Table],
                    indexes: list[SearchIndex], invalid: set[str]) -> None:
    """The trigram extension and GIN indexes; refuse, naming the fix, when the extension is
    missing and this role may not create it (nothing has changed at this point). On an existing
    table an online migration builds them ``CONCURRENTLY``; one left INVALID is built again."""
    target = plan.target
    inspector = sa.inspect(conn)
    todo = []
    for ix in indexes:
        if ix.name in invalid:
            plan.invalid.append((ix.name, ix.table.name))
        elif ix.table.name in reflected:
            have = inspector.get_indexes(ix.table.name, schema=target.schema)
            if any(h["name"] == ix.name or (
                    list(h["column_names"]) == [ix.column]
                    and (h.get("dialect_options") or {}).get("postgresql_using") == "gin")
                   for h in have):
                continue
        todo.append(ix)
    if not todo:
        return
    installed = conn.execute(sa.text("SELECT 1 FROM pg_extension WHERE extname = :e"),
                             {"e": PG_EXTENSION}).first() is not None
    if not installed:
        _check_pg_extension(conn, plan.shown)
        plan.search.append(_SearchWork(
            f"create extension {PG_EXTENSION} (the trigram operator class of the search indexes)",
            (pg_extension(),)))
    for ix in todo:
        concurrent = plan.online and ix.table.name in reflected
        plan.search.append(_SearchWork(
            f"create search index {ix.name} on {ix.table.name} using gin ({ix.column} "
            "gin_trgm_ops)",
            (gin_index(ix, concurrently=concurrent),), concurrent,
            index=f"{ix.table.name}.{ix.name}"))


def _check_pg_extension(conn: Connection, shown: str) -> None:
    """Raise a :class:`SchemaError` naming the fix if this role cannot create ``pg_trgm``.

    ``pg_trgm`` is a *trusted* extension from PostgreSQL 13: any role with ``CREATE`` on the
    database may create it; before 13, or without that privilege, a superuser must.
    """
    row = conn.execute(sa.text(
        "SELECT current_user, current_database(), "
        "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user), "
        "has_database_privilege(current_database(), 'CREATE'), "
        "current_setting('server_version_num')::int, "
        "EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = :e)"), {"e": PG_EXTENSION}
    ).one()
    role, database, superuser, may_create, version, available = row
    if not available:
        raise SchemaError(
            f"{shown}: the search indexes need the PostgreSQL extension {PG_EXTENSION}, which is "
            "not installed on the server; install the server's contrib package (for example "
            "postgresql-contrib), then migrate again. Nothing was changed",
            detail=PG_EXTENSION,
        )
    trusted = False
    if version >= 130000:
        trusted = bool(conn.execute(sa.text(
            "SELECT trusted FROM pg_available_extension_versions v JOIN pg_available_extensions "
            "a ON a.name = v.name AND a.default_version = v.version WHERE v.name = :e"),
            {"e": PG_EXTENSION}).scalar())
    if superuser or (trusted and may_create):
        return
    raise SchemaError(
        f"{shown}: the search indexes need the PostgreSQL extension {PG_EXTENSION}, and role "
        f"{role} may not create it. Nothing was changed. Fix: as a superuser or the database "
        f"owner run CREATE EXTENSION {PG_EXTENSION}; in database {database} (or GRANT CREATE ON "
        f"DATABASE {database} TO {role}, which lets it create this trusted extension), then "
        "migrate again",
        detail=PG_EXTENSION,
    )


# ----------------------------------------------------------------------------- applying the plan


class _StatementBuffer:
    """The ``output_buffer`` of an offline Alembic context: one entry per rendered statement."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def write(self, text: str) -> int:
        statement = text.strip()
        if statement:
            self.statements.append(statement.removesuffix(";").rstrip())
        return len(text)

    def flush(self) -> None:
        return None

    def add(self, statement: str) -> None:
        self.statements.append(statement.strip())


@dataclass
class _Unit:
    """One step of applying a plan: its report lines and the operations it issues.

    ``mode`` says how an online migration runs it: ``transaction`` (a short transaction of its
    own, under :data:`LOCK_TIMEOUT`, retried), ``autocommit`` (outside any transaction:
    PostgreSQL's ``CREATE``/``DROP INDEX CONCURRENTLY``), ``backfill`` (batch by batch, each
    batch committed) or ``note`` (a line, nothing to run). In a single-transaction migration
    (SQLite, the layer's first-use creation) every unit runs in that one transaction."""

    lines: list[str]
    run: Callable[[Operations], None] | None = None
    mode: str = "transaction"
    backfill: _Backfill | None = None


def _units(plan: _Plan, models: ModelSet, now: str, dialect: Any) -> list[_Unit]:
    """The plan as units, in order: schema, new tables (parents first), column changes,
    duplicate feedback removal, invalid indexes dropped, indexes, backfills (after the indexes,
    which they read through), search indexes (after the backfills, whose values they index),
    the schema-history entry last (so a migration that stopped half-way is not recorded as
    done, and the layer refuses to start until a rerun finished it)."""
    target = plan.target
    schema = target.schema
    online = plan.online
    pg = target.dialect == "postgresql"
    units: list[_Unit] = []

    if plan.create_schema and schema is not None:
        units.append(_Unit([f"create schema {schema}"],
                           lambda op: op.execute(CreateSchema(schema, if_not_exists=True))))

    for table in plan.new_tables:
        def create(op: Operations, table: sa.Table = table) -> None:
            op.invoke(CreateTableOp.from_table(table))
            for index in sorted(table.indexes, key=lambda index: str(index.name)):
                op.create_index(str(index.name), table.name, [c.name for c in index.columns],
                                unique=bool(index.unique), schema=schema, **index.dialect_kwargs)
        units.append(_Unit([f"create table {target.qualified(table.name)}"], create))

    for change in plan.changes:
        units.extend(_change_units(plan, change, dialect))

    if plan.dedupe:
        feedbacks = target.tables["feedback"]
        removed = [f.id for d in plan.dedupe for f in d.removed]
        lines = [f"remove duplicate feedback {f.id} on step {d.step_id} (value {f.value}, "
                 f"comment {f.comment!r}); kept feedback {d.kept.id} (value {d.kept.value}, "
                 f"comment {d.kept.comment!r}), the most recently written"
                 for d in plan.dedupe for f in d.removed]
        units.append(_Unit(lines, lambda op: op.execute(
            sa.delete(feedbacks).where(feedbacks.c.id.in_(removed)))))

    for name, table_name in plan.invalid:
        def drop(op: Operations, name: str = name, table_name: str = table_name) -> None:
            op.drop_index(name, table_name=table_name, schema=schema, if_exists=True,
                          postgresql_concurrently=online)
        units.append(_Unit(
            [f"drop invalid index {name} on {table_name} (left by an interrupted build); it is "
             "built again below"], drop, "autocommit" if online else "transaction"))

    for ix in plan.indexes:
        line = (f"create {'unique ' if ix.unique else ''}index {ix.name} on {ix.table} "
                f"({', '.join(ix.columns)})")
        if online and pg:
            def concurrent(op: Operations, ix: _NewIndex = ix) -> None:
                op.create_index(ix.name, ix.table, list(ix.columns), unique=ix.unique,
                                schema=schema, postgresql_concurrently=True, **ix.kwargs)
            units.append(_Unit([line], concurrent, "autocommit"))
        elif online:
            units.append(_Unit([line], lambda op, ix=ix: op.execute(  # type: ignore[misc]
                _mysql_online_index(plan, ix, op.get_context().dialect))))
        else:
            def plain(op: Operations, ix: _NewIndex = ix) -> None:
                op.create_index(ix.name, ix.table, list(ix.columns), unique=ix.unique,
                                schema=schema, **ix.kwargs)
            units.append(_Unit([line], plain))
    for note in plan.notes:
        units.append(_Unit([note], mode="note"))

    for backfill in plan.backfills:
        table = target.tables[backfill.entity]
        what = ", ".join(f"{table.name}.{c}" for c in backfill.columns)
        if backfill.kind == "activity":
            line = (f"backfill {what} on {backfill.rows} rows: createdAt of the thread's latest "
                    "user_message, else the thread's createdAt, else now")
        elif backfill.kind == "folded":
            source = table.c[backfill.columns[0]].info[FOLDED_FROM]
            line = f"backfill {what} on {backfill.rows} rows: the case-folded {source}"
        else:
            line = f"backfill {what} on {backfill.rows} rows from each row's metadata"
        units.append(_Unit([line], mode="backfill", backfill=backfill))

    for work in plan.search:
        def search(op: Operations, work: _SearchWork = work) -> None:
            for statement in work.statements:
                op.execute(statement)
        units.append(_Unit([work.line], search,
                           "autocommit" if online and work.concurrent else "transaction"))

    units.append(_Unit(*_version_unit(plan, now)))
    return units


def _change_units(plan: _Plan, change: _TableChange, dialect: Any) -> list[_Unit]:
    """A table's column changes: one unit per statement online (each ``ALTER TABLE`` takes
    PostgreSQL's ACCESS EXCLUSIVE lock, so each commits at once), one Alembic batch otherwise
    (SQLite rewrites the table to relax ``NOT NULL``)."""
    target = plan.target
    schema = target.schema
    adds = [(f"add column {change.name}.{col.name} "
             f"({col.type.compile(dialect=dialect)})", col) for col in change.add]
    collates = [(f"compare {change.name}.{col.name} exactly (collation "
                 f"{col.type.dialect_impl(dialect).collation})", col, have)  # type: ignore[attr-defined]
                for col, have in change.collate]
    relaxes = [(f"allow NULL in {change.name}.{col.name}: a legacy NOT NULL column the models "
                "do not write (it would fail every insert)", col) for col in change.relax]

    def add(op: Operations, col: sa.Column[Any]) -> None:
        op.add_column(change.name, col._copy(), schema=schema)

    def collate(op: Operations, col: sa.Column[Any], have: sa.Column[Any]) -> None:
        op.alter_column(change.name, col.name, type_=col.type, nullable=have.nullable,
                        existing_type=have.type, existing_nullable=have.nullable,
                        existing_server_default=have.server_default,
                        existing_comment=have.comment, schema=schema)

    def relax(op: Operations, col: sa.Column[Any]) -> None:
        op.alter_column(change.name, col.name, nullable=True, existing_type=col.type,
                        existing_nullable=False, existing_server_default=col.server_default,
                        existing_comment=col.comment, schema=schema)

    if plan.online:
        return ([_Unit([line], functools.partial(add, col=col)) for line, col in adds]
                + [_Unit([line], functools.partial(collate, col=col, have=have))
                   for line, col, have in collates]
                + [_Unit([line], functools.partial(relax, col=col)) for line, col in relaxes])

    def batch(op: Operations) -> None:
        copy_from = change.reflected if target.dialect == "sqlite" and change.relax else None
        with op.batch_alter_table(change.name, schema=schema, copy_from=copy_from,
                                  recreate="auto") as batch:
            for col in change.add:
                batch.add_column(col._copy())
            for col in change.relax:
                batch.alter_column(col.name, nullable=True, existing_type=col.type,
                                   existing_nullable=False,
                                   existing_server_default=col.server_default,
                                   existing_comment=col.comment)
            for col, have in change.collate:
                batch.alter_column(col.name, type_=col.type, nullable=have.nullable,
                                   existing_type=have.type, existing_nullable=have.nullable,
                                   existing_server_default=have.server_default,
                                   existing_comment=have.comment)

    lines = [line for line, _ in adds] + [c[0] for c in collates] + [r[0] for r in relaxes]
    return [_Unit(lines, batch)]


def _mysql_online_index(plan: _Plan, ix: _NewIndex, dialect: Any) -> sa.TextClause:
    """``CREATE INDEX ... ALGORITHM=INPLACE LOCK=NONE``: built while writes go on, or refused by
    the server (never silently locking the table). InnoDB builds every B-tree index this way,
    unique or not, prefix or not; FULLTEXT and SPATIAL indexes cannot be built with LOCK=NONE
    (the first FULLTEXT index of a table even rebuilds it), and the models declare none."""
    # the model's columns (one may be added by this very migration), on a stand-in table so the
    # index is not attached to the model's
    source = next(t for t in plan.target.tables.values() if t.name == ix.table)
    stand_in = sa.Table(ix.table, sa.MetaData(),
                        *(sa.Column(name, source.c[name].type) for name in ix.columns))
    index = sa.Index(ix.name, *(stand_in.c[name] for name in ix.columns), unique=ix.unique,
                     **ix.kwargs)
    return sa.text(f"{CreateIndex(index).compile(dialect=dialect)} ALGORITHM=INPLACE LOCK=NONE")


def _version_unit(plan: _Plan, now: str) -> tuple[list[str], Callable[[Operations], None]]:
    """The schema-history entry: the version table (created, or given the history columns an
    older chainlit-orm did not have), row 1 kept at the current version for older readers, and
    the entry's row."""
    target = plan.target
    vt = target.version
    lines: list[str] = []
    if not plan.version_table_exists:
        lines.append(f"create table {target.qualified(vt.name)}")
    elif plan.history_columns_missing:
        lines.append(f"add the schema-history columns {', '.join(plan.history_columns_missing)} "
                     f"to {target.qualified(vt.name)}")
    entry = plan.entry
    lines.append(f"record schema version {SCHEMA_VERSION} in {target.qualified(vt.name)}")
    changes = json.dumps(entry.to_json(), sort_keys=True)

    def record(op: Operations) -> None:
        if not plan.version_table_exists:
            op.invoke(CreateTableOp.from_table(vt))
        for name in plan.history_columns_missing:
            op.add_column(vt.name, vt.c[name]._copy(), schema=target.schema)
        if entry.number > 1:
            if plan.version != SCHEMA_VERSION or plan.first_changes_missing:
                values: dict[str, Any] = {"version": SCHEMA_VERSION}
                if plan.first_changes_missing:  # row 1 of an older chainlit-orm: keep its version
                    values["changes"] = json.dumps({"version": plan.version, "unknown": True},
                                                   sort_keys=True)
                op.execute(sa.update(vt).where(vt.c.id == 1).values(**values))
        elif plan.version_table_exists:  # the table exists but holds no row
            op.execute(sa.delete(vt))
        op.execute(sa.insert(vt).values(id=entry.number, version=SCHEMA_VERSION, appliedAt=now,
                                        fingerprint=entry.fingerprint, changes=changes))
    return lines, record


def _render(plan: _Plan, units: list[_Unit], dialect: Any) -> tuple[list[str], list[str]]:
    """Run the units against an offline (``as_sql``) Alembic context: the report's lines and
    the exact statements, without touching the database."""
    buffer = _StatementBuffer()
    offline = MigrationContext.configure(dialect=dialect, opts={
        "as_sql": True, "output_buffer": buffer, "literal_binds": True,
    })
    op = Operations(offline)
    lines: list[str] = []
    for unit in units:
        lines.extend(unit.lines)
        if unit.run is not None:
            unit.run(op)
        if unit.backfill is not None:
            select, update = _backfill_statements(plan.target, unit.backfill)
            for stmt in (*select, update):
                buffer.add(_template(stmt, dialect))
    return lines, buffer.statements


def _head(plan: _Plan, shown: str) -> str:
    """The report's first line: the version change, or, at the same version, what changed in the
    model set (its fingerprint), so "version 3 -> 3" never appears unexplained."""
    if plan.version == SCHEMA_VERSION and plan.version_table_exists:
        head = f"{shown}: schema version {SCHEMA_VERSION} (unchanged)"
        if plan.stored_fingerprint != plan.entry.fingerprint:
            head += (f"; the model set changed (fingerprint "
                     f"{plan.stored_fingerprint or 'not recorded'} -> {plan.entry.fingerprint})")
        return head
    before = "none recorded" if plan.version is None else str(plan.version)
    return f"{shown}: schema version {before} -> {SCHEMA_VERSION}"


def _nothing_to_do(waited: bool) -> MigrationReport:
    if waited:
        return MigrationReport(
            [f"waited for the migration lock held by another process; schema already at "
             f"version {SCHEMA_VERSION}: nothing to do"], changed=False, waited=True)
    return MigrationReport([f"schema is up to date at version {SCHEMA_VERSION}; nothing to do"],
                           changed=False)


def _report(plan: _Plan, shown: str, lines: list[str], statements: list[str],
            applied: list[str], *, dry_run: bool, waited: bool) -> MigrationReport:
    head = _head(plan, shown)
    if dry_run:
        return MigrationReport(
            [f"dry run on {head}", *lines,
             f"dry run: {len(statements)} statements would run; nothing was changed",
             *(f"{s};" for s in statements)],
            statements, changed=False, waited=waited, entry=plan.entry)
    first = ["waited for the migration lock held by another process"] if waited else []
    return MigrationReport(
        [*first, f"migrating {head}", *lines, *applied,
         f"schema history entry #{plan.entry.number}: {plan.entry.summary()}",
         f"done: schema version {SCHEMA_VERSION} recorded; {len(statements)} statements"],
        statements, changed=True, waited=waited, entry=plan.entry)


async def _migrate_on(
    conn: AsyncConnection,
    models: ModelSet,
    shown: str,
    *,
    dry_run: bool,
    dedupe_feedback: bool,
    waited: bool = False,
    online: bool = False,
) -> MigrationReport:
    """Plan, render, and (unless ``dry_run``) apply in one transaction: SQLite's migration (one
    writer at a time anyway, and its DDL is transactional) and the layer's creation of an empty
    database. The caller holds the lock (SQLite's ``BEGIN IMMEDIATE``, or
    :func:`~chainlit_orm.migrations.lock.transaction_lock`). ``online`` (a dry run of an online
    migration) plans and renders the statements an online migration would run."""
    assert dry_run or not online
    now = utc_now()
    plan = await conn.run_sync(_plan, models, shown, dedupe_feedback, online, now)
    if plan.empty:
        return _nothing_to_do(waited)
    units = _units(plan, models, now, conn.dialect)
    lines, statements = _render(plan, units, conn.dialect)
    if dry_run:
        return _report(plan, shown, lines, statements, [], dry_run=True, waited=waited)
    applied: list[str] = []
    try:
        await conn.run_sync(_apply_in_transaction, plan, units, models, now, applied)
    except DBAPIError as exc:
        outcome = ("nothing was changed (the transaction was rolled back)"
                   if plan.target.transactional_ddl else
                   "the steps before it were applied; fix the cause and migrate again to finish")
        raise SchemaError(
            f"migrating {shown} failed: {_short_error(exc)}; {outcome}", detail=shown
        ) from exc
    return _report(plan, shown, lines, statements, applied, dry_run=False, waited=waited)


def _apply_in_transaction(conn: Connection, plan: _Plan, units: list[_Unit], models: ModelSet,
                          now: str, applied: list[str]) -> None:
    op = Operations(MigrationContext.configure(conn))
    for unit in units:
        if unit.run is not None:
            unit.run(op)
        if unit.backfill is not None:
            applied.extend(_run_backfill(conn, plan.target, models, unit.backfill, now))


async def _migrate_online(engine: AsyncEngine, models: ModelSet, shown: str, *,
                          dedupe_feedback: bool, waited: bool) -> MigrationReport:
    """An online migration (PostgreSQL, MySQL/MariaDB), under the session lock the caller holds.

    Each unit commits on its own: an ``ALTER TABLE`` holds its lock for the few milliseconds of
    its own transaction, never through an index build or a backfill; each waits at most
    :data:`LOCK_TIMEOUT` for its lock (so writers never queue behind it for longer) and is tried
    again with backoff up to :data:`LOCK_ATTEMPTS` times. Indexes on existing tables are built
    ``CONCURRENTLY`` (PostgreSQL) or ``ALGORITHM=INPLACE, LOCK=NONE`` (MySQL/MariaDB); backfills
    commit every batch. A migration stopped at any point is finished by running it again: every
    unit is planned from what the database has (an index left INVALID by an interrupted
    concurrent build is dropped and built again), and the history entry is written last.
    """
    now = utc_now()
    async with _transaction(engine, shown) as conn:
        plan = await conn.run_sync(_plan, models, shown, dedupe_feedback, True, now)
        dialect = conn.dialect
    if plan.empty:
        return _nothing_to_do(waited)
    units = _units(plan, models, now, dialect)
    lines, statements = _render(plan, units, dialect)
    applied: list[str] = []
    conn = await engine.connect()
    auto = await (await engine.connect()).execution_options(isolation_level="AUTOCOMMIT")
    try:
        if plan.target.is_mysql:
            # metadata and row lock waits of this session: DDL here autocommits statement by
            # statement, so the session's settings are the statements' own
            async with conn.begin():
                await conn.execute(sa.text(
                    f"SET SESSION lock_wait_timeout = {LOCK_TIMEOUT:.0f}, "
                    f"innodb_lock_wait_timeout = {LOCK_TIMEOUT:.0f}"))
        for number, unit in enumerate(units, 1):
            what = unit.lines[0] if unit.lines else "a step"
            if unit.mode == "note":
                continue
            if unit.backfill is not None:
                applied.extend(await _online_backfill(conn, plan, models, unit.backfill, now,
                                                      shown, what))
            elif unit.mode == "autocommit":
                run = unit.run
                assert run is not None
                await auto.run_sync(lambda c, run=run: run(Operations(  # type: ignore[misc]
                    MigrationContext.configure(c))))
            else:
                await _retrying(lambda unit=unit: _short_transaction(conn, unit),  # type: ignore[misc]
                                shown, what)
            logger.info("migrate %s: step %d/%d done: %s", shown, number, len(units), what)
    except DBAPIError as exc:
        raise SchemaError(
            f"migrating {shown} failed: {_short_error(exc)}; the steps before it were applied; "
            "fix the cause and migrate again to finish", detail=shown) from exc
    finally:
        await auto.close()
        await conn.close()
    return _report(plan, shown, lines, statements, applied, dry_run=False, waited=waited)


async def _set_lock_timeout(conn: AsyncConnection) -> None:
    """PostgreSQL: this transaction waits at most :data:`LOCK_TIMEOUT` for a lock (MySQL/MariaDB:
    set once for the session, see :func:`_migrate_online`)."""
    if conn.dialect.name == "postgresql":
        await conn.execute(sa.text(f"SET LOCAL lock_timeout = '{int(LOCK_TIMEOUT * 1000)}ms'"))


async def _short_transaction(conn: AsyncConnection, unit: _Unit) -> None:
    run = unit.run
    assert run is not None
    async with conn.begin():
        await _set_lock_timeout(conn)
        await conn.run_sync(lambda c: run(Operations(MigrationContext.configure(c))))


def _lock_timed_out(exc: DBAPIError) -> bool:
    """A lock wait that gave up (PostgreSQL ``lock_not_available``/``deadlock_detected``,
    MySQL/MariaDB 1205 "Lock wait timeout exceeded"/1213 deadlock): the step can be tried again."""
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code in ("55P03", "40P01"):
        return True
    args: tuple[Any, ...] = tuple(getattr(orig, "args", ()))
    return bool(args) and args[0] in (1205, 1213)


async def _retrying(action: Callable[[], Awaitable[T]], shown: str, what: str) -> T:
    """Run ``action``; a lock wait that timed out is tried again after a growing, jittered pause,
    at most :data:`LOCK_ATTEMPTS` times, then :class:`MigrationLockError`."""
    last: DBAPIError | None = None
    async for _ in _LOCK_RETRY.tries():
        try:
            return await action()
        except DBAPIError as exc:
            if not _lock_timed_out(exc):
                raise
            last = exc
            logger.info("migrate %s: %s waited %g s for a lock (%s); trying again", shown, what,
                        LOCK_TIMEOUT, _short_error(exc))
    raise MigrationLockError(
        f"migrating {shown}: {what!r} could not take its lock within {LOCK_TIMEOUT:g} s in "
        f"{LOCK_ATTEMPTS} attempts: long transactions keep the table busy (see "
        "pg_stat_activity or SHOW PROCESSLIST); the steps before it were applied, migrate again "
        "to finish", detail=what) from last


async def _online_backfill(conn: AsyncConnection, plan: _Plan, models: ModelSet,
                           backfill: _Backfill, now: str, shown: str, what: str) -> list[str]:
    """A backfill committed batch by batch: each batch's row locks last one short transaction."""
    selects, update = _backfill_statements(plan.target, backfill)
    problems: list[str] = []
    after = _LOWEST_ID
    filled = 0

    async def one_batch() -> tuple[str, int, list[str]] | None:
        async with conn.begin():
            await _set_lock_timeout(conn)
            return await conn.run_sync(_backfill_batch, plan.target, models, backfill, selects,
                                       update, after, now)

    while True:
        result = await _retrying(one_batch, shown, what)
        if result is None:
            break
        after, count, found = result
        filled += count
        problems.extend(found)
    return _backfill_lines(plan.target, backfill, filled, problems)


def _template(stmt: sa.ClauseElement, dialect: Any) -> str:
    """A backfill statement as text: it runs once per batch with parameters, so it is shown
    with named placeholders and a comment saying so, rather than with one batch's values."""
    named = type(dialect)(paramstyle="named")
    text = str(stmt.compile(dialect=named))
    text = re.sub(r"\(?__\[POSTCOMPILE_(\w+)\]\)?", r"(:\1)", text)
    return f"-- once per batch of up to {BATCH_SIZE} rows\n{text}"


# ----------------------------------------------------------------------------- backfills


def _activity_statements(target: _Target) -> tuple[tuple[sa.Select[Any], ...], sa.Update]:
    """The statements of one activity batch: threads to fill, their user messages, the update."""
    t, s = target.tables["thread"], target.tables["step"]
    threads = (
        sa.select(t.c.id, sa.type_coerce(t.c.createdAt, sa.Text))
        .where(t.c.activityAt.is_(None), t.c.id > sa.bindparam("after", type_=t.c.id.type))
        .order_by(t.c.id).limit(BATCH_SIZE)
    )
    messages = (
        sa.select(s.c.threadId, sa.type_coerce(s.c.createdAt, sa.Text))
        .where(s.c.type == USER_MESSAGE,
               s.c.threadId.in_(sa.bindparam("ids", expanding=True, type_=s.c.threadId.type)))
    )
    update = (
        sa.update(t)
        .where(t.c.id == sa.bindparam("b_id", type_=t.c.id.type), t.c.activityAt.is_(None))
        .values(activityAt=sa.bindparam("b_value", type_=t.c.activityAt.type))
    )
    return (threads, messages), update


def _backfill_statements(
    target: _Target, backfill: _Backfill
) -> tuple[tuple[sa.Select[Any], ...], sa.Update]:
    if backfill.kind == "activity":
        return _activity_statements(target)
    if backfill.kind == "folded":
        return _folded_statements(target, backfill)
    return _metadata_statements(target, backfill)


def _folded_statements(
    target: _Target, backfill: _Backfill
) -> tuple[tuple[sa.Select[Any], ...], sa.Update]:
    """One batch of a folded copy: rows with a text and no copy yet (a thread's ``name``, a
    message's ``output`` and ``type``), then the update of each."""
    table = target.tables[backfill.entity]
    folded = table.c[backfill.columns[0]]
    source = table.c[folded.info[FOLDED_FROM]]
    typed = FOLDED_TYPES in folded.info and "type" in table.columns
    rows = (
        sa.select(table.c.id, source, *([table.c.type] if typed else []))
        .where(_folded_wanted(table, folded), folded.is_(None),
               table.c.id > sa.bindparam("after", type_=table.c.id.type))
        .order_by(table.c.id).limit(BATCH_SIZE)
    )
    update = (
        sa.update(table)
        .where(table.c.id == sa.bindparam("b_id", type_=table.c.id.type), folded.is_(None))
        .values({folded.name: sa.bindparam("b_value", type_=folded.type)})
    )
    return (rows,), update


def _folded_values(target: _Target, backfill: _Backfill,
                   batch: Sequence[Any]) -> list[dict[str, Any]]:
    """The copies, computed by the function the layer's writes use."""
    table = target.tables[backfill.entity]
    folded = table.c[backfill.columns[0]]
    source = folded.info[FOLDED_FROM]
    params = []
    for row in batch:
        values = {source: row[1], **({"type": row[2]} if len(row) > 2 else {})}
        params.append({"b_id": str(row[0]),
                       "b_value": folded_values(table, values)[folded.name]})
    return params


def _metadata_statements(
    target: _Target, backfill: _Backfill
) -> tuple[tuple[sa.Select[Any], ...], sa.Update]:
    table = target.tables[backfill.entity]
    rows = (
        sa.select(table.c.id, sa.type_coerce(table.c.metadata, sa.Text))
        .where(sa.or_(*(table.c[c].is_(None) for c in backfill.columns)),
               table.c.id > sa.bindparam("after", type_=table.c.id.type))
        .order_by(table.c.id).limit(BATCH_SIZE)
    )
    update = (
        sa.update(table)
        .where(table.c.id == sa.bindparam("b_id", type_=table.c.id.type))
        .values({c: sa.func.coalesce(table.c[c], sa.bindparam(f"b_{c}", type_=table.c[c].type))
                 for c in backfill.columns})
    )
    return (rows,), update


_LOWEST_ID = "00000000-0000-0000-0000-000000000000"


def _run_backfill(conn: Connection, target: _Target, models: ModelSet, backfill: _Backfill,
                  now: str) -> list[str]:
    """Fill one backfill in keyset-paginated batches, in the caller's transaction; return lines
    about what it filled and the rows it could not read.

    Values are computed in Python with the package's own parsing and conversion (timestamps
    written by Chainlit's layers come in several shapes; a SQL ``MAX`` over text would order
    ``...:02Z`` after ``...:02.5Z`` and copy non-normalized text), so every backfilled value is
    exactly what the layer would have written.
    """
    selects, update = _backfill_statements(target, backfill)
    problems: list[str] = []
    after = _LOWEST_ID
    filled = 0
    while True:
        result = _backfill_batch(conn, target, models, backfill, selects, update, after, now)
        if result is None:
            break
        after, count, found = result
        filled += count
        problems.extend(found)
    return _backfill_lines(target, backfill, filled, problems)


def _backfill_batch(conn: Connection, target: _Target, models: ModelSet, backfill: _Backfill,
                    selects: tuple[sa.Select[Any], ...], update: sa.Update, after: str,
                    now: str) -> tuple[str, int, list[str]] | None:
    """One batch after the id ``after``: (the last id read, rows updated, unreadable rows), or
    None when no row is left. Every update keeps a value already present (``IS NULL`` or
    ``COALESCE``), so a batch run again, or a row the app wrote meanwhile, is left as it is."""
    batch = conn.execute(selects[0], {"after": after}).all()
    if not batch:
        return None
    problems: list[str] = []
    if backfill.kind == "activity":
        params = _activity_values(conn, selects[1], batch, now, problems)
    elif backfill.kind == "folded":
        params = _folded_values(target, backfill, batch)
    else:
        params = _metadata_values(models, backfill, batch, problems)
    if params:
        conn.execute(update, params)
    return str(batch[-1][0]), len(params), problems


def _backfill_lines(target: _Target, backfill: _Backfill, filled: int,
                    problems: list[str]) -> list[str]:
    table = target.tables[backfill.entity].name
    shown = problems[:_MAX_LISTED]
    more = [f"... and {len(problems) - _MAX_LISTED} more"] if len(problems) > _MAX_LISTED else []
    return [f"backfilled {filled} rows of {table}", *shown, *more]


def _activity_values(conn: Connection, messages: sa.Select[Any], batch: Sequence[Any], now: str,
                     problems: list[str]) -> list[dict[str, Any]]:
    ids = [str(row[0]) for row in batch]
    latest: dict[str, str] = {}
    for thread_id, created in conn.execute(messages, {"ids": ids}):
        value = _timestamp(created, f"step of thread {thread_id}", problems)
        key = str(thread_id)
        if value is not None and (key not in latest or value > latest[key]):
            latest[key] = value
    params = []
    for thread_id, created in batch:
        key = str(thread_id)
        value = latest.get(key) or _timestamp(created, f"thread {key}", problems) or now
        params.append({"b_id": key, "b_value": value})
    return params


def _timestamp(value: Any, what: str, problems: list[str]) -> str | None:
    """A stored timestamp in our fixed-width form (so text order is time order), or None."""
    if value is None or value == "":
        return None
    try:
        return format_timestamp(parse_timestamp(value))
    except InvalidInputError:
        problems.append(f"{what}: createdAt {value!r} is not a timestamp; not used for activityAt")
        return None


def _metadata_values(models: ModelSet, backfill: _Backfill, batch: Sequence[Any],
                     problems: list[str]) -> list[dict[str, Any]]:
    params = []
    for row_id, raw in batch:
        metadata = _metadata_json(raw, f"{backfill.entity} {row_id}", problems)
        derived = to_row(models, backfill.entity, {"metadata": metadata})
        params.append({"b_id": str(row_id), **{f"b_{c}": derived.get(c) for c in backfill.columns}})
    return params


def _metadata_json(raw: Any, what: str, problems: list[str]) -> Any:
    if raw is None or isinstance(raw, dict | list):
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        problems.append(f"{what}: metadata is not JSON; derived columns filled as for no metadata")
        return None


# ----------------------------------------------------------------------------- history


async def schema_history_sql(url: SQLURL, models: ModelSet) -> list[HistoryEntry]:
    """The schema history of one SQL database, oldest first (see
    :func:`chainlit_orm.migrations.schema_history`)."""
    sa_url = url.async_url()
    shown = _shown(sa_url)
    engine = create_async_engine(sa_url, poolclass=NullPool, **_engine_options(url))
    try:
        async with _transaction(engine, shown) as conn:
            return await conn.run_sync(_history, _Target.of(models, conn.dialect.name))
    finally:
        await engine.dispose()


def _history(conn: Connection, target: _Target) -> list[HistoryEntry]:
    inspector = sa.inspect(conn)
    vt = target.version
    if vt.name not in inspector.get_table_names(schema=target.schema):
        return []
    have = {c["name"] for c in inspector.get_columns(vt.name, schema=target.schema)}
    columns = [vt.c[name] for name in ("id", "version", "appliedAt", "fingerprint", "changes")
               if name in have]
    entries = []
    for row in conn.execute(sa.select(*columns).order_by(vt.c.id)).mappings():
        raw = row.get("changes")
        data: object = None
        if raw is not None:
            try:
                data = json.loads(raw)
            except ValueError:
                data = None
        entry = HistoryEntry.from_json(int(row["id"]), str(row["appliedAt"]),
                                       row.get("fingerprint"), int(row["version"]), data)
        entries.append(entry)
    return entries
