"""Transferred rows: what a thread is made of, and its canonical form.

A *record* is a row keyed by column name (which is also Chainlit's key) holding every column but
the ones a write derives from ``metadata`` (``steps.favorite``, custom ``metadata_column``
fields): those are recomputed by the destination exactly as the layer computes them, so they are
neither copied nor compared. ``threads.activityAt`` and the overflow ``extra`` are facts of the
row and travel with it.

The *canonical* form of a record is what the bundle stores and what digests are computed over;
it is the same whichever backend the record was read from:

* JSON with sorted keys, no whitespace, UTF-8 (``ensure_ascii=False``);
* numbers: an integral float is written as an integer (DynamoDB stores numbers as decimals and
  gives ``1`` back for ``1.0``; the value is the same), other floats in Python's shortest repr;
* ids as lower-case dashed UUIDs and timestamps as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (the types of
  :mod:`chainlit_orm.models.types` read them so on every backend);
* an element with a stored file carries ``"$file": {"sha256": ..., "size": ...}`` (or
  ``{"missing": true}`` when its object is absent) instead of anything about where the file is
  served from; an element without one carries ``"$file": null``;
* a thread's rows in a fixed order: steps, elements and feedback each sorted by id.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from chainlit_orm.errors import InvalidInputError
from chainlit_orm.models.modelset import ModelSet
from chainlit_orm.models.types import IdType, Timestamp, canonical_timestamp, normalize_id
from chainlit_orm.transfer._layer import (
    USER_MESSAGE,
    check_record,
    portable_columns,
    thread_activity,
)

__all__ = [
    "CHILD_ENTITIES",
    "ENTITY_NAMES",
    "FILE_KEY",
    "ThreadData",
    "canonical_json",
    "canonical_value",
    "record",
    "thread_digest",
]

#: The key of an element record holding its file's hash (not a column; see the module docstring).
FILE_KEY = "$file"

#: Entity -> plural name, used for bundle files, summaries and progress bars (parents first).
ENTITY_NAMES: dict[str, str] = {
    "user": "users", "thread": "threads", "step": "steps", "element": "elements",
    "feedback": "feedbacks",
}

#: The entities a thread contains, in the order they are written and hashed.
CHILD_ENTITIES: tuple[str, ...] = ("step", "element", "feedback")


@dataclass
class ThreadData:
    """One thread and every row in it, as records (see the module docstring)."""

    thread: dict[str, Any]
    steps: list[dict[str, Any]] = field(default_factory=list)
    elements: list[dict[str, Any]] = field(default_factory=list)
    feedbacks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return str(self.thread["id"])

    def children(self, entity: str) -> list[dict[str, Any]]:
        return {"step": self.steps, "element": self.elements, "feedback": self.feedbacks}[entity]

    def counts(self) -> dict[str, int]:
        return {"threads": 1, "steps": len(self.steps), "elements": len(self.elements),
                "feedbacks": len(self.feedbacks)}


def canonical_value(value: Any) -> Any:
    """``value`` with integral floats as ints, recursively (tuples become lists).

    Raises:
        InvalidInputError: a float that JSON cannot hold (NaN, infinity).
    """
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInputError(f"not a JSON number: {value!r}")
        return int(value) if value.is_integer() else value
    if isinstance(value, dict):
        return {str(k): canonical_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [canonical_value(v) for v in value]
    return value


def canonical_json(data: Mapping[str, Any]) -> str:
    """One line of canonical JSON (see the module docstring)."""
    return json.dumps(canonical_value(dict(data)), sort_keys=True, ensure_ascii=False,
                      separators=(",", ":"), allow_nan=False)


def record(models: ModelSet, entity: str, row: Mapping[str, Any], *,
           validate: bool = False) -> dict[str, Any]:
    """The record of a row: its portable columns (absent ones as None), nothing else.

    With ``validate`` (rows from a bundle or another schema: input from outside chainlit-orm's
    layers), ids and timestamps are brought to their canonical form, and the record must pass
    every check a layer write passes (:func:`~chainlit_orm.transfer._layer.check_record`: the
    shared limits of :mod:`chainlit_orm.models.limits`), so what a transfer writes is what
    every backend can hold and read back exactly.

    Raises:
        InvalidInputError: (with ``validate``) a value no backend can hold;
            ``PayloadTooLargeError`` for a record or document that is too large. The caller
            decides: a bundle is refused, a row of the official schema is left out and counted.
    """
    out = {name: row.get(name) for name in portable_columns(models, entity)}
    if validate:
        table = models.table(entity)
        for name, value in out.items():
            if value is None:
                continue
            kind = table.c[name].type
            if isinstance(kind, IdType):
                out[name] = normalize_id(value, what=f"{entity}.{name}")
            elif isinstance(kind, Timestamp):
                out[name] = canonical_timestamp(value)
        check_record(models, entity, out)
    if entity == "element" and FILE_KEY in row:
        out[FILE_KEY] = row[FILE_KEY]
    return out


def finish_thread(models: ModelSet, data: ThreadData) -> ThreadData:
    """Records sorted in canonical order, and an activity for a thread whose store recorded none
    (the layer's rule; see :func:`~chainlit_orm.transfer._layer.thread_activity`)."""
    data.steps.sort(key=lambda r: str(r["id"]))
    data.elements.sort(key=lambda r: str(r["id"]))
    data.feedbacks.sort(key=lambda r: str(r["id"]))
    if data.thread.get("activityAt") is None and "activityAt" in data.thread:
        data.thread["activityAt"] = thread_activity(
            data.thread.get("createdAt"),
            (s.get("createdAt") for s in data.steps if s.get("type") == USER_MESSAGE))
    _ = models
    return data


def thread_digest(data: ThreadData, *, files: bool) -> str:
    """SHA-256 of a thread's canonical lines (thread, steps, elements, feedback, in order).

    With ``files`` the elements' file hashes are part of it; without, they are left out (a copy
    made with ``--no-files`` is compared on rows only).
    """
    digest = hashlib.sha256()
    for entity, rows in (("thread", [data.thread]), ("step", data.steps),
                         ("element", data.elements), ("feedback", data.feedbacks)):
        for row in rows:
            line = row if files or FILE_KEY not in row else {
                k: v for k, v in row.items() if k != FILE_KEY}
            digest.update(f"{entity}\t{canonical_json(line)}\n".encode())
    return digest.hexdigest()


def sort_users(users: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(users, key=lambda u: str(u["id"]))
