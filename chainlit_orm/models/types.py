"""Cross-dialect column types: the only place where a SQL type is chosen per dialect.

Why these types:

* On PostgreSQL every column that Chainlit's documented DDL already has keeps the documented type
  (``UUID`` ids, ``TEXT`` timestamps, ``TEXT[]`` tags, ``JSONB`` metadata), so adopting an existing
  database only ever *adds* columns and indexes.
* On SQLite and MySQL/MariaDB ids are dashed text. SQLAlchemy's ``Uuid`` would store undashed hex on
  SQLite (never matching Chainlit's dashed ids) and ``CHAR(32)`` under the ``mysql`` dialect.
* Timestamps are fixed-width ISO-8601 UTC text (``YYYY-MM-DDTHH:MM:SS.ffffffZ``), so text order is
  instant order on every dialect, and values written by Chainlit's own layers (shorter forms,
  local time without a zone) are read tolerantly.
* Long text (a thread's name is its whole first message; a step's output can be megabytes) is never
  ``VARCHAR(255)``; on MySQL/MariaDB it is ``LONGTEXT`` because ``TEXT`` caps at 64 KB.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from chainlit_orm.errors import InvalidIdentifierError, InvalidInputError

__all__ = [
    "ID_LENGTH",
    "TIMESTAMP_LENGTH",
    "BoolOrText",
    "FoldedText",
    "IdType",
    "IdentifierText",
    "IndexedText",
    "JsonType",
    "LongText",
    "StringList",
    "Timestamp",
    "canonical_timestamp",
    "format_timestamp",
    "normalize_id",
    "parse_timestamp",
    "utc_now",
]

ID_LENGTH = 36
TIMESTAMP_LENGTH = 27  # len("2026-01-02T03:04:05.123456Z")

#: Text of any length. ``LONGTEXT`` on MySQL/MariaDB, whose ``TEXT`` stops at 64 KB.
LongText: sa.types.TypeEngine[str] = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")

#: Short text that must be indexable on MySQL/MariaDB (which cannot index ``TEXT`` without a
#: prefix length). ``TEXT`` on PostgreSQL and SQLite, where length is free.
IndexedText: sa.types.TypeEngine[str] = sa.Text().with_variant(
    sa.String(191), "mysql", "mariadb"
)

#: A user's identifier: indexed, unique, compared exactly. On MySQL/MariaDB the table's
#: ``utf8mb4_unicode_ci`` would make "Alice", "alice" and "ALICE" one user (the unique index and
#: ``get_user`` match case-insensitively, so a login as "alice" would get Alice's account);
#: ``utf8mb4_bin`` compares code points. (It still ignores trailing spaces, as every MySQL
#: ``PAD SPACE`` collation does: identifiers ending in a space are refused, see
#: :mod:`chainlit_orm.models.limits`.)
IdentifierText: sa.types.TypeEngine[str] = sa.Text().with_variant(
    sa.String(191, collation="utf8mb4_bin"), "mysql", "mariadb"
)

#: A case-folded copy of a searchable text (see :mod:`chainlit_orm.models.search`). Compared
#: binary everywhere: ``utf8mb4_bin`` on MySQL/MariaDB, whose default collation would fold accents
#: and letters (``"résumé"`` would find ``"resume"``); PostgreSQL and SQLite compare text by code
#: point with their default (deterministic, C) collation already.
FoldedText: sa.types.TypeEngine[str] = sa.Text().with_variant(
    mysql.LONGTEXT(charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb"
)

#: JSON documents. ``JSONB`` on PostgreSQL (Chainlit's documented type); SQL ``NULL`` for None.
JsonType: sa.types.TypeEngine[Any] = sa.JSON(none_as_null=True).with_variant(
    postgresql.JSONB(none_as_null=True), "postgresql"
)


class IdType(TypeDecorator[str]):
    """An entity id: ``UUID`` on PostgreSQL, dashed ``VARCHAR(36)`` elsewhere.

    Values are normalised to the lower-case dashed form on the way in, so an id compares equal
    whatever case Chainlit or a client used, and PostgreSQL never sees a value it cannot cast.
    """

    impl = sa.String(ID_LENGTH)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "postgresql":
            return postgresql.UUID(as_uuid=False)
        return sa.String(ID_LENGTH)

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return normalize_id(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return str(value)

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        """None where the driver already returns ``str`` (every dialect but PostgreSQL's UUID):
        this runs for every id of every row read, and a no-op still costs a call."""
        base = dialect.type_descriptor(self.load_dialect_impl(dialect)).result_processor(
            dialect, coltype)
        if base is None and dialect.name != "postgresql":
            return None
        return super().result_processor(dialect, coltype)


_UUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
)


_CANONICAL_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_CANONICAL_TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


def normalize_id(value: object, *, what: str = "id") -> str:
    """Return ``value`` as a canonical lower-case dashed UUID string.

    Chainlit generates every id with ``uuid4``; the SQL schema stores ids as ``UUID`` on
    PostgreSQL, so anything else could never be stored there and is refused up front with a
    typed error instead of a driver error in the middle of a write.

    Raises:
        InvalidIdentifierError: ``value`` is not a UUID.
    """
    if isinstance(value, str) and _CANONICAL_ID.match(value):
        return value  # the hot path: Chainlit's ids are already canonical
    if isinstance(value, uuid.UUID):
        return str(value)
    if not isinstance(value, str) or not _UUID_RE.match(value):
        shown = value if isinstance(value, str) and len(value) <= 80 else type(value).__name__
        raise InvalidIdentifierError(f"{what} must be a UUID string, got {shown!r}", detail=what)
    return str(uuid.UUID(value))


def canonical_timestamp(value: str | datetime) -> str:
    """``value`` in the fixed-width form; values already in it are returned as they are."""
    if isinstance(value, str) and _CANONICAL_TS.match(value):
        return value
    return format_timestamp(parse_timestamp(value))


def utc_now() -> str:
    """The current instant as a fixed-width ISO-8601 UTC string."""
    return format_timestamp(datetime.now(UTC))


def format_timestamp(moment: datetime) -> str:
    """Format an aware (or UTC-naive) datetime as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``.

    The year is always four digits (``strftime("%Y")`` gives ``999`` for the year 999 on
    glibc, which is neither fixed-width nor ISO-8601).

    Raises:
        InvalidInputError: the instant, in UTC, falls outside the years 1 to 9999.
    """
    if moment.tzinfo is not None:
        try:
            moment = moment.astimezone(UTC).replace(tzinfo=None)
        except OverflowError as exc:
            raise InvalidInputError(
                f"timestamp {moment.isoformat()!r} is outside the years 1 to 9999 in UTC"
            ) from exc
    return (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:"
            f"{moment.minute:02d}:{moment.second:02d}.{moment.microsecond:06d}Z")


def parse_timestamp(value: str | datetime) -> datetime:
    """Parse any ISO-8601 form Chainlit or its layers wrote into an aware UTC datetime.

    Accepted: ``Z`` or ``+hh:mm`` suffixes, no suffix (read as UTC: Chainlit's official layer wrote
    naive local time, which on a server is UTC in practice), 0-9 fractional digits, a space instead
    of ``T``, and ``datetime`` objects (naive ones are UTC).

    Raises:
        InvalidInputError: the value is not a timestamp.
    """
    if isinstance(value, datetime):
        moment = value
    else:
        text = str(value).strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        match = re.match(r"^(.*?[T ]\d{2}:\d{2}:\d{2})\.(\d+)(.*)$", text)
        if match:  # Python < 3.11 quirks aside, fromisoformat wants 0, 3 or 6 digits
            text = f"{match[1]}.{(match[2] + '000000')[:6]}{match[3]}"
        try:
            moment = datetime.fromisoformat(text)
        except ValueError as exc:
            raise InvalidInputError(f"not an ISO-8601 timestamp: {str(value)[:80]!r}") from exc
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError as exc:  # e.g. 9999-12-31T23:59:59-01:00 is in the year 10000 in UTC
        raise InvalidInputError(
            f"timestamp {str(value)[:80]!r} is outside the years 1 to 9999 in UTC") from exc


class Timestamp(TypeDecorator[str]):
    """A timestamp kept as fixed-width ISO-8601 UTC text.

    ``TEXT`` on PostgreSQL (Chainlit's documented type) and SQLite, ``VARCHAR(32)`` on MySQL and
    MariaDB so it can be indexed. Every write is normalised, so text order is instant order; every
    read is normalised too, so rows Chainlit's layers wrote in shorter or zone-less forms come
    back in the same shape as ours.
    """

    impl = sa.Text()
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            return sa.String(32)
        return sa.Text()

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return canonical_timestamp(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        try:
            return canonical_timestamp(value)
        except InvalidInputError:
            return str(value)  # a legacy value we cannot read is returned as stored, not lost

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        """Every timestamp of every row read passes here: text in our own fixed-width shape is
        returned as it is after a shape check, without the regular expression; anything else
        takes :meth:`process_result_value`."""
        base = dialect.type_descriptor(self.load_dialect_impl(dialect)).result_processor(
            dialect, coltype)
        if base is not None:  # pragma: no cover - no supported driver converts text
            return super().result_processor(dialect, coltype)

        def process(value: Any) -> str | None:
            if (type(value) is str and len(value) == 27 and value[26] == "Z"
                    and value[10] == "T" and value[19] == "."):
                return value
            return self.process_result_value(value, dialect)

        return process


class StringList(TypeDecorator[list[str]]):
    """A list of strings: ``TEXT[]`` on PostgreSQL (Chainlit's type for tags), JSON elsewhere.

    Chainlit's SQLAlchemy layer cannot bind a list on SQLite at all, so tags were lost there; a
    JSON array works on every other dialect.
    """

    impl = sa.JSON(none_as_null=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "postgresql":
            return postgresql.ARRAY(sa.Text())
        return sa.JSON(none_as_null=True)

    def process_bind_param(self, value: Any, dialect: Dialect) -> list[str] | None:
        if value is None:
            return None
        if isinstance(value, str) or not all(isinstance(item, str) for item in value):
            raise InvalidInputError(f"tags must be a list of strings, got {value!r}")
        return list(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> list[str] | None:
        if value is None:
            return None
        if isinstance(value, str):  # a JSON text a legacy SQLite layer wrote by hand
            value = json.loads(value)
        return list(value)


class BoolOrText(TypeDecorator[bool | str]):
    """``showInput``: Chainlit sends either a bool or a language name such as ``"json"``.

    Stored as ``TEXT`` (Chainlit's documented type): booleans as ``"true"``/``"false"``, which
    read back as booleans; every other string reads back unchanged.
    """

    impl = sa.Text()
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            return sa.String(191)
        return sa.Text()

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> bool | str | None:
        if value is None:
            return None
        lowered = str(value).lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        return str(value)
