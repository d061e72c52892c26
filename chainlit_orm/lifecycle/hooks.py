"""The on-delete hook, and what follows every removal: files first gone, then the hook.

An app gives ``on_delete=`` to a layer (``--on-delete pkg.module:attr`` to the CLI): an async
callable ``hook(thread_id, user_id)`` called once for each thread whose data is actually removed,
by ``delete_thread``, ``erase_user`` and ``purge`` alike, after the rows are committed, so the app
can drop the thread from a vector store or a cache. Trashing a thread (``soft_delete=``) removes
nothing: the hook runs when ``purge`` removes it.

A hook that raises is reported, never swallowed: the removal is durable and is not rolled back,
and the caller raises :class:`~chainlit_orm.errors.OnDeleteError` naming every thread whose hook
failed (a purge goes on with its other threads first).

Everything here runs under a bound, so maintenance cannot stall on one call: each file delete
gets the layer's per-call ``timeout`` (or what is left of the caller's deadline, if earlier), and
each hook call ``on_delete_timeout`` seconds (default :data:`DEFAULT_HOOK_TIMEOUT`). A call past
its bound is abandoned (cancelled and no longer awaited: a Chainlit storage client runs the SDK
in a worker thread that cancellation cannot stop) and counts as failed, with a
:class:`~chainlit_orm.errors.StorageTimeoutError` or
:class:`~chainlit_orm.errors.TimeoutExceededError` as its failure.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from chainlit_orm.defaults import DEFAULT_HOOK_TIMEOUT
from chainlit_orm.errors import (
    ConfigurationError,
    StorageError,
    StorageTimeoutError,
    TimeoutExceededError,
    mask_url,
)
from chainlit_orm.layers.deadline import DEFAULT_TIMEOUT, call_end, check_timeout
from chainlit_orm.lifecycle.records import OnDelete, Removed

if TYPE_CHECKING:
    from chainlit.data.storage_clients.base import BaseStorageClient

__all__ = ["DEFAULT_HOOK_TIMEOUT", "OnDelete", "Outcome", "bounded", "check_hook",
           "delete_files_first", "finish_removal", "load_hook"]

#: Hook calls of one batch in flight at once. Why: one after the other, a hook that hangs (its
#: service down) made a 500-thread batch last 500 times ``on_delete_timeout`` (an outside attack
#: measured 20 hanging hooks at a 1 s limit taking 20 s); 16 at a time bound it by 32 times the
#: limit without flooding the hook's service with a whole batch at once.
HOOK_CONCURRENCY = 16


def check_hook(hook: object) -> OnDelete | None:
    """``hook`` when it can be an on-delete hook (None stays None).

    Raises:
        ConfigurationError: ``hook`` is not callable.
    """
    if hook is None:
        return None
    if not callable(hook):
        raise ConfigurationError(f"on_delete must be an async callable, got {hook!r}",
                                 detail="on_delete")
    return hook


def load_hook(spec: str) -> OnDelete:
    """The callable named ``package.module:attr`` (the current directory first on the path, as
    for ``--models``), for ``--on-delete``.

    Raises:
        ConfigurationError: a malformed spec, a module that cannot be imported, a missing
            attribute, or something that is not callable.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(f"--on-delete must be package.module:attribute, got {spec!r}")
    cwd = os.getcwd()
    if sys.path[:1] != [cwd]:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"--on-delete: cannot import {module_name!r}: {exc}") from exc
    try:
        found = getattr(module, attribute)
    except AttributeError as exc:
        raise ConfigurationError(
            f"--on-delete: {module_name} has no attribute {attribute!r}") from exc
    hook = check_hook(found)
    assert hook is not None
    return hook


@dataclass
class Outcome:
    """What went wrong after rows were removed: per thread, the hook's exception; per object
    key, the storage failure. Empty when everything went through."""

    hook_failures: dict[str, BaseException] = field(default_factory=dict)
    file_failures: dict[str, BaseException] = field(default_factory=dict)
    files_deleted: int = 0

    def add(self, other: Outcome) -> None:
        self.hook_failures.update(other.hook_failures)
        self.file_failures.update(other.file_failures)
        self.files_deleted += other.files_deleted

    def raise_storage(self, *, rows_deleted: bool | None = True) -> None:
        """Raise a :class:`StorageError` naming every file that could not be deleted
        (:class:`StorageTimeoutError` when one of them timed out); ``rows_deleted`` says
        whether their rows are gone (after a removal), kept (False: files first, call again)
        or absent (None: files no row refers to)."""
        if not self.file_failures:
            return
        keys = list(self.file_failures)
        first = self.file_failures[keys[0]]
        timed_out = any(isinstance(e, StorageTimeoutError) for e in self.file_failures.values())
        kind = StorageTimeoutError if timed_out else StorageError
        what = (f"{len(keys)} stored file(s) no row refers to could not be deleted"
                if rows_deleted is None else
                f"rows deleted, but {len(keys)} stored file(s) could not be deleted"
                if rows_deleted else
                f"nothing deleted: {len(keys)} stored file(s) could not be deleted (the rows "
                "are kept; call again once the storage answers)")
        raise kind(mask_url(f"{what} (first: {keys[0]}: {first!r})"), detail=keys) from first


async def bounded(make: Callable[[], Awaitable[Any]], seconds: float) -> tuple[bool, Any]:
    """``(True, result)`` of ``make()``, or ``(False, None)`` when it did not end within
    ``seconds``: then its task is cancelled and left behind, not awaited (a call running in a
    worker thread, or one that ignores cancellation, must not hold up the caller). Raises what
    the call raises."""
    task = asyncio.ensure_future(make())
    try:
        done, _ = await asyncio.wait({task}, timeout=max(seconds, 0.0))
    except BaseException:
        task.cancel()
        raise
    if task in done:
        return True, task.result()
    task.cancel()
    # retrieved once it ends, so an abandoned call's late exception is not reported as lost
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    return False, None


def _left(seconds: float) -> float:
    """``seconds``, or less: what is left of the caller's deadline (``call_budget``)."""
    end = call_end()
    if end is None:
        return seconds
    return min(seconds, end - asyncio.get_running_loop().time())


async def _delete_file(storage: BaseStorageClient, key: str, seconds: float) -> Any:
    ended, result = await bounded(lambda: storage.delete_file(key), _left(seconds))
    if not ended:
        error = StorageTimeoutError(
            f"{type(storage).__name__}.delete_file of {key!r} did not finish within "
            f"{seconds:g} s", detail=key)
        error.abandoned = True  # the client's call may still be running
        raise error
    return result


async def _delete_all(keys: list[str], storage: BaseStorageClient, seconds: float,
                      outcome: Outcome) -> None:
    results = await asyncio.gather(*(_delete_file(storage, k, seconds) for k in keys),
                                   return_exceptions=True)
    for key, result in zip(keys, results, strict=True):
        if isinstance(result, BaseException):
            if not isinstance(result, Exception):
                raise result
            outcome.file_failures[key] = result
        else:
            outcome.files_deleted += 1  # False: already absent, which is the goal


async def delete_files_first(object_keys: list[str], storage: BaseStorageClient | None, *,
                             storage_timeout: float = DEFAULT_TIMEOUT) -> Outcome:
    """Delete the stored files of rows that are still there, before the rows (so a storage
    outage leaves the rows, and with them the keys, for a second run). Collects failures; the
    caller raises them (``raise_storage(rows_deleted=False)``) and keeps the rows."""
    outcome = Outcome()
    keys = list(dict.fromkeys(k for k in object_keys if k))
    if keys and storage is not None:
        await _delete_all(keys, storage, storage_timeout, outcome)
    return outcome


async def finish_removal(removed: Removed, storage: BaseStorageClient | None,
                         hook: OnDelete | None, *, storage_timeout: float = DEFAULT_TIMEOUT,
                         hook_timeout: float = DEFAULT_HOOK_TIMEOUT,
                         deleted: frozenset[str] | set[str] = frozenset()) -> Outcome:
    """After ``removed``'s rows are committed: delete its files (those not in ``deleted``,
    the files deleted before the rows), then call the hook for each of its threads, up to
    :data:`HOOK_CONCURRENCY` at a time. Each file delete is bounded by ``storage_timeout`` (and
    the caller's deadline), each hook call by ``hook_timeout``. Collects failures instead of
    raising, so the caller decides when (a purge at the very end); a ``BaseException``
    (cancellation) is raised."""
    outcome = Outcome()
    keys = [k for k in dict.fromkeys(removed.object_keys) if k and k not in deleted]
    if keys and storage is not None:
        await _delete_all(keys, storage, storage_timeout, outcome)
    if hook is not None:
        gate = asyncio.Semaphore(HOOK_CONCURRENCY)

        async def call(thread_id: str, user_id: str | None) -> None:
            async with gate:
                try:
                    ended, _ = await bounded(
                        functools.partial(_call_hook, hook, thread_id, user_id), hook_timeout)
                except Exception as exc:
                    outcome.hook_failures[thread_id] = exc
                    return
            if not ended:
                outcome.hook_failures[thread_id] = TimeoutExceededError(
                    f"the on_delete hook for thread {thread_id} did not finish within "
                    f"{hook_timeout:g} s (on_delete_timeout)", detail=thread_id)

        await asyncio.gather(*(call(thread_id, user_id)
                               for thread_id, user_id in removed.threads))
    return outcome


async def _call_hook(hook: OnDelete, thread_id: str, user_id: str | None) -> None:
    called = hook(thread_id, user_id)
    if inspect.isawaitable(called):
        await called


def check_hook_timeout(value: object) -> float:
    """``on_delete_timeout``: a positive, finite number of seconds."""
    return check_timeout(value, "on_delete_timeout")
