"""Logging policy: every module logs to ``logging.getLogger(__name__)`` (so ``chainlit_orm`` and
any sub-tree of it can be tuned on its own), nothing is logged at INFO on an app's start, and
Alembic stays quiet while chainlit-orm uses it.

Why the Alembic part: the package drives Alembic's operations and its schema comparison
(:mod:`chainlit_orm.migrations.sql`); Alembic logs each ``MigrationContext`` it makes ("Context
impl SQLiteImpl.", "Will assume non-transactional DDL.") and each difference it detects at INFO.
An app that logs at INFO (Chainlit's ``--debug``, a ``basicConfig(level=INFO)``) would print
those lines at every start on SQLite (the first-use schema check) and on every ``migrate``,
although the app never ran Alembic itself. So :func:`quiet_alembic` drops Alembic's records
below WARNING *while chainlit-orm's own code runs* (a context variable, so an app's own Alembic
run in the same process, even at the same time, logs as usual). Alembic's logging configuration
(``fileConfig`` of an ``alembic.ini``) is never loaded by the package: no ``alembic.config.Config``
is made.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar

__all__ = ["quiet_alembic"]

_INSIDE: ContextVar[bool] = ContextVar("chainlit_orm_quiet_alembic", default=False)


class _QuietInside(logging.Filter):
    """Drops an Alembic record below WARNING made while :func:`quiet_alembic` is active."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not _INSIDE.get()


_FILTER = _QuietInside()
_FILTERED: set[str] = set()

#: Alembic's module loggers (``getLogger(__name__)`` in each of these modules, Alembic 1.14 to
#: 1.17): made here before Alembic is imported, so the filter is on them when Alembic's import
#: logs its plugin set-up. A logger of a later Alembic module is found by :func:`_attach`'s scan.
ALEMBIC_LOGGERS = (
    "alembic.autogenerate.api", "alembic.autogenerate.compare",
    "alembic.autogenerate.compare.comments", "alembic.autogenerate.compare.constraints",
    "alembic.autogenerate.compare.schema", "alembic.autogenerate.compare.server_defaults",
    "alembic.autogenerate.compare.tables", "alembic.autogenerate.compare.types",
    "alembic.config", "alembic.ddl.impl", "alembic.ddl.postgresql",
    "alembic.ext.checkconstraint_byname", "alembic.runtime.migration",
    "alembic.runtime.plugins", "alembic.util.messaging",
)


def _attach() -> None:
    """Put the filter on every Alembic logger (a filter applies to the records of the logger it
    is on, not of its children, and each Alembic module has its own logger)."""
    for name in ALEMBIC_LOGGERS:
        if name not in _FILTERED:
            logging.getLogger(name).addFilter(_FILTER)
            _FILTERED.add(name)
    for name, found in list(logging.Logger.manager.loggerDict.items()):
        if (name == "alembic" or name.startswith("alembic.")) and name not in _FILTERED and (
                isinstance(found, logging.Logger)):
            found.addFilter(_FILTER)
            _FILTERED.add(name)


@contextlib.contextmanager
def quiet_alembic() -> Iterator[None]:
    """Within the body (and the tasks and greenlets it starts), Alembic logs only warnings and
    errors."""
    _attach()
    token = _INSIDE.set(True)
    try:
        # importing Alembic sets up its autogenerate plugins, logging each at INFO: done here,
        # inside, the first time
        import alembic.autogenerate
        import alembic.runtime.migration  # noqa: F401

        _attach()
        yield
    finally:
        _INSIDE.reset(token)
