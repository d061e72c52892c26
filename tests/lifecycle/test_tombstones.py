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
from collections.abc import AsyncIterator
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
from tests.lifecycle.conftest import MOTO, LayerFactory, new_user, scan_store
from tests.lifecycle.scan import scan_dynamodb, scan_files
from tests.ports import free_port, wait_for_port

REPO = Path(__file__).resolve().parents[2]

#: Tests whose expectations are the SQL backends' (DynamoDB's differ: its own tests below).
SQL_ONLY = pytest.mark.parametrize("lstore", ["sqlite", "postgres", "mariadb"], indirect=True)
DYNAMODB_ONLY = pytest.mark.parametrize("lstore", ["dynamodb"], indirect=True)

WRITERS = 4


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
    assert await scan_store(lstore, files_root, [identifier, user_id]) == {}
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


async def _race(layer: Any, backend: str, handle: str, files_root: Path, tmp_path: Path,
                **env_extra: str) -> tuple[list[str], list[list[list[str]]], Any]:
    """Four writer processes on the user's four threads, ``erase_user`` meanwhile; returns the
    threads, each writer's lines (``KIND THREAD AFTER OUTCOME``) and the erasure's report."""
    identifier = f"race-{uuid.uuid4().hex}"
    user = await new_user(layer, identifier)
    threads = [new_id() for _ in range(4)]
    for tid in threads:
        await layer.update_thread(tid, name=f"chat of {identifier}", user_id=user.id,
                                  metadata={"owner": identifier})
        await layer.create_step(message(tid, f"{identifier} starts"))
    erased, stop = tmp_path / "erased", tmp_path / "stop"
    outs = [tmp_path / f"writer{i}.txt" for i in range(WRITERS)]
    env = {**os.environ, "PYTHONPATH": str(REPO), **env_extra}
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.lifecycle.late_writer", backend, str(handle),
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
    return threads, [lines(out) for out in outs], report


@SQL_ONLY
async def test_erase_user_while_four_processes_keep_writing(
        make_layer: LayerFactory, lstore: tuple[ContractBackend, Any], files_root: Path,
        chainlit_ctx: Any, tmp_path: Path) -> None:
    """The attack: four app processes keep writing to the user's threads (late steps, files,
    session metadata) before, during and after ``erase_user``. Afterwards nothing of the user
    is left anywhere, no row names an erased thread but its tombstone, and every write that
    began after the erasure returned got the typed refusal."""
    layer = await make_layer()
    entry, handle = lstore
    threads, logs, report = await _race(layer, entry.name, handle, files_root, tmp_path)
    identifier = report.identifier
    writes = [w for log in logs for w in log]
    after = [w for w in writes if w[2] == "True"]
    assert len(after) >= 16 * WRITERS
    assert {w[0] for w in after} == {"user_step", "step", "element", "metadata"}
    assert [w for w in after if w[3] != "refused"] == []  # every late write: typed refusal
    # during the erasure a write lands (then erased) or is refused; nothing else happens
    assert {w[3] for w in writes} <= {"ok", "refused"}, [w for w in writes
                                                         if w[3] not in ("ok", "refused")]

    found = await scan_store(lstore, files_root, [identifier, report.user_id])
    print(f"{entry.name}: {len(writes)} writes ({len(after)} after the erasure), "
          f"erase {report.counts}, left {found}")
    assert found == {}
    assert [p for p in files_root.rglob("*") if p.is_file()] == []
    assert await _rows_of_threads(lstore, threads) == {
        "thread": 0, "step": 0, "element": 0, "feedback": 0, "tombstone": 4}
    # a rerun finds nothing either
    again = await layer.erase_user(identifier)
    assert again.counts == dict.fromkeys(again.counts, 0)


# ------------------------------------------------------------------------------- DynamoDB


def _items(table: str, key_prefixes: list[str], endpoint: str = MOTO) -> dict[str, int]:
    """Items of the table whose partition key starts with one of ``key_prefixes``, by kind
    (``THREAD``, ``STEP``, ``ELEMENT``, ``FEEDBACK``; tombstones under ``ERASED``)."""
    import boto3

    client = boto3.client("dynamodb", region_name="us-east-1", endpoint_url=endpoint)
    found: dict[str, int] = {}
    kwargs: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
    while True:
        page = client.scan(**kwargs)
        for item in page.get("Items", []):
            pk, sk = item["PK"]["S"], item["SK"]["S"]
            if any(pk.startswith(p) for p in key_prefixes):
                kind = "ERASED" if pk.startswith("CHAINLIT_ORM#ERASED#") else sk.split("#")[0]
                found[kind] = found.get(kind, 0) + 1
        if "LastEvaluatedKey" not in page:
            return found
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _prefixes(thread_ids: list[str]) -> list[str]:
    return [p + t for t in thread_ids for p in ("THREAD#", "CHAINLIT_ORM#ERASED#")]


@DYNAMODB_ONLY
async def test_dynamodb_a_layer_that_never_saw_the_erasure_cannot_recreate_the_thread(
        make_layer: LayerFactory, lstore: tuple[ContractBackend, Any], files_root: Path,
        chainlit_ctx: Any) -> None:
    """As on SQL for every write of the thread item: a user message (its transaction checks
    the tombstone) and ``update_thread`` (a write that created the item reads it) are refused
    with the erasing process's error. A step or element written first lands in no thread
    (a child's write does not read its thread: that would make every step a transaction), is
    seen by no read, and goes as soon as the process meets the tombstone; from then on the
    process refuses every write itself."""
    eraser = await make_layer()
    identifier = f"tomb-{uuid.uuid4().hex}"
    tid, user_id, step = await _erased_thread(eraser, identifier)
    table = lstore[1]
    assert _items(table, _prefixes([tid])) == {"ERASED": 1}
    expected = f"thread {tid} was erased with its user"

    other = await make_layer()
    with pytest.raises(NotFoundError, match=expected) as refused:
        await other.update_thread(tid, metadata={"owner": identifier})  # persist_user_session
    assert refused.value.detail == tid
    with pytest.raises(NotFoundError, match=expected):
        await other.create_step(message(tid, f"{identifier} late", type_="assistant_message"))
    with pytest.raises(NotFoundError, match=expected):
        await other.create_element(_file(tid, step["id"], identifier.encode(), "late.txt"))

    third = await make_layer()
    with pytest.raises(NotFoundError, match=expected):  # a user message
        await third.create_step(message(tid, f"{identifier} asks"))
    assert _items(table, _prefixes([tid])) == {"ERASED": 1}

    fourth = await make_layer()  # a reply and its file first: stored, but in no thread
    reply = message(tid, f"{identifier} is told", type_="assistant_message")
    await fourth.create_step(reply)
    await fourth.create_element(_file(tid, reply["id"], identifier.encode(), "reply.txt"))
    assert await fourth.get_thread(tid) is None
    assert _items(table, _prefixes([tid])) == {"ERASED": 1, "STEP": 1, "ELEMENT": 1}
    with pytest.raises(NotFoundError, match=expected):  # the session's metadata on disconnect
        await fourth.update_thread(tid, metadata={"owner": identifier})
    assert _items(table, _prefixes([tid])) == {"ERASED": 1}  # and what it wrote is gone
    with pytest.raises(NotFoundError, match=expected):
        await fourth.create_step(message(tid, f"{identifier} again", type_="assistant_message"))

    assert await scan_store(lstore, files_root, [identifier, user_id]) == {}
    assert [p for p in files_root.rglob("*") if p.is_file()] == []
    # the tombstone holds the thread's id and a time, nothing else
    import boto3

    client = boto3.client("dynamodb", region_name="us-east-1", endpoint_url=MOTO)
    item = client.get_item(TableName=table, Key={"PK": {"S": f"CHAINLIT_ORM#ERASED#{tid}"},
                                                 "SK": {"S": "ERASED"}})["Item"]
    assert sorted(item) == ["PK", "SK", "erasedAt"]
    assert len(item["erasedAt"]["S"]) == 27
    # a thread nobody erased is written as before
    fresh = new_id()
    await other.update_thread(fresh, metadata={"k": 1})
    await other.create_step(message(fresh, "a new conversation"))
    assert _items(table, _prefixes([fresh])) == {"THREAD": 1, "STEP": 1}


@pytest.fixture
async def serial_table(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[str, str]]:
    """(endpoint, table): a migrated table on a moto server of this test's own that answers
    one request at a time (:mod:`tests.lifecycle.serial_moto` says why)."""
    from chainlit_orm import migrate

    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):  # moto's dummy credentials
        monkeypatch.setenv(name, value)

    port = free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.lifecycle.serial_moto", str(port), cwd=str(REPO),
        env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        await asyncio.to_thread(wait_for_port, port, "serial moto")
        table = f"clorm_tomb_{uuid.uuid4().hex[:12]}"
        await migrate(f"dynamodb://{table}?region=us-east-1&endpoint_url={endpoint}")
        yield endpoint, table
    finally:
        server.terminate()
        await server.wait()


async def test_dynamodb_erase_user_while_four_processes_keep_writing(
        serial_table: tuple[str, str], storage: Any, files_root: Path, chainlit_ctx: Any,
        tmp_path: Path) -> None:
    """The attack on DynamoDB (moto). Every write of the thread item after the erasure is
    refused; a writer's step or element may land before its process meets the tombstone (see
    the test above), never after; whatever landed is removed when it does, and Chainlit's
    writers always do (the session's metadata on disconnect, here each round's last write).
    Afterwards nothing of the user is left, and no item but the tombstone names a thread."""
    from chainlit_orm import DynamoDataLayer

    endpoint, table = serial_table
    layer = DynamoDataLayer(table, storage=storage, region="us-east-1", endpoint_url=endpoint)
    try:
        threads, logs, report = await _race(layer, "dynamodb", table, files_root, tmp_path,
                                            CHAINLIT_ORM_TEST_MOTO=endpoint)
    finally:
        await layer.close()
    identifier = report.identifier
    writes = [w for log in logs for w in log]
    assert {w[3] for w in writes} <= {"ok", "refused"}, [w for w in writes
                                                         if w[3] not in ("ok", "refused")]
    after = [w for w in writes if w[2] == "True"]
    assert len(after) >= 16 * WRITERS
    assert [w for w in after if w[0] in ("user_step", "metadata") and w[3] != "refused"] == []
    for log in logs:
        for tid in threads:
            outcomes = [w for w in log if w[1] == tid and w[2] == "True"]
            met = next(i for i, w in enumerate(outcomes) if w[3] == "refused")
            assert [w[0] for w in outcomes[:met]] <= ["step", "element"]  # before it met it
            assert {w[3] for w in outcomes[met:]} == {"refused"}  # never after

    found = scan_dynamodb(table, endpoint, [identifier, report.user_id])
    found.update(scan_files(files_root, [identifier, report.user_id]))
    found = {k: v for k, v in found.items() if not k.startswith("<")}
    print(f"dynamodb: {len(writes)} writes ({len(after)} after the erasure, "
          f"{sum(w[3] == 'ok' for w in after)} landed then removed), erase {report.counts}, "
          f"left {found}")
    assert found == {}
    assert [p for p in files_root.rglob("*") if p.is_file()] == []
    assert _items(table, _prefixes(threads), endpoint) == {"ERASED": 4}


@DYNAMODB_ONLY
async def test_dynamodb_late_step_and_element_after_erasure_are_unreadable_and_rerun_removes_them(
        make_layer: LayerFactory, lstore: tuple[ContractBackend, Any], files_root: Path,
        chainlit_ctx: Any) -> None:
    """Outside attack F2 (second round): a process that never meets the tombstone again (it
    crashed after its late writes) leaves a step and an element with a file in the erased
    thread's partition. No read returns them (``get_step`` and ``get_element`` read the
    tombstone in the same BatchGetItem), and ``erase_user`` run again finds the partition by
    its tombstone and removes both items and the file."""
    eraser = await make_layer()
    identifier = f"tomb-{uuid.uuid4().hex}"
    tid, user_id, _ = await _erased_thread(eraser, identifier)
    table = lstore[1]

    late = await make_layer()  # process B: its reply and file land after the erasure
    reply = message(tid, f"{identifier} late secret", type_="assistant_message")
    await late.create_step(reply)
    element = _file(tid, reply["id"], identifier.encode(), "late.txt")
    await late.create_element(element)
    assert _items(table, _prefixes([tid])) == {"ERASED": 1, "STEP": 1, "ELEMENT": 1}
    stored = [p for p in files_root.rglob("*")
              if p.is_file() and ".chainlit-orm-meta" not in p.parts]
    assert len(stored) == 1 and tid in str(stored[0])

    reader = await make_layer()
    assert await reader.get_step(reply["id"]) is None
    assert await reader.get_element(tid, element.id) is None
    assert await reader.get_thread(tid) is None

    again = await (await make_layer()).erase_user(identifier)
    assert again.counts == {"user": 0, "thread": 0, "step": 1, "element": 1, "feedback": 0,
                            "file": 1}
    assert _items(table, _prefixes([tid])) == {"ERASED": 1}
    assert not stored[0].exists()
    assert await scan_store(lstore, files_root, [identifier, user_id]) == {}
    third = await (await make_layer()).erase_user(identifier)
    assert third.counts == dict.fromkeys(third.counts, 0)



@SQL_ONLY
async def test_an_erasure_removes_a_thread_an_older_release_wrote_back(
        make_layer: LayerFactory, lstore: tuple[ContractBackend, Any], files_root: Path,
        chainlit_ctx: Any) -> None:
    """Outside attack #17 (re-attack F3): during a rolling deploy a process of the previous
    release (no tombstone check) writes late to an erased thread and so creates it again, as an
    ownerless stub no owner lookup finds. Any later erasure (here: of another user) removes each
    thread row that has a tombstone, with its steps."""
    layer = await make_layer()
    identifier = f"tomb-{uuid.uuid4().hex}"
    tid, user_id, _ = await _erased_thread(layer, identifier)
    # what the previous release's code does: plain inserts, no tombstone check
    threads, steps = layer.table("thread"), layer.table("step")
    async with layer.engine.begin() as conn:
        await conn.execute(sa.insert(threads).values(id=tid, createdAt="2026-12-07T20:00:00.000Z"))
        await conn.execute(sa.insert(steps).values(
            id=new_id(), threadId=tid, name="late", type="assistant_message", streaming=False,
            waitForAnswer=False, isError=False,
            output=f"{identifier} late text", createdAt="2026-12-07T20:00:01.000Z"))
    assert await _rows_of_threads(lstore, [tid]) == {
        "thread": 1, "step": 1, "element": 0, "feedback": 0, "tombstone": 1}

    other = f"tomb-{uuid.uuid4().hex}"
    await new_user(layer, other)
    report = await layer.erase_user(other)
    assert (report.counts["user"], report.counts["thread"], report.counts["step"]) == (1, 1, 1)
    assert await _rows_of_threads(lstore, [tid]) == {
        "thread": 0, "step": 0, "element": 0, "feedback": 0, "tombstone": 1}
    assert await scan_store(lstore, files_root, [identifier, user_id]) == {}
    again = await layer.erase_user(other)
    assert again.counts["thread"] == 0
