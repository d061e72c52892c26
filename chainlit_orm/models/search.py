"""Search semantics, stated once: what "case-insensitive" means and how stored text is folded.

The reference every backend must answer exactly like: a thread matches a term when the term's
full Unicode case folding (:meth:`str.casefold`) is a substring of the case folding of the thread's
name or, on the SQL backends, of the text (``output``) of one of its user or assistant messages.
Nothing else is folded: accents stay (``"résumé"`` does not match ``"resume"``), the dotless
``"\u0131"`` is not ``"i"``, and ``%``, ``_``, ``*``, ``?``, ``[`` and ``\\`` are literal
characters.
Full folding is what makes ``"ß"`` match ``"Strasse"`` and the exact stored ``"İstanbul"`` match
itself.

Why the folding happens in Python and is *stored*: a database's ``lower()`` and collations disagree
with Python and with each other (PostgreSQL lowers ``"İ"`` to ``"i"``, Python to ``"i̇"``; MariaDB's
default collation folds accents; SQLite folds ASCII only), so every write stores a folded copy of
each searchable text, computed by :func:`folded_values` (the layer's writes and ``migrate``'s
backfill call the same function), and the SQL compares folded pattern with folded text *binary*.

The folded copies are model columns marked with :data:`FOLDED_FROM` in their ``Column.info``
(``threads."nameFolded"`` from ``name``; ``steps."outputFolded"`` from ``output``, for message
steps only: tool outputs are not searched, and a copy of them would double the largest texts).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from chainlit_orm.errors import InvalidInputError

__all__ = [
    "FOLDED_FROM",
    "FOLDED_TYPES",
    "MAX_SEARCH_CHARS",
    "MESSAGE_TYPES",
    "fold",
    "folded_columns",
    "folded_values",
    "matches",
    "search_term",
]

#: Step types whose creation counts as thread activity and whose text the search covers.
MESSAGE_TYPES: tuple[str, ...] = ("user_message", "assistant_message")

#: ``Column.info`` key: the name of the column this column holds the case-folded copy of.
FOLDED_FROM = "folded_from"

#: ``Column.info`` key: the step types whose rows get a folded copy (others store NULL).
FOLDED_TYPES = "folded_types"


def fold(text: str) -> str:
    """The one case folding of the package: full Unicode case folding, nothing else."""
    return text.casefold()


@functools.cache
def folded_columns(table: sa.Table) -> tuple[tuple[str, str, tuple[str, ...] | None], ...]:
    """(folded column, source column, step types or None) of ``table``, in column order.

    Cached per table (a model set's tables do not change): this runs on every write.
    """
    return tuple((c.name, c.info[FOLDED_FROM], c.info.get(FOLDED_TYPES))
                 for c in table.columns if FOLDED_FROM in c.info)


def folded_values(table: sa.Table, row: Mapping[str, Any]) -> dict[str, str | None]:
    """The folded copies a write of ``row`` to ``table`` must store, keyed by column name.

    Only columns whose source is in ``row`` are returned (a write that does not send the text
    leaves its copy alone). A source of None folds to None; a step whose ``type`` is known and
    is not a message type gets None (its text is not searched). A step row without ``type`` gets
    the copy: the search also checks the type, so a copy never makes a tool step match.
    """
    out: dict[str, str | None] = {}
    for name, source, types in folded_columns(table):
        if source not in row:
            continue
        value = row[source]
        kind = row.get("type")
        if value is None or (types is not None and kind is not None and kind not in types):
            out[name] = None
        else:
            out[name] = fold(value if isinstance(value, str) else str(value))
    return out


#: Characters a search term may have. Why a limit: SQLite refuses a ``GLOB`` pattern longer
#: than 50,000 bytes, and the pattern escapes each wildcard character as three; folded (up to 3
#: characters per character) and escaped, 1,000 characters stay below that. One limit for every
#: backend, so a term means the same everywhere; far beyond what a search box is typed with.
MAX_SEARCH_CHARS = 1000


def search_term(term: str) -> str | None:
    """The folded form of a search term as it is matched, or None for a term nothing can match.

    A term containing NUL matches nothing: no backend stores a NUL (every write refuses one), so
    this is the reference answer, given without a query (SQLite's ``LIKE`` would otherwise read
    the pattern up to the NUL, and match everything).

    Raises:
        InvalidInputError: the term is not text that can be stored (a lone surrogate), or it is
            longer than :data:`MAX_SEARCH_CHARS` characters.
    """
    if len(term) > MAX_SEARCH_CHARS:
        raise InvalidInputError(
            f"search term has {len(term)} characters; at most {MAX_SEARCH_CHARS} are accepted")
    try:
        term.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            "search term is not valid Unicode text (it holds a lone surrogate)"
        ) from exc
    if "\x00" in term:
        return None
    return fold(term)


def matches(folded_term: str, text: str | None) -> bool:
    """The reference: does ``text`` contain the (already folded) term, case-folded?"""
    return text is not None and folded_term in fold(text)
