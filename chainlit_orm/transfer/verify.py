"""Verification: the destination holds exactly what the source holds, thread by thread.

Both sides are read again, the source in its id order and the destination by the same ids, and
compared on per-entity counts and on each thread's canonical digest
(:func:`~chainlit_orm.transfer.records.thread_digest`: the thread, its steps, elements with their
files' SHA-256, and feedback). The first difference stops the comparison with a
:class:`~chainlit_orm.errors.VerificationError` naming the thread and what differs in it. Rows a
source cannot hand over (counted in ``Source.skipped``) are in neither side, so they are not
compared; derived columns are recomputed on both sides by the same code, so they are not either.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from chainlit_orm.errors import VerificationError
from chainlit_orm.transfer._tasks import gather_bounded
from chainlit_orm.transfer.progress import NoProgress, Progress
from chainlit_orm.transfer.records import (
    CHILD_ENTITIES,
    ENTITY_NAMES,
    FILE_KEY,
    ThreadData,
    canonical_json,
    thread_digest,
)
from chainlit_orm.transfer.sources import Scope, Source, Store, file_info

__all__ = ["VerifyResult", "add_file_hashes", "verify"]

#: Files read (and hashed) at once while verifying.
FILE_READS = 8


@dataclass
class VerifyResult:
    threads: int = 0
    counts: dict[str, int] = field(default_factory=dict)


async def add_file_hashes(store: Source, batch: Sequence[ThreadData]) -> None:
    """Set ``$file`` on every element of ``batch`` that has none yet, by reading its object."""
    todo = [e for d in batch for e in d.elements if FILE_KEY not in e]

    async def one(element: dict[str, Any]) -> None:
        data = await store.read_file(element) if element.get("objectKey") else None
        element[FILE_KEY] = file_info(data) if element.get("objectKey") else None

    await gather_bounded(FILE_READS, (one(e) for e in todo))


def _difference(src: ThreadData, dst: ThreadData) -> str:
    """What differs between two versions of a thread, in words (the first difference)."""
    if canonical_json(src.thread) != canonical_json(dst.thread):
        keys = sorted(k for k in set(src.thread) | set(dst.thread)
                      if src.thread.get(k) != dst.thread.get(k))
        return f"the thread's {', '.join(keys) or 'record'} differ"
    for entity in CHILD_ENTITIES:
        ours = {str(r["id"]): r for r in src.children(entity)}
        theirs = {str(r["id"]): r for r in dst.children(entity)}
        if missing := sorted(set(ours) - set(theirs)):
            return f"{entity} {missing[0]} is missing from the destination"
        if extra := sorted(set(theirs) - set(ours)):
            return f"the destination has {entity} {extra[0]}, which the source does not"
        for row_id in sorted(ours):
            a, b = ours[row_id], theirs[row_id]
            if canonical_json(a) != canonical_json(b):
                keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                return f"{entity} {row_id} differs in {', '.join(keys)}"
    return "their canonical forms differ"


async def verify(src: Source, dst: Store, scope: Scope, *, files: bool, batch: int,
                 progress: Progress | None = None) -> VerifyResult:
    """Compare ``dst`` with ``src`` over ``scope`` (see the module docstring).

    Raises:
        VerificationError: the first differing user, thread or count.
    """
    progress = progress or NoProgress()
    result = VerifyResult(counts=dict.fromkeys(ENTITY_NAMES.values(), 0))
    theirs = dict.fromkeys(ENTITY_NAMES.values(), 0)
    async for users in src.iter_users(scope, batch):
        found = {str(u["id"]): u for u in await dst.fetch_users(users)}
        for user in users:
            other = found.get(str(user["id"]))
            if other is None:
                raise VerificationError(
                    f"user {user['identifier']!r} ({user['id']}) is missing from {dst.shown}",
                    detail=str(user["id"]))
            if canonical_json(other) != canonical_json(user):
                keys = sorted(k for k in user if user.get(k) != other.get(k))
                raise VerificationError(
                    f"user {user['identifier']!r} ({user['id']}) differs in {dst.shown}: "
                    f"{', '.join(keys)}", detail=str(user["id"]))
        result.counts["users"] += len(users)
        theirs["users"] += len(found)
        progress.advance("users", len(users))
    async for threads in src.iter_threads(scope, None, batch):
        copies = {d.id: d for d in await dst.fetch_threads([d.id for d in threads])}
        if files:
            await add_file_hashes(src, threads)
            await add_file_hashes(dst, list(copies.values()))
        for data in threads:
            copy = copies.get(data.id)
            if copy is None:
                raise VerificationError(f"thread {data.id} is missing from {dst.shown}",
                                        detail=data.id)
            if thread_digest(data, files=files) != thread_digest(copy, files=files):
                raise VerificationError(
                    f"thread {data.id} differs in {dst.shown}: {_difference(data, copy)}",
                    detail=data.id)
            for name, count in data.counts().items():
                result.counts[name] += count
            for name, count in copy.counts().items():
                theirs[name] += count
            for name in ("threads", *(ENTITY_NAMES[e] for e in CHILD_ENTITIES)):
                progress.advance(name, data.counts()[name])
        result.threads += len(threads)
    _same_counts(result.counts, theirs, dst.shown)
    return result


def _same_counts(ours: Mapping[str, int], theirs: Mapping[str, int], shown: str) -> None:
    for name, count in ours.items():
        if theirs.get(name, 0) != count:
            raise VerificationError(
                f"{name}: the source has {count}, {shown} has {theirs.get(name, 0)}",
                detail=name)
