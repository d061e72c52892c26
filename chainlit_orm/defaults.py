"""Default values and names the ``chainlit-orm`` command shows in its help, kept in a module that
imports nothing, so ``chainlit-orm --help``, ``--version`` and a shell-completion TAB load click
and this file only (no SQLAlchemy, no Chainlit: importing Chainlit writes ``.chainlit/`` and
``.files/`` into the working directory). The modules that use each value import it from here:
one definition each."""

from __future__ import annotations

__all__ = [
    "DATABASE_URL_VARIABLES",
    "DEFAULT_HOOK_BREAKER",
    "DEFAULT_HOOK_TIMEOUT",
    "DEFAULT_MIGRATE_TIMEOUT",
    "DEFAULT_PURGE_BATCH",
    "DEFAULT_TRANSFER_BATCH",
    "DEFAULT_TRANSFER_TIMEOUT",
    "HOOK_CONCURRENCY",
    "SOURCE_KINDS",
    "SQL_DIALECTS",
    "STORAGE_URL_VARIABLE",
]

#: Where a database URL is read from when none is given, in this order: the first variable that
#: is set and not empty wins. One tuple for ``from_env()`` and the CLI, so an app and the
#: ``chainlit-orm`` command run in its environment always mean the same database.
DATABASE_URL_VARIABLES: tuple[str, ...] = ("CHAINLIT_ORM_DATABASE_URL", "DATABASE_URL")

#: Where element storage's URL is read from when none is given (``from_env()``, the CLI).
STORAGE_URL_VARIABLE = "CHAINLIT_ORM_STORAGE_URL"

#: Seconds maintenance work may take: ``migrate``, and the schema check/creation of a layer's
#: first call (shared by the calls that wait for it, not cut short by their ``timeout``).
DEFAULT_MIGRATE_TIMEOUT = 600.0

#: Seconds one ``on_delete`` hook call may take (the layers' ``on_delete_timeout``).
DEFAULT_HOOK_TIMEOUT = 30.0

#: Hook calls of one batch in flight at once. Why: one after the other, a hook that hangs (its
#: service down) made a 500-thread batch last 500 times ``on_delete_timeout`` (an outside attack
#: measured 20 hanging hooks at a 1 s limit taking 20 s); 16 at a time bound it by 32 times the
#: limit without flooding the hook's service with a whole batch at once.
HOOK_CONCURRENCY = 16
#: Hook calls in a row past ``on_delete_timeout`` after which a run stops calling the hook (the
#: layers' ``on_delete_breaker``): one full round of :data:`HOOK_CONCURRENCY` calls, so the
#: breaker does not lower the concurrency and a hook service that is down costs a run one
#: ``on_delete_timeout``, not one per 16 threads.
DEFAULT_HOOK_BREAKER = HOOK_CONCURRENCY

#: Threads per purge batch (one transaction on SQL).
DEFAULT_PURGE_BATCH = 500

#: Threads per transfer batch: the unit of a transaction, of a checkpoint and of what a rerun
#: repeats.
DEFAULT_TRANSFER_BATCH = 200

#: Seconds one transfer statement (a SQL batch's read or write transaction, a DynamoDB Scan
#: page, Query, BatchGetItem or BatchWriteItem round) may take, its retries included. Longer
#: than an app call's 30 s: a batch moves up to ``--batch`` threads at once.
DEFAULT_TRANSFER_TIMEOUT = 300.0

#: ``source_kind`` values: chainlit-orm's own tables, or Chainlit's official data layer's.
SOURCE_KINDS: tuple[str, ...] = ("chainlit-orm", "official")

#: Dialect names :func:`chainlit_orm.schema_gen.ddl` accepts (``SQLDialect``'s values; a test
#: keeps the two equal). ``mysql`` covers MariaDB (the DDL is valid on both).
SQL_DIALECTS: tuple[str, ...] = ("postgresql", "sqlite", "mysql")
