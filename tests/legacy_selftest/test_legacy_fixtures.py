"""Self-test of tests.fixtures.legacy: schemas, seeding through Chainlit's layer, snapshot."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.fixtures.legacy import (
    VARIANTS,
    SeedResult,
    create_legacy_schema,
    schema_statements,
    seed_with_chainlit,
    snapshot,
    temp_mariadb_db,
    temp_postgres_db,
    temp_sqlite_url,
)

BACKENDS = (
    pytest.param("postgresql", marks=pytest.mark.postgres, id="pg"),
    pytest.param("sqlite", marks=pytest.mark.sqlite, id="sqlite"),
)

THREAD_NAMES = ["What is the capital of France?", "Summarise this PDF", "Bonjour, ça va ? 👋"]
OWNERS = ["alice@example.com", "alice@example.com", "bob@example.com"]

DOCS_STEP_COLUMNS = {
    "id", "name", "type", "threadId", "parentId", "streaming", "waitForAnswer", "isError",
    "metadata", "tags", "input", "output", "createdAt", "command", "start", "end", "generation",
    "showInput", "language", "indent", "defaultOpen", "modes",
}  # fmt: skip
LEGACY_STEP_COLUMNS = (DOCS_STEP_COLUMNS - {"command", "defaultOpen", "modes"}) | {
    "disableFeedback"
}
DOCS_ELEMENT_COLUMNS = {
    "id", "threadId", "type", "url", "chainlitKey", "name", "display", "objectKey", "size",
    "page", "language", "forId", "mime", "props",
}  # fmt: skip


async def _seeded(backend: str, variant: str, tmp_path: Path) -> AsyncIterator[SeedResult]:
    cm = temp_postgres_db() if backend == "postgresql" else temp_sqlite_url(tmp_path)
    async with cm as url:
        await create_legacy_schema(url, variant)
        yield await seed_with_chainlit(url, variant)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=VARIANTS)
def variant(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def seeded(backend: str, variant: str, tmp_path: Path) -> AsyncIterator[SeedResult]:
    async for result in _seeded(backend, variant, tmp_path):
        yield result


def test_sql_files_have_the_five_tables() -> None:
    for dialect in ("postgresql", "sqlite"):
        for variant in VARIANTS:
            stmts = schema_statements(dialect, variant)
            tables = [
                re.search(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)", s).group(1) for s in stmts
            ]
            assert tables == ["users", "threads", "steps", "elements", "feedbacks"]
            joined = "\n".join(stmts)
            assert "autoCollapse" not in joined
            assert "autoPlay" not in joined
            assert ('"disableFeedback" BOOLEAN NOT NULL' in joined) == (variant == "legacy")
            assert joined.count("FOREIGN KEY") == (4 if variant == "docs" else 1)
            if dialect == "sqlite":
                assert "UUID" not in joined
                assert "JSONB" not in joined
                assert "[]" not in joined


async def test_row_counts_and_key_values(seeded: SeedResult) -> None:
    r = seeded
    snap = r.snapshot
    n_steps = 6 if r.variant == "docs" else 9
    assert {t: len(rows) for t, rows in snap.items()} == {
        "users": 2,
        "threads": 3,
        "steps": n_steps,
        "elements": 3,
        "feedbacks": 3,
    }

    # users
    assert set(r.user_ids) == {"alice@example.com", "bob@example.com"}
    alice = r.row("users", r.user_ids["alice@example.com"])
    assert alice["identifier"] == "alice@example.com"
    assert alice["metadata"] == {"provider": "credentials", "role": "admin"}
    assert alice["createdAt"].endswith("Z")

    # threads
    assert len(r.thread_ids) == 3
    for tid, name, owner in zip(r.thread_ids, THREAD_NAMES, OWNERS, strict=True):
        row = r.row("threads", tid)
        assert row["name"] == name
        assert row["userIdentifier"] == owner
        assert row["userId"] == r.user_ids[owner]
        assert row["createdAt"].endswith("Z")
        assert row["metadata"]["client_type"] == "webapp"
        assert "memory" not in row["metadata"]  # None in update_thread(metadata) deletes a key
        expected_tags = [row["metadata"]["chat_profile"]] if r.dialect == "postgresql" else None
        assert row["tags"] == expected_tags
    shared = r.row("threads", r.thread_ids[1])["metadata"]
    assert shared["is_shared"] is True
    assert shared["chat_profile"] == "Researcher"
    assert "is_shared" not in r.row("threads", r.thread_ids[0])["metadata"]

    # steps
    per_thread = [len(r.step_ids_by_thread[t]) for t in r.thread_ids]
    assert per_thread == ([2, 2, 2] if r.variant == "docs" else [3, 4, 2])
    assert sorted(r.step_ids) == [s["id"] for s in snap["steps"]]
    expected_cols = DOCS_STEP_COLUMNS if r.variant == "docs" else LEGACY_STEP_COLUMNS
    for step in snap["steps"]:
        assert set(step) == expected_cols
        assert step["threadId"] in r.thread_ids
        assert step["streaming"] is False
        assert isinstance(step["metadata"], dict)
    types = sorted(s["type"] for s in snap["steps"])
    if r.variant == "docs":
        assert types == ["assistant_message"] * 3 + ["user_message"] * 3
        first_user = r.row("steps", r.step_ids_by_thread[r.thread_ids[0]][0])
        assert first_user["command"] == "search"
        assert first_user["output"] == THREAD_NAMES[0]
        assert r.fallback_step_ids == []
    else:
        assert types == ["assistant_message"] * 4 + ["tool"] * 2 + ["user_message"] * 3
        assert all(s["disableFeedback"] is False for s in snap["steps"])
        assert sorted(r.fallback_step_ids) == sorted(r.step_ids)
        tool = next(s for s in snap["steps"] if s["type"] == "tool")
        assert tool["name"] == "search_web"
        assert tool["metadata"] == {"icon": "search"}
        assert tool["showInput"] == "json"
        assert tool["parentId"] in r.step_ids
    answer2 = r.row("steps", r.step_ids_by_thread[r.thread_ids[2]][1])
    assert answer2["output"] == "Très bien, merci !"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", answer2["createdAt"])
    answer0 = r.row("steps", r.duplicate_feedback_step_id)
    assert answer0["createdAt"] == "2025-01-15T09:30:02.123456Z"
    assert answer0["start"] == answer0["end"] == answer0["createdAt"]

    # elements
    assert sorted(r.element_ids) == [e["id"] for e in snap["elements"]]
    by_type = {e["type"]: e for e in snap["elements"]}
    assert set(by_type) == {"text", "image", "file"}
    assert by_type["image"]["size"] == "medium"
    assert by_type["text"]["mime"] == "text/markdown"
    assert by_type["file"]["threadId"] == r.thread_ids[1]
    for e in snap["elements"]:
        assert e["forId"] in r.step_ids
        assert e["url"] == f"memory://{e['objectKey']}"
        assert e["objectKey"].startswith(r.row("threads", e["threadId"])["userId"] + "/")
        assert e["objectKey"] in r.storage.objects
        assert ("props" in e) == (r.variant == "docs")
        if r.variant == "docs":
            assert set(e) == DOCS_ELEMENT_COLUMNS
            assert e["props"] is None
    assert r.storage.objects[by_type["text"]["objectKey"]] == b"# Paris\n\nCapital of France."
    assert r.storage.objects[by_type["image"]["objectKey"]].startswith(b"\x89PNG")

    # feedbacks
    assert sorted(r.feedback_ids) == [f["id"] for f in snap["feedbacks"]]
    dup = [f for f in snap["feedbacks"] if f["forId"] == r.duplicate_feedback_step_id]
    assert len(dup) == 2
    assert {f["id"] for f in dup} == set(r.duplicate_feedback_ids)
    assert sorted((f["value"], f["comment"]) for f in dup) == [
        (0, "Actually, wrong"),
        (1, "Great answer"),
    ]
    other = [f for f in snap["feedbacks"] if f["forId"] != r.duplicate_feedback_step_id]
    assert [(f["value"], f["comment"], f["threadId"]) for f in other] == [
        (0, "Too long", r.thread_ids[1])
    ]


async def test_dropped_writes_are_recorded(seeded: SeedResult) -> None:
    r = seeded
    assert all(d.table == "steps" for d in r.dropped)
    descriptions = sorted(d.description for d in r.dropped)
    if r.variant == "docs":
        assert descriptions == [
            "thread 0 cl.Step tool",
            "thread 1 assistant_message with modes",
            "thread 1 cl.Step tool",
        ]
        assert not any(d.recovered for d in r.dropped)
        for d in r.dropped:
            assert d.id not in r.step_ids
            needle = "autoCollapse" if "cl.Step" in d.description else "dict"
            assert needle in d.error
    else:
        assert len(r.dropped) == 9
        assert all(d.recovered for d in r.dropped)
        assert sorted(d.id for d in r.dropped) == sorted(r.step_ids)
        reasons = {d.description: d.error for d in r.dropped}
        # the first missing column in Chainlit's INSERT, or the NOT NULL disableFeedback
        assert "command" in reasons["thread 0 user_message"]
        assert "defaultOpen" in reasons["thread 0 cl.Step tool"]
        assert "defaultOpen" in reasons["thread 1 cl.Step tool"]
        assert "modes" in reasons["thread 1 assistant_message with modes"]
        assert sum("disableFeedback" in e for e in reasons.values()) == 5


async def test_snapshot_is_stable_and_raw_values(seeded: SeedResult) -> None:
    r = seeded
    assert await snapshot(r.url) == r.snapshot
    raw = await snapshot(r.url, normalize=False)
    assert [row["id"] for row in raw["threads"]] == [
        row["id"] if r.dialect == "sqlite" else uuid.UUID(row["id"])
        for row in r.snapshot["threads"]
    ]
    user_meta = raw["users"][0]["metadata"]
    assert isinstance(user_meta, dict if r.dialect == "postgresql" else str)


@pytest.mark.postgres
async def test_postgres_constraints_and_forced_drop(variant: str) -> None:
    async with temp_postgres_db() as url:
        name = url.rsplit("/", 1)[1]
        assert re.fullmatch(r"clorm_[0-9a-f]{32}", name)
        await create_legacy_schema(url, variant)
        engine = create_async_engine(url)
        conn = await engine.connect()  # left open on purpose: the drop must terminate it
        fks = await conn.execute(
            text(
                "SELECT tc.table_name FROM information_schema.table_constraints tc "
                "WHERE tc.constraint_type = 'FOREIGN KEY' ORDER BY 1"
            )
        )
        expected = (
            ["elements", "feedbacks", "steps", "threads"] if variant == "docs" else ["threads"]
        )
        assert [row[0] for row in fks] == expected
        default = await conn.execute(
            text(
                "SELECT is_nullable, column_default FROM information_schema.columns "
                "WHERE table_name = 'threads' AND column_name = 'metadata'"
            )
        )
        nullable, col_default = default.one()
        if variant == "legacy":
            assert (nullable, col_default) == ("NO", "'{}'::jsonb")
        else:
            assert (nullable, col_default) == ("YES", None)
    admin = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        assert (
            await admin.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1", name) == 0
        )
    finally:
        await admin.close()
    with contextlib.suppress(Exception):  # the connection was terminated server-side
        await conn.close()
    await engine.dispose()


@pytest.mark.sqlite
async def test_sqlite_url_removes_file(tmp_path: Path) -> None:
    async with temp_sqlite_url(tmp_path) as url:
        await create_legacy_schema(url, "docs")
        path = Path(url.removeprefix("sqlite+aiosqlite:///"))
        assert path.exists()
    assert not path.exists()


@pytest.mark.mariadb
async def test_mariadb_temp_db_created_and_dropped() -> None:
    async with temp_mariadb_db() as url:
        name = url.rsplit("/", 1)[1]
        assert url == f"mysql+asyncmy://root@127.0.0.1:3306/{name}"
        engine = create_async_engine(url)
        conn = await engine.connect()  # left open on purpose: the drop must kill it
        await conn.execute(text("CREATE TABLE t (id INT PRIMARY KEY)"))
        await conn.execute(text("INSERT INTO t VALUES (1)"))
    check = create_async_engine("mysql+asyncmy://root@127.0.0.1:3306/")
    try:
        async with check.connect() as c:
            found = await c.execute(
                text("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = :n"),
                {"n": name},
            )
            assert found.scalar_one() == 0
    finally:
        await check.dispose()
    with contextlib.suppress(Exception):  # the connection was killed server-side
        await conn.close()
    await engine.dispose()


def test_bad_variant_and_dialect() -> None:
    with pytest.raises(ValueError, match="variant"):
        schema_statements("postgresql", "nope")
    with pytest.raises(ValueError, match="dialect"):
        schema_statements("mysql", "docs")
