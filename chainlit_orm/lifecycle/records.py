"""What the lifecycle operations exchange with a backend: pure values, no I/O.

Kept apart from the operations (:mod:`chainlit_orm.lifecycle.erase`, :mod:`.purge`) so that the
backends and ``layers/base.py`` can name these types without importing anything that runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ENTITIES", "ExpiryRule", "Removed"]

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
