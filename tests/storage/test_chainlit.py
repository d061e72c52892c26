"""FsspecStorage inside Chainlit itself: as the storage of Chainlit's own SQLAlchemyDataLayer, and
with its route mounted on Chainlit's FastAPI app (before the UI catch-all)."""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path

import httpx
import pytest

from chainlit_orm.storage import ROUTE_PATH, FsspecStorage
from tests.storage.conftest import TEST_SECRET, BackendCase, serve_app

# Chainlit's documented SQLAlchemy DDL (docs data-layers/sqlalchemy.mdx), in SQLite types.
CHAINLIT_DDL = """
CREATE TABLE users ("id" TEXT PRIMARY KEY, "identifier" TEXT NOT NULL UNIQUE,
    "metadata" TEXT NOT NULL, "createdAt" TEXT);
CREATE TABLE threads ("id" TEXT PRIMARY KEY, "createdAt" TEXT, "name" TEXT, "userId" TEXT,
    "userIdentifier" TEXT, "tags" TEXT, "metadata" TEXT,
    FOREIGN KEY ("userId") REFERENCES users("id") ON DELETE CASCADE);
CREATE TABLE steps ("id" TEXT PRIMARY KEY, "name" TEXT NOT NULL, "type" TEXT NOT NULL,
    "threadId" TEXT NOT NULL, "parentId" TEXT, "streaming" BOOLEAN NOT NULL,
    "waitForAnswer" BOOLEAN, "isError" BOOLEAN, "metadata" TEXT, "tags" TEXT, "input" TEXT,
    "output" TEXT, "createdAt" TEXT, "command" TEXT, "start" TEXT, "end" TEXT,
    "generation" TEXT, "showInput" TEXT, "language" TEXT, "indent" INT, "defaultOpen" BOOLEAN,
    "modes" TEXT,
    FOREIGN KEY ("threadId") REFERENCES threads("id") ON DELETE CASCADE);
CREATE TABLE elements ("id" TEXT PRIMARY KEY, "threadId" TEXT, "type" TEXT, "url" TEXT,
    "chainlitKey" TEXT, "name" TEXT NOT NULL, "display" TEXT, "objectKey" TEXT, "size" TEXT,
    "page" INT, "language" TEXT, "forId" TEXT, "mime" TEXT, "props" TEXT,
    FOREIGN KEY ("threadId") REFERENCES threads("id") ON DELETE CASCADE);
CREATE TABLE feedbacks ("id" TEXT PRIMARY KEY, "forId" TEXT NOT NULL, "threadId" TEXT NOT NULL,
    "value" INT NOT NULL, "comment" TEXT,
    FOREIGN KEY ("threadId") REFERENCES threads("id") ON DELETE CASCADE);
"""


@pytest.mark.timeout(120)
async def test_drop_in_storage_provider_of_chainlit_sqlalchemy_layer(
    case: BackendCase, tmp_path: Path, http: httpx.AsyncClient
) -> None:
    from chainlit.context import init_http_context
    from chainlit.data.sql_alchemy import SQLAlchemyDataLayer
    from chainlit.element import File

    db = tmp_path / "chainlit.db"
    user_id, thread_id, step_id = (str(uuid.uuid4()) for _ in range(3))
    with sqlite3.connect(db) as conn:
        conn.executescript(CHAINLIT_DDL)
        conn.execute(
            'INSERT INTO users ("id", "identifier", "metadata", "createdAt") VALUES (?,?,?,?)',
            (user_id, "alice", "{}", "2026-01-01T00:00:00.000Z"),
        )
        conn.execute(
            'INSERT INTO threads ("id", "userId", "userIdentifier", "metadata") VALUES (?,?,?,?)',
            (thread_id, user_id, "alice", "{}"),
        )
    storage = case.make()
    layer = SQLAlchemyDataLayer(conninfo=f"sqlite+aiosqlite:///{db}", storage_provider=storage)
    try:
        init_http_context(thread_id=thread_id)
        payload = b"%PDF-1.7 chainlit element"
        element = File(
            name="résumé.pdf",
            content=payload,
            mime="application/pdf",
            for_id=step_id,
            thread_id=thread_id,
        )
        await layer.create_element(element)

        with sqlite3.connect(db) as conn:
            object_key, url, mime = conn.execute(
                'SELECT "objectKey", "url", "mime" FROM elements WHERE "id" = ?', (element.id,)
            ).fetchone()
        assert object_key == f"{user_id}/{element.id}/résumé.pdf"
        assert mime == "application/pdf"
        assert await _exists(case, object_key) is True
        stored = await http.get(url)
        assert (stored.status_code, stored.content) == (200, payload)
        assert stored.headers["content-type"] == "application/pdf"
        fresh = await http.get(await storage.get_read_url(object_key))
        assert fresh.content == payload

        await layer.delete_element(element.id, thread_id)
        assert await _exists(case, object_key) is False
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT COUNT(*) FROM elements").fetchone() == (0,)
    finally:
        await layer.engine.dispose()


async def _exists(case: BackendCase, key: str) -> bool:
    result = case.raw_exists(key)
    return bool(await result if not isinstance(result, bool) else result)


async def test_route_mounted_on_chainlit_app_before_catch_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, http: httpx.AsyncClient
) -> None:
    from chainlit.server import app

    monkeypatch.delenv("CHAINLIT_ROOT_PATH", raising=False)
    monkeypatch.delenv("CHAINLIT_PARENT_ROOT_PATH", raising=False)
    storage = FsspecStorage(str(tmp_path / "cl"), secret=TEST_SECRET)  # mount=None: auto
    paths = [getattr(r, "path", "") for r in app.router.routes]
    route_path = f"{ROUTE_PATH}/{{name}}/{{key:path}}"
    assert paths.count(route_path) == 1
    # Chainlit's catch-all is in its router, kept by FastAPI 0.165 as one _IncludedRouter entry.
    holders = [
        i
        for i, r in enumerate(app.router.routes)
        if getattr(r, "path", "") == "/{full_path:path}"
        or any(
            getattr(inner, "path", "") == "/{full_path:path}"
            for inner in getattr(getattr(r, "original_router", None), "routes", [])
        )
    ]
    assert holders
    assert paths.index(route_path) < holders[0]
    FsspecStorage(str(tmp_path / "cl2"), secret=TEST_SECRET, mount=True)
    assert [getattr(r, "path", "") for r in app.router.routes].count(route_path) == 1

    result = await storage.upload_file(
        "u/e/data.json", json.dumps({"ok": True}).encode(), mime="application/json"
    )
    assert result["url"].startswith(f"{ROUTE_PATH}/{storage.name}/u/e/data.json?")
    with serve_app(app) as base:
        response = await http.get(base + result["url"])
        index = await http.get(base + "/some/ui/page")
    assert (response.status_code, response.json()) == (200, {"ok": True})
    assert response.headers["content-type"] == "application/json"
    assert index.headers["content-type"].startswith("text/html")
