"""list_threads beyond 1,000 threads, by creation order, and over a borrowed AsyncEngine."""

from __future__ import annotations

import asyncio

from chainlit.types import Pagination, ThreadFilter
from chainlit.user import User
from sqlalchemy.ext.asyncio import create_async_engine

from chainlit_orm import SQLDataLayer
from tests.sql.conftest import new_id


async def test_more_than_1000_threads_page_without_duplicates_or_skips(
    sql_layer: SQLDataLayer,
) -> None:
    user = await sql_layer.create_user(User(identifier=f"many-{new_id()}", metadata={}))
    assert user is not None
    ids = [new_id() for _ in range(1_050)]
    for start in range(0, len(ids), 50):
        await asyncio.gather(*(sql_layer.update_thread(tid, name="n", user_id=user.id)
                               for tid in ids[start:start + 50]))
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await sql_layer.list_threads(Pagination(first=35, cursor=cursor),
                                            ThreadFilter(userId=user.id))
        seen += [t["id"] for t in page.data]
        pages += 1
        if not page.pageInfo.hasNextPage:
            break
        cursor = page.pageInfo.endCursor
    assert pages == 30  # 1,050 / 35
    assert len(seen) == 1_050 and set(seen) == set(ids)


async def test_thread_order_created_lists_by_creation_and_reports_creation_time(
    sql_url: str,
) -> None:
    layer = SQLDataLayer(sql_url, thread_order="created", create_schema=True)
    try:
        user = await layer.create_user(User(identifier="order", metadata={}))
        assert user is not None
        old, new = new_id(), new_id()
        await layer.update_thread(old, name="old", user_id=user.id)
        await layer.update_thread(new, name="new", user_id=user.id)
        bump = {"id": new_id(), "threadId": old, "type": "user_message", "name": "u",
                "output": "later", "streaming": False, "metadata": {},
                "createdAt": "2099-01-01T00:00:00Z"}
        await layer.create_step(bump)
        page = await layer.list_threads(Pagination(first=10), ThreadFilter(userId=user.id))
        assert [t["id"] for t in page.data] == [new, old]
        full = await layer.get_thread(old)
        assert full is not None and page.data[1]["createdAt"] == full["createdAt"]
    finally:
        await layer.close()


async def test_an_existing_async_engine_is_accepted_and_left_open(sql_url: str) -> None:
    engine = create_async_engine(sql_url)
    layer = SQLDataLayer(engine, create_schema=True)
    try:
        created = await layer.create_user(User(identifier="engine", metadata={"k": 1}))
        assert created is not None
        assert (await layer.get_user("engine")) == created
    finally:
        await layer.close()
    async with engine.connect() as conn:  # the layer did not dispose what it did not create
        assert conn is not None
    await engine.dispose()
