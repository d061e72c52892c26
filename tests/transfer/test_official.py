"""Leaving Chainlit's official data layer: a ``ChainlitDataLayer`` database, filled by that layer's
own code, copies into every backend and reads back through chainlit-orm's layer with every step,
element (and file), feedback and author intact; what chainlit-orm cannot hold is counted."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest

from chainlit_orm import FsspecStorage
from chainlit_orm.errors import ConfigurationError
from chainlit_orm.models.types import canonical_timestamp
from chainlit_orm.transfer import copy
from chainlit_orm.transfer._layer import read_object
from chainlit_orm.transfer.official import OfficialSource
from tests.fixtures.legacy import temp_mariadb_db, temp_postgres_db, temp_sqlite_url
from tests.transfer.conftest import dynamo_table, memory_storage
from tests.transfer.official_seed import OfficialSeed, create_schema, fill
from tests.transfer.test_round_trip import layer_for

SKIPPED = {
    "feedback superseded by a newer one on the same step": 1,
    "feedback without a step": 1,
    "step without a thread": 1,
    "thread soft-deleted in the official schema (deletedAt set), with its rows": 2,
}


@pytest.fixture(scope="module")
async def official(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One official database for the module (it is only read), with its storage."""
    async with temp_postgres_db() as url, memory_storage("official") as storage:
        await create_schema(url)
        writer = FsspecStorage(storage.url, mount=False)
        seeded = await fill(url, writer)
        yield url, storage, seeded


async def _check_read_back(dst: str, storage: FsspecStorage, seeded: OfficialSeed) -> None:
    layer = layer_for(dst, storage)
    try:
        for identifier, user_id in seeded.users.items():
            user = await layer.get_user(identifier)
            assert user is not None and user.id == user_id
        for thread_id, wanted in seeded.threads.items():
            thread = await layer.get_thread(thread_id)
            assert thread is not None
            assert thread["name"] == wanted["name"] and thread["userId"] == wanted["userId"]
            assert thread["metadata"] == wanted["metadata"] and thread["tags"] == wanted["tags"]
            identifier = next(i for i, u in seeded.users.items() if u == wanted["userId"])
            assert thread["userIdentifier"] == identifier
            assert await layer.get_thread_author(thread_id) == identifier
            sent = {k: v for k, v in seeded.steps.items() if v["threadId"] == thread_id}
            got = {s["id"]: s for s in thread["steps"]}
            assert set(got) == set(sent)
            for step_id, step in sent.items():
                stored = got[step_id]
                for key in ("name", "type", "threadId"):
                    assert stored[key] == step[key], key
                for key in ("input", "output"):  # StepDict's texts are str ("" for none)
                    assert stored[key] == (step.get(key) or ""), key
                assert stored["metadata"] == (step.get("metadata") or {})
                assert stored["parentId"] == step.get("parentId")
                assert stored["createdAt"] == canonical_timestamp(step["createdAt"])
                assert stored["isError"] == bool(step.get("isError"))
                assert stored["showInput"] == step.get("showInput", "json")
                feedback = seeded.feedback.get(step_id)
                if feedback is None:
                    assert "feedback" not in stored
                else:
                    assert stored["feedback"] == {**feedback, "forId": step_id}
            assert [s["id"] for s in thread["steps"]] == sorted(
                sent, key=lambda i: (canonical_timestamp(sent[i]["createdAt"]), i))
            elements = {e["id"]: e for e in thread["elements"] or []}
            wanted_elements = {k: v for k, v in seeded.elements.items()
                               if v["threadId"] == thread_id}
            assert set(elements) == set(wanted_elements)
            for element_id, expected in wanted_elements.items():
                element = elements[element_id]
                for key in ("name", "type", "forId", "display", "size", "language", "page",
                            "mime"):
                    assert element[key] == expected[key], key
                if element_id in seeded.files:
                    assert element["objectKey"] == f"threads/{thread_id}/files/{element_id}"
                    assert await read_object(storage, element["objectKey"]) == (
                        seeded.files[element_id])
                else:
                    assert element["objectKey"] is None and element["url"] == expected["url"]
    finally:
        await layer.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "mariadb", "dynamodb"])
async def test_official_schema_copies_into_every_backend(
    official: Any, backend: str, tmp_path: Path
) -> None:
    url, src_storage, seeded = official
    target: Any = {"sqlite": lambda: temp_sqlite_url(tmp_path), "postgres": temp_postgres_db,
                   "mariadb": temp_mariadb_db, "dynamodb": dynamo_table}[backend]
    async with target() as dst, memory_storage(backend) as dst_storage:
        summary = await copy(url, dst, src_storage=src_storage, dst_storage=dst_storage,
                             batch=2, checkpoint=tmp_path / "ck.json")
        assert summary.rows == {"users": 2, "threads": 3, "steps": 7, "elements": 5,
                                "feedbacks": 2}
        assert summary.files == 4 and summary.skipped == SKIPPED
        assert summary.verified_threads == 3
        await _check_read_back(dst, dst_storage, seeded)


async def test_a_database_with_both_schemas_needs_a_source_kind(
    official: Any, tmp_path: Path
) -> None:
    _url, src_storage, _ = official
    from chainlit_orm import migrate

    async with temp_postgres_db() as both, temp_sqlite_url(tmp_path) as dst:
        await create_schema(both)
        await migrate(both)
        with pytest.raises(ConfigurationError, match="--source-kind chainlit-orm or "
                                                    "--source-kind official"):
            await copy(both, dst, files=False)
        summary = await copy(both, dst, files=False, source_kind="official",
                             checkpoint=tmp_path / "a.json")
        assert summary.rows == dict.fromkeys(("users", "threads", "steps", "elements",
                                              "feedbacks"), 0)
        summary = await copy(both, dst, files=False, source_kind="chainlit-orm",
                             checkpoint=tmp_path / "b.json")
        assert summary.verified_threads == 0
    assert isinstance(src_storage, FsspecStorage)


async def test_one_user_of_the_official_schema(official: Any, tmp_path: Path) -> None:
    url, src_storage, _seeded = official
    async with temp_sqlite_url(tmp_path) as dst, memory_storage("one") as dst_storage:
        summary = await copy(url, dst, src_storage=src_storage, dst_storage=dst_storage,
                             user="bob 🐢@example.com", checkpoint=tmp_path / "ck.json")
        assert summary.rows == {"users": 1, "threads": 1, "steps": 2, "elements": 1,
                                "feedbacks": 0}
        # the soft-deleted thread and its message are bob's; rows of no thread are nobody's
        assert summary.skipped == {
            "thread soft-deleted in the official schema (deletedAt set), with its rows": 2}
        layer = layer_for(dst, dst_storage)
        try:
            assert await layer.get_user("alice@example.com") is None
        finally:
            await layer.close()


async def test_the_official_schema_is_never_written(official: Any) -> None:
    """The source is opened read-only in spirit: copying from it runs no write statement."""
    url, _storage, _seeded = official
    source = OfficialSource(url, __import__("chainlit_orm").DEFAULT_MODELS, None)
    statements: list[str] = []
    from sqlalchemy import event

    event.listen(source.engine.sync_engine, "before_cursor_execute",
                 lambda *args: statements.append(args[2].split()[0].upper()))
    try:
        from chainlit_orm.transfer.sources import Scope

        scope = Scope()
        await source.open(scope)
        async for _users in source.iter_users(scope, 10):
            pass
        async for _batch in source.iter_threads(scope, None, 10):
            pass
    finally:
        await source.close()
    assert statements and set(statements) == {"SELECT"}


_ = contextlib
