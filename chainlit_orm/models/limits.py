"""The one set of limits every backend holds, and the checks that enforce it before any write.

Why one set: a value one backend stores and another refuses (or, worse, stores changed) makes an
app's data depend on where it lives. Each limit below is the tightest one any supported backend
imposes, so a value accepted here is stored, and read back exactly, on SQLite, PostgreSQL,
MariaDB/MySQL and DynamoDB alike; anything else is refused with a typed error
(:class:`~chainlit_orm.errors.InvalidInputError` or a subclass) before anything is written.

The limits:

* **Text** is valid Unicode: no lone surrogate (``"\\ud800"`` cannot be encoded as UTF-8, which
  every backend stores) and no NUL character (PostgreSQL cannot store it in ``TEXT`` or
  ``JSONB``).
* **Short, indexed text** (a step's ``type``, a user's ``identifier``, ``showInput`` when a
  string) is at most :data:`MAX_INDEXED_CHARS` characters: the ``VARCHAR(191)`` MySQL/MariaDB needs
  to index ``utf8mb4`` text.
* A user's **identifier** does not end with a space: MySQL/MariaDB compare strings ignoring
  trailing spaces, so "alice " would be "alice" there and another user elsewhere. Identifiers
  are otherwise compared exactly everywhere ("Alice" and "alice" are two users; on
  MySQL/MariaDB the column has a binary collation).
* ``showInput`` as a string is not ``"true"``/``"false"`` in any case: those read back as the
  booleans (how Chainlit's layers stored booleans in that ``TEXT`` column).
* A **step** has ``name`` and ``type`` strings and a ``streaming`` bool on every write (the
  ``NOT NULL`` columns of Chainlit's documented schema; Chainlit's ``to_dict`` always sends them).
  An element has a ``name`` string.
* **JSON documents** (metadata, ``generation``, ``modes``, ``props``, ``playerConfig``, keys a newer
  Chainlit sends that have no column yet) are dicts of JSON values: ``dict`` (keys non-empty
  strings), ``list``/``tuple`` (read back as lists, as JSON does), ``str``, ``bool``, ``None`` and
  numbers, nested at most :data:`MAX_JSON_DEPTH` levels counting the innermost value (31 nested
  objects or arrays: MariaDB's ``JSON_VALID`` and DynamoDB both refuse a 32nd). Numbers are
  finite; integers have at most 38 digits and floats a magnitude in ``[1e-130, 1e16)`` or are
  zero (DynamoDB keeps 38 digits between 1e-130 and 1e126; PostgreSQL prints a ``JSONB`` number
  without an exponent, so a float of 1e16 or more would read back as an integer of a different
  value). An empty key is refused: DynamoDB cannot address it in an update. Keys without a
  column are kept together in one overflow document, so their values may nest one level less.
* **Booleans** are ``bool`` (not 0/1, not "yes"); **integers** (an element's ``page``) are ``int``
  within 32 bits; **timestamps** are ISO-8601 text or ``datetime`` between years 1 and 9999 in UTC
  (stored in the fixed-width form, which is how they read back).
* **Ids** are UUIDs (:func:`~chainlit_orm.models.types.normalize_id`). **User ids** are strings of
  1 to :data:`MAX_USER_ID_CHARS` characters; a user id names a persisted user, so a write with an
  unknown one raises :class:`~chainlit_orm.errors.NotFoundError` and a read finds nothing, on
  every backend (SQL databases hold UUIDs only; a DynamoDB table written by Chainlit's own layer
  uses the identifier as the id, and those ids keep working there).
* **Record size**: a thread's name, tags and metadata in one update, a user, an element, a
  feedback, and a step without its ``input``/``output`` are each at most
  :data:`MAX_RECORD_BYTES` as DynamoDB counts bytes (DynamoDB's 400 KB item, less room for its key
  attributes). A step's ``input`` and ``output`` are bounded by the layer's ``max_text_bytes``
  instead (on DynamoDB large texts go to the storage client). Two limits only DynamoDB can see
  remain its own, each a typed :class:`~chainlit_orm.errors.PayloadTooLargeError` with nothing
  written: a thread whose metadata *merged over several updates* outgrows the item, and a step
  whose inline texts (below the offload threshold, or with no storage client) do.
* **Pagination cursors** are ours (at most :data:`MAX_CURSOR_CHARS` characters, decoding to a
  timestamp and a thread id) or refused with :class:`~chainlit_orm.errors.InvalidCursorError`;
  an empty cursor asks for the first page. A **search** string is storable text.

The checks walk each value once, doing the NUL check, the Unicode check, the depth and number
checks and the size count together: no copy, no ``json.dumps``.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from chainlit_orm.errors import InvalidInputError, PayloadTooLargeError
from chainlit_orm.models.types import (
    BoolOrText,
    IdType,
    StringList,
    Timestamp,
    canonical_timestamp,
)

__all__ = [
    "FLOAT_MAX_MAGNITUDE",
    "FLOAT_MIN_MAGNITUDE",
    "INT32_MAX",
    "INT32_MIN",
    "MAX_CURSOR_CHARS",
    "MAX_INDEXED_CHARS",
    "MAX_INTEGER",
    "MAX_JSON_DEPTH",
    "MAX_RECORD_BYTES",
    "MAX_USER_ID_CHARS",
    "check_json",
    "check_row",
    "check_text",
]

#: Levels of a JSON document, counting the innermost value: at most 31 nested objects/arrays.
MAX_JSON_DEPTH = 32
#: The largest integer magnitude a JSON number may have (38 digits, DynamoDB's precision).
MAX_INTEGER = 10**38 - 1
#: Non-zero floats have a magnitude in ``[FLOAT_MIN_MAGNITUDE, FLOAT_MAX_MAGNITUDE)``.
FLOAT_MIN_MAGNITUDE = 1e-130
FLOAT_MAX_MAGNITUDE = 1e16
#: Characters of short, indexed text (``VARCHAR(191)`` on MySQL/MariaDB).
MAX_INDEXED_CHARS = 191
#: Characters of a user id (DynamoDB tables of Chainlit's layer use the identifier as the id).
MAX_USER_ID_CHARS = 512
#: Characters of a pagination cursor (ours are about 90); anything longer is not ours.
MAX_CURSOR_CHARS = 512
#: An ``INTEGER`` column (PostgreSQL and MySQL/MariaDB ``INT`` are 32 bits).
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
#: One record, as DynamoDB counts bytes: its 400 KB item read as 400,000 bytes (the tightest
#: reading; moto refuses items above 405,000), less 1 KB for the key and index attributes.
MAX_RECORD_BYTES = 400_000 - 1024

# what DynamoDB counts for a number (at most 21 bytes): an upper bound, so the shared check
# always refuses before the service would
_NUMBER_BYTES = 21


def check_text(value: object, what: str, *, max_chars: int | None = None) -> int:
    """Check that ``value`` is storable text; return its UTF-8 size in bytes.

    Raises:
        InvalidInputError: not a string, a NUL character, a lone surrogate, or longer than
            ``max_chars`` characters.
    """
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be a string, got {type(value).__name__}")
    if max_chars is not None and len(value) > max_chars:
        raise InvalidInputError(f"{what} is longer than {max_chars} characters")
    return _text_bytes(value, what)


def _text_bytes(value: str, what: str) -> int:
    # isascii() is O(1) in CPython (a flag of the string); only non-ASCII text is encoded, which
    # is both the lone-surrogate check and the exact byte count
    if "\x00" in value:
        raise InvalidInputError(f"{what} contains a NUL character, which cannot be stored")
    if value.isascii():
        return len(value)
    try:
        return len(value.encode())
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"{what} is not valid Unicode (a lone surrogate at index {exc.start})") from exc


def check_json(value: object, what: str, *, top_dict: bool = True) -> int:
    """Check a JSON document against the limits; return its size as DynamoDB counts it.

    Args:
        value: the document; a dict unless ``top_dict`` is False.
        what: names the document in error messages (e.g. ``"thread metadata"``).

    Raises:
        InvalidInputError: see the module docstring for what is refused.
    """
    if top_dict and not isinstance(value, dict):
        raise InvalidInputError(f"{what} must be a dict, got {type(value).__name__}")
    return _json_size(value, what, 1)


def _json_size(value: object, what: str, depth: int) -> int:
    # exact-type tests first, and the common cases (ASCII text, None, bools, small ints) inline
    # in the container loops: this runs on every value of every write
    kind = type(value)
    if kind is dict:
        return _dict_size(value, what, depth)  # type: ignore[arg-type]
    if kind is list or kind is tuple:
        return _list_size(value, what, depth)  # type: ignore[arg-type]
    if kind is str:
        return _text_bytes(value, what)  # type: ignore[arg-type]
    if value is None or kind is bool:
        return 1
    if kind is int:
        if -MAX_INTEGER <= value <= MAX_INTEGER:  # type: ignore[operator]
            return _NUMBER_BYTES
        raise InvalidInputError(f"{what}: the integer {value!r} has more than 38 digits")
    if kind is float:
        magnitude: float = abs(value)  # type: ignore[arg-type]
        if magnitude == 0 or FLOAT_MIN_MAGNITUDE <= magnitude < FLOAT_MAX_MAGNITUDE:
            return _NUMBER_BYTES
        if not math.isfinite(magnitude):
            raise InvalidInputError(f"{what}: {value!r} is not a finite number")
        raise InvalidInputError(
            f"{what}: the float {value!r} is outside the storable range "
            f"(0, or a magnitude in [{FLOAT_MIN_MAGNITUDE}, {FLOAT_MAX_MAGNITUDE}))")
    if isinstance(value, dict):
        return _dict_size(value, what, depth)
    if isinstance(value, list | tuple):
        return _list_size(value, what, depth)
    if isinstance(value, str):  # a str subclass (an enum member): stored as its text
        return _text_bytes(value, what)
    if isinstance(value, int) and not isinstance(value, bool):
        return _json_size(int(value), what, depth)
    raise InvalidInputError(f"{what}: {type(value).__name__} is not a JSON value")


def _dict_size(value: dict[Any, Any], what: str, depth: int) -> int:
    if depth >= MAX_JSON_DEPTH:
        raise InvalidInputError(f"{what} is nested more than {MAX_JSON_DEPTH} levels deep")
    size = 3
    inner = depth + 1
    for key, item in value.items():
        if type(key) is str and key and key.isascii() and "\x00" not in key:
            size += len(key) + 1
        else:
            size += _key_bytes(key, what) + 1
        kind = type(item)
        if kind is str:
            size += len(item) if item.isascii() and "\x00" not in item else _text_bytes(item, what)
        elif item is None or kind is bool:
            size += 1
        elif kind is int and -MAX_INTEGER <= item <= MAX_INTEGER:
            size += _NUMBER_BYTES
        else:
            size += _json_size(item, what, inner)
    return size


def _list_size(value: list[Any] | tuple[Any, ...], what: str, depth: int) -> int:
    if depth >= MAX_JSON_DEPTH:
        raise InvalidInputError(f"{what} is nested more than {MAX_JSON_DEPTH} levels deep")
    size = 3 + len(value)
    inner = depth + 1
    for item in value:
        kind = type(item)
        if kind is str:
            size += len(item) if item.isascii() and "\x00" not in item else _text_bytes(item, what)
        elif item is None or kind is bool:
            size += 1
        elif kind is int and -MAX_INTEGER <= item <= MAX_INTEGER:
            size += _NUMBER_BYTES
        else:
            size += _json_size(item, what, inner)
    return size


def _key_bytes(key: object, what: str) -> int:
    if not isinstance(key, str):
        raise InvalidInputError(f"{what}: keys must be strings, got {type(key).__name__}")
    if not key:
        raise InvalidInputError(f"{what}: an empty key cannot be stored")
    return _text_bytes(key, what)


# ------------------------------------------------------------------------------------- rows

_TEXT, _INDEXED, _BOOL, _BOOL_OR_TEXT, _INT, _JSON, _STRINGS, _TIMESTAMP, _ID, _ANY = range(10)
_PLAIN_TEXT = frozenset((_TEXT, _INDEXED, _ID))
_CANONICAL_TS_ASCII = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$", re.ASCII)


@functools.cache
def _column_kinds(table: sa.Table) -> dict[str, tuple[int, int | None]]:
    """What each column of ``table`` accepts: a kind and, for text, a character limit (the
    shortest ``VARCHAR`` of any dialect variant). Cached: tables are immutable."""
    kinds: dict[str, tuple[int, int | None]] = {}
    for column in table.columns:
        type_ = column.type
        if isinstance(type_, IdType):
            kinds[column.name] = (_ID, None)
        elif isinstance(type_, Timestamp):
            kinds[column.name] = (_TIMESTAMP, None)
        elif isinstance(type_, StringList):
            kinds[column.name] = (_STRINGS, None)
        elif isinstance(type_, BoolOrText):
            kinds[column.name] = (_BOOL_OR_TEXT, MAX_INDEXED_CHARS)
        elif isinstance(type_, sa.Boolean):
            kinds[column.name] = (_BOOL, None)
        elif isinstance(type_, sa.Integer):
            kinds[column.name] = (_INT, None)
        elif isinstance(type_, sa.JSON):
            kinds[column.name] = (_JSON, None)
        elif isinstance(type_, sa.String):
            lengths = [t.length for t in (type_, *type_._variant_mapping.values())
                       if isinstance(t, sa.String) and t.length]
            limit = min(lengths) if lengths else None
            kinds[column.name] = (_INDEXED if limit else _TEXT, limit)
        else:
            kinds[column.name] = (_ANY, None)
    return kinds


def check_row(
    table: sa.Table,
    row: dict[str, Any],
    what: str,
    *,
    own_limits: Mapping[str, int] | None = None,
    record_limit: int = MAX_RECORD_BYTES,
    counted: int = 0,
) -> None:
    """Check every value of ``row`` against its column's kind and the limits, in one pass.

    ``row`` is normalised in place where the stored form differs from the sent one only in
    spelling: timestamps take the fixed-width form, a tuple of tags becomes a list.

    Args:
        table: the row's table (its column types say what each value may be).
        row: column name -> value; None values are "not set" and always accepted.
        what: names the entity in error messages (``"step"``, ``"thread"``, ...).
        own_limits: columns bounded by their own byte limit instead of counting towards the
            record's (a step's ``input``/``output``).
        record_limit: the record's byte limit.
        counted: bytes of the record already checked elsewhere (a thread's metadata).

    Raises:
        InvalidInputError: a value the column cannot hold.
        PayloadTooLargeError: the record, or a column with its own limit, is too large.
    """
    kinds = _column_kinds(table)
    size = counted
    for name, value in row.items():
        if value is None:
            continue
        kind, max_chars = kinds.get(name, (_ANY, None))
        value_kind = type(value)
        # the common cases first, without building a label: ASCII text without NUL within its
        # column's length, a bool, a timestamp already in the fixed-width form
        if (value_kind is str and kind in _PLAIN_TEXT and value.isascii() and "\x00" not in value
                and (max_chars is None or len(value) <= max_chars)):
            n = len(value)
        elif kind == _BOOL and value_kind is bool:
            n = 1
        elif kind == _TIMESTAMP and value_kind is str and _CANONICAL_TS_ASCII.match(value):
            n = 27
        else:
            n = _check_value(row, name, value, kind, max_chars, f"{what} {name}")
        limit = own_limits.get(name) if own_limits else None
        if limit is not None:
            if n > limit:
                raise PayloadTooLargeError(
                    f"{what} {name} is larger than its limit of {limit} bytes",
                    detail=f"{what} {name}")
            continue
        size += len(name) + n
    if size > record_limit:
        raise PayloadTooLargeError(
            f"{what} is larger than the {record_limit} byte record limit", detail=what)


def _check_value(row: dict[str, Any], name: str, value: Any, kind: int, max_chars: int | None,
                 label: str) -> int:
    """The full check of one value of ``row`` (see :func:`check_row`); its size in bytes."""
    if kind in (_TEXT, _INDEXED, _ID):
        return check_text(value, label, max_chars=max_chars)
    if kind == _BOOL:
        raise InvalidInputError(f"{label} must be a bool, got {value!r}"[:200])
    if kind == _JSON:
        return check_json(value, label)
    if kind == _TIMESTAMP:
        if not isinstance(value, str | datetime):
            raise InvalidInputError(
                f"{label} must be an ISO-8601 string, got {type(value).__name__}")
        if isinstance(value, str):
            _text_bytes(value, label)
        row[name] = canonical_timestamp(value)
        return 27
    if kind == _STRINGS:
        if not isinstance(value, list | tuple):
            raise InvalidInputError(
                f"{label} must be a list of strings, got {type(value).__name__}")
        n = 3
        for item in value:
            if not isinstance(item, str):
                raise InvalidInputError(f"{label} must be a list of strings, got an item of "
                                        f"type {type(item).__name__}")
            n += 1 + _text_bytes(item, label)
        if type(value) is not list:
            row[name] = list(value)
        return n
    if kind == _BOOL_OR_TEXT:
        if type(value) is bool:
            return 1
        n = check_text(value, label, max_chars=max_chars)
        if value.lower() in ("true", "false"):
            raise InvalidInputError(
                f"{label}: the string {value!r} would read back as a bool; send the bool")
        return n
    if kind == _INT:
        if type(value) is not int or not INT32_MIN <= value <= INT32_MAX:
            raise InvalidInputError(f"{label} must be a 32-bit int, got {value!r}"[:200])
        return _NUMBER_BYTES
    return _json_size(value, label, 1)
