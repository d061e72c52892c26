"""Drop-in: a database written by Chainlit's own SQLAlchemyDataLayer, upgraded with
``chainlit-orm migrate``, is read by SQLDataLayer with everything intact (differential test)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from chainlit.context import init_http_context
from chainlit.data.sql_alchemy import SQLAlchemyDataLayer
from chainlit.types import Pagination, ThreadFilter

from chainlit_orm import SQLDataLayer, migrate
from chainlit_orm.models.types import parse_timestamp
from tests.fixtures.legacy import (
    create_legacy_schema,
    seed_with_chainlit,
    temp_postgres_db,
    temp_sqlite_url,
)


def _instant(value: str | None) -> Any:
    return None if value is None else parse_timestamp(value)


def _metadata(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


async def _read_with_chainlit(url: str, thread_ids: list[str]) -> dict[str, Any]:
    init_http_context()
    theirs = SQLAlchemyDataLayer(conninfo=url)
    try:
        return {tid: await theirs.get_thread(tid) for tid in thread_ids}
    finally:
        await theirs.engine.dispose()


@pytest.mark.parametrize("variant", ["docs", "legacy"])
@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
async def test_chainlit_written_database_reads_back_intact(
    dialect: str, variant: str, tmp_path: Path
) -> None:
    database = temp_postgres_db() if dialect == "postgresql" else temp_sqlite_url(tmp_path)
    async with database as url:
        await create_legacy_schema(url, variant)
        seed = await seed_with_chainlit(url, variant)
        before = await _read_with_chainlit(url, seed.thread_ids)
        report = await migrate(url, dedupe_feedback=True)
        assert report.changed is True
        layer = SQLDataLayer(url, storage=seed.storage)
        try:
            await _compare(layer, seed, before)
        finally:
            await layer.close()


async def _compare(layer: SQLDataLayer, seed: Any, before: dict[str, Any]) -> None:
    removed_feedback = seed.duplicate_feedback_ids[0]  # dedupe keeps one row per step
    for identifier, user_id in seed.user_ids.items():
        user = await layer.get_user(identifier)
        assert user is not None and user.id == user_id
        assert user.metadata == _metadata(seed.row("users", user_id)["metadata"])
        owned = [tid for tid in seed.thread_ids
                 if seed.row("threads", tid)["userId"] == user_id]
        page = await layer.list_threads(Pagination(first=35), ThreadFilter(userId=user_id))
        assert sorted(t["id"] for t in page.data) == sorted(owned)
    for tid in seed.thread_ids:
        theirs, ours = before[tid], await layer.get_thread(tid)
        assert theirs is not None and ours is not None
        row = seed.row("threads", tid)
        assert ours["name"] == theirs["name"] == row["name"]
        assert ours["userId"] == row["userId"]
        assert ours["userIdentifier"] == theirs["userIdentifier"] == row["userIdentifier"]
        assert ours["metadata"] == _metadata(theirs["metadata"])
        assert (ours["tags"] or None) == (row["tags"] or None)
        assert _instant(ours["createdAt"]) == _instant(row["createdAt"])
        assert await layer.get_thread_author(tid) == row["userIdentifier"]
        # every step Chainlit's layer returns, ours returns, field by field
        assert [s["id"] for s in ours["steps"]] == seed.step_ids_by_thread[tid]
        their_steps = {s["id"]: s for s in theirs["steps"]}
        assert set(their_steps) == set(seed.step_ids_by_thread[tid])
        for step in ours["steps"]:
            their = their_steps[step["id"]]
            for key in ("name", "type", "threadId", "parentId", "output", "input", "isError",
                        "streaming", "command", "language"):
                if key in their:
                    assert step[key] == their[key], (key, step[key], their[key])
            assert _instant(step["createdAt"]) == _instant(their["createdAt"])
            assert step["metadata"] == (_metadata(their.get("metadata")) or {})
            their_feedback = their.get("feedback")
            if their_feedback and their_feedback.get("id") != removed_feedback:
                assert step["feedback"]["value"] == their_feedback["value"]
                assert step["feedback"]["comment"] == their_feedback.get("comment")
                assert step["feedback"]["id"] == their_feedback["id"]
        # Chainlit's own get_thread drops elements on its documented schema (it reads autoPlay
        # and playerConfig, which that schema lacks), so the seeded rows are the reference.
        seeded = {e["id"]: e for e in seed.rows("elements") if e["threadId"] == tid}
        ours_elements = {e["id"]: e for e in ours["elements"] or []}
        assert set(ours_elements) == set(seeded)
        for eid, element in ours_elements.items():
            for key in ("name", "type", "objectKey", "display", "mime", "forId", "threadId"):
                assert element[key] == seeded[eid][key], key
            assert element["url"] == f"memory://{element['objectKey']}"
            fetched = await layer.get_element(tid, eid)
            assert fetched is not None and fetched["name"] == element["name"]
    kept = {seed.duplicate_feedback_ids[1]}
    for fid in seed.feedback_ids:
        if fid != removed_feedback:
            kept.add(fid)
    found = {s["feedback"]["id"] for tid in seed.thread_ids
             for s in (await layer.get_thread(tid) or {"steps": []})["steps"] if "feedback" in s}
    assert found == kept
