"""SCALE: chainlit-orm's SQL layer on PostgreSQL stores of growing size, loaded once by COPY.

A store of S threads (S a multiple of :data:`CHUNK`, at least 10,000) holds :data:`STEPS` steps
per thread (1,000,000 threads: 10,000,000 steps) in the layer's own schema (``chainlit_orm.migrate``)
and these users:

- the *big* user: every 10th thread (S/10: 100,000 threads at S = 1,000,000);
- the *probe* user: :data:`PROBE` threads at every S (the same user size in every store, so its
  figures move with the store only);
- the rest spread over S/100 other users.

Thread ``i`` is created at ``T0 + i`` s; its steps ``j`` at ``+ j/100`` s, cycling user message,
tool step, assistant message, so its activity (latest user message) is ``i + 0.09`` s: the list's
order is ``i`` descending, and every expected answer is computed from ``i`` alone. Ids are UUIDs
built from ``i`` and ``j`` (:func:`thread_id`, :func:`step_id`); rows are the layer's own: the
column values its SQLAlchemy types bind for Chainlit's ``to_dict()`` shapes
(:func:`RowMaker`).

Cache: each store is a database ``bench_scale_<S>_<key>``, ``key`` a hash of the dataset
definition (:data:`DATASET_VERSION` and the constants here) and the layer's generated PostgreSQL
DDL, so a schema change gets a new store and a rerun reuses a complete one. Loading is resumable
and idempotent: the store is loaded in chunks of :data:`CHUNK` threads, each one transaction that
COPYs the chunk's threads and steps and records the chunk in ``bench_scale_progress``; a rerun
skips recorded chunks. Secondary indexes of threads and steps are dropped before the load (their
definitions kept in ``bench_scale_indexes``) and rebuilt after it; foreign keys stay declared but
are not checked row by row during the load (``session_replication_role = replica``: the rows
satisfy them by construction, and the counts are checked). The table ``bench_scale_complete`` is
written last: a store without it is not used.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import statistics
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from . import dataset, rawdb
from .memory import RssSampler, mib, rss_bytes

DATASET_VERSION = 1
STEPS = 10  # per thread
CHUNK = 10_000  # threads per loader transaction
PROBE = 1_000  # threads of the probe user, at every store size
OTHER_PER_USER = 100  # the other users: S / OTHER_PER_USER of them
PAGE = 35
TEXT = "lorem ipsum dolor sit amet"
LABELS = ("first page", "page 10", "get_thread")
WHO = ("probe", "big")


def thread_id(i: int) -> str:
    return f"5ca1e001-0000-4000-8000-{i:012x}"


def step_id(i: int, j: int) -> str:
    return f"5ca1e002-{j:04x}-4000-8000-{i:012x}"


def user_id(u: int) -> str:
    return f"5ca1e003-0000-4000-8000-{u:012x}"


def index_of(tid: str) -> int:
    """``i`` of :func:`thread_id` ``(i)``."""
    return int(tid.rsplit("-", 1)[1], 16)


@dataclass(frozen=True)
class Store:
    """The definition of one store (see the module docstring)."""

    threads: int

    def __post_init__(self) -> None:
        if self.threads < CHUNK or self.threads % CHUNK:
            raise ValueError(f"a SCALE store holds a multiple of {CHUNK} threads: {self.threads}")

    @property
    def n_other(self) -> int:
        return self.threads // OTHER_PER_USER

    @property
    def n_users(self) -> int:
        return 2 + self.n_other

    def owner(self, i: int) -> int:
        """User number of thread ``i``: 0 big, 1 probe, 2.. the others."""
        if i % 10 == 0:
            return 0
        if i % (self.threads // PROBE) == 1:
            return 1
        return 2 + (i * 7919) % self.n_other

    @staticmethod
    def identifier(u: int) -> str:
        return {0: "scale-big", 1: "scale-probe"}.get(u, f"scale-user-{u}")

    def listed(self, who: str) -> range:
        """Indexes of the user's threads in list order (activity descending)."""
        if who == "big":
            return range(self.threads - 10, -1, -10)
        step = self.threads // PROBE
        return range(self.threads - step + 1, 0, -step)

    def key(self, ddl: str) -> str:
        definition = {"version": DATASET_VERSION, "threads": self.threads, "steps": STEPS,
                      "chunk": CHUNK, "probe": PROBE, "other_per_user": OTHER_PER_USER,
                      "text": TEXT, "ddl": ddl}
        return hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()[:10]


def layer_ddl() -> str:
    """The layer's PostgreSQL DDL for a fresh database (as in ``generated/postgresql.sql``)."""
    from chainlit_orm.models import DEFAULT_MODELS
    from chainlit_orm.schema_gen.sql import ddl

    return ddl(DEFAULT_MODELS, "postgresql")


class RowMaker:
    """COPY rows in the layer's own column values.

    A template row per step kind (and one for a thread) is made once the way the layer makes it:
    ``to_row`` of Chainlit's ``to_dict()`` shape, then each column type's bind processor for the
    asyncpg dialect. Each row is the template with the varying values (ids, times, text, name)
    put in, in the same canonical forms (fixed-width ISO timestamps, lower-case dashed ids)."""

    def __init__(self, store: Store) -> None:
        from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg

        from chainlit_orm.models import DEFAULT_MODELS
        from chainlit_orm.models.convert import to_row

        self.store = store
        d = PGDialect_asyncpg()
        models = DEFAULT_MODELS
        self.tables = {e: models.table(e) for e in ("user", "thread", "step")}

        def process(entity: str, row: dict[str, Any]) -> list[Any]:
            out = []
            for c in self.tables[entity].columns:
                v = row.get(c.name)
                p = c.type._cached_bind_processor(d)
                out.append(p(v) if p is not None and v is not None else v)
            return out

        self._process = process
        self.columns = {e: [c.name for c in t.columns] for e, t in self.tables.items()}
        self.step_tpl: dict[str, list[Any]] = {}
        for kind in dataset.KIND_CYCLE:
            s = dataset.make_step(kind, thread_id(0), 0.0, "x")
            self.step_tpl[kind] = process("step", to_row(models, "step", s))
        t = {"id": thread_id(0), "createdAt": dataset.ts(0), "activityAt": dataset.ts(0),
             "name": "x", "userId": user_id(0), "userIdentifier": "x",
             "metadata": {"chat_profile": "default", "is_shared": False}}
        self.thread_tpl = process("thread", to_row(models, "thread", t))
        self._to_row = to_row
        self._models = models
        sc, tc = self.columns["step"], self.columns["thread"]
        self.s_pos = {k: sc.index(k) for k in ("id", "threadId", "createdAt", "start", "end",
                                               "output", "input")}
        self.t_pos = {k: tc.index(k) for k in ("id", "createdAt", "activityAt", "name", "userId",
                                               "userIdentifier")}

    def users(self) -> list[tuple[Any, ...]]:
        out = []
        for u in range(self.store.n_users):
            row = {"id": user_id(u), "identifier": Store.identifier(u),
                   "metadata": {"role": "user"}, "createdAt": dataset.ts(0)}
            out.append(tuple(self._process("user", self._to_row(self._models, "user", row))))
        return out

    def chunk(self, k: int) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """(thread rows, step rows) of threads ``k*CHUNK .. (k+1)*CHUNK - 1``."""
        threads: list[tuple[Any, ...]] = []
        steps: list[tuple[Any, ...]] = []
        sp, tp = self.s_pos, self.t_pos
        tpl = [self.step_tpl[dataset.KIND_CYCLE[j % 3]] for j in range(STEPS)]
        kinds = [dataset.KIND_CYCLE[j % 3] for j in range(STEPS)]
        last_user = max(j for j in range(STEPS) if kinds[j] == "user_message")
        for i in range(k * CHUNK, (k + 1) * CHUNK):
            tid = thread_id(i)
            sec = (dataset.T0 + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%S")
            u = self.store.owner(i)
            t = list(self.thread_tpl)
            t[tp["id"]] = tid
            t[tp["createdAt"]] = f"{sec}.000000Z"
            t[tp["activityAt"]] = f"{sec}.{last_user * 10000:06d}Z"
            t[tp["name"]] = f"Question number {i} about things"
            t[tp["userId"]] = user_id(u)
            t[tp["userIdentifier"]] = Store.identifier(u)
            threads.append(tuple(t))
            for j in range(STEPS):
                s = list(tpl[j])
                at = f"{sec}.{j * 10000:06d}Z"
                text = f"message {j} of thread {i}: {TEXT}"
                s[sp["id"]] = step_id(i, j)
                s[sp["threadId"]] = tid
                s[sp["createdAt"]] = s[sp["start"]] = s[sp["end"]] = at
                s[sp["output"]] = text
                if kinds[j] == "tool":
                    s[sp["input"]] = "query: " + text[:40]
                steps.append(tuple(s))
        return threads, steps


async def _exists(db: str) -> bool:
    import asyncpg

    conn = await asyncpg.connect(rawdb.PG_DSN.format(db="postgres"))
    try:
        return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", db))
    finally:
        await conn.close()


async def _has_table(conn: Any, name: str) -> bool:
    return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name))


_SECONDARY = """
SELECT i.relname, pg_get_indexdef(i.oid)
FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE n.nspname = current_schema() AND t.relname = ANY($1::text[])
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)
ORDER BY i.relname"""


async def ensure_store(store: Store, log: Any = print) -> dict[str, Any]:
    """The store's database, loaded if it is not complete yet. Returns what happened."""
    import asyncpg

    from chainlit_orm import migrate

    ddl = layer_ddl()
    db = f"bench_scale_{store.threads}_{store.key(ddl)}"
    info: dict[str, Any] = {"db": db, "threads": store.threads, "steps": store.threads * STEPS}
    dsn = rawdb.PG_DSN.format(db=db)
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{db}"
    if await _exists(db):
        conn = await asyncpg.connect(dsn)
        try:
            if await _has_table(conn, "bench_scale_complete"):
                info["load"] = "cached"
                await rawdb.pg_apply_settings(db)
                return info
            started = await _has_table(conn, "bench_scale_progress")
        finally:
            await conn.close()
        if not started:  # created, never set up: nothing loaded to keep
            await rawdb.pg_admin(f'DROP DATABASE "{db}" WITH (FORCE)')
    t_start = time.perf_counter()
    if not await _exists(db):
        await rawdb.pg_admin(f'CREATE DATABASE "{db}"')
        await migrate(url)
        conn = await asyncpg.connect(dsn)
        try:
            async with conn.transaction():
                rows = await conn.fetch(_SECONDARY, ["threads", "steps"])
                await conn.execute("CREATE TABLE bench_scale_indexes (name text PRIMARY KEY, "
                                   "def text NOT NULL)")
                await conn.executemany("INSERT INTO bench_scale_indexes VALUES ($1, $2)",
                                       [tuple(r) for r in rows])
                for r in rows:
                    await conn.execute(f'DROP INDEX "{r[0]}"')
                # written last in set-up: its presence means set-up is done
                await conn.execute("CREATE TABLE bench_scale_progress (chunk int PRIMARY KEY, "
                                   "seconds float8 NOT NULL)")
        finally:
            await conn.close()
    await rawdb.pg_apply_settings(db)
    maker = RowMaker(store)
    conn = await asyncpg.connect(dsn)
    try:
        # foreign keys are declared; the rows satisfy them by construction (counts checked below)
        await conn.execute("SET session_replication_role = replica")
        await conn.execute("SET synchronous_commit = off")  # the loader's own commits only
        done = {r[0] for r in await conn.fetch("SELECT chunk FROM bench_scale_progress")}
        if -1 not in done:
            async with conn.transaction():
                await conn.copy_records_to_table("users", records=maker.users(),
                                                 columns=maker.columns["user"])
                await conn.execute("INSERT INTO bench_scale_progress VALUES (-1, 0)")
        n_chunks = store.threads // CHUNK
        todo = [k for k in range(n_chunks) if k not in done]
        for loaded, k in enumerate(todo, 1):
            t0 = time.perf_counter()
            threads, steps = maker.chunk(k)
            async with conn.transaction():
                await conn.copy_records_to_table("threads", records=threads,
                                                 columns=maker.columns["thread"])
                await conn.copy_records_to_table("steps", records=steps,
                                                 columns=maker.columns["step"])
                await conn.execute("INSERT INTO bench_scale_progress VALUES ($1, $2)", k,
                                   time.perf_counter() - t0)
            if loaded == 1 or loaded % 10 == 0 or loaded == len(todo):
                el = time.perf_counter() - t_start
                log(f"    {db}: chunk {loaded}/{len(todo)} loaded ({el:.0f} s; "
                    f"about {el / loaded * (len(todo) - loaded):.0f} s of rows to go)")
        t_rows = time.perf_counter() - t_start
        await conn.execute("SET maintenance_work_mem = '1GB'")
        t1 = time.perf_counter()
        for name, sql in await conn.fetch("SELECT name, def FROM bench_scale_indexes"):
            if not await _has_table(conn, name):
                await conn.execute(sql)
        t_index = time.perf_counter() - t1
        n_t = await conn.fetchval("SELECT count(*) FROM threads")
        n_s = await conn.fetchval("SELECT count(*) FROM steps")
        n_u = await conn.fetchval("SELECT count(*) FROM users")
        if (n_t, n_s, n_u) != (store.threads, store.threads * STEPS, store.n_users):
            raise RuntimeError(f"{db}: {n_t} threads, {n_s} steps, {n_u} users loaded; expected "
                               f"{store.threads}, {store.threads * STEPS}, {store.n_users}")
        t2 = time.perf_counter()
        await conn.execute("VACUUM ANALYZE")
        t_vacuum = time.perf_counter() - t2
        await conn.execute("CREATE TABLE bench_scale_complete (finished_at timestamptz NOT NULL "
                           "DEFAULT now(), seconds float8 NOT NULL)")
        total = time.perf_counter() - t_start
        await conn.execute("INSERT INTO bench_scale_complete (seconds) VALUES ($1)", total)
    finally:
        await conn.close()
    info.update(load=f"loaded {len(todo)} of {n_chunks} chunks in {total:.0f} s",
                seconds={"rows": t_rows, "indexes": t_index, "vacuum_analyze": t_vacuum,
                         "total": total}, chunks_loaded=len(todo), chunks=n_chunks)
    return info


async def store_size(db: str) -> str:
    import asyncpg

    conn = await asyncpg.connect(rawdb.PG_DSN.format(db=db))
    try:
        return str(await conn.fetchval("SELECT pg_size_pretty(pg_database_size(current_database()))"))
    finally:
        await conn.close()


# ------------------------------------------------------------------------------- measurement

def _page_ok(page: Any, want: list[int]) -> bool:
    return [index_of(d["id"]) for d in page.data] == want


async def run(stores: list[Store], res: Any, rounds: int, reps: int, sampler: RssSampler,
              log: Any = print) -> None:
    """First page, page 10 and get_thread of the probe and the big user on every store, with
    the layer's shipped defaults; then every page of the big user of the largest store."""
    from chainlit.types import Pagination, ThreadFilter

    from chainlit_orm import SQLDataLayer

    from .workloads import _timed_all

    infos = {}
    for st in stores:
        t0 = time.perf_counter()
        info = await ensure_store(st, log)
        info["size"] = await store_size(info["db"])
        info["ready_s"] = time.perf_counter() - t0
        log(f"  SCALE store {st.threads:,}: {info['load']} ({info['size']})")
        infos[st.threads] = info
    res.scale["stores"] = infos
    layers = {st.threads: SQLDataLayer(
        f"postgresql+asyncpg://postgres@127.0.0.1:5432/{infos[st.threads]['db']}")
        for st in stores}
    try:
        users = {}
        for st in stores:
            lay = layers[st.threads]
            users[st.threads] = {w: (await lay.get_user(Store.identifier(u))).id
                                 for w, u in (("big", 0), ("probe", 1))}
            res.scale["stores"][st.threads]["synchronous_commit"] = await rawdb.pg_show(
                infos[st.threads]["db"], "synchronous_commit")
        cursors: dict[tuple[int, str], str | None] = {}
        for r in range(rounds + 1):
            order = stores[r % len(stores):] + stores[:r % len(stores)]
            for st in order:
                lay = layers[st.threads]
                calls: dict[str, tuple[Any, int]] = {}
                checks: dict[str, Any] = {}
                for who in WHO:
                    flt = ThreadFilter(userId=users[st.threads][who])
                    listed = st.listed(who)
                    if r == 0:
                        cur = None
                        for _ in range(9):
                            page = await lay.list_threads(Pagination(first=PAGE, cursor=cur), flt)
                            cur = page.pageInfo.endCursor
                        cursors[(st.threads, who)] = cur
                    p10 = Pagination(first=PAGE, cursor=cursors[(st.threads, who)])
                    tid = thread_id(listed[len(listed) // 2])
                    calls[f"{who} first page"] = (
                        lambda lay=lay, flt=flt: lay.list_threads(Pagination(first=PAGE), flt),
                        reps)
                    calls[f"{who} page 10"] = (
                        lambda lay=lay, flt=flt, p10=p10: lay.list_threads(p10, flt), reps)
                    calls[f"{who} get_thread"] = (
                        lambda lay=lay, tid=tid: lay.get_thread(tid), reps)
                    checks[f"{who} first page"] = lambda p, lst=listed: _page_ok(
                        p, list(lst[:PAGE]))
                    checks[f"{who} page 10"] = lambda p, lst=listed: _page_ok(
                        p, list(lst[9 * PAGE:10 * PAGE]))
                    checks[f"{who} get_thread"] = lambda t, tid=tid: (
                        t is not None and [s["id"] for s in t["steps"]]
                        == [step_id(index_of(tid), j) for j in range(STEPS)])
                for key, outcome in (await _timed_all(calls)).items():
                    m = res.metric(f"SCALE {key} S={st.threads}", "ms", False)
                    if isinstance(outcome, Exception):
                        m.void("chainlit-orm/postgresql", f"error ({type(outcome).__name__})")
                        res.errors["SCALE"].append(f"{key}: {outcome!r}"[:300])
                        continue
                    ms, answer = outcome
                    if not checks[key](answer):
                        m.void("chainlit-orm/postgresql", "wrong result")
                    if r > 0:
                        m.rounds["chainlit-orm/postgresql"].append(ms)
        res.scale["walk"] = await walk(layers[stores[-1].threads], stores[-1],
                                       users[stores[-1].threads]["big"], sampler)
        w = res.scale["walk"]
        log(f"  SCALE walk of {w['threads']:,} threads in {w['pages']} pages: {w['seconds']:.1f} s,"
            f" RSS {w['rss_start_mib']:.0f} / {w['rss_middle_mib']:.0f} / {w['rss_end_mib']:.0f}"
            f" MiB (start / middle / end), peak {w['rss_peak_mib']:.0f} MiB, ok={w['ok']}")
    finally:
        for lay in layers.values():
            await lay.close()


async def walk(layer: Any, store: Store, uid: str, sampler: RssSampler) -> dict[str, Any]:
    """Every page of the big user through the cursors, holding no page after it is checked:
    RSS at the start (after the first page), the middle and the end, and the peak."""
    from chainlit.types import Pagination, ThreadFilter

    flt = ThreadFilter(userId=uid)
    listed = store.listed("big")
    pages = -(-len(listed) // PAGE)
    cur = None
    expect = iter(listed)
    seen = 0
    ok = True
    rss: dict[str, float] = {}
    times: list[float] = []
    t_all = time.perf_counter()
    sampler.reset()
    for p in range(pages):
        t0 = time.perf_counter()
        page = await layer.list_threads(Pagination(first=PAGE, cursor=cur), flt)
        times.append(time.perf_counter() - t0)
        for d in page.data:
            if index_of(d["id"]) != next(expect, None):
                ok = False
            seen += 1
        cur = page.pageInfo.endCursor
        more = page.pageInfo.hasNextPage
        del page
        if p == 0:
            rss["start"] = mib(rss_bytes())
        elif p == pages // 2:
            rss["middle"] = mib(rss_bytes())
        if not more:
            break
    rss["end"] = mib(rss_bytes())
    ok = ok and seen == len(listed) and next(expect, None) is None
    return {"threads": len(listed), "pages": pages, "seen": seen, "ok": ok,
            "seconds": time.perf_counter() - t_all,
            "page_ms_median": statistics.median(times) * 1000,
            "page_ms_max": max(times) * 1000,
            "rss_start_mib": rss["start"], "rss_middle_mib": rss.get("middle", rss["start"]),
            "rss_end_mib": rss["end"], "rss_peak_mib": mib(sampler.peak())}


async def load_only(sizes: list[int]) -> None:
    """``python -m bench.scale 10000 100000``: load (or find) the stores, print the timings."""
    from chainlit.context import init_http_context

    init_http_context()
    for s in sizes:
        info = await ensure_store(Store(s))
        info["size"] = await store_size(info["db"])
        print(json.dumps(info, indent=1))


if __name__ == "__main__":
    import sys

    asyncio.run(load_only([int(a) for a in sys.argv[1:]] or [CHUNK]))
