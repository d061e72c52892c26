"""What the lifecycle operations exchange with a backend: pure values, no I/O.

Kept apart from the operations (:mod:`chainlit_orm.lifecycle.erase`, :mod:`.purge`) so that the
backends and ``layers/base.py`` can name these types without importing anything that runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from chainlit.data.storage_clients.base import BaseStorageClient

__all__ = ["ENTITIES", "ExpiryRule", "LifecycleBackend", "LifecycleLayer", "OnDelete", "Removed"]

#: ``await hook(thread_id, user_id)``; ``user_id`` is None for a thread without an owner.
OnDelete = Callable[[str, str | None], Awaitable[Any]]

#: The entities a report counts, in the order it prints them.
ENTITIES: tuple[str, ...] = ("user", "thread", "step", "element", "feedback", "file")


def _zero() -> dict[str, int]:
    return dict.fromkeys(ENTITIES, 0)


@dataclass
class Removed:
    """What one delete removed (or, for a dry run, would remove).

    ``counts`` is per entity (rows on SQL, items on DynamoDB; ``file`` is stored objects);
    ``threads`` the removed threads with their owner's user id, in the order they were removed,
    so the on-delete hook can be called for each; ``object_keys`` the stored files to delete once
    the rows are gone (never before: a failed delete must not leave rows whose files are gone).
    """

    counts: dict[str, int] = field(default_factory=_zero)
    threads: list[tuple[str, str | None]] = field(default_factory=list)
    object_keys: list[str] = field(default_factory=list)

    def add(self, other: Removed) -> None:
        """Fold ``other`` into this one (a report over many batches)."""
        for name, count in other.counts.items():
            self.counts[name] = self.counts.get(name, 0) + count
        self.threads.extend(other.threads)
        self.object_keys.extend(other.object_keys)


@dataclass(frozen=True)
class ExpiryRule:
    """Which threads a purge removes. Exactly one of the two times is set per backend call.

    * ``active_before``: threads whose last activity (``activityAt``, else ``createdAt``) is
      earlier, except those kept: shared ones (``metadata.is_shared`` is true, Chainlit's share
      flag) with ``keep_shared``, those holding a favorited step with ``keep_favorites``, and
      those whose metadata has one of ``keep_metadata`` set to true.
    * ``trashed_before``: threads moved to the trash (``deletedAt``) earlier than this; the keep
      rules do not apply, since their owner deleted them.

    Times are the package's fixed-width ISO-8601 UTC text, so text order is instant order.
    """

    active_before: str | None = None
    trashed_before: str | None = None
    keep_shared: bool = True
    keep_favorites: bool = True
    keep_metadata: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.active_before is None) == (self.trashed_before is None):
            raise ValueError("exactly one of active_before and trashed_before is set")

    @property
    def keep_keys(self) -> tuple[str, ...]:
        """The metadata keys whose true value keeps a thread (``is_shared`` first when shared
        threads are kept)."""
        keys = (("is_shared",) if self.keep_shared else ()) + tuple(self.keep_metadata)
        return tuple(dict.fromkeys(keys))



class LifecycleBackend(Protocol):
    """The backend primitives :func:`~chainlit_orm.lifecycle.erase_user` and
    :func:`~chainlit_orm.lifecycle.purge` call: the part of ``layers.base.Backend`` (which
    extends this protocol) the lifecycle package uses, declared here so that the package never
    imports ``layers`` (which imports it: a cycle). Every method is on every backend; none is
    looked up by name."""

    async def user_thread_ids(self, identifier: str) -> tuple[str | None, list[str]]:
        """The user's id (None: no user row) and every thread naming the user, trash included."""
        ...

    async def remove_threads(self, thread_ids: Sequence[str], *, dry_run: bool = False,
                             keys_only: bool = False) -> Removed:
        """Remove these threads with everything in them (dry: count it; ``keys_only``: list
        their threads and object keys, the files to delete before the rows)."""
        ...

    async def remove_user(self, identifier: str, *, dry_run: bool = False) -> Removed:
        """Remove the user's own record(s) and any thread still naming the user."""
        ...

    async def purge_expired(self, rule: ExpiryRule, *, batch: int, after: Any,
                            dry_run: bool = False, keys_only: bool = False
                            ) -> tuple[Removed, Any]:
        """Remove one batch of what ``rule`` expires; returns it and the next cursor
        (``keys_only``: remove nothing, list the batch's threads and object keys)."""
        ...

    async def remove_expired(self, rule: ExpiryRule, thread_ids: Sequence[str]) -> Removed:
        """Remove those of these threads (a ``keys_only`` batch) that ``rule`` still expires,
        each exactly once across concurrent purges."""
        ...

    async def sweep_orphans(self, storage: BaseStorageClient | None, *,
                            dry_run: bool = False,
                            storage_timeout: float = 30.0) -> tuple[int, int]:
        """What the store's own expiry leaves behind, removed after a purge: the other rows of
        threads whose thread row the store expired by itself, and the stored objects of threads
        that no longer exist. Returns (threads whose rows were removed, objects removed); a
        dry run counts them. A store that expires nothing by itself (SQL: a thread's rows go
        with it, in one transaction) has nothing to sweep and returns (0, 0). Each storage
        call (the listing, a delete) is bounded by ``storage_timeout`` seconds and by what is
        left of the caller's deadline."""
        ...

    async def known_object_keys(self, object_keys: Sequence[str]) -> set[str] | None:
        """Which of these stored object keys a row still refers to: what the SQL orphan sweep
        of ``purge`` keeps. None: the backend has no such lookup because its own
        :meth:`sweep_orphans` removes unreferenced files (DynamoDB)."""
        ...


class LifecycleLayer(Protocol):
    """What the lifecycle operations read from a layer (``layers.base.ChainlitLayer`` is one)."""

    @property
    def backend(self) -> LifecycleBackend:
        """The layer's backend."""
        ...

    @property
    def unbounded_backend(self) -> LifecycleBackend:
        """The backend without the layer's per-call deadline (a batch with its own
        ``timeout=`` bounds it instead)."""
        ...

    @property
    def storage(self) -> BaseStorageClient | None:
        """Where the removed threads' files are deleted."""
        ...

    @property
    def on_delete(self) -> OnDelete | None:
        """The hook called for each removed thread."""
        ...

    @property
    def timeout(self) -> float:
        """Seconds one backend or storage call may take (each file delete is bounded by it)."""
        ...

    @property
    def on_delete_timeout(self) -> float:
        """Seconds one hook call may take."""
        ...

    @property
    def on_delete_breaker(self) -> int:
        """Hook calls in a row past ``on_delete_timeout`` after which a run stops calling the
        hook (:class:`~chainlit_orm.lifecycle.hooks.HookBreaker`)."""
        ...

    @property
    def soft_delete(self) -> timedelta | None:
        """The trash window (None: no trash)."""
        ...

    def forget_user(self, user_id: str | None) -> None:
        """Drop an erased user from the layer's caches."""
        ...
