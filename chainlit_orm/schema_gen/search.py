"""The search indexes of each dialect, derived from the models' folded columns (no I/O).

Every column marked with :data:`~chainlit_orm.models.search.FOLDED_FROM` (``threads."nameFolded"``,
``steps."outputFolded"``) gets an index that serves substring search, kept current by the
database itself on every write the layer makes (no extra statement):

* **PostgreSQL**: a GIN index with ``pg_trgm``'s ``gin_trgm_ops`` (``ix_<table>_<source>_trgm``),
  which serves ``LIKE '%term%'`` for terms with three or more characters in a word. ``pg_trgm``
  ships with PostgreSQL and is a *trusted* extension from PostgreSQL 13: a role with ``CREATE`` on
  the database can create it (``migrate`` checks this first and names the fix otherwise).
* **SQLite**: an FTS5 table with the ``trigram`` tokenizer (``<table>_<source>_fts``), an
  *external-content* table over the model table (it stores the index, not a second copy of the
  text), kept in step by three triggers (``_ai``, ``_ad``, ``_au``): the pattern SQLite's FTS5
  documentation gives. ``case_sensitive 1``: the text is folded already, so the index must not
  fold it again, and ``GLOB`` (binary, unlike SQLite's ``LIKE``) uses it. The FTS rows are keyed by
  the table's ``rowid``, which ``VACUUM`` keeps; anything that rewrites the table (``migrate``'s
  batch copy on SQLite) is followed by ``'rebuild'`` (see :func:`fts_rebuild`).
* **MySQL/MariaDB**: none. MariaDB has no n-gram parser and its ``FULLTEXT`` matches whole words,
  so the search there scans the user's threads comparing the folded, ``utf8mb4_bin`` columns: the
  one backend whose search cost grows with the user's thread count (a trigram side table was
  measured and rejected; see the project notes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.schema import DDL, CreateIndex, ExecutableDDLElement

from chainlit_orm.models.search import FOLDED_FROM

__all__ = [
    "PG_EXTENSION",
    "SearchIndex",
    "fts_rebuild",
    "fts_table",
    "fts_trigger_names",
    "fts_triggers",
    "gin_index",
    "pg_extension",
    "search_ddl",
    "search_indexes",
]

#: The PostgreSQL extension the trigram indexes need.
PG_EXTENSION = "pg_trgm"


@dataclass(frozen=True)
class SearchIndex:
    """The search index of one folded column.

    Attributes:
        table: the table (as created on the dialect: schema-less copies on SQLite/MySQL).
        column: the folded column (``nameFolded``).
        source: the column it folds (``name``).
        name: the PostgreSQL index name or the SQLite FTS5 table name.
    """

    table: sa.Table
    column: str
    source: str
    name: str


def search_indexes(tables: Sequence[sa.Table], dialect: str) -> list[SearchIndex]:
    """The search indexes ``dialect`` has for ``tables`` (none on MySQL/MariaDB)."""
    if dialect not in ("postgresql", "sqlite"):
        return []
    out = []
    for table in tables:
        for column in table.columns:
            source = column.info.get(FOLDED_FROM)
            if source is None:
                continue
            name = (f"ix_{table.name}_{source}_trgm" if dialect == "postgresql"
                    else f"{table.name}_{source}_fts")
            out.append(SearchIndex(table, column.name, source, name))
    return out


def search_ddl(tables: Sequence[sa.Table], dialect: str) -> list[ExecutableDDLElement]:
    """The statements creating every search index of ``tables`` on a database that has none.

    PostgreSQL: ``CREATE EXTENSION IF NOT EXISTS pg_trgm`` then the GIN indexes. SQLite: each FTS5
    table then its triggers (on a table that already has rows, follow with :func:`fts_rebuild`).
    """
    indexes = search_indexes(tables, dialect)
    if not indexes:
        return []
    if dialect == "postgresql":
        return [pg_extension(), *(gin_index(ix) for ix in indexes)]
    statements: list[ExecutableDDLElement] = []
    for ix in indexes:
        statements.append(fts_table(ix))
        statements.extend(fts_triggers(ix))
    return statements


def pg_extension() -> DDL:
    """``CREATE EXTENSION IF NOT EXISTS pg_trgm``."""
    return _ddl(f"CREATE EXTENSION IF NOT EXISTS {PG_EXTENSION}")


def gin_index(ix: SearchIndex, *, concurrently: bool = False) -> CreateIndex:
    """The PostgreSQL trigram GIN index of one folded column (``concurrently``: built without
    blocking writes, outside a transaction, as migrate does on an existing table)."""
    # A stand-in table with the one column, so building the Index does not attach it to the
    # model's table (the trigram index is PostgreSQL-only; the model's indexes are every
    # dialect's).
    stand_in = sa.Table(ix.table.name, sa.MetaData(schema=ix.table.schema),
                        sa.Column(ix.column, sa.Text))
    return CreateIndex(sa.Index(ix.name, stand_in.c[ix.column], postgresql_using="gin",
                                postgresql_ops={ix.column: "gin_trgm_ops"},
                                postgresql_concurrently=concurrently))


def _ddl(text: str) -> DDL:
    """A DDL statement SQLAlchemy has no construct for (FTS5 tables, triggers, extensions)."""
    return DDL(text)  # type: ignore[no-untyped-call]


def _q(name: str) -> str:
    """An SQLite identifier, always double-quoted (names are plain identifiers: see ModelSet)."""
    return '"' + name.replace('"', '""') + '"'


def fts_table(ix: SearchIndex) -> DDL:
    """The SQLite FTS5 external-content table of one folded column."""
    return _ddl(
        f"CREATE VIRTUAL TABLE {_q(ix.name)} USING fts5({_q(ix.column)}, "
        f"content='{ix.table.name}', content_rowid='rowid', "
        "tokenize='trigram case_sensitive 1')"
    )


def fts_triggers(ix: SearchIndex, *, if_not_exists: bool = False) -> list[DDL]:
    """The triggers that keep an FTS5 table in step with its content table (insert, delete, an
    update that changes the folded text). A row whose copy is NULL is indexed as empty, so the
    FTS table has a row for every content row, as its ``integrity-check`` expects."""
    fts, table, col = _q(ix.name), _q(ix.table.name), _q(ix.column)
    create = "CREATE TRIGGER IF NOT EXISTS" if if_not_exists else "CREATE TRIGGER"
    insert = f"INSERT INTO {fts}(rowid, {col}) VALUES (new.rowid, new.{col});"
    delete = f"INSERT INTO {fts}({fts}, rowid, {col}) VALUES ('delete', old.rowid, old.{col});"
    return [
        _ddl(f"{create} {_q(ix.name + '_ai')} AFTER INSERT ON {table} BEGIN\n"
            f"  {insert}\nEND"),
        _ddl(f"{create} {_q(ix.name + '_ad')} AFTER DELETE ON {table} BEGIN\n"
            f"  {delete}\nEND"),
        _ddl(f"{create} {_q(ix.name + '_au')} AFTER UPDATE OF {col} ON {table} "
            f"WHEN old.{col} IS NOT new.{col} BEGIN\n  {delete}\n  {insert}\nEND"),
    ]


def fts_trigger_names(ix: SearchIndex) -> tuple[str, ...]:
    """The names :func:`fts_triggers` gives its triggers."""
    return tuple(ix.name + suffix for suffix in ("_ai", "_ad", "_au"))


def fts_rebuild(ix: SearchIndex) -> DDL:
    """Rebuild an FTS5 table from its content table (after it was created on a table with rows,
    or after the table was rewritten and its rowids changed)."""
    return _ddl(f"INSERT INTO {_q(ix.name)}({_q(ix.name)}) VALUES ('rebuild')")
