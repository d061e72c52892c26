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
  text). ``case_sensitive 1``: the text is folded already, so the index must not fold it again,
  and ``GLOB`` (binary, unlike SQLite's ``LIKE``) uses it. The FTS rows are keyed by the table's
  ``rowid``, which ``VACUUM`` keeps; anything that rewrites the table (``migrate``'s batch copy on
  SQLite) is followed by ``'rebuild'`` (see :func:`fts_rebuild`).

  Writes reach the index through a **pending list**, as PostgreSQL's GIN ``fastupdate`` does: a
  written row's ``rowid`` goes to ``<fts>_pending`` (triggers ``_pi``, ``_pd``, ``_pu``), and
  when that list reaches :data:`FTS_PENDING_LIMIT` rows, the write that filled it indexes them
  all in one FTS5 insert (trigger ``_pf``). Why: FTS5 writes a new index segment per
  transaction, so indexing each step in its own write cost more than the write itself (on this
  project's W1, 3,000 steps written as Chainlit does, create then update: 77 us per step
  without the index, 267 us with FTS5 written per transaction, 102 us through the pending list
  plus 18 us per step when the list is flushed; ``bench/results/design.md`` D8). A search reads
  the index *and* rechecks the pending rows (at most :data:`FTS_PENDING_LIMIT` per index), so
  every write is found by the next search. Invariant: a row is either in the FTS table or in
  the pending list, never both (an update of an indexed row removes its old text from the
  index and lists it), which is what keeps FTS5's ``'delete'`` given exactly what was indexed.
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
    "FTS_PENDING_LIMIT",
    "PG_EXTENSION",
    "SearchIndex",
    "fts_drop_trigger",
    "fts_legacy_trigger_names",
    "fts_pending_clear",
    "fts_pending_flush",
    "fts_pending_name",
    "fts_pending_table",
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

#: Rows an SQLite search index's pending list holds before the write that fills it indexes them
#: (see the module docstring). A search rechecks at most this many rows per index beyond what the
#: index finds; one write in this many pays the flush (about 5 ms for 256 steps).
FTS_PENDING_LIMIT = 256


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
    table, its pending list and their triggers (on a table that already has rows, follow with
    :func:`fts_rebuild` and :func:`fts_pending_clear`).
    """
    indexes = search_indexes(tables, dialect)
    if not indexes:
        return []
    if dialect == "postgresql":
        return [pg_extension(), *(gin_index(ix) for ix in indexes)]
    statements: list[ExecutableDDLElement] = []
    for ix in indexes:
        statements.append(fts_table(ix))
        statements.append(fts_pending_table(ix))
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


def fts_pending_name(ix: SearchIndex) -> str:
    """The name of an SQLite search index's pending list (``<fts>_pending``)."""
    return ix.name + "_pending"


def fts_pending_table(ix: SearchIndex, *, if_not_exists: bool = False) -> DDL:
    """The pending list of one FTS5 table: the ``rowid`` of each written row not indexed yet."""
    create = "CREATE TABLE IF NOT EXISTS" if if_not_exists else "CREATE TABLE"
    return _ddl(f'{create} {_q(fts_pending_name(ix))} ("r" INTEGER PRIMARY KEY)')


def fts_triggers(ix: SearchIndex, *, if_not_exists: bool = False) -> list[DDL]:
    """The triggers that keep an FTS5 table and its pending list in step with the content table.

    Insert: list the row. Delete: take its text out of the index if it was indexed, else off the
    list. An update that changes the folded text of an indexed row: take the old text out of the
    index and list the row (a listed row needs nothing). And on the list, the flush: the insert
    that makes it :data:`FTS_PENDING_LIMIT` long indexes every listed row and empties it. A row
    whose copy is NULL is indexed as empty, so the FTS table has a row for every indexed content
    row, as its ``integrity-check`` expects. A listing checks ``NOT EXISTS`` instead of
    ``INSERT OR IGNORE``: inside a trigger, the outer statement's conflict clause (an upsert's
    ``ON CONFLICT``) would replace ``OR IGNORE``."""
    fts, table, col = _q(ix.name), _q(ix.table.name), _q(ix.column)
    pending = _q(fts_pending_name(ix))
    create = "CREATE TRIGGER IF NOT EXISTS" if if_not_exists else "CREATE TRIGGER"
    unlisted = f'NOT EXISTS (SELECT 1 FROM {pending} WHERE "r" = old.rowid)'
    unindex = (f"INSERT INTO {fts}({fts}, rowid, {col}) SELECT 'delete', old.rowid, old.{col} "
               f"WHERE {unlisted};")
    listing = (f'INSERT INTO {pending}("r") SELECT new.rowid WHERE NOT EXISTS '
               f'(SELECT 1 FROM {pending} WHERE "r" = new.rowid);')
    names = fts_trigger_names(ix)
    return [
        _ddl(f"{create} {_q(names[0])} AFTER INSERT ON {table} BEGIN\n  {listing}\nEND"),
        _ddl(f"{create} {_q(names[1])} AFTER DELETE ON {table} BEGIN\n  {unindex}\n"
             f'  DELETE FROM {pending} WHERE "r" = old.rowid;\nEND'),
        # a listed row's new text needs nothing: the WHEN skips the trigger's program (the
        # common case: Chainlit updates a step right after creating it)
        _ddl(f"{create} {_q(names[2])} AFTER UPDATE OF {col} ON {table} "
             f"WHEN old.{col} IS NOT new.{col} AND {unlisted} BEGIN\n"
             f"  INSERT INTO {fts}({fts}, rowid, {col}) VALUES ('delete', old.rowid, old.{col});\n"
             f'  INSERT INTO {pending}("r") VALUES (new.rowid);\nEND'),
        _ddl(f"{create} {_q(names[3])} AFTER INSERT ON {pending} "
             f"WHEN (SELECT count(*) FROM {pending}) >= {FTS_PENDING_LIMIT} BEGIN\n"
             + "".join(f"  {sql};\n" for sql in _flush_sql(ix)) + "END"),
    ]


def fts_trigger_names(ix: SearchIndex) -> tuple[str, ...]:
    """The names :func:`fts_triggers` gives its triggers (list, unlist, relist, flush)."""
    return tuple(ix.name + suffix for suffix in ("_pi", "_pd", "_pu", "_pf"))


def fts_legacy_trigger_names(ix: SearchIndex) -> tuple[str, ...]:
    """The triggers of the layout before the pending list (schema version 2 to 4: each write
    indexed in its own transaction), which ``migrate`` drops when it adds the list."""
    return tuple(ix.name + suffix for suffix in ("_ai", "_ad", "_au"))


def fts_drop_trigger(name: str) -> DDL:
    """``DROP TRIGGER IF EXISTS`` one trigger (see :func:`fts_legacy_trigger_names`)."""
    return _ddl(f"DROP TRIGGER IF EXISTS {_q(name)}")


def _flush_sql(ix: SearchIndex) -> list[str]:
    fts, table, col = _q(ix.name), _q(ix.table.name), _q(ix.column)
    pending = _q(fts_pending_name(ix))
    return [f'INSERT INTO {fts}(rowid, {col}) SELECT p."r", t.{col} FROM {pending} AS p '
            f'JOIN {table} AS t ON t.rowid = p."r"',
            f"DELETE FROM {pending}"]


def fts_pending_flush(ix: SearchIndex) -> list[DDL]:
    """Index every listed row now and empty the list (what the ``_pf`` trigger does when the list
    is full; run before FTS5's ``integrity-check``, which expects every row indexed)."""
    return [_ddl(sql) for sql in _flush_sql(ix)]


def fts_pending_clear(ix: SearchIndex) -> DDL:
    """Empty the pending list: after :func:`fts_rebuild`, which indexed every row."""
    return _ddl(f"DELETE FROM {_q(fts_pending_name(ix))}")


def fts_rebuild(ix: SearchIndex) -> DDL:
    """Rebuild an FTS5 table from its content table (after it was created on a table with rows,
    or after the table was rewritten and its rowids changed)."""
    return _ddl(f"INSERT INTO {_q(ix.name)}({_q(ix.name)}) VALUES ('rebuild')")
