"""Erased threads stay erased across processes (outside attack finding F2): ``erase_user``
leaves a tombstone per erased thread (its id and a time, nothing of the user), and a write of
any process that would create one of those threads again is refused with the same
``NotFoundError`` as the erasing process's own guard, leaving no row and no stored object.

The race is real: four writer processes (:mod:`tests.lifecycle.late_writer`) keep making
Chainlit's calls of a running conversation on the user's threads while this process erases the
user; afterwards a scan of every table and the storage finds nothing of the user."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import chainlit as cl
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from chainlit_orm.errors import NotFoundError
from chainlit_orm.models.modelset import DEFAULT_MODELS
from chainlit_orm.schema_gen.sql import tombstone_table
from chainlit_orm.urls import parse_sql_url
from tests.contract.conftest import ContractBackend, message, new_id
from tests.lifecycle.conftest import MOTO, LayerFactory, new_user
from tests.lifecycle.scan import scan_dynamodb, scan_files, scan_sql

REPO = Path(__file__).resolve().parents[2]

#: The cross-process race on the SQL backends (see the module docstring).
SQL_ONLY = pytest.mark.parametrize("lstore", ["sqlite", "postgres", "mariadb"], indirect=True)

WRITERS = 4


async def _scan(lstore: tuple[ContractBackend, Any], files_root: Path, needles: list[str]
                ) -> dict[str, int]:
    entry, handle = lstore
    found = await scan_sql(handle, needles) if entry.sql else scan_dynamodb(handle, MOTO,
                                                                            needles)
    found.update(scan_files(files_root, needles))
    return {k: v for k, v in found.items() if not k.startswith("<")}


async def _rows_of_threads(lstore: tuple[ContractBackend, Any], thread_ids: list[str]
                           ) -> dict[str, int]:
    """Rows naming one of ``thread_ids``, per table: threads and their children by thread id,
    and the tombstones (SQL)."""
    entry, handle = lstore
    models = entry.models or DEFAULT_MODELS
    engine = create_async_engine(parse_sql_url(handle).async_url())
    counts: dict[str, int] = {}
    try:
        async with engine.connect() as conn:
            for entity in ("thread", "step", "element", "feedback"):
                table = models.table(entity)
                column = table.c.id if entity == "thread" else table.c.threadId
                counts[entity] = (await conn.execute(sa.select(sa.func.count()).select_from(
                    table).where(column.in_(thread_ids)))).scalar_one()
            tombstones = tombstone_table(models)
            counts["tombstone"] = (await conn.execute(sa.select(sa.func.count()).select_from(
                tombstones).where(tombstones.c.id.in_(thread_ids)))).scalar_one()
    finally:
        await engine.dispose()
    return counts


def _file(thread_id: str, for_id: str, content: bytes, name: str = "a.txt") -> cl.File:
    file = cl.File(name=name, content=content, for_id=for_id)
    file.thread_id = thread_id
    return file


async def _erased_thread(layer: Any, identifier: str) -> tuple[str, str, dict[str, Any]]:
    """A user with one thread (a message and a file), erased; returns (thread id, user id, the
    message)."""
    user = await new_user(layer, identifier)
    tid = new_id()
    await layer.update_thread(tid, name=f"chat of {identifier}", user_id=user.id,
                              metadata={"owner": identifier})
    step = message(tid, f"{identifier} says hi")
    await layer.create_step(step)
    await layer.create_element(_file(tid, step["id"], identifier.encode()))
    report = await layer.erase_user(identifier)
    assert report.counts["thread"] == 1 and report.counts["file"] == 1
    return tid, user.id, step


@SQL_ONLY
async def test_a_layer_that_never_saw_the_erasure_cannot_recreate_the_thread(
        make_layer: LayerFactory, lstore: tuple[ContractBackend, Any], files_root: Path,
        chainlit_ctx: Any) -> None:
    """Layer B shares nothing with the erasing layer A (its own pools and in-process state, as
    another process would): its late writes are refused with A's own error, nothing is
    written, and the uploaded file is removed again."""
    eraser = await make_layer()
    identifier = f"tomb-{uuid.uuid4().hex}"
    tid, user_id, step = await _erased_thread(eraser, identifier)
    other = await make_layer()

    expected = f"thread {tid} was erased with its user"
    with pytest.raises(NotFoundError, match=expected) as refused:
        await other.create_step(message(tid, f"{identifier} late", type_="assistant_message"))
    assert refused.value.detail == tid
    with pytest.raises(NotFoundError, match=expected):  # a user message: the bump's path
        await other.create_step(message(tid, f"{identifier} asks"))
    with pytest.raises(NotFoundError, match=expected):
        await other.create_element(_file(tid, step["id"], identifier.encode(), "late.txt"))
    with pytest.raises(NotFoundError, match=expected):  # persist_user_session on disconnect
        await other.update_thread(tid, metadata={"owner": identifier})
    with pytest.raises(NotFoundError, match=expected):  # a name (or tags) also creates
        await other.update_thread(tid, name=f"renamed by {identifier}")
    # the erasing layer refuses the same way (its in-process guard, then the tombstone)
    with pytest.raises(NotFoundError, match=expected):
        await eraser.update_thread(tid, metadata={"owner": identifier})

    assert await _rows_of_threads(lstore, [tid]) == {
        "thread": 0, "step": 0, "element": 0, "feedback": 0, "tombstone": 1}
    assert await _scan(lstore, files_root, [identifier, user_id]) == {}
    assert [p for p in files_root.rglob("*") if p.is_file()] == []
    # a thread nobody erased is written as before
    fresh = new_id()
    await other.create_step(message(fresh, "a new conversation", type_="assistant_message"))
    await other.update_thread(fresh, metadata={"k": 1})
    assert await _rows_of_threads(lstore, [fresh]) == {
        "thread": 1, "step": 1, "element": 0, "feedback": 0, "tombstone": 0}


@SQL_ONLY
async def test_the_tombstone_holds_only_the_thread_id_and_a_time(
        make_layer: LayerFactory, lstore: tuple[ContractBackend, Any], chainlit_ctx: Any
) -> None:
    layer = await make_layer()
    identifier = f"tomb-{uuid.uuid4().hex}"
    tid, _, _ = await _erased_thread(layer, identifier)
    entry, handle = lstore
    tombstones = tombstone_table(entry.models or DEFAULT_MODELS)
    assert [c.name for c in tombstones.columns] == ["id", "erasedAt"]
    engine = create_async_engine(parse_sql_url(handle).async_url())
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.select(tombstones).where(
                tombstones.c.id == tid))).all()
    finally:
        await engine.dispose()
    assert len(rows) == 1 and str(rows[0].id) == tid
    assert len(rows[0].erasedAt) == 27 and rows[0].erasedAt.endswith("Z")
    # a second erasure of the same id (a rerun) keeps the one tombstone
    await layer.sql.remove_threads([tid])
    assert (await _rows_of_threads(lstore, [tid]))["tombstone"] == 1


@SQL_ONLY
async def test_erase_user_while_four_processes_keep_writing(
        make_layer: LayerFactory, lstore: tuple[ContractBackend, Any], files_root: Path,
        chainlit_ctx: Any, tmp_path: Path) -> None:
    """The attack: four app processes keep writing to the user's threads (late steps, files,
    session metadata) before, during and after ``erase_user``. Afterwards nothing of the user
    is left anywhere, no row names an erased thread but its tombstone, and every write that
    began after the erasure returned got the typed refusal."""
    layer = await make_layer()
    identifier = f"race-{uuid.uuid4().hex}"
    user = await new_user(layer, identifier)
    threads = [new_id() for _ in range(4)]
    for tid in threads:
        await layer.update_thread(tid, name=f"chat of {identifier}", user_id=user.id,
                                  metadata={"owner": identifier})
        await layer.create_step(message(tid, f"{identifier} starts"))
    entry, handle = lstore
    erased, stop = tmp_path / "erased", tmp_path / "stop"
    outs = [tmp_path / f"writer{i}.txt" for i in range(WRITERS)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.lifecycle.late_writer", entry.name, str(handle),
        str(files_root), identifier, ",".join(threads[i:] + threads[:i]), str(out),
        str(erased), str(stop), cwd=str(REPO), env=env, stderr=asyncio.subprocess.PIPE)
        for i, out in enumerate(outs)]

    def lines(out: Path) -> list[list[str]]:
        return [line.split(" ", 3) for line in out.read_text().splitlines()] \
            if out.exists() else []

    async def until(done: Any, what: str) -> None:
        for _ in range(1200):
            if done():
                return
            if any(p.returncode is not None for p in procs):
                break
            await asyncio.sleep(0.1)
        stop.touch()
        errors = [(await p.communicate())[1].decode()[-2000:] for p in procs]
        raise AssertionError(f"writers: {what} did not happen: {errors}")

    try:
        # every writer has written to the live threads (files too) before the erasure starts
        await until(lambda: all(sum(1 for w in lines(o) if w[0] == "element" and w[3] == "ok")
                                >= 2 for o in outs), "writes before the erasure")
        report = await layer.erase_user(identifier)
        erased.touch()
        # and keeps writing after it returned
        await until(lambda: all(sum(1 for w in lines(o) if w[2] == "True") >= 16
                                for o in outs), "writes after the erasure")
    finally:
        stop.touch()
        results = [await p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0] * WRITERS, [r[1].decode()[-2000:]
                                                           for r in results]
    assert report.counts["thread"] == 4 and report.counts["user"] == 1
    writes = [w for out in outs for w in lines(out)]
    after = [w for w in writes if w[2] == "True"]
    assert len(after) >= 16 * WRITERS
    assert {w[0] for w in after} == {"user_step", "step", "element", "metadata"}
    assert [w for w in after if w[3] != "refused"] == []  # every late write: typed refusal
    # during the erasure a write lands (then erased) or is refused; nothing else happens
    assert {w[3] for w in writes} <= {"ok", "refused"}, [w for w in writes
                                                         if w[3] not in ("ok", "refused")]

    found = await _scan(lstore, files_root, [identifier, user.id])
    print(f"{entry.name}: {len(writes)} writes ({len(after)} after the erasure), "
          f"erase {report.counts}, left {found}")
    assert found == {}
    assert [p for p in files_root.rglob("*") if p.is_file()] == []
    assert await _rows_of_threads(lstore, threads) == {
        "thread": 0, "step": 0, "element": 0, "feedback": 0, "tombstone": 4}
    # a rerun finds nothing either
    again = await layer.erase_user(identifier)
    assert again.counts == dict.fromkeys(again.counts, 0)
