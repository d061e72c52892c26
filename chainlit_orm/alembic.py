"""Use chainlit-orm's tables from an app's own Alembic environment.

An app that keeps its own tables under Alembic, in the same database as the chat history, points
its ``env.py`` at the package's metadata and filters::

    from chainlit_orm.alembic import include_name, include_object, target_metadata

    context.configure(
        connection=connection,
        target_metadata=[target_metadata, MyBase.metadata],
        include_name=include_name,
        include_object=include_object,
        include_schemas=True,
    )

Why the filters exist: ``chainlit-orm migrate`` creates objects that are not tables of the models
(its schema-version table ``chainlit_orm_version``, and the search indexes: a ``pg_trgm`` GIN
index per folded column on PostgreSQL, an FTS5 virtual table with its shadow tables on SQLite).
Without the filters, ``alembic revision --autogenerate`` against a database made by ``migrate``
proposes to drop every one of them. With them, it proposes nothing for the package's objects,
and the app's own tables are compared as usual.

The filters know the names of one or more :class:`~chainlit_orm.models.ModelSet` (the default set
for the module-level ones); an app with its own set (a table prefix, a schema) builds its own
with :func:`filters_for`.

Schemas: a set built with ``schema="chat"`` keeps its tables outside the default schema, which
Alembic compares only with ``include_schemas=True``; without it, autogenerate proposes to create
every table of the set. With it, Alembic would compare every schema the role can see (on MySQL
every database of the server), so ``include_name`` keeps only the default schema and the sets'
schemas. An app whose own tables live in yet another schema wraps ``include_name`` to keep that
one too.

The URL: :func:`chainlit_orm.urls.async_database_url` turns the ``CHAINLIT_ORM_DATABASE_URL`` the
app reads (``sqlite:///chat.db``, ``postgresql://...``) into the async SQLAlchemy URL
``create_async_engine`` needs, as the layer does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa

from chainlit_orm.models.modelset import DEFAULT_MODELS, ModelSet
from chainlit_orm.schema_gen.search import fts_pending_name, search_indexes

__all__ = [
    "FTS5_SHADOW_SUFFIXES",
    "filters_for",
    "include_name",
    "include_object",
    "owned_names",
    "target_metadata",
]

#: The shadow tables SQLite's FTS5 creates beside a virtual table (``content``/``docsize`` only
#: for some options; all are listed so any FTS5 layout is covered).
FTS5_SHADOW_SUFFIXES: tuple[str, ...] = ("_data", "_idx", "_content", "_docsize", "_config")

#: The default model set's ``MetaData``: the ``target_metadata`` (or one item of a list of them)
#: for ``context.configure``.
target_metadata: sa.MetaData = DEFAULT_MODELS.metadata

IncludeName = Callable[[str | None, str, Mapping[str, str | None]], bool]
IncludeObject = Callable[[Any, str | None, str, bool, Any], bool]


def owned_names(*model_sets: ModelSet) -> dict[str, frozenset[str]]:
    """The names of the objects ``migrate`` creates outside the models, by Alembic object type.

    Returns a mapping with the keys ``"table"`` (the version and tombstone tables; each FTS5
    table, its shadow tables and its pending list) and ``"index"`` (the PostgreSQL trigram
    indexes). Derived from the same code that creates them, so a new search index is covered
    without a change here.
    """
    tables: set[str] = set()
    indexes: set[str] = set()
    for models in model_sets or (DEFAULT_MODELS,):
        tables.add(models.version_table)
        tables.add(models.tombstone_table)
        model_tables = [table for _, table in models.tables()]
        for ix in search_indexes(model_tables, "sqlite"):
            tables.add(ix.name)
            tables.update(ix.name + suffix for suffix in FTS5_SHADOW_SUFFIXES)
            tables.add(fts_pending_name(ix))
        indexes.update(ix.name for ix in search_indexes(model_tables, "postgresql"))
    return {"table": frozenset(tables), "index": frozenset(indexes)}


def filters_for(*model_sets: ModelSet) -> tuple[IncludeName, IncludeObject]:
    """``(include_name, include_object)`` for ``context.configure``, knowing ``model_sets``.

    Both leave out the package's own objects (see :func:`owned_names`) and keep everything else,
    so they can be combined with an app's filters: call them first and apply the app's rule to
    what they keep. ``include_name`` drops the objects before Alembic reflects them (an FTS5
    virtual table cannot be reflected into a useful ``Table``); ``include_object`` catches what
    a name filter does not see (an index reported on a table of the metadata).
    """
    owned = owned_names(*model_sets)
    schemas = {models.schema for models in model_sets or (DEFAULT_MODELS,)
               if models.schema is not None}

    def include_name_(name: str | None, type_: str, parent_names: Mapping[str, str | None]
                      ) -> bool:
        """Alembic's ``include_name`` hook: False for an object ``migrate`` owns, and for a
        schema (``include_schemas=True``) other than the default one and the sets'."""
        if type_ == "schema":
            return name is None or name in schemas
        return name is None or name not in owned.get(type_, frozenset())

    def include_object_(obj: Any, name: str | None, type_: str, reflected: bool,
                        compare_to: Any) -> bool:
        """Alembic's ``include_object`` hook: False for an object ``migrate`` owns."""
        return name is None or name not in owned.get(type_, frozenset())

    return include_name_, include_object_


include_name: IncludeName
include_object: IncludeObject
include_name, include_object = filters_for(DEFAULT_MODELS)
