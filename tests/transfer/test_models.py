"""A custom model set (a table prefix, a PostgreSQL schema, a column derived from metadata)
copies with its derived column computed by the layer's own rule on the destination."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from chainlit.types import Pagination, ThreadFilter
from chainlit.user import User
from sqlalchemy.ext.asyncio import create_async_engine

from chainlit_orm import SQLDataLayer
from chainlit_orm.transfer import copy
from tests.backends import custom_models
from tests.fixtures.legacy import temp_postgres_db, temp_sqlite_url
from tests.transfer.conftest import memory_storage
from tests.transfer.seed import seed_many


async def test_a_custom_model_set_keeps_its_derived_column(tmp_path: Path) -> None:
    src_models = custom_models(schema=None)
    dst_models = custom_models(schema="chat")
    async with (temp_sqlite_url(tmp_path) as src, temp_postgres_db() as dst,
                memory_storage("m") as storage):
        layer = SQLDataLayer(src, storage=storage, models=src_models, create_schema=True)
        user = await layer.create_user(User(identifier="tenant-user@example.com"))
        ids = await seed_many(layer, [user], 3, files=False)
        await layer.update_thread(ids[0], metadata={"tenant": "acme"})
        await layer.update_thread(ids[1], metadata={"tenant": 42})
        await layer.close()

        summary = await copy(src, dst, models=dst_models, files=False,
                             checkpoint=tmp_path / "ck.json")
        assert summary.rows["threads"] == 3 and summary.verified_threads == 3
        engine = create_async_engine(dst)
        try:
            async with engine.connect() as conn:
                rows = dict((await conn.execute(sa.text(
                    "SELECT id::text, tenant FROM chat.acme_threads"))).all())
        finally:
            await engine.dispose()
        assert rows == {ids[0]: "acme", ids[1]: "42", ids[2]: None}
        layer = SQLDataLayer(dst, models=dst_models)
        try:
            page = await layer.list_threads(Pagination(first=10), ThreadFilter(userId=user.id))
            assert sorted(t["id"] for t in page.data) == sorted(ids)
        finally:
            await layer.close()
