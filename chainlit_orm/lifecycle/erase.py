"""Erase a user: ``await layer.erase_user(identifier)`` / ``chainlit-orm erase-user``.

Removes the user row, every thread that names the user (as owner, by id or identifier; trashed
threads included) with its steps, elements, feedback and stored files, and reports what it
removed per entity. Written once over the ``Backend`` protocol:

1. the backend lists the user's threads (:meth:`user_thread_ids`);
2. they are removed in batches, files first (:mod:`chainlit_orm.lifecycle.batches`): the
   batch's object keys are read, its files deleted, then its rows (:meth:`remove_threads`, one
   transaction each on SQL), then the files of rows that arrived meanwhile, then the hook;
3. the user row goes last, with any thread written for the user meanwhile
   (:meth:`remove_user`), so an interrupted erasure leaves a user that a second run finds again.

A storage that fails while a batch's files are deleted stops the erasure with a
:class:`~chainlit_orm.errors.StorageError`: that batch's rows (and so its keys) and the user stay,
and running the erasure again once the storage answers completes it. A failing hook does not stop
the erasure: it goes on, and raises :class:`~chainlit_orm.errors.OnDeleteError` at the end, the
rows being gone (as does a file of a row that arrived meanwhile, with a ``StorageError``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from chainlit_orm.errors import InvalidInputError
from chainlit_orm.lifecycle.batches import Batches
from chainlit_orm.lifecycle.records import ENTITIES, Removed

if TYPE_CHECKING:
    from chainlit_orm.lifecycle.records import LifecycleLayer

__all__ = ["ErasureReport", "erase_user"]

#: Threads per ``remove_threads`` call.
ERASE_BATCH = 100


@dataclass
class ErasureReport:
    """What ``erase_user`` removed (or, dry, would remove), per entity."""

    identifier: str
    user_id: str | None
    dry_run: bool
    removed: Removed = field(default_factory=Removed)

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.removed.counts)

    def lines(self) -> list[str]:
        """The report as the CLI prints it."""
        verb = "would remove" if self.dry_run else "removed"
        who = f"user {self.identifier!r}" + (f" (id {self.user_id})" if self.user_id else
                                              " (no user row)")
        counts = ", ".join(f"{name} {self.removed.counts.get(name, 0)}" for name in ENTITIES)
        return [f"erase-user {who}: {verb} {counts}"
                + (" (dry run: nothing changed)" if self.dry_run else "")]


async def erase_user(layer: LifecycleLayer, identifier: str, *, dry_run: bool = False,
                     batch: int = ERASE_BATCH,
                     timeout: float | None = None,  # noqa: ASYNC109
                     ) -> ErasureReport:
    """Erase everything that names the user ``identifier``; see the module docstring.
    ``timeout``: seconds each batch may take (see :mod:`chainlit_orm.lifecycle.batches`).

    Raises:
        InvalidInputError: ``identifier`` is not a non-empty string.
        OnDeleteError: the hook failed for some removed threads (all data is removed).
        StorageError: stored files could not be deleted: before their rows (the erasure
            stopped there; run it again), or, for rows written meanwhile, after them.
        TimeoutExceededError: a batch ran past ``timeout`` (run the erasure again).
    """
    if not isinstance(identifier, str) or not identifier:
        raise InvalidInputError(f"identifier must be a non-empty string, got {identifier!r}")
    run = Batches(layer, timeout, "erase-user")
    backend = run.backend
    with run.batch():
        user_id, thread_ids = await backend.user_thread_ids(identifier)
    report = ErasureReport(identifier, user_id, dry_run)
    for start in range(0, len(thread_ids), batch):
        ids = thread_ids[start:start + batch]
        with run.batch():
            if dry_run:
                removed = await backend.remove_threads(ids, dry_run=True)
            else:
                removed = await run.remove(
                    functools.partial(backend.remove_threads, ids, keys_only=True),
                    functools.partial(backend.remove_threads, ids))
        report.removed.add(removed)
    with run.batch():
        last = await backend.remove_user(identifier, dry_run=dry_run)
        if not dry_run:
            # threads written for the user since they were listed: their files come back
            # with their rows and go now (the rows are gone, so a failure names the keys)
            run.outcome.add(await run.finish(last))
    report.removed.add(last)
    outcome = run.outcome
    report.removed.counts["file"] = (len(report.removed.object_keys) if dry_run
                                     else outcome.files_deleted)
    if not dry_run:
        layer.forget_user(user_id)
    outcome.raise_storage()
    failed = outcome.hook_error(report)
    if failed is not None:
        raise failed from failed.first
    return report
