"""``ChainlitLayer``: Chainlit's data-layer semantics, written once over a small backend protocol.

Chainlit calls a data layer from HTTP handlers, from the socket code and from fire-and-forget tasks
(contract §1). Everything that is about *Chainlit* lives here: validation, dict <-> row conversion,
metadata-merge rules, cursors, the element upload/sign/delete flow, favorites, the queue before the
first user message. A backend (:class:`Backend`) only stores and fetches rows; it never sees a
Chainlit object.

Policies stated once:

* Writes are idempotent upserts that tolerate any order (Chainlit fires them unawaited).
* Nothing is swallowed. The only places that catch and continue are :meth:`ChainlitLayer.close`
  and the per-element URL signing in :meth:`ChainlitLayer.get_thread` (one broken signature must
  not hide a whole conversation; the element comes back without a URL and a warning names it).
* ``update_thread`` with *only* ``metadata`` never creates a thread. Chainlit's disconnect handler
  sends exactly that for the thread the browser had open, so a thread deleted in that session is
  not brought back as an ownerless orphan (Chainlit issue #1684).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import logging
import mimetypes
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, Protocol, TypeVar, cast

from chainlit.data.base import BaseDataLayer
from chainlit.data.storage_clients.base import BaseStorageClient
from chainlit.types import Feedback, PageInfo, PaginatedResponse, Pagination, ThreadFilter
from chainlit.user import PersistedUser, User

from chainlit_orm.errors import (
    InvalidCursorError,
    InvalidIdentifierError,
    InvalidInputError,
    PayloadTooLargeError,
    StorageError,
)
from chainlit_orm.models.convert import take_row, to_row
from chainlit_orm.models.modelset import ModelSet
from chainlit_orm.models.search import search_term
from chainlit_orm.models.types import (
    canonical_timestamp,
    format_timestamp,
    normalize_id,
    parse_timestamp,
    utc_now,
)

if TYPE_CHECKING:
    from chainlit.element import Element, ElementDict
    from chainlit.step import StepDict
    from chainlit.types import ThreadDict

__all__ = ["Backend", "ChainlitLayer", "ThreadPage", "queue_until_user_message"]

logger = logging.getLogger("chainlit_orm")

P = ParamSpec("P")
R = TypeVar("R")

ThreadOrder = Literal["activity", "created"]

#: The step type whose creation counts as thread activity.
USER_MESSAGE = "user_message"

DEFAULT_MAX_TEXT_BYTES = 8 * 1024 * 1024


def queue_until_user_message(
    method: Callable[..., Awaitable[R]],
) -> Callable[..., Awaitable[R | None]]:
    """Chainlit's queue-before-first-interaction, without needing a Chainlit context.

    In a ``WebsocketSession`` before its first interaction the call is queued exactly as Chainlit's
    own decorator does (``session.thread_queues[method_name]``, the *unwrapped* method), so
    Chainlit's ``flush_method_queue`` replays it. With no Chainlit context at all (scripts, tests,
    admin tools) Chainlit's decorator raises; this one runs the call at once.
    """

    from chainlit.context import ChainlitContextException, context
    from chainlit.session import WebsocketSession

    @functools.wraps(method)
    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> R | None:
        try:
            session = context.session
        except ChainlitContextException:
            session = None
        if isinstance(session, WebsocketSession) and not session.has_first_interaction:
            queue = session.thread_queues.setdefault(method.__name__, deque())
            queue.append((method, self, args, kwargs))
            return None
        return await method(self, *args, **kwargs)

    return wrapper


@dataclass(frozen=True)
class ThreadPage:
    """What a backend returns for one ``list_threads`` page: up to ``first + 1`` summary rows."""

    rows: list[dict[str, Any]]


class Backend(Protocol):
    """What a storage backend implements. Rows are dicts keyed by SQL column / Chainlit key.

    A row a backend returns is handed over: the layer turns it into the Chainlit dict in place
    (:func:`~chainlit_orm.models.convert.take_row`), so a backend must return fresh dicts, never
    ones it keeps (a cache, say).

    Every method raises typed errors from :mod:`chainlit_orm.errors`; none returns a sentinel for
    a failure.
    """

    models: ModelSet

    async def get_user(self, identifier: str) -> dict[str, Any] | None: ...

    async def upsert_user(self, row: dict[str, Any]) -> dict[str, Any]: ...

    async def update_thread(
        self,
        thread_id: str,
        fields: dict[str, Any],
        meta_set: dict[str, Any] | None,
        meta_delete: list[str] | None,
        create: bool,
        now: str,
    ) -> None: ...

    async def get_thread_author(self, thread_id: str) -> str | None: ...

    async def get_thread(
        self, thread_id: str
    ) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]] | None: ...

    async def list_threads(
        self,
        *,
        user_id: str | None,
        limit: int,
        after: tuple[str, str] | None,
        search: str | None,
        feedback: int | None,
        order: ThreadOrder,
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` summary rows. ``search`` is the term already case-folded by
        :func:`~chainlit_orm.models.search.search_term`; a row matches when it is a substring of
        the folded name (or message text), compared binary, every character literal."""
        ...

    async def delete_thread(self, thread_id: str) -> list[str]: ...

    async def upsert_step(self, row: dict[str, Any], *, create: bool, activity: str | None,
                          now: str) -> None: ...

    async def delete_step(self, step_id: str) -> list[str]: ...

    async def get_step(self, step_id: str) -> dict[str, Any] | None: ...

    async def upsert_element(self, row: dict[str, Any], now: str) -> None: ...

    async def get_element(self, thread_id: str, element_id: str) -> dict[str, Any] | None: ...

    async def delete_element(self, element_id: str, thread_id: str | None) -> str | None: ...

    async def upsert_feedback(self, row: dict[str, Any]) -> str: ...

    async def delete_feedback(self, feedback_id: str) -> bool: ...

    async def get_favorite_steps(self, user_id: str) -> list[dict[str, Any]]: ...

    async def close(self) -> None: ...


class ChainlitLayer(BaseDataLayer):
    """A Chainlit ``BaseDataLayer`` over any :class:`Backend`.

    Args:
        backend: stores rows (SQL or DynamoDB).
        storage: any Chainlit ``BaseStorageClient`` (ours or Chainlit's) for element bytes; None
            keeps element records without bytes and warns once.
        thread_order: ``"activity"`` (default) lists threads by their latest user message and
            reports that time as each listed thread's ``createdAt`` (Chainlit's UI re-sorts and
            groups the sidebar by it, so the two must agree); ``"created"`` lists by creation.
        max_text_bytes: refuse a step whose input or output is larger (typed error, no write).
    """

    def __init__(
        self,
        backend: Backend,
        *,
        storage: BaseStorageClient | None = None,
        thread_order: ThreadOrder = "activity",
        max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES,
    ) -> None:
        if thread_order not in ("activity", "created"):
            raise InvalidInputError(
                f"thread_order must be 'activity' or 'created': {thread_order!r}"
            )
        self.backend = backend
        self.models = backend.models
        self.storage = storage
        self.thread_order: ThreadOrder = thread_order
        self.max_text_bytes = max_text_bytes
        self._warned_no_storage = False

    # ------------------------------------------------------------------ users

    async def get_user(self, identifier: str) -> PersistedUser | None:
        row = await self.backend.get_user(_require_str(identifier, "identifier"))
        return None if row is None else _persisted_user(row)

    async def create_user(self, user: User) -> PersistedUser | None:
        identifier = _require_str(user.identifier, "identifier")
        metadata = _require_dict(user.metadata or {}, "metadata")
        row = {
            "id": str(uuid.uuid4()),
            "identifier": identifier,
            "display_name": user.display_name,
            "metadata": metadata,
            "createdAt": utc_now(),
        }
        _check_no_nul(row, "user")
        return _persisted_user(await self.backend.upsert_user(row))

    # ---------------------------------------------------------------- threads

    async def update_thread(
        self,
        thread_id: str,
        name: str | None = None,
        user_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        tags: list[str] | None = None,
    ) -> None:
        thread_id = normalize_id(thread_id, what="thread_id")
        fields: dict[str, Any] = {}
        if name is not None:
            fields["name"] = _require_str(name, "name", allow_empty=True)
        if user_id is not None:
            fields["userId"] = self._user_id(user_id, "user_id")
        if tags is not None:
            if not isinstance(tags, list | tuple) or not all(isinstance(t, str) for t in tags):
                raise InvalidInputError(f"tags must be a list of strings, got {tags!r}")
            fields["tags"] = list(tags)
        meta_set: dict[str, Any] | None = None
        meta_delete: list[str] | None = None
        if metadata is not None:
            metadata = _require_dict(metadata, "metadata")
            meta_set = {k: v for k, v in metadata.items() if v is not None}
            meta_delete = [k for k, v in metadata.items() if v is None]
            for column, key in self.models.metadata_columns("thread").items():
                if key in metadata:
                    value = metadata[key]
                    fields[column] = None if value is None else str(value)
        _check_no_nul(fields, "thread")
        _check_no_nul(meta_set, "thread metadata")
        self._check_size(json.dumps(meta_set, default=str) if meta_set else "", "metadata")
        create = name is not None or user_id is not None or tags is not None
        if not create and metadata is None and not fields:
            return  # nothing to change
        await self.backend.update_thread(
            thread_id, fields, meta_set, meta_delete, create=create, now=utc_now()
        )

    async def get_thread_author(self, thread_id: str) -> str:
        try:
            thread_id = normalize_id(thread_id, what="thread_id")
        except InvalidIdentifierError:
            return ""  # a malformed id names no thread: 404, not 500
        return await self.backend.get_thread_author(thread_id) or ""

    async def get_thread(self, thread_id: str) -> ThreadDict | None:
        try:
            thread_id = normalize_id(thread_id, what="thread_id")
        except InvalidIdentifierError:
            return None
        found = await self.backend.get_thread(thread_id)
        if found is None:
            return None
        thread_row, step_rows, element_rows = found
        thread = self._thread_dict(thread_row, listed=False)
        thread["steps"] = [self._step_dict(row) for row in step_rows]
        elements = [take_row(self.models, "element", row) for row in element_rows]
        await self._sign_elements(elements)
        thread["elements"] = elements
        return cast("ThreadDict", thread)

    async def list_threads(
        self, pagination: Pagination, filters: ThreadFilter
    ) -> PaginatedResponse[ThreadDict]:
        first = pagination.first
        if not isinstance(first, int) or isinstance(first, bool) or not 1 <= first <= 1000:
            raise InvalidInputError(f"pagination.first must be an int in 1..1000, got {first!r}")
        after = _decode_cursor(pagination.cursor) if pagination.cursor else None
        user_id = self._user_id(filters.userId, "userId") if filters.userId else None
        feedback = filters.feedback
        if feedback is not None and feedback not in (0, 1):
            raise InvalidInputError(f"feedback filter must be 0, 1 or None, got {feedback!r}")
        search = filters.search.strip() if filters.search else None
        folded = search_term(search) if search else None
        if search and folded is None:  # a term no stored text can contain (a NUL)
            return PaginatedResponse(
                pageInfo=PageInfo(hasNextPage=False, startCursor=None, endCursor=None), data=[])
        rows = await self.backend.list_threads(
            user_id=user_id,
            limit=first + 1,
            after=after,
            search=folded,
            feedback=feedback,
            order=self.thread_order,
        )
        has_next = len(rows) > first
        rows = rows[:first]
        # the cursors first: the rows become the dicts below, without their sort column
        start_cursor = _encode_cursor(self._sort_key(rows[0])) if rows else None
        end_cursor = _encode_cursor(self._sort_key(rows[-1])) if rows else None
        data = [cast("ThreadDict", self._thread_dict(row, listed=True)) for row in rows]
        return PaginatedResponse(
            pageInfo=PageInfo(hasNextPage=has_next, startCursor=start_cursor,
                              endCursor=end_cursor),
            data=data,
        )

    async def delete_thread(self, thread_id: str) -> None:
        thread_id = normalize_id(thread_id, what="thread_id")
        object_keys = await self.backend.delete_thread(thread_id)
        await self._delete_files(object_keys)

    # ------------------------------------------------------------------ steps

    @queue_until_user_message
    async def create_step(self, step_dict: StepDict) -> None:
        row, activity = self._step_row(step_dict, create=True)
        await self.backend.upsert_step(row, create=True, activity=activity, now=utc_now())

    @queue_until_user_message
    async def update_step(self, step_dict: StepDict) -> None:
        row, activity = self._step_row(step_dict)
        await self.backend.upsert_step(row, create=False, activity=activity, now=utc_now())

    @queue_until_user_message
    async def delete_step(self, step_id: str) -> None:
        object_keys = await self.backend.delete_step(normalize_id(step_id, what="step_id"))
        await self._delete_files(object_keys)

    async def get_step(self, step_id: str) -> StepDict | None:
        """The step with its feedback (not part of ``BaseDataLayer``; Chainlit's SQL layers have
        it and ``on_feedback`` handlers use it)."""
        try:
            step_id = normalize_id(step_id, what="step_id")
        except InvalidIdentifierError:
            return None
        row = await self.backend.get_step(step_id)
        return None if row is None else cast("StepDict", self._step_dict(row))

    async def get_favorite_steps(self, user_id: str) -> list[StepDict]:
        rows = await self.backend.get_favorite_steps(self._user_id(user_id, "user_id"))
        return [cast("StepDict", self._step_dict(row)) for row in rows]

    # --------------------------------------------------------------- elements

    @queue_until_user_message
    async def create_element(self, element: Element) -> None:
        data = dict(element.to_dict())
        data["id"] = normalize_id(data.get("id"), what="element id")
        if not data.get("threadId"):
            raise InvalidInputError(f"element {data['id']} has no threadId")
        data["threadId"] = normalize_id(data["threadId"], what="element threadId")
        if data.get("forId"):
            data["forId"] = normalize_id(data["forId"], what="element forId")
        data.pop("path", None)  # a session temp file: meaningless once the session ends
        content = await _element_bytes(element)
        if content is not None and not data.get("url"):
            if self.storage is None:
                if not self._warned_no_storage:
                    self._warned_no_storage = True
                    logger.warning(
                        "element %s has bytes but no storage is configured: its record is kept "
                        "without its file. Set CHAINLIT_ORM_STORAGE_URL (or pass storage=).",
                        data["id"],
                    )
            else:
                object_key = f"threads/{data['threadId']}/files/{data['id']}"
                mime = str(
                    data.get("mime") or _guess_mime(data.get("name")) or "application/octet-stream"
                )
                await self.storage.upload_file(
                    object_key,
                    content,
                    mime=mime,
                    overwrite=True,
                    content_disposition=_content_disposition(str(data.get("name") or data["id"])),
                )
                data["objectKey"] = object_key
                data["mime"] = mime
                data["url"] = None  # signed afresh on every read
        row = to_row(self.models, "element", data)
        _check_no_nul(row, "element")
        await self.backend.upsert_element(row, now=utc_now())

    async def get_element(self, thread_id: str, element_id: str) -> ElementDict | None:
        try:
            thread_id = normalize_id(thread_id, what="thread_id")
            element_id = normalize_id(element_id, what="element_id")
        except InvalidIdentifierError:
            return None
        row = await self.backend.get_element(thread_id, element_id)
        if row is None:
            return None
        element = take_row(self.models, "element", row)
        await self._sign_elements([element])
        return cast("ElementDict", element)

    @queue_until_user_message
    async def delete_element(self, element_id: str, thread_id: str | None = None) -> None:
        element_id = normalize_id(element_id, what="element_id")
        scoped = normalize_id(thread_id, what="thread_id") if thread_id else None
        object_key = await self.backend.delete_element(element_id, scoped)
        await self._delete_files([object_key] if object_key else [])

    # --------------------------------------------------------------- feedback

    async def upsert_feedback(self, feedback: Feedback) -> str:
        value = feedback.value
        if value not in (0, 1) or isinstance(value, bool):
            raise InvalidInputError(f"feedback value must be 0 or 1, got {value!r}")
        comment = feedback.comment
        if comment is not None and not isinstance(comment, str):
            raise InvalidInputError("feedback comment must be a string")
        row = {
            "id": (
                normalize_id(feedback.id, what="feedback id") if feedback.id else str(uuid.uuid4())
            ),
            "forId": normalize_id(feedback.forId, what="feedback forId"),
            "threadId": normalize_id(feedback.threadId, what="feedback threadId")
            if feedback.threadId
            else None,
            "value": int(value),
            "comment": comment,
        }
        _check_no_nul(row, "feedback")
        return await self.backend.upsert_feedback(row)

    async def delete_feedback(self, feedback_id: str) -> bool:
        try:
            feedback_id = normalize_id(feedback_id, what="feedback_id")
        except InvalidIdentifierError:
            return False
        return await self.backend.delete_feedback(feedback_id)

    # ------------------------------------------------------------------- misc

    async def build_debug_url(self) -> str:
        return ""

    async def close(self) -> None:
        """Release the backend and the storage client. Never raises (Chainlit's shutdown path
        only catches ``CancelledError``); what it catches is logged at debug level."""
        for closer in (self.backend.close, getattr(self.storage, "close", None)):
            if closer is None:
                continue
            try:
                await closer()
            except Exception as exc:
                logger.debug("error while closing %r: %r", closer, exc)

    # ---------------------------------------------------------------- helpers

    def _user_id(self, value: object, what: str) -> str:
        """A user id as the backend stores it: a UUID, unless the backend says otherwise with a
        ``normalize_user_id(value, what)`` method (DynamoDB tables written by Chainlit's own layer
        use the identifier as the user id)."""
        hook = getattr(self.backend, "normalize_user_id", None)
        if hook is not None:
            return cast(str, hook(value, what))
        return normalize_id(value, what=what)

    def _step_row(
        self, step_dict: Mapping[str, Any], *, create: bool = False
    ) -> tuple[dict[str, Any], str | None]:
        if not isinstance(step_dict, Mapping):
            raise InvalidInputError("step_dict must be a dict")
        data = dict(step_dict)
        data.pop("feedback", None)
        data["id"] = normalize_id(data.get("id"), what="step id")
        if not data.get("threadId"):
            raise InvalidInputError(f"step {data['id']} has no threadId")
        data["threadId"] = normalize_id(data["threadId"], what="step threadId")
        if data.get("parentId"):
            data["parentId"] = normalize_id(data["parentId"], what="step parentId")
        if "metadata" in data and data["metadata"] is not None:
            data["metadata"] = _require_dict(data["metadata"], "step metadata")
        for key in ("input", "output"):
            value = data.get(key)
            if isinstance(value, str):
                self._check_size(value, f"step {key}")
            elif value is not None:
                raise InvalidInputError(f"step {key} must be a string")
        if create and not data.get("createdAt"):
            data["createdAt"] = utc_now()  # creation order is the thread's step order
        for key in ("createdAt", "start", "end"):
            if data.get(key):
                data[key] = canonical_timestamp(data[key])
        row = to_row(self.models, "step", data)
        _check_no_nul(row, "step")
        activity = None
        if create and data.get("type") == USER_MESSAGE:  # its creation is the activity
            activity = data.get("createdAt") or utc_now()
        return row, activity

    def _check_size(self, text: str, what: str) -> None:
        # len() is a cheap lower bound of the UTF-8 size; encode only near the limit.
        if len(text) * 4 > self.max_text_bytes and len(text.encode()) > self.max_text_bytes:
            raise PayloadTooLargeError(
                f"{what} is larger than max_text_bytes={self.max_text_bytes}", detail=what
            )

    def _step_dict(self, row: dict[str, Any]) -> dict[str, Any]:
        """A backend's step row (given up: it becomes the dict) in Chainlit's shape."""
        step = take_row(self.models, "step", row)
        if step.get("metadata") is None:
            step["metadata"] = {}
        for key in ("input", "output"):  # StepDict types them ``str``; Message.from_dict reads them
            if step.get(key) is None:
                step[key] = ""
        if "feedback" in step and not step["feedback"]:
            del step["feedback"]
        return step

    def _thread_dict(self, row: dict[str, Any], *, listed: bool) -> dict[str, Any]:
        """A backend's thread row (given up: it becomes the dict) in Chainlit's shape."""
        activity = row.get("activityAt") if listed and self.thread_order == "activity" else None
        thread = take_row(self.models, "thread", row)
        if thread.get("metadata") is None:
            thread["metadata"] = {}
        if activity:
            thread["createdAt"] = activity
        thread.setdefault("steps", [])
        return thread

    def _sort_key(self, row: Mapping[str, Any]) -> tuple[str, str]:
        column = "activityAt" if self.thread_order == "activity" else "createdAt"
        return (row.get(column) or "", str(row["id"]))

    async def _sign_elements(self, elements: Sequence[dict[str, Any]]) -> None:
        signed = [e for e in elements if e.get("objectKey")]
        if not signed or self.storage is None:
            return
        storage = self.storage
        results = await asyncio.gather(
            *(storage.get_read_url(e["objectKey"]) for e in signed), return_exceptions=True
        )
        for element, result in zip(signed, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result
                element["url"] = None
                logger.warning(
                    "could not sign a read URL for element %s: %r", element["id"], result
                )
            else:
                element["url"] = result

    async def _delete_files(self, object_keys: Sequence[str]) -> None:
        """Delete stored files after the rows are committed; a failure raises, never hides."""
        keys = [k for k in object_keys if k]
        if not keys or self.storage is None:
            return
        storage = self.storage
        results = await asyncio.gather(
            *(storage.delete_file(k) for k in keys), return_exceptions=True
        )
        failures = [(k, r) for k, r in zip(keys, results, strict=True) if isinstance(r, Exception)]
        if failures:
            key, first = failures[0]
            raise StorageError(
                f"rows deleted, but {len(failures)} stored file(s) could not be deleted "
                f"(first: {key})",
                detail=[k for k, _ in failures],
            ) from first


# -------------------------------------------------------------------- helpers


def _persisted_user(row: Mapping[str, Any]) -> PersistedUser:
    metadata = row.get("metadata")
    return PersistedUser(
        id=str(row["id"]),
        identifier=row["identifier"],
        display_name=row.get("display_name"),
        metadata=metadata if isinstance(metadata, dict) else {},
        createdAt=row.get("createdAt") or utc_now(),
    )


def _require_str(value: object, what: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not allow_empty):
        raise InvalidInputError(f"{what} must be a non-empty string, got {value!r}")
    return value


def _require_dict(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInputError(f"{what} must be a dict, got {type(value).__name__}")
    return value


def _check_no_nul(value: object, what: str) -> None:
    """Refuse NUL characters: PostgreSQL cannot store them in TEXT or JSONB, and storing them
    on the other dialects only would make the backends disagree."""
    if _has_nul(value):
        raise InvalidInputError(f"{what} contains a NUL character, which cannot be stored")


_SCALARS = (type(None), bool, int, float)


def _has_nul(value: object) -> bool:
    # exact-type checks first and plain loops (no generator per container): this runs on every
    # value of every write, and an ABC check (``Mapping``) on each None/int/bool costs more than
    # the rest of the walk
    kind = type(value)
    if kind is str:
        return "\x00" in value  # type: ignore[operator]
    if kind in _SCALARS:
        return False
    if kind is dict or isinstance(value, Mapping):
        for key, item in value.items():  # type: ignore[attr-defined]
            if type(key) is str:
                if "\x00" in key:
                    return True
            elif _has_nul(key):
                return True
            item_kind = type(item)
            if item_kind is str:
                if "\x00" in item:
                    return True
            elif item_kind not in _SCALARS and _has_nul(item):
                return True
        return False
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, list | tuple):
        for item in value:
            if _has_nul(item):
                return True
    return False


def _encode_cursor(key: tuple[str, str]) -> str:
    raw = json.dumps([key[0], key[1]], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


#: Longer than any cursor :func:`_encode_cursor` makes (about 120 characters): a longer one is
#: refused before it is decoded (100,000 nested brackets would exhaust the JSON parser's stack).
_MAX_CURSOR = 512


def _decode_cursor(cursor: object) -> tuple[str, str]:
    """Decode and validate an opaque cursor; anything forged or stale is a typed error."""
    try:
        text = str(cursor)
        if len(text) > _MAX_CURSOR:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        moment, thread_id = json.loads(raw)
        if not isinstance(moment, str) or not isinstance(thread_id, str):
            raise ValueError(moment)
        return format_timestamp(parse_timestamp(moment)), normalize_id(thread_id)
    except (ValueError, TypeError, OverflowError, binascii.Error, UnicodeDecodeError,
            InvalidInputError) as exc:  # OverflowError: a date at the edge of the calendar
        raise InvalidCursorError(f"invalid pagination cursor: {str(cursor)[:80]!r}") from exc


async def _element_bytes(element: Element) -> bytes | None:
    content = getattr(element, "content", None)
    if content is not None:
        return content.encode() if isinstance(content, str) else bytes(content)
    path = getattr(element, "path", None)
    if path and not getattr(element, "url", None):
        from pathlib import Path

        try:
            return await asyncio.to_thread(Path(path).read_bytes)
        except OSError as exc:
            raise StorageError(f"cannot read element file {path!r}") from exc
    return None


def _guess_mime(name: object) -> str | None:
    return mimetypes.guess_type(name)[0] if isinstance(name, str) else None


def _content_disposition(name: str) -> str:
    """``inline`` with an RFC 6266 / RFC 5987 file name (control characters dropped, since a
    file name Chainlit received must not fail the upload)."""
    from chainlit_orm.storage import build_content_disposition

    cleaned = "".join(ch for ch in name if ch >= " " and ch != "\x7f") or "file"
    return build_content_disposition(cleaned, "inline")
