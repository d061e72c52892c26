"""The five entities, declared once: fields, SQL names, indexes and DynamoDB keys.

These are *non-table* SQLModel bases. A :class:`~chainlit_orm.models.modelset.ModelSet` turns them
into ``table=True`` classes with their own ``MetaData``, so an app can declare its own set (extra
columns, a table prefix, a PostgreSQL schema) without touching ours. A ``table=True`` subclass of a
``table=True`` class would map onto the parent's table and silently drop new columns, and a
``Column`` object in a shared base can belong to one ``Table`` only; so SQL names are given through
``sa_column_kwargs`` and nothing here is a table.

Conventions:

* The SQL column name is the key Chainlit uses in its dicts (``threadId``, ``autoCollapse``, ...),
  so a database built from Chainlit's documented DDL already has our names, and the conversion to
  and from Chainlit's dicts works on column keys alone (see :mod:`chainlit_orm.models.convert`).
* Columns that are not Chainlit keys carry ``info={"internal": True}`` and never appear in a dict.
* ``extra`` is the overflow field: a key a newer Chainlit sends that has no column yet is kept
  there and given back as it came.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from chainlit_orm.models.search import FOLDED_FROM, FOLDED_TYPES, MESSAGE_TYPES
from chainlit_orm.models.types import (
    BoolOrText,
    FoldedText,
    IdentifierText,
    IdType,
    IndexedText,
    JsonType,
    LongText,
    StringList,
    Timestamp,
)

__all__ = [
    "FEEDBACK_ROLES",
    "INDEX_ROLES",
    "LIST_ROLE",
    "LOOKUP_ROLE",
    "OWNER_ROLE",
    "DynamoEntityKeys",
    "DynamoIndexKeys",
    "ElementFields",
    "FeedbackFields",
    "IndexSpec",
    "StepFields",
    "ThreadFields",
    "UserFields",
]


def _col(name: str, type_: Any, *, nullable: bool = True, internal: bool = False, **kw: Any) -> Any:
    """A field whose SQL column is ``name`` (Chainlit's key) with a cross-dialect type."""
    column_kwargs: dict[str, Any] = {"name": name, "nullable": nullable}
    if internal:
        column_kwargs["info"] = {"internal": True}
    column_kwargs.update(kw.pop("sa_column_kwargs", {}))
    return Field(default=None, sa_type=type_, sa_column_kwargs=column_kwargs, **kw)


def _folded(name: str, source: str, *, types: tuple[str, ...] | None = None) -> Any:
    """An internal column holding the case-folded copy of ``source`` that search compares with
    (:mod:`chainlit_orm.models.search`); NULL until a write or ``migrate`` fills it."""
    info: dict[str, Any] = {"internal": True, FOLDED_FROM: source}
    if types is not None:
        info[FOLDED_TYPES] = types
    return Field(default=None, sa_type=FoldedText,
                 sa_column_kwargs={"name": name, "nullable": True, "info": info})


def _pk() -> Any:
    return Field(
        default=None,
        primary_key=True,
        sa_type=IdType,
        sa_column_kwargs={"name": "id", "nullable": False},
    )


@dataclass(frozen=True)
class IndexSpec:
    """An index over SQL column names; ``name`` is suffixed to ``ix_<table>_``."""

    name: str
    columns: tuple[str, ...]
    unique: bool = False
    #: Index only the rows whose first column is set (a partial index ``WHERE col IS NOT NULL``
    #: on PostgreSQL and SQLite; MySQL/MariaDB have no partial indexes and get a full one).
    #: Why: for a column NULL on nearly every row and queried for its few set values, a full
    #: index tempts SQLite's planner (it keeps no statistics) to serve ``col IS NULL`` from
    #: it, reading every live row instead of using the selective index of the query.
    only_set: bool = False


#: What the DynamoDB layer uses a GSI for: its *role*. The layer, the backfill, the migrator's
#: generated schema and the transfer find every index they query or maintain by its role,
#: never by its name, so a model set may give an index another name (or other key attributes)
#: and everything follows. An index without a role is the app's own: the layer writes its keys
#: on every item of the entities that declare it and never reads it.
#:
#: * ``owner``: Chainlit's own index of a user's threads (``UserThread``); kept so a table stays
#:   usable by Chainlit's layer, and the one that still holds a trashed thread (an erasure finds
#:   the user's threads there).
#: * ``list``: the thread list by activity (``UserActivity``): one Query per sidebar page.
#: * ``feedback0``, ``feedback1``: the sparse indexes of the list's feedback filter
#:   (``UserFeedback0/1``); a thread is in one while it has a feedback of that value.
#: * ``lookup``: an item from its id alone (``ById``), for every entity but threads.
OWNER_ROLE = "owner"
LIST_ROLE = "list"
LOOKUP_ROLE = "lookup"
#: The feedback value -> the role of its sparse index.
FEEDBACK_ROLES: dict[int, str] = {0: "feedback0", 1: "feedback1"}
INDEX_ROLES: frozenset[str] = frozenset({OWNER_ROLE, LIST_ROLE, LOOKUP_ROLE,
                                         *FEEDBACK_ROLES.values()})


@dataclass(frozen=True)
class DynamoIndexKeys:
    """Key templates an entity's item carries for one GSI of the single table, and the index's
    role for the layer (one of :data:`INDEX_ROLES`, or None for an app's own index)."""

    index: str
    pk_attribute: str
    sk_attribute: str
    pk: str
    sk: str
    role: str | None = None


@dataclass(frozen=True)
class DynamoEntityKeys:
    """How an entity maps onto the DynamoDB single table (contract §3.3).

    Templates use ``{key}`` placeholders naming Chainlit keys / SQL column names. The layout
    matches Chainlit's own ``DynamoDBDataLayer`` so its tables keep working.
    """

    pk: str
    sk: str
    indexes: tuple[DynamoIndexKeys, ...] = field(default=())


class UserFields(SQLModel):
    """A persisted Chainlit user (``PersistedUser``)."""

    __entity__: ClassVar[str] = "user"
    __foreign_keys__: ClassVar[tuple[tuple[str, str], ...]] = ()
    __base_table__: ClassVar[str] = "users"
    __indexes__: ClassVar[tuple[IndexSpec, ...]] = ()
    __dynamo__: ClassVar[DynamoEntityKeys] = DynamoEntityKeys(
        pk="USER#{identifier}",
        sk="USER",
        # the thread owner's identifier from its id (``update_thread`` gets only the id)
        indexes=(DynamoIndexKeys("ById", "ByIdPK", "ByIdSK", "USER#{id}", "USER", LOOKUP_ROLE),),
    )

    id: str | None = _pk()
    identifier: str | None = _col(
        "identifier", IdentifierText, nullable=False, sa_column_kwargs={"unique": True}
    )
    display_name: str | None = _col("display_name", LongText)
    meta: dict[str, Any] | None = _col("metadata", JsonType, nullable=False)
    created_at: str | None = _col("createdAt", Timestamp)


class ThreadFields(SQLModel):
    """A conversation. ``activityAt`` orders the thread list; ``createdAt`` never changes."""

    __entity__: ClassVar[str] = "thread"
    __base_table__: ClassVar[str] = "threads"
    __indexes__: ClassVar[tuple[IndexSpec, ...]] = (
        # keyset pagination: WHERE userId = ? ORDER BY activityAt DESC, id DESC (id breaks ties)
        IndexSpec("user_activity", ("userId", "activityAt", "id")),
        IndexSpec("user_created", ("userId", "createdAt", "id")),
        # purge: the oldest activity first, across users, in keyset batches
        IndexSpec("activity", ("activityAt", "id")),
        # purge of the trash: the few trashed threads, without reading the others
        IndexSpec("deleted", ("deletedAt",), only_set=True),
    )
    __foreign_keys__: ClassVar[tuple[tuple[str, str], ...]] = (("userId", "user"),)
    __dynamo__: ClassVar[DynamoEntityKeys] = DynamoEntityKeys(
        pk="THREAD#{id}",
        sk="THREAD",
        indexes=(
            # Chainlit's own GSI (its projection is only id and name).
            DynamoIndexKeys("UserThread", "UserThreadPK", "UserThreadSK", "USER#{userId}",
                            "TS#{activityAt}", OWNER_ROLE),
            # Ours, projecting the list's summary attributes: one Query per sidebar page.
            DynamoIndexKeys("UserActivity", "UserActivityPK", "UserActivitySK", "USER#{userId}",
                            "TS#{activityAt}#{id}", LIST_ROLE),
            # list_threads' feedback filter: sparse, the PK attribute is set only while the thread
            # has a feedback of that value (see chainlit_orm.schema_gen.dynamo for the costs).
            DynamoIndexKeys("UserFeedback0", "UserFeedback0PK", "UserActivitySK", "USER#{userId}",
                            "TS#{activityAt}#{id}", FEEDBACK_ROLES[0]),
            DynamoIndexKeys("UserFeedback1", "UserFeedback1PK", "UserActivitySK", "USER#{userId}",
                            "TS#{activityAt}#{id}", FEEDBACK_ROLES[1]),
        ),
    )

    id: str | None = _pk()
    created_at: str | None = _col("createdAt", Timestamp)
    activity_at: str | None = _col("activityAt", Timestamp, internal=True)
    name: str | None = _col("name", LongText)
    user_id: str | None = _col("userId", IdType)
    user_identifier: str | None = _col("userIdentifier", LongText)
    tags: list[str] | None = _col("tags", StringList)
    meta: dict[str, Any] | None = _col("metadata", JsonType)
    extra: dict[str, Any] | None = _col("extra", JsonType, internal=True)
    name_folded: str | None = _folded("nameFolded", "name")
    # the opt-in trash (``soft_delete=``): when the thread was deleted; NULL for a live thread.
    # Every read leaves a trashed thread out; ``purge`` removes it after the window. Not in the
    # DynamoDB list projections ("unlisted"): a projection cannot change in place, and a trashed
    # thread leaves the list index instead (layers.dynamodb.lifecycle).
    deleted_at: str | None = _col("deletedAt", Timestamp, internal=True,
                                  sa_column_kwargs={"info": {"internal": True, "unlisted": True}})


class StepFields(SQLModel):
    """A step or message (``StepDict``); every key Chainlit 2.12 emits has a column."""

    __entity__: ClassVar[str] = "step"
    __foreign_keys__: ClassVar[tuple[tuple[str, str], ...]] = (("threadId", "thread"),)
    __base_table__: ClassVar[str] = "steps"
    __indexes__: ClassVar[tuple[IndexSpec, ...]] = (
        IndexSpec("thread_created", ("threadId", "createdAt", "id")),
        # get_favorite_steps: few rows are favorites, so the flag is selective on its own
        IndexSpec("favorite", ("favorite", "createdAt")),
    )
    # ById: get_step/delete_step and feedback without a threadId get only the step id
    __dynamo__: ClassVar[DynamoEntityKeys] = DynamoEntityKeys(
        pk="THREAD#{threadId}", sk="STEP#{id}",
        indexes=(DynamoIndexKeys("ById", "ByIdPK", "ByIdSK", "STEP#{id}", "STEP", LOOKUP_ROLE),),
    )

    id: str | None = _pk()
    name: str | None = _col("name", LongText, nullable=False)
    type: str | None = _col("type", IndexedText, nullable=False)
    thread_id: str | None = _col("threadId", IdType, nullable=False)
    parent_id: str | None = _col("parentId", IdType)
    streaming: bool | None = _col("streaming", sa.Boolean, nullable=False)
    wait_for_answer: bool | None = _col("waitForAnswer", sa.Boolean)
    is_error: bool | None = _col("isError", sa.Boolean)
    meta: dict[str, Any] | None = _col("metadata", JsonType)
    tags: list[str] | None = _col("tags", StringList)
    input: str | None = _col("input", LongText)
    output: str | None = _col("output", LongText)
    created_at: str | None = _col("createdAt", Timestamp)
    command: str | None = _col("command", LongText)
    start: str | None = _col("start", Timestamp)
    end: str | None = _col("end", Timestamp)
    generation: dict[str, Any] | None = _col("generation", JsonType)
    show_input: bool | str | None = _col("showInput", BoolOrText)
    language: str | None = _col("language", LongText)
    default_open: bool | None = _col("defaultOpen", sa.Boolean)
    auto_collapse: bool | None = _col("autoCollapse", sa.Boolean)
    modes: dict[str, Any] | None = _col("modes", JsonType)
    icon: str | None = _col("icon", LongText)
    favorite: bool | None = _col("favorite", sa.Boolean, internal=True)
    extra: dict[str, Any] | None = _col("extra", JsonType, internal=True)
    output_folded: str | None = _folded("outputFolded", "output", types=MESSAGE_TYPES)


class ElementFields(SQLModel):
    """An element (``ElementDict``): file metadata; bytes live in the storage client."""

    __entity__: ClassVar[str] = "element"
    __foreign_keys__: ClassVar[tuple[tuple[str, str], ...]] = (("threadId", "thread"),)
    __base_table__: ClassVar[str] = "elements"
    __indexes__: ClassVar[tuple[IndexSpec, ...]] = (
        IndexSpec("thread", ("threadId",)),
        IndexSpec("for", ("forId",)),
    )
    __dynamo__: ClassVar[DynamoEntityKeys] = DynamoEntityKeys(
        pk="THREAD#{threadId}", sk="ELEMENT#{id}",
        indexes=(DynamoIndexKeys("ById", "ByIdPK", "ByIdSK", "ELEMENT#{id}", "ELEMENT",
                                 LOOKUP_ROLE),),
    )

    id: str | None = _pk()
    thread_id: str | None = _col("threadId", IdType)
    type: str | None = _col("type", LongText)
    url: str | None = _col("url", LongText)
    chainlit_key: str | None = _col("chainlitKey", LongText)
    path: str | None = _col("path", LongText)
    name: str | None = _col("name", LongText, nullable=False)
    display: str | None = _col("display", LongText)
    object_key: str | None = _col("objectKey", LongText)
    size: str | None = _col("size", LongText)
    page: int | None = _col("page", sa.Integer)
    language: str | None = _col("language", LongText)
    for_id: str | None = _col("forId", IdType)
    mime: str | None = _col("mime", LongText)
    props: dict[str, Any] | None = _col("props", JsonType)
    auto_play: bool | None = _col("autoPlay", sa.Boolean)
    player_config: dict[str, Any] | None = _col("playerConfig", JsonType)
    extra: dict[str, Any] | None = _col("extra", JsonType, internal=True)


class FeedbackFields(SQLModel):
    """Feedback on a step: one per step (unique ``forId``), value 0 or 1."""

    __entity__: ClassVar[str] = "feedback"
    __foreign_keys__: ClassVar[tuple[tuple[str, str], ...]] = (("threadId", "thread"),)
    __base_table__: ClassVar[str] = "feedbacks"
    __indexes__: ClassVar[tuple[IndexSpec, ...]] = (
        IndexSpec("for", ("forId",), unique=True),
        IndexSpec("thread", ("threadId", "value")),
    )
    # Chainlit's DynamoDB layer embeds feedback in the step item; ours keeps its own item in the
    # thread's partition so a thread's feedback is read with the thread.
    __dynamo__: ClassVar[DynamoEntityKeys] = DynamoEntityKeys(
        pk="THREAD#{threadId}", sk="FEEDBACK#{forId}",
        indexes=(DynamoIndexKeys("ById", "ByIdPK", "ByIdSK", "FEEDBACK#{id}", "FEEDBACK",
                                 LOOKUP_ROLE),),
    )

    id: str | None = _pk()
    for_id: str | None = _col("forId", IdType, nullable=False)
    thread_id: str | None = _col("threadId", IdType, nullable=False)
    value: int | None = _col("value", sa.Integer, nullable=False)
    comment: str | None = _col("comment", LongText)
