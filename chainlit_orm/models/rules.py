"""Chainlit's rules, each written once and called from every place that applies it (the SQL and
DynamoDB backends, the semantics layer, the migrators, the transfer).

No I/O: pure functions of rows and values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "STEP_ORDER",
    "USER_MESSAGE",
    "element_object_key",
    "element_order",
    "feedback_dict",
    "is_favorite",
    "latest_activity",
    "step_order",
    "step_text_object_key",
]

#: The step type whose creation counts as thread activity (threads are listed by it).
USER_MESSAGE = "user_message"


def feedback_dict(feedback_id: Any, for_id: Any, value: Any, comment: Any) -> dict[str, Any]:
    """The ``feedback`` of a Chainlit step dict: exactly these four keys, as Chainlit's UI reads
    them (contract §3)."""
    return {"id": feedback_id, "forId": for_id, "value": value, "comment": comment}


def is_favorite(metadata: object) -> bool:
    """Whether a step is a favorite: Chainlit keeps the flag in the step's ``metadata`` only
    (``metadata["favorite"] is True``); the stored ``favorite`` column/attribute is derived from
    it so favorites can be found by an index."""
    return isinstance(metadata, Mapping) and metadata.get("favorite") is True


def latest_activity(created_at: str | None,
                    user_message_times: Iterable[str | None]) -> str | None:
    """A thread's activity when its store does not record one: the creation of its latest user
    message (:data:`USER_MESSAGE`), else the thread's own creation (None if neither is known).
    Every value is a canonical timestamp, so text order is time order."""
    latest = max((t for t in user_message_times if t), default=None)
    return latest or created_at


#: The columns a thread's steps are ordered by, ascending: creation, then id. Chainlit renders
#: ``get_thread``'s steps in the order given and nests children under the parent it has already
#: seen, so creation order is the conversation; the id breaks ties between steps created in the
#: same microsecond so every backend gives the same order. A SQL backend sorts by these columns
#: in its statement, another store with :func:`step_order`; ``get_favorite_steps`` lists the
#: newest first (the same key, descending).
STEP_ORDER = ("createdAt", "id")


def step_order(row: Mapping[str, Any]) -> tuple[str, str]:
    """The sort key of a step row under :data:`STEP_ORDER` (a missing ``createdAt`` sorts
    first, as SQL's ``NULL`` does on SQLite and MySQL)."""
    return row.get("createdAt") or "", str(row["id"])


def element_order(row: Mapping[str, Any]) -> str:
    """The sort key of an element row in ``get_thread``: its id. Chainlit attaches each element
    to its step by ``forId`` and does not depend on the order, but a stable one keeps every
    backend's answer equal (and a store's answer equal from one read to the next)."""
    return str(row["id"])


def element_object_key(thread_id: str, element_id: str) -> str:
    """Where an element's file is stored: one prefix per thread, so deleting a thread's objects
    is deleting one prefix's."""
    return f"threads/{thread_id}/files/{element_id}"


def step_text_object_key(thread_id: str, step_id: str, field: str, initial: bool) -> str:
    """Where an offloaded step text (``input``/``output``) is stored. ``initial`` marks the copy
    written when the step is created, so a concurrent update's copy never overwrites it."""
    return f"threads/{thread_id}/steps/{step_id}/{field}{'.initial' if initial else ''}"
