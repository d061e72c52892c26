"""The search index is what serves a search, and it stays right through every write.

* Plan shape, not time: the layer's own search statement, as it runs, read through SQLite's FTS5
  trigram tables (the threads then fetched by primary key, not the user's whole list) and through
  PostgreSQL's trigram GIN indexes; a term shorter than a trigram reads no search index.
* The FTS5 tables stay consistent with their tables (FTS5's own ``integrity-check``) through
  inserts, updates of the text, renames, step and thread deletes (cascading), and ``VACUUM``.
* MariaDB's folded columns compare binary (``utf8mb4_bin``).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from chainlit.types import Pagination, ThreadFilter
from chainlit.user import User
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from chainlit_orm import SQLDataLayer
from chainlit_orm.schema_gen.search import FTS_PENDING_LIMIT
from tests.fixtures.legacy import temp_mariadb_db, temp_postgres_db, temp_sqlite_url
from tests.fixtures.search import check_fts_integrity, pending_rows, split_rows
from tests.sql.conftest import new_id

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]


async def _seed(layer: SQLDataLayer, threads: int = 30) -> tuple[str, dict[str, str]]:
    """A user with ``threads`` threads, each with a user message and an assistant message;
    thread 7 alone says "Needle". Returns the user id and thread id -> name, newest first."""
    user = await layer.create_user(User(identifier=f"ix-{new_id()}", metadata={}))
    assert user is not None
    names: dict[str, str] = {}
    for i in range(threads):
        tid = new_id()
        names[tid] = f"{WORDS[i % 8]} {WORDS[(i * 3) % 8]} {i}"
        await layer.update_thread(tid, name=names[tid], user_id=user.id)
        for kind, body in _messages(i):
            await layer.create_step({
                "id": new_id(), "threadId": tid, "type": kind, "name": "n", "output": body,
                "streaming": False, "createdAt": f"2026-01-01T00:00:{i:02d}.000000Z"})
    return user.id, dict(reversed(names.items()))


def _messages(i: int) -> list[tuple[str, str]]:
    return [("user_message", f"question {i} about {WORDS[i % 8]}"),
            ("assistant_message", "The Needle is here" if i == 7 else
             f"answer {i} about {WORDS[(i + 1) % 8]}")]


def _reference(names: dict[str, str], term: str) -> list[str]:
    """Names of the seeded threads matching ``term`` (folded substring), newest first."""
    needle = term.casefold()
    return [name for name in names.values()
            if needle in name.casefold() or any(
                needle in body.casefold() for _, body in _messages(int(name.rsplit(" ", 1)[1])))]


async def _search(layer: SQLDataLayer, user_id: str, term: str) -> list[str]:
    page = await layer.list_threads(Pagination(first=50),
                                    ThreadFilter(userId=user_id, search=term))
    return [t["name"] for t in page.data]


def _statement(layer: SQLDataLayer, user_id: str, term: str) -> tuple[str, list[Any]]:
    """The SQL and arguments the layer ran for its last search of ``term`` (first page, no
    cursor, no feedback filter): the statement it cached for that shape."""
    backend = layer.sql
    folded = term.casefold()
    via_index = backend._indexable(folded)
    key = ("list", False, True, False, via_index, True, "activity")
    prepared = backend._cache[key].prepared
    params = {"lim": 51, "uid": user_id, "pattern": backend._search_pattern(folded)}
    return prepared.sql, prepared.args(params)


async def test_sqlite_search_reads_the_fts5_trigram_tables(tmp_path: Path) -> None:
    async with temp_sqlite_url(tmp_path) as url:
        layer = SQLDataLayer(url)
        try:
            user_id, names = await _seed(layer)
            needle = [n for n in names.values() if n.endswith(" 7")]
            assert await _search(layer, user_id, "NEEDLE") == needle == _reference(names,
                                                                                  "NEEDLE")
            sql, args = _statement(layer, user_id, "NEEDLE")
            path = url.removeprefix("sqlite+aiosqlite:///")
            with sqlite3.connect(path) as raw:
                plan = [row[-1] for row in raw.execute("EXPLAIN QUERY PLAN " + sql, args)]
            assert "SCAN threads_name_fts VIRTUAL TABLE INDEX 0:G0" in plan, plan
            assert "SCAN steps_output_fts VIRTUAL TABLE INDEX 0:G0" in plan, plan
            # the rows still on the pending lists are fetched by rowid from the list, not by
            # scanning the table (a join was planned as "SCAN listed")
            for fts in ("threads_name_fts", "steps_output_fts"):
                assert (f"USING ROWID SEARCH ON TABLE {fts}_pending FOR IN-OPERATOR") in plan, plan
            assert plan.count("SEARCH listed USING INTEGER PRIMARY KEY (rowid=?)") == 2, plan
            assert "SCAN listed" not in plan, plan
            # the candidates are fetched by primary key; the user's list is read only by the
            # scan that takes over when the candidates are too many
            assert "SEARCH threads USING INDEX sqlite_autoindex_threads_1 (id=?)" in plan, plan
            assert not [line for line in plan if "ix_threads_deleted" in line], plan

            short = await _search(layer, user_id, "ho")
            assert short == _reference(names, "ho") and len(short) > 3
            sql, args = _statement(layer, user_id, "ho")
            with sqlite3.connect(path) as raw:
                plan = [row[-1] for row in raw.execute("EXPLAIN QUERY PLAN " + sql, args)]
            assert not [line for line in plan if "fts" in line], plan
        finally:
            await layer.close()


async def test_postgres_search_reads_the_trigram_gin_indexes() -> None:
    async with temp_postgres_db() as url:
        layer = SQLDataLayer(url, create_schema=True)
        try:
            user_id, names = await _seed(layer)
            needle = [n for n in names.values() if n.endswith(" 7")]
            assert await _search(layer, user_id, "NEEDLE") == needle == _reference(names,
                                                                                  "NEEDLE")
            sql, args = _statement(layer, user_id, "NEEDLE")
            assert await _search(layer, user_id, "ho") == _reference(names, "ho")
            short_sql, short_args = _statement(layer, user_id, "ho")
        finally:
            await layer.close()
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
        try:
            await conn.execute("ANALYZE")
            # a 30-thread table is read faster without an index: forbid the sequential scan to
            # see which indexes the statement *can* use
            await conn.execute("SET enable_seqscan = off")
            plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + sql, *args))
            assert "Bitmap Index Scan on ix_threads_name_trgm" in plan, plan
            assert "Bitmap Index Scan on ix_steps_output_trgm" in plan, plan
            # (how the few candidates meet the user's threads is the planner's choice: by primary
            # key, or along the user's index when the user has few threads, as here)
            short = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + short_sql,
                                                             *short_args))
            assert "trgm" not in short, short
            assert "ix_threads_user_activity" in short, short
        finally:
            await conn.close()


async def test_sqlite_plain_list_reads_the_users_index_not_the_trash_index(
    tmp_path: Path
) -> None:
    """A user's list is read along the user's index, and the trash index (partial: ``deletedAt
    IS NOT NULL``) serves the purge of the trash. (A full trash index was chosen by SQLite's
    planner, which keeps no statistics, for the ``deletedAt IS NULL`` of a search: the test
    above catches that.)"""
    async with temp_sqlite_url(tmp_path) as url:
        layer = SQLDataLayer(url)
        try:
            user_id, names = await _seed(layer, threads=5)
            page = await layer.list_threads(Pagination(first=20), ThreadFilter(userId=user_id))
            assert [t["name"] for t in page.data] == list(names.values())
            prepared = layer.sql._cache[("list", False, True, True, False, True,
                                         "activity")].prepared
            sql, args = prepared.sql, prepared.args({"lim": 21, "uid": user_id})
            path = url.removeprefix("sqlite+aiosqlite:///")
            with sqlite3.connect(path) as raw:
                plan = [row[-1] for row in raw.execute("EXPLAIN QUERY PLAN " + sql, args)]
                trash_plan = [row[-1] for row in raw.execute(
                    "EXPLAIN QUERY PLAN SELECT id FROM threads WHERE \"deletedAt\" < ?",
                    ["2026-01-01"])]
            assert plan[0] == "SEARCH threads USING INDEX ix_threads_user_activity (userId=?)", plan
            assert not [line for line in plan if "ix_threads_deleted" in line], plan
            # the purge of the trash still reads only the trashed threads through it
            assert trash_plan == ["SEARCH threads USING INDEX ix_threads_deleted (deletedAt<?)"]
        finally:
            await layer.close()


async def test_fts5_tables_stay_consistent_through_every_write_and_vacuum(
    tmp_path: Path
) -> None:
    async with temp_sqlite_url(tmp_path) as url:
        path = url.removeprefix("sqlite+aiosqlite:///")
        layer = SQLDataLayer(url)
        try:
            user_id, names = await _seed(layer, threads=12)
            check_fts_integrity(path)
            ids = list(names)
            # rename a thread; rewrite a message; add a tool step (not searched); delete a step
            await layer.update_thread(ids[0], name="Renamed ÉCLAIR")
            step = {"id": new_id(), "threadId": ids[1], "type": "assistant_message", "name": "n",
                    "output": "first draft", "streaming": False,
                    "createdAt": "2026-02-01T00:00:00.000000Z"}
            await layer.create_step(step)
            await layer.update_step({**step, "output": "Final Wörding"})
            await layer.create_step({**step, "id": new_id(), "type": "tool",
                                     "output": "tool wording"})
            gone = {**step, "id": new_id(), "output": "short-lived phrase"}
            await layer.create_step(gone)
            await layer.delete_step(gone["id"])
            await layer.delete_thread(ids[2])  # its steps go by the cascading foreign key
            check_fts_integrity(path)
            expected = {
                "éclair": ["Renamed ÉCLAIR"],
                "wörding": [names[ids[1]]],
                "first draft": [],
                "tool wording": [],
                "short-lived": [],
                names[ids[2]]: [],
            }
            for term, want in expected.items():
                assert await _search(layer, user_id, term) == want, term
        finally:
            await layer.close()
        with sqlite3.connect(path) as raw:
            raw.execute("VACUUM")
        check_fts_integrity(path)
        layer = SQLDataLayer(url)
        try:
            for term, want in expected.items():
                assert await _search(layer, user_id, term) == want, term
        finally:
            await layer.close()


async def test_mariadb_folded_columns_compare_binary() -> None:
    async with temp_mariadb_db() as url:
        layer = SQLDataLayer(url, create_schema=True)
        try:
            await layer.sql.ensure_ready()
        finally:
            await layer.close()
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                rows = (await conn.execute(text(
                    "SELECT TABLE_NAME, COLUMN_NAME, CHARACTER_SET_NAME, COLLATION_NAME FROM "
                    "information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND COLUMN_NAME "
                    "LIKE '%Folded' ORDER BY TABLE_NAME"))).all()
        finally:
            await engine.dispose()
        assert [tuple(r) for r in rows] == [
            ("steps", "outputFolded", "utf8mb4", "utf8mb4_bin"),
            ("threads", "nameFolded", "utf8mb4", "utf8mb4_bin"),
        ]


async def test_sqlite_writes_reach_the_index_through_a_pending_list(tmp_path: Path) -> None:
    """A written row is listed, not indexed at once; the write that makes a list
    ``FTS_PENDING_LIMIT`` long indexes the whole list; a search finds listed and indexed rows
    alike; an update of an indexed row takes it out of the index and lists it; a delete takes a
    row off whichever holds it. Exact list lengths, and FTS5's integrity check at the end."""
    async with temp_sqlite_url(tmp_path) as url:
        path = url.removeprefix("sqlite+aiosqlite:///")
        layer = SQLDataLayer(url)
        try:
            user = await layer.create_user(User(identifier=f"pl-{new_id()}", metadata={}))
            assert user is not None
            thread = new_id()
            await layer.update_thread(thread, name="Pending Thread", user_id=user.id)
            steps = [new_id() for _ in range(FTS_PENDING_LIMIT + 44)]
            for i, sid in enumerate(steps):
                await layer.create_step({
                    "id": sid, "threadId": thread, "type": "assistant_message", "name": "n",
                    "output": f"reply number{i:04d}x", "streaming": False,
                    "createdAt": f"2026-03-01T00:00:00.{i:06d}Z"})
            # 300 steps listed: the 256th filled the list and indexed it; 44 are listed
            assert pending_rows(path) == {"threads_name_fts": 1, "steps_output_fts": 44}
            for term in ("number0010x", "number0290x", "pending thread"):  # indexed, listed
                assert await _search(layer, user.id, term) == ["Pending Thread"], term
            assert await _search(layer, user.id, "number0300x") == []

            # an indexed step rewritten: out of the index, onto the list
            await layer.update_step({"id": steps[10], "threadId": thread,
                                     "type": "assistant_message", "name": "n",
                                     "streaming": False, "output": "Rewritten Text"})
            assert pending_rows(path) == {"threads_name_fts": 1, "steps_output_fts": 45}
            assert await _search(layer, user.id, "number0010x") == []
            assert await _search(layer, user.id, "rewritten text") == ["Pending Thread"]
            # a listed step rewritten stays listed once
            await layer.update_step({"id": steps[290], "threadId": thread,
                                     "type": "assistant_message", "name": "n",
                                     "streaming": False, "output": "Second Draft"})
            assert pending_rows(path)["steps_output_fts"] == 45
            assert await _search(layer, user.id, "number0290x") == []
            assert await _search(layer, user.id, "second draft") == ["Pending Thread"]
            # deletes: an indexed step (out of the index), a listed one (off the list)
            await layer.delete_step(steps[20])
            await layer.delete_step(steps[291])
            assert pending_rows(path)["steps_output_fts"] == 44
            assert await _search(layer, user.id, "number0020x") == []
            assert await _search(layer, user.id, "number0291x") == []
        finally:
            await layer.close()
        check_fts_integrity(path)  # indexes the 44 + 1 listed rows, then FTS5's own check
        assert pending_rows(path) == {"threads_name_fts": 0, "steps_output_fts": 0}


async def test_concurrent_sqlite_writes_keep_list_and_index_exact(tmp_path: Path) -> None:
    """50 threads written at once (combined multi-row upserts on SQLite's one writer), each
    step created then rewritten, crossing the list's flush several times: every final text is
    found, no draft is, and the index passes FTS5's integrity check."""
    async with temp_sqlite_url(tmp_path) as url:
        path = url.removeprefix("sqlite+aiosqlite:///")
        layer = SQLDataLayer(url)
        try:
            user = await layer.create_user(User(identifier=f"pc-{new_id()}", metadata={}))
            assert user is not None

            async def one(k: int) -> None:
                tid = new_id()
                await layer.update_thread(tid, name=f"burst {k:02d}", user_id=user.id)
                for j in range(8):
                    step = {"id": new_id(), "threadId": tid, "type": "assistant_message",
                            "name": "n", "output": f"draft{k:02d}q{j}", "streaming": True,
                            "createdAt": f"2026-03-02T00:00:{k:02d}.{j:06d}Z"}
                    await layer.create_step(step)
                    await layer.update_step({**step, "output": f"final{k:02d}q{j}"})

            await asyncio.gather(*(one(k) for k in range(50)))
            for k in (0, 17, 49):
                for j in (0, 7):
                    assert await _search(layer, user.id, f"final{k:02d}q{j}") == [
                        f"burst {k:02d}"]
                    assert await _search(layer, user.id, f"draft{k:02d}q{j}") == []
            # every step row and thread row is indexed or listed, none both; the 256th listing
            # flushed the steps' list once (a step rewritten after that flush was listed again)
            split = split_rows(path)
            assert split["threads_name_fts"] == (0, 50, 0)
            indexed, listed, both = split["steps_output_fts"]
            assert (indexed + listed, both) == (400, 0)
            assert indexed > 0 and listed < FTS_PENDING_LIMIT
        finally:
            await layer.close()
        check_fts_integrity(path)


async def test_postgres_search_generic_plan_reads_only_the_candidates() -> None:
    """asyncpg reuses a prepared statement, and from its sixth run PostgreSQL may run it with a
    generic plan (parameters unknown). For the search that plan walked the user's whole list
    index, probing the candidates per thread (18-30 ms at 10,000 threads, 0.6 ms through the
    candidates): the matching threads are now a materialized CTE. Read under
    ``plan_cache_mode = force_generic_plan``: the user's list index yields no row."""
    async with temp_postgres_db() as url:
        layer = SQLDataLayer(url, create_schema=True)
        try:
            user = await layer.create_user(User(identifier=f"gp-{new_id()}", metadata={}))
            assert user is not None
            for i in range(3):  # 3 threads to find, each with a message
                tid = new_id()
                await layer.update_thread(tid, name=f"Kangaroo {i}", user_id=user.id)
                await layer.create_step({"id": new_id(), "threadId": tid, "name": "n",
                                         "type": "assistant_message", "streaming": False,
                                         "output": "an answer"})
        finally:
            await layer.close()
        # a store like the benchmark's, bulk-written: 50 users with 30 threads each (so a
        # generic plan expects a user to have few) and this user with 10,000 more, none of
        # them matching; two messages per thread
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
        try:
            await conn.execute("""
                INSERT INTO users (id, identifier, metadata, "createdAt")
                SELECT gen_random_uuid(), 'gp-other-' || g, '{}', '2026-01-01' FROM
                generate_series(1, 50) g;
                INSERT INTO threads (id, "createdAt", "activityAt", name, "nameFolded", "userId",
                                     metadata)
                SELECT gen_random_uuid(), '2025-01-01', '2025-01-01', 'other ' || g,
                       'other ' || g, u.id, '{}' FROM users u, generate_series(1, 30) g
                WHERE u.identifier LIKE 'gp-other-%';
                INSERT INTO threads (id, "createdAt", "activityAt", name, "nameFolded", "userId",
                                     metadata)
                SELECT gen_random_uuid(), '2026-06-01', '2026-06-01', 'mine ' || g,
                       'mine ' || g, $1::uuid, '{}' FROM generate_series(1, 10000) g;
                INSERT INTO steps (id, name, type, "threadId", streaming, output, "outputFolded",
                                   "createdAt")
                SELECT gen_random_uuid(), 'n', k, t.id, false, 'text of ' || t.name,
                       'text of ' || t.name, t."createdAt"
                FROM threads t, unnest(ARRAY['user_message', 'assistant_message']) k
                WHERE t.name NOT LIKE 'Kangaroo%';
                ANALYZE;
            """.replace("$1::uuid", f"'{user.id}'::uuid"))
        finally:
            await conn.close()
        layer = SQLDataLayer(url)
        try:
            for _ in range(7):  # past asyncpg's and PostgreSQL's switch to a generic plan
                assert sorted(await _search(layer, user.id, "kangaroo")) == [
                    "Kangaroo 0", "Kangaroo 1", "Kangaroo 2"]
            sql, args = _statement(layer, user.id, "kangaroo")
        finally:
            await layer.close()
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
        try:
            await conn.execute("SET plan_cache_mode = force_generic_plan")
            await conn.execute("PREPARE search AS " + sql)
            literals = ", ".join(str(a) if isinstance(a, int) else
                                 "'" + str(a).replace("'", "''") + "'" for a in args)
            plan = json.loads(await conn.fetchval(
                f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE search({literals})"))[0]["Plan"]
        finally:
            await conn.close()

        def nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
            return [node, *(n for child in node.get("Plans", []) for n in nodes(child))]

        print([(n["Node Type"], n.get("Index Name"), n["Actual Rows"], n["Actual Loops"]) for n in nodes(plan)])
        assert plan["Actual Rows"] == 3
        listed = [n for n in nodes(plan) if n.get("Index Name") == "ix_threads_user_activity"]
        assert sum(n["Actual Rows"] * n["Actual Loops"] for n in listed) == 0, listed
