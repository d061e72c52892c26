"""PynamoDB item classes over the single table, built from the same declarations as the spec.

One ``Model`` class per entity, all on the same table, each with the table keys ``PK``/``SK``,
the GSI key attributes it writes, and one attribute per column whose Python name *is* the
Chainlit key (``threadId``, ``showInput``, ...), so converting to and from Chainlit's dicts works
on names alone, as on the SQL side. GSIs are ``GlobalSecondaryIndex`` classes on the models.

Deliberate choices:

* No ``DiscriminatorAttribute``: PynamoDB would add a filter on it to every query, hiding the
  items Chainlit's own layer wrote (they have no discriminator). The entity is known from the
  key (``SK`` prefix), which is how the layer tells items apart.
* ``showInput`` is :class:`BoolOrStringAttribute`: Chainlit writes a bool *or* a language name
  and its layer stores them as ``BOOL`` or ``S``; both read back as written.
* JSON documents (``metadata``, ``generation``, ``props``, ...) and lists (``tags``) are
  :class:`JsonAttribute`: PynamoDB's number handling would return floats (and boto3's
  ``Decimal``), so ``{"x": 1}`` would come back as ``{"x": 1.0}`` (contract §4.3, 9). Here an
  integral number reads back as ``int`` and any other as ``float``.
* Every attribute is nullable: Chainlit sends partial dicts and fires writes in any order.

PynamoDB is synchronous; callers run these classes in worker threads.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, ClassVar

from chainlit_orm.errors import InvalidInputError, MissingDependencyError
from chainlit_orm.models.entities import DynamoEntityKeys
from chainlit_orm.models.modelset import DEFAULT_MODELS, ENTITIES, ModelSet
from chainlit_orm.schema_gen.dynamo import (
    PARTITION_KEY,
    SORT_KEY,
    GsiSpec,
    attribute_types,
    dynamo_indexes,
)

try:
    from pynamodb.attributes import (
        Attribute,
        BooleanAttribute,
        NumberAttribute,
        UnicodeAttribute,
    )
    from pynamodb.constants import PAY_PER_REQUEST_BILLING_MODE
    from pynamodb.expressions.update import RemoveAction, SetAction
    from pynamodb.indexes import (
        AllProjection,
        GlobalSecondaryIndex,
        IncludeProjection,
        KeysOnlyProjection,
    )
    from pynamodb.models import Model
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("pynamodb", "dynamodb") from exc

__all__ = [
    "BoolOrStringAttribute",
    "ChainlitItem",
    "JsonAttribute",
    "from_attribute_value",
    "pynamodb_models",
    "to_attribute_value",
]


def to_attribute_value(value: Any) -> dict[str, Any]:
    """A JSON-like Python value as a DynamoDB ``AttributeValue`` (the low-level wire form).

    Raises:
        InvalidInputError: a value JSON cannot hold (NaN, infinity, an unknown type).
    """
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int):
        return {"N": str(value)}
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInputError(f"DynamoDB cannot store the number {value!r}")
        return {"N": repr(value)}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, Mapping):
        return {"M": {str(key): to_attribute_value(item) for key, item in value.items()}}
    if isinstance(value, list | tuple):
        return {"L": [to_attribute_value(item) for item in value]}
    raise InvalidInputError(f"not a JSON value: {type(value).__name__}")


def from_attribute_value(value: Mapping[str, Any]) -> Any:
    """A DynamoDB ``AttributeValue`` as a JSON-like Python value; integral numbers stay ``int``.

    Sets (written by other tools) become lists and binaries stay bytes.
    """
    ((kind, payload),) = value.items()
    if kind == "NULL":
        return None
    if kind in ("S", "BOOL", "B"):
        return payload
    if kind == "N":
        return _number(payload)
    if kind == "M":
        return {key: from_attribute_value(item) for key, item in payload.items()}
    if kind == "L":
        return [from_attribute_value(item) for item in payload]
    if kind == "NS":
        return [_number(item) for item in payload]
    return list(payload)  # SS, BS


def _number(text: str) -> int | float:
    # DynamoDB normalises numbers ("1.0" is stored as "1"), so an integral float reads back as an
    # int of equal value; an int never reads back as a float.
    try:
        return int(text)
    except ValueError:
        return float(text)


class _PolymorphicAttribute(Attribute[Any]):
    """An attribute whose DynamoDB type depends on the value (PynamoDB fixes one per class).

    ``serialize`` returns a whole ``AttributeValue``; :class:`ChainlitItem` unwraps it when the
    item is written, ``get_value`` hands the whole stored value to ``deserialize``, and ``set``
    passes an already-serialised value to update expressions.
    """

    def serialize(self, value: Any) -> dict[str, Any]:
        return to_attribute_value(value)

    def get_value(self, value: dict[str, Any]) -> Any:
        return value

    def set(self, value: Any) -> SetAction | RemoveAction:
        return super().set(self.serialize(value))


class JsonAttribute(_PolymorphicAttribute):
    """A JSON document or list stored natively (``M``/``L``), numbers read back as int or float.

    A value stored as a JSON string (``S``) by some other writer is decoded on read.
    """

    attr_type = "M"

    def deserialize(self, value: dict[str, Any]) -> Any:
        decoded = from_attribute_value(value)
        if isinstance(decoded, str):
            try:
                return json.loads(decoded)
            except ValueError:
                return decoded
        return decoded


class BoolOrStringAttribute(_PolymorphicAttribute):
    """``showInput``: stored as ``BOOL`` for a bool, ``S`` for a string, read back as written."""

    attr_type = "S"

    def serialize(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, bool | str):
            raise InvalidInputError(f"showInput must be a bool or a string, got {value!r}")
        return to_attribute_value(value)

    def deserialize(self, value: dict[str, Any]) -> bool | str | None:
        decoded = from_attribute_value(value)
        return decoded if isinstance(decoded, bool | str) or decoded is None else str(decoded)


class ChainlitItem(Model):
    """Base of the generated item classes: writes polymorphic attributes with their own type."""

    #: The entity's key declaration (templates for PK, SK and its GSIs).
    entity_keys: ClassVar[DynamoEntityKeys]
    #: The entity name ("user", "thread", ...).
    entity: ClassVar[str]

    def _container_serialize(self, null_check: bool = True) -> dict[str, dict[str, Any]]:
        values: dict[str, dict[str, Any]] = super()._container_serialize(null_check=null_check)
        for attribute in self.get_attributes().values():
            if isinstance(attribute, _PolymorphicAttribute) and attribute.attr_name in values:
                values[attribute.attr_name] = values[attribute.attr_name][attribute.attr_type]
        return values


def _attribute_for(dynamo_type: str) -> Attribute[Any]:
    if dynamo_type == "BOOL|S":
        return BoolOrStringAttribute(null=True)
    if dynamo_type in ("M", "L"):
        return JsonAttribute(null=True)
    if dynamo_type == "BOOL":
        return BooleanAttribute(null=True)
    if dynamo_type == "N":
        return NumberAttribute(null=True)
    return UnicodeAttribute(null=True)


def _index_class(spec: GsiSpec, meta: Mapping[str, Any]) -> type[GlobalSecondaryIndex[Any]]:
    projection: Any
    if spec.projection == "INCLUDE":
        projection = IncludeProjection(list(spec.attributes))
    elif spec.projection == "KEYS_ONLY":
        projection = KeysOnlyProjection()
    else:
        projection = AllProjection()
    index_meta = type("Meta", (), {**meta, "index_name": spec.name, "projection": projection})
    namespace: dict[str, Any] = {
        "Meta": index_meta,
        spec.pk_attribute: UnicodeAttribute(hash_key=True),
        spec.sk_attribute: UnicodeAttribute(range_key=True),
        "__module__": __name__,
    }
    return type(f"{spec.name}Index", (GlobalSecondaryIndex,), namespace)


def pynamodb_models(
    models: ModelSet = DEFAULT_MODELS,
    table_name: str = "chainlit",
    *,
    region: str | None = None,
    host: str | None = None,
    aws_access_key_id: str | None = None,
    aws_secret_access_key: str | None = None,
    aws_session_token: str | None = None,
    connect_timeout_seconds: float | None = None,
    read_timeout_seconds: float | None = None,
    max_retry_attempts: int | None = None,
    max_pool_connections: int | None = None,
) -> dict[str, type[ChainlitItem]]:
    """One PynamoDB ``Model`` class per entity over the single table ``table_name``.

    Each call makes new classes (PynamoDB keeps a connection per class), so sets for different
    tables or endpoints coexist. Arguments left as None keep PynamoDB's defaults (credentials
    from the usual boto chain).

    Returns:
        entity name -> item class, named ``<Entity>Item`` (``ThreadItem``, ...). Each class has
        ``entity``, ``entity_keys`` and one attribute per GSI it writes, named after the index
        in snake case (``ThreadItem.user_activity``).

    Raises:
        SchemaError: the declarations are inconsistent (see ``dynamo_indexes``).
    """
    meta: dict[str, Any] = {
        key: value
        for key, value in {
            "table_name": table_name,
            "region": region,
            "host": host,
            "aws_access_key_id": aws_access_key_id,
            "aws_secret_access_key": aws_secret_access_key,
            "aws_session_token": aws_session_token,
            "connect_timeout_seconds": connect_timeout_seconds,
            "read_timeout_seconds": read_timeout_seconds,
            "max_retry_attempts": max_retry_attempts,
            "max_pool_connections": max_pool_connections,
        }.items()
        if value is not None
    }
    meta["billing_mode"] = PAY_PER_REQUEST_BILLING_MODE
    specs = {spec.name: spec for spec in dynamo_indexes(models)}
    index_classes = {name: _index_class(spec, meta) for name, spec in specs.items()}
    classes: dict[str, type[ChainlitItem]] = {}
    for entity in ENTITIES:
        keys = models.dynamo[entity]
        namespace: dict[str, Any] = {
            "Meta": type("Meta", (), dict(meta)),
            "__module__": __name__,
            "entity": entity,
            "entity_keys": keys,
            PARTITION_KEY: UnicodeAttribute(hash_key=True),
            SORT_KEY: UnicodeAttribute(range_key=True),
        }
        for column, dynamo_type in attribute_types(models, entity).items():
            namespace[column] = _attribute_for(dynamo_type)
        for declared in keys.indexes:
            namespace.setdefault(declared.pk_attribute, UnicodeAttribute(null=True))
            namespace.setdefault(declared.sk_attribute, UnicodeAttribute(null=True))
            namespace[_snake(declared.index)] = index_classes[declared.index]()
        name = models.model(entity).__name__ + "Item"
        classes[entity] = type(name, (ChainlitItem,), namespace)
    return classes


def _snake(name: str) -> str:
    out = "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")
    return out.replace(".", "_").replace("-", "_")
