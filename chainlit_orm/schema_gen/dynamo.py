"""The DynamoDB single table, derived from the entities' ``__dynamo__`` key declarations.

Layout (contract §3.3, Chainlit's own ``DynamoDBDataLayer``, so its tables keep working): one
table keyed by string ``PK``/``SK``; a thread and everything in it share the partition
``THREAD#{id}`` (``get_thread`` is one Query); users live at ``USER#{identifier}``/``USER``.

Global secondary indexes and why each exists:

* ``UserThread`` (``UserThreadPK``/``UserThreadSK``) is Chainlit's, declared by its docs'
  CloudFormation with ``INCLUDE [id, name]``. We keep writing it so a table stays usable by
  Chainlit's layer, and keep its projection: a GSI's projection cannot be changed in place.
* ``UserActivity`` (``USER#{userId}`` / ``TS#{activityAt}#{id}``) serves ``list_threads``. It
  projects every thread attribute a list item needs (:func:`list_attributes`: ``id, createdAt,
  activityAt, name, userId, userIdentifier, tags, metadata`` plus any custom column not derived
  from ``metadata``), so a
  sidebar page is exactly one Query, and the ``id`` in the sort key makes the keyset cursor
  unique even when two threads share a timestamp.
* ``UserFeedback0`` / ``UserFeedback1`` serve the ``feedback`` filter of ``list_threads``. They are
  *sparse*: the thread item carries ``UserFeedback0PK = USER#{userId}`` only while the thread has
  at least one feedback of value 0 (likewise for 1), and both reuse ``UserActivitySK`` as their
  sort key, so filtered pages come in the same order with the same cursor shape.

  Why this design. The alternatives were (a) one GSI keyed ``USER#{userId}#FB#{value}`` on the
  thread item, which cannot hold a thread that has both a 0 and a 1; (b) one GSI over separate
  marker items (one per thread and value), which would have to duplicate the list attributes and
  be rewritten on every activity bump and metadata merge of such threads; (c) no index, a
  ``FilterExpression`` on ``UserActivity``, which pays read capacity for every thread of the user
  and returns short or empty pages when feedback is rare (the defect of Chainlit's layer, §4.3).
  Two sparse indexes on the thread item cost nothing for threads without feedback, one extra
  index write per thread update for threads with feedback of a value, and a filtered page reads
  only matching threads. Keeping the marker exact needs a per-value counter on the thread item,
  maintained by the DynamoDB layer in the same transaction as the feedback item.
* ``ById`` (``{ENTITY}#{id}`` / ``{ENTITY}``, ``KEYS_ONLY``) finds the item of a user, step,
  element or feedback from its id alone: Chainlit calls ``delete_step(step_id)``,
  ``delete_feedback(feedback_id)`` and ``upsert_feedback`` without a ``threadId``, and
  ``update_thread(user_id=...)`` needs the owner's identifier (users are keyed by identifier). Keys
  only: it returns the item's ``PK``/``SK`` and the layer reads the item itself (consistently), so
  a write that does not change the key attributes never writes the index.

Every GSI key attribute is a string, and an item carries a GSI's attributes only when all the
placeholders of its templates have a value (:func:`render_key` returns None otherwise), which is
what makes an index sparse. :data:`SPARSE_CONDITIONS` documents conditions beyond that.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from chainlit_orm.errors import SchemaError
from chainlit_orm.models.entities import (
    FEEDBACK_ROLES,
    INDEX_ROLES,
    LOOKUP_ROLE,
    OWNER_ROLE,
    DynamoIndexKeys,
)
from chainlit_orm.models.modelset import DEFAULT_MODELS, ENTITIES, ModelSet
from chainlit_orm.models.search import FOLDED_FROM
from chainlit_orm.models.types import BoolOrText, IdType, StringList, Timestamp
from chainlit_orm.schema_gen.sql import SCHEMA_VERSION

__all__ = [
    "DEFAULT_TABLE_NAME",
    "LEGACY_PROJECTIONS",
    "MIGRATION_LOCK_KEY",
    "OVERFLOW_COLUMN",
    "PARTITION_KEY",
    "PROJECTIONS",
    "SCHEMA_VERSION_KEY",
    "SORT_KEY",
    "SPARSE_CONDITIONS",
    "TOMBSTONE_PREFIX",
    "TOMBSTONE_SORT_KEY",
    "TTL_ATTRIBUTE",
    "GsiSpec",
    "attribute_types",
    "dynamo_indexes",
    "dynamo_key_mapping",
    "dynamo_table_spec",
    "list_attributes",
    "parse_key",
    "placeholders",
    "render_key",
    "tombstone_key",
]

PARTITION_KEY = "PK"
SORT_KEY = "SK"
DEFAULT_TABLE_NAME = "chainlit"

#: The thread column holding keys a newer Chainlit sends that have no column yet; not needed by
#: the thread list, so not projected into the list indexes.
OVERFLOW_COLUMN = "extra"

# The three tables below are keyed by index *role* (models.entities.INDEX_ROLES), not by name,
# so a model set that renames an index keeps its projection and its documentation.

#: Projections fixed by tables that already exist in the wild: Chainlit's docs declare its
#: owner index (``UserThread``) with ``INCLUDE [id, name]`` and a projection cannot be changed
#: in place.
LEGACY_PROJECTIONS: Mapping[str, tuple[str, ...]] = {OWNER_ROLE: ("id", "name")}

#: Projections chosen per role rather than derived from the entity: the lookup index reads keys
#: only.
PROJECTIONS: Mapping[str, str] = {LOOKUP_ROLE: "KEYS_ONLY"}

#: When an item carries an index's key attributes, beyond "every placeholder has a value".
SPARSE_CONDITIONS: Mapping[str, str] = {
    role: f"only while the thread has at least one feedback with value {value}"
    for value, role in FEEDBACK_ROLES.items()
}

#: The item attribute DynamoDB's TTL reads (epoch seconds). Only a thread item carries it, and
#: only when the layer has ``retention=``: it moves with the thread's activity in the write that
#: moves the activity, so TTL costs no extra write. The generated template and ``migrate`` enable
#: TTL on it; an item without it never expires.
TTL_ATTRIBUTE = "expiresAt"

#: Where ``chainlit-orm migrate`` records the schema version in the single table. No GSI
#: attribute is set on it, so it never shows up in a list.
SCHEMA_VERSION_KEY: Mapping[str, str] = {PARTITION_KEY: "CHAINLIT_ORM#SCHEMA", SORT_KEY: "VERSION"}

#: The item ``chainlit-orm migrate`` holds while it migrates (a lease, see
#: :mod:`chainlit_orm.migrations.lock`), in the version item's partition.
MIGRATION_LOCK_KEY: Mapping[str, str] = {PARTITION_KEY: "CHAINLIT_ORM#SCHEMA", SORT_KEY: "LOCK"}

#: The tombstone of a thread ``erase_user`` removed: partition :data:`TOMBSTONE_PREFIX` + the
#: thread's id, sort key :data:`TOMBSTONE_SORT_KEY`, and one more attribute, ``erasedAt``
#: (ISO-8601 UTC). Its own partition, outside every thread's and with no index attribute: no
#: read, list, purge or transfer sees it, and nothing in it names the user. Kept forever (a
#: random id and a time); a write that would create the thread again checks it (see
#: ``layers/dynamodb``).
TOMBSTONE_PREFIX = "CHAINLIT_ORM#ERASED#"
TOMBSTONE_SORT_KEY = "ERASED"


def tombstone_key(thread_id: str) -> dict[str, str]:
    """The key (plain strings) of the tombstone of the thread ``thread_id``."""
    return {PARTITION_KEY: TOMBSTONE_PREFIX + thread_id, SORT_KEY: TOMBSTONE_SORT_KEY}


_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_AWS_NAME = re.compile(r"^[A-Za-z0-9_.-]{3,255}$")
_MAX_GSIS = 20
_MAX_PROJECTED = 100


@dataclass(frozen=True)
class GsiSpec:
    """One GSI of the table: its key attributes, projection and the entities that write it.

    Attributes:
        name: the index name.
        pk_attribute, sk_attribute: the item attributes holding its keys (type ``S``).
        projection: ``"ALL"``, ``"KEYS_ONLY"`` or ``"INCLUDE"``.
        attributes: the non-key attributes projected when ``projection`` is ``"INCLUDE"``.
        entities: entity name -> that entity's key templates for this index.
        role: what the layer uses the index for (:data:`~chainlit_orm.models.entities.
            INDEX_ROLES`), None for an app's own index.
    """

    name: str
    pk_attribute: str
    sk_attribute: str
    projection: str
    attributes: tuple[str, ...]
    entities: Mapping[str, DynamoIndexKeys]
    role: str | None = None

    def boto3(self) -> dict[str, Any]:
        """This index as a ``GlobalSecondaryIndexes`` entry of boto3's ``create_table``."""
        projection: dict[str, Any] = {"ProjectionType": self.projection}
        if self.projection == "INCLUDE":
            projection["NonKeyAttributes"] = list(self.attributes)
        return {
            "IndexName": self.name,
            "KeySchema": [
                {"AttributeName": self.pk_attribute, "KeyType": "HASH"},
                {"AttributeName": self.sk_attribute, "KeyType": "RANGE"},
            ],
            "Projection": projection,
        }


def placeholders(template: str) -> tuple[str, ...]:
    """The ``{key}`` names of a key template, in order."""
    return tuple(_PLACEHOLDER.findall(template))


def render_key(template: str, values: Mapping[str, Any]) -> str | None:
    """Fill a key template from an item's values, or None when a placeholder has no value.

    None means the item must not carry the attribute at all; that is how sparse indexes stay
    sparse (a thread without ``userId`` is in no user index).
    """
    missing = object()
    parts: list[str] = []
    position = 0
    for match in _PLACEHOLDER.finditer(template):
        value = values.get(match[1], missing)
        if value is missing or value is None or value == "":
            return None
        parts += [template[position : match.start()], str(value)]
        position = match.end()
    parts.append(template[position:])
    return "".join(parts)


def parse_key(template: str, key: str) -> dict[str, str] | None:
    """The placeholder values of ``key`` if it was rendered from ``template``, else None.

    Each placeholder but the last matches the shortest text (so ``TS#{activityAt}#{id}`` splits at
    the first ``#`` after the timestamp); the last takes the rest. Unlike ``str.strip(prefix)``
    (contract §4.3, 2) this removes a prefix, not a set of characters.
    """
    names = placeholders(template)
    pattern = "^"
    position = 0
    for index, match in enumerate(_PLACEHOLDER.finditer(template)):
        pattern += re.escape(template[position : match.start()])
        pattern += f"(?P<_{index}>.+)" if index == len(names) - 1 else f"(?P<_{index}>.+?)"
        position = match.end()
    pattern += re.escape(template[position:]) + "$"
    found = re.match(pattern, key, re.DOTALL)
    if found is None:
        return None
    return {name: found[f"_{index}"] for index, name in enumerate(names)}


def attribute_types(models: ModelSet, entity: str) -> dict[str, str]:
    """SQL column name -> DynamoDB attribute type of one entity's item.

    ``BOOL|S`` is ``showInput`` (Chainlit sends a bool or a language name); ``M``/``L`` are JSON
    documents and lists. Chainlit's own layer writes the same types through boto3's serializer.
    The SQL search's case-folded copies (:data:`~chainlit_orm.models.search.FOLDED_FROM`) are not
    attributes: the DynamoDB layer folds the projected ``name`` when it searches.
    """
    return {column.name: _dynamo_type(column.type) for column in models.table(entity).columns
            if FOLDED_FROM not in column.info}


def _dynamo_type(type_: sa.types.TypeEngine[Any]) -> str:
    if isinstance(type_, BoolOrText):
        return "BOOL|S"
    if isinstance(type_, StringList):
        return "L"
    if isinstance(type_, IdType | Timestamp):
        return "S"
    if isinstance(type_, sa.JSON):
        return "M"
    if isinstance(type_, sa.Boolean):
        return "BOOL"
    if isinstance(type_, sa.Integer | sa.Numeric | sa.Float):
        return "N"
    return "S"


def list_attributes(models: ModelSet = DEFAULT_MODELS) -> tuple[str, ...]:
    """The thread attributes a ``list_threads`` item needs, in column order.

    Every thread column except the overflow, the columns derived from ``metadata``
    (``metadata_column``) and the SQL search's folded copy of the name: ``metadata`` and ``name``
    themselves are projected, so they would only add bytes, and a projection cannot change in
    place, so adding such a column to a set must not force recreating the list indexes of an
    existing table. Columns marked ``info["unlisted"]`` (the trash's ``deletedAt``) are left out
    for the same reason. Any other custom column is included.
    """
    derived = models.metadata_columns("thread")
    return tuple(
        column.name
        for column in models.table("thread").columns
        if column.name != OVERFLOW_COLUMN and column.name not in derived
        and FOLDED_FROM not in column.info and not column.info.get("unlisted")
    )


def _projection(models: ModelSet, entity: str, role: str | None
                ) -> tuple[str, tuple[str, ...]]:
    if role is not None and role in LEGACY_PROJECTIONS:
        return "INCLUDE", LEGACY_PROJECTIONS[role]
    if role is not None and role in PROJECTIONS:
        return PROJECTIONS[role], ()
    if entity == "thread":
        return "INCLUDE", list_attributes(models)
    # An index over another entity reads that entity's items; project them whole.
    return "ALL", ()


def dynamo_indexes(models: ModelSet = DEFAULT_MODELS) -> tuple[GsiSpec, ...]:
    """Every GSI the set declares, merged across entities, validated, in declaration order
    (lookup indexes last).

    Raises:
        SchemaError: a template names a key the entity has no column for, an index is declared
            with different key attributes or roles by two entities, a role is unknown or given
            to two indexes, a name is invalid, a key attribute collides with an entity column,
            or a DynamoDB limit (20 GSIs, 100 projected attributes) is exceeded.
    """
    merged: dict[str, dict[str, Any]] = {}
    roles: dict[str, str] = {}
    for entity in ENTITIES:
        keys = models.dynamo[entity]
        columns = set(models.table(entity).columns.keys())
        for template in (keys.pk, keys.sk):
            _check_template(template, columns, entity, "table key")
        for declared in keys.indexes:
            if not _AWS_NAME.match(declared.index):
                raise SchemaError(f"DynamoDB index name {declared.index!r} is invalid")
            for template in (declared.pk, declared.sk):
                _check_template(template, columns, entity, declared.index)
            for attribute in (declared.pk_attribute, declared.sk_attribute):
                if attribute in (PARTITION_KEY, SORT_KEY) or attribute in columns:
                    raise SchemaError(
                        f"{entity}: key attribute {attribute!r} of index {declared.index} "
                        "collides with the table key or a column",
                        detail=attribute,
                    )
            if declared.role is not None:
                if declared.role not in INDEX_ROLES:
                    raise SchemaError(
                        f"index {declared.index}: unknown role {declared.role!r}; roles: "
                        f"{', '.join(sorted(INDEX_ROLES))} (None for an index of the app's own)",
                        detail=declared.role)
                if roles.setdefault(declared.role, declared.index) != declared.index:
                    raise SchemaError(
                        f"indexes {roles[declared.role]} and {declared.index} both have the "
                        f"role {declared.role!r}", detail=declared.role)
            projection, attributes = _projection(models, entity, declared.role)
            entry = merged.setdefault(
                declared.index,
                {"pk": declared.pk_attribute, "sk": declared.sk_attribute,
                 "projection": projection, "attributes": [], "entities": {},
                 "role": declared.role},
            )
            if entry["role"] != declared.role:
                raise SchemaError(
                    f"index {declared.index} is declared with the roles {entry['role']!r} and "
                    f"{declared.role!r}", detail=declared.index)
            if (entry["pk"], entry["sk"]) != (declared.pk_attribute, declared.sk_attribute):
                raise SchemaError(
                    f"index {declared.index} is declared with key attributes "
                    f"{entry['pk']}/{entry['sk']} and {declared.pk_attribute}/"
                    f"{declared.sk_attribute}",
                    detail=declared.index,
                )
            if entry["projection"] == "KEYS_ONLY" and projection == "KEYS_ONLY":
                pass
            elif "ALL" in (entry["projection"], projection):
                entry["projection"], entry["attributes"] = "ALL", []
            else:
                entry["attributes"] += [a for a in attributes if a not in entry["attributes"]]
            entry["entities"][entity] = declared
    # declaration order, lookup indexes (PROJECTIONS) last: Chainlit's and the list's first
    specs = tuple(sorted(
        (GsiSpec(name, e["pk"], e["sk"], e["projection"], tuple(e["attributes"]), e["entities"],
                 e["role"])
         for name, e in merged.items()),
        key=lambda spec: spec.role in PROJECTIONS,
    ))
    if len(specs) > _MAX_GSIS:
        raise SchemaError(f"{len(specs)} GSIs declared; DynamoDB allows {_MAX_GSIS} per table")
    projected = sum(len(spec.attributes) for spec in specs)
    if projected > _MAX_PROJECTED:
        raise SchemaError(
            f"{projected} projected attributes over all GSIs; DynamoDB allows {_MAX_PROJECTED}"
        )
    return specs


def _check_template(template: str, columns: set[str], entity: str, where: str) -> None:
    unknown = [name for name in placeholders(template) if name not in columns]
    if unknown:
        raise SchemaError(
            f"{entity}: {where} template {template!r} names {', '.join(unknown)}, "
            f"which is not a column of the {entity} table",
            detail=template,
        )


def dynamo_table_spec(
    models: ModelSet = DEFAULT_MODELS, table_name: str = DEFAULT_TABLE_NAME
) -> dict[str, Any]:
    """Keyword arguments for boto3's ``create_table`` making the set's single table.

    On-demand billing: chat traffic is spiky and a wrong provisioned capacity throttles writes
    that Chainlit fires without awaiting. The CloudFormation template offers ``PROVISIONED``.

    Raises:
        SchemaError: the declarations are inconsistent (see :func:`dynamo_indexes`), or the
            table name is not a valid DynamoDB name.
    """
    if not _AWS_NAME.match(table_name):
        raise SchemaError(
            f"DynamoDB table name {table_name!r} is invalid (3-255 of A-Z a-z 0-9 _ . -)",
            detail=table_name,
        )
    indexes = dynamo_indexes(models)
    key_attributes = [PARTITION_KEY, SORT_KEY]
    for spec in indexes:
        key_attributes += [a for a in (spec.pk_attribute, spec.sk_attribute)
                           if a not in key_attributes]
    spec_: dict[str, Any] = {
        "TableName": table_name,
        "KeySchema": [
            {"AttributeName": PARTITION_KEY, "KeyType": "HASH"},
            {"AttributeName": SORT_KEY, "KeyType": "RANGE"},
        ],
        "AttributeDefinitions": [
            {"AttributeName": name, "AttributeType": "S"} for name in key_attributes
        ],
        "BillingMode": "PAY_PER_REQUEST",
    }
    if indexes:
        spec_["GlobalSecondaryIndexes"] = [index.boto3() for index in indexes]
    return spec_


def dynamo_key_mapping(models: ModelSet = DEFAULT_MODELS) -> dict[str, Any]:
    """The key mapping as a reader wants it: table keys, indexes, and per entity its templates.

    This is what ``generated/dynamodb.json`` holds: enough to read or write the table by hand
    (or from another language) the way chainlit-orm and Chainlit's own layer do.

    Raises:
        SchemaError: the declarations are inconsistent (see :func:`dynamo_indexes`).
    """
    indexes = dynamo_indexes(models)
    index_view: dict[str, Any] = {}
    for spec in indexes:
        projection: dict[str, Any] = {"type": spec.projection}
        if spec.projection == "INCLUDE":
            projection["attributes"] = list(spec.attributes)
        view: dict[str, Any] = {
            "partitionKey": spec.pk_attribute,
            "sortKey": spec.sk_attribute,
            "projection": projection,
            "entities": sorted(spec.entities, key=ENTITIES.index),
        }
        if spec.role is not None and spec.role in SPARSE_CONDITIONS:
            view["present"] = SPARSE_CONDITIONS[spec.role]
        index_view[spec.name] = view
    entities: dict[str, Any] = {}
    for entity in ENTITIES:
        keys = models.dynamo[entity]
        entities[entity] = {
            PARTITION_KEY: keys.pk,
            SORT_KEY: keys.sk,
            "indexes": {
                declared.index: {
                    declared.pk_attribute: declared.pk,
                    declared.sk_attribute: declared.sk,
                }
                for declared in keys.indexes
            },
            "attributes": attribute_types(models, entity),
        }
    return {
        "table": {
            "partitionKey": PARTITION_KEY,
            "sortKey": SORT_KEY,
            "keyType": "S",
            "billingMode": "PAY_PER_REQUEST",
        },
        "indexes": index_view,
        "entities": entities,
        "schemaVersionItem": {
            **SCHEMA_VERSION_KEY,
            "attributes": {"version": "N", "appliedAt": "S", "fingerprint": "S",
                           "history": "L"},
            "version": SCHEMA_VERSION,
        },
        "templates": "{key} is the value of that item attribute (a Chainlit key); an item "
        "carries an index's key attributes only when every placeholder has a value",
    }
