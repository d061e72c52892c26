"""The on-delete hook, and what follows every removal: files first gone, then the hook.

An app gives ``on_delete=`` to a layer (``--on-delete pkg.module:attr`` to the CLI): an async
callable ``hook(thread_id, user_id)`` called once for each thread whose data is actually removed,
by ``delete_thread``, ``erase_user`` and ``purge`` alike, after the rows are committed, so the app
can drop the thread from a vector store or a cache. Trashing a thread (``soft_delete=``) removes
nothing: the hook runs when ``purge`` removes it.

A hook that raises is reported, never swallowed: the removal is durable and is not rolled back,
and the caller raises :class:`~chainlit_orm.errors.OnDeleteError` naming every thread whose hook
failed (a purge goes on with its other threads first).

**The breaker.** A hook whose service is down hangs until ``on_delete_timeout`` for every thread:
even :data:`HOOK_CONCURRENCY` at a time, a purge of 500 threads waited 32 times the limit (an
outside attack, F4). So once ``on_delete_breaker`` hook calls in a row (default
:data:`DEFAULT_HOOK_BREAKER`) did not finish within ``on_delete_timeout``, the run (one purge,
one erasure) stops calling the hook: each thread left counts as failed without a call (a
:class:`~chainlit_orm.errors.TimeoutExceededError` saying so) and the ``OnDeleteError`` names it
among ``skipped``, with why the breaker opened. Its data is still removed, as with any failing
hook. "In a row" is in the order the calls started: a call that ends, even by raising, closes
the streak of every call started before it (the calls that returned at once of a hook that hangs
on every other call do not leave their slots to hung calls that then time out "in a row", an
outside attack, F6), so the breaker opens once the ``on_delete_breaker`` calls started last since
the last-started call that ended all timed out. A hook that fails fast costs the run nothing, and
its failures are the app's to see, one by one. A call starts only while fewer than
``on_delete_breaker`` calls started since then are in flight or timed out, so when every call
hangs, exactly ``on_delete_breaker`` of them are made, and the run waits about one
``on_delete_timeout`` for them (the price: at most ``on_delete_breaker`` calls of a streak run at
once, when it is below :data:`HOOK_CONCURRENCY`).

A hook that raises :class:`asyncio.CancelledError` (a call cancelled inside it, an HTTP client's)
while the run itself is not being cancelled has failed like any other (an outside attack, F4: it
aborted an erasure half-way, untyped); a cancellation of the run (``Task.cancelling``) goes
through.

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

from chainlit_orm.defaults import DEFAULT_HOOK_BREAKER, DEFAULT_HOOK_TIMEOUT, HOOK_CONCURRENCY
from chainlit_orm.errors import (
    ConfigurationError,
    OnDeleteError,
    StorageError,
    StorageTimeoutError,
    TimeoutExceededError,
    mask_url,
)
from chainlit_orm.layers.deadline import DEFAULT_TIMEOUT, call_end, check_timeout
from chainlit_orm.lifecycle.records import OnDelete, Removed

if TYPE_CHECKING:
    from chainlit.data.storage_clients.base import BaseStorageClient

__all__ = ["DEFAULT_HOOK_BREAKER", "DEFAULT_HOOK_TIMEOUT", "HOOK_CONCURRENCY", "HookBreaker",
           "OnDelete", "Outcome", "bounded", "check_hook", "check_hook_breaker",
           "delete_files_first", "finish_removal", "load_hook", "storage_call"]



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
    #: threads (also in ``hook_failures``) whose hook was not called: the breaker was open
    hooks_skipped: list[str] = field(default_factory=list)
    #: why the breaker opened (None while it is closed)
    breaker: str | None = None

    def add(self, other: Outcome) -> None:
        self.hook_failures.update(other.hook_failures)
        self.file_failures.update(other.file_failures)
        self.files_deleted += other.files_deleted
        self.hooks_skipped.extend(other.hooks_skipped)
        self.breaker = self.breaker or other.breaker

    def hook_error(self, report: object | None = None) -> OnDeleteError | None:
        """The :class:`OnDeleteError` naming every thread whose hook failed or was skipped by
        the breaker (None when every hook call went through)."""
        if not self.hook_failures:
            return None
        return OnDeleteError(self.hook_failures, report=report, skipped=self.hooks_skipped,
                             breaker=self.breaker)

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


class HookBreaker:
    """One run's on-delete hook calls: at most :data:`HOOK_CONCURRENCY` in flight, and none
    once ``limit`` calls in a row timed out (the module docstring's breaker).

    "In a row" is in the order the calls started, not the order they ended (an outside attack,
    F6: with a hook that hung on every other call, the calls that returned at once freed their
    slots for hung ones, which then timed out one after the other and opened the breaker). The
    *streak* is every call started after the last-started call that ended by returning or
    raising; each of its calls is in flight or timed out.

    Invariant: ``len(streak) <= limit`` and ``running <= HOOK_CONCURRENCY``; ``opened`` is set
    (and stays) once the streak holds ``limit`` calls that all timed out.
    """

    def __init__(self, limit: int = DEFAULT_HOOK_BREAKER,
                 hook_timeout: float = DEFAULT_HOOK_TIMEOUT) -> None:
        self.limit = check_hook_breaker(limit)
        self.hook_timeout = hook_timeout
        self.running = 0
        self.started = 0
        #: the streak: start index -> timed out (False: still in flight)
        self.streak: dict[int, bool] = {}
        self.opened: str | None = None
        self._changed = asyncio.Event()

    @property
    def timeouts(self) -> int:
        """Calls of the streak that timed out."""
        return sum(self.streak.values())

    async def acquire(self) -> int | None:
        """Wait for a turn to call the hook: the call's start index, which the call must give
        to :meth:`release`; None when the breaker is open (do not call it)."""
        while self.opened is None:
            if self.running < HOOK_CONCURRENCY and len(self.streak) < self.limit:
                self.running += 1
                index = self.started
                self.started += 1
                self.streak[index] = False
                return index
            self._changed.clear()
            await self._changed.wait()
        return None

    def release(self, index: int, *, timed_out: bool) -> None:
        """Call ``index`` ended (``timed_out``: abandoned at ``on_delete_timeout``)."""
        self.running -= 1
        if not timed_out:
            # it ended: the calls started before it no longer count in a row
            self.streak = {i: t for i, t in self.streak.items() if i > index}
        elif index in self.streak:
            self.streak[index] = True
            if len(self.streak) >= self.limit and all(self.streak.values()):
                self.opened = (f"the breaker opened after {self.limit} on_delete hook call(s) "
                               f"in a row did not finish within {self.hook_timeout:g} s "
                               "(on_delete_breaker)")
        self._changed.set()

    def skipped(self, thread_id: str) -> TimeoutExceededError:
        """The failure of a thread whose hook the open breaker did not call."""
        return TimeoutExceededError(
            f"the on_delete hook was not called for thread {thread_id}: {self.opened}",
            detail=thread_id)


def check_hook_breaker(value: object) -> int:
    """``on_delete_breaker``: a whole number of hook calls, at least 1.

    Raises:
        ConfigurationError: anything else.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(
            f"on_delete_breaker must be a whole number of hook calls, at least 1, got {value!r}",
            detail="on_delete_breaker")
    return value


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


async def storage_call(storage: object, action: str, key: str,
                       make: Callable[[], Awaitable[Any]], seconds: float, *,
                       early: bool = False) -> Any:
    """``make()``, one call to ``storage`` (``action`` on ``key``) made by a removal or a sweep,
    bounded by ``seconds`` (the layer's ``timeout``) or by what is left of the caller's deadline
    (a purge's or an erasure's ``timeout=``: :func:`~chainlit_orm.layers.deadline.call_budget`),
    whichever ends first, whatever the client's own limits (an outside attack held a purge
    with ``timeout=2`` for 20 s on a storage listing bounded by the client alone). Past it the
    call is abandoned (:func:`bounded`).

    ``early`` (a listing): bounded by the caller's deadline, the call gets all but a tenth of
    what is left (at most 1 s less), so its own typed error, which names the storage call,
    comes before the deadline of the backend call it runs in (DynamoDB's orphan sweep lists
    the storage inside ``sweep_orphans``), not after.

    Raises:
        StorageTimeoutError: not done within the bound (``abandoned``: it may still run).
    """
    left = _left(seconds)
    limit = left if left >= seconds or not early else left - min(left / 10, 1.0)
    ended, result = await bounded(make, limit)
    if not ended:
        bound = (f"{seconds:g} s (the layer's timeout)" if left >= seconds else
                 f"{max(limit, 0.0):.3g} s (what was left of the deadline)")
        error = StorageTimeoutError(
            f"{type(storage).__name__}.{action} of {key!r} did not finish within {bound}",
            detail=key)
        error.abandoned = True  # the client's call may still be running
        raise error
    return result


async def _delete_file(storage: BaseStorageClient, key: str, seconds: float) -> Any:
    return await storage_call(storage, "delete_file", key, lambda: storage.delete_file(key),
                              seconds)


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
                         deleted: frozenset[str] | set[str] = frozenset(),
                         breaker: HookBreaker | None = None) -> Outcome:
    """After ``removed``'s rows are committed: delete its files (those not in ``deleted``,
    the files deleted before the rows), then call the hook for each of its threads, up to
    :data:`HOOK_CONCURRENCY` at a time, through ``breaker`` (one per run, shared by its
    batches; a new one with the defaults when None). Each file delete is bounded by
    ``storage_timeout`` (and the caller's deadline), each hook call by ``hook_timeout``.
    Collects failures instead of raising, so the caller decides when (a purge at the very
    end); a ``BaseException`` (cancellation) is raised."""
    outcome = Outcome()
    keys = [k for k in dict.fromkeys(removed.object_keys) if k and k not in deleted]
    if keys and storage is not None:
        await _delete_all(keys, storage, storage_timeout, outcome)
    if hook is not None:
        gate = breaker if breaker is not None else HookBreaker(hook_timeout=hook_timeout)

        async def call(thread_id: str, user_id: str | None) -> None:
            index = await gate.acquire()
            if index is None:
                outcome.hook_failures[thread_id] = gate.skipped(thread_id)
                outcome.hooks_skipped.append(thread_id)
                return
            ended = True
            try:
                ended, _ = await bounded(
                    functools.partial(_call_hook, hook, thread_id, user_id), hook_timeout)
            except Exception as exc:
                outcome.hook_failures[thread_id] = exc
            except asyncio.CancelledError as exc:
                if _being_cancelled():
                    raise  # the run itself is cancelled: that must go through
                # raised by the hook (a call cancelled inside it): a hook failure like any other
                # (an outside attack, F4: it aborted an erasure half-way, untyped)
                outcome.hook_failures[thread_id] = exc
            finally:
                gate.release(index, timed_out=not ended)
            if not ended:
                outcome.hook_failures[thread_id] = TimeoutExceededError(
                    f"the on_delete hook for thread {thread_id} did not finish within "
                    f"{hook_timeout:g} s (on_delete_timeout)", detail=thread_id)

        await asyncio.gather(*(call(thread_id, user_id)
                               for thread_id, user_id in removed.threads))
        outcome.breaker = gate.opened
    return outcome


def _being_cancelled() -> bool:
    """Whether the current task has a cancellation request pending (``Task.cancelling``): a
    CancelledError caught while it has none was raised by the awaited call itself, not by a
    cancellation of this task (asyncio.gather cancels its children when it is cancelled)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _call_hook(hook: OnDelete, thread_id: str, user_id: str | None) -> None:
    called = hook(thread_id, user_id)
    if inspect.isawaitable(called):
        await called


def check_hook_timeout(value: object) -> float:
    """``on_delete_timeout``: a positive, finite number of seconds."""
    return check_timeout(value, "on_delete_timeout")
