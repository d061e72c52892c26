"""W1..W5. Each workload runs round by round; within a round every target takes its turn (the order
rotates every round), so machine noise hits all targets alike. Round 0 is a warm-up: it is not
timed into the figures, and it is where statements / API calls per operation are counted."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from chainlit.types import Pagination, ThreadFilter

from . import counting, dataset
from .dataset import Dataset, ThreadRec
from .targets.base import Target

PAGE = 35  # the sidebar's page size
SEARCH_PAGE = 20  # the search dialog's


@dataclass
class Metric:
    key: str  # e.g. "W2 first page N=1000"
    unit: str  # "ms" | "steps/s" | "calls/s"
    higher_is_better: bool
    rounds: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    status: dict[str, str] = field(default_factory=dict)  # target -> ok | lost data | ...
    extra: dict[str, dict[str, list[float]]] = field(default_factory=lambda: defaultdict(
        lambda: defaultdict(list)))  # target -> name -> per-round values (p50, p99)
    # the metric whose floor figures this one is compared with (None: this one's); W2's search of
    # a term in message text is compared with the floors' name-only search
    floor_key: str | None = None

    def void(self, target: str, why: str) -> None:
        if self.status.get(target, "ok") == "ok":
            self.status[target] = why


@dataclass
class Results:
    metrics: dict[str, Metric] = field(default_factory=dict)
    calls: dict[str, dict[str, dict[str, float]]] = field(default_factory=lambda: defaultdict(dict))
    errors: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    scale: dict[str, Any] = field(default_factory=dict)  # SCALE: stores and the cursor walk
    memory: dict[str, dict[str, float]] = field(default_factory=dict)  # workload -> RSS (MiB)

    def metric(self, key: str, unit: str, higher: bool) -> Metric:
        if key not in self.metrics:
            self.metrics[key] = Metric(key, unit, higher)
        return self.metrics[key]


def _progress(key: str, r: int, t: Target, seconds: float) -> None:
    if VERBOSE[0]:
        print(f"    {key} round {r} {t.name}: {seconds:.2f} s", flush=True)


VERBOSE = [False]


def _rotate(targets: list[Target], r: int) -> list[Target]:
    k = r % len(targets)
    return targets[k:] + targets[:k]


class Counted:
    """Accumulates per-operation counts over the warm-up round."""

    def __init__(self, res: Results, target: Target) -> None:
        self.res, self.t = res, target
        self.acc: dict[str, list[counting.OpCounter]] = defaultdict(list)

    async def __call__(self, op: str, coro_fn: Any, *a: Any, **kw: Any) -> Any:
        with counting.counting() as c:
            out = await coro_fn(*a, **kw)
        self.acc[op].append(c)
        return out

    def commit(self) -> None:
        for op, cs in self.acc.items():
            n = len(cs)
            self.res.calls[self.t.name][op] = {
                "statements": sum(c.statements for c in cs) / n,
                "transactions": sum(c.transactions for c in cs) / n,
                "api_calls": sum(c.api_calls for c in cs) / n,
                "kinds": dict(sum((c.by_kind for c in cs), counting._Counter())),
                "samples": n}


async def _plain(op: str, fn: Any, *a: Any, **kw: Any) -> Any:
    return await fn(*a, **kw)


def _err(res: Results, t: Target, where: str, e: BaseException) -> str:
    msg = f"{where}: {type(e).__name__}: {e}"[:300]
    res.errors[t.name].append(msg + "\n" + traceback.format_exc(limit=3)[-800:])
    return f"error ({type(e).__name__})"


# --------------------------------------------------------------------------------------------
# W1: update_thread, then S x (create_step, update_step)

def _w1_script(user_id: str, s: int, base: float) -> tuple[str, list[tuple[dict, dict]]]:
    tid = dataset.new_id()
    pairs = []
    for j in range(s):
        kind = dataset.KIND_CYCLE[j % 3]
        text = f"W1 step {j} " + "reply text " * 20
        d0 = dataset.make_step(kind, tid, base + j * 0.001, text, final=False)
        d1 = dataset.finalize(d0, text, base + j * 0.001 + 0.0005)
        pairs.append((d0, d1))
    return tid, pairs


async def _w1_thread(t: Target, call: Any, user: Any, tid: str, pairs: list) -> None:
    await call("update_thread", t.update_thread, tid, name=pairs[0][1]["output"][:40],
               user_id=t.user_key(user))
    for d0, d1 in pairs:
        await call("create_step", t.create_step, dict(d0))
        await call("update_step", t.update_step, dict(d1))


async def _verify_thread(t: Target, tid: str, pairs: list) -> str | None:
    got = await t.get_thread(tid)
    if not got:
        return "lost data"
    steps = {s.get("id"): s for s in got.get("steps") or []}
    for _d0, d1 in pairs:
        s = steps.get(d1["id"])
        if s is None or (s.get("output") or "") != d1["output"]:
            return "lost data"
    return None


async def _w1_window(t: Target, call: Any, scripts: list[Any], conc: int) -> float:
    """Seconds to write ``scripts`` with ``conc`` workers, each taking its share one thread after
    the other (conc=1: one after the other)."""
    t0 = time.perf_counter()
    if conc == 1:
        for u, tid, pairs in scripts:
            await _w1_thread(t, call, u, tid, pairs)
    else:
        async def worker(mine: list[Any]) -> None:
            for u, tid, pairs in mine:
                await _w1_thread(t, call, u, tid, pairs)

        await asyncio.gather(*(worker(scripts[w::conc]) for w in range(conc)))
    return time.perf_counter() - t0


async def burst(run_one: Any, n: int) -> float:
    """Seconds from the release of ``n`` tasks, all started at once, to the end of the last.

    Each task is created and parked on one gate before the clock starts; the gate opens when all
    ``n`` are parked, so every task makes its first call in the same event-loop turn, before any
    of them can finish (``tests/bench/test_harness.py``). ``run_one(k)`` is task k's work."""
    gate = asyncio.Event()
    parked = 0
    all_parked = asyncio.Event()

    async def one(k: int) -> None:
        nonlocal parked
        parked += 1
        if parked == n:
            all_parked.set()
        await gate.wait()
        await run_one(k)

    tasks = [asyncio.ensure_future(one(k)) for k in range(n)]
    try:
        await all_parked.wait()
        t0 = time.perf_counter()
        gate.set()
        await asyncio.gather(*tasks)
        return time.perf_counter() - t0
    finally:
        for task in tasks:  # a failed task must not leave the others running
            task.cancel()


BURST = 32  # threads in one W1 burst


async def w1(targets: list[Target], ds: Dataset, res: Results, scale: Any) -> None:
    """Three figures, steps/s (a step = its create_step and update_step): ``c=1`` (threads one
    after the other), ``c=32`` (a long window: 32 workers, each writing ``w1_waves`` threads one
    after the other, so 32 threads are always in flight) and ``burst c=32`` (one burst of 32 new
    threads started at once, timed from its start to its last write; ``w1_bursts`` bursts per
    round, the targets taking turns burst by burst, the round's figure the median burst)."""
    # The users log in first: Chainlit calls get_user on every request before any write.
    for t in targets:
        for u in ds.w1_users:
            await t.get_user(u.identifier)

    def scripts_for(t: Target, n: int, base: float) -> list[Any]:
        steps = t.scaled(scale, "w1_steps")
        users = ds.w1_users
        return [(users[k % len(users)], *_w1_script(t.user_key(users[k % len(users)]), steps,
                                                    base + k)) for k in range(n)]

    async def verify(t: Target, m: Metric, scripts: list[Any]) -> None:
        for _u, tid, pairs in scripts:
            bad = await _verify_thread(t, tid, pairs)
            if bad:
                m.void(t.name, bad)
                return

    for conc in (1, 32):
        m = res.metric(f"W1 write c={conc}", "steps/s", True)
        for r in range(scale.rounds + 1):
            for t in _rotate(targets, r):
                nthreads = (t.scaled(scale, "w1_threads_c1") if conc == 1
                            else conc * t.scaled(scale, "w1_waves"))
                scripts = scripts_for(t, nthreads, 5_000_000 + r * 10_000 + random.random())
                counted = Counted(res, t) if (r == 0 and conc == 1) else None
                try:
                    dt = await _w1_window(t, counted or _plain, scripts, conc)
                    if counted:
                        counted.commit()
                    await verify(t, m, scripts)
                except Exception as e:
                    m.void(t.name, _err(res, t, m.key, e))
                    continue
                if r > 0:
                    m.rounds[t.name].append(nthreads * t.scaled(scale, "w1_steps") / dt)
                _progress(m.key, r, t, dt)

    m = res.metric(f"W1 burst c={BURST}", "steps/s", True)
    for r in range(scale.rounds + 1):
        per: dict[str, list[float]] = defaultdict(list)
        failed: set[str] = set()
        for b in range(scale.w1_bursts):
            for t in _rotate(targets, r + b):
                if t.name in failed or b >= t.scaled(scale, "w1_bursts"):
                    continue
                scripts = scripts_for(t, BURST, 7_000_000 + r * 10_000 + b * 100
                                      + random.random())
                try:
                    dt = await burst(lambda k, t=t, scripts=scripts: _w1_thread(
                        t, _plain, *scripts[k]), BURST)
                    await verify(t, m, scripts)
                except Exception as e:
                    m.void(t.name, _err(res, t, m.key, e))
                    failed.add(t.name)
                    continue
                per[t.name].append(BURST * t.scaled(scale, "w1_steps") / dt)
                _progress(m.key, r, t, dt)
        if r > 0:
            for name, xs in per.items():
                if name not in failed:
                    m.rounds[name].append(statistics.median(xs))


# --------------------------------------------------------------------------------------------
# W2: list_threads first page, page 10 through the cursors, search; N = 100 .. 10,000

SEARCHES = {"search": dataset.NAME_TERM, "search text": dataset.TEXT_TERM,
            "search 1-char": dataset.ONE_CHAR_TERM}
# the floor figure each W2 search is compared with: a term in message text only is compared with
# the floor's name-only search of the name term (the floors search names only)
SEARCH_FLOOR = {"search": "search", "search text": "search", "search 1-char": "search 1-char"}


def user_threads(ds: Dataset, n: int) -> list[ThreadRec]:
    """The threads of the W2 user with ``n`` threads, newest activity first (the list's order)."""
    u = ds.w2_users[n]
    return sorted((t for t in ds.threads if t.user is u), key=lambda t: (t.activity, t.id),
                  reverse=True)


def search_hits(threads: list[ThreadRec], term: str, scope: frozenset[str]) -> list[str]:
    """Ids of ``threads`` (in order) that a layer searching ``scope`` ("name": the thread's name;
    "text": the output of its messages) finds for ``term``, case-insensitively."""
    q = term.casefold()
    out = []
    for t in threads:
        in_name = "name" in scope and q in (t.name or "").casefold()
        in_text = "text" in scope and any(
            q in (s.get("output") or "").casefold() for s in t.steps
            if s.get("type") in ("user_message", "assistant_message"))
        if in_name or in_text:
            out.append(t.id)
    return out


def _expected(ts: list[ThreadRec], label: str, scope: frozenset[str]) -> list[str]:
    """The ids a target searching ``scope`` answers for ``label`` on the user's threads ``ts``."""
    ids = [t.id for t in ts]
    if label == "first page":
        return ids[:PAGE]
    if label == "page 10":
        return ids[9 * PAGE:10 * PAGE]
    return search_hits(ts, SEARCHES[label], scope)[:SEARCH_PAGE]


BLOCK = 8  # calls a target makes in a row in _timed_all


async def _timed_all(calls: dict[str, tuple[Any, int]]) -> dict[str, Any]:
    """Each target's median time (ms) and last answer, or the exception its call raised.

    The targets take turns in blocks of :data:`BLOCK` calls (A x8, B x8, C x8, A x8, ...), so a
    pause or a scheduler mode (on 2 cores a 0.2 ms query took 0.2 or 0.3 ms for a while,
    depending on where the server's thread ran) lands on every target alike: with one target's
    calls all in one turn, such a switch between two turns moved a ratio from 1.0 to 1.6. Not
    one call each in turn: every call then starts with cold CPU caches and the longer code path
    pays for it (a SQLite list page went from 0.21 to 0.33 ms that way, the floor's from 0.21 to
    0.25). Each target makes at least its ``reps`` calls, and up to 12x as many while its calls
    so far took under 50 ms in all, so sub-millisecond figures are medians of dozens of calls
    and a slow target keeps its ``reps``."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    answers: dict[str, Any] = {}
    active = list(calls)
    while active:
        for name in list(active):
            fn, reps = calls[name]
            mine = times[name]
            for _ in range(BLOCK):
                t0 = time.perf_counter()
                try:
                    answers[name] = await fn()
                except Exception as e:
                    answers[name] = e
                    active.remove(name)
                    break
                mine.append(time.perf_counter() - t0)
                if len(mine) >= reps and (len(mine) >= 12 * reps or sum(mine) >= 0.05):
                    active.remove(name)
                    break
    return {name: answers[name] if isinstance(answers[name], Exception)
            else (statistics.median(times[name]) * 1000, answers[name]) for name in calls}


async def w2(targets: list[Target], ds: Dataset, res: Results, scale: Any) -> None:
    """list_threads of the W2 user with N threads: first page, page 10 (through the cursors) and
    three searches (:data:`SEARCHES`), each answer compared with the dataset's, computed for the
    target's declared search scope (``Target.search_scope``)."""
    for n in scale.w2_ns:
        ts = user_threads(ds, n)
        expected: dict[tuple[str, frozenset[str]], set[str]] = {}
        cursors: dict[str, str | None] = {}
        labels = ["first page", *(["page 10"] if n >= 10 * PAGE else []), *SEARCHES]
        for r in range(scale.rounds + 1):
            order = [t for t in _rotate(targets, r) if n <= getattr(t, "max_w2_n", n)]
            for label in labels:
                m = res.metric(f"W2 {label} N={n}", "ms", False)
                if label in SEARCH_FLOOR:
                    m.floor_key = f"W2 {SEARCH_FLOOR[label]} N={n}"
                op = f"list_threads {label}"
                exp = {}
                for t in order:
                    k = (label, t.search_scope)
                    if k not in expected:
                        expected[k] = set(_expected(ts, label, t.search_scope))
                    exp[t.name] = expected[k]
                calls: dict[str, tuple[Any, int]] = {}
                for t in order:
                    uid = t.user_key(ds.w2_users[n])
                    if label in SEARCHES:
                        pag = Pagination(first=SEARCH_PAGE)
                        flt = ThreadFilter(userId=uid, search=SEARCHES[label])
                    else:
                        pag, flt = Pagination(first=PAGE), ThreadFilter(userId=uid)
                    try:
                        if label == "page 10":
                            if r == 0:  # walk the cursors once, untimed
                                cur = None
                                for _ in range(9):
                                    page = await t.list_threads(Pagination(first=PAGE, cursor=cur),
                                                                flt)
                                    cur = page.pageInfo.endCursor
                                cursors[t.name] = cur
                            pag = Pagination(first=PAGE, cursor=cursors[t.name])
                        if r == 0:
                            c = Counted(res, t)
                            page = await c(f"{op} N={n}", t.list_threads, pag, flt)
                            c.commit()
                            if {d["id"] for d in page.data} != exp[t.name]:
                                m.void(t.name, "wrong result")
                        else:
                            calls[t.name] = (lambda t=t, pag=pag, flt=flt:
                                             t.list_threads(pag, flt), t.scaled(scale, "w2_reps"))
                    except Exception as e:
                        m.void(t.name, _err(res, t, m.key, e))
                if not calls:
                    continue
                by_name = {t.name: t for t in order}
                for name, outcome in (await _timed_all(calls)).items():
                    if isinstance(outcome, Exception):
                        m.void(name, _err(res, by_name[name], m.key, outcome))
                        continue
                    ms, page = outcome
                    if {d["id"] for d in page.data} != exp[name]:
                        m.void(name, "wrong result")
                    m.rounds[name].append(ms)


# --------------------------------------------------------------------------------------------
# W3: get_thread of a thread with 10 / 100 / 1,000 steps, 3 elements, some feedback

def _check_thread(got: dict | None, th: ThreadRec) -> str | None:
    if not got:
        return "lost data"
    steps = got.get("steps") or []
    want = {s["id"]: s["output"] for s in th.steps}
    have = {s.get("id"): s.get("output") for s in steps}
    if have != want:
        return "lost data"
    if {e.get("id") for e in got.get("elements") or []} != {e["id"] for e in th.elements}:
        return "lost data"
    fb = {s.get("id"): (s.get("feedback") or {}).get("value") for s in steps if s.get("feedback")}
    if fb != {f["forId"]: f["value"] for f in th.feedbacks}:
        return "lost data"
    return None


async def w3(targets: list[Target], ds: Dataset, res: Results, scale: Any) -> None:
    for n, th in ds.w3_threads.items():
        m = res.metric(f"W3 get_thread steps={n}", "ms", False)
        for r in range(scale.rounds + 1):
            order = _rotate(targets, r)
            if r == 0:
                for t in order:
                    try:
                        c = Counted(res, t)
                        got = await c(f"get_thread steps={n}", t.get_thread, th.id)
                        c.commit()
                        bad = _check_thread(got, th)
                        if bad:
                            m.void(t.name, bad)
                    except Exception as e:
                        m.void(t.name, _err(res, t, m.key, e))
                continue
            calls = {t.name: (lambda t=t, th=th: t.get_thread(th.id), t.scaled(scale, "w3_reps"))
                     for t in order}
            by_name = {t.name: t for t in order}
            for name, outcome in (await _timed_all(calls)).items():
                if isinstance(outcome, Exception):
                    m.void(name, _err(res, by_name[name], m.key, outcome))
                    continue
                ms, got = outcome
                bad = _check_thread(got, th)
                if bad:
                    m.void(name, bad)
                m.rounds[name].append(ms)


# --------------------------------------------------------------------------------------------
# W4: delete_thread of a thread with 100 steps, 3 elements, 10 feedback

async def w4(targets: list[Target], ds: Dataset, res: Results, scale: Any) -> None:
    """Each round deletes ``w4_per_round`` threads per target; the round's figure is their
    median (one delete alone is at the mercy of a WAL checkpoint or a purge landing in it)."""
    m = res.metric("W4 delete_thread", "ms", False)
    per = scale.w4_per_round
    for r in range(scale.rounds + 1):
        for t in _rotate(targets, r):
            times: list[float] = []
            try:
                for j in range(per):
                    th = ds.w4_threads[r * per + j]  # every target's store has its own copy
                    if r == 0 and j == 0:
                        c = Counted(res, t)
                        await c("delete_thread", t.delete_thread, th.id)
                        c.commit()
                    else:
                        t0 = time.perf_counter()
                        await t.delete_thread(th.id)
                        times.append((time.perf_counter() - t0) * 1000)
                    if await t.get_thread(th.id):
                        m.void(t.name, "not deleted")
                    left = await t.leftover_rows(th)
                    if left:
                        m.void(t.name, f"left {left} rows")
            except Exception as e:
                m.void(t.name, _err(res, t, m.key, e))
                continue
            if r > 0:
                m.rounds[t.name].append(statistics.median(times))


# --------------------------------------------------------------------------------------------
# W5: 32 concurrent users looping get_user, list_threads, get_thread, create_step

W5_CALLS = ("get_user", "list_threads", "get_thread", "create_step")


async def w5(targets: list[Target], ds: Dataset, res: Results, scale: Any) -> None:
    """32 users at once, each looping get_user, list_threads (first page), get_thread, create_step.
    Figures: calls/s; p50 and p99 of all calls and of each call type."""
    m = res.metric("W5 mixed c=32", "calls/s", True)
    for r in range(scale.rounds + 1):
        for t in _rotate(targets, r):
            lat: dict[str, list[float]] = {k: [] for k in W5_CALLS}
            written: dict[str, list[dict]] = defaultdict(list)

            async def user_loop(u: Any, t: Target = t, lat: dict[str, list[float]] = lat,
                                written: dict = written, r: int = r) -> None:
                uid = t.user_key(u)
                threads = ds.w5_threads[u.id]
                iters = t.scaled(scale, "w5_iters")
                for i in range(iters):
                    th = threads[(r * iters + i) % len(threads)]
                    kind = ("user_message", "assistant_message")[i % 2]
                    step = dataset.make_step(kind, th.id, 6_000_000 + r * 100 + i * 0.01
                                             + random.random() * 0.001, f"W5 {u.identifier} {i}")
                    for name, fn in (
                            ("get_user", lambda: t.get_user(u.identifier)),
                            ("list_threads", lambda: t.list_threads(Pagination(first=PAGE),
                                                                    ThreadFilter(userId=uid))),
                            ("get_thread", lambda th=th: t.get_thread(th.id)),
                            ("create_step", lambda step=step: t.create_step(dict(step)))):
                        t0 = time.perf_counter()
                        await fn()
                        lat[name].append(time.perf_counter() - t0)
                    written[th.id].append(step)

            try:
                t0 = time.perf_counter()
                await asyncio.gather(*(user_loop(u) for u in ds.w5_users))
                dt = time.perf_counter() - t0
                for tid in list(written)[:8]:
                    got = await t.get_thread(tid)
                    ids = {s.get("id") for s in (got or {}).get("steps") or []}
                    if not all(s["id"] in ids for s in written[tid]):
                        m.void(t.name, "lost data")
                        break
            except Exception as e:
                m.void(t.name, _err(res, t, m.key, e))
                continue
            _progress(m.key, r, t, dt)
            if r > 0:
                every = [x for xs in lat.values() for x in xs]
                m.rounds[t.name].append(len(every) / dt)
                for name, xs in (("", every), *((f"{k} ", v) for k, v in lat.items())):
                    p50, p99 = percentiles(xs)
                    m.extra[t.name][f"{name}p50 ms"].append(p50 * 1000)
                    m.extra[t.name][f"{name}p99 ms"].append(p99 * 1000)


def percentiles(xs: list[float]) -> tuple[float, float]:
    """(p50, p99) of ``xs``: the median, and the 99th percentile by the "exclusive" method
    (``statistics.quantiles``; with fewer than 100 samples it is about the largest)."""
    if len(xs) < 2:
        return xs[0], xs[0]
    return statistics.median(xs), statistics.quantiles(xs, n=100)[98]


WORKLOADS = {"W1": w1, "W2": w2, "W3": w3, "W4": w4, "W5": w5}  # SCALE: bench/scale.py
