"""The SQL backend's data-lifecycle primitives: erase, purge, trash (:mod:`chainlit_orm.lifecycle`).

A mixin of :class:`~chainlit_orm.layers.sql.SQLBackend`, kept in its own module so the lifecycle
rules (which threads expire, what an erasure removes, the hook and the files) stay in
:mod:`chainlit_orm.lifecycle`, written once over the ``Backend`` protocol, and each method here
is one small, statement-level primitive.

Invariants:

* **A batch is one transaction**, and its size bounds both memory and the time any row lock is
  held: the thread rows of a purge batch are locked (``FOR UPDATE SKIP LOCKED`` on PostgreSQL and
  MySQL/MariaDB; SQLite has one writer, taken with ``BEGIN IMMEDIATE``), their children and then
  the threads are deleted, and the transaction commits. An app write that meets a locked thread
  (a step's foreign-key check takes a share lock on it) waits for at most that one batch.
* **Exactly once across processes.** A purge skips the thread rows another purge has locked, and
  a row it locked is gone when it commits, so two purges never both delete (or both report, or
  both call the hook for) one thread. A row skipped because an app write held it is left for the
  next run: it was being written to.
* **Statement shapes are fixed**: id lists are bound as ``IN (:i0, ..., :iN)`` padded with NULL
  to a power of two (the statement runner compiles each shape once; it has no expanding binds).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from chainlit_orm.layers.deadline import DEFAULT_TIMEOUT
from chainlit_orm.layers.sqlexec import TxScript, json_path
from chainlit_orm.lifecycle.records import ExpiryRule, Removed
from chainlit_orm.models.types import utc_now

if TYPE_CHECKING:
    from chainlit.data.storage_clients.base import BaseStorageClient

    from chainlit_orm.layers.sqlexec import Statement

#: What ``self`` is in these methods: the SQLBackend this class is mixed into. ``Any``,
#: because a mixin's ``self`` cannot be annotated with its subclass (mypy), nor can the
#: subclass be its base (a cycle); ``tests/lifecycle`` runs every primitive on every backend.
_SQLSelf = Any

__all__ = ["SQLLifecycle"]

#: The largest id list one statement binds; longer lists are split.
MAX_IDS = 512


def _padded(n: int) -> int:
    """The statement shape for ``n`` ids: the next power of two (at least 1)."""
    size = 1
    while size < n:
        size *= 2
    return size


def _id_params(ids: Sequence[str], size: int) -> dict[str, Any]:
    return {f"i{k}": (ids[k] if k < len(ids) else None) for k in range(size)}


class SQLLifecycle:
    """Lifecycle primitives of :class:`~chainlit_orm.layers.sql.SQLBackend` (see the module
    docstring). Every method runs through the backend's retries and typed errors (``run``); a
    retried transaction starts over, which is safe because each one re-reads what it deletes."""

    # ------------------------------------------------------------- statements

    def _deletes(self: _SQLSelf, size: int) -> tuple[Statement, ...]:
        """The children, then the threads, of ``size`` bound thread ids: elements (returning
        their object keys), feedback, steps, threads."""
        t, s, e, f = self.threads, self.steps, self.elements, self.feedbacks

        def build() -> tuple[Any, ...]:
            def ids(column: sa.Column[Any]) -> Any:
                return column.in_([sa.bindparam(f"i{k}", type_=t.c.id.type) for k in range(size)])

            return (sa.delete(e).where(ids(e.c.threadId)).returning(e.c.objectKey),
                    sa.delete(f).where(ids(f.c.threadId)),
                    sa.delete(s).where(ids(s.c.threadId)),
                    sa.delete(t).where(ids(t.c.id)))

        stmts: tuple[Statement, ...] = self._cached(("lifecycle_deletes", size), build)
        return stmts

    def _counts(self: _SQLSelf, size: int) -> tuple[Statement, ...]:
        """What :meth:`_deletes` would remove, counted: element object keys, feedback, steps."""
        t, s, e, f = self.threads, self.steps, self.elements, self.feedbacks

        def build() -> tuple[Any, ...]:
            def ids(column: sa.Column[Any]) -> Any:
                return column.in_([sa.bindparam(f"i{k}", type_=t.c.id.type) for k in range(size)])

            return (sa.select(e.c.objectKey).where(ids(e.c.threadId)),
                    sa.select(sa.func.count().label("n")).select_from(f).where(ids(f.c.threadId)),
                    sa.select(sa.func.count().label("n")).select_from(s).where(ids(s.c.threadId)))

        stmts: tuple[Statement, ...] = self._cached(("lifecycle_counts", size), build)
        return stmts

    def _remove_rows(self: _SQLSelf, rows: list[dict[str, Any]], *, dry_run: bool,
                     keys_only: bool = False) -> TxScript[Removed]:
        """Statements (a transaction's tail) that remove the threads ``rows`` name (``id`` and
        ``userId`` each) with every row in them; dry: count them instead; ``keys_only``: read
        their element object keys and nothing else (the files deleted before the rows)."""
        removed = Removed(threads=[(str(r["id"]), _str_or_none(r.get("userId"))) for r in rows])
        ids = [thread_id for thread_id, _ in removed.threads]
        for start in range(0, len(ids), MAX_IDS):
            chunk = ids[start:start + MAX_IDS]
            size = _padded(len(chunk))
            params = _id_params(chunk, size)
            if keys_only:
                keys = yield ("fetch", self._counts(size)[0], params)
            elif dry_run:
                keys_q, feedback_q, steps_q = self._counts(size)
                keys = yield ("fetch", keys_q, params)
                removed.counts["element"] += len(keys)
                removed.counts["feedback"] += int((yield ("fetch", feedback_q, params))[0]["n"])
                removed.counts["step"] += int((yield ("fetch", steps_q, params))[0]["n"])
                removed.counts["thread"] += len(chunk)
            else:
                elements, feedback, steps, threads = self._deletes(size)
                keys = yield ("fetch", elements, params)
                removed.counts["element"] += len(keys)
                removed.counts["feedback"] += yield ("execute", feedback, params)
                removed.counts["step"] += yield ("execute", steps, params)
                removed.counts["thread"] += yield ("execute", threads, params)
            removed.object_keys += [k["objectKey"] for k in keys if k["objectKey"]]
        return removed

    def _tombstone_script(self: _SQLSelf, ids: Sequence[str], *, lock: bool = True
                          ) -> TxScript[None]:
        """The head of an erasing transaction: tombstones for ``ids`` (the thread ids it is
        about to delete), so that no write, in any process, creates one of them again.

        Why none can: every statement that can create a thread row does so only ``WHERE NOT
        EXISTS`` a tombstone (``SQLBackend._not_erased``), and each dialect makes that check
        meet this transaction:

        * PostgreSQL: ``LOCK TABLE threads IN SHARE MODE`` first. It waits for every write of
          ``threads`` already running (those see no tombstone: they finish, and the deletes
          below see their rows) and holds off new ones until this transaction commits; a
          statement takes its snapshot after its table lock, so each of those sees the
          tombstones. Without it, a READ COMMITTED upsert whose snapshot predates the commit
          would wait for the thread row, find it deleted and insert it again. App writes of
          ``threads`` wait for at most this one batch.
        * MySQL/MariaDB: ``INSERT ... SELECT`` reads the tombstones with shared next-key locks
          (REPEATABLE READ), so a check and a tombstone's insert of one id wait for each other.
          The tombstones are inserted before the thread rows are locked, so a writer holding
          the check's lock can still finish its write (no deadlock), which the deletes see.
        * SQLite: one writer at a time; the check and the tombstones never overlap.

        ``erasedAt`` is now; the rows hold nothing else (never the user's id or identifier)."""
        if self.dialect == "postgresql" and lock:
            yield ("execute", self._cached("lock_threads_share", lambda: sa.text(
                "LOCK TABLE "
                + self.auto.dialect.identifier_preparer.format_table(self.threads)
                + " IN SHARE MODE")), {})
        x = self.tombstones
        for start in range(0, len(ids), MAX_IDS):
            chunk = list(ids[start:start + MAX_IDS])
            size = _padded(len(chunk))
            # padded with the last id again: the duplicate rows are conflicts, and do nothing
            chunk += [chunk[-1]] * (size - len(chunk))
            stmt = self._cached(("tombstones", size), lambda size=size: self._upsert(
                x, ["id", "erasedAt"], ["id"], None, rows=size))
            now = utc_now()
            params: dict[str, Any] = {}
            for k, thread_id in enumerate(chunk):
                params[f"id__{k}"] = thread_id
                params[f"erasedAt__{k}"] = now
            yield ("execute", stmt, params)

    async def _in_transaction(self: _SQLSelf, script: Any) -> Any:
        async def op() -> Any:
            async with self.raw.connect(write=True) as conn:
                return await conn.run_transaction(script)

        return await self.run(op)

    # ---------------------------------------------------------------- threads

    async def get_thread_owner(self: _SQLSelf, thread_id: str) -> dict[str, Any] | None:
        """The thread's ``id`` and ``userId``, trashed or not; None when there is no thread."""
        t = self.threads
        stmt = self._cached("lifecycle_owner", lambda: sa.select(t.c.id, t.c.userId).where(
            t.c.id == sa.bindparam("tid", type_=t.c.id.type)))

        async def op() -> dict[str, Any] | None:
            async with self.raw.connect() as conn:
                rows = await conn.fetch(stmt, {"tid": thread_id})
            return rows[0] if rows else None

        result: dict[str, Any] | None = await self.run(op)
        return result

    async def remove_threads(self: _SQLSelf, thread_ids: Sequence[str], *,
                             dry_run: bool = False, keys_only: bool = False) -> Removed:
        """Remove these threads (those that exist) and every row in them, in one transaction;
        dry: count them; ``keys_only``: read their object keys alone. Their thread rows are
        locked first, so a concurrent purge skips them. They are remembered as erased, so a
        late write to them is refused, in this process (:meth:`_mark_erased`) and in any other
        (their tombstones, written by this same transaction: :meth:`_tombstone_script`)."""
        dry_run = dry_run or keys_only
        t = self.threads
        size = _padded(max(1, min(len(thread_ids), MAX_IDS)))
        if len(thread_ids) > MAX_IDS:
            total = Removed()
            for start in range(0, len(thread_ids), MAX_IDS):
                total.add(await self.remove_threads(thread_ids[start:start + MAX_IDS],
                                                    dry_run=dry_run, keys_only=keys_only))
            return total

        def build() -> Any:
            stmt = sa.select(t.c.id, t.c.userId).where(t.c.id.in_(
                [sa.bindparam(f"i{k}", type_=t.c.id.type) for k in range(size)]))
            return stmt if dry_run else stmt.with_for_update(of=t)

        select = self._cached(("lifecycle_threads", size, dry_run), build)
        params = _id_params(list(thread_ids), size)
        if not dry_run:
            self._mark_erased(thread_ids)

        def script() -> TxScript[Removed]:
            if not dry_run:  # erased: before the rows are locked (see _tombstone_script)
                yield from self._tombstone_script(thread_ids)
            rows = yield ("fetch", select, params)
            result: Removed = (yield from self._remove_rows(rows, dry_run=dry_run,
                                                            keys_only=keys_only))
            return result

        removed: Removed = await self._in_transaction(script)
        return removed

    # ------------------------------------------------------------------ users

    def _mark_erased(self: _SQLSelf, thread_ids: Sequence[str]) -> None:
        """Remember threads an erasure removes (see ``SQLBackend._erased``)."""
        for thread_id in thread_ids:
            self._erased[thread_id] = None
            self._erased.move_to_end(thread_id)
        while len(self._erased) > 10_000:
            self._erased.popitem(last=False)

    async def user_thread_ids(self: _SQLSelf, identifier: str
                              ) -> tuple[str | None, list[str]]:
        """The user's id (None: no such user) and the ids of every thread naming them, trashed
        ones included: by owner id through the owner's index, or, with no user row left (an
        interrupted erasure), by the identifier the threads carry. Also every thread row that
        has a tombstone, whoever it names: only code older than the tombstones (an app process
        still on the previous release during a rolling deploy) can write one, as an ownerless
        stub no owner lookup finds, so any erasure, a rerun included, removes it."""
        _users, t, x = self.users, self.threads, self.tombstones
        revived = self._cached("lifecycle_revived", lambda: sa.select(t.c.id).join(
            x, x.c.id == t.c.id).order_by(t.c.id))
        by_owner = self._cached("lifecycle_by_owner", lambda: sa.select(t.c.id).where(
            t.c.userId == sa.bindparam("uid", type_=t.c.userId.type)).order_by(t.c.id))
        by_name = self._cached("lifecycle_by_identifier", lambda: sa.select(t.c.id).where(
            t.c.userIdentifier == sa.bindparam("ident", type_=t.c.userIdentifier.type)
        ).order_by(t.c.id))
        lookup = self._user_by_identifier()

        async def op() -> tuple[str | None, list[str]]:
            async with self.raw.connect() as conn:
                found = await conn.fetch(lookup, {"identifier": identifier})
                user_id = str(found[0]["id"]) if found else None
                owned = await conn.fetch(by_owner, {"uid": user_id}) if user_id else []
                named = await conn.fetch(by_name, {"ident": identifier})
                back = await conn.fetch(revived, {})
            return user_id, sorted({str(r["id"]) for r in (*owned, *named, *back)})

        result: tuple[str | None, list[str]] = await self.run(op)
        return result

    async def remove_user(self: _SQLSelf, identifier: str, *, dry_run: bool = False
                          ) -> Removed:
        """Remove the user row, with any thread still naming them (one written since their
        threads were removed), in one transaction; dry: count the user row only."""
        users, t = self.users, self.threads

        def build() -> tuple[Any, Any, Any]:
            ident = sa.bindparam("identifier", type_=users.c.identifier.type)
            user = sa.select(users.c.id).where(users.c.identifier == ident)
            stragglers = sa.select(t.c.id, t.c.userId).where(sa.or_(
                t.c.userId == sa.bindparam("uid", type_=t.c.userId.type),
                t.c.userIdentifier == sa.bindparam("ident", type_=t.c.userIdentifier.type)))
            delete = sa.delete(users).where(users.c.identifier == ident)
            return (user if dry_run else user.with_for_update(),
                    stragglers if dry_run else stragglers.with_for_update(of=t), delete)

        user_q, stragglers_q, delete_q = self._cached(("lifecycle_user", dry_run), build)

        def script() -> TxScript[Removed]:
            if self.dialect == "postgresql" and not dry_run:
                # the barrier of _tombstone_script, before the stragglers are read: no write of
                # threads runs until this commits
                yield from self._tombstone_script([])
            found = yield ("fetch", user_q, {"identifier": identifier})
            if dry_run:
                return Removed(counts={"user": len(found)} | _no_rows())
            user_id = str(found[0]["id"]) if found else None
            rows = yield ("fetch", stragglers_q, {"uid": user_id, "ident": identifier})
            straggler_ids = [str(row["id"]) for row in rows]
            self._mark_erased(straggler_ids)  # before they go
            if straggler_ids:
                yield from self._tombstone_script(straggler_ids, lock=False)
            removed = yield from self._remove_rows(rows, dry_run=False)
            removed.counts["user"] += yield ("execute", delete_q, {"identifier": identifier})
            result: Removed = removed
            return result

        removed: Removed = await self._in_transaction(script)
        return removed

    # ------------------------------------------------------------------ purge

    def _expired(self: _SQLSelf, rule: ExpiryRule, *, first: bool, dry_run: bool,
                 among: int = 0) -> Any:
        """The statement selecting one batch of expired threads (``id``, ``userId``, the sort
        time as ``at``), oldest first, from the keyset cursor on, locked unless dry; with
        ``among``, only among that many ids bound as ``i0``.. (no cursor)."""
        t, s = self.threads, self.steps
        trash = rule.trashed_before is not None
        keys = rule.keep_keys if not trash else ()
        shape = ("lifecycle_expired", trash, first, dry_run, len(keys),
                 rule.keep_favorites and not trash, among)

        def build() -> Any:
            at = t.c.deletedAt if trash else t.c.activityAt
            cutoff = sa.bindparam("cutoff", type_=at.type)
            conditions: list[Any] = [at.is_not(None), at < cutoff]
            if among:
                conditions.append(t.c.id.in_(
                    [sa.bindparam(f"i{k}", type_=t.c.id.type) for k in range(among)]))
            if not first:
                after_at = sa.bindparam("after_at", type_=at.type)
                after_id = sa.bindparam("after_id", type_=t.c.id.type)
                conditions.append(sa.or_(at > after_at, sa.and_(at == after_at,
                                                                t.c.id > after_id)))
            for k in range(len(keys)):
                conditions.append(sa.not_(self._meta_true(t.c.metadata, k)))
            if rule.keep_favorites and not trash:
                conditions.append(~sa.exists().where(s.c.threadId == t.c.id,
                                                     s.c.favorite.is_(True)))
            stmt = (sa.select(t.c.id, t.c.userId, at.label("at")).where(*conditions)
                    .order_by(at, t.c.id).limit(sa.bindparam("lim")))
            if not dry_run:
                stmt = stmt.with_for_update(of=t, skip_locked=True)
            return stmt

        return self._cached(shape, build)

    def _meta_true(self: _SQLSelf, column: sa.Column[Any], k: int) -> Any:
        """``column``'s top-level key bound as ``k{k}`` holds JSON ``true`` (a string "true"
        does not count); false for a NULL document or a missing key."""
        key = sa.bindparam(f"k{k}", type_=sa.Text)
        if self.dialect == "postgresql":
            from sqlalchemy.dialects import postgresql

            member = sa.cast(column, postgresql.JSONB).op("->")(key)
            return sa.func.coalesce(member == sa.cast(sa.literal("true"), postgresql.JSONB),
                                    sa.false())
        if self.dialect == "sqlite":
            return sa.func.coalesce(sa.func.json_type(column, key) == "true", sa.false())
        # MariaDB compares a JSON string "true" equal to 'true': the type decides
        value = sa.func.json_extract(column, key)
        return sa.func.coalesce(sa.and_(sa.func.json_type(value) == "BOOLEAN", value == "true"),
                                sa.false())

    def _key_param(self: _SQLSelf, key: str) -> str:
        if self.dialect == "postgresql":
            return key
        return json_path(key)

    async def purge_expired(self: _SQLSelf, rule: ExpiryRule, *, batch: int,
                            after: tuple[str, str] | None, dry_run: bool = False,
                            keys_only: bool = False
                            ) -> tuple[Removed, tuple[str, str] | None]:
        """One batch of the threads ``rule`` expires, oldest first after the cursor ``after``:
        locked (``SKIP LOCKED``), removed with their rows and committed in one transaction; dry:
        counted, nothing locked; ``keys_only``: the batch's threads and object keys, nothing
        counted or locked (a purge with a storage deletes those files first, then removes the
        threads with :meth:`remove_expired`). Returns what was removed and the cursor of the
        next batch (None when this one was the last)."""
        dry_run = dry_run or keys_only
        select = self._expired(rule, first=after is None, dry_run=dry_run)
        keys = rule.keep_keys if rule.trashed_before is None else ()
        params: dict[str, Any] = {"cutoff": rule.trashed_before or rule.active_before,
                                  "lim": batch}
        params |= {f"k{k}": self._key_param(key) for k, key in enumerate(keys)}
        if after is not None:
            params["after_at"], params["after_id"] = after

        def script() -> TxScript[tuple[Removed, tuple[str, str] | None]]:
            rows = yield ("fetch", select, params)
            removed = yield from self._remove_rows(rows, dry_run=dry_run, keys_only=keys_only)
            cursor = (rows[-1]["at"], str(rows[-1]["id"])) if len(rows) == batch else None
            return removed, cursor

        result: tuple[Removed, tuple[str, str] | None] = await self._in_transaction(script)
        return result

    async def remove_expired(self: _SQLSelf, rule: ExpiryRule, thread_ids: Sequence[str]
                             ) -> Removed:
        """Remove those of these threads (a ``keys_only`` batch of :meth:`purge_expired`, whose
        files were deleted first) that ``rule`` still expires, in one transaction, locked with
        ``SKIP LOCKED`` as a batch is: exactly once across purges, and a thread a user message
        reached since keeps its history (finding F of issue 17)."""
        total = Removed()
        keys = rule.keep_keys if rule.trashed_before is None else ()
        for start in range(0, len(thread_ids), MAX_IDS):
            chunk = list(thread_ids[start:start + MAX_IDS])
            size = _padded(len(chunk))
            select = self._expired(rule, first=True, dry_run=False, among=size)
            params: dict[str, Any] = {"cutoff": rule.trashed_before or rule.active_before,
                                      "lim": len(chunk)} | _id_params(chunk, size)
            params |= {f"k{k}": self._key_param(key) for k, key in enumerate(keys)}

            def script(select: Any = select, params: dict[str, Any] = params
                       ) -> TxScript[Removed]:
                rows = yield ("fetch", select, params)
                result: Removed = yield from self._remove_rows(rows, dry_run=False)
                return result

            total.add(await self._in_transaction(script))
        return total

    async def known_object_keys(self: _SQLSelf, object_keys: Sequence[str]) -> set[str]:
        """Which of these object keys an element row refers to (the orphan sweep keeps them)."""
        e = self.elements
        found: set[str] = set()
        for start in range(0, len(object_keys), MAX_IDS):
            chunk = list(object_keys[start:start + MAX_IDS])
            size = _padded(len(chunk))
            stmt = self._cached(("lifecycle_known_keys", size), lambda size=size: sa.select(
                e.c.objectKey).where(e.c.objectKey.in_(
                    [sa.bindparam(f"i{k}", type_=e.c.objectKey.type) for k in range(size)])))
            params = _id_params(chunk, size)

            async def op(stmt: Any = stmt, params: dict[str, Any] = params) -> list[Any]:
                async with self.raw.connect() as conn:
                    rows: list[Any] = await conn.fetch(stmt, params)
                    return rows

            found.update(str(r["objectKey"]) for r in await self.run(op))
        return found

    # ------------------------------------------------------------------ trash

    async def trash_thread(self: _SQLSelf, thread_id: str, at: str) -> bool:
        """Mark the thread deleted at ``at`` (every read leaves it out from now on); False when
        there is no live thread of that id."""
        t = self.threads
        stmt = self._cached("lifecycle_trash", lambda: sa.update(t).where(
            t.c.id == sa.bindparam("tid", type_=t.c.id.type), t.c.deletedAt.is_(None)
        ).values(deletedAt=sa.bindparam("at", type_=t.c.deletedAt.type)))

        async def op() -> bool:
            async with self.raw.connect(write=True) as conn:
                return bool(await conn.execute(stmt, {"tid": thread_id, "at": at}))

        result: bool = await self.run(op)
        return result

    async def restore_thread(self: _SQLSelf, thread_id: str, since: str) -> bool:
        """Bring back a thread trashed at or after ``since`` (within the window); False when
        there is none."""
        t = self.threads
        stmt = self._cached("lifecycle_restore", lambda: sa.update(t).where(
            t.c.id == sa.bindparam("tid", type_=t.c.id.type),
            t.c.deletedAt >= sa.bindparam("since", type_=t.c.deletedAt.type),
        ).values(deletedAt=None))

        async def op() -> bool:
            async with self.raw.connect(write=True) as conn:
                return bool(await conn.execute(stmt, {"tid": thread_id, "since": since}))

        result: bool = await self.run(op)
        return result

    # ---------------------------------------------------------------- orphans

    async def sweep_orphans(self: _SQLSelf, storage: BaseStorageClient | None, *,
                            dry_run: bool = False,
                            storage_timeout: float = DEFAULT_TIMEOUT) -> tuple[int, int]:
        """Nothing to sweep: a SQL database expires nothing by itself (no TTL), and a thread's
        rows go with it in one transaction (its children first), so no row outlives its thread,
        and its files are deleted by the removal that reports it (a failed object delete is
        that removal's :class:`~chainlit_orm.errors.StorageError`). (0, 0), without a
        statement."""
        return 0, 0


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)


def _no_rows() -> dict[str, int]:
    from chainlit_orm.lifecycle.records import ENTITIES

    return {name: 0 for name in ENTITIES if name != "user"}
