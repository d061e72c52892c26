"""Retention: ``await layer.purge(older_than=...)`` / ``chainlit-orm purge``.

A thread expires when its last activity (its latest user message; its creation while it has
none) is older than ``older_than``. By default shared threads (Chainlit's ``is_shared``) and
threads holding a favorited step are kept, as is any thread whose metadata has one of
``keep_metadata`` set to true. With the trash on (``soft_delete=``) a purge also removes the
threads trashed longer ago than the window, whatever the keep rules say.

Written once over the ``Backend`` protocol: the backend removes one batch at a time
(:meth:`purge_expired`: bounded memory, bounded lock time, exactly once across concurrent purges)
and returns a cursor. With a storage, files go first (:mod:`chainlit_orm.lifecycle.batches`): a
batch's threads and object keys are read (``keys_only``), the files deleted, then the threads
still expired are removed (:meth:`remove_expired`), then the files of rows that arrived
meanwhile, then the hook. A storage failure stops the purge with a
:class:`~chainlit_orm.errors.StorageError`, the batch's rows (and keys) kept for the next run. A
hook that fails does not stop the purge: it goes on, and raises
:class:`~chainlit_orm.errors.OnDeleteError` once at the end naming every thread whose hook failed.

A thread a user message reaches between its files' deletion and its rows' keeps its rows (its
history, as the expiry re-check requires) without the files just deleted: the window is one
round of storage deletes, on a thread inactive for the whole retention period.

**Orphan files.** A stored object can outlive its row: an element write whose outcome is unknown
(a timeout) keeps its object by design (issue 14), and DynamoDB's TTL removes items, not files.
So every purge also sweeps the storage, when the client can list it
(:class:`~chainlit_orm.storage.protocols.ListableStorage`): on DynamoDB the objects of threads
that no longer exist (``sweep_orphans``). On SQL, only when asked (``orphan_grace``, CLI
``--orphan-grace AGE``): the element files under ``threads/`` that no element row refers to and
that are older than ``orphan_grace`` (an upload whose row is still being written is younger),
when the client also reports ages (:class:`~chainlit_orm.storage.protocols.AgedStorage`). Off
by default because a storage can be shared: a database copied with ``copy --user`` onto the
same storage, or a staging app beside production, refers to files this database does not, and
the sweep cannot tell them from orphans (an outside attack deleted another store's file that
way). Ask for it only when no other store uses the storage's ``threads/`` prefix. Either sweep's
listing of the storage is one storage call of the purge, bounded by its ``timeout`` (else the
layer's): a black-holed storage held ``purge(timeout=2)`` for 20 s while the client's own bound
(ten times its timeout) was all there was (an outside attack).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from chainlit_orm.defaults import DEFAULT_PURGE_BATCH
from chainlit_orm.errors import InvalidInputError
from chainlit_orm.lifecycle.batches import Batches
from chainlit_orm.lifecycle.records import ENTITIES, ExpiryRule, Removed
from chainlit_orm.models.types import format_timestamp, parse_timestamp, utc_now

if TYPE_CHECKING:
    from chainlit_orm.lifecycle.records import LifecycleLayer

__all__ = ["DEFAULT_BATCH", "DEFAULT_ORPHAN_GRACE", "PurgeReport", "parse_age", "purge"]

#: Threads per batch (one transaction on SQL).
DEFAULT_BATCH = DEFAULT_PURGE_BATCH
#: How old a stored element file without a row must be before a SQL purge removes it: longer
#: than any upload waits for its row write (the layers' ``timeout``, 30 s by default).
DEFAULT_ORPHAN_GRACE = timedelta(hours=1)
#: The prefix every element file of the layers is stored under (``models.rules``).
ELEMENT_PREFIX = "threads"
#: Thread ids a dry run lists.
SAMPLE = 10
#: The longest age accepted (100 years): ``now - age`` must stay a valid datetime, and an age
#: beyond any real retention policy is a typo that should be refused, not an OverflowError.
MAX_AGE = timedelta(days=36_525)


def parse_age(text: str) -> timedelta:
    """``90d``, ``12h``, ``30m``, ``2w`` (a positive whole number and a unit) as a timedelta.

    Raises:
        InvalidInputError: anything else.
    """
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    # ASCII digits only: str.isdigit() accepts "²", which int() then refuses with a ValueError.
    match = re.fullmatch(r"([0-9]{1,12})([smhdwSMHDW])", text)
    if match is None or int(match.group(1)) <= 0:
        raise InvalidInputError(
            f"an age is a positive whole number and a unit (s, m, h, d, w), e.g. 90d: {text!r}")
    value, unit = int(match.group(1)), match.group(2).lower()
    # Compare in the unit itself: timedelta(days=10**11) raises OverflowError before any check.
    if value > MAX_AGE / timedelta(**{units[unit]: 1}):
        raise InvalidInputError(f"an age is at most {MAX_AGE.days} days: {text!r}")
    return timedelta(**{units[unit]: value})


@dataclass
class PurgeReport:
    """What a purge removed (or, dry, would remove)."""

    dry_run: bool
    active_before: str | None
    trashed_before: str | None
    keep: list[str]
    batch: int
    batches: int = 0
    removed: Removed = field(default_factory=Removed)
    orphan_partitions: int = 0
    orphan_files: int = 0
    unreferenced_files: int = 0
    orphan_grace: timedelta | None = None

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.removed.counts)

    @property
    def thread_ids(self) -> list[str]:
        return [thread_id for thread_id, _ in self.removed.threads]

    def lines(self) -> list[str]:
        """The report as the CLI prints it."""
        out = []
        if self.active_before:
            kept = ", ".join(self.keep) if self.keep else "nothing"
            out.append(f"threads expire when last active before {self.active_before}; "
                       f"kept: {kept}")
        if self.trashed_before:
            out.append(f"trashed threads expire when trashed before {self.trashed_before}")
        verb = "would remove" if self.dry_run else "removed"
        counts = ", ".join(f"{name} {self.removed.counts.get(name, 0)}" for name in ENTITIES
                           if name != "user")
        out.append(f"{verb} {counts} in {self.batches} batch(es) of up to {self.batch} threads")
        if self.orphan_partitions:
            out.append(f"{verb} the items of {self.orphan_partitions} thread(s) whose thread item "
                       "is gone (DynamoDB's TTL removed it)")
        if self.orphan_files:
            out.append(f"{verb} {self.orphan_files} stored file(s) whose thread no longer exists")
        if self.unreferenced_files and self.orphan_grace is not None:
            out.append(f"{verb} {self.unreferenced_files} stored element file(s) no row refers "
                       f"to, older than {_age_text(self.orphan_grace)}")
        if self.dry_run:
            sample = self.thread_ids[:SAMPLE]
            if sample:
                more = len(self.thread_ids) - len(sample)
                out.append("threads: " + ", ".join(sample) + (f" (+{more} more)" if more else ""))
            out.append("dry run: nothing changed")
        return out


def _age_text(age: timedelta) -> str:
    seconds = int(age.total_seconds())
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


async def purge(
    layer: LifecycleLayer,
    *,
    older_than: timedelta | None,
    keep_shared: bool = True,
    keep_favorites: bool = True,
    keep_metadata: Sequence[str] = (),
    dry_run: bool = False,
    batch: int = DEFAULT_BATCH,
    now: datetime | str | None = None,
    timeout: float | None = None,  # noqa: ASYNC109
    orphan_grace: timedelta | None = None,
) -> PurgeReport:
    """Remove expired threads (and, with the trash on, expired trashed ones); see the module
    docstring. ``now`` fixes the reference time (tests, reproducible dry runs). ``timeout``:
    seconds each batch may take (:mod:`chainlit_orm.lifecycle.batches`); ``orphan_grace``: the
    age past which a SQL purge removes a stored element file no row refers to (None, the
    default: no such sweep; see the module docstring for why it is opt-in).

    Raises:
        InvalidInputError: a non-positive ``older_than``, ``batch`` or ``orphan_grace``, or an
            ``older_than`` above :data:`MAX_AGE`.
        OnDeleteError: the hook failed for some removed threads (all of them are removed).
        StorageError: stored files could not be deleted: before their rows (the purge stopped
            there, the rows kept; run it again), or, for rows written meanwhile, after them;
            or the orphan sweep could not list the storage (:class:`StorageTimeoutError`
            past ``timeout``, else past the layer's ``timeout``; nothing of it deleted).
        TimeoutExceededError: a batch ran past ``timeout`` (run the purge again).
    """
    if older_than is not None and not timedelta(0) < older_than <= MAX_AGE:
        raise InvalidInputError(f"older_than must be positive and at most {MAX_AGE.days} days, "
                                f"got {older_than}")
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 10_000:
        raise InvalidInputError(f"batch must be an int in 1..10000, got {batch!r}")
    if orphan_grace is not None and (not isinstance(orphan_grace, timedelta)
                                     or orphan_grace <= timedelta(0)):
        raise InvalidInputError(f"orphan_grace must be a positive timedelta, got "
                                f"{orphan_grace!r}")
    moment = parse_timestamp(now if now is not None else utc_now())
    rules: list[ExpiryRule] = []
    trash = layer.soft_delete
    if trash is not None:
        rules.append(ExpiryRule(trashed_before=format_timestamp(moment - trash)))
    if older_than is not None:
        rules.append(ExpiryRule(active_before=format_timestamp(moment - older_than),
                                keep_shared=keep_shared, keep_favorites=keep_favorites,
                                keep_metadata=tuple(keep_metadata)))
    keep = (["shared"] if keep_shared else []) + (["favorites"] if keep_favorites else []) + [
        f"metadata.{key}" for key in keep_metadata]
    report = PurgeReport(dry_run, rules[-1].active_before if older_than is not None else None,
                         rules[0].trashed_before if trash is not None else None, keep, batch,
                         orphan_grace=orphan_grace)
    run = Batches(layer, timeout, "purge")
    backend = run.backend
    for rule in rules:
        after: Any = None
        while True:
            with run.batch():
                if dry_run or layer.storage is None:
                    removed, after = await backend.purge_expired(rule, batch=batch, after=after,
                                                                 dry_run=dry_run)
                    if not dry_run:
                        run.outcome.add(await run.finish(removed))
                else:
                    seen, cursor = await backend.purge_expired(rule, batch=batch, after=after,
                                                               keys_only=True)
                    ids = [thread_id for thread_id, _ in seen.threads]
                    removed = await run.remove(functools.partial(_same, seen),
                                               functools.partial(backend.remove_expired, rule,
                                                                 ids))
                    after = cursor
            report.batches += 1
            report.removed.add(removed)
            if after is None:
                break
    outcome = run.outcome
    report.removed.counts["file"] = (len(report.removed.object_keys) if dry_run
                                     else outcome.files_deleted)
    with run.batch():
        # what the store's own expiry left (DynamoDB's TTL; (0, 0) on SQL, which has none)
        report.orphan_partitions, report.orphan_files = await backend.sweep_orphans(
            layer.storage, dry_run=dry_run, storage_timeout=run.listing_timeout)
        # SQL: element files no row refers to (an upload whose row write had an unknown
        # outcome). Ages against the clock, not ``now``: a test's or a dry run's reference time
        # in the future must not make a file whose row is being written look abandoned.
        if orphan_grace is not None:
            report.unreferenced_files = await _sweep_unreferenced(
                run, orphan_grace, parse_timestamp(utc_now()), dry_run=dry_run)
    outcome.raise_storage()
    failed = outcome.hook_error(report)
    if failed is not None:
        raise failed from failed.first
    return report


async def _same(removed: Removed) -> Removed:
    """The keys already read with the batch (``keys_only``): nothing to read again."""
    return removed


async def _sweep_unreferenced(run: Batches, grace: timedelta, moment: datetime, *,
                              dry_run: bool) -> int:
    """SQL: remove the element files under :data:`ELEMENT_PREFIX` that no element row refers
    to and that were last modified more than ``grace`` before ``moment``; how many (dry: would
    be). Needs a client that lists with ages (:class:`AgedStorage`); with another one (or
    none) nothing is swept. Offloaded texts and sidecars are not element files: left alone.

    Raises:
        StorageError: a listing or a delete failed (the files not deleted stay for next time).
    """
    from chainlit_orm.lifecycle.hooks import storage_call
    from chainlit_orm.storage.protocols import AgedStorage

    storage = run.storage
    if not isinstance(storage, AgedStorage) or await run.backend.known_object_keys([]) is None:
        return 0  # no ages to go by, or a backend that sweeps its own files (DynamoDB)
    cutoff = moment - grace
    ages = await storage_call(storage, "list_modified", ELEMENT_PREFIX,
                              lambda: storage.list_modified(ELEMENT_PREFIX),
                              run.listing_timeout, early=True)
    old = [key for key, modified in sorted(ages.items())
           if _element_file(key) and modified is not None and modified < cutoff]
    if not old:
        return 0
    known = await run.backend.known_object_keys(old) or set()
    doomed = [key for key in old if key not in known]
    if dry_run or not doomed:
        return len(doomed)
    outcome = await run.finish(Removed(object_keys=doomed))
    outcome.raise_storage(rows_deleted=None)
    return outcome.files_deleted


def _element_file(key: str) -> bool:
    """``threads/{thread id}/files/{element id}``: where the layers store an element's file."""
    parts = key.split("/")
    return len(parts) == 4 and parts[0] == ELEMENT_PREFIX and parts[2] == "files" and all(parts)
