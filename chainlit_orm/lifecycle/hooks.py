"""The on-delete hook, and what follows every removal: files first gone, then the hook.

An app gives ``on_delete=`` to a layer (``--on-delete pkg.module:attr`` to the CLI): an async
callable ``hook(thread_id, user_id)`` called once for each thread whose data is actually removed,
by ``delete_thread``, ``erase_user`` and ``purge`` alike, after the rows are committed, so the app
can drop the thread from a vector store or a cache. Trashing a thread (``soft_delete=``) removes
nothing: the hook runs when ``purge`` removes it.

A hook that raises is reported, never swallowed: the removal is durable and is not rolled back,
and the caller raises :class:`~chainlit_orm.errors.OnDeleteError` naming every thread whose hook
failed (a purge goes on with its other threads first).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from chainlit_orm.errors import ConfigurationError, StorageError
from chainlit_orm.lifecycle.records import OnDelete, Removed

if TYPE_CHECKING:
    from chainlit.data.storage_clients.base import BaseStorageClient

__all__ = ["OnDelete", "Outcome", "check_hook", "finish_removal", "load_hook"]


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

    def raise_storage(self) -> None:
        """Raise a :class:`StorageError` naming every file that could not be deleted."""
        if not self.file_failures:
            return
        keys = list(self.file_failures)
        first = self.file_failures[keys[0]]
        raise StorageError(
            f"rows deleted, but {len(keys)} stored file(s) could not be deleted (first: "
            f"{keys[0]}: {first!r})", detail=keys) from first


async def finish_removal(removed: Removed, storage: BaseStorageClient | None,
                         hook: OnDelete | None) -> Outcome:
    """After ``removed``'s rows are committed: delete its files, then call the hook for each of
    its threads, one after the other. Collects failures instead of raising, so the caller
    decides when (a purge at the very end); a ``BaseException`` (cancellation) is raised."""
    outcome = Outcome()
    keys = [k for k in removed.object_keys if k]
    if keys and storage is not None:
        results = await asyncio.gather(*(storage.delete_file(k) for k in keys),
                                       return_exceptions=True)
        for key, result in zip(keys, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result
                outcome.file_failures[key] = result
            else:
                outcome.files_deleted += 1  # False: already absent, which is the goal
    if hook is not None:
        for thread_id, user_id in removed.threads:
            try:
                called = hook(thread_id, user_id)
                if inspect.isawaitable(called):
                    await called
            except Exception as exc:
                outcome.hook_failures[thread_id] = exc
    return outcome
