"""What enters from outside chainlit-orm's layers (a bundle, Chainlit's official schema) passes the
same limit checks as a layer write (:mod:`chainlit_orm.models.limits`), and derived columns are
made as the layer makes them: a SQL destination gets the case-folded search copies, a DynamoDB
item gets none.

* A bundle is one input: a record beyond the limits refuses the whole import, typed, with the
  file and line named, before anything (not even the schema) is written to the destination.
* A row of the official schema that chainlit-orm cannot hold is left out, counted in the summary
  by entity and column, logged with its id, and the rest is copied and verified (issue 16: rows
  of that schema chainlit-orm cannot hold are counted and left out of ``--verify``).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
import sqlalchemy as sa
from chainlit.types import Feedback
from chainlit.user import User
from sqlalchemy.ext.asyncio import create_async_engine

from chainlit_orm import DEFAULT_MODELS, SQLDataLayer
from chainlit_orm.errors import InvalidInputError, PayloadTooLargeError
from chainlit_orm.models.limits import MAX_RECORD_BYTES
from chainlit_orm.models.search import fold
from chainlit_orm.transfer import copy, export, import_bundle
from tests.fixtures.legacy import _chainlit_context, temp_postgres_db, temp_sqlite_url
from tests.transfer.conftest import MOTO_ENDPOINT, REGION, dynamo_table, memory_storage
from tests.transfer.official_seed import _message, create_schema, dsn
from tests.transfer.seed import seed_many
from tests.transfer.test_round_trip import layer_for
from tests.transfer.test_tamper import fix_manifest

# ------------------------------------------------------------------------------------ bundles


@pytest.fixture
async def bundle(tmp_path: Path) -> Path:
    """A bundle of 4 small threads of two users (no files: the checks are on records)."""
    async with temp_sqlite_url(tmp_path) as url:
        layer = SQLDataLayer(url, create_schema=True)
        users = [await layer.create_user(User(identifier=f"u{i}@example.com")) for i in (1, 2)]
        await seed_many(layer, users, 4, files=False)
        await layer.close()
        out = tmp_path / "bundle"
        summary = await export(url, out, files=False)
        assert summary.rows == {"users": 2, "threads": 4, "steps": 12, "elements": 0,
                                "feedbacks": 2}
        return out


def _edit(bundle: Path, name: str, index: int, change: Callable[[dict[str, Any]], None]) -> int:
    """Change record ``index`` of ``name`` in place; its line number."""
    lines = (bundle / name).read_text().splitlines()
    data = json.loads(lines[index])
    change(data)
    lines[index] = json.dumps(data, ensure_ascii=False)
    (bundle / name).write_text("\n".join(lines) + "\n")
    return (index % len(lines)) + 1


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"k": value}
    return value


# (file, record index, change, error type, message pattern after "FILE line N: ")
REFUSALS = {
    "identifier ending in a space": (
        "users.jsonl", 0, lambda u: u.update(identifier=u["identifier"] + " "),
        InvalidInputError, r"identifier 'u[12]@example\.com ' ends with a space"),
    "thread above the record limit": (
        "threads.jsonl", -1, lambda t: t.update(metadata={"blob": "x" * MAX_RECORD_BYTES}),
        PayloadTooLargeError, rf"thread is larger than the {MAX_RECORD_BYTES} byte record limit"),
    "step metadata number beyond 38 digits": (
        "steps.jsonl", -1, lambda s: s.update(metadata={"n": 10**40}),
        InvalidInputError, r"step metadata: the integer 1000+ has more than 38 digits"),
    "step metadata nested too deep": (
        "steps.jsonl", -1, lambda s: s.update(metadata=_nested(32)),
        InvalidInputError, r"step metadata is nested more than 32 levels deep"),
    "step type beyond the indexed length": (
        "steps.jsonl", -1, lambda s: s.update(type="t" * 192),
        InvalidInputError, r"step type is longer than 191 characters"),
    "step without a name": (
        "steps.jsonl", -1, lambda s: s.update(name=None),
        InvalidInputError, r"step name must be a string, got NoneType"),
    "feedback value 2": (
        "feedbacks.jsonl", -1, lambda f: f.update(value=2),
        InvalidInputError, r"feedback value must be 0 or 1, got 2"),
    "showInput that reads back as a bool": (
        "steps.jsonl", -1, lambda s: s.update(showInput="TRUE"),
        InvalidInputError, r"step showInput: the string 'TRUE' would read back as a bool"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
async def test_a_bundle_record_beyond_the_limits_refuses_the_import_before_any_write(
    bundle: Path, tmp_path: Path, case: str
) -> None:
    name, index, change, error, message = REFUSALS[case]
    line = _edit(bundle, name, index, change)
    path = tmp_path / f"dst-{uuid.uuid4().hex}.db"
    with pytest.raises(error, match=rf"^{name.replace('.', '[.]')} line {line}: {message}"):
        # batch=1: without the check up front, the threads before the bad line would be written
        await import_bundle(bundle, f"sqlite+aiosqlite:///{path}", files=False, batch=1,
                            checkpoint=tmp_path / "ck.json")
    assert not path.exists()  # not even the schema: the bundle was refused before migrate


async def test_a_bundle_within_the_limits_imports_whole(bundle: Path, tmp_path: Path) -> None:
    """The check up front refuses nothing a layer accepts: the limits' edge values pass (a
    38-digit integer, 31 nested objects, a 191-character type, a long output)."""
    _edit(bundle, "steps.jsonl", -1, lambda s: s.update(
        metadata={"n": 10**38 - 1, "deep": _nested(30)}, type="t" * 191,
        output="o" * (MAX_RECORD_BYTES + 10)))  # input/output are outside the record's size
    fix_manifest(bundle)  # the import holds every file to the manifest's SHA-256 and count
    async with temp_sqlite_url(tmp_path) as dst:
        summary = await import_bundle(bundle, dst, files=False, batch=1,
                                      checkpoint=tmp_path / "ck.json")
        assert summary.rows == {"users": 2, "threads": 4, "steps": 12, "elements": 0,
                                "feedbacks": 2}
        assert summary.verified_threads == 4


# ------------------------------------------------------------------------ search copies


async def test_copies_carry_the_layers_search_copies_on_sql_and_none_on_dynamodb(
    tmp_path: Path
) -> None:
    async with temp_sqlite_url(tmp_path) as src, temp_sqlite_url(tmp_path) as dst, \
            dynamo_table() as table:
        layer = SQLDataLayer(src, create_schema=True)
        user = await layer.create_user(User(identifier="fold@example.com"))
        [tid] = await seed_many(layer, [user], 1, files=False)
        await layer.update_thread(tid, name="Straße İstanbul ✓")
        await layer.close()
        await copy(src, dst, files=False, checkpoint=tmp_path / "a.json")
        await copy(src, table, files=False, checkpoint=tmp_path / "b.json")

        threads, steps = DEFAULT_MODELS.table("thread"), DEFAULT_MODELS.table("step")
        engine = create_async_engine(dst)
        try:
            async with engine.connect() as conn:
                names = (await conn.execute(sa.select(threads.c.name, threads.c.nameFolded)))
                assert [tuple(r) for r in names] == [
                    ("Straße İstanbul ✓", "strasse i̇stanbul ✓")]
                rows = await conn.execute(sa.select(steps.c.type, steps.c.output,
                                                    steps.c.outputFolded).order_by(steps.c.type))
                got = [tuple(r) for r in rows]
        finally:
            await engine.dispose()
        # message steps get the folded copy of their text; a tool step's text is not searched
        assert got == [("assistant_message", "answer 0", "answer 0"),
                       ("tool", "tool 0", None),
                       ("user_message", "question 0", "question 0")]
        assert fold("Straße İstanbul ✓") == "strasse i̇stanbul ✓"

        layer = layer_for(dst, None)  # type: ignore[arg-type]
        try:
            from chainlit.types import Pagination, ThreadFilter

            found = await layer.list_threads(Pagination(first=10), ThreadFilter(
                userId=user.id, search="STRASSE"))
            assert [t["id"] for t in found.data] == [tid]
        finally:
            await layer.close()

        client = boto3.client("dynamodb", region_name=REGION, endpoint_url=MOTO_ENDPOINT)
        name = table.split("://", 1)[1].split("?", 1)[0]
        items = client.scan(TableName=name, ConsistentRead=True)["Items"]
        # the version item, the user, the thread and its 3 steps (seed_many's thread 0 has no
        # feedback); the texts are there, their folded copies are not
        assert len(items) == 6
        assert sorted(i["name"]["S"] for i in items if "name" in i) == sorted([
            "Straße İstanbul ✓", "tool", "Assistant", "alice"])
        assert sorted(i["output"]["S"] for i in items if "output" in i) == [
            "answer 0", "question 0", "tool 0"]
        assert not any("nameFolded" in i or "outputFolded" in i for i in items)


# ------------------------------------------------------------------------ official schema

#: What the official store below holds that chainlit-orm cannot, by the summary's reason.
OFFICIAL_LEFT_OUT = {
    "user whose identifier chainlit-orm's limits refuse": 1,
    # carol's thread, its step and that step's feedback
    "thread whose owner chainlit-orm's limits refuse, with its rows": 3,
    # the deep thread, its message and its element
    "thread whose metadata chainlit-orm's limits refuse, with its rows": 3,
    "step whose metadata chainlit-orm's limits refuse": 1,
    "feedback on a step that chainlit-orm's limits refuse": 1,
    f"feedback larger than chainlit-orm's record limit ({MAX_RECORD_BYTES} bytes)": 1,
}


async def _fill_beyond_limits(url: str) -> dict[str, str]:
    """An official store written by ``ChainlitDataLayer`` with rows beyond chainlit-orm's
    limits beside good ones; returns the ids the test looks for."""
    import chainlit as cl
    from chainlit.data.chainlit_data_layer import ChainlitDataLayer

    ids: dict[str, str] = {}
    layer = ChainlitDataLayer(dsn(url))
    try:
        async with _chainlit_context(str(uuid.uuid4())):
            alice = await layer.create_user(User(identifier="alice@example.com"))
            carol = await layer.create_user(User(identifier="carol "))  # MariaDB: "carol"
            assert alice is not None and carol is not None
            ids["alice"], ids["carol user"] = alice.id, carol.id

            good = ids["good"] = str(uuid.uuid4())
            await layer.update_thread(good, name="fine", user_id=alice.id)
            question = _message(good, 1, "question")
            await layer.create_step(question)
            huge = _message(good, 2, "o" * (9 * 1024 * 1024), type_="assistant_message")
            await layer.create_step(huge)  # above the layer's default max_text_bytes: kept
            await layer.upsert_feedback(Feedback(forId=huge["id"], value=1, comment="ok"))
            answer = _message(good, 3, "answer", type_="assistant_message")
            await layer.create_step(answer)
            ids["big feedback"] = await layer.upsert_feedback(Feedback(
                forId=answer["id"], value=0, comment="c" * (MAX_RECORD_BYTES + 1)))
            odd = _message(good, 4, "odd", type_="assistant_message",
                           metadata={"n": 10**40})
            await layer.create_step(odd)
            await layer.upsert_feedback(Feedback(forId=odd["id"], value=1, comment=None))
            ids.update(question=question["id"], huge=huge["id"], answer=answer["id"],
                       odd=odd["id"])

            deep = ids["deep"] = str(uuid.uuid4())
            await layer.update_thread(deep, name="deep", user_id=alice.id,
                                      metadata={"d": _nested(32)})
            message = _message(deep, 5, "in a deep thread")
            await layer.create_step(message)
            linked = cl.File(name="r.pdf", url="https://example.com/r.pdf",
                             for_id=message["id"])
            linked.thread_id = deep
            await layer.create_element(linked)

            carols = ids["carol"] = str(uuid.uuid4())
            await layer.update_thread(carols, name="carol's", user_id=carol.id)
            mine = _message(carols, 6, "mine", type_="assistant_message")
            await layer.create_step(mine)
            await layer.upsert_feedback(Feedback(forId=mine["id"], value=1, comment=None))
    finally:
        await layer.close()
    return ids


async def test_official_rows_beyond_the_limits_are_left_out_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with temp_postgres_db() as url, temp_sqlite_url(tmp_path) as dst, \
            memory_storage("limits") as dst_storage:
        await create_schema(url)
        ids = await _fill_beyond_limits(url)
        with caplog.at_level(logging.WARNING, logger="chainlit_orm.transfer.official"):
            summary = await copy(url, dst, dst_storage=dst_storage, files=False,
                                 checkpoint=tmp_path / "ck.json")
        assert summary.rows == {"users": 1, "threads": 1, "steps": 3, "elements": 0,
                                "feedbacks": 1}
        assert summary.skipped == OFFICIAL_LEFT_OUT
        assert summary.verified_threads == 1
        # each refused row is logged once (the verification reads the source again)
        logged = sorted(r.getMessage() for r in caplog.records
                        if r.name == "chainlit_orm.transfer.official")
        identifier = "identifier 'carol ' ends with a space, which MySQL/MariaDB ignore when " \
                     "comparing: it would name another user there"
        assert logged == sorted([
            f"left out user {ids['carol user']}: {identifier}",
            f"left out thread {ids['carol']}: {identifier}",
            f"left out thread {ids['deep']}: thread metadata is nested more than 32 levels deep",
            f"left out step {ids['odd']}: step metadata: the integer {10**40} has more than 38 "
            "digits",
            f"left out feedback {ids['big feedback']}: feedback is larger than the "
            f"{MAX_RECORD_BYTES} byte record limit"])

        layer = layer_for(dst, dst_storage)
        try:
            thread = await layer.get_thread(ids["good"])
            assert thread is not None
            steps = {s["id"]: s for s in thread["steps"]}
            assert set(steps) == {ids["question"], ids["huge"], ids["answer"]}
            assert len(steps[ids["huge"]]["output"]) == 9 * 1024 * 1024
            assert steps[ids["huge"]]["feedback"]["value"] == 1
            assert "feedback" not in steps[ids["answer"]]
            assert await layer.get_thread(ids["deep"]) is None
            assert await layer.get_thread(ids["carol"]) is None
        finally:
            await layer.close()

        with pytest.raises(InvalidInputError, match=r"user 'carol ' cannot be copied: "
                                                    r"identifier 'carol ' ends with a space"):
            await copy(url, dst, files=False, user="carol ", checkpoint=tmp_path / "c.json")

