"""Reading items Chainlit's own DynamoDB layer wrote: feedback embedded in step items, and the
feedback-only step items it leaves for steps that were never created. No I/O."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

from chainlit_orm.errors import (
    InvalidInputError,
    MissingDependencyError,
)
from chainlit_orm.models.types import normalize_id
from chainlit_orm.schema_gen.dynamo import (
    PARTITION_KEY,
    SORT_KEY,
    parse_key,
)

try:

    from chainlit_orm.schema_gen.pynamo import (
        from_attribute_value,
    )
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("pynamodb", "dynamodb") from exc

logger = logging.getLogger(__name__)

#: Chainlit's layer embeds feedback in the step item under this attribute.
LEGACY_FEEDBACK = "feedback"
#: Namespace of the ids given to feedback Chainlit's layer wrote (its ids are not UUIDs).
LEGACY_FEEDBACK_NAMESPACE = uuid.UUID("5b0c1c52-7d0f-4c77-9b83-6f7c2a1d9e10")


STEP_KEYS_ONLY = {PARTITION_KEY, SORT_KEY, LEGACY_FEEDBACK, "ByIdPK", "ByIdSK"}


def is_phantom(item: Mapping[str, Any]) -> bool:
    """A step item with nothing but keys and feedback: what Chainlit's ``upsert_feedback`` leaves
    for a step that was never created. Not a step."""
    return set(item) <= STEP_KEYS_ONLY


def legacy_feedback(item: Mapping[str, Any]) -> dict[str, Any] | None:
    """Feedback Chainlit's layer embedded in a step item, with a UUID id derived from its own
    (``THREAD#{t}::STEP#{s}``, not a UUID, so Chainlit's UI could not send it back to us)."""
    raw = item.get(LEGACY_FEEDBACK)
    if not raw or "M" not in raw:
        return None
    data = from_attribute_value(raw)
    value = data.get("value")
    if value not in (0, 1):
        return None
    legacy_id = str(data.get("id") or "")
    try:
        feedback_id = normalize_id(legacy_id)
    except InvalidInputError:
        feedback_id = str(uuid.uuid5(LEGACY_FEEDBACK_NAMESPACE, legacy_id or str(item["SK"])))
    for_id = data.get("forId")
    if not for_id:
        parsed = parse_key("STEP#{id}", item[SORT_KEY]["S"])
        for_id = parsed["id"] if parsed else None
    return {"id": feedback_id, "forId": for_id, "value": int(value),
            "comment": data.get("comment")}


