"""The types both migrators share: what a migration reports, and what a DynamoDB backfill gets.

Kept in a module that imports neither migrator nor any layer, so the DynamoDB layer's backfill
can name :class:`BackfillRequest` without importing the migrator that calls it (the cycle
``layers.dynamodb`` <-> ``schema_gen.dynamo_migrate`` that issue 15 removed).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import sqlalchemy as sa

from chainlit_orm.models.modelset import ModelSet
from chainlit_orm.urls import DynamoURL

__all__ = ["BackfillHook", "BackfillRequest", "HistoryEntry", "MigrationReport", "fingerprint"]


@dataclass
class MigrationReport:
    """What a migration did, or would do with ``dry_run``.

    Attributes:
        lines: human-readable lines for the console, one per action, then a summary; with
            ``dry_run`` also the SQL statements, each ending with ``;``.
        statements: the SQL statements, in the order they run (backfill statements appear once,
            as the parameterized statement repeated per batch). Empty for DynamoDB.
        changed: True when the database was changed (always False for a dry run). Callers
            decide "nothing to do" from this, never from the wording of ``lines``.
        waited: another process held the migration lock when this one asked for it (it then
            found the work done, or finished it). With ``changed`` False: "waited for the other
            migration, nothing left to do".
        entry: the schema-history entry this migration recorded (or, for a dry run, would
            record); None when nothing changed.
    """

    lines: list[str] = field(default_factory=list)
    statements: list[str] = field(default_factory=list)
    changed: bool = False
    waited: bool = False
    #: not compared: it carries the time it was applied
    entry: HistoryEntry | None = field(default=None, compare=False)


@dataclass(frozen=True)
class HistoryEntry:
    """One recorded migration of a database: what it added, and to which model set.

    A migration that changed something records one entry (``chainlit-orm migrate --history URL``
    prints them, :func:`chainlit_orm.migrations.schema_history` returns them). Entries written by
    a chainlit-orm older than the history have ``fingerprint`` None and ``known`` False: that
    version recorded only its number and time.

    Attributes:
        number: 1 for the first migration of the database, then 2, 3...
        version: the package's schema version the migration brought the database to.
        applied_at: when it was applied (ISO-8601 UTC).
        fingerprint: the model set's fingerprint (:func:`fingerprint`): a custom column or index
            changes it, the package version does not.
        tables, columns, indexes: what was created (``table``, ``table.column``,
            ``table.index``; DynamoDB: the table, and GSIs as indexes).
        other: the other changes, as the report's lines name them (a NOT NULL relaxed, a
            collation made exact, duplicate feedback removed, a backfill, TTL enabled).
        known: False for an entry recorded by an older chainlit-orm (what it added is unknown).
    """

    number: int
    version: int
    applied_at: str
    fingerprint: str | None = None
    tables: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    indexes: tuple[str, ...] = ()
    other: tuple[str, ...] = ()
    known: bool = True

    def describe(self) -> str:
        """One line: "#2 2026-01-05T10:00:00.000000Z version 3 (models 1a2b...): added ..."."""
        head = f"#{self.number} {self.applied_at} version {self.version}"
        if self.fingerprint:
            head += f" (models {self.fingerprint})"
        if not self.known:
            return f"{head}: recorded by an older chainlit-orm, which did not record its changes"
        return f"{head}: {self.summary()}"

    def summary(self) -> str:
        """What the entry added, in words ("added column threads.tenant; ...")."""
        parts = [f"added {kind} {', '.join(names)}" for kind, names in (
            ("tables", self.tables), ("columns", self.columns), ("indexes", self.indexes))
            if names]
        parts += list(self.other)
        return "; ".join(parts) or "recorded the schema version"

    def to_json(self) -> dict[str, object]:
        """The stored form (SQL: the ``changes`` column; DynamoDB: an entry of ``history``);
        number, time and fingerprint are stored beside it."""
        return {"version": self.version, "tables": list(self.tables),
                "columns": list(self.columns), "indexes": list(self.indexes),
                "other": list(self.other)}

    @classmethod
    def from_json(cls, number: int, applied_at: str, fingerprint: str | None,
                  version: int, data: object) -> HistoryEntry:
        """An entry from its stored form (``data`` None: written by an older chainlit-orm)."""
        if not isinstance(data, dict) or data.get("unknown"):
            stored = data.get("version") if isinstance(data, dict) else None
            return cls(number, stored if isinstance(stored, int) else version, applied_at,
                       fingerprint, known=False)

        def names(key: str) -> tuple[str, ...]:
            value = data.get(key)
            return tuple(str(v) for v in value) if isinstance(value, list) else ()

        stored = data.get("version")
        return cls(number, int(stored) if isinstance(stored, int) else version, applied_at,
                   fingerprint, names("tables"), names("columns"), names("indexes"),
                   names("other"))


def fingerprint(models: ModelSet) -> str:
    """A short, stable digest of what a model set asks of a database: every table's name and
    schema, its columns (name, type, nullability) and indexes and unique constraints (name,
    columns, uniqueness), and the DynamoDB keys. Two sets that need the same schema have the
    same fingerprint; a custom column or index changes it."""
    described: list[object] = []
    for entity, table in models.tables():
        columns = sorted((c.name, repr(c.type), bool(c.nullable)) for c in table.columns)
        indexes = sorted((str(i.name), [c.name for c in i.columns], bool(i.unique))
                         for i in table.indexes)
        uniques = sorted([c.name for c in cons.columns] for cons in table.constraints
                         if isinstance(cons, sa.UniqueConstraint))
        described.append([entity, table.schema, table.name, columns, indexes, uniques])
    described.append(sorted(repr(keys) for keys in models.dynamo.values()))
    text = json.dumps(described, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class BackfillRequest:
    """What a backfill hook gets: the table, how to reach it, and the GSIs just created."""

    url: DynamoURL
    models: ModelSet
    new_indexes: tuple[str, ...]


#: ``async def hook(request) -> list[str]``: fill the new GSIs' attributes on existing items,
#: returning lines to print.
BackfillHook = Callable[[BackfillRequest], Awaitable[list[str]]]
