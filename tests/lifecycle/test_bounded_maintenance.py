"""The two maintenance paths an outside attack still found unbounded (issue 14 item 2, issue 17's
purge and on-delete hook), on every backend with real services.

* **F3, the orphan sweep's storage listing.** A purge lists the storage to sweep orphan files
  (always on DynamoDB, whose TTL removes no file; on SQL with ``orphan_grace``). The listing had
  its own bound (ten times the storage client's timeout), outside the purge's: a black-holed
  storage held ``purge(timeout=2)`` for 20 s. Now every storage call of a purge is bounded by
  its ``timeout=``: against moto's S3 behind the fault proxy, black-holed (accepts TCP, never
  answers), the purge ends in ``StorageTimeoutError`` within twice the timeout, nothing is
  deleted, and the same purge once the storage is back sweeps the orphan and nothing else.
* **F4, hooks that all hang.** 16 at a time, each bounded by ``on_delete_timeout``, 500 hanging
  hooks still took 32 times the limit. Now a breaker (``on_delete_breaker``) stops calling the
  hook once that many calls in a row timed out: exactly that many hooks are called (asserted as
  a count, not a time), every other thread is removed all the same and named as skipped in the
  ``OnDeleteError``, with why. A hook that fails fast does not open it.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from chainlit_orm.cli import main
from chainlit_orm.errors import (
    ConfigurationError,
    OnDeleteError,
    StorageTimeoutError,
    TimeoutExceededError,
)
from chainlit_orm.layers.base import ChainlitLayer
from chainlit_orm.lifecycle.hooks import HOOK_CONCURRENCY
from chainlit_orm.models.types import format_timestamp, parse_timestamp, utc_now
from tests.contract.conftest import ContractBackend, message, new_id
from tests.lifecycle.conftest import LayerFactory, new_user, open_layer, store_url
from tests.lifecycle.test_files_first import _conversation, _later, _objects
from tests.reliability.faultproxy import fault_proxy
from tests.reliability.storage_env import MOTO_PORT, site

#: The purge's timeout against the black-holed storage: short, and long enough for a loaded
#: machine to do the purge's database work within it.
TIMEOUT = 3.0
#: on_delete_timeout of the hanging hooks.
HOOK_LIMIT = 0.5
#: Threads whose hooks hang: more than 6 rounds of HOOK_CONCURRENCY.
MANY = 100


# ---------------------------------------------------------------- F3: the sweep's listing


async def test_a_black_holed_storage_ends_the_orphan_sweep_within_the_purge_timeout(
        fresh_store: tuple[ContractBackend, Any], tmp_path: Path, chainlit_ctx: Any) -> None:
    """DynamoDB sweeps on every purge; SQL when asked (``orphan_grace``): both list the
    storage, and the listing is what a black-holed storage holds."""
    entry, handle = fresh_store
    grace = timedelta(seconds=1) if entry.sql else None
    with fault_proxy("127.0.0.1", MOTO_PORT) as proxy:
        async with site("s3", tmp_path, endpoint=f"http://{proxy.address}") as where:
            # the client's own bounds are long (its listing: 10 x 30 s): the purge's must hold
            storage = where.client(timeout=30, connect_timeout=30, read_timeout=30)
            layer = open_layer(entry, handle, storage)
            try:
                user = await new_user(layer)
                live = await _conversation(layer, user.id, "sweep")
                # an orphan: on SQL an element file no row refers to (in a live thread), on
                # DynamoDB the file of a thread that no longer exists
                orphan = (f"threads/{live if entry.sql else new_id()}/files/{new_id()}")
                await storage.upload_file(orphan, b"left behind", "text/plain")
                # the element's file (and, on SQL, the orphan beside it)
                assert len(_objects(where.list(), [live])) == 1 + entry.sql
                everything = where.list()

                proxy.set_mode("blackhole")
                proxy.cut_all()
                loop = asyncio.get_running_loop()
                started = loop.time()
                # nothing is expired: the sweep is the only storage work of this purge
                with pytest.raises((StorageTimeoutError, TimeoutExceededError)) as caught:
                    await layer.purge(older_than=timedelta(days=90), timeout=TIMEOUT,
                                      orphan_grace=grace)
                assert loop.time() - started < 2 * TIMEOUT  # the one timed assertion allowed
                error = caught.value
                if entry.sql:  # the listing is the purge's own storage call
                    assert type(error) is StorageTimeoutError
                    assert str(error).startswith("FsspecStorage.list_modified of 'threads' did "
                                                 "not finish within ")
                    assert str(error).endswith(" s (what was left of the deadline)")
                    assert error.detail == "threads"
                    assert error.abandoned is True
                else:
                    # the listing runs inside the backend's sweep_orphans, itself bounded by
                    # the batch's deadline: the listing ends first (a tenth of the time left
                    # before it), unless the machine stalls past that margin, when the
                    # batch's deadline does; either way a typed timeout
                    assert str(error).startswith((
                        "FsspecStorage.list_keys of 'threads' did not finish within ",
                        "sweep_orphans did not finish within the purge batch timeout of 3 s"))
                proxy.set_mode("pass")
                proxy.cut_all()
                # nothing deleted: the objects, the thread with its element
                assert where.list() == everything
                thread = await layer.get_thread(live)
                assert thread is not None and len(thread["elements"] or []) == 1

                # with the storage back, the same purge sweeps the orphan and only it
                report = await layer.purge(older_than=timedelta(days=90), timeout=TIMEOUT,
                                           orphan_grace=grace)
                swept = report.unreferenced_files if entry.sql else report.orphan_files
                assert (swept, report.counts["thread"]) == (1, 0)
                assert where.list() == sorted(set(everything) - {f"root/{orphan}"})
                thread = await layer.get_thread(live)
                assert thread is not None and len(thread["elements"] or []) == 1
            finally:
                proxy.set_mode("pass")
                await layer.close()


# ---------------------------------------------------------------- F4: the hook's breaker


async def _threads(layer: ChainlitLayer, count: int, *,
                   last_message_days_ago: int | None = None) -> list[str]:
    """``count`` threads of a new user, with no file (the hook is what is under test); with
    ``last_message_days_ago``, each with a user message that old (so a purge without ``now``,
    the CLI's, finds them expired)."""
    user = await new_user(layer)
    made = []
    for _ in range(count):
        tid = new_id()
        if last_message_days_ago is not None:  # the step first: it creates the thread
            old = message(tid, "long ago")
            old["createdAt"] = old["start"] = old["end"] = format_timestamp(
                parse_timestamp(utc_now()) - timedelta(days=last_message_days_ago))
            await layer.create_step(old)
        await layer.update_thread(tid, name="t", user_id=user.id)
        made.append(tid)
    return made


@pytest.mark.parametrize("breaker", [None, 3])
async def test_hooks_that_all_hang_open_the_breaker_after_that_many_calls(
        make_fresh_layer: LayerFactory, breaker: int | None, chainlit_ctx: Any) -> None:
    """100 threads in 3 batches, every hook hanging: exactly ``on_delete_breaker`` hooks are
    called (16 by default, one round of HOOK_CONCURRENCY; 3 when set), in the first batch;
    later batches call none. Every thread is removed; the error names all 100, the skipped
    ones as such, and why the breaker opened."""
    called: list[str] = []
    never = asyncio.Event()

    async def hook(thread_id: str, user_id: str | None) -> None:
        called.append(thread_id)
        await asyncio.shield(never.wait())  # ignores cancellation, as a hook in a thread

    options: dict[str, Any] = {} if breaker is None else {"on_delete_breaker": breaker}
    layer = await make_fresh_layer(on_delete=hook, on_delete_timeout=HOOK_LIMIT, **options)
    limit = HOOK_CONCURRENCY if breaker is None else breaker
    try:
        threads = await _threads(layer, MANY)
        with pytest.raises(OnDeleteError) as caught:
            await layer.purge(older_than=timedelta(days=90), now=_later(91), batch=40)
        error = caught.value
        assert len(called) == limit
        assert len(set(called)) == limit
        assert sorted(error.detail) == sorted(threads)  # type: ignore[arg-type]
        assert sorted(error.skipped) == sorted(set(threads) - set(called))
        why = (f"the breaker opened after {limit} on_delete hook call(s) in a row did not "
               f"finish within {HOOK_LIMIT:g} s (on_delete_breaker)")
        assert error.breaker == why
        assert str(error).endswith(f"; {why}: the hook was not called for {MANY - limit} of "
                                   "them")
        for tid in called:
            failure = error.failures[tid]
            assert type(failure) is TimeoutExceededError
            assert str(failure) == (f"the on_delete hook for thread {tid} did not finish "
                                    f"within {HOOK_LIMIT:g} s (on_delete_timeout)")
        for tid in error.skipped:
            failure = error.failures[tid]
            assert type(failure) is TimeoutExceededError
            assert str(failure) == f"the on_delete hook was not called for thread {tid}: {why}"
        assert type(error.__cause__) is TimeoutExceededError
        assert str(error.__cause__).startswith("the on_delete hook for thread ")
        report = error.report
        assert report is not None
        assert (report.batches, report.counts["thread"]) == (3, MANY)  # type: ignore[attr-defined]
        called_in_first = set(report.thread_ids[:40])  # type: ignore[attr-defined]
        assert set(called) <= called_in_first
        for tid in threads:
            assert await layer.get_thread(tid) is None
    finally:
        never.set()


async def test_a_hook_that_fails_fast_does_not_open_the_breaker(
        make_fresh_layer: LayerFactory, chainlit_ctx: Any) -> None:
    """A hook that raises at once costs the run nothing: every thread's hook is called, even
    with the smallest breaker, and each failure is the hook's own."""
    called: list[str] = []

    async def hook(thread_id: str, user_id: str | None) -> None:
        called.append(thread_id)
        raise RuntimeError(f"vector store refused {thread_id}")

    layer = await make_fresh_layer(on_delete=hook, on_delete_timeout=HOOK_LIMIT,
                                   on_delete_breaker=1)
    threads = await _threads(layer, MANY)
    with pytest.raises(OnDeleteError) as caught:
        await layer.purge(older_than=timedelta(days=90), now=_later(91), batch=40)
    error = caught.value
    assert sorted(called) == sorted(threads)
    assert sorted(error.detail) == sorted(threads)  # type: ignore[arg-type]
    assert (error.skipped, error.breaker) == ([], None)
    assert "breaker" not in str(error)
    assert {str(f) for f in error.failures.values()} == {
        f"vector store refused {tid}" for tid in threads}
    assert {type(f) for f in error.failures.values()} == {RuntimeError}


@pytest.mark.parametrize(("hanging", "expected"), [
    ((1, 4), (6, 2, 0)),  # a success between the two timeouts: never 2 in a row
    ((1, 2), (2, 2, 4)),  # 2 in a row: open, the 4 threads left are skipped
])
async def test_only_timeouts_in_a_row_open_the_breaker(
        make_fresh_layer: LayerFactory, hanging: tuple[int, ...],
        expected: tuple[int, int, int], chainlit_ctx: Any) -> None:
    """A breaker of 2, batches of 1 thread (so the hook calls come one after the other, in a
    known order): the calls numbered ``hanging`` hang. Returns (hooks called, threads whose
    hook timed out, threads skipped)."""
    called: list[str] = []
    never = asyncio.Event()

    async def hook(thread_id: str, user_id: str | None) -> None:
        called.append(thread_id)
        if len(called) in hanging:
            await asyncio.shield(never.wait())

    layer = await make_fresh_layer(on_delete=hook, on_delete_timeout=HOOK_LIMIT,
                                   on_delete_breaker=2)
    try:
        threads = await _threads(layer, 6)
        with pytest.raises(OnDeleteError) as caught:
            await layer.purge(older_than=timedelta(days=90), now=_later(91), batch=1)
        error = caught.value
        timed_out = [t for t in error.detail if t not in error.skipped]  # type: ignore[union-attr]
        assert (len(called), len(timed_out), len(error.skipped)) == expected
        assert timed_out == [called[n - 1] for n in hanging]
        assert sorted(error.detail) == sorted(  # type: ignore[arg-type]
            timed_out + error.skipped)
        assert (error.breaker is None) == (not error.skipped)
        for tid in threads:
            assert await layer.get_thread(tid) is None
    finally:
        never.set()


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "3"])
def test_on_delete_breaker_must_be_a_whole_number_of_calls(value: Any) -> None:
    from chainlit_orm import SQLDataLayer

    with pytest.raises(ConfigurationError) as caught:
        SQLDataLayer("sqlite+aiosqlite:///:memory:", on_delete_breaker=value)
    assert str(caught.value) == (f"on_delete_breaker must be a whole number of hook calls, at "
                                 f"least 1, got {value!r}")


@pytest.mark.parametrize("fresh_store", ["sqlite", "dynamodb"], indirect=True)
async def test_the_cli_breaker_option(
        make_fresh_layer: LayerFactory, fresh_store: tuple[ContractBackend, Any],
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        chainlit_ctx: Any) -> None:
    """``--on-delete-breaker 2`` with a hook that hangs: 2 calls of 6, exit 1, the error line
    names the 6 threads and the breaker."""
    layer = await make_fresh_layer()
    threads = await _threads(layer, 6, last_message_days_ago=200)
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("CLORM_TEST_HOOK_FILE", str(calls))
    code = await asyncio.to_thread(main, [
        "purge", store_url(*fresh_store), "--older-than", "90d",
        "--on-delete", "tests.lifecycle.hookmod:hang", "--on-delete-timeout", "0.5",
        "--on-delete-breaker", "2"])
    err = capsys.readouterr().err
    assert code == 1
    assert len(calls.read_text().splitlines()) == 2
    assert err.startswith("chainlit-orm: error: the on-delete hook failed for 6 removed "
                          "thread(s): ")
    assert err.rstrip("\n").endswith(
        "; the breaker opened after 2 on_delete hook call(s) in a row did not finish within "
        "0.5 s (on_delete_breaker): the hook was not called for 4 of them")
    for tid in threads:
        assert tid in err
        assert await layer.get_thread(tid) is None


# --------------------------------------------- 17b F4 and F6: a cancelled hook, a half-hung one

SQLITE_AND_POSTGRES = pytest.mark.parametrize("fresh_store", ["sqlite", "postgres"],
                                              indirect=True)


@SQLITE_AND_POSTGRES
async def test_a_hook_raising_cancelled_error_is_a_hook_failure_in_a_purge(
        make_fresh_layer: LayerFactory, chainlit_ctx: Any) -> None:
    """A hook raising ``asyncio.CancelledError`` (an HTTP call cancelled inside it) while the
    purge is not cancelled (outside attack 17b, F4: it aborted the run with a bare
    CancelledError): every one of the 3 batches is removed, and the ``OnDeleteError`` at the end
    names exactly the threads whose hook raised it, each failure the hook's own."""
    called: list[str] = []

    async def hook(thread_id: str, user_id: str | None) -> None:
        called.append(thread_id)
        if len(called) % 10 == 1:  # calls 1, 11, 21, ...
            raise asyncio.CancelledError()

    layer = await make_fresh_layer(on_delete=hook, on_delete_timeout=HOOK_LIMIT)
    threads = await _threads(layer, MANY)
    with pytest.raises(OnDeleteError) as caught:
        await layer.purge(older_than=timedelta(days=90), now=_later(91), batch=40)
    error = caught.value
    cancelled = [tid for n, tid in enumerate(called, 1) if n % 10 == 1]
    assert sorted(called) == sorted(threads)
    assert sorted(error.detail) == sorted(cancelled)  # type: ignore[arg-type]
    assert len(cancelled) == 10
    assert {type(f) for f in error.failures.values()} == {asyncio.CancelledError}
    assert (error.skipped, error.breaker) == ([], None)
    report = error.report
    assert report is not None
    assert (report.batches, report.counts["thread"]) == (3, MANY)  # type: ignore[attr-defined]
    for tid in threads:
        assert await layer.get_thread(tid) is None


@SQLITE_AND_POSTGRES
async def test_a_hook_raising_cancelled_error_does_not_stop_an_erasure(
        make_fresh_layer: LayerFactory, chainlit_ctx: Any) -> None:
    """The attack's own case, smaller: the first hook call of ``erase_user`` raises
    CancelledError; the erasure still removes every thread and then the user row, and raises
    ``OnDeleteError`` naming that one thread."""
    called: list[str] = []

    async def hook(thread_id: str, user_id: str | None) -> None:
        called.append(thread_id)
        if len(called) == 1:
            raise asyncio.CancelledError()

    layer = await make_fresh_layer(on_delete=hook, on_delete_timeout=HOOK_LIMIT)
    user = await new_user(layer)
    threads = []
    for _ in range(5):
        tid = new_id()
        await layer.update_thread(tid, name="t", user_id=user.id)
        threads.append(tid)
    with pytest.raises(OnDeleteError) as caught:
        await layer.erase_user(user.identifier)
    assert caught.value.detail == [called[0]]
    assert sorted(called) == sorted(threads)
    assert await layer.get_user(user.identifier) is None
    for tid in threads:
        assert await layer.get_thread(tid) is None


@SQLITE_AND_POSTGRES
async def test_cancelling_the_purge_itself_still_cancels_it(
        make_fresh_layer: LayerFactory, chainlit_ctx: Any) -> None:
    """A real cancellation of the purge task, while its hook calls are in flight, is not taken
    for a hook failure: the task ends cancelled, with no OnDeleteError."""
    started = asyncio.Event()
    never = asyncio.Event()

    async def hook(thread_id: str, user_id: str | None) -> None:
        started.set()
        await never.wait()

    layer = await make_fresh_layer(on_delete=hook, on_delete_timeout=60.0)
    await _threads(layer, 5)
    task = asyncio.create_task(
        layer.purge(older_than=timedelta(days=90), now=_later(91), batch=40))
    await asyncio.wait_for(started.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


@SQLITE_AND_POSTGRES
@pytest.mark.parametrize(("breaker", "count"), [(None, MANY), (2, 40)])
async def test_a_hook_hanging_on_every_other_call_does_not_open_the_breaker(
        make_fresh_layer: LayerFactory, breaker: int | None, count: int,
        chainlit_ctx: Any) -> None:
    """Calls 1, 3, 5, ... hang, 2, 4, 6, ... return at once (outside attack 17b, F6: the
    breaker opened after 31 calls, the returned ones' slots taken by hung calls that then
    timed out one after the other). In start order no two calls in a row timed out, so the
    breaker stays closed: every hook is called, and exactly the hanging half timed out."""
    called: list[str] = []
    never = asyncio.Event()

    async def hook(thread_id: str, user_id: str | None) -> None:
        called.append(thread_id)
        if len(called) % 2:
            await asyncio.shield(never.wait())

    options: dict[str, Any] = {} if breaker is None else {"on_delete_breaker": breaker}
    layer = await make_fresh_layer(on_delete=hook, on_delete_timeout=HOOK_LIMIT, **options)
    try:
        threads = await _threads(layer, count)
        with pytest.raises(OnDeleteError) as caught:
            await layer.purge(older_than=timedelta(days=90), now=_later(91), batch=40)
        error = caught.value
        assert sorted(called) == sorted(threads)
        assert (error.skipped, error.breaker) == ([], None)
        assert sorted(error.detail) == sorted(called[0::2])  # type: ignore[arg-type]
        assert {type(f) for f in error.failures.values()} == {TimeoutExceededError}
    finally:
        never.set()
