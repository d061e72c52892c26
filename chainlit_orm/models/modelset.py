"""Model sets: the five entity classes as SQL tables with their own ``MetaData``.

Nothing in the package reads a model class or a table from a module global: schema generation,
the CLI and the layers all take a :class:`ModelSet`. :data:`DEFAULT_MODELS` is the set made from the
entities in :mod:`chainlit_orm.models.entities`; an app declares its own with
:meth:`ModelSet.build`::

    class TenantThread(ThreadFields):
        __indexes__ = ThreadFields.__indexes__ + (IndexSpec("tenant", ("tenant",)),)
        tenant: str | None = metadata_column("tenant", "tenant")

    MODELS = ModelSet.build(thread=TenantThread, prefix="acme_", schema="chat")

Where a set comes from: ``chainlit-orm migrate`` must be told the same set (``--models
MODULE:ATTR``), so every "run migrate" hint names it (:meth:`ModelSet.cli_spec`). A set
remembers the module that built it and is looked up there, by identity, when a hint needs it;
``ModelSet.build(..., origin="pkg.mod:attr")`` states it instead (for a set built inside a
function, or kept somewhere the lookup cannot see).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import registry as sa_registry
from sqlmodel import Field, SQLModel
from sqlmodel.main import SQLModelMetaclass

from chainlit_orm.errors import ConfigurationError
from chainlit_orm.models.entities import (
    DynamoEntityKeys,
    ElementFields,
    FeedbackFields,
    IndexSpec,
    StepFields,
    ThreadFields,
    UserFields,
)
from chainlit_orm.models.types import IndexedText

__all__ = ["DEFAULT_MODELS", "ENTITIES", "ModelSet", "metadata_column"]

#: Entity names in dependency order (parents first): creation order for DDL and deletes in reverse.
ENTITIES: tuple[str, ...] = ("user", "thread", "step", "element", "feedback")

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,40}$")
_ORIGIN_RE = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")

#: What a hint shows for ``--models`` when the set's place cannot be found (see ``cli_spec``).
UNKNOWN_ORIGIN = "MODULE:ATTR"

#: ``Column.info`` key naming the thread-metadata key a derived column is filled from.
FROM_METADATA = "from_metadata"


def metadata_column(sql_name: str, metadata_key: str, *, type_: Any = IndexedText) -> Any:
    """A custom column filled from a key of the entity's ``metadata`` on every write.

    This is the documented way for an app to add a queryable column (for example a tenant) without
    changing how Chainlit calls the layer: the app puts the value in the thread's metadata (e.g.
    through ``cl.user_session``, which Chainlit persists into thread metadata) and the layer copies
    it into the column in the same statement.
    """
    return Field(
        default=None,
        sa_type=type_,
        sa_column_kwargs={
            "name": sql_name,
            "nullable": True,
            "info": {"internal": True, FROM_METADATA: metadata_key},
        },
    )


@dataclass(frozen=True)
class ModelSet:
    """Five table models sharing one ``MetaData``.

    Attributes:
        user, thread, step, element, feedback: the ``table=True`` SQLModel classes.
        metadata: the ``MetaData`` holding exactly this set's tables; public so an app that runs its
            own Alembic can include or exclude them.
        prefix: table-name prefix ("" for Chainlit's documented names).
        schema: PostgreSQL schema, or None for the default one.
        version_table: name of chainlit-orm's schema-version table for this prefix.
        origin: ``"pkg.module:attr"`` as given to :meth:`build`, or None (then looked up: see
            :meth:`cli_spec`).
        module: the ``__name__`` of the module that called :meth:`build`.
    """

    user: type[SQLModel]
    thread: type[SQLModel]
    step: type[SQLModel]
    element: type[SQLModel]
    feedback: type[SQLModel]
    metadata: sa.MetaData
    prefix: str = ""
    schema: str | None = None
    dynamo: Mapping[str, DynamoEntityKeys] = field(default_factory=dict)
    origin: str | None = field(default=None, compare=False)
    module: str | None = field(default=None, compare=False, repr=False)

    @property
    def version_table(self) -> str:
        return f"{self.prefix}chainlit_orm_version"

    @property
    def tombstone_table(self) -> str:
        """Name of the table of erased thread ids for this prefix (see
        :func:`chainlit_orm.schema_gen.sql.tombstone_table`)."""
        return f"{self.prefix}chainlit_orm_erased"

    def model(self, entity: str) -> type[SQLModel]:
        return getattr(self, entity)  # type: ignore[no-any-return]

    def table(self, entity: str) -> sa.Table:
        return self.model(entity).__table__  # type: ignore[attr-defined,no-any-return]

    def tables(self) -> Iterator[tuple[str, sa.Table]]:
        for entity in ENTITIES:
            yield entity, self.table(entity)

    def metadata_columns(self, entity: str) -> dict[str, str]:
        """SQL column name -> metadata key, for the derived columns of ``entity``."""
        return {
            column.name: column.info[FROM_METADATA]
            for column in self.table(entity).columns
            if FROM_METADATA in column.info
        }

    def cli_spec(self) -> str | None:
        """The ``--models`` value that names this set to ``chainlit-orm``: None for
        :data:`DEFAULT_MODELS` (no option needed).

        ``origin`` when :meth:`build` was given one; else the module-level name this set is
        bound to, looked up by identity in the module that built it, then in every imported
        module (only when a hint is made, never on a data path). A module Chainlit loaded from a
        file (``chainlit run app.py`` names it ``app.py``) or run as ``__main__`` is named by its
        file's path from the current directory (``app``), which is how the CLI imports it. When
        no module-level name is found, :data:`UNKNOWN_ORIGIN` (``MODULE:ATTR``) stands in: pass
        ``origin=`` to :meth:`build`.
        """
        if self is DEFAULT_MODELS:
            return None
        if self.origin is not None:
            return self.origin
        return _find_origin(self) or UNKNOWN_ORIGIN

    @classmethod
    def build(
        cls,
        *,
        user: type[SQLModel] = UserFields,
        thread: type[SQLModel] = ThreadFields,
        step: type[SQLModel] = StepFields,
        element: type[SQLModel] = ElementFields,
        feedback: type[SQLModel] = FeedbackFields,
        prefix: str = "",
        schema: str | None = None,
        origin: str | None = None,
    ) -> ModelSet:
        """Make a set of table models from non-table field classes.

        Each call creates a fresh SQLAlchemy registry and ``MetaData``, so any number of sets can
        coexist in one process (one per tenant database, one per test).

        Args:
            user, thread, step, element, feedback: the non-table field classes of the five
                entities (subclasses of the ``*Fields`` classes of
                :mod:`chainlit_orm.models.entities`).
            prefix: table-name prefix ("" keeps Chainlit's documented names).
            schema: PostgreSQL schema of the tables (None: the default one).
            origin: where the set is importable from, ``"pkg.module:attr"``, as
                ``chainlit-orm --models`` takes it. Optional: a set bound to a module-level name
                is found there when a hint needs it (:meth:`cli_spec`).

        Raises:
            ConfigurationError: ``prefix`` or ``schema`` is not a plain SQL identifier, ``origin``
                is not ``pkg.module:attr``, or a field class is already a table model.
        """
        if origin is not None and (not isinstance(origin, str) or not _ORIGIN_RE.match(origin)):
            raise ConfigurationError(f"origin must be 'package.module:attribute': {origin!r}")
        caller = sys._getframe(1).f_globals.get("__name__")
        if prefix and not _NAME_RE.match(prefix):
            raise ConfigurationError(f"table prefix must match {_NAME_RE.pattern}: {prefix!r}")
        if schema is not None and not _NAME_RE.match(schema):
            raise ConfigurationError(f"schema must match {_NAME_RE.pattern}: {schema!r}")
        metadata = sa.MetaData(schema=schema)
        registry = sa_registry(metadata=metadata)
        base = SQLModelMetaclass(
            f"_{prefix or 'default'}Base", (SQLModel,), {"__module__": __name__},
            registry=registry,
        )
        fields = {"user": user, "thread": thread, "step": step, "element": element,
                  "feedback": feedback}
        models: dict[str, type[SQLModel]] = {}
        for entity in ENTITIES:
            source = fields[entity]
            if getattr(source, "__table__", None) is not None:
                raise ConfigurationError(
                    f"{source.__name__} is a table model; pass its non-table field class"
                )
            table_name = prefix + source.__base_table__  # type: ignore[attr-defined]
            namespace = {
                "__module__": source.__module__,
                "__tablename__": table_name,
                # utf8mb4: MariaDB's older defaults cannot store emoji or most of Unicode
                "__table_args__": {"mysql_charset": "utf8mb4",
                                   "mysql_collate": "utf8mb4_unicode_ci"},
            }
            model = SQLModelMetaclass(
                source.__name__.removesuffix("Fields") or source.__name__,
                (source, base),
                namespace,
                table=True,
            )
            models[entity] = cast("type[SQLModel]", model)
        for entity in ENTITIES:
            _add_constraints(models, entity, fields[entity], prefix)
        return cls(
            **models,
            metadata=metadata,
            prefix=prefix,
            schema=schema,
            dynamo={e: fields[e].__dynamo__ for e in ENTITIES},  # type: ignore[attr-defined]
            origin=origin,
            module=caller if isinstance(caller, str) else None,
        )


def _add_constraints(
    models: dict[str, type[SQLModel]], entity: str, source: type[SQLModel], prefix: str
) -> None:
    """Attach indexes and foreign keys declared on the field class to the new table."""
    table: sa.Table = models[entity].__table__  # type: ignore[attr-defined]
    spec: IndexSpec
    for spec in source.__indexes__:  # type: ignore[attr-defined]
        where = table.c[spec.columns[0]].is_not(None) if spec.only_set else None
        sa.Index(
            f"ix_{table.name}_{spec.name}",
            *(table.c[name] for name in spec.columns),
            unique=spec.unique,
            postgresql_where=where,
            sqlite_where=where,
        )
    for column_name, target in source.__foreign_keys__:  # type: ignore[attr-defined]
        target_table: sa.Table = models[target].__table__  # type: ignore[attr-defined]
        table.append_constraint(
            sa.ForeignKeyConstraint(
                [table.c[column_name]],
                [target_table.c["id"]],
                ondelete="CASCADE",
                name=f"fk_{table.name}_{column_name}",
            )
        )
    _ = prefix


def _find_origin(models: ModelSet) -> str | None:
    """``module:attr`` of a module-level name bound to ``models`` (see :meth:`ModelSet.cli_spec`):
    the building module first, then every imported module."""
    first = sys.modules.get(models.module or "")
    candidates = [(models.module or "", first)] if first is not None else []
    candidates += [(name, module) for name, module in list(sys.modules.items())
                   if module is not first]
    for name, module in candidates:
        if not isinstance(module, ModuleType):
            continue
        try:
            namespace = vars(module)
        except TypeError:
            continue
        attribute = next((key for key, value in list(namespace.items())
                          if value is models and key.isidentifier()), None)
        if attribute is None:
            continue
        importable = _importable_name(name, module)
        if importable is not None:
            return f"{importable}:{attribute}"
    return None


def _importable_name(name: str, module: ModuleType) -> str | None:
    """The name ``chainlit-orm --models`` imports ``module`` by (from the current directory).

    A module's own name, unless it is ``__main__`` or the name Chainlit gives the app file it
    loads (its path, ``app.py``): then the file's path from the current directory, dotted."""
    file = getattr(module, "__file__", None)
    parts = name.split(".")
    if name != "__main__" and all(p.isidentifier() for p in parts):
        if not file:
            return name
        path = Path(file)
        last = path.parent.name if path.stem == "__init__" else path.stem
        if last == parts[-1]:
            return name
    if not file:
        return None
    try:
        relative = Path(file).resolve().relative_to(Path.cwd().resolve())
    except (ValueError, OSError):
        return None
    dotted = list(relative.with_suffix("").parts)
    if dotted and dotted[-1] == "__init__":
        dotted.pop()
    if not dotted or not all(p.isidentifier() for p in dotted):
        return None
    return ".".join(dotted)


#: The default model set: Chainlit's documented table names, no prefix, default schema.
DEFAULT_MODELS: ModelSet = ModelSet.build()
