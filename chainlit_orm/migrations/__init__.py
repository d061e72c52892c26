"""Migration: bring a live database to the schema a model set describes.

One package for both backends, side by side on the shared types of :mod:`.report`:

* :mod:`.sql`: SQLite, PostgreSQL, MySQL/MariaDB (Alembic operations, additive only), and the
  SQL layer's first-use check :func:`~chainlit_orm.migrations.sql.ensure_schema`;
* :mod:`.dynamo`: the single DynamoDB table and its GSIs, then the layer's backfill.

:func:`migrate` (also ``chainlit_orm.migrate`` and ``chainlit-orm migrate``) parses the URL with
:func:`chainlit_orm.urls.parse_url` and dispatches. The package is not called ``migrate``: a
subpackage of that name would shadow the public ``chainlit_orm.migrate()`` function once imported.
:mod:`chainlit_orm.schema_gen` derives the specs both migrators apply and does no I/O.
"""

from __future__ import annotations

import asyncio
import os

from chainlit_orm.errors import NotFoundError, TimeoutExceededError, mask_url
from chainlit_orm.layers.deadline import DEFAULT_MIGRATE_TIMEOUT, check_timeout
from chainlit_orm.logs import quiet_alembic as _quiet_alembic
from chainlit_orm.migrations.lock import LockState, lock_timeout_error
from chainlit_orm.migrations.report import (
    BackfillHook,
    BackfillRequest,
    HistoryEntry,
    MigrationReport,
    fingerprint,
)
from chainlit_orm.models.modelset import DEFAULT_MODELS, ModelSet
from chainlit_orm.urls import SQLURL, DynamoURL, parse_url

__all__ = ["BackfillHook", "BackfillRequest", "HistoryEntry", "MigrationReport", "fingerprint",
           "migrate", "schema_history"]


async def _sqlite_file_missing(parsed: SQLURL) -> str | None:
    """The path of the SQLite database file ``parsed`` names when it does not exist, else None
    (another backend, an in-memory database, or a ``uri=true`` URL, whose file name is the
    driver's to read).

    Why: opening a SQLite path creates the file, so a dry run or a history read (both promise
    to change nothing) of a misspelt path would leave an empty database behind."""
    if parsed.dialect != "sqlite" or "uri" in parsed.url.query:
        return None
    database = parsed.url.database or ""
    if database in ("", ":memory:"):
        return None
    return await asyncio.to_thread(_absent, database)


def _absent(path: str) -> str | None:
    """``path`` made absolute when nothing is there, else None (a stat: run in a thread)."""
    absolute = os.path.abspath(path)
    return None if os.path.exists(absolute) else absolute


async def migrate(
    url: str,
    *,
    models: ModelSet = DEFAULT_MODELS,
    dry_run: bool = False,
    dedupe_feedback: bool = False,
    # a limit that holds by default, not only when the caller wraps the call in one
    timeout: float = DEFAULT_MIGRATE_TIMEOUT,  # noqa: ASYNC109
) -> MigrationReport:
    """Create the set's schema in an empty database or upgrade an existing one, additively.

    Args:
        url: a SQL database URL (``postgresql://``, ``sqlite:///``, ``mysql://``, ``mariadb://``,
            with or without the async driver) or ``dynamodb://TABLE?...``.
        models: the model set to migrate to (prefix, schema and extra columns included).
        dry_run: compute and render the statements, print them in the report, change nothing.
        dedupe_feedback: where a step has several feedback rows (Chainlit's layer allowed it),
            keep the most recently written one and delete the others, so the unique
            feedback-per-step index can be built. Without it migrate refuses. SQL only.
        timeout: seconds the whole migration may take (default 600; raise it for a backfill of
            a large table). Past it the migration is cancelled: on SQLite its transaction
            rolls back; PostgreSQL and MariaDB keep the steps already committed (migrate is
            idempotent: run it again to finish).

    Concurrent migrations of one database (several app processes starting, a deploy job) take
    turns on a lock (:mod:`chainlit_orm.migrations.lock`): one migrates, the others wait and
    then find nothing to do (``report.waited``). PostgreSQL and MySQL/MariaDB migrate online,
    step by step, while the app keeps writing (:mod:`chainlit_orm.migrations.sql`).

    Returns:
        The report; ``changed`` is False when the schema was already up to date.

    Raises:
        ConfigurationError: the URL names an unsupported database (the message lists the
            supported ones).
        BackendUnavailableError: the server cannot be reached or refuses the credentials.
        TimeoutExceededError: the migration did not finish within ``timeout``.
        MigrationLockError: the migration lock was not taken within ``timeout`` (another
            migration held it, or the URL goes through a transaction-mode pooler), or a table
            lock was not taken after the bounded retries.
        SchemaError: duplicate feedback rows (without ``dedupe_feedback``), a database recorded at
            a newer schema version, an index name taken by a different index, or a failed
            statement (chained to the driver error).
        NotFoundError: a dry run of a SQLite file that does not exist (nothing to report; the
            dry run does not create it, a migration without ``dry_run`` does).
    """
    limit = check_timeout(timeout, "timeout")
    parsed = parse_url(url)
    if dry_run and isinstance(parsed, SQLURL) and (missing := await _sqlite_file_missing(parsed)):
        raise NotFoundError(
            f"the SQLite database {missing} does not exist: nothing to report (the dry run "
            "creates nothing; migrate without --dry-run creates it)", detail=missing)
    lock = LockState()
    try:
        async with asyncio.timeout(limit):
            if isinstance(parsed, DynamoURL):
                from chainlit_orm.migrations.dynamo import migrate_dynamodb

                return await migrate_dynamodb(url, models, dry_run, lock=lock)
            with _quiet_alembic():
                from chainlit_orm.migrations.sql import migrate_sql

                return await migrate_sql(parsed, models, dry_run=dry_run,
                                         dedupe_feedback=dedupe_feedback, lock=lock)
    except TimeoutError as exc:
        if isinstance(exc, TimeoutExceededError):
            raise
        if lock.waited and not lock.held:
            raise lock_timeout_error(mask_url(url), limit, lock) from exc
        raise TimeoutExceededError(
            f"migrate of {mask_url(url)} did not finish within its timeout of {limit:g} s",
            detail=limit) from exc


async def schema_history(url: str, models: ModelSet | None = None) -> list[HistoryEntry]:
    """The schema history of a database: one entry per migration that changed it, oldest first
    (what it added, the schema version, the model set's fingerprint). Empty when the database was
    never migrated. ``chainlit-orm migrate --history URL`` prints it.

    Args:
        url: as for :func:`migrate`.
        models: the model set whose version table to read (its prefix and schema); the default
            set when None.

    Raises:
        ConfigurationError: an unsupported URL.
        BackendUnavailableError: the database cannot be reached.
        NotFoundError: a SQLite file that does not exist (reading it would create it).
    """
    parsed = parse_url(url)
    if isinstance(parsed, SQLURL) and (missing := await _sqlite_file_missing(parsed)):
        raise NotFoundError(
            f"the SQLite database {missing} does not exist: no schema history to report",
            detail=missing)
    chosen = DEFAULT_MODELS if models is None else models
    if isinstance(parsed, DynamoURL):
        from chainlit_orm.migrations.dynamo import schema_history_dynamodb

        return await schema_history_dynamodb(url)
    from chainlit_orm.migrations.sql import schema_history_sql

    return await schema_history_sql(parsed, chosen)
