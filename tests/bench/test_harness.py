"""Self-tests of the bench harness's own rules (no timing is asserted): the W1 burst starts all its
threads before any finishes, the W2 search dataset has its stated matches at every N, the stricter
of two floors is the one compared with, and the SCALE loader's rows are deterministic (a resumed
load writes the same rows) and agree with the expected answers."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from chainlit.context import init_http_context

from bench import dataset, report, scale, workloads
from bench.workloads import Metric


async def test_burst_starts_every_thread_before_any_finishes() -> None:
    events: list[tuple[str, int]] = []

    async def one(k: int) -> None:
        events.append(("start", k))
        for _ in range(3):  # a call that yields to the loop, as every driver call does
            await asyncio.sleep(0)
        events.append(("end", k))

    await workloads.burst(one, 32)
    assert events[:32] == [("start", k) for k in range(32)]
    assert sorted(events[32:]) == [("end", k) for k in range(32)]


class _Recorder:
    """A target that records the calls of W1 threads, each call yielding once."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def user_key(self, user: Any) -> str:
        return str(user.id)

    async def _call(self, op: str, tid: str) -> None:
        self.calls.append((op, tid))
        await asyncio.sleep(0)

    async def update_thread(self, thread_id: str, **_: Any) -> None:
        await self._call("update_thread", thread_id)

    async def create_step(self, step: dict[str, Any]) -> None:
        await self._call("create_step", step["threadId"])

    async def update_step(self, step: dict[str, Any]) -> None:
        await self._call("update_step", step["threadId"])


async def test_w1_burst_opens_all_32_threads_first() -> None:
    init_http_context()
    user = dataset.make_user("burst-user")
    target = _Recorder()
    scripts = [(user, *workloads._w1_script(str(user.id), 3, 1000.0 + k)) for k in range(32)]
    await workloads.burst(lambda k: workloads._w1_thread(target, workloads._plain, *scripts[k]),
                          workloads.BURST)
    tids = [tid for _u, tid, _p in scripts]
    assert target.calls[:32] == [("update_thread", tid) for tid in tids]
    assert len(target.calls) == 32 * 7


async def test_a_failed_burst_thread_raises_and_stops_the_others() -> None:
    finished: list[int] = []

    async def one(k: int) -> None:
        await asyncio.sleep(0)
        if k == 3:
            raise ValueError("thread 3")
        await asyncio.sleep(0.05)
        finished.append(k)

    with pytest.raises(ValueError, match="thread 3"):
        await workloads.burst(one, 8)
    await asyncio.sleep(0.1)
    assert finished == []


async def test_search_terms_match_ten_threads_of_every_w2_user() -> None:
    init_http_context()
    sc = SimpleNamespace(w2_ns=(100, 1000, 2000), w3_steps=(10,), w4_rounds=1, w4_per_round=1,
                         w5_users=2, w5_threads_per_user=2)
    ds = dataset.build(sc)
    name, text, both = frozenset({"name"}), frozenset({"text"}), frozenset({"name", "text"})
    for n in sc.w2_ns:
        ts = workloads.user_threads(ds, n)
        assert len(ts) == n
        named = workloads.search_hits(ts, dataset.NAME_TERM, both)
        texted = workloads.search_hits(ts, dataset.TEXT_TERM, both)
        assert len(named) == len(texted) == dataset.SEARCH_MATCHES
        assert not set(named) & set(texted)
        assert workloads.search_hits(ts, dataset.NAME_TERM, name) == named
        assert workloads.search_hits(ts, dataset.NAME_TERM, text) == []
        assert workloads.search_hits(ts, dataset.TEXT_TERM, name) == []
        assert workloads.search_hits(ts, dataset.TEXT_TERM, text) == texted
        for scope in (name, both):  # the one character finds exactly the name term's threads
            assert workloads.search_hits(ts, dataset.ONE_CHAR_TERM, scope) == named
        # spread over the whole list, not bunched at one end
        pos = sorted([t.id for t in ts].index(i) for i in named)
        assert pos[0] < n // 10 and pos[-1] >= n - n // 10
    # neither term, nor a trigram of one, nor the single character occurs anywhere else
    grams = {term.casefold()[k:k + 3] for term in (dataset.NAME_TERM, dataset.TEXT_TERM)
             for k in range(len(term) - 2)} | {dataset.ONE_CHAR_TERM.casefold()}
    w2 = {t.id for n in sc.w2_ns for t in workloads.user_threads(ds, n)}
    for t in ds.threads:
        texts = [t.name, *(s.get("output") or "" for s in t.steps)]
        if t.id in w2:
            texts = [x.replace(dataset.NAME_TERM, "").replace(dataset.TEXT_TERM, "")
                     for x in texts]
        for x in texts:
            assert not any(g in x.casefold() for g in grams), (t.name, x)


def test_w2_sizes_must_hold_the_search_slots() -> None:
    with pytest.raises(ValueError):
        dataset.search_slots(105)
    with pytest.raises(ValueError):  # one thread per slot: the two terms would share threads
        dataset.search_slots(10)
    name, text = dataset.search_slots(1000)
    assert len(name) == len(text) == 10 and not name & text


def test_ratios_are_taken_against_the_stricter_floor() -> None:
    up = Metric("W1 burst c=32", "steps/s", True)
    up.rounds["floor/a"] = [100.0, 110.0]
    up.rounds["floor/b"] = [150.0, 140.0]
    up.rounds["floor/c"] = [900.0]
    up.status["floor/c"] = "lost data"  # a void figure is never the floor
    assert report.stricter_floor(up, ["floor/a", "floor/b", "floor/c"]) == "floor/b"
    down = Metric("W2 search N=1000", "ms", False)
    down.rounds["floor/a"] = [1.0, 1.2]
    down.rounds["floor/b"] = [0.9, 2.0]
    assert report.stricter_floor(down, ["floor/a", "floor/b"]) == "floor/a"
    assert report.limit_for("W2 search 1-char N=1000") is None  # reported, no target
    assert report.limit_for("W2 search text N=100") == ("<=", 2.0)
    assert report.limit_for("W3 get_thread steps=1000") == ("<=", 1.3)


async def test_scale_rows_are_deterministic_and_match_the_expected_lists() -> None:
    init_http_context()
    store = scale.Store(10_000)
    maker = scale.RowMaker(store)
    threads, steps = maker.chunk(0)
    assert (threads, steps) == maker.chunk(0)  # a resumed chunk writes the same rows
    assert len(threads) == scale.CHUNK and len(steps) == scale.CHUNK * scale.STEPS
    tc = maker.columns["thread"]
    owner = {r[tc.index("id")]: r[tc.index("userId")] for r in threads}
    for who, u in (("big", 0), ("probe", 1)):
        listed = list(store.listed(who))
        assert {owner[scale.thread_id(i)] for i in listed} == {scale.user_id(u)}
        assert sum(1 for v in owner.values() if v == scale.user_id(u)) == len(listed)
    assert len(store.listed("probe")) == scale.PROBE
    assert len(store.listed("big")) == store.threads // 10
    activity = {r[tc.index("id")]: r[tc.index("activityAt")] for r in threads}
    order = sorted(activity, key=lambda i: (activity[i], i), reverse=True)
    assert [scale.index_of(i) for i in order if owner[i] == scale.user_id(0)] == list(
        store.listed("big"))
    sc = maker.columns["step"]
    assert steps[0][sc.index("id")] == scale.step_id(0, 0)
    assert steps[0][sc.index("type")] == "user_message"
    assert store.key("ddl a") != store.key("ddl b")
    assert store.key("ddl a") != scale.Store(20_000).key("ddl a")


def test_a_private_moto_serves_every_selection_that_holds_a_dynamodb_target() -> None:
    """``--targets chainlit-orm,floor`` runs chainlit-orm/dynamodb and floor/dynamodb: they get
    the bench's private moto server (they used to be sent to the tests' shared one, which kept
    the bench's tables in memory: 14 GB after one run)."""
    import argparse

    from bench.__main__ import _dynamodb_selected

    def selected(targets: str | None) -> bool:
        return _dynamodb_selected(argparse.Namespace(targets=targets))

    assert [selected(t) for t in (None, "chainlit-orm,floor", "dynamo", "floor/dynamodb")] == [
        True, True, True, True]
    assert [selected(t) for t in ("sqlite,floor/postgresql", "floor/sqlite",
                                  "chainlit-orm/mariadb")] == [False, False, False]
