"""Retention (issue #17, item 2) on every backend: what expires and what is kept, batches and
their statements, files, the hook (a failing one does not stop a purge), two purges in two
processes, and the CLI's dry run."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import chainlit as cl
import pytest
from chainlit.types import Feedback

from chainlit_orm.cli import main
from chainlit_orm.errors import OnDeleteError
from chainlit_orm.layers.base import ChainlitLayer
from chainlit_orm.models.types import format_timestamp, parse_timestamp, utc_now
from tests.contract.conftest import ContractBackend, message, new_id
from tests.lifecycle.conftest import LayerFactory, new_user, store_url

REPO = Path(__file__).resolve().parents[2]


async def _thread(layer: ChainlitLayer, user_id: str, *, metadata: dict[str, Any] | None = None,
                  favorite: bool = False) -> str:
    """A thread with a user message, an answer (favorited or not) with feedback, and a file."""
    tid = new_id()
    await layer.update_thread(tid, name="t", user_id=user_id, metadata=metadata)
    question = message(tid, "question")
    await layer.create_step(question)
    answer = message(tid, "answer", type_="assistant_message")
    if favorite:
        answer["metadata"] = {"favorite": True}
    await layer.create_step(answer)
    file = cl.File(name="f.txt", content=b"bytes", for_id=question["id"])
    file.thread_id = tid
    await layer.create_element(file)
    await layer.upsert_feedback(Feedback(forId=answer["id"], threadId=tid, value=0))
    return tid


def _later(moment: str, days: int) -> str:
    return format_timestamp(parse_timestamp(moment) + timedelta(days=days))


async def test_purge_expires_old_threads_and_keeps_what_matters(
        make_fresh_layer: LayerFactory, fresh_store: tuple[ContractBackend, Any],
        files_root: Path, chainlit_ctx: Any) -> None:
    calls: list[tuple[str, str | None]] = []

    async def hook(thread_id: str, user_id: str | None) -> None:
        calls.append((thread_id, user_id))

    layer = await make_fresh_layer(on_delete=hook)
    user = await new_user(layer)
    plain = [await _thread(layer, user.id) for _ in range(4)]
    shared = await _thread(layer, user.id, metadata={"is_shared": True})
    favorite = await _thread(layer, user.id, favorite=True)
    pinned = await _thread(layer, user.id, metadata={"pinned": True})
    text_true = await _thread(layer, user.id, metadata={"pinned": "true"})  # not JSON true
    mid = utc_now()
    recent = await _thread(layer, user.id)
    now = _later(mid, 90)  # exactly 90 days after "mid": what is older than mid expires

    expired = sorted([*plain, text_true])
    dry = await layer.purge(older_than=timedelta(days=90), keep_metadata=["pinned"], now=now,
                            dry_run=True, batch=2)
    assert sorted(dry.thread_ids) == expired
    assert dry.counts == {"user": 0, "thread": 5, "step": 10, "element": 5, "feedback": 5,
                          "file": 5}
    assert calls == []

    statements: list[str] = []
    if fresh_store[0].sql:
        layer.sql.on_statement.append(statements.append)  # type: ignore[attr-defined]
    report = await layer.purge(older_than=timedelta(days=90), keep_metadata=["pinned"], now=now,
                               batch=2)
    assert sorted(report.thread_ids) == expired
    assert report.counts == {"user": 0, "thread": 5, "step": 10, "element": 5, "feedback": 5,
                             "file": 5}
    assert sorted(calls) == sorted((t, user.id) for t in expired)
    if fresh_store[0].sql:
        # 5 threads in batches of 2: three batches. With a storage, files go first: each batch
        # reads its threads and object keys (no lock), deletes the files, then locks the
        # threads still expired and deletes them in a transaction of its own
        assert report.batches == 3
        keys = ["SELECT", "SELECT"]
        rows = ["SELECT", "DELETE", "DELETE", "DELETE", "DELETE"]
        framed = (["BEGIN", *keys, "COMMIT", "BEGIN", *rows, "COMMIT"] * 3)
        assert [s for s in statements if s not in ("BEGIN", "COMMIT")] == (keys + rows) * 3
        assert statements == framed or fresh_store[0].name == "sqlite"
    for tid in expired:
        assert await layer.get_thread(tid) is None
    for tid in (shared, favorite, pinned, recent):
        thread = await layer.get_thread(tid)
        assert thread is not None and len(thread["steps"]) == 2
    left = sorted(p.name for p in files_root.rglob("*") if p.is_file()
                  and ".chainlit-orm-meta" not in p.parts)
    assert len(left) == 4  # the files of the four kept threads

    # without the keep rules, the shared and favorited threads go too; "recent" stays
    calls.clear()
    again = await layer.purge(older_than=timedelta(days=90), keep_shared=False,
                              keep_favorites=False, now=now)
    assert sorted(again.thread_ids) == sorted([shared, favorite, pinned])
    assert await layer.get_thread(recent) is not None


async def test_a_failing_hook_does_not_stop_a_purge(
        make_fresh_layer: LayerFactory, chainlit_ctx: Any) -> None:
    seen: list[str] = []
    bad: set[str] = set()

    async def hook(thread_id: str, user_id: str | None) -> None:
        seen.append(thread_id)
        if thread_id in bad:
            raise RuntimeError("cache down")

    layer = await make_fresh_layer(on_delete=hook)
    user = await new_user(layer)
    threads = [await _thread(layer, user.id) for _ in range(5)]
    bad.update(threads[1::2])
    now = _later(utc_now(), 90)
    with pytest.raises(OnDeleteError) as caught:
        await layer.purge(older_than=timedelta(days=90), now=now, batch=2)
    assert sorted(caught.value.detail) == sorted(bad)  # type: ignore[arg-type]
    assert sorted(seen) == sorted(threads)  # every thread's hook ran
    report = caught.value.report
    assert report is not None and report.counts["thread"] == 5  # type: ignore[attr-defined]
    for tid in threads:
        assert await layer.get_thread(tid) is None


async def test_two_purges_in_two_processes_remove_each_thread_once(
        make_fresh_layer: LayerFactory, fresh_store: tuple[ContractBackend, Any],
        files_root: Path, tmp_path: Path, chainlit_ctx: Any) -> None:
    layer = await make_fresh_layer()
    user = await new_user(layer)
    threads = set()
    for _ in range(6):  # 24 threads, made 4 at a time
        made = await asyncio.gather(*(_thread(layer, user.id) for _ in range(4)))
        threads.update(made)
    now = _later(utc_now(), 90)
    entry, handle = fresh_store
    outs = [tmp_path / f"purge{i}.txt" for i in range(2)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.lifecycle.purge_worker", entry.name, str(handle),
        str(files_root), now, "3", str(out), cwd=str(REPO), env=env,
        stderr=asyncio.subprocess.PIPE) for out in outs]
    results = [await p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [r[1].decode()[-2000:] for r in results]
    seen = [out.read_text().splitlines() for out in outs]
    ids = [[line for line in lines if not line.startswith("report")] for lines in seen]
    reported = [int(lines[-1].split()[1]) for lines in seen]
    assert sorted(ids[0] + ids[1]) == sorted(threads)  # every thread once, by one of them
    assert set(ids[0]).isdisjoint(ids[1])
    assert reported == [len(ids[0]), len(ids[1])]
    for tid in threads:
        assert await layer.get_thread(tid) is None


async def test_purge_cli_dry_run_prints_what_would_go(
        make_fresh_layer: LayerFactory, fresh_store: tuple[ContractBackend, Any],
        files_root: Path, capsys: pytest.CaptureFixture[str], chainlit_ctx: Any) -> None:
    layer = await make_fresh_layer()
    user = await new_user(layer)
    await _thread(layer, user.id)
    url = store_url(*fresh_store)
    code = await asyncio.to_thread(main, ["purge", url, "--older-than", "90d", "--dry-run",
                                          "--storage", f"file://{files_root}",
                                          "--keep-metadata", "pinned"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0].startswith("purge ")
    assert out[1].startswith("threads expire when last active before ")
    assert out[1].endswith("; kept: shared, favorites, metadata.pinned")
    assert out[2] == ("would remove thread 0, step 0, element 0, feedback 0, file 0 in 1 "
                      "batch(es) of up to 500 threads")
    assert out[-1] == "dry run: nothing changed"
    code = await asyncio.to_thread(main, ["purge", url, "--older-than", "90x"])
    assert code == 2
