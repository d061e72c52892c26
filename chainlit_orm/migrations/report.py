"""The types both migrators share: what a migration reports, and what a DynamoDB backfill gets.

Kept in a module that imports neither migrator nor any layer, so the DynamoDB layer's backfill
can name :class:`BackfillRequest` without importing the migrator that calls it (the cycle
``layers.dynamodb`` <-> ``schema_gen.dynamo_migrate`` that issue 15 removed).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from chainlit_orm.models.modelset import ModelSet
from chainlit_orm.urls import DynamoURL

__all__ = ["BackfillHook", "BackfillRequest", "MigrationReport"]


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
    """

    lines: list[str] = field(default_factory=list)
    statements: list[str] = field(default_factory=list)
    changed: bool = False


@dataclass(frozen=True)
class BackfillRequest:
    """What a backfill hook gets: the table, how to reach it, and the GSIs just created."""

    url: DynamoURL
    models: ModelSet
    new_indexes: tuple[str, ...]


#: ``async def hook(request) -> list[str]``: fill the new GSIs' attributes on existing items,
#: returning lines to print.
BackfillHook = Callable[[BackfillRequest], Awaitable[list[str]]]
