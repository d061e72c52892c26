"""What a DynamoDB item looks like, with no I/O: keys, index attributes, codecs, sizes, and the
UpdateItem expressions the backend sends.

Everything here is derived from the model set (its ``__dynamo__`` declarations give the key
templates and indexes), so a custom set changes the layout in one place.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from chainlit_orm.errors import (
    InvalidInputError,
    MissingDependencyError,
)
from chainlit_orm.models.modelset import ModelSet
from chainlit_orm.models.types import Timestamp, format_timestamp, parse_timestamp
from chainlit_orm.schema_gen.dynamo import (
    OVERFLOW_COLUMN,
    PARTITION_KEY,
    SORT_KEY,
    GsiSpec,
    parse_key,
    placeholders,
    render_key,
)

try:

    from chainlit_orm.schema_gen.pynamo import (
        BoolOrStringAttribute,
        ChainlitItem,
        JsonAttribute,
        from_attribute_value,
        to_attribute_value,
    )
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("pynamodb", "dynamodb") from exc

logger = logging.getLogger(__name__)

#: DynamoDB's item size limit (attribute names and values, UTF-8).
ITEM_LIMIT = 400 * 1024
#: Step texts above this many UTF-8 bytes go to the storage client when one is configured.
DEFAULT_OFFLOAD_BYTES = 100 * 1024
#: BatchWriteItem takes at most 25 requests; BatchGetItem 100 keys.
BATCH_WRITE = 25
#: Step texts that may be offloaded, and the attribute naming the object that holds each.
TEXT_REFS = {"input": "inputRef", "output": "outputRef"}
#: What an offloaded step text that cannot be read back reads as (see ``_load_texts``).
UNREADABLE_TEXT = "[chainlit-orm: this text is stored outside DynamoDB and could not be read back]"
#: The step ``metadata`` key that lists, per field, the object key of each unreadable text.
UNREADABLE_KEY = "chainlit_orm_unreadable"
#: Per-value feedback counters on the thread item, and the sparse index each one drives.
FEEDBACK_COUNTERS = {0: "fbCount0", 1: "fbCount1"}
FEEDBACK_INDEXES = {0: "UserFeedback0", 1: "UserFeedback1"}
LIST_INDEX = "UserActivity"
LOOKUP_INDEX = "ById"

def string_value(value: str) -> dict[str, str]:
    return {"S": value}


def table_key(pk: str, sk: str) -> dict[str, Any]:
    return {PARTITION_KEY: string_value(pk), SORT_KEY: string_value(sk)}


def item_size(item: Mapping[str, Any]) -> int:
    """DynamoDB's size of an item in wire form: names plus values (an upper-bound estimate)."""
    return sum(len(name.encode()) + value_size(value) for name, value in item.items())


def value_size(value: Mapping[str, Any]) -> int:
    ((kind, payload),) = value.items()
    if kind == "S":
        return len(payload.encode())
    if kind == "N":
        return len(payload) // 2 + 2
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "M":
        return 3 + sum(len(k.encode()) + 1 + value_size(v) for k, v in payload.items())
    if kind == "L":
        return 3 + sum(1 + value_size(v) for v in payload)
    return len(json.dumps(payload, default=str))


class UpdateExpression:
    """An UpdateItem expression under construction: placeholders for every name and value."""

    def __init__(self) -> None:
        self.sets: list[str] = []
        self.removes: list[str] = []
        self.adds: list[str] = []
        self.conditions: list[str] = []
        self.names: dict[str, str] = {}
        self.values: dict[str, Any] = {}

    def n(self, attribute: str) -> str:
        for placeholder, name in self.names.items():
            if name == attribute:
                return placeholder
        placeholder = f"#n{len(self.names)}"
        self.names[placeholder] = attribute
        return placeholder

    def v(self, value: Mapping[str, Any]) -> str:
        placeholder = f":v{len(self.values)}"
        self.values[placeholder] = dict(value)
        return placeholder

    def set(self, attribute: str, value: Mapping[str, Any], *, if_absent: bool = False) -> None:
        name = self.n(attribute)
        if if_absent:
            self.sets.append(f"{name} = if_not_exists({name}, {self.v(value)})")
        else:
            self.sets.append(f"{name} = {self.v(value)}")

    def set_path(self, attribute: str, key: str, value: Mapping[str, Any]) -> None:
        self.sets.append(f"{self.n(attribute)}.{self.n(key)} = {self.v(value)}")

    def remove(self, attribute: str) -> None:
        self.removes.append(self.n(attribute))

    def add(self, attribute: str, value: Mapping[str, Any]) -> None:
        """``ADD`` a number: applied to the value the item has when the write lands, so
        concurrent additions commute (no read-modify-write)."""
        self.adds.append(f"{self.n(attribute)} {self.v(value)}")

    def remove_path(self, attribute: str, key: str) -> None:
        self.removes.append(f"{self.n(attribute)}.{self.n(key)}")

    def condition(self, expression: str) -> None:
        self.conditions.append(f"({expression})")

    def params(self) -> dict[str, Any]:
        parts = []
        if self.sets:
            parts.append("SET " + ", ".join(self.sets))
        if self.removes:
            parts.append("REMOVE " + ", ".join(self.removes))
        if self.adds:
            parts.append("ADD " + ", ".join(self.adds))
        params: dict[str, Any] = {"UpdateExpression": " ".join(parts)}
        if self.conditions:
            params["ConditionExpression"] = " AND ".join(self.conditions)
        if self.names:
            params["ExpressionAttributeNames"] = dict(self.names)
        if self.values:
            params["ExpressionAttributeValues"] = dict(self.values)
        return params


class ItemCodec:
    """One entity's attribute types, taken from its generated PynamoDB item class."""

    def __init__(self, models: ModelSet, entity: str, item_class: type[ChainlitItem],
                 reserved: set[str]) -> None:
        table = models.table(entity)
        self.entity = entity
        self.attributes = dict(item_class.get_attributes())
        self.columns = tuple(table.columns.keys())
        self.timestamps = {c.name for c in table.columns if isinstance(c.type, Timestamp)}
        self.has_overflow = OVERFLOW_COLUMN in table.columns
        self.reserved = reserved

    def encode(self, name: str, value: Any) -> dict[str, Any]:
        attribute = self.attributes.get(name)
        try:
            if attribute is None or isinstance(attribute, JsonAttribute | BoolOrStringAttribute):
                return to_attribute_value(value) if attribute is None else dict(
                    attribute.serialize(value))
            return {attribute.attr_type: attribute.serialize(value)}
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"{self.entity}.{name}: cannot store {value!r}") from exc

    def decode(self, name: str, value: Mapping[str, Any]) -> Any:
        attribute = self.attributes.get(name)
        kind = next(iter(value))
        if kind == "NULL":
            return None
        if isinstance(attribute, JsonAttribute | BoolOrStringAttribute):
            decoded = attribute.deserialize(dict(value))
        elif attribute is not None and kind == attribute.attr_type:
            decoded = attribute.deserialize(value[kind])
        else:
            decoded = from_attribute_value(value)
        if name in self.timestamps and isinstance(decoded, str):
            # a legacy value we cannot read is returned as stored, not lost
            with contextlib.suppress(InvalidInputError):
                decoded = format_timestamp(parse_timestamp(decoded))
        return decoded

    def row(self, item: Mapping[str, Any]) -> dict[str, Any]:
        """An item as a row keyed by column name (every column, None when absent, as a SQL row);
        unknown attributes go to the overflow."""
        row: dict[str, Any] = dict.fromkeys(self.columns)
        overflow: dict[str, Any] = {}
        for name, value in item.items():
            if name in self.columns:
                row[name] = self.decode(name, value)
            elif name not in self.reserved:
                overflow[name] = from_attribute_value(value)
        if self.has_overflow and overflow:
            merged = dict(row.get(OVERFLOW_COLUMN) or {})
            for key, value in overflow.items():
                merged.setdefault(key, value)
            row[OVERFLOW_COLUMN] = merged
        return row


@dataclass(frozen=True)
class KeyTemplate:
    """Rendering and parsing of one entity's table keys."""

    pk: str
    sk: str

    def render(self, **values: Any) -> tuple[str, str]:
        pk, sk = render_key(self.pk, values), render_key(self.sk, values)
        if pk is None or sk is None:
            raise InvalidInputError(f"cannot build a key from {values!r}")
        return pk, sk


class ItemLayout:
    """Where each entity's items live and how their attributes are encoded, read from the model
    set and its generated PynamoDB item classes (no I/O: the backend, the backfill and the
    transfer share it, so an item is keyed and indexed the same way whoever writes it)."""

    def __init__(self, models: ModelSet, item_classes: Mapping[str, type[ChainlitItem]],
                 indexes: Mapping[str, GsiSpec], reserved: Iterable[str] = ()) -> None:
        self.models = models
        # attributes that are never row columns: keys, index keys, counters, text references
        every = {PARTITION_KEY, SORT_KEY, *reserved, *TEXT_REFS.values(),
                 *FEEDBACK_COUNTERS.values()}
        for spec in indexes.values():
            every |= {spec.pk_attribute, spec.sk_attribute}
        self.codecs = {entity: ItemCodec(models, entity, cls, every)
                       for entity, cls in item_classes.items()}
        self.keys = {entity: KeyTemplate(keys.pk, keys.sk)
                     for entity, keys in models.dynamo.items()}

    def user_row(self, item: Mapping[str, Any]) -> dict[str, Any]:
        """A user item as a row; an item Chainlit's layer wrote lacks ``identifier`` (it is in
        the key) and ``id`` (its id is the identifier)."""
        row = self.codecs["user"].row(item)
        if not row.get("identifier"):
            parsed = parse_key(self.models.dynamo["user"].pk, item[PARTITION_KEY]["S"])
            row["identifier"] = parsed["identifier"] if parsed else None
        if not row.get("id"):
            row["id"] = row["identifier"]  # Chainlit's layer: the id is the identifier
        return row

    def key_of(self, entity: str, **values: Any) -> dict[str, Any]:
        return table_key(*self.keys[entity].render(**values))

    def index_attributes(self, entity: str, values: Mapping[str, Any]) -> dict[str, str]:
        """The GSI key attributes an item of ``entity`` with ``values`` carries (sparse indexes
        driven by feedback counters excluded)."""
        result: dict[str, str] = {}
        for declared in self.models.dynamo[entity].indexes:
            if declared.index in FEEDBACK_INDEXES.values():
                continue
            for attribute, template in ((declared.pk_attribute, declared.pk),
                                        (declared.sk_attribute, declared.sk)):
                rendered = render_key(template, values)
                if rendered is not None:
                    result[attribute] = rendered
        return result

    def index_templates(self, entity: str) -> dict[str, str]:
        result: dict[str, str] = {}
        for declared in self.models.dynamo[entity].indexes:
            if declared.index in FEEDBACK_INDEXES.values():
                continue
            result[declared.pk_attribute] = declared.pk
            result[declared.sk_attribute] = declared.sk
        return result

    def thread_of_key(self, pk: str) -> str | None:
        parsed = parse_key(self.models.dynamo["thread"].pk, pk)
        return parsed["id"] if parsed else None

    def kind(self, sk: str) -> str | None:
        """Which entity an item of a thread partition is, from its sort key prefix."""
        for entity in ("thread", "step", "element", "feedback"):
            template = self.models.dynamo[entity].sk
            if (placeholders(template) and parse_key(template, sk) is not None) or sk == template:
                return entity
        return None


def stored_object_keys(items: Iterable[Mapping[str, Any]]) -> list[str]:
    """The storage objects the items name (element files, offloaded step texts): what a delete
    of the items must delete from the storage too."""
    keys = []
    for item in items:
        for attribute in ("objectKey", *TEXT_REFS.values()):
            value = item.get(attribute)
            if value and "S" in value and value["S"]:
                keys.append(value["S"])
    return keys
