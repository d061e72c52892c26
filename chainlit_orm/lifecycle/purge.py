"""Retention: ``await layer.purge(older_than=...)`` / ``chainlit-orm purge``.

A thread expires when its last activity (its latest user message; its creation while it has
none) is older than ``older_than``. By default shared threads (Chainlit's ``is_shared``) and
threads holding a favorited step are kept, as is any thread whose metadata has one of
``keep_metadata`` set to true. With the trash on (``soft_delete=``) a purge also removes the
threads trashed longer ago than the window, whatever the keep rules say.

Written once over the ``Backend`` protocol: the backend removes one batch at a time
(:meth:`purge_expired`: bounded memory, bounded lock time, exactly once across concurrent purges)
and returns a cursor; here each batch's files are deleted and the hook called once its rows are
committed. A hook that fails does not stop the purge: it goes on, and raises
:class:`~chainlit_orm.errors.OnDeleteError` once at the end naming every thread whose hook failed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from chainlit_orm.errors import InvalidInputError, OnDeleteError
from chainlit_orm.lifecycle.hooks import Outcome, finish_removal
from chainlit_orm.lifecycle.records import ENTITIES, ExpiryRule, Removed
from chainlit_orm.models.types import format_timestamp, parse_timestamp, utc_now

if TYPE_CHECKING:
    from chainlit_orm.lifecycle.records import LifecycleLayer

__all__ = ["DEFAULT_BATCH", "PurgeReport", "parse_age", "purge"]

#: Threads per batch (one transaction on SQL).
DEFAULT_BATCH = 500
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
        if self.dry_run:
            sample = self.thread_ids[:SAMPLE]
            if sample:
                more = len(self.thread_ids) - len(sample)
                out.append("threads: " + ", ".join(sample) + (f" (+{more} more)" if more else ""))
            out.append("dry run: nothing changed")
        return out


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
) -> PurgeReport:
    """Remove expired threads (and, with the trash on, expired trashed ones); see the module
    docstring. ``now`` fixes the reference time (tests, reproducible dry runs).

    Raises:
        InvalidInputError: a non-positive ``older_than`` or ``batch``, or an ``older_than``
            above :data:`MAX_AGE`.
        OnDeleteError: the hook failed for some removed threads (all of them are removed).
        StorageError: some stored files could not be deleted (their rows are removed).
    """
    if older_than is not None and not timedelta(0) < older_than <= MAX_AGE:
        raise InvalidInputError(f"older_than must be positive and at most {MAX_AGE.days} days, "
                                f"got {older_than}")
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 10_000:
        raise InvalidInputError(f"batch must be an int in 1..10000, got {batch!r}")
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
                         rules[0].trashed_before if trash is not None else None, keep, batch)
    outcome = Outcome()
    backend = layer.backend
    for rule in rules:
        after: Any = None
        while True:
            removed, after = await backend.purge_expired(rule, batch=batch, after=after,
                                                         dry_run=dry_run)
            report.batches += 1
            if not dry_run:
                outcome.add(await finish_removal(removed, layer.storage, layer.on_delete))
            report.removed.add(removed)
            if after is None:
                break
    report.removed.counts["file"] = (len(report.removed.object_keys) if dry_run
                                     else outcome.files_deleted)
    # what the store's own expiry left (DynamoDB's TTL; (0, 0) on SQL, which has none)
    report.orphan_partitions, report.orphan_files = await backend.sweep_orphans(
        layer.storage, dry_run=dry_run)
    outcome.raise_storage()
    if outcome.hook_failures:
        raise OnDeleteError(outcome.hook_failures, report=report) from next(
            iter(outcome.hook_failures.values()))
    return report
