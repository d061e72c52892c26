"""Conversion between Chainlit's dicts and model rows, in one place, for every backend.

A row is a plain ``dict`` keyed by SQL column name, which is also Chainlit's key, so the
conversion is a projection plus the overflow field:

* a key with a column goes to that column, unchanged (types are the column types' business);
* a key without a column (one a newer Chainlit added) goes into ``extra`` and comes back as it
  came, so nothing is dropped while the models catch up; adding a field later is the only change
  a new key needs;
* internal columns (``activityAt``, ``favorite``, ``extra``, derived metadata columns) never appear
  in a Chainlit dict.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from chainlit_orm.errors import InvalidInputError
from chainlit_orm.models.modelset import FROM_METADATA, ModelSet
from chainlit_orm.models.rules import is_favorite

__all__ = [
    "RELATION_KEYS",
    "chainlit_keys",
    "from_row",
    "metadata_text",
    "take_row",
    "to_row",
]

#: Dict keys that hold related entities, not columns: they are filled by the layer from the
#: related tables (a thread's steps and elements, a step's feedback).
RELATION_KEYS: dict[str, dict[str, str]] = {
    "thread": {"steps": "step", "elements": "element"},
    "step": {"feedback": "feedback"},
    "user": {},
    "element": {},
    "feedback": {},
}

_EXTRA = "extra"


@functools.cache
def chainlit_keys(table: sa.Table) -> tuple[str, ...]:
    """The columns of ``table`` that are Chainlit dict keys (everything not marked internal).

    Cached per table (tables are immutable once a model set is built): this runs for every row
    of every read.
    """
    return tuple(c.name for c in table.columns if not c.info.get("internal"))


@functools.cache
def _internal_columns(table: sa.Table) -> tuple[str, ...]:
    """The columns of ``table`` that never appear in a Chainlit dict."""
    return tuple(c.name for c in table.columns if c.info.get("internal"))


@functools.cache
def _derived_columns(table: sa.Table) -> tuple[tuple[str, str], ...]:
    """(column, metadata key) for the columns filled from ``metadata``."""
    return tuple((c.name, c.info[FROM_METADATA]) for c in table.columns if FROM_METADATA in c.info)


def metadata_text(value: Any, key: str) -> str | None:
    """The value a ``metadata_column`` stores for ``metadata[key]``: a string as it is, a number
    as its JSON text (``42`` -> ``"42"``, what the metadata's JSON says), None for None (or no
    key).

    Why not anything else: the column is text, and a dict, a list or a bool was stored as its
    Python ``repr`` (``"{'a': 1}"``, ``"True"``, where JSON says ``true``), a value no query of
    the app would look for.

    Raises:
        InvalidInputError: ``value`` is a bool, a container or another non-scalar.
    """
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return json.dumps(value)
    raise InvalidInputError(
        f"metadata[{key!r}] fills a custom text column: it must be a string, a number or None, "
        f"got {type(value).__name__}", detail=key)


def to_row(models: ModelSet, entity: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """Project a Chainlit dict onto ``entity``'s columns.

    Keys absent from ``data`` are absent from the row (the caller decides what "absent" means for
    its statement); unknown keys are gathered into ``extra`` when the table has one; derived
    columns (``favorite``, custom :func:`~chainlit_orm.models.modelset.metadata_column` fields)
    are computed from ``metadata``.
    """
    table = models.table(entity)
    columns = table.columns
    keys = frozenset(chainlit_keys(table))
    relations = RELATION_KEYS[entity]
    row: dict[str, Any] = {}
    overflow: dict[str, Any] = {}
    for key, value in data.items():
        if key in keys:
            row[key] = value
        elif key not in relations:
            overflow[key] = value
    if _EXTRA in columns:
        row[_EXTRA] = overflow or None
    if "metadata" in data:
        metadata = data["metadata"]
        if "favorite" in columns:
            # None (metadata not sent) leaves the stored flag as it is, like the metadata itself:
            # a flag reset by an update that keeps the metadata would hide a favorite
            row["favorite"] = None if metadata is None else is_favorite(metadata)
        for name, meta_key in _derived_columns(table):
            value = metadata.get(meta_key) if isinstance(metadata, Mapping) else None
            row[name] = metadata_text(value, meta_key)
    return row


def from_row(models: ModelSet, entity: str, row: Mapping[str, Any]) -> dict[str, Any]:
    """Turn a row (mapping keyed by column name) back into Chainlit's dict shape; ``row`` is
    left as it is (see :func:`take_row` for a row the caller gives up)."""
    keys = (*chainlit_keys(models.table(entity)), _EXTRA)
    return take_row(models, entity, {key: row[key] for key in keys if key in row})


def take_row(models: ModelSet, entity: str, row: dict[str, Any]) -> dict[str, Any]:
    """:func:`from_row` for a row the caller gives up: ``row`` itself becomes the Chainlit dict.

    Why: building a second dict of some 25 keys per row was a third of the Python work of a
    1,000-step ``get_thread``; removing the two or three internal columns from the row is a tenth
    of that. The row must be keyed by ``entity``'s columns (plus relation keys such as a step's
    ``feedback``), as every backend's rows are; it must not be used again by the caller.
    """
    table = models.table(entity)
    overflow = row.get(_EXTRA)
    for key in _internal_columns(table):
        row.pop(key, None)
    if overflow:
        for key, value in overflow.items():
            row.setdefault(key, value)
    return row
