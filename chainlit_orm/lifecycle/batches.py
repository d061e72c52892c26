"""How ``erase_user`` and ``purge`` remove one batch: files first, then rows, under a deadline.

**Files first** (as ``delete_thread``, issue 14 finding F3a): with a storage configured, a batch's
object keys are read, its files deleted, and only then its rows; the files of rows that arrived
meanwhile (their keys come back with the deleted rows) are deleted after. When the storage fails,
the batch's rows are not touched: they, and with them the keys, stay for a second run, which
completes once the storage answers. (Rows first would lose the keys of the files left behind.)

**Deadlines.** ``timeout=`` bounds each batch as a whole: its backend calls (which then get that
limit instead of the layer's per-call ``timeout``: a batch of 500 threads may need longer than
an app call) and its file deletes share one deadline, ``timeout`` seconds from the batch's start,
ending in :class:`~chainlit_orm.errors.TimeoutExceededError` (or
:class:`~chainlit_orm.errors.StorageTimeoutError`). Without it each backend call keeps the
layer's ``timeout``. Either way each file delete is bounded by the layer's ``timeout``, each
hook call by its ``on_delete_timeout``, and the run's hook calls by one breaker
(``on_delete_breaker``, :mod:`chainlit_orm.lifecycle.hooks`). A storage listing (a purge's orphan
sweep) is one storage call, bounded by ``timeout`` when given, else by the layer's ``timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

from chainlit_orm.layers.deadline import BoundedBackend, CallDeadline, call_budget, check_timeout
from chainlit_orm.lifecycle.hooks import (
    DEFAULT_HOOK_BREAKER,
    DEFAULT_HOOK_TIMEOUT,
    HookBreaker,
    Outcome,
    delete_files_first,
    finish_removal,
)
from chainlit_orm.lifecycle.records import Removed

if TYPE_CHECKING:
    from chainlit_orm.lifecycle.records import LifecycleBackend, LifecycleLayer

__all__ = ["Batches"]


class Batches:
    """One erasure's or purge's way of removing batches from ``layer`` (module docstring).

    ``outcome`` collects, over every batch, the files deleted and what failed after rows were
    removed (hooks, files of rows that arrived meanwhile), for the caller to raise at the end.
    """

    def __init__(self, layer: LifecycleLayer, timeout: float | None, what: str) -> None:
        self.layer = layer
        self.storage = layer.storage
        self.storage_timeout = float(getattr(layer, "timeout", 30.0))
        self.hook_timeout = float(getattr(layer, "on_delete_timeout", DEFAULT_HOOK_TIMEOUT))
        #: one breaker for the whole run: once open, no later batch calls the hook either
        self.breaker = HookBreaker(getattr(layer, "on_delete_breaker", DEFAULT_HOOK_BREAKER),
                                   self.hook_timeout)
        self.timeout = None if timeout is None else check_timeout(timeout, "timeout")
        backend = layer.backend
        if self.timeout is not None:
            backend = cast("LifecycleBackend", BoundedBackend(
                layer.unbounded_backend, CallDeadline(self.timeout, what=f"{what} batch")))
        self.backend: LifecycleBackend = backend
        self.outcome = Outcome()

    @property
    def listing_timeout(self) -> float:
        """Seconds a storage listing (a purge's orphan sweep) may take: the batch's
        ``timeout`` when given (a storage too large to list within the layer's ``timeout``
        needs a larger one), else the layer's ``timeout``, as any other call."""
        return self.storage_timeout if self.timeout is None else self.timeout

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """One batch's deadline (nothing without ``timeout``)."""
        if self.timeout is None:
            yield
            return
        with call_budget(asyncio.get_running_loop().time() + self.timeout):
            yield

    async def remove(self, preview: Callable[[], Awaitable[Removed]],
                     remove: Callable[[], Awaitable[Removed]]) -> Removed:
        """Files first, then rows: ``preview()`` lists the batch's object keys (without a
        storage it is not called), their files are deleted, then ``remove()`` removes the rows
        and the files of rows that came meanwhile are deleted; then the hook.

        Raises:
            StorageError: a file of the batch could not be deleted before its rows (none of the
                batch's rows is removed; :class:`StorageTimeoutError` when one timed out).
        """
        deleted: set[str] = set()
        if self.storage is not None:
            seen = await preview()
            first = await delete_files_first(seen.object_keys, self.storage,
                                             storage_timeout=self.storage_timeout)
            self.outcome.files_deleted += first.files_deleted
            if first.file_failures:
                self._raise_first(first)
            deleted = set(seen.object_keys)
        removed = await remove()
        self.outcome.add(await self.finish(removed, deleted))
        return removed

    async def finish(self, removed: Removed, deleted: set[str] | None = None) -> Outcome:
        """What follows a removal: the remaining files, then the hook (bounded)."""
        return await finish_removal(removed, self.storage, self.layer.on_delete,
                                    storage_timeout=self.storage_timeout,
                                    hook_timeout=self.hook_timeout,
                                    deleted=deleted or frozenset(), breaker=self.breaker)

    def _raise_first(self, first: Outcome) -> Any:
        """Raise the storage failure of a batch whose rows are kept; hook failures of earlier
        batches (their rows are gone) are named in it, never dropped."""
        try:
            first.raise_storage(rows_deleted=False)
        except Exception as error:
            failed = self.outcome.hook_failures
            if failed:
                error.args = (f"{error.args[0]}; before it, the on_delete hook failed for "
                              f"{len(failed)} removed thread(s): {', '.join(failed)}",)
            raise
