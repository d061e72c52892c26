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
* ``update_thread`` with *only* ``metadata`` creates an ownerless stub thread when none exists,
  like a late ``create_step`` does: Chainlit's first message sends ``create_step``,
  ``update_thread(name, user_id)`` and (``persist_user_session``) ``update_thread(metadata)``
  without ordering them, and the metadata must be kept in every order. The exception is a thread
  this layer deleted (a bounded, process-local list of the last 10,000): Chainlit's disconnect
  handler sends a metadata-only update for the thread the browser had open, and a thread deleted
  in that session must not come back as an ownerless orphan holding its session data (Chainlit
  issue #1684). Not covered: a thread deleted through *another* process (another worker) and
  then sent the disconnect's metadata by this one comes back as an ownerless stub; nobody can
  read it (no owner, not listed), and ``delete_thread`` of its id removes it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import json
import logging
import mimetypes
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, Protocol, TypeVar, cast

from chainlit.data.base import BaseDataLayer
from chainlit.data.storage_clients.base import BaseStorageClient
from chainlit.types import Feedback, PageInfo, PaginatedResponse, Pagination, ThreadFilter
from chainlit.user import PersistedUser, User

from chainlit_orm.errors import (
    BackendUnavailableError,
    ChainlitORMError,
    CheckFailedError,
    ConfigurationError,
    ConflictError,
    InvalidCursorError,
    InvalidIdentifierError,
    InvalidInputError,
    NotFoundError,
    StorageError,
    StorageTimeoutError,
    mask_url,
)
from chainlit_orm.layers.deadline import (
    DEFAULT_TIMEOUT,
    BoundedBackend,
    CallDeadline,
    call_budget,
    call_end,
    check_timeout,
)
from chainlit_orm.lifecycle.hooks import (
    DEFAULT_HOOK_BREAKER,
    DEFAULT_HOOK_TIMEOUT,
    OnDelete,
    check_hook,
    check_hook_breaker,
    finish_removal,
)
from chainlit_orm.lifecycle.records import LifecycleBackend, Removed
from chainlit_orm.models.convert import metadata_text, take_row, to_row
from chainlit_orm.models.limits import (
    MAX_CURSOR_CHARS,
    MAX_INDEXED_CHARS,
    MAX_USER_ID_CHARS,
    check_json,
    check_row,
    check_text,
)
from chainlit_orm.models.modelset import ModelSet
from chainlit_orm.models.rules import USER_MESSAGE, element_object_key
from chainlit_orm.models.search import search_term
from chainlit_orm.models.types import (
    format_timestamp,
    normalize_id,
    parse_timestamp,
    utc_now,
)

if TYPE_CHECKING:
    from datetime import datetime

    from chainlit.element import Element, ElementDict
    from chainlit.step import StepDict
    from chainlit.types import ThreadDict

    from chainlit_orm.lifecycle.erase import ErasureReport
    from chainlit_orm.lifecycle.purge import PurgeReport

__all__ = ["CHECK_PREFIX", "Backend", "ChainlitLayer", "ThreadPage", "queue_until_user_message"]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Coroutine[Any, Any, Any]])

ThreadOrder = Literal["activity", "created"]


DEFAULT_MAX_TEXT_BYTES = 8 * 1024 * 1024

#: Where :meth:`ChainlitLayer.check` writes its probe object (then deletes it): a prefix no
#: element or step text uses (they live under ``threads/``), so a probe left by a crash is
#: recognisable and never read as data.
CHECK_PREFIX = ".chainlit-orm-check"
#: The probe object's bytes.
CHECK_PROBE = b"chainlit-orm startup check\n"


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

    wrapper.queued_until_user_message = True  # type: ignore[attr-defined]  # see tracing
    return wrapper


def whole_call(method: F) -> F:
    """Bound a layer method that also calls the storage client: its backend *and* storage calls
    share one deadline, ``timeout`` seconds from its start (see ``layers.deadline.call_budget``).

    Why: each backend call is bounded on its own, but an upload, a row write and a clean-up each
    with a full ``timeout`` add up, and a storage client (Chainlit's) has no deadline at all.
    A call nested in another bounded call keeps the outer deadline.
    """

    @functools.wraps(method)
    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if call_end() is not None:
            return await method(self, *args, **kwargs)
        with call_budget(asyncio.get_running_loop().time() + self.timeout):
            return await method(self, *args, **kwargs)

    return cast(F, wrapper)


@dataclass(frozen=True)
class ThreadPage:
    """What a backend returns for one ``list_threads`` page: up to ``first + 1`` summary rows."""

    rows: list[dict[str, Any]]


class Backend(LifecycleBackend, Protocol):
    """What a storage backend implements. Rows are dicts keyed by SQL column / Chainlit key.

    This protocol lists every attribute :class:`ChainlitLayer` and :mod:`chainlit_orm.lifecycle`
    use on a backend, and nothing is looked up by name (no ``getattr``/``hasattr``), so a
    backend that implements it is a complete one (``tests/test_architecture.py`` checks the
    list against the code that calls it, and both backends against the list). The lifecycle
    primitives ``user_thread_ids``, ``remove_threads``, ``remove_user``, ``purge_expired`` and
    ``sweep_orphans`` are declared in
    :class:`~chainlit_orm.lifecycle.records.LifecycleBackend`, which this protocol extends.

    A row a backend returns is handed over: the layer turns it into the Chainlit dict in place
    (:func:`~chainlit_orm.models.convert.take_row`), so a backend must return fresh dicts, never
    ones it keeps (a cache, say).

    The layer has checked and normalised every argument (ids, sizes, timestamps) before a call;
    the backend applies no Chainlit rule of its own beyond what each method states. Every
    coroutine method runs under the layer's deadline
    (:class:`~chainlit_orm.layers.deadline.BoundedBackend`). Every method raises typed errors
    from :mod:`chainlit_orm.errors`; none returns a sentinel for a failure.
    """

    #: The model set the rows follow (the layer converts rows with it).
    models: ModelSet
    #: What a tracing span says of this backend: ``db.system.name`` (a dialect name, or
    #: ``aws.dynamodb``) and ``chainlit_orm.backend`` (``sql`` or ``dynamodb``).
    tracing_system: str
    tracing_backend: str

    def normalize_user_id(self, value: str, what: str) -> str | None:
        """A user id as this backend stores it, or None when no stored user can have it.

        Called on every user id the layer receives, after the common checks (a non-empty text
        within the length limit). SQL stores UUIDs, so anything else is None (no such user);
        DynamoDB also accepts the identifier-ids of tables Chainlit's own layer wrote.

        Raises:
            InvalidIdentifierError: the value can never be a user id of this backend.
        """
        ...

    # --- users

    async def get_user(self, identifier: str) -> dict[str, Any] | None:
        """The user row with this identifier, or None."""
        ...

    async def upsert_user(self, row: dict[str, Any]) -> dict[str, Any]:
        """Create the user, or update its ``metadata`` (and ``display_name`` when given) when
        the identifier exists (the id and creation time stay the first write's); returns the
        stored row."""
        ...

    async def user_exists(self, user_id: str) -> bool:
        """Whether a user row has this (normalised) id."""
        ...

    # --- threads

    async def update_thread(
        self,
        thread_id: str,
        fields: dict[str, Any],
        meta_set: dict[str, Any] | None,
        meta_delete: list[str] | None,
        create: bool,
        now: str,
    ) -> None:
        """Set ``fields`` and merge ``metadata`` (``meta_set`` keys set, ``meta_delete`` keys
        removed, atomically against concurrent merges) on the thread; with ``create``, make it
        first when absent (created at ``now``). A trashed thread stays trashed."""
        ...

    async def get_thread_author(self, thread_id: str) -> str | None:
        """The owner's identifier of a readable thread (None: no such thread or no owner)."""
        ...

    async def get_thread(
        self, thread_id: str
    ) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]] | None:
        """A readable thread's row, its step rows (each with its ``feedback`` dict when it has
        one) in :data:`~chainlit_orm.models.rules.STEP_ORDER`, and its element rows in
        :func:`~chainlit_orm.models.rules.element_order`; None when there is no such thread."""
        ...

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
        """Up to ``limit`` summary rows, newest first by ``order`` then id, strictly after the
        keyset cursor ``after`` (sort value, id). ``search`` is the term already case-folded by
        :func:`~chainlit_orm.models.search.search_term`; a row matches when it is a substring of
        the folded name (or message text), compared binary, every character literal.
        ``feedback``: only threads with a feedback of that value."""
        ...

    async def delete_thread(self, thread_id: str) -> list[str]:
        """Remove the thread with everything in it; returns the object keys its rows named
        (the layer deletes those objects after, never before)."""
        ...

    async def thread_object_keys(self, thread_id: str) -> list[str]:
        """The object keys the thread's rows name (element files, offloaded texts)."""
        ...

    # --- steps

    async def upsert_step(self, row: dict[str, Any], *, create: bool, activity: str | None,
                          now: str) -> None:
        """Create (``create``) or update the step, creating a stub thread when it has none;
        ``activity``: the thread's activity moves to this time (a user message)."""
        ...

    async def delete_step(self, step_id: str) -> list[str]:
        """Remove the step and its feedback; returns the object keys it named."""
        ...

    async def get_step(self, step_id: str) -> dict[str, Any] | None:
        """The step row (with its ``feedback``) of a readable thread, or None."""
        ...

    async def get_favorite_steps(self, user_id: str) -> list[dict[str, Any]]:
        """The user's favorite step rows, newest first (``STEP_ORDER`` descending)."""
        ...

    # --- elements

    async def upsert_element(self, row: dict[str, Any], now: str) -> None:
        """Create or replace the element row, creating a stub thread when it has none."""
        ...

    async def get_element(self, thread_id: str, element_id: str) -> dict[str, Any] | None:
        """The element row of a readable thread, or None."""
        ...

    async def delete_element(self, element_id: str, thread_id: str | None) -> str | None:
        """Remove the element (of ``thread_id`` when given); returns its object key, if any."""
        ...

    # --- feedback

    async def upsert_feedback(self, row: dict[str, Any]) -> str:
        """Create or update the one feedback of a step; returns its id (an existing
        feedback's when the step had one)."""
        ...

    async def delete_feedback(self, feedback_id: str) -> bool:
        """Remove the feedback; False when there was none."""
        ...

    # --- data lifecycle (chainlit_orm.lifecycle): small primitives, the rules are written there;
    # the ones the lifecycle package calls itself are declared in LifecycleBackend

    async def get_thread_owner(self, thread_id: str) -> dict[str, Any] | None:
        """``{"id", "userId"}`` of the thread, trashed or not; None when there is none."""
        ...

    async def trash_thread(self, thread_id: str, at: str) -> bool:
        """Hide the thread from every read from now on, as deleted at ``at``."""
        ...

    async def restore_thread(self, thread_id: str, since: str) -> bool:
        """Bring back a thread trashed at or after ``since``; False when there is none."""
        ...

    def migrate_command(self) -> str:
        """The exact ``chainlit-orm migrate`` command for this database and model set, as every
        hint shows it (:func:`chainlit_orm.errors.migrate_command`)."""
        ...

    async def check(self) -> list[str]:
        """The startup check of the database (:meth:`ChainlitLayer.check`): reachable, with the
        schema the models need. Returns the problems found, each with its fix; raises what
        stopped the check (the database unreachable, the schema refused at first use)."""
        ...

    async def close(self) -> None:
        """Release connections and worker threads; the backend is not used after."""
        ...


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
        timeout: seconds each call to the backend may take (retries and waits for a connection
            included); past it the call is cancelled and raises
            :class:`~chainlit_orm.errors.TimeoutExceededError`. Client-side, so it holds behind
            a transaction-mode pooler and on a network that swallows packets
            (:mod:`chainlit_orm.layers.deadline`).
        on_delete: an async ``hook(thread_id, user_id)`` called after a thread's data is
            removed, by ``delete_thread``, ``erase_user`` and ``purge``
            (:mod:`chainlit_orm.lifecycle.hooks`); its failure raises
            :class:`~chainlit_orm.errors.OnDeleteError`, the delete staying done.
        on_delete_timeout: seconds one hook call may take (default 30); past it the call is
            abandoned and counts as failed (a ``TimeoutExceededError`` in the ``OnDeleteError``).
        on_delete_breaker: hook calls in a row past ``on_delete_timeout`` after which a purge
            or an erasure stops calling the hook for the rest of its run (default 16, one
            round of the hooks it runs at once); the threads left count as failed, named in
            the ``OnDeleteError`` (``skipped``). See :mod:`chainlit_orm.lifecycle.hooks`.
        soft_delete: a window (e.g. ``timedelta(days=30)``) turns the trash on: ``delete_thread``
            hides the thread from every read at once, ``restore_thread`` brings it back within
            the window, ``purge`` removes it after. None (default): a delete is a delete.
        tracing: emit an OpenTelemetry span per call and per storage call
            (:mod:`chainlit_orm.tracing`; needs the ``otel`` extra). None (default): on when
            ``CHAINLIT_ORM_TRACING=1``, else off; off costs nothing.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        storage: BaseStorageClient | None = None,
        thread_order: ThreadOrder = "activity",
        max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES,
        timeout: float = DEFAULT_TIMEOUT,
        on_delete: OnDelete | None = None,
        soft_delete: timedelta | None = None,
        on_delete_timeout: float = DEFAULT_HOOK_TIMEOUT,
        on_delete_breaker: int = DEFAULT_HOOK_BREAKER,
        tracing: bool | None = None,
    ) -> None:
        if thread_order not in ("activity", "created"):
            raise InvalidInputError(
                f"thread_order must be 'activity' or 'created': {thread_order!r}"
            )
        deadline = CallDeadline(timeout)  # ConfigurationError unless a positive number
        self.timeout = deadline.timeout
        # every backend call is bounded: the proxy runs each coroutine method under the deadline
        self.backend = cast(Backend, BoundedBackend(backend, deadline))
        #: the backend itself, for work that bounds its calls by its own deadline (a purge or
        #: an erasure with ``timeout=``: :class:`~chainlit_orm.lifecycle.batches.Batches`)
        self.unbounded_backend: Backend = backend
        self.models = backend.models
        self.storage = storage
        self.thread_order: ThreadOrder = thread_order
        self.max_text_bytes = max_text_bytes
        self._warned_no_storage = False
        # ids of users persisted in this backend, as get_user/create_user returned them: Chainlit
        # authenticates every request with get_user, so an owner is nearly always known here
        self._known_users: OrderedDict[str, None] = OrderedDict()
        # threads this layer deleted: a later metadata-only update must not recreate them
        self._deleted_threads: OrderedDict[str, None] = OrderedDict()
        # elements whose row (with an object) this layer wrote: see _remove_orphan
        self._stored_elements: OrderedDict[str, None] = OrderedDict()
        # clean-ups of uploads that finished after their call gave up (see _storage_call)
        self._background: set[asyncio.Future[Any]] = set()
        self._closed = False
        self.on_delete: OnDelete | None = check_hook(on_delete)
        self.on_delete_timeout = check_timeout(on_delete_timeout, "on_delete_timeout")
        self.on_delete_breaker = check_hook_breaker(on_delete_breaker)
        if soft_delete is not None and (not isinstance(soft_delete, timedelta)
                                        or soft_delete <= timedelta(0)):
            raise InvalidInputError(f"soft_delete must be a positive timedelta: {soft_delete!r}")
        self.soft_delete: timedelta | None = soft_delete
        from chainlit_orm import tracing as _tracing

        #: whether this layer's calls emit OpenTelemetry spans (:mod:`chainlit_orm.tracing`)
        self.tracing = _tracing.wanted(tracing)
        if self.tracing:
            _tracing.instrument_layer(self, system=backend.tracing_system,
                                      backend=backend.tracing_backend,
                                      requeue=queue_until_user_message)

    @property
    def _text_limits(self) -> dict[str, int]:
        """A step's texts have their own limit, not the record's (see ``models.limits``)."""
        return {"input": self.max_text_bytes, "output": self.max_text_bytes}

    # ------------------------------------------------------------------ users

    async def get_user(self, identifier: str) -> PersistedUser | None:
        identifier = _require_str(identifier, "identifier")
        try:
            check_identifier(identifier)
        except InvalidInputError:
            return None  # no user can have an identifier that cannot be stored
        row = await self.backend.get_user(identifier)
        # exactly this identifier: a MySQL/MariaDB table made before the identifier column was
        # binary matches "alice" to "Alice"; another user's account is never handed out
        if row is None or row["identifier"] != identifier:
            return None
        return self._remember_user(_persisted_user(row))

    async def create_user(self, user: User) -> PersistedUser | None:
        identifier = _require_str(user.identifier, "identifier")
        check_identifier(identifier)
        metadata = user.metadata if user.metadata is not None else {}
        row = {
            "id": str(uuid.uuid4()),
            "identifier": identifier,
            "display_name": user.display_name,
            "metadata": metadata,
            "createdAt": utc_now(),
        }
        check_row(self.models.table("user"), row, "user")
        stored = await self.backend.upsert_user(row)
        if stored["identifier"] != identifier:
            raise ConflictError(
                f"identifier {identifier!r} matches the existing user {stored['identifier']!r} "
                "under the database's case-insensitive collation; make the identifier column "
                f"compare exactly with: {self.backend.migrate_command()}", detail="identifier")
        return self._remember_user(_persisted_user(stored))

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
            fields["name"] = name
        if user_id is not None:
            fields["userId"] = await self._owner(user_id)
        if tags is not None:
            fields["tags"] = tags
        meta_set: dict[str, Any] | None = None
        meta_delete: list[str] | None = None
        meta_size = 0
        if metadata is not None:
            meta_size = check_json(metadata, "thread metadata")
            meta_set = {k: v for k, v in metadata.items() if v is not None}
            meta_delete = [k for k, v in metadata.items() if v is None]
            for column, key in self.models.metadata_columns("thread").items():
                if key in metadata:
                    fields[column] = metadata_text(metadata[key], key)
        check_row(self.models.table("thread"), fields, "thread", counted=meta_size)
        create = name is not None or user_id is not None or tags is not None
        if create:
            self._deleted_threads.pop(thread_id, None)  # written again on purpose
        elif metadata is not None:
            # metadata may arrive first (module docstring); not for a thread deleted here
            create = thread_id not in self._deleted_threads
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

    @whole_call
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
        user_id = (self._user_id(filters.userId, "userId") if filters.userId is not None
                   else None)
        feedback = filters.feedback
        if feedback is not None and (feedback not in (0, 1) or isinstance(feedback, bool)):
            raise InvalidInputError(f"feedback filter must be 0, 1 or None, got {feedback!r}")
        search = filters.search
        folded = None
        if search is not None:
            check_text(search, "search")  # a NUL or a lone surrogate is refused, typed
            search = search.strip()
            folded = search_term(search) if search else None
        if filters.userId is not None and user_id is None:  # no user here can have that id
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

    @whole_call
    async def delete_thread(self, thread_id: str) -> None:
        """Delete a thread's stored files, then its rows, then the files of rows added
        meanwhile, then call ``on_delete``.

        Files first: when the storage fails, no row is deleted and the error says so, so the
        call can simply be repeated once the storage is back (with rows deleted first, the keys
        of the files left behind would be lost with them). The price is one read of the
        thread's object keys, paid only with a storage configured. Files of elements written
        while the thread is being deleted come back with its rows and are deleted then; if
        that second deletion fails, the error names them (rows gone: they must be removed by
        hand or by the storage's lifecycle rules).

        With ``soft_delete`` the thread goes to the trash instead: hidden from every read at
        once, its rows and files kept until ``purge`` removes them (and calls the hook).

        Raises:
            OnDeleteError: the hook failed (the thread stays deleted).
            StorageError: its files could not all be deleted.
        """
        thread_id = normalize_id(thread_id, what="thread_id")
        if self.soft_delete is not None:
            await self.backend.trash_thread(thread_id, utc_now())
            return
        _remember(self._deleted_threads, thread_id)  # before: a disconnect may be on its way
        first: list[str] = []
        if self.storage is not None:
            first = await self.backend.thread_object_keys(thread_id)
            await self._delete_files(first, rows_deleted=False)
        owner = await self.backend.get_thread_owner(thread_id) if self.on_delete else None
        object_keys = await self.backend.delete_thread(thread_id)
        done = set(first)
        removed = Removed(object_keys=[k for k in object_keys if k not in done])
        if owner is not None:
            removed.threads.append((thread_id, _text(owner.get("userId"))))
        outcome = await finish_removal(removed, self.storage, self.on_delete,
                                       storage_timeout=self.timeout,
                                       hook_timeout=self.on_delete_timeout)
        outcome.raise_storage()
        failed = outcome.hook_error()
        if failed is not None:
            raise failed from failed.first

    async def restore_thread(self, thread_id: str) -> None:
        """Bring a trashed thread back, as it was, within the ``soft_delete`` window.

        Raises:
            ConfigurationError: the layer has no trash (``soft_delete`` is None).
            NotFoundError: no thread of that id is in the trash within the window.
        """
        thread_id = normalize_id(thread_id, what="thread_id")
        if self.soft_delete is None:
            raise ConfigurationError("restore_thread needs the trash: pass soft_delete= to "
                                     "the layer", detail="soft_delete")
        since = format_timestamp(parse_timestamp(utc_now()) - self.soft_delete)
        if not await self.backend.restore_thread(thread_id, since):
            raise NotFoundError(f"thread {thread_id} is not in the trash (or its window has "
                                "passed)", detail=thread_id)

    async def erase_user(self, identifier: str, *, dry_run: bool = False,
                         timeout: float | None = None,  # noqa: ASYNC109
                         ) -> ErasureReport:
        """Erase the user and everything naming them; see :mod:`chainlit_orm.lifecycle.erase`
        (``timeout``: seconds per batch)."""
        from chainlit_orm.lifecycle.erase import erase_user

        return await erase_user(self, identifier, dry_run=dry_run, timeout=timeout)

    async def purge(self, *, older_than: timedelta | None, keep_shared: bool = True,
                    keep_favorites: bool = True, keep_metadata: Sequence[str] = (),
                    dry_run: bool = False, batch: int | None = None,
                    now: datetime | str | None = None,
                    timeout: float | None = None,  # noqa: ASYNC109
                    orphan_grace: timedelta | None = None) -> PurgeReport:
        """Remove expired threads (and expired trash); see :mod:`chainlit_orm.lifecycle.purge`
        (``timeout``: seconds per batch; ``orphan_grace``: None, the default, leaves files no
        row refers to alone on SQL: see :mod:`chainlit_orm.lifecycle.purge`)."""
        from chainlit_orm.lifecycle.purge import DEFAULT_BATCH, purge

        return await purge(self, older_than=older_than, keep_shared=keep_shared,
                           keep_favorites=keep_favorites, keep_metadata=keep_metadata,
                           dry_run=dry_run, batch=DEFAULT_BATCH if batch is None else batch,
                           now=now,
                           timeout=timeout, orphan_grace=orphan_grace)

    def forget_user(self, user_id: str | None) -> None:
        """Drop an erased user from this process's cache of known users."""
        if user_id is not None:
            self._known_users.pop(user_id, None)

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
    @whole_call
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
        known = self._user_id(user_id, "user_id")
        if known is None:
            return []
        rows = await self.backend.get_favorite_steps(known)
        return [cast("StepDict", self._step_dict(row)) for row in rows]

    # --------------------------------------------------------------- elements

    @queue_until_user_message
    @whole_call
    async def create_element(self, element: Element) -> None:
        """Store an element's row and, when it has bytes but no URL, its file.

        Invariant: no orphan object and no row whose file is missing. So:

        1. Everything that can be checked is checked before a byte is stored: ids, every value
           of the row (:func:`~chainlit_orm.models.limits.check_row`), the MIME type.
        2. The file is uploaded. A client that raises, or that reports failure Chainlit's way
           (its ``S3StorageClient``/``AzureStorageClient`` log and return ``{}``), makes this
           raise :class:`StorageError`; no row is written.
        3. The row is written. When step 2 or 3 fails, the uploaded object is removed (unless a
           row of this element already refers to it: Chainlit re-sends updatable elements) and
           the error is raised; a removal that fails is added to that error as a note.
        """
        data: dict[str, Any] = dict(element.to_dict())
        element_id = data["id"] = normalize_id(data.get("id"), what="element id")
        if not data.get("threadId"):
            raise InvalidInputError(f"element {element_id} has no threadId")
        thread_id = data["threadId"] = normalize_id(data["threadId"], what="element threadId")
        if data.get("forId"):
            data["forId"] = normalize_id(data["forId"], what="element forId")
        data.pop("path", None)  # a session temp file: meaningless once the session ends
        if not isinstance(data.get("name"), str):
            raise InvalidInputError(f"element {data['id']} name must be a string, got "
                                    f"{type(data.get('name')).__name__}")
        content = await _element_bytes(element)
        upload: tuple[str, bytes, str] | None = None  # (object key, bytes, MIME type)
        if content is not None and not data.get("url"):
            if self.storage is None:
                if not self._warned_no_storage:
                    self._warned_no_storage = True
                    logger.warning(
                        "element %s has bytes but no storage is configured: its record is kept "
                        "without its file. Set CHAINLIT_ORM_STORAGE_URL (or pass storage=).",
                        element_id,
                    )
            else:
                from chainlit_orm.storage._headers import check_content_type

                raw_mime = data.get("mime") or _guess_mime(data.get("name"))
                mime = check_content_type(raw_mime or "application/octet-stream")
                upload = (element_object_key(thread_id, element_id), content, mime)
                data["objectKey"] = upload[0]
                data["mime"] = mime
                data["url"] = None  # signed afresh on every read
        row = to_row(self.models, "element", data)
        check_row(self.models.table("element"), row, "element")
        if upload is None or self.storage is None:
            await self.backend.upsert_element(row, now=utc_now())
            return
        key, content, mime = upload
        disposition = element_content_disposition(_element_name(data))  # the name is checked now
        await self._upload_element(
            self.storage, _Upload(key, content, mime, disposition), thread_id, element_id
        )
        try:
            await self.backend.upsert_element(row, now=utc_now())
        except Exception as exc:
            # False only when no statement of the write left the client: it did not happen
            unsent = isinstance(exc, BackendUnavailableError) and not exc.sent
            with self._cleanup_budget():
                await self._remove_orphan(key, thread_id, element_id, exc, unsent=unsent)
            raise
        _remember(self._stored_elements, element_id)

    async def _upload_element(
        self, storage: BaseStorageClient, upload: _Upload, thread_id: str, element_id: str
    ) -> None:
        """Upload an element's file; any failure raises typed, with the object removed."""
        key = upload.object_key
        failure: Exception
        try:
            result = await self._storage_call(
                "upload_file", key,
                lambda: storage.upload_file(
                    key,
                    upload.content,
                    mime=upload.mime,
                    overwrite=True,
                    content_disposition=upload.disposition,
                ),
                late=lambda: self._clean_up_late(key, thread_id, element_id),
            )
        except StorageTimeoutError as exc:
            if exc.abandoned:
                raise  # this layer gave up waiting: removed when the upload ends (_clean_up_late)
            failure = exc  # the client's own timeout: its call has ended, clean up now
        except InvalidInputError:
            raise  # refused before anything was stored (the client's contract)
        except ChainlitORMError as exc:
            failure = exc
        except Exception as exc:  # Chainlit's Azure Blob and GCS clients raise bare Exception
            failure = StorageError(
                mask_url(
                    f"could not store the file of element {element_id}: "
                    f"{type(storage).__name__}.upload_file raised {type(exc).__name__}: {exc}"
                ),
                detail=key,
            )
            failure.__cause__ = exc
        else:
            if isinstance(result, Mapping) and result:
                return
            failure = StorageError(
                f"could not store the file of element {element_id}: "
                f"{type(storage).__name__}.upload_file returned {result!r} (Chainlit's storage "
                "clients report a failed upload this way and log its cause)",
                detail=key,
            )
        with self._cleanup_budget():
            await self._remove_orphan(key, thread_id, element_id, failure)
        raise failure

    def _cleanup_budget(self) -> contextlib.AbstractContextManager[None]:
        """The deadline of the clean-up after a failed element write: what is left of the call's
        deadline, but at least ``timeout / 2`` from now. So a call whose database write timed out
        still gets to check for and remove its object, and ends within 1.5 times ``timeout``
        (plus the deadline's check interval): inside the documented 2x."""
        now = asyncio.get_running_loop().time()
        return call_budget(max(call_end() or now, now + self.timeout / 2))

    async def _storage_call(
        self, what: str, object_key: str, make: Callable[[], Awaitable[R]],
        *, late: Callable[[], None] | None = None,
    ) -> R:
        """One storage-client call, within what is left of the layer call's deadline.

        Why a task of its own, left behind on timeout instead of awaited: Chainlit's clients run
        the SDK in a worker thread (``asyncify``), and awaiting such a call does not end when
        it is cancelled, only when the thread returns (a black-holed S3 endpoint: minutes). So
        the call is abandoned: the caller gets its typed error at once, and the call's task is
        left to end by itself.

        An abandoned call with ``late`` (an upload) is *not* cancelled: a cancelled task may
        report its end while the write it started goes on in a thread (``asyncio.to_thread``
        behaves so), and a clean-up run then would come before the object lands. Left alone,
        its task ends when the client's call really does; ``late`` runs then and removes the
        object (:meth:`_clean_up_late`). A client call that never ends at all (no timeout of
        its own, no thread) is cancelled by :meth:`close`. Other calls (deletes, signing) are
        cancelled at once: nothing is left behind by a delete that lands late.

        Raises:
            StorageTimeoutError: not done within the call's deadline.
        """
        loop = asyncio.get_running_loop()
        end = call_end()
        if end is None:
            end = loop.time() + self.timeout
        task = asyncio.ensure_future(make())
        try:
            done, _ = await asyncio.wait({task}, timeout=max(end - loop.time(), 0.0))
        except BaseException:
            self._abandon(task, late)
            raise
        if task in done:
            return task.result()
        self._abandon(task, late)
        error = StorageTimeoutError(
            f"{type(self.storage).__name__}.{what} of {object_key!r} did not finish within "
            f"the data-layer call timeout of {self.timeout:g} s"
            + (" (the client may still write the object: it is removed once the upload ends, "
               "unless a row of this element refers to it)" if late is not None else ""),
            detail=object_key,
        )
        error.abandoned = True  # the client's call may still be running
        raise error

    def _abandon(self, task: asyncio.Future[Any], late: Callable[[], None] | None) -> None:
        """Stop waiting for a storage call; see :meth:`_storage_call`."""
        if late is None:
            task.cancel()
        else:
            self._background.add(task)

        def ended(done: asyncio.Future[Any]) -> None:
            if not done.cancelled():
                done.exception()  # retrieved: the caller got its typed error already
            if late is not None:
                late()  # registers the clean-up before the upload leaves _background
                self._background.discard(done)

        task.add_done_callback(ended)

    async def settle(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for the uploads abandoned by their call (see
        :meth:`_storage_call`) and the clean-ups of their objects; whether all are done."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while self._background:
            left = end - loop.time()
            if left <= 0:
                return False
            await asyncio.wait(set(self._background), timeout=left)
        return True

    def _clean_up_late(self, object_key: str, thread_id: str, element_id: str) -> None:
        """Remove the object of an upload that ended after its ``create_element`` gave up (in
        the background, with a ``timeout`` of its own; what fails is logged as a warning)."""
        if self._closed:
            _note_leftover(StorageTimeoutError("late upload", detail=object_key), object_key,
                           "its upload ended after the layer was closed")
            return

        async def clean_up() -> None:
            with call_budget(asyncio.get_running_loop().time() + self.timeout):
                await self._remove_orphan(object_key, thread_id, element_id, StorageTimeoutError(
                    f"the upload of element {element_id} ended after its call timed out",
                    detail=object_key))

        task = asyncio.ensure_future(clean_up())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _remove_orphan(
        self, object_key: str, thread_id: str, element_id: str, error: BaseException,
        *, unsent: bool = False,
    ) -> None:
        """Remove the object of an element that was not stored, unless a row refers to it.

        Never raises: ``error`` is what the caller raises, and what goes wrong here is added to
        its message and as a note (and logged), so a leftover object is reported, not hidden.
        The check and the removal run only on this failure path; a healthy write costs nothing
        more.

        When the check cannot run (the database is down), the object is removed anyway if the
        write certainly did not happen (``unsent``: refused before any statement was sent) and
        this layer has not written a row of this element before (a re-sent element's earlier
        row refers to the same key; an earlier row written by another process is the one case
        this cannot see). Otherwise whether a row refers to it is unknown, and it stays.
        """
        try:
            existing = await self.backend.get_element(thread_id, element_id)
        except Exception as exc:
            if not unsent or element_id in self._stored_elements:
                _note_leftover(error, object_key,
                               f"whether a row refers to it is unknown ({exc!r})")
                return
            existing = None
        if existing is not None and existing.get("objectKey") == object_key:
            return  # an earlier row of this element serves it; removing it would break that row
        storage = self.storage
        if storage is None:
            return
        from chainlit_orm.storage.protocols import DiscardableStorage

        try:
            if isinstance(storage, DiscardableStorage):
                await self._storage_call("discard_file", object_key,
                                         lambda: storage.discard_file(object_key))
            elif await self._storage_call("delete_file", object_key,
                                          lambda: storage.delete_file(object_key)) is False:
                _note_leftover(
                    error, object_key, f"{type(storage).__name__}.delete_file returned False"
                )
        except Exception as exc:
            _note_leftover(error, object_key, f"removing it failed ({exc!r})")

    @whole_call
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
    @whole_call
    async def delete_element(self, element_id: str, thread_id: str | None = None) -> None:
        element_id = normalize_id(element_id, what="element_id")
        scoped = normalize_id(thread_id, what="thread_id") if thread_id else None
        object_key = await self.backend.delete_element(element_id, scoped)
        await self._delete_files([object_key] if object_key else [])

    # --------------------------------------------------------------- feedback

    async def upsert_feedback(self, feedback: Feedback) -> str:
        value = feedback.value
        if type(value) is not int or value not in (0, 1):
            raise InvalidInputError(f"feedback value must be 0 or 1, got {value!r}")
        comment = feedback.comment
        row = {
            "id": (
                normalize_id(feedback.id, what="feedback id") if feedback.id else str(uuid.uuid4())
            ),
            "forId": normalize_id(feedback.forId, what="feedback forId"),
            "threadId": normalize_id(feedback.threadId, what="feedback threadId")
            if feedback.threadId
            else None,
            "value": value,
            "comment": comment,
        }
        check_row(self.models.table("feedback"), row, "feedback")
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

    async def check(self, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Check, once at start-up, everything the layer will need, and report every problem
        at once: the database reachable, its schema what the models need (a problem names the
        exact ``chainlit-orm migrate`` command that fixes it, ``--models`` included for a custom
        model set), and the storage (bucket, container, directory) present and writable: a
        small probe object is written under :data:`CHECK_PREFIX`, read back when the client can
        read, and deleted.

        Why: without it a misconfigured app starts, logs users in, and fails at its first data
        call. In Chainlit, call it from ``@cl.on_app_startup`` and turn the error into
        ``SystemExit``: Chainlit catches and only logs an ``Exception`` raised there, while
        ``SystemExit`` stops the server ("Application startup failed. Exiting.")::

            @cl.on_app_startup
            async def check_persistence() -> None:
                try:
                    await get_data_layer().check()
                except CheckFailedError as err:
                    raise SystemExit(str(err)) from None

        The database and the storage are checked side by side, within ``timeout`` seconds (the
        layer's ``timeout`` by default). On an empty SQLite file (``create_schema``) the schema
        is created here, as the first call would.

        Raises:
            CheckFailedError: one or more problems, each on its own line of the message.
        """
        seconds = self.timeout if timeout is None else check_timeout(timeout, "timeout")
        with call_budget(asyncio.get_running_loop().time() + seconds):
            found = await asyncio.gather(self._check_database(), self._check_storage())
        problems = [p for part in found for p in part[0]]
        errors = [e for part in found for e in part[1]]
        if problems:
            raise CheckFailedError(problems, errors) from (errors[0] if errors else None)

    async def _check_database(self) -> tuple[list[str], list[BaseException]]:
        """The backend's part of :meth:`check`: its problems, and the error that stopped it."""
        try:
            return await self.backend.check(), []
        except Exception as exc:  # reported in CheckFailedError, with its cause chained
            return [f"database: {_described(exc)}"], [exc]

    async def _check_storage(self) -> tuple[list[str], list[BaseException]]:
        """The storage's part of :meth:`check`: write, read back (when the client can), delete
        a probe object under :data:`CHECK_PREFIX`."""
        storage = self.storage
        if storage is None:
            return [], []
        from chainlit_orm.storage.protocols import ReadableStorage

        where = f"storage {_storage_name(storage)}"
        key = f"{CHECK_PREFIX}/{uuid.uuid4().hex}"
        stored = False
        problems: list[str] = []
        try:
            result = await self._storage_call(
                "upload_file", key,
                lambda: storage.upload_file(key, CHECK_PROBE, mime="text/plain", overwrite=True))
            if not (isinstance(result, Mapping) and result):
                return [f"{where}: writing the probe object {key!r} failed: "
                        f"{type(storage).__name__}.upload_file returned {result!r} (Chainlit's "
                        "storage clients report a failure this way and log its cause)"], []
            stored = True
            if isinstance(storage, ReadableStorage):
                data = await self._storage_call("read_file", key,
                                                lambda: storage.read_file(key))
                if data != CHECK_PROBE:
                    problems.append(f"{where}: the probe object {key!r} read back as "
                                    f"{data[:40]!r}, not what was written")
            deleted = await self._storage_call("delete_file", key,
                                               lambda: storage.delete_file(key))
            stored = False
            if deleted is False:
                problems.append(f"{where}: deleting the probe object {key!r} failed "
                                f"({type(storage).__name__}.delete_file returned False)")
            return problems, []
        except Exception as exc:  # reported in CheckFailedError, with its cause chained
            action = "reading or deleting the probe object" if stored else "writing a probe object"
            return [*problems, f"{where}: {action} failed: {_described(exc)}"], [exc]
        finally:
            if stored:  # the read failed: try not to leave the probe behind
                with contextlib.suppress(Exception):
                    await self._storage_call("delete_file", key, lambda: storage.delete_file(key))

    async def close(self) -> None:
        """Release the backend and the storage client. Never raises (Chainlit's shutdown path
        only catches ``CancelledError``); what it catches is logged at debug level. Uploads
        abandoned by their call and their clean-ups get up to ``timeout`` to finish first."""
        if not await self.settle(self.timeout):
            for task in list(self._background):
                task.cancel()  # a client call that never ends: stop it (its object may stay)
            await self.settle(self.timeout)
        self._closed = True  # from now on a late upload is reported, not cleaned up
        for closer in (self.backend.close, getattr(self.storage, "close", None)):
            if closer is None:
                continue
            try:
                await closer()
            except Exception as exc:
                logger.debug("error while closing %r: %r", closer, exc)

    # ---------------------------------------------------------------- helpers

    def _remember_user(self, user: PersistedUser) -> PersistedUser:
        self._known_users[user.id] = None
        self._known_users.move_to_end(user.id)
        while len(self._known_users) > 10_000:
            self._known_users.popitem(last=False)
        return user

    async def _owner(self, value: object) -> str:
        """``update_thread``'s ``user_id``: the id of a persisted user, on every backend.

        Checked here, not left to the database: a SQL foreign key catches an unknown owner only
        when the row's owner is being set, and a thread's owner is set once, so a second owner
        would pass silently on SQL and fail on DynamoDB. A user this process has seen costs
        nothing; another one costs one lookup by id.

        Raises:
            InvalidIdentifierError: not a well-formed user id.
            NotFoundError: no user has this id.
        """
        user_id = self._user_id(value, "user_id")
        if user_id is not None and user_id in self._known_users:
            return user_id
        if user_id is None or not await self.backend.user_exists(user_id):
            raise NotFoundError(f"user_id {value!r}: no such user", detail="user_id")
        self._known_users[user_id] = None
        return user_id

    def _user_id(self, value: object, what: str) -> str | None:
        """A user id as the backend stores it, or None when it is well-formed but no user of this
        backend can have it (callers: a write raises ``NotFoundError``, a read finds nothing, as
        for a well-formed id of a user that does not exist).

        Well-formed, on every backend: a string of 1 to ``MAX_USER_ID_CHARS`` storable
        characters (or a ``uuid.UUID``). SQL databases hold UUID ids only; a backend with a
        ``normalize_user_id(value, what)`` method says otherwise (DynamoDB tables written by
        Chainlit's own layer use the identifier as the user id).

        Raises:
            InvalidIdentifierError: the value is not a well-formed user id.
        """
        if isinstance(value, uuid.UUID):
            value = str(value)
        try:
            check_text(value, what, max_chars=MAX_USER_ID_CHARS)
        except InvalidInputError as exc:
            raise InvalidIdentifierError(str(exc), detail=what) from exc
        if not value:
            raise InvalidIdentifierError(f"{what} must not be empty", detail=what)
        # check_text accepted it, so it is a str
        return self.backend.normalize_user_id(cast(str, value), what)

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
        if data.get("parentId") is not None:
            data["parentId"] = normalize_id(data["parentId"], what="step parentId")
        # NOT NULL columns of Chainlit's documented schema: a step without them cannot be
        # stored on SQL, so no backend takes one (Chainlit's to_dict always sends them)
        for key in ("name", "type"):
            if not isinstance(data.get(key), str):
                raise InvalidInputError(f"step {key} must be a string, got "
                                        f"{type(data.get(key)).__name__}")
        if type(data.get("streaming")) is not bool:
            raise InvalidInputError(
                f"step streaming must be a bool, got {data.get('streaming')!r}"[:200])
        if create and not data.get("createdAt"):
            data["createdAt"] = utc_now()  # creation order is the thread's step order
        row = to_row(self.models, "step", data)
        check_row(self.models.table("step"), row, "step", own_limits=self._text_limits)
        activity = None
        if create and row.get("type") == USER_MESSAGE:  # its creation is the activity
            activity = row["createdAt"]
        return row, activity

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
            *(self._storage_call("get_read_url", e["objectKey"],
                                 functools.partial(storage.get_read_url, e["objectKey"]))
              for e in signed),
            return_exceptions=True,
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

    async def _delete_files(self, object_keys: Sequence[str], *, rows_deleted: bool = True
                            ) -> None:
        """Delete stored files (before or after their rows: ``rows_deleted`` says which, for the
        error); a failure raises :class:`StorageError` (:class:`StorageTimeoutError` when one
        of them timed out), never hides."""
        keys = [k for k in object_keys if k]
        if not keys or self.storage is None:
            return
        storage = self.storage
        results = await asyncio.gather(
            *(self._storage_call("delete_file", k, functools.partial(storage.delete_file, k))
              for k in keys),
            return_exceptions=True,
        )
        failures = [(k, r) for k, r in zip(keys, results, strict=True) if isinstance(r, Exception)]
        if failures:
            key, first = failures[0]
            timed_out = any(isinstance(r, StorageTimeoutError) for _, r in failures)
            kind = StorageTimeoutError if timed_out else StorageError
            what = (f"rows deleted, but {len(failures)} stored file(s) could not be deleted"
                    if rows_deleted else
                    f"nothing deleted: {len(failures)} stored file(s) could not be deleted "
                    "(the rows are kept; call again once the storage answers)")
            raise kind(mask_url(f"{what} (first: {key}: {first})"),
                       detail=[k for k, _ in failures]) from first


# -------------------------------------------------------------------- helpers


def _described(exc: BaseException) -> str:
    """An error as a check problem: a typed error's message (it says what and how to fix it),
    else its type and text; secrets masked."""
    if isinstance(exc, ChainlitORMError):
        return mask_url(str(exc))
    return mask_url(f"{type(exc).__name__}: {exc}")


def _storage_name(storage: object) -> str:
    """A storage client as a check problem names it: its URL (masked) when it has one."""
    url = getattr(storage, "url", None)
    return mask_url(url) if isinstance(url, str) else type(storage).__name__


def _remember(recent: OrderedDict[str, None], key: str, limit: int = 10_000) -> None:
    """Add ``key`` to a bounded most-recent-last set, dropping the oldest beyond ``limit``."""
    recent[key] = None
    recent.move_to_end(key)
    while len(recent) > limit:
        recent.popitem(last=False)


def _persisted_user(row: Mapping[str, Any]) -> PersistedUser:
    metadata = row.get("metadata")
    return PersistedUser(
        id=str(row["id"]),
        identifier=row["identifier"],
        display_name=row.get("display_name"),
        metadata=metadata if isinstance(metadata, dict) else {},
        createdAt=row.get("createdAt") or utc_now(),
    )


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def check_identifier(identifier: str) -> None:
    """A user identifier: storable, at most ``MAX_INDEXED_CHARS`` characters, not ending in a
    space (MySQL/MariaDB compare strings ignoring trailing spaces, so "alice " would be
    "alice" there and another user elsewhere)."""
    check_text(identifier, "identifier", max_chars=MAX_INDEXED_CHARS)
    if identifier.endswith(" "):
        raise InvalidInputError(
            f"identifier {identifier[:80]!r} ends with a space, which MySQL/MariaDB ignore when "
            "comparing: it would name another user there", detail="identifier")


def _require_str(value: object, what: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not allow_empty):
        raise InvalidInputError(f"{what} must be a non-empty string, got {value!r}")
    return value


def _encode_cursor(key: tuple[str, str]) -> str:
    raw = json.dumps([key[0], key[1]], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: object) -> tuple[str, str]:
    """Decode and validate an opaque cursor; anything forged or stale is a typed error.

    Ours are about 90 characters; a longer one is refused before it is decoded (a forged one of
    100,000 nested brackets would otherwise exhaust the JSON decoder's recursion)."""
    text = cursor if isinstance(cursor, str) else str(cursor)  # the UI types it str | number
    shown = text[:80]
    if len(text) > MAX_CURSOR_CHARS:
        raise InvalidCursorError(f"invalid pagination cursor: {shown!r}... (too long)")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        moment, thread_id = json.loads(raw)
        if not isinstance(moment, str) or not isinstance(thread_id, str):
            raise ValueError(moment)
        return format_timestamp(parse_timestamp(moment)), normalize_id(thread_id)
    except (ValueError, TypeError, binascii.Error, UnicodeError, RecursionError, OverflowError,
            InvalidInputError) as exc:
        raise InvalidCursorError(f"invalid pagination cursor: {shown!r}") from exc


async def _element_bytes(element: Element) -> bytes | None:
    """The bytes an element carries: its ``content`` (text as UTF-8), else the file at its
    ``path`` (read in a worker thread), else None."""
    content = getattr(element, "content", None)
    if content is not None:
        if isinstance(content, str):
            try:
                return content.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvalidInputError(
                    f"element {element.id}: content has a lone surrogate, which UTF-8 cannot "
                    "encode"
                ) from exc
        if isinstance(content, bytes | bytearray | memoryview):
            return bytes(content)
        # bytes(5) would store five NUL bytes: refuse what is neither text nor bytes
        raise InvalidInputError(
            f"element {element.id}: content must be bytes or str, got {type(content).__name__}"
        )
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


def element_content_disposition(name: str) -> str:
    """``inline`` with an RFC 6266 / RFC 5987 file name (control characters dropped, since a
    file name Chainlit received must not fail the upload)."""
    from chainlit_orm.storage import build_content_disposition

    cleaned = "".join(ch for ch in name if ch >= " " and ch != "\x7f") or "file"
    return build_content_disposition(cleaned, "inline")


@dataclass(frozen=True)
class _Upload:
    """The file of an element, ready to upload: everything about it is checked already."""

    object_key: str
    content: bytes
    mime: str
    disposition: str


def _element_name(data: Mapping[str, Any]) -> str:
    name = data.get("name")
    return name if isinstance(name, str) and name else str(data["id"])


def _note_leftover(error: BaseException, object_key: str, why: str) -> None:
    message = mask_url(f"the uploaded object {object_key!r} may remain in storage: {why}")
    error.add_note(message)
    if isinstance(error, ChainlitORMError) and len(error.args) == 1:
        error.args = (f"{error.args[0]} ({message})",)  # in str(error) too, not only a note
    logger.warning("%s (after: %s)", message, type(error).__name__)


